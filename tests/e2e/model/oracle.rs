//! The oracle: what the model knows (which invalidations were acknowledged
//! and at which epoch, which cookie and private value belongs to whom) and
//! the invariants every response is checked against.
//!
//! It is conservative: it does not predict hits or misses. Where a response
//! could come from several productions (a byte range that several bodies
//! share), it is a violation only if every one of them breaks the invariant.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use http::Method;

use super::origin::{MARKER, ModelOrigin, Production};
use crate::harness::Got;

/// What an invalidation selects, in the model's terms.
#[derive(Debug, Clone)]
pub(crate) enum Selects {
    Path(String),
    /// A path prefix of whole segments.
    Prefix(String),
    Tag(String),
}

/// An acknowledged invalidation.
#[derive(Debug, Clone)]
pub(crate) struct Invalidation {
    pub what: String,
    /// Content of a lower epoch was produced before it was sent.
    pub epoch: u64,
    pub hard: bool,
    pub selects: Selects,
    /// `Some(node)` for RFC 9111 §4.4 invalidations, which only the node
    /// that forwarded the unsafe request applies.
    pub node: Option<usize>,
    /// Nodes cut off from the bus when it was acknowledged, and from when
    /// they must nevertheless stop serving what it selects (having lost
    /// the log for longer than `max_log_silence`).
    pub not_before: Vec<(usize, Instant)>,
}

/// The `X-Client` of the attacker's requests (issue 9).
pub(crate) const ATTACKER: &str = "attacker";

/// A request as the test sent it.
#[derive(Debug, Clone)]
pub(crate) struct Asked {
    pub node: usize,
    pub client: String,
    pub rid: String,
    pub method: Method,
    pub path: String,
    pub auth: bool,
    pub max_stale: bool,
}

/// A broken invariant: its name and what showed it.
pub(crate) struct Violation {
    pub invariant: &'static str,
    pub detail: String,
}

fn violation(invariant: &'static str, detail: impl Into<String>) -> Violation {
    Violation { invariant, detail: detail.into() }
}

/// The parts of Fresco's Cache-Status entry the invariants look at.
#[derive(Debug, Default)]
struct Status {
    hit: bool,
    ttl: Option<i64>,
    detail: String,
}

fn cache_status(got: &Got) -> Status {
    let mut s = Status::default();
    for part in got.cache_status().split(';').map(str::trim) {
        if part == "hit" {
            s.hit = true;
        } else if let Some(t) = part.strip_prefix("ttl=") {
            s.ttl = t.parse().ok();
        } else if let Some(d) = part.strip_prefix("detail=") {
            s.detail = d.trim_matches('"').to_string();
        }
    }
    s
}

/// The model nodes' `slice_size`: bodies are stored in slices this long.
pub(crate) const SLICE: usize = 64;
/// Put on a response by the test client when its body was cut short.
pub(crate) const CUT: &str = "x-model-body-cut";

#[derive(Default)]
pub(crate) struct Oracle {
    pub invalidations: Vec<Invalidation>,
    tags: HashMap<String, Vec<String>>,
}

impl Oracle {
    pub(crate) fn add_path(&mut self, path: &str, tags: Vec<String>) {
        self.tags.insert(path.to_string(), tags);
    }

    fn selects(&self, inv: &Invalidation, path: &str) -> bool {
        match &inv.selects {
            Selects::Path(p) => p == path,
            Selects::Prefix(p) => path.strip_prefix(p.as_str()).is_some_and(|rest| rest.starts_with('/')),
            Selects::Tag(t) => self.tags.get(path).is_some_and(|tags| tags.contains(t)),
        }
    }

