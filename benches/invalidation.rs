//! Invalidation benchmarks for scripts/bench.sh, against a running node:
//!
//!   latency DATA ADMIN TOKEN OBJECTS  purge latency with no matching object,
//!                                     then after loading OBJECTS objects that
//!                                     one tag purge matches
//!   records ADMIN TOKEN COUNT         creates COUNT tag selector records
//!
//! cargo bench --bench invalidation -- MODE ARGS...

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let client: HttpClient = Client::builder(TokioExecutor::new()).pool_max_idle_per_host(256).build_http();
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["latency", data, admin, token, objects] => {
            rt.block_on(latency(&client, data, admin, token, objects.parse().unwrap()))
        }
        ["records", admin, token, count] => rt.block_on(records(&client, admin, token, count.parse().unwrap())),
        _ => {
            eprintln!("usage: invalidation latency DATA ADMIN TOKEN OBJECTS | records ADMIN TOKEN COUNT");
            std::process::exit(2);
        }
    }
}

async fn post(client: &HttpClient, admin: &str, token: &str, body: String) -> Duration {
    let req = http::Request::post(format!("{admin}/api/v1/invalidations"))
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let start = Instant::now();
    let resp = client.request(req).await.expect("admin API reachable");
    let status = resp.status();
    let _ = resp.into_body().collect().await;
    assert_eq!(status, 202, "purge accepted");
    start.elapsed()
}

fn report(label: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let at = |p: f64| samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)].as_secs_f64() * 1000.0;
    println!("  {label:<44} p50 {:6.2} ms   p99 {:6.2} ms   ({} purges)", at(0.5), at(0.99), samples.len());
}

async fn latency(client: &HttpClient, data: &str, admin: &str, token: &str, objects: usize) {
    let mut empty = Vec::new();
    for i in 0..200 {
        empty.push(post(client, admin, token, format!(r#"{{"tags":["idle-{i}"]}}"#)).await);
    }
    report("tag purge, no stored object matches", empty);

    let started = Instant::now();
    let concurrency = 64;
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let (client, data) = (client.clone(), data.to_string());
        tasks.push(tokio::spawn(async move {
            let mut i = w;
            while i < objects {
                let req = http::Request::get(format!("{data}/tagged/bulk/{i}")).body(Full::new(Bytes::new())).unwrap();
                if let Ok(resp) = client.request(req).await {
                    let _ = resp.into_body().collect().await;
                }
                i += concurrency;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    println!("  loaded {objects} objects tagged `bulk` in {:.1} s", started.elapsed().as_secs_f64());

    let one = post(client, admin, token, r#"{"tags":["bulk"],"mode":"soft"}"#.to_string()).await;
    println!("  {:<44} {:6.2} ms", format!("tag purge matching {objects} objects"), one.as_secs_f64() * 1000.0);
    let mut full = vec![one];
    for i in 0..199 {
        let mode = if i % 2 == 0 { "hard" } else { "soft" };
        full.push(post(client, admin, token, format!(r#"{{"tags":["bulk"],"mode":"{mode}","reason":"{i}"}}"#)).await);
    }
    report(&format!("tag purge matching {objects} objects"), full);
}

async fn records(client: &HttpClient, admin: &str, token: &str, count: usize) {
    let per = 1000;
    for batch in 0..count.div_ceil(per) {
        let tags: Vec<String> = (0..per).map(|i| format!("\"rec-{batch}-{i}\"")).collect();
        post(client, admin, token, format!(r#"{{"tags":[{}]}}"#, tags.join(","))).await;
    }
    println!("  created {count} selector records");
}
