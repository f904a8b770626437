//! `fresco diagnose URL`: which layer serves a stale copy, and why.
//!
//! It asks the origin (each instance given, a few times, with `no-cache`)
//! for the current copy, then every cache layer normally and with
//! `Cache-Control: no-cache` (RFC 9111 §5.2.1.4, which makes a cache
//! revalidate), and compares body hashes, validators, `Age`, `Date`,
//! `Cache-Status` (RFC 9211) and a deploy version header. For a Fresco node
//! with its admin API it also reads the node's applied log version and the
//! cluster's invalidations, to tell a purge the node has not applied from a
//! TTL that has not run out. The judgement is a pure function of what was
//! observed and the time (`judge`), tested on its own.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};
use serde::Serialize;
use serde_json::Value;

use super::audit::{parse_headers, parse_url};
use super::fetch::{Fetched, Fetcher};
use super::rules::fingerprinted;
use crate::cli::CliError;
use crate::invalidation::Selector;
use crate::invalidation::selectors::path_prefixes;
use crate::policy::cache_control::{CacheControl, parse_cdn_cache_control};

const DIAGNOSE_EXIT_STATUS: &str = "Exit status: 0 every layer serves the origin's current copy; \
1 a layer serves a stale copy or cannot be reached, origin instances disagree, or the origin cannot be \
reached; 2 bad usage (a URL that is not absolute http(s), a malformed --node or --header).";

#[derive(Debug, clap::Args)]
#[command(after_help = DIAGNOSE_EXIT_STATUS)]
pub struct DiagnoseArgs {
    /// The resource's public URL; its host is sent as Host to every layer
    pub url: String,
    /// An origin instance, `http://host:port` (repeatable); the first is the reference
    #[arg(long = "origin", required = true)]
    pub origins: Vec<String>,
    /// A cache layer in front of the origin, `http://host:port`, with `,admin=URL`
    /// for a Fresco node's admin API (repeatable)
    #[arg(long = "node")]
    pub nodes: Vec<String>,
    /// Response header carrying the origin's deploy version, e.g. X-Deploy-Version
    #[arg(long)]
    pub version_header: Option<String>,
    /// Bearer token for the admin APIs; defaults to $FRESCO_TOKEN
    #[arg(long)]
    pub token: Option<String>,
    /// Extra request header `Name: value` (repeatable), to ask for one variant
    #[arg(long = "header", short = 'H')]
    pub headers: Vec<String>,
    /// Requests per origin instance, to catch a load balancer mixing deploys
    #[arg(long, default_value_t = 3)]
    pub samples: usize,
    /// Print JSON instead of text
    #[arg(long)]
    pub json: bool,
    /// Seconds to wait for each response
    #[arg(long, default_value_t = 15)]
    pub timeout: u64,
}

/// What one response of one layer showed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Observation {
    pub status: u16,
    pub etag: Option<String>,
    pub last_modified: Option<String>,
    pub date: Option<String>,
    pub age: Option<u64>,
    pub cache_status: Option<String>,
    pub vary: Option<String>,
    pub version: Option<String>,
    /// SHA-256 of the body (of its first 4 MiB), hex.
    pub body_sha256: String,
    pub body_len: usize,
    /// The body was longer than that: the hash covers its start.
    pub body_truncated: bool,
    /// The layer answered from its store.
    pub hit: bool,
    /// Seconds of freshness left, as the layer says (`Cache-Status` ttl) or
    /// as its headers give it; negative when served stale.
    pub ttl: Option<i64>,
}

