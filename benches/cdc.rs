//! `fresco cdc` benchmarks for scripts/cdc-bench.sh, against a running
//! PostgreSQL cluster, edge node and relay:
//!
//!   latency ORIGIN_ADDR EDGE ADMIN TOKEN PGPORT COUNT
//!       serves the origin on ORIGIN_ADDR; COUNT single-row updates through
//!       one psql session, alternating between a mapped table (the relay
//!       invalidates) and an unmapped one whose page the benchmark purges
//!       itself through the admin API right after the commit (the peer: an
//!       application that purges explicitly). For each, the time from the
//!       commit's acknowledgement to the first edge response showing the
//!       new value. Prints p50/p90/p99/max for both.
//!   throughput RELAY_METRICS PGPORT ROWS
//!       one ROWS-row UPDATE, then ROWS single-row transactions; the time
//!       until the relay has delivered every row's tag. Prints rows/s.
//!
//! cargo bench --bench cdc -- MODE ARGS...

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};

type HttpClient = Client<HttpConnector, Full<Bytes>>;
const POLL_LIMIT: Duration = Duration::from_secs(10);

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let client: HttpClient = Client::builder(TokioExecutor::new()).pool_max_idle_per_host(16).build_http();
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["latency", origin, edge, admin, token, port, count] => {
            rt.block_on(latency(&client, origin, edge, admin, token, port, count.parse().unwrap()))
        }
        ["throughput", metrics, port, rows] => rt.block_on(throughput(&client, metrics, port, rows.parse().unwrap())),
        _ => {
            eprintln!("usage: latency ORIGIN EDGE ADMIN TOKEN PGPORT COUNT | throughput RELAY_METRICS PGPORT ROWS");
            std::process::exit(2);
        }
    }
}

/// One psql session fed through stdin; `run` returns once psql executed
/// the statements (an `\echo` marker after them comes back).
struct Psql {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    stdout: std::io::Lines<BufReader<std::process::ChildStdout>>,
    n: u64,
}

impl Psql {
    fn open(port: &str) -> Psql {
        let mut child = Command::new("psql")
            .args(["-h", "127.0.0.1", "-p", port, "-U", "postgres", "-d", "postgres", "-X", "-q", "-A", "-t"])
            .args(["-v", "ON_ERROR_STOP=1"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("psql");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        Psql { child, stdin, stdout, n: 0 }
    }

    /// Runs `sql`; returns what it printed.
    fn run(&mut self, sql: &str) -> Vec<String> {
        self.n += 1;
        let marker = format!("done-{}", self.n);
        writeln!(self.stdin, "{sql}\n\\echo {marker}").unwrap();
        self.stdin.flush().unwrap();
        let mut out = Vec::new();
        for line in self.stdout.by_ref() {
            let line = line.unwrap();
            if line == marker {
                return out;
            }
            out.push(line);
        }
        panic!("psql ended");
    }
}

impl Drop for Psql {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn get_text(client: &HttpClient, url: &str) -> String {
    let req = http::Request::get(url).body(Full::new(Bytes::new())).unwrap();
    match client.request(req).await {
        Ok(resp) => String::from_utf8_lossy(&resp.into_body().collect().await.unwrap().to_bytes()).into_owned(),
        Err(_) => String::new(),
    }
}

fn percentiles(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let p = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)].as_secs_f64() * 1000.0;
    println!(
        "{name:<34} n={:<5} p50={:>7.2}ms p90={:>7.2}ms p99={:>7.2}ms max={:>7.2}ms",
        samples.len(),
        p(0.5),
        p(0.9),
        p(0.99),
        p(1.0)
    );
}

async fn latency(client: &HttpClient, origin: &str, edge: &str, admin: &str, token: &str, port: &str, count: usize) {
    // The origin serves the value the benchmark set before committing, so
    // a fill after the purge shows the new value, never one before the commit.
    let values: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    let listener = tokio::net::TcpListener::bind(origin).await.expect("bind the origin");
    let served = values.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let values = served.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let path = req.uri().path().to_string();
                    let value = values.lock().unwrap().get(&path).copied().unwrap_or(0);
                    // /p/N is products row N (the relay's), /q/N plain row N (the peer's).
                    let tag = path.trim_start_matches('/').replacen('/', "-", 1);
                    let resp = http::Response::builder()
                        .header("cache-control", "max-age=3600")
                        .header("surrogate-key", tag)
                        .body(Full::new(Bytes::from(format!("value={value}"))))
                        .unwrap();
                    async move { Ok::<_, Infallible>(resp) }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    let mut psql = Psql::open(port);
    let mut relay = Vec::with_capacity(count / 2);
    let mut direct = Vec::with_capacity(count / 2);
    for i in 0..count {
        let row = i / 2 + 1;
        let (table, path) = if i % 2 == 0 { ("p", format!("/p/{row}")) } else { ("q", format!("/q/{row}")) };
        let url = format!("{edge}{path}");
        // Cache the page (a fill, then a hit).
        get_text(client, &url).await;
        let new = i as u64 + 1_000_000;
        values.lock().unwrap().insert(path.clone(), new);
        let expected = format!("value={new}");
        psql.run(&format!("UPDATE {table} SET v = {new} WHERE id = {row};"));
        let committed = Instant::now();
        if table == "q" {
            let body = format!("{{\"tags\":[\"q-{row}\"],\"mode\":\"hard\"}}");
            let req = http::Request::post(format!("{admin}/api/v1/invalidations"))
                .header("authorization", format!("Bearer {token}"))
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(body)))
                .unwrap();
            let resp = client.request(req).await.expect("purge");
            assert_eq!(resp.status(), 202, "the app's purge was not accepted");
        }
        loop {
            if get_text(client, &url).await == expected {
                break;
            }
            assert!(committed.elapsed() < POLL_LIMIT, "{url} never showed {expected}");
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        let took = committed.elapsed();
        if table == "p" { relay.push(took) } else { direct.push(took) }
    }
    percentiles("commit to edge fresh, fresco cdc", relay);
    percentiles("commit to edge fresh, app purges", direct);
}

