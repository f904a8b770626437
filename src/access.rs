//! Who may invalidate what: bearer tokens with names and scopes, kept and
//! compared as SHA-256 digests in constant time and never logged, and a
//! token-bucket rate limit per token.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use subtle::ConstantTimeEq;

use crate::invalidation::Selector;

/// What a token may select.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Everything, including a purge of everything (with break-glass).
    All,
    /// Tags starting with this prefix (empty: any tag).
    TagPrefix(String),
    /// URL and prefix selectors on this host (`host` or `host:port`).
    Host(String),
}

impl Scope {
    /// Parses `all`, `tag:PREFIX` or `host:NAME`.
    pub fn parse(text: &str) -> Option<Scope> {
        match text.split_once(':') {
            None if text == "all" => Some(Scope::All),
            Some(("tag", prefix)) => Some(Scope::TagPrefix(prefix.trim_end_matches('*').to_string())),
            Some(("host", host)) if !host.is_empty() => Some(Scope::Host(host.to_ascii_lowercase())),
            _ => None,
        }
    }

    pub(crate) fn covers(&self, selector: &Selector) -> bool {
        match (self, selector) {
            (Scope::All, _) => true,
            (Scope::TagPrefix(p), Selector::Tag(t)) => t.starts_with(p.as_str()),
            (Scope::Host(h), Selector::Url(u) | Selector::Prefix(u)) => url_host(u) == Some(h.as_str()),
            _ => false,
        }
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scope::All => f.write_str("all"),
            Scope::TagPrefix(p) => write!(f, "tag:{p}"),
            Scope::Host(h) => write!(f, "host:{h}"),
        }
    }
}

/// The authority of a normalised `scheme://host/...` URL.
pub(crate) fn url_host(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    Some(rest.split(['/', '?']).next().unwrap_or(rest))
}

/// Does a prefix selector select everything on its host?
fn whole_host(prefix: &str) -> bool {
    let Some((_, rest)) = prefix.split_once("://") else { return false };
    let path = rest.find(['/', '?']).map_or("", |i| &rest[i..]);
    let path = path.split('?').next().unwrap_or(path);
    path.is_empty() || path == "/"
}

/// The SHA-256 digest a token is kept and compared as.
pub fn digest(secret: &str) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, secret.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// A new secret: 32 random bytes from the system's generator, as hex.
pub fn random_secret() -> Result<String, String> {
    let mut bytes = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| "the system random generator failed".to_string())?;
    Ok(hex(&bytes))
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Why a secret is too easy to guess, if it is: shorter than 16
/// characters, under about 64 bits by its own character frequencies, or
/// more than two thirds repeated or consecutive characters (`aaaa...`,
/// `abcd...`, `1234...`).
pub fn weak_secret(secret: &str) -> Option<String> {
    let chars: Vec<char> = secret.chars().collect();
    let n = chars.len();
    if n < 16 {
        return Some(format!("is {n} characters long; at least 16 are needed"));
    }
    let mut counts: std::collections::HashMap<char, usize> = std::collections::HashMap::new();
    for c in &chars {
        *counts.entry(*c).or_default() += 1;
    }
    let per_char: f64 = counts
        .values()
        .map(|&k| {
            let p = k as f64 / n as f64;
            -p * p.log2()
        })
        .sum();
    let bits = per_char * n as f64;
    if bits < 64.0 {
        return Some(format!("has too little variety (about {bits:.0} bits by its character frequencies; 64 needed)"));
    }
    let patterned =
        chars.windows(2).filter(|w| (i64::from(u32::from(w[1])) - i64::from(u32::from(w[0]))).abs() <= 1).count();
    if patterned * 3 > (n - 1) * 2 {
        return Some("is mostly repeated or consecutive characters".into());
    }
    None
}

/// RFC 9110 §11.4: `Bearer TOKEN`, the scheme matched case-insensitively
/// (§11.1), one or more spaces before the credentials.
fn bearer_credentials(authorization: &str) -> Option<&str> {
    let (scheme, rest) = authorization.trim().split_once(' ')?;
    let token = rest.trim_start_matches(' ');
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token.trim_end())
}

#[derive(Clone)]
pub struct Token {
    pub name: String,
    /// SHA-256 of the secret; the secret itself is not kept.
    pub digest: [u8; 32],
    pub scopes: Vec<Scope>,
    /// Invalidations per second, sustained.
    pub rate: f64,
    /// Invalidations allowed in a burst.
    pub burst: f64,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secret never reaches a log.
        f.debug_struct("Token").field("name", &self.name).field("scopes", &self.scopes).finish_non_exhaustive()
    }
}

