//! Accepting invalidations: parse and validate a request, check the token,
//! append to the log. Shared by the admin API, the PURGE method and the
//! origin's Cache-Group-Invalidation.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};
use serde::Deserialize;

use super::audit::Audit;
use super::log::{APPEND_TIMEOUT, Accepting, EmbeddedLog, Entry, InvalidationLog, LogError, NewInvalidation};
use super::selectors::{Invalidations, Mode, Selector};
use crate::access::{Access, Denied};
use crate::key::KeyPolicy;
use crate::policy::tags::MAX_TAG_LEN;

/// Most selectors in one request.
pub const MAX_SELECTORS: usize = 1000;
/// Longest URL or prefix selector.
pub const MAX_URL_LEN: usize = 4096;
/// Longest reason.
pub const MAX_REASON_LEN: usize = 1024;
/// Largest request body accepted by the API.
pub const MAX_BODY: usize = 1 << 20;

/// The JSON body of `POST /api/v1/invalidations`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    #[serde(default)]
    pub urls: Vec<String>,
    #[serde(default)]
    pub prefixes: Vec<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub all: bool,
    #[serde(default)]
    pub mode: Option<Mode>,
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub break_glass: bool,
}

/// The body of `POST /api/v1/invalidation-events`, the event format of the
/// HTTP cache invalidation draft (`shared/specs/draft-http-invalidation.md`).
#[derive(Debug, Deserialize)]
pub struct Event {
    #[serde(rename = "type")]
    pub kind: String,
    pub selectors: Vec<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    /// Remove (true) or mark invalid, to be validated before reuse (false).
    #[serde(default)]
    pub purge: bool,
}

/// What an event asks for, or why it cannot be done: `Err((true, msg))`
/// for an unsupported feature (501), `Err((false, msg))` for a malformed
/// event (400).
pub fn event_selectors(event: &Event, keys: &KeyPolicy) -> Result<(Vec<Selector>, Mode), (bool, String)> {
    let mode = if event.purge { Mode::Hard } else { Mode::Soft };
    let bad = |m: String| (false, m);
    if event.selectors.is_empty() {
        return Err(bad("\"selectors\" is empty".into()));
    }
    if event.selectors.len() + event.groups.len() > MAX_SELECTORS {
        return Err(bad(format!("at most {MAX_SELECTORS} selectors per event")));
    }
    let selectors = match event.kind.as_str() {
        "uri" => event.selectors.iter().map(|s| normalise_url("selectors", s, keys).map(Selector::Url)).collect(),
        // An origin is the prefix that selects everything under it.
        "uri-prefix" | "origin" => event
            .selectors
            .iter()
            .map(|s| normalise_url("selectors", s, keys).map(|u| Selector::Prefix(u.trim_end_matches('/').to_string())))
            .collect(),
        "group" => {
            if event.groups.is_empty() {
                return Err(bad("a \"group\" event needs a non-empty \"groups\" member".into()));
            }
            // Fresco fronts one origin, so its groups are that origin's.
            for s in &event.selectors {
                normalise_url("selectors", s, keys).map_err(bad)?;
            }
            let mut out = Vec::new();
            for g in &event.groups {
                if g.is_empty() || g.len() > MAX_TAG_LEN {
                    return Err(bad(format!("group {g:?} is empty or longer than {MAX_TAG_LEN} bytes")));
                }
                out.push(Selector::Tag(g.clone()));
            }
            Ok(out)
        }
        other => {
            return Err((
                true,
                format!("selector type {other:?} is not supported; supported: uri, uri-prefix, origin, group"),
            ));
        }
    };
    selectors.map(|s| (s, mode)).map_err(bad)
}

/// Why a submission was not accepted.
#[derive(Debug)]
pub enum Refused {
    /// 400, with what was wrong.
    Invalid(String),
    Denied(Denied),
    Log(LogError),
}

/// How long a node remembers an `Idempotency-Key`; also the JetStream
/// stream's duplicate window (its default).
pub const IDEMPOTENCY_WINDOW: Duration = Duration::from_secs(120);
/// Longest `Idempotency-Key` accepted.
pub const MAX_KEY_LEN: usize = 128;
/// Most keys remembered; the oldest are forgotten first (their retries are
/// still deduplicated by the cluster's stream).
const MAX_KEYS: usize = 100_000;

/// What makes a retried request the same request: the client's
/// `Idempotency-Key`, or a key generated for one request so that the log's
/// own retries of it never make a second entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey {
    pub id: String,
    /// Chosen by the client (a retry may come later, to any node).
    pub client: bool,
}

