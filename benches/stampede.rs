//! Burst client for scripts/bench.sh: opens N keep-alive connections to a
//! cache, releases one GET on each at the same instant, and prints how many
//! requests the origin received for that path and the client latencies.
//!
//! cargo bench --bench stampede -- NAME URL CLIENTS ORIGIN_BASE

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let [name, url, clients, origin] = args.as_slice() else {
        eprintln!("usage: stampede NAME URL CLIENTS ORIGIN_BASE");
        std::process::exit(2);
    };
    let clients: usize = clients.parse().expect("CLIENTS is a number");
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(run(name, url, clients, origin));
}

async fn run(name: &str, url: &str, clients: usize, origin: &str) {
    let uri: http::Uri = url.parse().expect("URL");
    let authority = uri.authority().unwrap().to_string();
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
    let barrier = Arc::new(tokio::sync::Barrier::new(clients));
    let mut tasks = Vec::with_capacity(clients);
    for _ in 0..clients {
        let (barrier, authority, path) = (barrier.clone(), authority.clone(), path.clone());
        tasks.push(tokio::spawn(async move {
            let stream = tokio::net::TcpStream::connect(&authority).await.ok()?;
            let _ = stream.set_nodelay(true);
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.ok()?;
            tokio::spawn(conn);
            let req = http::Request::get(&path).header("host", &authority).body(Empty::<Bytes>::new()).unwrap();
            barrier.wait().await;
            let start = Instant::now();
            let resp = sender.send_request(req).await.ok()?;
            let ok = resp.status() == 200;
            let body = resp.into_body().collect().await.ok()?.to_bytes();
            (ok && !body.is_empty()).then(|| start.elapsed())
        }));
    }
    let mut latencies: Vec<Duration> = Vec::with_capacity(clients);
    for t in tasks {
        if let Ok(Some(d)) = t.await {
            latencies.push(d);
        }
    }
    latencies.sort();
    let pct = |p: f64| latencies.get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)));
    let ms = |d: Option<&Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0);
    let hits = origin_hits(origin, &path).await;
    println!(
        "  {name:<8} origin requests {hits:>4}   ok {:>4}/{clients}   p50 {:7.1} ms   p99 {:7.1} ms",
        latencies.len(),
        ms(pct(0.50)),
        ms(pct(0.99)),
    );
}

async fn origin_hits(origin: &str, path: &str) -> String {
    let encoded: String = path
        .bytes()
        .map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect();
    let uri: http::Uri = format!("{origin}/__hits?path={encoded}").parse().unwrap();
    let Ok(stream) = tokio::net::TcpStream::connect(uri.authority().unwrap().as_str()).await else { return "?".into() };
    let Ok((mut sender, conn)) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await else {
        return "?".into();
    };
    tokio::spawn(conn);
    let req = http::Request::get(uri.path_and_query().unwrap().as_str())
        .header("host", uri.authority().unwrap().as_str())
        .body(Empty::<Bytes>::new())
        .unwrap();
    match sender.send_request(req).await {
        Ok(resp) => resp
            .into_body()
            .collect()
            .await
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).trim().to_string())
            .unwrap_or_default(),
        Err(_) => "?".into(),
    }
}
