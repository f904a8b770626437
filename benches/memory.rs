//! Memory overhead per stored object beyond its key, headers and body.
//!
//! Fills a MemoryStore the way the proxy does (one CachedObject per key,
//! with realistic headers) and compares the process's resident memory
//! growth with the bytes of keys, header names/values and bodies.
//! Run: `cargo bench --bench memory`.

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use fresco::invalidation::Stamp;
use fresco::policy::response::{PolicyConfig, ResponsePolicy};
use fresco::store::{CachedObject, MemoryStore, Store, StoredHeaders, Variants};
use http::{HeaderMap, HeaderValue, StatusCode};

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("Linux /proc");
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

fn main() {
    const N: usize = 200_000;
    const BODY: usize = 1024;
    let store = MemoryStore::new(8 << 30);
    let cfg = PolicyConfig::default();
    let now = SystemTime::now();
    let before = rss_bytes();
    let mut payload = 0u64;
    for i in 0..N {
        let url: Arc<str> = Arc::from(format!("http://bench.test/objects/{i:08}"));
        let mut headers = HeaderMap::new();
        headers.insert("cache-control", HeaderValue::from_static("public, max-age=3600"));
        headers.insert("content-type", HeaderValue::from_static("application/octet-stream"));
        headers.insert("date", HeaderValue::from_static("Sun, 22 Nov 2026 21:00:00 GMT"));
        headers.insert("etag", HeaderValue::from_str(&format!("\"{i:016x}\"")).unwrap());
        let body = Bytes::from(vec![(i % 251) as u8; BODY]);
        let header_bytes: usize = headers.iter().map(|(k, v)| k.as_str().len() + v.len()).sum();
        payload += (url.len() + header_bytes + body.len()) as u64;
        let policy = ResponsePolicy::new(StatusCode::OK, &headers, now, now, &cfg);
        let object = CachedObject {
            status: StatusCode::OK,
            headers: StoredHeaders::from_map(&headers),
            body,
            policy,
            vary: Default::default(),
            url: url.clone(),
            tags: Box::new([]),
            stamp: Stamp::default(),
            stale: Default::default(),
        };
        store.put(url, Variants::default().with(Arc::new(object), 16));
    }
    let after = rss_bytes();
    let stats = store.stats();
    assert_eq!(stats.objects, N as u64, "every object stayed resident");
    let grown = after.saturating_sub(before);
    let overhead = grown.saturating_sub(payload) as f64 / N as f64;
    println!("objects stored:                {N} x {BODY} B bodies");
    println!("payload (key+headers+body):    {:.1} MiB", payload as f64 / (1 << 20) as f64);
    println!("resident memory growth:        {:.1} MiB", grown as f64 / (1 << 20) as f64);
    println!("overhead per object:           {overhead:.0} B (target: at most 1024 B)");
    println!("accounted weight per object:   {} B", stats.bytes / N as u64);
}