impl Observation {
    pub(crate) fn of(got: &Fetched, version_header: Option<&HeaderName>) -> Observation {
        let h = &got.headers;
        let text = |name: &str| h.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
        let joined = |name: &str| {
            let all: Vec<&str> = h.get_all(name).iter().filter_map(|v| v.to_str().ok()).collect();
            (!all.is_empty()).then(|| all.join(", "))
        };
        let cache_status = joined("cache-status");
        // The last member is the cache nearest to us (RFC 9211 §2).
        let ours = cache_status.as_deref().and_then(|s| s.rsplit(',').next()).unwrap_or_default();
        let params: Vec<&str> = ours.split(';').map(str::trim).collect();
        let age = crate::policy::age::age_value(h).map(|d| d.as_secs());
        let x_cache_hit = text("x-cache").is_some_and(|x| x.to_ascii_uppercase().contains("HIT"));
        let hit = params.contains(&"hit") || x_cache_hit || (cache_status.is_none() && age.is_some_and(|a| a > 0));
        let ttl = params.iter().find_map(|p| p.strip_prefix("ttl=")).and_then(|t| t.parse().ok()).or_else(|| {
            let lifetime = lifetime(h)?;
            Some(lifetime as i64 - age.unwrap_or(0) as i64)
        });
        let digest = ring::digest::digest(&ring::digest::SHA256, &got.body);
        Observation {
            status: got.status,
            etag: text("etag"),
            last_modified: text("last-modified"),
            date: text("date"),
            age,
            cache_status,
            vary: joined("vary"),
            version: version_header.and_then(|n| h.get(n)).and_then(|v| v.to_str().ok()).map(str::to_string),
            body_sha256: crate::access::hex(digest.as_ref()),
            body_len: got.body.len(),
            body_truncated: got.truncated,
            hit,
            ttl,
        }
    }

    /// The same representation as `other`: body and deploy version.
    fn same_content(&self, other: &Observation) -> bool {
        self.status == other.status && self.body_sha256 == other.body_sha256 && self.version == other.version
    }

    fn short_hash(&self) -> &str {
        &self.body_sha256[..self.body_sha256.len().min(12)]
    }
}

/// A shared cache's lifetime from the headers a client sees.
fn lifetime(h: &HeaderMap) -> Option<u64> {
    let cc = parse_cdn_cache_control(h, &HeaderName::from_static("cdn-cache-control"))
        .unwrap_or_else(|| CacheControl::from_headers(h));
    if let Some(a) = cc.s_maxage.or(cc.max_age) {
        return Some(a.seconds());
    }
    let date = |name| h.get(name).and_then(|v| v.to_str().ok()).and_then(crate::policy::age::parse_http_date);
    let (expires, date) = (date("expires")?, date("date")?);
    Some(expires.duration_since(date).map_or(0, |d| d.as_secs()))
}

/// A Fresco node's position in the invalidation log, from its admin API.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct NodeLog {
    /// `fresco_invalidation_applied_version`.
    pub applied: u64,
    /// Readiness checks that fail, with their detail.
    pub not_ready: Vec<String>,
}

/// An invalidation as the cluster's audit reports it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Purge {
    pub version: u64,
    pub selectors: Vec<Selector>,
    pub accepted_ms: u64,
    pub reason: String,
    /// Nodes that may serve from their stores and have not confirmed it.
    pub unconfirmed: Vec<String>,
}

