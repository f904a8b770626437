//! `fresco watch`: synthetic freshness checks (design §6), the detector
//! for a purge that half-landed. Every round it fetches each watched path
//! from the origin directly (bypassing every cache) and through every
//! node, and compares what each node serves with what the origin serves
//! now: a version header when given, else the `ETag`, else
//! `Last-Modified`, else a hash of the body. A node that keeps serving
//! something else for longer than `--slo` has diverged: it is printed with
//! the node, the path and both versions, counted, and makes the exit status
//! 1 when `--rounds` ends. The watched paths are the given ones plus the
//! URLs of the most recent URL invalidations (with `--admin`).

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::cli::CliError;
use crate::purge::HttpClient;

#[derive(Debug, clap::Args)]
pub struct WatchArgs {
    /// A node's data listener, as clients reach it (http://HOST:PORT); repeatable
    #[arg(long = "node", required = true)]
    pub nodes: Vec<String>,
    /// The origin, asked directly (http://HOST:PORT)
    #[arg(long)]
    pub origin: String,
    /// A path to watch, e.g. /products/42; repeatable
    #[arg(long = "path")]
    pub paths: Vec<String>,
    /// Also watch the URLs of the 20 most recent URL invalidations, from this admin API
    #[arg(long)]
    pub admin: Option<String>,
    /// Bearer token for --admin; defaults to $FRESCO_TOKEN, then DATA_DIR/admin-token
    #[arg(long)]
    pub token: Option<String>,
    #[arg(long, default_value = "fresco-data")]
    pub data_dir: PathBuf,
    /// Host header to send (the site's name), when nodes serve by host
    #[arg(long)]
    pub host: Option<String>,
    /// Compare this response header (a version the origin sets) instead of the validators
    #[arg(long)]
    pub version_header: Option<String>,
    /// How long a node may serve something other than the origin before it counts as diverged
    #[arg(long, default_value = "10s")]
    pub slo: String,
    /// Time between rounds
    #[arg(long, default_value = "10s")]
    pub interval: String,
    /// Rounds to run (0: until interrupted); then exit 1 if a node diverged
    #[arg(long, default_value_t = 0)]
    pub rounds: u64,
}

/// Bound on one fetch, so a hung node does not stall the round.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// What a response says about the version it carries.
fn version(headers: &http::HeaderMap, body: &[u8], header: Option<&str>) -> String {
    let field = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    match header {
        Some(name) => field(name).map_or_else(|| format!("(no {name})"), |v| format!("{name}: {v}")),
        None => field("etag")
            .map(|e| format!("etag {e}"))
            .or_else(|| field("last-modified").map(|l| format!("last-modified {l}")))
            .unwrap_or_else(|| format!("body hash {:016x}", rapidhash::v3::rapidhash_v3(body))),
    }
}

async fn fetch(
    client: &HttpClient,
    url: &str,
    host: Option<&str>,
    header: Option<&str>,
) -> Result<(u16, String), String> {
    let mut req = http::Request::builder().uri(url).header("user-agent", "fresco-watch");
    if let Some(h) = host {
        req = req.header("host", h);
    }
    let req = req.body(Full::new(Bytes::new())).map_err(|e| format!("bad URL {url}: {e}"))?;
    let exchange = async {
        let resp = client.request(req).await.map_err(|e| format!("cannot reach {url}: {}", crate::purge::cause(&e)))?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.map_err(|e| format!("{url}: {e}"))?.to_bytes();
        Ok((status, version(&headers, &body, header)))
    };
    tokio::time::timeout(FETCH_TIMEOUT, exchange).await.unwrap_or_else(|_| Err(format!("{url}: no answer in time")))
}