impl Token {
    /// May this token issue an invalidation with these selectors?
    pub fn allows(&self, selectors: &[Selector]) -> bool {
        selectors.iter().all(|s| self.scopes.iter().any(|scope| scope.covers(s)))
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq)]
pub enum Denied {
    /// 401: no token, or not one we know.
    Unauthenticated(&'static str),
    /// 403: the token may not do this.
    Forbidden(String),
    /// 429: over the token's rate.
    RateLimited { retry_after: Duration },
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

pub struct Access {
    tokens: Vec<Token>,
    buckets: Mutex<HashMap<String, Bucket>>,
    /// Client networks allowed to send PURGE on the data listener.
    purge_from: Vec<(IpAddr, u8)>,
}

impl Access {
    pub fn new(tokens: Vec<Token>, purge_from: Vec<(IpAddr, u8)>) -> Access {
        Access { tokens, buckets: Mutex::new(HashMap::new()), purge_from }
    }

    /// The token named by an `Authorization: Bearer ...` value.
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<&Token, Denied> {
        let presented = authorization
            .and_then(bearer_credentials)
            .ok_or(Denied::Unauthenticated("missing bearer token: send `Authorization: Bearer TOKEN`"))?;
        let presented = digest(presented);
        // Compare with every token so timing does not tell which one nearly matched.
        let mut found = None;
        for t in &self.tokens {
            if bool::from(t.digest.ct_eq(&presented)) {
                found = Some(t);
            }
        }
        found.ok_or(Denied::Unauthenticated("unknown token"))
    }

    /// Checks scope and break-glass, then takes one unit of the token's rate.
    pub fn authorize(&self, token: &Token, selectors: &[Selector], break_glass: bool) -> Result<(), Denied> {
        if selectors.contains(&Selector::All) {
            if !token.scopes.contains(&Scope::All) {
                return Err(Denied::Forbidden(format!("token `{}` may not purge everything", token.name)));
            }
            if !break_glass {
                return Err(Denied::Forbidden(
                    "purging everything needs \"break_glass\": true (or --break-glass) as well as an `all` token"
                        .into(),
                ));
            }
        }
        // A prefix that selects a whole host is as drastic as "all" for
        // that host: it needs the same explicit confirmation.
        if !break_glass
            && let Some(Selector::Prefix(p)) =
                selectors.iter().find(|s| matches!(s, Selector::Prefix(p) if whole_host(p)))
        {
            return Err(Denied::Forbidden(format!(
                "the prefix {p} selects everything on its host; that needs \"break_glass\": true (or --break-glass)"
            )));
        }
        if !token.allows(selectors) {
            return Err(Denied::Forbidden(format!(
                "token `{}` is not scoped for every selector in this request",
                token.name
            )));
        }
        self.take(token)
    }

    fn take(&self, token: &Token) -> Result<(), Denied> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let b = buckets.entry(token.name.clone()).or_insert(Bucket { tokens: token.burst, at: now });
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * token.rate).min(token.burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - b.tokens) / token.rate.max(f64::MIN_POSITIVE);
            Err(Denied::RateLimited { retry_after: Duration::from_secs_f64(wait.ceil().max(1.0)) })
        }
    }

    /// May a client at `ip` use the PURGE method?
    pub fn purge_allowed_from(&self, ip: IpAddr) -> bool {
        self.purge_from.iter().any(|(net, bits)| in_network(ip, *net, *bits))
    }
}

fn in_network(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = if bits == 0 { 0 } else { u32::MAX << (32 - u32::from(bits.min(32))) };
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = if bits == 0 { 0 } else { u128::MAX << (128 - u32::from(bits.min(128))) };
            u128::from(a) & mask == u128::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V4(_)) => a.to_ipv4_mapped().is_some_and(|v4| in_network(IpAddr::V4(v4), net, bits)),
        _ => false,
    }
}

