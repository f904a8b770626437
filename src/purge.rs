//! `fresco purge`: issues an invalidation through a node's admin API and,
//! with `--wait`, follows it until every live node has applied it.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

#[derive(Debug, clap::Args)]
pub struct PurgeArgs {
    /// Admin API of any node
    #[arg(long, default_value = "http://127.0.0.1:9091")]
    pub admin: String,
    /// An absolute URL (all its variants); repeatable
    #[arg(long = "url")]
    pub urls: Vec<String>,
    /// A URL prefix, matched by whole path segments; repeatable
    #[arg(long = "prefix")]
    pub prefixes: Vec<String>,
    /// A tag (Surrogate-Key, Cache-Tag, Cache-Groups); repeatable
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// Everything (needs --break-glass and an `all` token)
    #[arg(long)]
    pub all: bool,
    #[arg(long)]
    pub break_glass: bool,
    /// Mark stale (served while revalidating) instead of removing
    #[arg(long)]
    pub soft: bool,
    /// Why, for the audit log
    #[arg(long, default_value = "")]
    pub reason: String,
    /// Bearer token; defaults to $FRESCO_TOKEN, then DATA_DIR/admin-token
    #[arg(long)]
    pub token: Option<String>,
    /// Where a local node keeps its admin token
    #[arg(long, default_value = "fresco-data")]
    pub data_dir: PathBuf,
    /// Wait until every live node has applied it, printing each as it does
    #[arg(long)]
    pub wait: bool,
    /// Seconds to wait with --wait before giving up (exit 1)
    #[arg(long, default_value_t = 30)]
    pub timeout: u64,
}

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

async fn call(
    client: &HttpClient,
    method: &str,
    url: &str,
    token: &str,
    body: Option<Value>,
) -> Result<(u16, Value), String> {
    let req = http::Request::builder()
        .method(method)
        .uri(url)
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(Full::new(body.map(|b| Bytes::from(b.to_string())).unwrap_or_default()))
        .map_err(|e| format!("bad admin URL {url}: {e}"))?;
    let resp = client.request(req).await.map_err(|e| format!("cannot reach {url}: {e}"))?;
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    let value = serde_json::from_slice(&bytes).unwrap_or_else(|_| json!({ "error": String::from_utf8_lossy(&bytes) }));
    Ok((status, value))
}

fn token(args: &PurgeArgs) -> Result<String, String> {
    if let Some(t) = &args.token {
        return Ok(t.clone());
    }
    if let Ok(t) = std::env::var("FRESCO_TOKEN") {
        return Ok(t);
    }
    let path = args.data_dir.join("admin-token");
    std::fs::read_to_string(&path).map(|t| t.trim().to_string()).map_err(|_| {
        format!("no token: give --token, set FRESCO_TOKEN, or run beside a node whose {} exists", path.display())
    })
}

pub async fn run(args: PurgeArgs) -> Result<(), String> {
    let token = token(&args)?;
    let body = json!({
        "urls": args.urls, "prefixes": args.prefixes, "tags": args.tags, "all": args.all,
        "break_glass": args.break_glass, "mode": if args.soft { "soft" } else { "hard" }, "reason": args.reason,
    });
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let base = args.admin.trim_end_matches('/');
    let (status, accepted) = call(&client, "POST", &format!("{base}/api/v1/invalidations"), &token, Some(body)).await?;
    if status != 202 {
        return Err(format!("refused ({status}): {}", accepted["error"].as_str().unwrap_or("no reason given")));
    }
    let id = accepted["id"].as_str().unwrap_or_default().to_string();
    println!("accepted: id={id} version={}", accepted["version"]);
    if !args.wait {
        return Ok(());
    }
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    let mut shown: Vec<String> = Vec::new();
    loop {
        let (status, s) = call(&client, "GET", &format!("{base}/api/v1/invalidations/{id}"), &token, None).await?;
        if status != 200 {
            return Err(format!("status query failed ({status}): {}", s["error"].as_str().unwrap_or("")));
        }
        for n in s["nodes"].as_array().into_iter().flatten() {
            let node = n["node"].as_str().unwrap_or("?").to_string();
            if n["applied_ms"].is_u64() && !shown.contains(&node) {
                println!("  {node:<24} applied  lag {:>6} ms", n["lag_ms"]);
                shown.push(node);
            }
        }
        if s["converged"] == json!(true) {
            println!("converged: {} node(s)", shown.len());
            return Ok(());
        }
        if Instant::now() >= deadline {
            let pending: Vec<String> = s["nodes"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|n| !n["applied_ms"].is_u64())
                .filter_map(|n| n["node"].as_str().map(str::to_string))
                .collect();
            return Err(format!("not converged after {} s; waiting on: {}", args.timeout, pending.join(", ")));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