/// The paths of the most recent URL invalidations.
async fn invalidated_paths(client: &HttpClient, admin: &str, token: &str) -> Result<Vec<String>, CliError> {
    let url = format!("{admin}/api/v1/invalidations?limit=20");
    let (status, list) = crate::purge::call(client, "GET", &url, token, None).await?;
    if status != 200 {
        let why = list["error"].as_str().unwrap_or("");
        return Err(CliError::Failed(format!("cannot list invalidations ({status}): {why}")));
    }
    let urls = list["invalidations"].as_array().into_iter().flatten().flat_map(|inv| {
        inv["selectors"].as_array().into_iter().flatten().filter_map(|s| s["url"].as_str()).collect::<Vec<_>>()
    });
    Ok(urls
        .filter_map(|u| u.parse::<http::Uri>().ok())
        .filter_map(|u| u.path_and_query().map(|p| p.as_str().to_string()))
        .collect())
}

fn duration(flag: &str, text: &str) -> Result<Duration, CliError> {
    crate::config::parse_duration(text)
        .ok_or_else(|| CliError::Usage(format!("--{flag} {text}: expected a duration such as 500ms, 10s or 1m")))
}

pub async fn run(args: WatchArgs) -> Result<(), CliError> {
    let slo = duration("slo", &args.slo)?;
    let interval = duration("interval", &args.interval)?;
    let base = |url: &str, flag: &str| -> Result<String, CliError> {
        crate::purge::admin_base(url).map_err(|_| {
            CliError::Usage(format!("--{flag} {url}: expected an http:// URL such as http://127.0.0.1:8081"))
        })
    };
    let origin = base(&args.origin, "origin")?;
    let nodes = args.nodes.iter().map(|n| base(n, "node")).collect::<Result<Vec<_>, _>>()?;
    let admin = match &args.admin {
        Some(a) => Some((crate::purge::admin_base(a)?, crate::purge::token_from(args.token.as_ref(), &args.data_dir)?)),
        None => None,
    };
    if args.paths.is_empty() && admin.is_none() {
        return Err(CliError::Usage("nothing to watch: give --path, or --admin for recently invalidated URLs".into()));
    }
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let header = args.version_header.as_deref();
    let host = args.host.as_deref();
    // Since when each (node, path) has served something other than the origin.
    let mut differs_since: HashMap<(String, String), Instant> = HashMap::new();
    let mut diverged_total = 0u64;
    let mut round = 0u64;
    loop {
        round += 1;
        let mut paths = args.paths.clone();
        if let Some((admin, token)) = &admin {
            paths.extend(invalidated_paths(&client, admin, token).await?);
        }
        paths.sort();
        paths.dedup();
        let mut diverged = 0;
        for path in &paths {
            let reference = match fetch(&client, &format!("{origin}{path}"), host, header).await {
                Ok((200, v)) => v,
                Ok((status, _)) => {
                    println!("round {round}: {path}: the origin answers {status}; not compared");
                    continue;
                }
                Err(e) => {
                    println!("round {round}: {path}: {e}; not compared");
                    continue;
                }
            };
            for node in &nodes {
                let served = match fetch(&client, &format!("{node}{path}"), host, header).await {
                    Ok((_, v)) => v,
                    Err(e) => format!("(error: {e})"),
                };
                let key = (node.clone(), path.clone());
                if served == reference {
                    differs_since.remove(&key);
                    continue;
                }
                let since = *differs_since.entry(key).or_insert_with(Instant::now);
                if since.elapsed() >= slo {
                    diverged += 1;
                    println!(
                        "DIVERGED node={node} path={path} serves [{served}] while the origin has [{reference}], for {} ms (slo {} ms)",
                        since.elapsed().as_millis(),
                        slo.as_millis()
                    );
                }
            }
        }
        diverged_total += diverged;
        println!("round {round}: {} path(s) on {} node(s), {diverged} diverged", paths.len(), nodes.len());
        if args.rounds != 0 && round >= args.rounds {
            break;
        }
        tokio::time::sleep(interval).await;
    }
    if diverged_total > 0 {
        return Err(CliError::Failed(format!("{diverged_total} divergence(s) beyond the slo")));
    }
    Ok(())
}
