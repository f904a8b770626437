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
use super::log::{APPEND_TIMEOUT, Accepting, EmbeddedLog, Entry, LogError, NewInvalidation};
use super::selectors::{Invalidations, Mode, Selector};
use crate::access::{Access, Denied};
use crate::key::{KeyPolicy, normalise_host};
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
    /// Fresco's extension: confirms an `origin` event (or any selector that
    /// covers a whole host), as `break_glass` does in the invalidation API.
    #[serde(default)]
    pub break_glass: bool,
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
                visible_text("group", g).map_err(bad)?;
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
pub const MAX_KEYS: usize = 100_000;

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

/// The embedded log keeps a client's key with its entry; a key generated
/// for one request needs no keeping (this node is the log's only writer).
impl KeyedLog for EmbeddedLog {
    fn append_keyed(&self, invalidation: NewInvalidation, key: IdempotencyKey) -> Accepting<'_> {
        self.append_under(invalidation, key.client.then_some(key.id))
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
    visible_text("reason", &req.reason)?;
    let mut out = Vec::with_capacity(count);
    for u in &req.urls {
        out.push(Selector::Url(normalise_url("urls", u, keys)?));
    }
    for p in &req.prefixes {
        out.push(Selector::Prefix(normalise_url("prefixes", p, keys)?.trim_end_matches('/').to_string()));
    }
    for t in &req.tags {
        if t.trim().is_empty() || t.len() > MAX_TAG_LEN {
            return Err(format!("tag {t:?} is empty or longer than {MAX_TAG_LEN} bytes"));
        }
        visible_text("tag", t)?;
        out.push(Selector::Tag(t.trim().to_string()));
    }
    Ok(out)
}

/// A character that makes text read differently from what it is: control
/// characters, bidirectional-text controls (which reorder what a terminal
/// or the audit shows, "Trojan Source") and invisible characters (which make
/// two different tags look the same).
fn deceptive(c: char) -> Option<&'static str> {
    match c {
        c if c.is_control() => Some("a control character"),
        '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}' | '\u{061C}' => {
            Some("a bidirectional-text control")
        }
        '\u{200B}'..='\u{200D}'
        | '\u{2060}'..='\u{2064}'
        | '\u{FEFF}'
        | '\u{00AD}'
        | '\u{034F}'
        | '\u{180E}'
        | '\u{115F}'
        | '\u{1160}'
        | '\u{3164}'
        | '\u{FFA0}'
        | '\u{E0000}'..='\u{E007F}' => Some("an invisible character"),
        _ => None,
    }
}

/// Refuses text with a [`deceptive`] character, naming it by code point
/// (printing it would reproduce the deception).
fn visible_text(what: &str, text: &str) -> Result<(), String> {
    match text.chars().find_map(|c| deceptive(c).map(|kind| (c, kind))) {
        None => Ok(()),
        Some((c, kind)) => {
            let shown: String = text.chars().map(|c| if deceptive(c).is_some() { '?' } else { c }).collect();
            Err(format!("{what} {shown:?} contains U+{:04X}, {kind}; only visible text is accepted", u32::from(c)))
        }
    }
}

/// The scheme and hosts this node's cache keys can have, so that a URL
/// invalidation that could never match anything is refused instead of
/// silently accepted. Keys are formed from the scheme of the data listener
/// (`http`, or `https` with `tls_cert`) and the host the client asked for.
#[derive(Debug, Clone)]
pub struct Served {
    pub scheme: &'static str,
    /// Configured public hosts (lower case); empty: any host but the origin's.
    pub hosts: Vec<String>,
    /// The origin's authority: objects are never keyed by it unless listed.
    pub origin: String,
}

impl Served {
    /// Is `host` (a `Host` value or an authority) one of `hosts`? Case and
    /// the scheme's default port do not matter. True when `hosts` is empty.
    pub fn serves_host(&self, host: &str) -> bool {
        let bare = normalise_host(self.scheme, host.trim());
        self.hosts.is_empty() || self.hosts.iter().any(|h| normalise_host(self.scheme, h) == bare)
    }