    /// The productions the response's content may come from; `None` when
    /// the response carries no content the model can attribute.
    fn sources(origin: &ModelOrigin, asked: &Asked, got: &Got) -> Result<Option<Vec<Production>>, Violation> {
        let by_header = || got.header("x-serial").and_then(|s| s.parse().ok()).and_then(|n| origin.production(n));
        match got.status {
            200 if asked.method == Method::GET => {
                let text = got.text();
                let serial = text.trim_end().rsplit("n=").next().and_then(|n| n.parse::<u64>().ok());
                match serial.and_then(|n| origin.production(n)) {
                    Some(p) if p.body.as_deref() == Some(&got.body[..]) && p.path == asked.path => Ok(Some(vec![p])),
                    _ => Err(violation("content is what the origin produced for this URL", format!("body {text:?}"))),
                }
            }
            206 => {
                let range = got.header("content-range").unwrap_or("");
                let start = range
                    .strip_prefix("bytes ")
                    .and_then(|r| r.split('-').next())
                    .and_then(|s| s.parse::<usize>().ok());
                let Some(start) = start else {
                    return Err(violation("a 206 says which bytes it holds", format!("Content-Range {range:?}")));
                };
                let found = origin.productions_matching(&asked.path, start, &got.body);
                if found.is_empty() {
                    return Err(violation(
                        "content is what the origin produced for this URL",
                        format!("bytes {start}.. {:?} are in no body produced for {}", got.text(), asked.path),
                    ));
                }
                Ok(Some(found))
            }
            200 | 304 => Ok(by_header().map(|p| vec![p])),
            416 => Ok(None),
            s => Err(violation(
                "the origin is up, so every request gets an answer from it or the store",
                format!("status {s}: {}", got.text()),
            )),
        }
    }

    /// The productions each slice of an answer assembled from slices may
    /// come from (issue 10). Each slice may come from another origin
    /// response, but all of one version: the slices' productions must
    /// share a (version, epoch). Every other invariant then holds for each
    /// slice.
    fn slice_sources(origin: &ModelOrigin, asked: &Asked, got: &Got) -> Result<Vec<Vec<Production>>, Violation> {
        let start = match got.status {
            206 => got
                .header("content-range")
                .and_then(|r| r.strip_prefix("bytes "))
                .and_then(|r| r.split('-').next())
                .and_then(|s| s.parse::<usize>().ok())
                .ok_or_else(|| {
                    violation("a 206 says which bytes it holds", format!("{:?}", got.header("content-range")))
                })?,
            _ => 0,
        };
        let mut groups = Vec::new();
        let mut versions: Option<HashSet<(u32, u64)>> = None;
        let mut at = 0;
        while at < got.body.len() {
            let end = ((start + at) / SLICE * SLICE + SLICE - start).min(got.body.len());
            let found = origin.productions_matching(&asked.path, start + at, &got.body[at..end]);
            if found.is_empty() {
                return Err(violation(
                    "content is what the origin produced for this URL",
                    format!("bytes {}.. of a sliced answer are in no body produced for {}", start + at, asked.path),
                ));
            }
            let here: HashSet<(u32, u64)> = found.iter().map(|p| (p.version, p.epoch)).collect();
            let left: HashSet<(u32, u64)> = versions.map_or(here.clone(), |v| v.intersection(&here).copied().collect());
            if left.is_empty() {
                return Err(violation(
                    "a sliced answer holds bytes of one version only",
                    format!("bytes {}.. are of versions {here:?}, earlier ones of others", start + at),
                ));
            }
            versions = Some(left);
            groups.push(found);
            at = end;
        }
        Ok(groups)
    }

    /// Checks one response against every invariant.
    pub(crate) fn check(&self, origin: &ModelOrigin, asked: &Asked, got: &Got) -> Vec<Violation> {
        let sliced = cache_status(got).detail.split(' ').any(|d| d == "sliced");
        if got.headers.contains_key(CUT) && !sliced {
            return vec![violation(
                "every request to a live node gets a whole response",
                got.header(CUT).unwrap_or("").to_string(),
            )];
        }
        if asked.client == ATTACKER {
            return self.check_attacker(origin, asked, got);
        }
        let mut found = Vec::new();
        let sources = if sliced && asked.method == Method::GET && matches!(got.status, 200 | 206) {
            Self::slice_sources(origin, asked, got).map(Some)
        } else {
            Self::sources(origin, asked, got).map(|s| s.map(|s| vec![s]))
        };
        match sources {
            Ok(Some(groups)) => {
                for sources in groups {
                    found.extend(self.check_invalidations(asked, got, &sources).err());
                    found.extend(check_private(asked, &sources).err());
                    found.extend(check_not_attacker_shaped(&sources).err());
                }
            }
            Ok(None) => {}
            Err(v) => found.push(v),
        }
        found.extend(self.check_cookies(origin, asked, got).err());
        found.extend(check_private_field(origin, asked, got).err());
        found.extend(check_no_marker(origin, got).err());
        found
    }

