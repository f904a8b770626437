//! Ranges without the whole file, and large objects in slices (issue 10):
//! RFC 9110 §14 through a real fresco in front of a real nginx serving a
//! real (sparse) file and in front of the programmable origin, with real
//! curl resuming a download.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::harness::{Fresco, Nginx, Origin, Reply, Seen, get, invalidate, send, temp_dir};

const MIB: u64 = 1 << 20;

/// A real nginx serving files from its `www`, logging for each request the
/// bytes of body it sent.
async fn nginx() -> Nginx {
    Nginx::start("nginx-ranges", |d, port| {
        format!(
            "  log_format sent '$request_uri $status $body_bytes_sent \"$http_range\"';\n  access_log {d}/access.log sent;\n\
               server {{\n    listen 127.0.0.1:{port};\n    root {d}/www;\n\
                 location / {{ add_header Cache-Control \"max-age=600\"; }}\n\
               }}"
        )
    })
    .await
}

/// (requests, body bytes sent) nginx logged for `uri`.
fn sent(nginx: &Nginx, uri: &str) -> (usize, u64) {
    let log = nginx.access_log();
    let lines: Vec<&str> = log.lines().filter(|l| l.split(' ').next() == Some(uri)).collect();
    let bytes = lines.iter().filter_map(|l| l.split(' ').nth(2)).filter_map(|n| n.parse::<u64>().ok()).sum();
    (lines.len(), bytes)
}

/// Deterministic bytes that differ at every offset, so a part taken from
/// the wrong place never matches.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (x >> 56) as u8
        })
        .collect()
}

/// A file of `len` bytes, sparse except for `data` written at `at`.
fn sparse_file(path: &Path, len: u64, at: u64, data: &[u8]) {
    use std::io::{Seek, SeekFrom, Write};
    let mut f = std::fs::File::create(path).unwrap();
    f.set_len(len).unwrap();
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(data).unwrap();
}

/// What the programmable origin serves for one path, like a static file
/// server: one byte range honoured (or ignored when `ranges` is false),
/// a strong ETag, and every body byte it sends counted.
#[derive(Clone)]
struct File {
    state: Arc<Mutex<(Bytes, String)>>,
    sent: Arc<AtomicU64>,
}

impl File {
    fn serve(origin: &Origin, path: &str, body: Vec<u8>, etag: &str, extra: &[(&str, &str)], ranges: bool) -> File {
        Self::serve_with(origin, path, body, etag, extra, ranges, Duration::ZERO)
    }

    /// Ranges honoured, every answer `delay` late.
    fn serve_slowly(
        origin: &Origin,
        path: &str,
        body: Vec<u8>,
        etag: &str,
        extra: &[(&str, &str)],
        delay: Duration,
    ) -> File {
        Self::serve_with(origin, path, body, etag, extra, true, delay)
    }

    fn serve_with(
        origin: &Origin,
        path: &str,
        body: Vec<u8>,
        etag: &str,
        extra: &[(&str, &str)],
        ranges: bool,
        delay: Duration,
    ) -> File {
        let file = File {
            state: Arc::new(Mutex::new((Bytes::from(body), etag.to_string()))),
            sent: Arc::new(AtomicU64::new(0)),
        };
        let f = file.clone();
        let extra: Vec<(String, String)> = extra.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        origin.handle(path, move |seen: &Seen| {
            let (body, etag) = f.state.lock().unwrap().clone();
            let mut reply = Reply::bytes(body.clone()).header("etag", &etag);
            for (k, v) in &extra {
                reply = reply.header(k, v);
            }
            let range = seen.headers.get("range").and_then(|v| v.to_str().ok()).and_then(|r| r.strip_prefix("bytes="));
            if let (true, Some(range)) = (ranges, range) {
                let len = body.len() as u64;
                let (a, b) = range.split_once('-').unwrap();
                let (first, last) = match (a.parse::<u64>().ok(), b.parse::<u64>().ok()) {
                    (Some(a), Some(b)) => (a, b.min(len - 1)),
                    (Some(a), None) => (a, len - 1),
                    (None, Some(n)) => (len.saturating_sub(n), len - 1),
                    (None, None) => panic!("bad range {range}"),
                };
                if first >= len {
                    return Reply::bytes(Bytes::new()).status(416).header("content-range", &format!("bytes */{len}"));
                }
                reply.body = body.slice(first as usize..=last as usize);
                reply = reply.status(206).header("content-range", &format!("bytes {first}-{last}/{len}"));
            }
            f.sent.fetch_add(reply.body.len() as u64, Ordering::SeqCst);
            reply.delay(delay)
        });
        file
    }

