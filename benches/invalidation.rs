//! Invalidation benchmarks for scripts/bench.sh, against a running node:
//!
//!   latency DATA ADMIN TOKEN OBJECTS  purge latency with no matching object,
//!                                     then after loading OBJECTS objects that
//!                                     one tag purge matches
//!   records ADMIN TOKEN COUNT         creates COUNT tag selector records
//!   convergence ADMINS TOKEN COUNT    COUNT purges one after another through
//!                                     comma-separated admin URLs; time from
//!                                     acceptance to the last node applying
//!   storm ADMINS TOKEN COUNT          COUNT purges as fast as the nodes take
//!                                     them; invalidations applied per second
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
        ["convergence", admins, token, count] => {
            rt.block_on(convergence(&client, admins, token, count.parse().unwrap()))
        }
        ["storm", admins, token, count] => rt.block_on(storm(&client, admins, token, count.parse().unwrap())),
        _ => {
            eprintln!(
                "usage: invalidation latency DATA ADMIN TOKEN OBJECTS | records ADMIN TOKEN COUNT | convergence ADMINS TOKEN COUNT | storm ADMINS TOKEN COUNT"
            );
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

async fn get_json(client: &HttpClient, url: &str, token: &str) -> serde_json::Value {
    let req = http::Request::get(url)
        .header("authorization", format!("Bearer {token}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = client.request(req).await.expect("admin API reachable");
    serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap_or_default()
}

/// Waits until every node reports `version` applied.
async fn wait_applied(client: &HttpClient, admins: &[&str], token: &str, version: u64) {
    for admin in admins {
        loop {
            let view = get_json(client, &format!("{admin}/api/v1/nodes"), token).await;
            let lowest =
                view["nodes"].as_array().into_iter().flatten().filter_map(|n| n["applied_version"].as_u64()).min();
            if lowest.is_some_and(|v| v >= version) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

async fn convergence(client: &HttpClient, admins: &str, token: &str, count: usize) {
    let admins: Vec<&str> = admins.split(',').collect();
    let mut last = 0;
    for i in 0..count {
        let body = format!(r#"{{"tags":["conv-{i}"]}}"#);
        let req = http::Request::post(format!("{}/api/v1/invalidations", admins[i % admins.len()]))
            .header("authorization", format!("Bearer {token}"))
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let resp = client.request(req).await.unwrap();
        let v: serde_json::Value =
            serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
        last = v["version"].as_u64().unwrap();
        // Paced so each is measured on its own, not queued behind the others.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    wait_applied(client, &admins, token, last).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut lags = Vec::new();
    let mut before: Option<u64> = None;
    while lags.len() < count {
        let url = match before {
            Some(b) => format!("{}/api/v1/invalidations?limit=1000&before={b}", admins[0]),
            None => format!("{}/api/v1/invalidations?limit=1000", admins[0]),
        };
        let page = get_json(client, &url, token).await;
        let Some(items) = page["invalidations"].as_array() else { break };
        if items.is_empty() {
            break;
        }
        for inv in items {
            let worst = inv["nodes"].as_array().into_iter().flatten().filter_map(|n| n["lag_ms"].as_u64()).max();
            if let Some(w) = worst {
                lags.push(Duration::from_millis(w));
            }
        }
        before = page["next_before"].as_u64();
        if before.is_none() {
            break;
        }
    }
    report(&format!("202 to last of {} nodes applying", admins.len()), lags);
}

async fn storm(client: &HttpClient, admins: &str, token: &str, count: usize) {
    let admins: Vec<String> = admins.split(',').map(str::to_string).collect();
    let started = Instant::now();
    let concurrency = 128;
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let (client, admins, token) = (client.clone(), admins.clone(), token.to_string());
        tasks.push(tokio::spawn(async move {
            let (mut highest, mut refused) = (0u64, 0usize);
            let mut i = w;
            while i < count {
                let req = http::Request::post(format!("{}/api/v1/invalidations", admins[i % admins.len()]))
                    .header("authorization", format!("Bearer {token}"))
                    .body(Full::new(Bytes::from(format!(r#"{{"tags":["storm-{i}"]}}"#))))
                    .unwrap();
                let resp = client.request(req).await.unwrap();
                if resp.status() == 202 {
                    let v: serde_json::Value =
                        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
                    highest = highest.max(v["version"].as_u64().unwrap_or(0));
                    i += concurrency;
                } else {
                    // 429: back off as told, then retry the same one.
                    refused += 1;
                    let _ = resp.into_body().collect().await;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            (highest, refused)
        }));
    }
    let (mut highest, mut refused) = (0, 0);
    for t in tasks {
        let (h, r) = t.await.unwrap();
        highest = highest.max(h);
        refused += r;
    }
    let accepted_in = started.elapsed();
    let refs: Vec<&str> = admins.iter().map(String::as_str).collect();
    wait_applied(client, &refs, token, highest).await;
    let all_applied = started.elapsed();
    println!(
        "  {count} invalidations through {} nodes: accepted in {:.2} s, applied by every node in {:.2} s = {:.0}/s ({} answered 429 and were retried)",
        admins.len(),
        accepted_in.as_secs_f64(),
        all_applied.as_secs_f64(),
        count as f64 / all_applied.as_secs_f64(),
        refused
    );
}

async fn records(client: &HttpClient, admin: &str, token: &str, count: usize) {
    let per = 1000;
    for batch in 0..count.div_ceil(per) {
        let tags: Vec<String> = (0..per).map(|i| format!("\"rec-{batch}-{i}\"")).collect();
        post(client, admin, token, format!(r#"{{"tags":[{}]}}"#, tags.join(","))).await;
    }
    println!("  created {count} selector records");
}