    /// The attacker may get anything for its own requests (a refusal, its
    /// own steered content, content stored under another key), but nothing
    /// that is personal to another client.
    fn check_attacker(&self, origin: &ModelOrigin, asked: &Asked, got: &Got) -> Vec<Violation> {
        let mut found = Vec::new();
        let serial = got.text().trim_end().rsplit("n=").next().and_then(|n| n.parse::<u64>().ok());
        if got.status == 200
            && let Some(p) = serial.and_then(|n| origin.production(n))
            && p.body.as_deref() == Some(&got.body[..])
        {
            found.extend(check_private(asked, &[p]).err());
        }
        found.extend(self.check_cookies(origin, asked, got).err());
        found.extend(check_private_field(origin, asked, got).err());
        found
    }

    /// After an acknowledged hard invalidation of X, nothing produced before
    /// it is served for X; after a soft one, only under the stale rules and
    /// saying so in Cache-Status.
    fn check_invalidations(&self, asked: &Asked, got: &Got, sources: &[Production]) -> Result<(), Violation> {
        let status = cache_status(got);
        for inv in &self.invalidations {
            let pending = inv.not_before.iter().any(|(n, t)| *n == asked.node && Instant::now() < *t);
            if pending || inv.node.is_some_and(|n| n != asked.node) || !self.selects(inv, &asked.path) {
                continue;
            }
            if sources.iter().any(|p| p.epoch >= inv.epoch) {
                continue;
            }
            let epochs: Vec<u64> = sources.iter().map(|p| p.epoch).collect();
            if inv.hard {
                return Err(violation(
                    "after a hard invalidation is acknowledged, nothing produced before it is served",
                    format!("{} (epoch {}); served content of epoch {epochs:?}", inv.what, inv.epoch),
                ));
            }
            let stale_ok = sources.iter().any(|p| {
                let cc = p.shape.cc;
                !cc.forbids_stale()
                    && ((status.detail == "stale-while-revalidate" && cc.has_swr())
                        || (status.detail.ends_with("stale-if-error") && (p.shape.stale_if_error || asked.max_stale))
                        || (status.hit && status.ttl.is_some_and(|t| t <= 0) && asked.max_stale))
            });
            if !stale_ok {
                return Err(violation(
                    "after a soft invalidation, older content is served only under the stale rules and says so",
                    format!(
                        "{} (epoch {}); served content of epoch {epochs:?} (shape {:?}) with Cache-Status {:?}",
                        inv.what,
                        inv.epoch,
                        sources[0].shape,
                        got.cache_status()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// A Set-Cookie value reaches only the request whose fetch made the
    /// origin send it.
    fn check_cookies(&self, origin: &ModelOrigin, asked: &Asked, got: &Got) -> Result<(), Violation> {
        for v in got.headers.get_all(http::header::SET_COOKIE) {
            let v = v.to_str().unwrap_or("");
            let value = v.strip_prefix("session=").and_then(|r| r.split(';').next()).unwrap_or(v);
            let owner = value.rsplit('-').next().and_then(|n| n.parse().ok()).and_then(|n| origin.production(n));
            let Some(owner) = owner else {
                return Err(violation("every Set-Cookie comes from the origin", format!("Set-Cookie {v:?}")));
            };
            if owner.client != asked.client {
                return Err(violation(
                    "a Set-Cookie value reaches only the client whose request made the origin send it",
                    format!(
                        "cookie {value} was sent for {} ({}), delivered to {}",
                        owner.client, owner.rid, asked.client
                    ),
                ));
            }
            if owner.rid != asked.rid {
                return Err(violation(
                    "a Set-Cookie is never replayed from the store or to a coalesced request",
                    format!(
                        "cookie {value} was sent for request {}, delivered again to request {}",
                        owner.rid, asked.rid
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// Private and no-store responses, and responses to authenticated requests
/// that §3.5 does not let a shared cache reuse, reach only their client;
/// an authenticated request is answered from a response fetched for
/// another request only when §3.5 allows that response to be shared.
fn check_private(asked: &Asked, sources: &[Production]) -> Result<(), Violation> {
    let describe = |p: &Production| {
        format!(
            "production {} (v{} e{}) for {} ({}) shape {:?} auth={}",
            p.serial, p.version, p.epoch, p.client, p.rid, p.shape.cc, p.auth
        )
    };
    if sources.iter().all(|p| p.shape.cc.personal() && p.client != asked.client) {
        return Err(violation(
            "private / no-store content never reaches another client",
            format!("{} delivered to {}", describe(&sources[0]), asked.client),
        ));
    }
    if sources.iter().all(|p| p.auth && !p.shape.cc.shareable_with_authorization() && p.rid != asked.rid) {
        return Err(violation(
            "RFC 9111 §3.5: a response to an authenticated request is not reused unless it allows it",
            format!("{} delivered to request {} of {}", describe(&sources[0]), asked.rid, asked.client),
        ));
    }
    if asked.auth && sources.iter().all(|p| p.rid != asked.rid && !p.shape.cc.shareable_with_authorization()) {
        return Err(violation(
            "RFC 9111 §3.5: an authenticated request gets a shared response only if it allows that",
            format!("{} delivered to authenticated request {} of {}", describe(&sources[0]), asked.rid, asked.client),
        ));
    }
    Ok(())
}

/// Field values named in `private="..."` never reach another client.
fn check_private_field(origin: &ModelOrigin, asked: &Asked, got: &Got) -> Result<(), Violation> {
    for v in got.headers.get_all("x-secret") {
        let v = v.to_str().unwrap_or("");
        let owner = v.rsplit('-').next().and_then(|n| n.parse().ok()).and_then(|n| origin.production(n));
        match owner {
            Some(p) if p.client == asked.client => {}
            Some(p) => {
                return Err(violation(
                    "a private=\"X-Secret\" field value never reaches another client",
                    format!("X-Secret {v} of {} ({}) delivered to {}", p.client, p.rid, asked.client),
                ));
            }
            None => return Err(violation("every X-Secret comes from the origin", format!("X-Secret {v:?}"))),
        }
    }
    Ok(())
}

/// Issue 9: no other client gets content the origin produced for a request
/// an attacker shaped (a steering field, a body, a host or target it chose,
/// its own session's page), whatever the store did with it.
fn check_not_attacker_shaped(sources: &[Production]) -> Result<(), Violation> {
    if sources.iter().all(|p| p.steered || p.attacker_page) {
        let p = &sources[0];
        return Err(violation(
            "no client gets a response an attacker's request shaped",
            format!(
                "production {} for {} ({}) shape {:?}: steered={} attacker_page={}",
                p.serial, p.client, p.rid, p.shape.cc, p.steered, p.attacker_page
            ),
        ));
    }
    Ok(())
}

/// Issue 9: nothing a client other than the attacker gets carries the
/// attacker's marker, nor header fields of a production the attacker
/// steered (a 304 merged into a stored response, say).
fn check_no_marker(origin: &ModelOrigin, got: &Got) -> Result<(), Violation> {
    const INVARIANT: &str = "no client gets a response an attacker's request shaped";
    let marked = |bytes: &[u8]| bytes.windows(MARKER.len()).any(|w| w.eq_ignore_ascii_case(MARKER.as_bytes()));
    if marked(&got.body) {
        return Err(violation(INVARIANT, format!("the attacker's marker in the body {:?}", got.text())));
    }
    for (name, value) in &got.headers {
        if marked(value.as_bytes()) {
            return Err(violation(INVARIANT, format!("the attacker's marker in {name}: {value:?}")));
        }
    }
    let by_header = got.header("x-serial").and_then(|s| s.parse().ok()).and_then(|n| origin.production(n));
    if let Some(p) = by_header.filter(|p| p.steered) {
        return Err(violation(
            INVARIANT,
            format!("header fields of production {} steered by {} ({})", p.serial, p.client, p.rid),
        ));
    }
    Ok(())
}