impl IdempotencyKey {
    /// A client's key: 1 to 128 visible ASCII characters.
    pub fn from_client(value: &[u8]) -> Result<IdempotencyKey, String> {
        if value.is_empty() || value.len() > MAX_KEY_LEN || !value.iter().all(|b| b.is_ascii_graphic()) {
            return Err(format!(
                "Idempotency-Key must be 1 to {MAX_KEY_LEN} visible ASCII characters (no spaces), e.g. a UUID"
            ));
        }
        Ok(IdempotencyKey { id: String::from_utf8_lossy(value).into_owned(), client: true })
    }
}

/// The log as the service appends to it: with the request's key, which a
/// log that deduplicates (the cluster's) keeps with the entry.
pub trait KeyedLog: Send + Sync + 'static {
    fn append_keyed(&self, invalidation: NewInvalidation, key: IdempotencyKey) -> Accepting<'_>;
}

/// The embedded log has one writer, this node: the service's memory of
/// recent keys is its deduplication.
impl KeyedLog for EmbeddedLog {
    fn append_keyed(&self, invalidation: NewInvalidation, _key: IdempotencyKey) -> Accepting<'_> {
        self.append(invalidation)
    }
}

type Outcome = Shared<BoxFuture<'static, Result<Entry, LogError>>>;

/// A client key seen recently: what it asked for, and the append's outcome
/// (shared, so a retry that arrives while the first attempt runs waits for
/// it instead of appending again).
struct Remembered {
    selectors: Vec<Selector>,
    mode: Mode,
    outcome: Outcome,
}

/// Keys seen in the last IDEMPOTENCY_WINDOW, oldest first for expiry.
#[derive(Default)]
pub struct Recent {
    keys: HashMap<String, Remembered>,
    order: VecDeque<(Instant, String)>,
}

impl Recent {
    fn expire(&mut self, now: Instant) {
        while let Some((at, _)) = self.order.front() {
            if now.duration_since(*at) < IDEMPOTENCY_WINDOW && self.order.len() <= MAX_KEYS {
                break;
            }
            if let Some((_, key)) = self.order.pop_front() {
                self.keys.remove(&key);
            }
        }
    }
}

/// Parses and validates a request body into selectors.
pub fn parse(body: &[u8], keys: &KeyPolicy) -> Result<(Request, Vec<Selector>), String> {
    if body.len() > MAX_BODY {
        return Err(format!("request body is {} bytes; at most {MAX_BODY} are accepted", body.len()));
    }
    let req: Request = serde_json::from_slice(body).map_err(|e| format!("invalid JSON: {e}"))?;
    let selectors = selectors(&req, keys)?;
    Ok((req, selectors))
}

/// The selectors a request names, normalised, or what is wrong with them.
pub fn selectors(req: &Request, keys: &KeyPolicy) -> Result<Vec<Selector>, String> {
    let count = req.urls.len() + req.prefixes.len() + req.tags.len();
    if req.all {
        if count > 0 {
            return Err("\"all\" cannot be combined with urls, prefixes or tags".into());
        }
        return Ok(vec![Selector::All]);
    }
    if count == 0 {
        return Err("no selector: give at least one of \"urls\", \"prefixes\", \"tags\", or \"all\": true".into());
    }
    if count > MAX_SELECTORS {
        return Err(format!("{count} selectors; at most {MAX_SELECTORS} per request"));
    }
    if req.reason.len() > MAX_REASON_LEN {
        return Err(format!("\"reason\" is {} bytes; at most {MAX_REASON_LEN}", req.reason.len()));
    }
    let mut out = Vec::with_capacity(count);
    for u in &req.urls {
        out.push(Selector::Url(normalise_url("urls", u, keys)?));
    }
    for p in &req.prefixes {
        out.push(Selector::Prefix(normalise_url("prefixes", p, keys)?.trim_end_matches('/').to_string()));
    }
    for t in &req.tags {
        if t.trim().is_empty() || t.len() > MAX_TAG_LEN || t.chars().any(char::is_control) {
            return Err(format!("tag {t:?} is empty, has control characters or is longer than {MAX_TAG_LEN} bytes"));
        }
        out.push(Selector::Tag(t.trim().to_string()));
    }
    Ok(out)
}