/// Parses `10.0.0.0/8`, `::1/128` or a bare address.
pub fn parse_network(text: &str) -> Option<(IpAddr, u8)> {
    match text.split_once('/') {
        Some((ip, bits)) => {
            let ip: IpAddr = ip.parse().ok()?;
            let bits: u8 = bits.parse().ok()?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            (bits <= max).then_some((ip, bits))
        }
        None => {
            let ip: IpAddr = text.parse().ok()?;
            Some((ip, if ip.is_ipv4() { 32 } else { 128 }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(scopes: &[&str]) -> Token {
        Token {
            name: "t".into(),
            digest: digest("s3cret"),
            scopes: scopes.iter().map(|s| Scope::parse(s).unwrap()).collect(),
            rate: 1.0,
            burst: 2.0,
        }
    }

    #[test]
    fn scopes_cover_tags_by_prefix_and_urls_by_host() {
        let t = token(&["tag:product-", "host:shop.test"]);
        assert!(t.allows(&[Selector::Tag("product-1".into()), Selector::Url("http://shop.test/a".into())]));
        assert!(!t.allows(&[Selector::Tag("category-1".into())]));
        assert!(!t.allows(&[Selector::Prefix("http://other.test/".into())]));
        assert!(!t.allows(&[Selector::All]));
    }

    #[test]
    fn purge_all_needs_all_scope_and_break_glass() {
        let access = Access::new(vec![], vec![]);
        let all = token(&["all"]);
        assert!(matches!(access.authorize(&all, &[Selector::All], false), Err(Denied::Forbidden(_))));
        assert!(access.authorize(&all, &[Selector::All], true).is_ok());
        assert!(matches!(access.authorize(&token(&["tag:"]), &[Selector::All], true), Err(Denied::Forbidden(_))));
    }

    #[test]
    fn a_prefix_selecting_a_whole_host_needs_break_glass() {
        let access = Access::new(vec![], vec![]);
        let t = Token { burst: 100.0, ..token(&["host:shop.test"]) };
        for root in ["http://shop.test", "http://shop.test/", "http://shop.test?x"] {
            let sel = [Selector::Prefix(root.into())];
            assert!(
                matches!(access.authorize(&t, &sel, false), Err(Denied::Forbidden(m)) if m.contains("break_glass"))
            );
            assert!(access.authorize(&t, &sel, true).is_ok(), "{root}");
        }
        assert!(access.authorize(&t, &[Selector::Prefix("http://shop.test/a".into())], false).is_ok());
    }

    #[test]
    fn weak_secrets_are_named_and_strong_ones_pass() {
        for weak in
            ["short", "aaaaaaaaaaaaaaaa", "abababababababababab", "0123456789abcdefghij", "abcdefghijklmnopqrstuvwxyz"]
        {
            assert!(weak_secret(weak).is_some(), "{weak} passed");
        }
        for strong in [
            "9f8e2c41b07d5a36e1c9d402fb7a8e53",
            "cms-secret-0123456789",
            "Zq3-vT9_pL2xW8mK4nR7",
            "cli-token-0123456789abcdef",
        ] {
            assert_eq!(weak_secret(strong), None, "{strong}");
        }
    }

    #[test]
    fn tokens_are_rate_limited() {
        let access = Access::new(vec![], vec![]);
        let t = token(&["all"]);
        let sel = [Selector::Tag("x".into())];
        assert!(access.authorize(&t, &sel, false).is_ok());
        assert!(access.authorize(&t, &sel, false).is_ok());
        assert!(matches!(access.authorize(&t, &sel, false), Err(Denied::RateLimited { .. })));
    }

    #[test]
    fn bearer_tokens_authenticate_and_unknown_ones_do_not() {
        let access = Access::new(vec![token(&["all"])], vec![]);
        assert_eq!(access.authenticate(Some("Bearer s3cret")).unwrap().name, "t");
        // RFC 9110 §11.1: the scheme is case-insensitive.
        for header in ["bearer s3cret", "BEARER s3cret", "BeArEr   s3cret"] {
            assert_eq!(access.authenticate(Some(header)).unwrap().name, "t", "{header}");
        }
        assert!(access.authenticate(Some("Basic s3cret")).is_err());
        assert!(access.authenticate(Some("Bearers3cret")).is_err());
        assert!(access.authenticate(Some("Bearer s3cre")).is_err());
        assert!(access.authenticate(None).is_err());
        assert!(!format!("{:?}", token(&["all"])).contains("s3cret"), "secrets are never printed");
        assert_eq!(digest("abc")[..4], [0xba, 0x78, 0x16, 0xbf], "SHA-256");
    }

    #[test]
    fn purge_networks() {
        let access = Access::new(vec![], vec![parse_network("127.0.0.0/8").unwrap(), parse_network("::1").unwrap()]);
        assert!(access.purge_allowed_from("127.0.0.1".parse().unwrap()));
        assert!(access.purge_allowed_from("::1".parse().unwrap()));
        assert!(!access.purge_allowed_from("10.0.0.1".parse().unwrap()));
        assert_eq!(parse_network("1.2.3.4/33"), None);
    }
}