    fn change(&self, body: Vec<u8>, etag: &str) {
        *self.state.lock().unwrap() = (Bytes::from(body), etag.to_string());
    }

    fn sent(&self) -> u64 {
        self.sent.load(Ordering::SeqCst)
    }
}

/// A GET whose body is read until it ends or fails: the bytes that
/// arrived, and whether the body ended cleanly.
async fn get_partial(url: &str, headers: &[(&str, &str)]) -> (u16, Vec<u8>, bool) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let mut req = Request::builder().uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = tokio::time::timeout(Duration::from_secs(30), client.request(req.body(Empty::new()).unwrap()))
        .await
        .expect("a response within 30 s")
        .expect("request sent");
    let status = resp.status().as_u16();
    let mut body = resp.into_body();
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        match tokio::time::timeout_at(deadline, body.frame()).await.expect("the body ends within 60 s") {
            None => return (status, got, true),
            Some(Err(_)) => return (status, got, false),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    got.extend_from_slice(&data);
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc9110_14_a_range_of_a_200_mib_file_fetches_only_its_slice() {
    let nginx = nginx().await;
    // 200 MiB, sparse but for 3 MiB of distinct bytes around the range.
    let around = 142 * MIB;
    let data = pattern(3 * MIB as usize, 1);
    sparse_file(&nginx.file("big.bin"), 200 * MIB, around, &data);
    let fresco = Fresco::start(&nginx.url(), &[]);
    let url = fresco.url("/big.bin");

    let part = send("GET", &url, &[("range", "bytes=150000000-150000099")]).await;
    assert_eq!(part.status, 206, "{}", part.cache_status());
    assert_eq!(part.header("content-range"), Some("bytes 150000000-150000099/209715200"));
    let at = (150_000_000 - around) as usize;
    assert_eq!(&part.body[..], &data[at..at + 100], "exactly the bytes asked for");
    let (requests, bytes) = sent(&nginx, "/big.bin");
    assert_eq!(requests, 1, "one origin request");
    assert!(bytes <= MIB, "the origin sent only the touched slice: {bytes} bytes");

    // Again, and a neighbour in the same slice: from the store.
    let again = send("GET", &url, &[("range", "bytes=150000000-150000099")]).await;
    assert!(again.is_hit(), "{}", again.cache_status());
    assert_eq!(again.body, part.body);
    let near = send("GET", &url, &[("range", "bytes=150000100-150000199")]).await;
    assert_eq!((near.status, &near.body[..]), (206, &data[at + 100..at + 200]));
    assert_eq!(sent(&nginx, "/big.bin").0, 1);

    // Across a slice boundary: two slices, one new origin request.
    let boundary = 144 * MIB;
    let across = format!("bytes={}-{}", boundary - 50, boundary + 49);
    let got = send("GET", &url, &[("range", across.as_str())]).await;
    let at = (boundary - 50 - around) as usize;
    assert_eq!((got.status, &got.body[..]), (206, &data[at..at + 100]));
    let (requests, bytes) = sent(&nginx, "/big.bin");
    assert_eq!(requests, 2);
    assert!(bytes <= 2 * MIB, "{bytes}");

    // Hostile ranges: the last possible byte, a number past u64, a
    // reversed range. The node answers each and keeps serving.
    for r in ["bytes=18446744073709551615-", "bytes=18446744073709551614-18446744073709551615"] {
        let got = send("GET", &url, &[("range", r)]).await;
        assert_eq!(got.status, 416, "{r}: {}", got.cache_status());
    }
    let fine = send("GET", &url, &[("range", "bytes=150000000-150000009")]).await;
    assert_eq!((fine.status, &fine.body[..]), (206, &data[150_000_000 - around as usize..][..10]));
    // A range not understood is ignored (§14.2): the whole object, here
    // asked with HEAD, which needs only the first slice for its fields.
    let fetched = sent(&nginx, "/big.bin").0;
    let reversed = send("HEAD", &url, &[("range", "bytes=5-4")]).await;
    assert_eq!((reversed.status, reversed.header("content-length")), (200, Some("209715200")));
    assert_eq!(sent(&nginx, "/big.bin").0, fetched + 1, "HEAD fetched the first slice only");

    // RFC 9110 §15.5.17: past the end, 416 with the complete length.
    let beyond = send("GET", &url, &[("range", "bytes=209715200-")]).await;
    assert_eq!(beyond.status, 416);
    assert_eq!(beyond.header("content-range"), Some("bytes */209715200"));
    // HEAD again: its complete length, from the stored first slice.
    let head = send("HEAD", &url, &[]).await;
    assert_eq!((head.status, head.header("content-length")), (200, Some("209715200")));
    assert!(head.is_hit(), "{}", head.cache_status());
    assert_eq!(sent(&nginx, "/big.bin").0, fetched + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_resumes_a_download_through_fresco() {
    let nginx = nginx().await;
    let big = pattern((3 * MIB + 12_345) as usize, 2);
    std::fs::write(nginx.file("video.bin"), &big).unwrap();
    let small = pattern(10_000, 3);
    std::fs::write(nginx.file("small.bin"), &small).unwrap();
    let fresco = Fresco::start(&nginx.url(), &[]);
    let dir = temp_dir("curl");
    for (name, body, cut) in [("video.bin", &big, 1_234_567usize), ("small.bin", &small, 4_000)] {
        // An interrupted download: the first `cut` bytes are on disk.
        let out = dir.join(name);
        std::fs::write(&out, &body[..cut]).unwrap();
        let status = tokio::process::Command::new("curl")
            .args(["--silent", "--show-error", "--fail", "--max-time", "60", "-C", "-", "-o"])
            .arg(&out)
            .arg(fresco.url(&format!("/{name}")))
            .status()
            .await
            .expect("curl is installed (scripts/test.sh installs it)");
        assert!(status.success(), "curl -C - resumed {name}: {status}");
        assert!(std::fs::read(&out).unwrap() == *body, "the resumed {name} is the file");
    }
    // Resuming the large file fetched its slices, never the whole file in one go.
    let (_, bytes) = sent(&nginx, "/video.bin");
    assert!(bytes <= big.len() as u64, "{bytes}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_readers_of_one_slice_make_one_origin_request() {
    let origin = Origin::start().await;
    let body = pattern((3 * MIB) as usize, 4);
    // Slow to answer, so the readers overlap.
    let cc = [("cache-control", "max-age=600")];
    let file = File::serve_slowly(&origin, "/shared.bin", body.clone(), "\"s1\"", &cc, Duration::from_millis(500));
    let fresco = Fresco::start(&origin.url(), &[]);
    let first = MIB + 100;
    let range = format!("bytes={first}-{}", first + 99);
    let range: &'static str = Box::leak(range.into_boxed_str());
    let answers = crate::harness::burst(&fresco.url("/shared.bin"), 50, Box::leak(Box::new([("range", range)]))).await;
    for a in &answers {
        assert_eq!(a.status, 206, "{}", a.cache_status());
        assert_eq!(&a.body[..], &body[first as usize..first as usize + 100]);
    }
    assert_eq!(origin.hits("/shared.bin"), 1, "one origin request for fifty readers");
    assert!(file.sent() <= MIB);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etag_change_between_slices_never_mixes_two_versions() {
    let origin = Origin::start().await;
    let len = (3 * MIB) as usize;
    let (v1, v2) = (vec![0x11u8; len], vec![0x22u8; len]);
    let file = File::serve(&origin, "/changing.bin", v1, "\"v1\"", &[("cache-control", "max-age=600")], true);
    let fresco = Fresco::start(&origin.url(), &[]);
    let url = fresco.url("/changing.bin");
    // Slice 0 of version 1 is stored.
    let part = send("GET", &url, &[("range", "bytes=0-99")]).await;
    assert_eq!((part.status, part.body.len()), (206, 100));
    assert!(part.body.iter().all(|b| *b == 0x11));

    file.change(v2, "\"v2\"");
    // The whole object: slice 0 is v1 (stored), slice 1 is v2 (fetched).
    let (status, body, complete) = get_partial(&url, &[]).await;
    assert_eq!(status, 200);
    let ones = body.iter().filter(|b| **b == 0x11).count();
    let twos = body.iter().filter(|b| **b == 0x22).count();
    assert!(ones == 0 || twos == 0, "bytes of two versions in one body: {ones} of v1, {twos} of v2");
    assert!(!(complete && ones > 0), "a v1 body cannot be complete: v1 is gone from the origin");
    if complete {
        assert_eq!(twos, len, "a complete body is all of v2");
    }

    // The object restarted: the next answers are all version 2.
    let (status, body, complete) = get_partial(&url, &[]).await;
    assert!(status == 200 && complete && body.len() == len && body.iter().all(|b| *b == 0x22), "{status} {complete}");
    let across = send("GET", &url, &[("range", "bytes=1048500-1048700")]).await;
    assert_eq!((across.status, across.body.len()), (206, 201));
    assert!(across.body.iter().all(|b| *b == 0x22));
    let start = send("GET", &url, &[("range", "bytes=0-99")]).await;
    assert!(start.body.iter().all(|b| *b == 0x22), "the old slice 0 is gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_of_the_url_or_a_tag_reaches_every_slice() {
    let origin = Origin::start().await;
    let body = pattern((3 * MIB + 7) as usize, 5);
    let headers = [("cache-control", "max-age=600"), ("surrogate-key", "movie")];
    let file = File::serve(&origin, "/movie.bin", body.clone(), "\"m1\"", &headers, true);
    let fresco = Fresco::start(&origin.url(), &[]);
    let url = fresco.url("/movie.bin");
    let ranges = ["bytes=10-19", "bytes=1048600-1048609", "bytes=2097200-2097209", "bytes=3145728-3145734"];
    let check = |got: &crate::harness::Got, range: &str| {
        let (a, b) = range.strip_prefix("bytes=").unwrap().split_once('-').unwrap();
        let (a, b): (usize, usize) = (a.parse().unwrap(), b.parse().unwrap());
        assert_eq!((got.status, &got.body[..]), (206, &body[a..=b]), "{range}: {}", got.cache_status());
    };

    for purge in ["url", "tag"] {
        // One full GET stores every slice as it streams through.
        let hits_before = origin.hits("/movie.bin");
        let whole = get(&url).await;
        assert_eq!((whole.status, whole.body.len()), (200, body.len()));
        assert!(whole.body == body);
        for r in ranges {
            let got = send("GET", &url, &[("range", r)]).await;
            check(&got, r);
            assert!(got.is_hit(), "{purge}: {r} is stored: {}", got.cache_status());
        }
        let whole = get(&url).await;
        assert!(whole.is_hit() && whole.body == body, "a full GET streams the stored slices in order");
        // The first round's full GET stored every slice with one origin
        // request; the second finds them stored again by the misses that
        // followed the first purge.
        assert!(origin.hits("/movie.bin") <= hits_before + 1, "at most one origin request stored every slice");

        let auth = format!("Bearer {}", fresco.token());
        if purge == "url" {
            let purged = send("PURGE", &url, &[("authorization", &auth)]).await;
            assert_eq!(purged.status, 200, "{}", purged.text());
        } else {
            let done = invalidate(&fresco, &fresco.token(), r#"{"tags":["movie"]}"#.into()).await;
            assert!(done.status < 300, "{} {}", done.status, done.text());
        }
        let before = origin.hits("/movie.bin");
        for r in ranges {
            let got = send("GET", &url, &[("range", r)]).await;
            check(&got, r);
            assert!(!got.is_hit(), "after a {purge} purge, {r} is a miss: {}", got.cache_status());
        }
        assert_eq!(origin.hits("/movie.bin"), before + ranges.len(), "each slice was fetched again");
    }
    assert!(file.sent() < 4 * body.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_of_what_will_not_be_stored_is_passed_through() {
    let origin = Origin::start().await;
    let body = pattern((5 * MIB) as usize, 6);
    let private = File::serve(&origin, "/private.bin", body.clone(), "\"p1\"", &[("cache-control", "private")], true);
    let fresco = Fresco::start(&origin.url(), &[]);
    for _ in 0..3 {
        let got = send("GET", &fresco.url("/private.bin"), &[("range", "bytes=10-19")]).await;
        assert_eq!((got.status, &got.body[..]), (206, &body[10..20]), "{}", got.cache_status());
        assert_eq!(got.header("content-range"), Some("bytes 10-19/5242880"));
    }
    let seen = origin.last("/private.bin").unwrap();
    assert_eq!(seen.headers.get("range").unwrap(), "bytes=10-19", "the client's own range went to the origin");
    // If-Range travels with it (RFC 9110 §13.1.5 is then the origin's to apply).
    send("GET", &fresco.url("/private.bin"), &[("range", "bytes=10-19"), ("if-range", "\"p1\"")]).await;
    assert_eq!(origin.last("/private.bin").unwrap().headers.get("if-range").unwrap(), "\"p1\"");
    assert!(private.sent() <= MIB + 40, "never the whole file: {}", private.sent());

    // The last n bytes of an object not seen yet: passed through.
    let tail_file = File::serve(&origin, "/tail.bin", body.clone(), "\"t1\"", &[("cache-control", "max-age=60")], true);
    let tail = send("GET", &fresco.url("/tail.bin"), &[("range", "bytes=-100")]).await;
    assert_eq!((tail.status, &tail.body[..]), (206, &body[body.len() - 100..]));
    assert_eq!(tail_file.sent(), 100);

    // Past the end of an object not seen yet: the origin's 416 (with the
    // complete length) is relayed, even at the last position u64 holds.
    File::serve(&origin, "/edge.bin", body.clone(), "\"e1\"", &[("cache-control", "max-age=60")], true);
    for r in ["bytes=18446744073709551615-", "bytes=5242880-5242889"] {
        let got = send("GET", &fresco.url("/edge.bin"), &[("range", r)]).await;
        assert_eq!((got.status, got.header("content-range")), (416, Some("bytes */5242880")), "{r}");
    }
    let after = send("GET", &fresco.url("/edge.bin"), &[("range", "bytes=5242870-")]).await;
    assert_eq!((after.status, &after.body[..]), (206, &body[5242870..]));

    // With slicing off, a file over max_object_size asked for with a range
    // is passed through too: the issue's 50 MiB file.
    let huge = File::serve(&origin, "/huge.bin", vec![7u8; (50 * MIB) as usize], "\"h1\"", &[], true);
    let plain = Fresco::start(&origin.url(), &["--slice-size", "0", "--max-object-size", "1MiB"]);
    let got = send("GET", &plain.url("/huge.bin"), &[("range", "bytes=0-99")]).await;
    assert_eq!((got.status, got.body.len()), (206, 100));
    assert_eq!(huge.sent(), 100, "the origin sent the range only");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_that_ignores_range_still_gets_correct_answers() {
    let origin = Origin::start().await;
    let small = pattern(10_000, 7);
    File::serve(&origin, "/small.bin", small.clone(), "\"a1\"", &[("cache-control", "max-age=600")], false);
    let big = pattern((3 * MIB) as usize, 8);
    File::serve(&origin, "/big.bin", big.clone(), "\"b1\"", &[("cache-control", "max-age=600")], false);
    let fresco = Fresco::start(&origin.url(), &["--max-object-size", "2MiB"]);

    // Small: stored whole from the 200, the range answered from it.
    let first = send("GET", &fresco.url("/small.bin"), &[("range", "bytes=100-199")]).await;
    assert_eq!((first.status, &first.body[..]), (206, &small[100..200]));
    let again = send("GET", &fresco.url("/small.bin"), &[("range", "bytes=9990-")]).await;
    assert_eq!((again.status, &again.body[..]), (206, &small[9990..]));
    assert!(again.is_hit());
    assert_eq!(origin.hits("/small.bin"), 1);

    // Large (over max_object_size): the origin's whole 200 is relayed
    // (RFC 9110 §14.2 lets a server ignore Range) and nothing is stored.
    for _ in 0..2 {
        let got = send("GET", &fresco.url("/big.bin"), &[("range", "bytes=1048576-1048675")]).await;
        assert!(
            (got.status == 200 && got.body == big) || (got.status == 206 && got.body[..] == big[1048576..1048676]),
            "{} {}",
            got.status,
            got.cache_status()
        );
    }
    // A full GET stores it in slices as it streams; ranges then come from them.
    let whole = get(&fresco.url("/big.bin")).await;
    assert!(whole.status == 200 && whole.body == big);
    let hits = origin.hits("/big.bin");
    let part = send("GET", &fresco.url("/big.bin"), &[("range", "bytes=2097152-2097251")]).await;
    assert_eq!((part.status, &part.body[..]), (206, &big[2097152..2097252]));
    assert!(part.is_hit(), "{}", part.cache_status());
    assert_eq!(origin.hits("/big.bin"), hits);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc9110_13_1_5_if_range_and_conditionals_on_a_sliced_object() {
    let origin = Origin::start().await;
    let body = pattern((3 * MIB + 3) as usize, 10);
    File::serve(&origin, "/cond.bin", body.clone(), "\"c1\"", &[("cache-control", "max-age=600")], true);
    let fresco = Fresco::start(&origin.url(), &[]);
    let url = fresco.url("/cond.bin");
    let whole = get(&url).await;
    assert!(whole.status == 200 && whole.body == body);

    let matching = send("GET", &url, &[("range", "bytes=2097150-2097159"), ("if-range", "\"c1\"")]).await;
    assert_eq!((matching.status, &matching.body[..]), (206, &body[2097150..2097160]));
    assert_eq!(matching.header("content-range"), Some("bytes 2097150-2097159/3145731"));
    // If-Range names another version: the whole representation, 200.
    let other = send("GET", &url, &[("range", "bytes=0-9"), ("if-range", "\"c0\"")]).await;
    assert!(other.status == 200 && other.body == body, "{}", other.status);
    // A weak entity tag never matches If-Range (strong comparison).
    let weak = send("GET", &url, &[("range", "bytes=0-9"), ("if-range", "W/\"c1\"")]).await;
    assert_eq!((weak.status, weak.body.len()), (200, body.len()));
    // Several ranges: answered with the whole representation (see README).
    let several = send("GET", &url, &[("range", "bytes=0-1,5-6")]).await;
    assert!(several.status == 200 && several.body == body);
    // The client's own validators: 304 from the stored slices.
    let not_modified = send("GET", &url, &[("if-none-match", "\"c1\"")]).await;
    assert_eq!((not_modified.status, not_modified.body.len()), (304, 0));
    assert_eq!(not_modified.header("etag"), Some("\"c1\""));
    assert_eq!(origin.hits("/cond.bin"), 1, "all of it from the slices the first GET stored");

    // A request that may not store (no-store) reads a sliced object whose
    // slices are partly missing: what it fetches serves it alone, whole.
    File::serve(&origin, "/ns.bin", body.clone(), "\"n1\"", &[("cache-control", "max-age=600")], true);
    let url = fresco.url("/ns.bin");
    let middle = send("GET", &url, &[("range", "bytes=1048576-1048585")]).await;
    assert_eq!((middle.status, &middle.body[..]), (206, &body[1048576..1048586]));
    let (status, got, complete) = get_partial(&url, &[("cache-control", "no-store")]).await;
    assert!(status == 200 && complete && got == body, "{status} {complete} {}", got.len());
    let first = send("GET", &url, &[("range", "bytes=0-9"), ("cache-control", "only-if-cached")]).await;
    assert_eq!(first.status, 504, "the no-store request stored nothing (§5.2.1.7): {}", first.cache_status());
}