/// An absolute http(s) URL, normalised as cache keys are (RFC 3986 §6.2.2).
pub fn normalise_url(field: &str, text: &str, keys: &KeyPolicy) -> Result<String, String> {
    if text.len() > MAX_URL_LEN {
        return Err(format!("a \"{field}\" entry is {} bytes; at most {MAX_URL_LEN}", text.len()));
    }
    let uri: http::Uri = text.parse().map_err(|_| format!("\"{field}\" entry {text:?} is not a URL"))?;
    let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
        return Err(format!("\"{field}\" entry {text:?} must be absolute, like https://shop.example/path"));
    };
    if scheme != "http" && scheme != "https" {
        return Err(format!("\"{field}\" entry {text:?} must be http or https"));
    }
    let pq = uri.path_and_query().map_or("/", |p| p.as_str());
    Ok(keys.key(scheme, authority.as_str(), pq, &http::HeaderMap::new()).url)
}

/// The node's side of invalidation: access control in front of the log.
pub struct Service {
    pub log: Arc<dyn KeyedLog>,
    pub audit: Arc<Audit>,
    pub invalidations: Arc<Invalidations>,
    pub access: Access,
    pub node: String,
    pub keys: KeyPolicy,
    /// The nodes that must apply an invalidation for it to converge.
    pub membership: Arc<dyn super::cluster::Membership>,
    pub recent: Mutex<Recent>,
    /// Generated keys: this node's name, its start time and a counter.
    pub key_prefix: String,
    pub key_counter: AtomicU64,
}

impl Service {
    /// Authenticates, authorises and appends. Resolves once the
    /// invalidation is durable and applied on this node.
    pub async fn submit(
        &self,
        authorization: Option<&str>,
        selectors: Vec<Selector>,
        mode: Mode,
        reason: String,
        break_glass: bool,
    ) -> Result<Entry, Refused> {
        self.submit_keyed(authorization, selectors, mode, reason, break_glass, None).await
    }

    /// As `submit`, for a request that carries an `Idempotency-Key`: a
    /// retry with the same key yields the same entry, never a second one.
    pub async fn submit_keyed(
        &self,
        authorization: Option<&str>,
        selectors: Vec<Selector>,
        mode: Mode,
        reason: String,
        break_glass: bool,
        key: Option<IdempotencyKey>,
    ) -> Result<Entry, Refused> {
        let token = self.access.authenticate(authorization).map_err(Refused::Denied)?;
        self.access.authorize(token, &selectors, break_glass).map_err(Refused::Denied)?;
        if selectors.contains(&Selector::All) {
            tracing::warn!(issuer = %token.name, %reason, "break-glass purge of everything");
        }
        let inv = NewInvalidation { selectors, mode, reason, issuer: token.name.clone(), break_glass };
        match key {
            Some(key) => self.append_once(inv, key).await,
            None => self.append(inv).await.map_err(Refused::Log),
        }
    }

    /// Appends without a token: for invalidations the origin asked for
    /// (Cache-Group-Invalidation), which are as trusted as its responses.
    pub async fn append(&self, inv: NewInvalidation) -> Result<Entry, LogError> {
        let n = self.key_counter.fetch_add(1, Ordering::Relaxed);
        let key = IdempotencyKey { id: format!("{}-{n}", self.key_prefix), client: false };
        self.await_outcome(self.start_append(inv, key)).await
    }

    /// Appends under a client's key, or joins the append already made (or
    /// running) under it. A key whose earlier attempt failed is tried again
    /// with the same key, which the cluster's log deduplicates should that
    /// attempt have committed after all.
    async fn append_once(&self, inv: NewInvalidation, key: IdempotencyKey) -> Result<Entry, Refused> {
        let outcome = {
            let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
            recent.expire(Instant::now());
            match recent.keys.get(&key.id) {
                Some(r) if r.selectors != inv.selectors || r.mode != inv.mode => return Err(key_reused(&key)),
                Some(r) if !matches!(r.outcome.peek(), Some(Err(_))) => r.outcome.clone(),
                _ => {
                    let remembered = Remembered {
                        selectors: inv.selectors.clone(),
                        mode: inv.mode,
                        outcome: self.start_append(inv.clone(), key.clone()),
                    };
                    let outcome = remembered.outcome.clone();
                    if recent.keys.insert(key.id.clone(), remembered).is_none() {
                        recent.order.push_back((Instant::now(), key.id.clone()));
                    }
                    outcome
                }
            }
        };
        let entry = self.await_outcome(outcome).await.map_err(Refused::Log)?;
        // Another node (or an earlier life of this one) stored the key with
        // another invalidation.
        if entry.invalidation.selectors != inv.selectors || entry.invalidation.mode != inv.mode {
            return Err(key_reused(&key));
        }
        Ok(entry)
    }

