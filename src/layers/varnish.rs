//! Varnish as a layer: URL invalidations become `PURGE` requests (hard, or
//! soft with `Fresco-Mode: soft`), prefix and tag invalidations become bans
//! on fields the VCL in `contrib/varnish/default.vcl` stores with every
//! object (`Fresco-Host`, `Fresco-Url`, `Fresco-Tags`), so a stock Varnish
//! (its built-in `purge` vmod, no other module) takes them. Bans have no
//! soft form: a soft prefix or tag invalidation removes the objects.

use bytes::Bytes;
use http::{Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::{Delivery, Layer};
use crate::invalidation::{Mode, Selector};

pub(crate) struct Varnish {
    base: Uri,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Varnish {
    pub(crate) fn new(url: &str) -> Result<Varnish, String> {
        let base: Uri = url.parse().map_err(|_| format!("layer url {url:?} is not a URL"))?;
        if base.scheme_str() != Some("http") || base.authority().is_none() {
            return Err(format!("layer url {url:?}: a Varnish layer is addressed as http://HOST:PORT"));
        }
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(std::time::Duration::from_secs(2)));
        Ok(Varnish { base, client: Client::builder(TokioExecutor::new()).build(connector) })
    }

    async fn send(&self, method: &str, path: &str, host: &str, fields: &[(&str, &str)]) -> Result<String, String> {
        let authority = self.base.authority().map_or("", |a| a.as_str());
        let mut req = Request::builder()
            .method(Method::from_bytes(method.as_bytes()).map_err(|e| e.to_string())?)
            .uri(format!("http://{authority}{path}"))
            .header(http::header::HOST, host);
        for (name, value) in fields {
            req = req.header(*name, *value);
        }
        let req = req.body(Full::new(Bytes::new())).map_err(|e| format!("cannot build the {method}: {e}"))?;
        let answer = tokio::time::timeout(std::time::Duration::from_secs(10), self.client.request(req))
            .await
            .map_err(|_| format!("{} did not answer a {method} within 10 s", self.base))?
            .map_err(|e| format!("cannot reach {}: {e}", self.base))?;
        let status = answer.status();
        let body = answer.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        if status.is_success() {
            Ok(format!("{method} {host}{path}: {status}"))
        } else {
            let text = String::from_utf8_lossy(&body[..body.len().min(200)]).trim().to_string();
            Err(format!("{method} {host}{path}: Varnish answered {status} {text}"))
        }
    }
}

/// `host` and `path?query` of a normalised `scheme://host/path` selector.
fn split(url: &str) -> (&str, &str) {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    match rest.find(['/', '?']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    }
}

/// `text` as a regular expression that matches it, written without
/// spaces, quotes or backslashes, which the ban expression parser would
/// read itself (a `\s` in a ban does not reach PCRE as `\s`): a special
/// character becomes a one-character class (`[.]`), and the few that
/// cannot be written so (`\`, `^`, `"`, `[`, spaces, control and non-ASCII
/// bytes) become `.`, which matches a little more, never less: a layer
/// may lose a bit more than asked, never keep what was purged.
fn literal(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 2);
    for b in text.bytes() {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'/' | b'_' => out.push(b as char),
            b']' => out.push_str("[]]"),
            b'\\' | b'^' | b'"' | b'[' => out.push('.'),
            b'!'..=b'~' => {
                out.push('[');
                out.push(b as char);
                out.push(']');
            }
            _ => out.push('.'),
        }
    }
    out
}

impl Layer for Varnish {
    fn invalidate<'a>(&'a self, selectors: &'a [Selector], mode: Mode) -> Delivery<'a> {
        Box::pin(async move {
            let mut done = Vec::with_capacity(selectors.len());
            let soft = if mode == Mode::Soft { "soft" } else { "hard" };
            let base_host = self.base.authority().map_or("", |a| a.as_str()).to_string();
            for selector in selectors {
                let outcome = match selector {
                    Selector::Url(u) => {
                        let (host, path) = split(u);
                        let path = if path.is_empty() { "/" } else { path };
                        self.send("PURGE", path, host, &[("fresco-mode", soft)]).await?
                    }
                    Selector::Prefix(u) => {
                        let (host, path) = split(u);
                        let path = path.trim_end_matches('/');
                        // Whole path segments, as Fresco's own prefixes.
                        let regex = format!("^{}([/?]|$)", literal(path));
                        self.send("BAN", "/", host, &[("fresco-url-regex", &regex)]).await?
                    }
                    Selector::Tag(t) => {
                        let regex = format!("(^|[[:space:]]){}([[:space:]]|$)", literal(t));
                        self.send("BAN", "/", &base_host, &[("fresco-tag-regex", &regex)]).await?
                    }
                    Selector::All => self.send("BAN", "/", &base_host, &[("fresco-ban-all", "1")]).await?,
                };
                done.push(outcome);
            }
            Ok(done.join("; "))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_split_into_host_and_path() {
        assert_eq!(split("http://shop.test/a/b?x=1"), ("shop.test", "/a/b?x=1"));
        assert_eq!(split("https://shop.test:8443"), ("shop.test:8443", ""));
    }

    #[test]
    fn a_literal_pattern_has_nothing_a_ban_expression_would_read() {
        let p = literal("a b\"c&&d\\e^f");
        assert!(!p.contains([' ', '"', '\\']), "{p}");
        assert_eq!(p, "a.b.c[&][&]d.e.f");
        assert_eq!(literal("/shop/x_1"), "/shop/x_1");
        assert_eq!(literal("v1.2*(x)]"), "v1[.]2[*][(]x[)][]]");
        assert_eq!(literal("é"), "..", "a byte at a time");
    }
}