impl Purge {
    /// Does it select the object at `url` (normalised) with `tags`?
    fn selects(&self, url: &str, tags: &[String]) -> bool {
        self.selectors.iter().any(|s| match s {
            Selector::All => true,
            Selector::Url(u) => u == url,
            Selector::Prefix(p) => path_prefixes(url).any(|q| q == p),
            Selector::Tag(t) => tags.contains(t),
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Layer {
    pub url: String,
    pub normal: Result<Observation, String>,
    /// The same request with `Cache-Control: no-cache`.
    pub bypass: Option<Result<Observation, String>>,
    pub log: Option<Result<NodeLog, String>>,
}

/// Everything observed, the input of [`judge`].
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Evidence {
    /// The public URL, normalised as cache keys and purge URLs are.
    pub url: String,
    pub fingerprinted: bool,
    /// The object's invalidation tags, from the origin's response.
    pub tags: Vec<String>,
    /// Each origin instance and its samples.
    pub origins: Vec<(String, Vec<Result<Observation, String>>)>,
    pub nodes: Vec<Layer>,
    pub purges: Vec<Purge>,
    /// The log head: the newest version any admin API reported.
    pub head: Option<u64>,
}

/// Why a layer's copy is stale, most likely first.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "cause", rename_all = "kebab-case")]
pub(crate) enum Cause {
    /// An invalidation selecting this URL that the node has not applied.
    PurgeNotApplied {
        version: u64,
        accepted_ms: u64,
        reason: String,
        applied: u64,
        not_ready: Vec<String>,
        unconfirmed: Vec<String>,
    },
    /// Behind the log, with no invalidation of this URL known to explain it.
    BehindLog { applied: u64, head: u64 },
    /// Even a revalidating request through this layer gets the old copy:
    /// what is behind it (an origin instance, a parent) serves it.
    UpstreamOld { version: Option<String> },
    /// Stored and still fresh.
    TtlNotExpired { age: Option<u64>, remaining: i64, fresh_until_ms: u64, fingerprinted: bool },
    /// Past its freshness, served stale (stale-while-revalidate, stale-if-error).
    ServedStale { overdue: i64 },
    /// The layer's copy varies on other request fields than the origin's.
    VaryMismatch { layer: Option<String>, origin: Option<String> },
}

impl Cause {
    fn explain(&self, now_ms: u64) -> String {
        let ago = |ms: u64| format!("{} s ago", now_ms.saturating_sub(ms) / 1000);
        match self {
            Cause::PurgeNotApplied { version, accepted_ms, reason, applied, not_ready, unconfirmed } => {
                let mut s = format!(
                    "a purge was not applied on this node: invalidation {version} (accepted {}{}) selects this URL, \
                     but the node has applied the invalidation log only up to {applied}",
                    ago(*accepted_ms),
                    if reason.is_empty() { String::new() } else { format!(", reason {reason:?}") }
                );
                if !not_ready.is_empty() {
                    s.push_str(&format!("; the node reports not ready: {}", not_ready.join("; ")));
                }
                if !unconfirmed.is_empty() {
                    s.push_str(&format!("; the invalidation is unconfirmed by: {}", unconfirmed.join(", ")));
                }
                s.push_str(". Likely cut off from the invalidation log (network, bus) or stopped during the purge");
                s
            }
            Cause::BehindLog { applied, head } => format!(
                "the node is behind the invalidation log (applied {applied}, head {head}); no known invalidation of \
                 this URL explains the copy, but one older than the audit trail may"
            ),
            Cause::UpstreamOld { version } => format!(
                "even a revalidating (no-cache) request through this layer gets the old copy{}: what is behind it \
                 serves it (an origin instance still on the old deploy, or a parent cache)",
                version.as_ref().map(|v| format!(" (version {v})")).unwrap_or_default()
            ),
            Cause::TtlNotExpired { age, remaining, fresh_until_ms, fingerprinted } => {
                let until = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_millis(*fresh_until_ms));
                let mut s = format!(
                    "the TTL has not expired: stored {} and fresh for another {remaining} s (until {until})",
                    age.map(|a| format!("{a} s ago")).unwrap_or_else(|| "earlier".into())
                );
                if *fingerprinted {
                    s.push_str("; the URL is fingerprinted yet its content changed: the build reused a file name");
                } else {
                    s.push_str(
                        "; the URL is not fingerprinted, so a changed file keeps its URL: purge it \
                         (fresco purge --url) or put a content hash in its name",
                    );
                }
                s
            }
            Cause::ServedStale { overdue } => format!(
                "served stale {overdue} s past its freshness (stale-while-revalidate or stale-if-error) while the \
                 layer revalidates or the origin fails"
            ),
            Cause::VaryMismatch { layer, origin } => format!(
                "Vary differs: the layer's copy varies on {:?}, the origin's response on {:?}; the layer may hold \
                 another variant (ask for it with -H)",
                layer.as_deref().unwrap_or("nothing"),
                origin.as_deref().unwrap_or("nothing")
            ),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub(crate) enum State {
    Current,
    Stale { causes: Vec<Cause> },
    Unreachable { error: String },
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Verdict {
    pub layer: String,
    #[serde(flatten)]
    pub state: State,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Judgement {
    /// The origin's current copy, the reference.
    pub reference: Option<Observation>,
    /// Origin instances answering differently from the reference.
    pub origins_disagree: Vec<String>,
    pub verdicts: Vec<Verdict>,
}

/// Decides, for every layer, whether it serves the reference copy and if
/// not the likely causes. Pure: `now` is a parameter.
pub(crate) fn judge(e: &Evidence, now: SystemTime) -> Judgement {
    let now_ms = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let reference = e.origins.iter().flat_map(|(_, s)| s).find_map(|o| o.as_ref().ok()).cloned();
    let Some(reference) = reference else {
        return Judgement { reference: None, origins_disagree: Vec::new(), verdicts: Vec::new() };
    };
    let origins_disagree = e
        .origins
        .iter()
        .flat_map(|(name, samples)| samples.iter().map(move |s| (name, s)))
        .filter_map(|(name, s)| match s {
            Ok(o) if !o.same_content(&reference) => Some(format!(
                "{name} answered {} (body {}{})",
                o.status,
                o.short_hash(),
                o.version.as_ref().map(|v| format!(", version {v}")).unwrap_or_default()
            )),
            Ok(_) => None,
            Err(err) => Some(format!("{name}: {err}")),
        })
        .collect();
    let verdicts = e
        .nodes
        .iter()
        .map(|layer| {
            let state = match &layer.normal {
                Err(err) => State::Unreachable { error: err.clone() },
                Ok(o) if o.same_content(&reference) => State::Current,
                Ok(o) => State::Stale { causes: causes(e, layer, o, &reference, now_ms) },
            };
            Verdict { layer: layer.url.clone(), state }
        })
        .collect();
    Judgement { reference: Some(reference), origins_disagree, verdicts }
}

fn causes(e: &Evidence, layer: &Layer, seen: &Observation, reference: &Observation, now_ms: u64) -> Vec<Cause> {
    let mut out = Vec::new();
    if let Some(Ok(log)) = &layer.log {
        let missed: Vec<&Purge> =
            e.purges.iter().filter(|p| p.version > log.applied && p.selects(&e.url, &e.tags)).collect();
        match missed.last() {
            Some(p) => out.push(Cause::PurgeNotApplied {
                version: p.version,
                accepted_ms: p.accepted_ms,
                reason: p.reason.clone(),
                applied: log.applied,
                not_ready: log.not_ready.clone(),
                unconfirmed: p.unconfirmed.clone(),
            }),
            None => {
                if let Some(head) = e.head.filter(|h| *h > log.applied) {
                    out.push(Cause::BehindLog { applied: log.applied, head });
                }
            }
        }
    }
    if let Some(Ok(bypass)) = &layer.bypass
        && !bypass.same_content(reference)
    {
        out.push(Cause::UpstreamOld { version: bypass.version.clone() });
    }
    match seen.ttl {
        Some(remaining) if seen.hit && remaining > 0 => out.push(Cause::TtlNotExpired {
            age: seen.age,
            remaining,
            fresh_until_ms: now_ms + remaining as u64 * 1000,
            fingerprinted: e.fingerprinted,
        }),
        Some(remaining) if seen.hit && remaining <= 0 => out.push(Cause::ServedStale { overdue: -remaining }),
        _ => {}
    }
    let names = |v: &Option<String>| {
        v.as_ref().map(|v| {
            let mut n: Vec<String> = v.split(',').map(|s| s.trim().to_ascii_lowercase()).collect();
            n.sort();
            n
        })
    };
    if names(&seen.vary) != names(&reference.vary) {
        out.push(Cause::VaryMismatch { layer: seen.vary.clone(), origin: reference.vary.clone() });
    }
    out
}

/// A `--node` argument: the layer's URL and, for a Fresco node, its admin API.
fn parse_node(text: &str) -> Result<(Uri, Option<Uri>), CliError> {
    let mut parts = text.split(',');
    let data = parse_url("--node", parts.next().unwrap_or_default().trim())?;
    let mut admin = None;
    for part in parts {
        match part.trim().split_once('=') {
            Some(("admin", url)) => admin = Some(parse_url("--node admin", url.trim())?),
            _ => {
                return Err(CliError::Usage(format!(
                    "--node {text:?}: after the URL only `,admin=http://host:port` is accepted, not {part:?}"
                )));
            }
        }
    }
    Ok((data, admin))
}

/// The public URL's target on another base URL (an origin instance, a node).
fn at(base: &Uri, public: &Uri) -> Result<Uri, CliError> {
    let pq = public.path_and_query().map_or("/", |p| p.as_str());
    let scheme = base.scheme_str().unwrap_or("http");
    let authority = base.authority().map(|a| a.as_str()).unwrap_or_default();
    format!("{scheme}://{authority}{pq}").parse().map_err(|e| CliError::Usage(format!("{base}: {e}")))
}

pub async fn run(args: DiagnoseArgs) -> Result<(), CliError> {
    let public = parse_url("URL", &args.url)?;
    let host = public.authority().map(|a| a.as_str().to_string()).unwrap_or_default();
    let origins: Vec<Uri> = args.origins.iter().map(|o| parse_url("--origin", o)).collect::<Result<_, _>>()?;
    let nodes: Vec<(Uri, Option<Uri>)> = args.nodes.iter().map(|n| parse_node(n)).collect::<Result<_, _>>()?;
    let headers = parse_headers(&args.headers)?;
    let version_header = args
        .version_header
        .as_deref()
        .map(|n| HeaderName::from_bytes(n.as_bytes()))
        .transpose()
        .map_err(|_| CliError::Usage("--version-header: not a header name".into()))?;
    let token = args.token.clone().or_else(|| std::env::var("FRESCO_TOKEN").ok());
    let fetcher = Fetcher::new(Duration::from_secs(args.timeout.max(1)));
    let vh = version_header.as_ref();

    let mut bypass_headers = headers.clone();
    bypass_headers.push((http::header::CACHE_CONTROL, HeaderValue::from_static("no-cache")));
    let observe = async |base: &Uri, h: &[(HeaderName, HeaderValue)]| -> Result<(Observation, Fetched), String> {
        let target = at(base, &public).map_err(|e| e.to_string())?;
        let got = fetcher.once(&Method::GET, &target, Some(&host), h).await?;
        Ok((Observation::of(&got, vh), got))
    };

    // The layers first, as they are: the origin fetches below could refresh
    // a cache sitting in front of an origin instance.
    let mut layers = Vec::new();
    for (data, admin) in &nodes {
        let normal = observe(data, &headers).await.map(|(o, _)| o);
        let log = match admin {
            Some(a) => Some(node_log(&fetcher, a).await),
            None => None,
        };
        layers.push(Layer { url: data.to_string(), normal, bypass: None, log });
    }
    let mut origin_samples = Vec::new();
    let mut tags = Vec::new();
    for o in &origins {
        let mut samples = Vec::new();
        for _ in 0..args.samples.max(1) {
            let got = observe(o, &bypass_headers).await;
            if tags.is_empty()
                && let Ok((_, f)) = &got
            {
                tags = crate::policy::tags::tags(&f.headers);
            }
            samples.push(got.map(|(obs, _)| obs));
        }
        origin_samples.push((o.to_string(), samples));
    }
    // Then each layer again with no-cache: does a revalidation fix it?
    for (layer, (data, _)) in layers.iter_mut().zip(&nodes) {
        layer.bypass = Some(observe(data, &bypass_headers).await.map(|(o, _)| o));
    }
    let (purges, head) = cluster_purges(&fetcher, &nodes, token.as_deref()).await;
    let url = crate::invalidation::service::normalise_url("url", &public.to_string(), &Default::default())
        .unwrap_or_else(|_| public.to_string());
    let evidence = Evidence {
        url,
        fingerprinted: fingerprinted(&public),
        tags,
        origins: origin_samples,
        nodes: layers,
        purges,
        head,
    };
    let now = SystemTime::now();
    let judgement = judge(&evidence, now);
    if args.json {
        let out = serde_json::json!({ "evidence": evidence, "judgement": judgement });
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    } else {
        print_report(&evidence, &judgement, now, token.is_some());
    }
    if judgement.reference.is_none() {
        return Err(CliError::Failed("the origin could not be reached: nothing to compare with".into()));
    }
    let bad = judgement.verdicts.iter().filter(|v| v.state != State::Current).count();
    if bad > 0 || !judgement.origins_disagree.is_empty() {
        return Err(CliError::Failed(format!(
            "{bad} layer(s) do not serve the origin's current copy{}",
            if judgement.origins_disagree.is_empty() { "" } else { "; origin instances disagree" }
        )));
    }
    Ok(())
}

async fn get_json(fetcher: &Fetcher, url: &Uri, token: Option<&str>) -> Result<(u16, Value), String> {
    let mut h = Vec::new();
    if let Some(t) = token {
        let v = HeaderValue::from_str(&format!("Bearer {t}"))
            .map_err(|_| "the token has characters a header cannot carry")?;
        h.push((http::header::AUTHORIZATION, v));
    }
    let got = fetcher.once(&Method::GET, url, None, &h).await?;
    let value = serde_json::from_slice(&got.body).unwrap_or(Value::Null);
    Ok((got.status, value))
}

fn admin_url(admin: &Uri, path: &str) -> Result<Uri, String> {
    format!("{}://{}{path}", admin.scheme_str().unwrap_or("http"), admin.authority().map_or("", |a| a.as_str()))
        .parse()
        .map_err(|e| format!("{admin}: {e}"))
}

/// The node's applied version (from `/metrics`, no token needed) and its
/// failing readiness checks.
async fn node_log(fetcher: &Fetcher, admin: &Uri) -> Result<NodeLog, String> {
    let metrics = fetcher.once(&Method::GET, &admin_url(admin, "/metrics")?, None, &[]).await?;
    let text = String::from_utf8_lossy(&metrics.body);
    let applied = text
        .lines()
        .find_map(|l| l.strip_prefix("fresco_invalidation_applied_version "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .ok_or_else(|| {
            format!("{admin}: no fresco_invalidation_applied_version in /metrics (is it a Fresco admin API?)")
        })? as u64;
    let (_, ready) = get_json(fetcher, &admin_url(admin, "/readyz")?, None).await?;
    let not_ready = ready["checks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["ok"] == Value::Bool(false))
        .map(|c| format!("{}: {}", c["name"].as_str().unwrap_or("?"), c["detail"].as_str().unwrap_or("")))
        .collect();
    Ok(NodeLog { applied, not_ready })
}

/// The cluster's recent invalidations and the newest log head, merged from
/// every admin API that answers (a node cut off from the log knows less).
async fn cluster_purges(
    fetcher: &Fetcher,
    nodes: &[(Uri, Option<Uri>)],
    token: Option<&str>,
) -> (Vec<Purge>, Option<u64>) {
    let mut purges: BTreeMap<u64, Purge> = BTreeMap::new();
    let mut head = None;
    let Some(token) = token else { return (Vec::new(), None) };
    for admin in nodes.iter().filter_map(|(_, a)| a.as_ref()) {
        let Ok(nodes_url) = admin_url(admin, "/api/v1/nodes") else { continue };
        if let Ok((200, view)) = get_json(fetcher, &nodes_url, Some(token)).await {
            head = head.max(view["head"].as_u64());
        }
        let Ok(list_url) = admin_url(admin, "/api/v1/invalidations?limit=1000") else { continue };
        let Ok((200, list)) = get_json(fetcher, &list_url, Some(token)).await else { continue };
        for r in list["invalidations"].as_array().into_iter().flatten() {
            let (Some(version), Ok(selectors)) =
                (r["version"].as_u64(), serde_json::from_value::<Vec<Selector>>(r["selectors"].clone()))
            else {
                continue;
            };
            let purge = Purge {
                version,
                selectors,
                accepted_ms: r["accepted_ms"].as_u64().unwrap_or(0),
                reason: r["reason"].as_str().unwrap_or_default().to_string(),
                unconfirmed: r["unconfirmed"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|n| n.as_str().map(str::to_string))
                    .collect(),
            };
            // The node that knows most about it (the longest unconfirmed
            // list comes from a node that sees the others) wins.
            match purges.get(&version) {
                Some(p) if p.unconfirmed.len() >= purge.unconfirmed.len() => {}
                _ => {
                    purges.insert(version, purge);
                }
            }
        }
    }
    (purges.into_values().collect(), head)
}

fn print_report(e: &Evidence, j: &Judgement, now: SystemTime, had_token: bool) {
    let now_ms = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    println!(
        "{:<34} {:>6} {:<14} {:>6} {:<18} {:<10} {:<12} CACHE-STATUS",
        "LAYER", "STATUS", "CACHE", "AGE", "ETAG", "VERSION", "BODY"
    );
    let row = |name: &str, o: &Result<Observation, String>| match o {
        Ok(o) => println!(
            "{:<34} {:>6} {:<14} {:>6} {:<18} {:<10} {:<12} {}",
            name,
            o.status,
            match (o.hit, o.ttl) {
                (true, Some(t)) => format!("hit ttl={t}"),
                (true, None) => "hit".into(),
                (false, _) => "-".into(),
            },
            o.age.map_or("-".into(), |a| a.to_string()),
            o.etag.as_deref().unwrap_or("-"),
            o.version.as_deref().unwrap_or("-"),
            o.short_hash(),
            o.cache_status.as_deref().unwrap_or("-"),
        ),
        Err(err) => println!("{name:<34} {err}"),
    };
    for (name, samples) in &e.origins {
        for (i, s) in samples.iter().enumerate() {
            row(&format!("origin {name}{}", if i > 0 { format!(" #{}", i + 1) } else { String::new() }), s);
        }
    }
    for layer in &e.nodes {
        row(&format!("node {}", layer.url), &layer.normal);
        if let Some(b) = &layer.bypass {
            row("  with no-cache", b);
        }
        match &layer.log {
            Some(Ok(l)) => println!(
                "  applied invalidation log up to {}{}{}",
                l.applied,
                e.head.map(|h| format!(" (head {h})")).unwrap_or_default(),
                if l.not_ready.is_empty() { String::new() } else { format!("; not ready: {}", l.not_ready.join("; ")) }
            ),
            Some(Err(err)) => println!("  admin API: {err}"),
            None => {}
        }
    }
    println!();
    if j.reference.is_none() {
        println!("the origin could not be reached: nothing to compare with");
        return;
    }
    if !j.origins_disagree.is_empty() {
        println!(
            "ORIGIN: instances disagree with the first answer (a deploy that has not reached every instance?): {}",
            j.origins_disagree.join("; ")
        );
    }
    for v in &j.verdicts {
        match &v.state {
            State::Current => println!("{}: serves the origin's current copy", v.layer),
            State::Unreachable { error } => println!("{}: UNREACHABLE: {error}", v.layer),
            State::Stale { causes } => {
                println!("{}: STALE: serves a copy that differs from the origin's", v.layer);
                if causes.is_empty() {
                    println!("  cause unknown from what this layer shows (no Cache-Status, Age or admin API)");
                }
                for (i, c) in causes.iter().enumerate() {
                    println!("  {} {}", if i == 0 { "likely cause:" } else { "also:" }, c.explain(now_ms));
                }
            }
        }
    }
    if !had_token && e.nodes.iter().any(|l| l.log.is_some()) {
        println!("(no --token or FRESCO_TOKEN: the cluster's invalidations were not read)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::invalidation::Selector;

    const NOW: u64 = 1_800_000_000;

    fn obs(body: &str, hit: bool, ttl: Option<i64>) -> Observation {
        Observation {
            status: 200,
            etag: None,
            last_modified: None,
            date: None,
            age: hit.then_some(10),
            cache_status: None,
            vary: None,
            version: None,
            body_sha256: body.to_string(),
            body_len: body.len(),
            body_truncated: false,
            hit,
            ttl,
        }
    }

    fn evidence(node: Observation, bypass: Observation, log: Option<NodeLog>, purges: Vec<Purge>) -> Evidence {
        Evidence {
            url: "http://shop.test/obj".into(),
            fingerprinted: false,
            tags: vec!["obj".into()],
            origins: vec![("http://o".into(), vec![Ok(obs("new", false, None))])],
            nodes: vec![Layer { url: "http://n".into(), normal: Ok(node), bypass: Some(Ok(bypass)), log: log.map(Ok) }],
            purges,
            head: Some(5),
        }
    }

    fn purge(version: u64, selector: Selector) -> Purge {
        Purge {
            version,
            selectors: vec![selector],
            accepted_ms: 0,
            reason: String::new(),
            unconfirmed: vec!["c".into()],
        }
    }

    fn causes_of(e: &Evidence) -> Vec<Cause> {
        match &judge(e, UNIX_EPOCH + Duration::from_secs(NOW)).verdicts[0].state {
            State::Stale { causes } => causes.clone(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_same_body_and_version_is_current() {
        let e = evidence(obs("new", true, Some(100)), obs("new", false, None), None, vec![]);
        assert_eq!(judge(&e, UNIX_EPOCH).verdicts[0].state, State::Current);
    }

    #[test]
    fn a_deploy_version_differing_is_stale_even_with_the_same_body() {
        let mut node = obs("new", true, Some(100));
        node.version = Some("41".into());
        let mut e = evidence(node, obs("new", false, None), None, vec![]);
        if let Ok(o) = &mut e.origins[0].1[0] {
            o.version = Some("42".into());
        }
        assert!(matches!(judge(&e, UNIX_EPOCH).verdicts[0].state, State::Stale { .. }));
    }

    #[test]
    fn a_missed_purge_selecting_the_url_names_its_version() {
        for selector in [
            Selector::Tag("obj".into()),
            Selector::Url("http://shop.test/obj".into()),
            Selector::Prefix("http://shop.test".into()),
            Selector::All,
        ] {
            let log = NodeLog { applied: 4, not_ready: vec![] };
            let e = evidence(obs("old", true, Some(500)), obs("new", false, None), Some(log), vec![purge(5, selector)]);
            let causes = causes_of(&e);
            assert!(matches!(causes[0], Cause::PurgeNotApplied { version: 5, applied: 4, .. }), "{causes:?}");
        }
    }

    #[test]
    fn a_purge_of_something_else_or_already_applied_is_not_the_cause() {
        let log = NodeLog { applied: 4, not_ready: vec![] };
        let other = vec![purge(5, Selector::Tag("other".into())), purge(3, Selector::Tag("obj".into()))];
        let e = evidence(obs("old", true, Some(500)), obs("new", false, None), Some(log), other);
        let causes = causes_of(&e);
        assert_eq!(causes[0], Cause::BehindLog { applied: 4, head: 5 });
        assert!(matches!(causes[1], Cause::TtlNotExpired { remaining: 500, .. }));
    }

    #[test]
    fn a_fresh_stored_copy_says_when_it_expires() {
        let e = evidence(obs("old", true, Some(590)), obs("new", false, None), None, vec![]);
        let causes = causes_of(&e);
        assert_eq!(
            causes,
            [Cause::TtlNotExpired {
                age: Some(10),
                remaining: 590,
                fresh_until_ms: (NOW + 590) * 1000,
                fingerprinted: false
            }]
        );
        assert!(causes[0].explain(NOW * 1000).contains("not fingerprinted"));
    }

    #[test]
    fn a_stale_bypass_points_behind_the_layer() {
        let mut old = obs("old", false, None);
        old.version = Some("41".into());
        let e = evidence(obs("old", false, None), old, None, vec![]);
        assert_eq!(causes_of(&e), [Cause::UpstreamOld { version: Some("41".into()) }]);
    }

    #[test]
    fn served_past_its_ttl_is_stale_serving() {
        let e = evidence(obs("old", true, Some(-30)), obs("new", false, None), None, vec![]);
        assert_eq!(causes_of(&e), [Cause::ServedStale { overdue: 30 }]);
    }

    #[test]
    fn vary_differing_from_the_origin_is_named() {
        let mut node = obs("old", false, None);
        node.vary = Some("Accept-Encoding".into());
        let e = evidence(node, obs("new", false, None), None, vec![]);
        assert!(matches!(causes_of(&e)[0], Cause::VaryMismatch { .. }));
    }

    #[test]
    fn origin_instances_that_disagree_are_listed() {
        let mut e = evidence(obs("new", false, None), obs("new", false, None), None, vec![]);
        e.origins.push(("http://o2".into(), vec![Ok(obs("old", false, None))]));
        let j = judge(&e, UNIX_EPOCH);
        assert_eq!(j.origins_disagree.len(), 1);
        assert!(j.origins_disagree[0].starts_with("http://o2"));
    }

    #[test]
    fn node_arguments_take_an_admin_url() {
        let (data, admin) = parse_node("http://10.0.0.1:8081,admin=http://10.0.0.1:9091").unwrap();
        assert_eq!(
            (data.to_string(), admin.unwrap().to_string()),
            ("http://10.0.0.1:8081/".into(), "http://10.0.0.1:9091/".into())
        );
        assert!(parse_node("http://10.0.0.1:8081,token=x").is_err());
        assert!(parse_node("10.0.0.1:8081").is_err());
    }

    #[test]
    fn lifetime_from_headers_without_cache_status() {
        let mut h = HeaderMap::new();
        h.insert("cache-control", "public, max-age=60, s-maxage=600".parse().unwrap());
        assert_eq!(lifetime(&h), Some(600));
        let mut h = HeaderMap::new();
        h.insert("date", "Mon, 23 Nov 2026 10:00:00 GMT".parse().unwrap());
        h.insert("expires", "Mon, 23 Nov 2026 10:05:00 GMT".parse().unwrap());
        assert_eq!(lifetime(&h), Some(300));
    }
}
