//! `fresco purge`: issues an invalidation through a node's admin API and,
//! with `--wait`, follows it until every live node has applied it.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

use crate::cli::CliError;

const PURGE_EXIT_STATUS: &str = "Exit status: 0 accepted (with --wait: applied by every live node); \
1 the node could not be reached or refused it (the error names the HTTP status), or with --wait it did not \
converge within --timeout; 2 bad usage or configuration (no selector, no token, a malformed --admin URL).";

#[derive(Debug, clap::Args)]
#[command(after_help = PURGE_EXIT_STATUS)]
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

pub(crate) type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

pub(crate) async fn call(
    client: &HttpClient,
    method: &str,
    url: &str,
    token: &str,
    body: Option<Value>,
) -> Result<(u16, Value), CliError> {
    let req = http::Request::builder()
        .method(method)
        .uri(url)
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(Full::new(body.map(|b| Bytes::from(b.to_string())).unwrap_or_default()))
        .map_err(|e| CliError::Usage(format!("bad admin URL {url} (`--admin`): {e}")))?;
    let resp = client.request(req).await.map_err(|e| CliError::Failed(format!("cannot reach {url}: {}", cause(&e))))?;
    let status = resp.status().as_u16();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| CliError::Failed(format!("cannot read the answer from {url}: {e}")))?
        .to_bytes();
    let value = serde_json::from_slice(&bytes).unwrap_or_else(|_| json!({ "error": String::from_utf8_lossy(&bytes) }));
    Ok((status, value))
}

/// What went wrong, in the operator's words: the innermost cause
/// (`Connection refused (os error 111)`), which is what tells them whether
/// the node is down, the port wrong or the host unknown.
pub(crate) fn cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut innermost = e;
    while let Some(next) = innermost.source() {
        innermost = next;
    }
    let text = innermost.to_string();
    if text.contains("Connection refused") {
        format!("connection refused ({text}): is a node listening there? `--admin` is its admin listener")
    } else {
        text
    }
}

/// The base URL of the admin API from `--admin`. A bare `host:port` gets a
/// hint rather than an obscure parse error.
pub(crate) fn admin_base(admin: &str) -> Result<String, CliError> {
    let base = admin.trim_end_matches('/');
    let parsed: Option<http::Uri> = base.parse().ok();
    match parsed {
        Some(u) if matches!(u.scheme_str(), Some("http")) && u.authority().is_some() => Ok(base.to_string()),
        Some(u) if u.scheme_str() == Some("https") => Err(CliError::Usage(format!(
            "bad admin URL {admin} (`--admin`): the admin listener speaks plain HTTP; use http://{}",
            u.authority().map_or("", |a| a.as_str())
        ))),
        _ if !base.contains("://") => {
            Err(CliError::Usage(format!("bad admin URL {admin} (`--admin`): did you mean http://{base} ?")))
        }
        _ => Err(CliError::Usage(format!(
            "bad admin URL {admin} (`--admin`): expected an http:// URL such as http://127.0.0.1:9091"
        ))),
    }
}

pub(crate) fn token_from(given: Option<&String>, data_dir: &std::path::Path) -> Result<String, CliError> {
    if let Some(t) = given {
        return Ok(t.clone());
    }
    if let Ok(t) = std::env::var("FRESCO_TOKEN") {
        return Ok(t);
    }
    let path = data_dir.join("admin-token");
    std::fs::read_to_string(&path).map(|t| t.trim().to_string()).map_err(|_| {
        CliError::Usage(format!(
            "no token: give --token, set FRESCO_TOKEN, or run beside a node whose {} exists",
            path.display()
        ))
    })
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Admin API of any node
    #[arg(long, default_value = "http://127.0.0.1:9091")]
    pub admin: String,
    /// Bearer token; defaults to $FRESCO_TOKEN, then DATA_DIR/admin-token
    #[arg(long)]
    pub token: Option<String>,
    #[arg(long, default_value = "fresco-data")]
    pub data_dir: PathBuf,
}