    /// Why `url` (a normalised URL or prefix selector) can match nothing here.
    pub fn refuse(&self, url: &str) -> Option<String> {
        let (scheme, _) = url.split_once("://")?;
        let host = crate::access::url_host(url)?;
        let example = self.hosts.first().map_or("HOST", String::as_str);
        if scheme != self.scheme {
            let why = if self.scheme == "http" {
                "its data listener speaks plain HTTP (behind a TLS-terminating load balancer, say)"
            } else {
                "its data listener speaks TLS"
            };
            return Some(format!(
                "{url} can match nothing: this node keys objects as {}://{example}/PATH because {why}",
                self.scheme
            ));
        }
        let bare = normalise_host(scheme, host);
        if !self.hosts.is_empty() {
            if !self.serves_host(&bare) {
                return Some(format!(
                    "{url} can match nothing: this node serves {} (`hosts`), keyed as {}://{example}/PATH",
                    self.hosts.join(", "),
                    self.scheme
                ));
            }
        } else if bare == normalise_host("http", &self.origin) {
            return Some(format!(
                "{url} names the origin's address, which no object is keyed by: keys use the host clients ask \
                 for, as {}://{example}/PATH (list the public hosts in `hosts`)",
                self.scheme
            ));
        }
        None
    }
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
    /// Other cache layers this node forwards invalidations to.
    pub layers: Arc<crate::layers::Layers>,
    pub invalidations: Arc<Invalidations>,
    pub access: Access,
    pub node: String,
    pub keys: KeyPolicy,
    /// What URL selectors can match on this node.
    pub served: Served,
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
        // Every path (API, events, PURGE) passes here: a selector that can
        // match nothing is an error, not a silent no-op.
        for s in &selectors {
            if let Selector::Url(u) | Selector::Prefix(u) = s
                && let Some(why) = self.served.refuse(u)
            {
                return Err(Refused::Invalid(why));
            }
        }
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
    fn tags_groups_and_reasons_with_deceptive_characters_are_refused() {
        for bad in ["price\u{202E}gnp", "a\u{200B}b", "x\u{2066}y", "tab\there", "\u{FEFF}bom"] {
            let err = parse_str(&json_tags(bad)).unwrap_err();
            assert!(err.contains("U+") && err.contains("visible text"), "{bad:?}: {err}");
            assert!(!err.contains(bad), "the message does not reproduce the character: {err}");
        }
        let err = parse_str(r#"{"tags":["ok"],"reason":"fine\u202ethen"}"#).unwrap_err();
        assert!(err.contains("reason") && err.contains("U+202E"), "{err}");
        let keys = KeyPolicy::default();
        let event: Event =
            serde_json::from_str(r#"{"type":"group","selectors":["https://a.test"],"groups":["g\u200d1"]}"#).unwrap();
        assert!(event_selectors(&event, &keys).unwrap_err().1.contains("U+200D"));
        assert!(parse_str(r#"{"tags":["caf\u00e9-42"]}"#).is_ok(), "visible non-ASCII text is fine");
    }

    fn json_tags(tag: &str) -> String {
        serde_json::json!({ "tags": [tag] }).to_string()
    }

    #[test]
    fn url_selectors_that_can_match_nothing_are_named() {
        let open = Served { scheme: "http", hosts: vec![], origin: "10.0.0.5:8080".into() };
        assert_eq!(open.refuse("http://shop.test/a"), None);
        let why = open.refuse("https://shop.test/a").unwrap();
        assert!(why.contains("http://HOST/PATH") && why.contains("plain HTTP"), "{why}");
        let why = open.refuse("http://10.0.0.5:8080/a").unwrap();
        assert!(why.contains("origin") && why.contains("`hosts`"), "{why}");
        let listed =
            Served { scheme: "https", hosts: vec!["shop.test".into(), "www.shop.test".into()], origin: "o:1".into() };
        assert_eq!(listed.refuse("https://www.shop.test/a"), None);
        assert_eq!(listed.refuse("https://shop.test"), None);
        assert!(listed.serves_host("Shop.Test:443") && listed.serves_host("www.shop.test"));
        assert!(!listed.serves_host("shop.test:8443") && !listed.serves_host("evil.test"));
        let why = listed.refuse("https://other.test/a").unwrap();
        assert!(why.contains("shop.test, www.shop.test") && why.contains("https://shop.test/PATH"), "{why}");
    }

    #[test]
    fn everything_is_one_selector() {
        assert_eq!(parse_str(r#"{"all":true,"break_glass":true}"#).unwrap(), vec![Selector::All]);
    }
}