    /// Starts the append as its own task: a caller that stops waiting
    /// (timeout, disconnect) does not cancel it, so its outcome is known to
    /// a retry.
    fn start_append(&self, inv: NewInvalidation, key: IdempotencyKey) -> Outcome {
        let log = self.log.clone();
        let audit = self.audit.clone();
        let task = tokio::spawn(async move {
            let entry = log.append_keyed(inv, key).await?;
            // Queryable here at once, even before this node's consumer reaches it.
            audit.record(entry.clone());
            Ok(entry)
        });
        let outcome: BoxFuture<'static, Result<Entry, LogError>> = Box::pin(async move {
            task.await.unwrap_or_else(|e| Err(LogError::Unavailable(format!("the append failed: {e}"))))
        });
        outcome.shared()
    }

    async fn await_outcome(&self, outcome: Outcome) -> Result<Entry, LogError> {
        match tokio::time::timeout(APPEND_TIMEOUT, outcome).await {
            Ok(r) => r,
            Err(_) => Err(LogError::Unavailable(
                "the log did not answer in time; the invalidation may still be committed: retry with the same Idempotency-Key".into(),
            )),
        }
    }
}

fn key_reused(key: &IdempotencyKey) -> Refused {
    Refused::Invalid(format!(
        "Idempotency-Key {:?} was used in the last {} s for a different invalidation",
        key.id,
        IDEMPOTENCY_WINDOW.as_secs()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(s: &str) -> Result<Vec<Selector>, String> {
        parse(s.as_bytes(), &KeyPolicy::default()).map(|(_, s)| s)
    }

    #[test]
    fn tags_urls_and_prefixes_are_normalised() {
        let s = parse_str(
            r#"{"tags":["product-42"],"urls":["HTTP://Shop.Test:80/a/%7ex"],"prefixes":["https://shop.test/foo/"]}"#,
        )
        .unwrap();
        assert_eq!(
            s,
            vec![
                Selector::Url("http://shop.test/a/~x".into()),
                Selector::Prefix("https://shop.test/foo".into()),
                Selector::Tag("product-42".into())
            ]
        );
    }

    #[test]
    fn bad_requests_name_the_problem() {
        assert!(parse_str("{").unwrap_err().contains("invalid JSON"));
        assert!(parse_str(r#"{"tagz":["a"]}"#).unwrap_err().contains("tagz"));
        assert!(parse_str("{}").unwrap_err().contains("no selector"));
        assert!(parse_str(r#"{"urls":["/relative"]}"#).unwrap_err().contains("absolute"));
        assert!(parse_str(r#"{"all":true,"tags":["a"]}"#).unwrap_err().contains("cannot be combined"));
        assert!(parse_str(r#"{"mode":"gentle","tags":["a"]}"#).unwrap_err().contains("gentle"));
        let many = format!(r#"{{"tags":[{}]}}"#, vec!["\"t\""; 1001].join(","));
        assert!(parse_str(&many).unwrap_err().contains("at most 1000"));
        let long = format!(r#"{{"tags":["{}"]}}"#, "x".repeat(300));
        assert!(parse_str(&long).unwrap_err().contains("longer than"));
    }

    #[test]
    fn invalidation_events_map_onto_selectors() {
        let keys = KeyPolicy::default();
        let event = |json: &str| event_selectors(&serde_json::from_str(json).unwrap(), &keys);
        let (s, mode) = event(r#"{"type":"uri","selectors":["HTTPS://www.example.com:443/fo%6f/bar"]}"#).unwrap();
        assert_eq!((s, mode), (vec![Selector::Url("https://www.example.com/foo/bar".into())], Mode::Soft));
        let (s, mode) = event(r#"{"type":"origin","selectors":["https://example.net:8080"],"purge":true}"#).unwrap();
        assert_eq!((s, mode), (vec![Selector::Prefix("https://example.net:8080".into())], Mode::Hard));
        let (s, _) = event(r#"{"type":"group","selectors":["https://example.com:443"],"groups":["scripts"]}"#).unwrap();
        assert_eq!(s, vec![Selector::Tag("scripts".into())]);
        assert!(event(r#"{"type":"regex","selectors":["x"]}"#).unwrap_err().0, "unsupported: 501");
        assert!(!event(r#"{"type":"group","selectors":["https://a"]}"#).unwrap_err().0, "malformed: 400");
    }

    #[test]
    fn everything_is_one_selector() {
        assert_eq!(parse_str(r#"{"all":true,"break_glass":true}"#).unwrap(), vec![Selector::All]);
    }
}