/// `fresco status`: every node, its applied version, lag behind the log,
/// heartbeat age and hit ratio.
pub async fn status(args: StatusArgs) -> Result<(), CliError> {
    let url = format!("{}/api/v1/nodes", admin_base(&args.admin)?);
    let token = token_from(args.token.as_ref(), &args.data_dir)?;
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let (code, view) = call(&client, "GET", &url, &token, None).await?;
    if code != 200 {
        return Err(CliError::Failed(format!(
            "status query failed ({code}): {}",
            view["error"].as_str().unwrap_or("")
        )));
    }
    let head = view["head"].as_u64();
    println!("log head: {}", head.map_or("unknown".to_string(), |h| h.to_string()));
    println!("{:<24} {:>6} {:>10} {:>8} {:>12} {:>9}", "node", "state", "applied", "lag", "heartbeat", "hit ratio");
    for n in view["nodes"].as_array().into_iter().flatten() {
        let applied = n["applied_version"].as_u64().unwrap_or(0);
        let (hits, requests) = (n["hits"].as_u64().unwrap_or(0), n["requests"].as_u64().unwrap_or(0));
        let ratio =
            if requests == 0 { "-".to_string() } else { format!("{:.1}%", hits as f64 * 100.0 / requests as f64) };
        println!(
            "{:<24} {:>6} {:>10} {:>8} {:>10}ms {:>9}",
            n["node"].as_str().unwrap_or("?"),
            if n["live"] == json!(true) { "live" } else { "DOWN" },
            applied,
            head.map_or("-".to_string(), |h| h.saturating_sub(applied).to_string()),
            n["heartbeat_age_ms"].as_u64().unwrap_or(0),
            ratio,
        );
    }
    for l in view["layers"].as_array().into_iter().flatten() {
        println!(
            "layer {:<18} {:>8} delivered {:>8} backlog {}{}",
            l["name"].as_str().unwrap_or("?"),
            l["kind"].as_str().unwrap_or("?"),
            l["delivered"].as_u64().unwrap_or(0),
            l["backlog"].as_u64().unwrap_or(0),
            l["last_error"].as_str().map_or(String::new(), |e| format!("  last error: {e}")),
        );
    }
    Ok(())
}

pub async fn run(args: PurgeArgs) -> Result<(), CliError> {
    if args.urls.is_empty() && args.prefixes.is_empty() && args.tags.is_empty() && !args.all {
        return Err(CliError::Usage("nothing to purge: give --url, --prefix, --tag or --all".into()));
    }
    let base = admin_base(&args.admin)?;
    let token = token_from(args.token.as_ref(), &args.data_dir)?;
    let body = json!({
        "urls": args.urls, "prefixes": args.prefixes, "tags": args.tags, "all": args.all,
        "break_glass": args.break_glass, "mode": if args.soft { "soft" } else { "hard" }, "reason": args.reason,
    });
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let base = base.as_str();
    let (status, accepted) = call(&client, "POST", &format!("{base}/api/v1/invalidations"), &token, Some(body)).await?;
    if status != 202 {
        let why = accepted["error"].as_str().unwrap_or("no reason given");
        return Err(CliError::Failed(format!("refused ({status}): {why}")));
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
            let why = s["error"].as_str().unwrap_or("");
            return Err(CliError::Failed(format!("status query failed ({status}): {why}")));
        }
        for n in s["nodes"].as_array().into_iter().flatten() {
            let node = n["node"].as_str().unwrap_or("?").to_string();
            if n["applied"] == json!(true) && !shown.contains(&node) {
                match n["lag_ms"].as_u64() {
                    Some(lag) => println!("  {node:<24} applied  lag {lag:>6} ms"),
                    None => println!("  {node:<24} applied"),
                }
                shown.push(node);
            }
        }
        if s["converged"] == json!(true) {
            let down: Vec<&str> = s["down"].as_array().into_iter().flatten().filter_map(|d| d.as_str()).collect();
            let lag = s["nodes"].as_array().into_iter().flatten().filter_map(|n| n["lag_ms"].as_u64()).max();
            print!("converged: {} live node(s)", shown.len());
            if let Some(lag) = lag {
                print!(", last applied {lag} ms after acceptance");
            }
            if !down.is_empty() {
                print!("; down, not counted: {}", down.join(", "));
            }
            println!();
            return Ok(());
        }
        if Instant::now() >= deadline {
            let pending: Vec<String> = s["nodes"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|n| n["applied"] != json!(true))
                .filter_map(|n| n["node"].as_str().map(str::to_string))
                .collect();
            return Err(CliError::Failed(format!(
                "not converged after {} s; waiting on: {}",
                args.timeout,
                pending.join(", ")
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