async fn metric(client: &HttpClient, metrics: &str, sample: &str) -> f64 {
    let text = get_text(client, &format!("{metrics}/metrics")).await;
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.rsplit_once(' ').filter(|(n, _)| *n == sample).and_then(|(_, v)| v.parse().ok()))
        .unwrap_or(0.0)
}

async fn wait_tags(client: &HttpClient, metrics: &str, target: f64) -> Instant {
    let deadline = Instant::now() + Duration::from_secs(600);
    while metric(client, metrics, "fresco_cdc_tags_total").await < target {
        assert!(Instant::now() < deadline, "the relay did not deliver every tag");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Instant::now()
}

async fn throughput(client: &HttpClient, metrics: &str, port: &str, rows: u64) {
    let mut psql = Psql::open(port);
    let before = metric(client, metrics, "fresco_cdc_tags_total").await;
    let started = Instant::now();
    psql.run("UPDATE bulk SET v = v + 1;");
    let committed = Instant::now();
    let done = wait_tags(client, metrics, before + rows as f64).await;
    let relay = done - committed;
    println!(
        "one {rows}-row transaction             update {:>6.2}s, then relay {:>6.2}s: {:>8.0} rows/s",
        (committed - started).as_secs_f64(),
        relay.as_secs_f64(),
        rows as f64 / relay.as_secs_f64()
    );
    let before = metric(client, metrics, "fresco_cdc_tags_total").await;
    let started = Instant::now();
    psql.run(&format!(
        "DO $$ BEGIN FOR i IN 1..{rows} LOOP UPDATE bulk SET v = v + 1 WHERE id = i; COMMIT; END LOOP; END $$;"
    ));
    let committed = Instant::now();
    let done = wait_tags(client, metrics, before + rows as f64).await;
    println!(
        "{rows} one-row transactions          commits {:>6.2}s, all delivered after {:>6.2}s: {:>8.0} rows/s (relay behind the last commit by {:.2}s)",
        (committed - started).as_secs_f64(),
        (done - started).as_secs_f64(),
        rows as f64 / (done - started).as_secs_f64(),
        (done - committed).as_secs_f64()
    );
}
