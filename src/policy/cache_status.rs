//! The `Cache-Status` response field (RFC 9211).

use std::fmt::Write;

/// RFC 9211 §2.2 forward reasons.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fwd {
    Bypass,
    Method,
    UriMiss,
    VaryMiss,
    Miss,
    Request,
    Stale,
    Partial,
}

impl Fwd {
    pub fn as_str(self) -> &'static str {
        match self {
            Fwd::Bypass => "bypass",
            Fwd::Method => "method",
            Fwd::UriMiss => "uri-miss",
            Fwd::VaryMiss => "vary-miss",
            Fwd::Miss => "miss",
            Fwd::Request => "request",
            Fwd::Stale => "stale",
            Fwd::Partial => "partial",
        }
    }
}

/// One cache's entry in Cache-Status.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheStatus {
    pub hit: bool,
    pub fwd: Option<Fwd>,
    pub fwd_status: Option<u16>,
    pub stored: bool,
    pub collapsed: bool,
    pub ttl: Option<i64>,
    pub detail: Option<String>,
}

impl CacheStatus {
    pub fn hit(ttl: i64) -> CacheStatus {
        CacheStatus { hit: true, ttl: Some(ttl), ..Default::default() }
    }

    pub fn forward(fwd: Fwd) -> CacheStatus {
        CacheStatus { fwd: Some(fwd), ..Default::default() }
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> CacheStatus {
        self.detail = Some(detail.into());
        self
    }

    /// How this response counts in the request metrics: `hit`, `stale`
    /// (served stale without waiting), `revalidated`, `pass` or `miss`.
    pub fn class(&self) -> &'static str {
        let detail = self.detail.as_deref().unwrap_or("");
        if self.hit {
            "hit"
        } else if detail.ends_with("stale-while-revalidate") || detail.ends_with("stale-if-error") {
            "stale"
        } else {
            match self.fwd {
                Some(Fwd::Stale | Fwd::Request) => "revalidated",
                Some(Fwd::Method | Fwd::Bypass) => "pass",
                _ => "miss",
            }
        }
    }

    /// Serialises this entry for the cache named `name` (RFC 9211 §2).
    pub fn render(&self, name: &str) -> String {
        let mut out = String::from(name);
        if self.hit {
            out.push_str("; hit");
        }
        if let Some(fwd) = self.fwd {
            let _ = write!(out, "; fwd={}", fwd.as_str());
        }
        if let Some(status) = self.fwd_status {
            let _ = write!(out, "; fwd-status={status}");
        }
        if self.stored {
            out.push_str("; stored");
        }
        if self.collapsed {
            out.push_str("; collapsed");
        }
        if let Some(ttl) = self.ttl {
            let _ = write!(out, "; ttl={ttl}");
        }
        if let Some(detail) = &self.detail {
            // A token when it is one, else a quoted string (RFC 9651 §3.3).
            if !detail.is_empty()
                && detail.starts_with(|c: char| c.is_ascii_alphabetic())
                && detail.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~:/".contains(&b))
            {
                let _ = write!(out, "; detail={detail}");
            } else {
                let escaped = detail.replace('\\', "\\\\").replace('"', "\\\"");
                let _ = write!(out, "; detail=\"{escaped}\"");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc9211_hit_with_ttl() {
        assert_eq!(CacheStatus::hit(42).render("fresco"), "fresco; hit; ttl=42");
    }

    #[test]
    fn rfc9211_forward_with_status_and_stored() {
        let s = CacheStatus {
            fwd: Some(Fwd::Stale),
            fwd_status: Some(304),
            stored: true,
            ttl: Some(60),
            ..Default::default()
        };
        assert_eq!(s.render("fresco"), "fresco; fwd=stale; fwd-status=304; stored; ttl=60");
    }

    #[test]
    fn classes_for_metrics() {
        assert_eq!(CacheStatus::hit(1).class(), "hit");
        assert_eq!(CacheStatus::forward(Fwd::Stale).with_detail("stale-while-revalidate").class(), "stale");
        assert_eq!(CacheStatus::forward(Fwd::Stale).with_detail("invalidated stale-if-error").class(), "stale");
        assert_eq!(CacheStatus::forward(Fwd::Stale).class(), "revalidated");
        assert_eq!(CacheStatus::forward(Fwd::Method).class(), "pass");
        assert_eq!(CacheStatus::forward(Fwd::UriMiss).with_detail("private").class(), "miss");
    }

    #[test]
    fn rfc9211_2_8_detail_is_quoted_when_not_a_token() {
        let s = CacheStatus::forward(Fwd::UriMiss).with_detail("origin timeout");
        assert_eq!(s.render("fresco"), "fresco; fwd=uri-miss; detail=\"origin timeout\"");
        let s = CacheStatus::forward(Fwd::Bypass).with_detail("private");
        assert_eq!(s.render("fresco"), "fresco; fwd=bypass; detail=private");
    }
}
