//! The HTTP caching rules of RFC 9111 and its extensions, as pure
//! functions of (request, stored response, time). Nothing in this module
//! performs I/O or reads the clock; callers pass `now`.
//!
//! One file per concern, as the RFC is organised:
//! - [`cache_control`]: directive parsing, targeted fields (§5.2, RFC 9213)
//! - [`age`]: HTTP-dates and the age calculation (§4.2.3, §5.1)
//! - [`response`]: freshness lifetime and storability (§3, §4.2.1–4.2.2)
//! - [`request`]: request directives and reuse decisions (§4, §4.2.4, §5.2.1, RFC 5861)
//! - [`conditional`]: validation and freshening (§4.3)
//! - [`vary`]: secondary keys (§4.1)
//! - [`range`]: byte ranges served from stored responses (RFC 9110 §14)
//! - [`headers`]: hop-by-hop fields and unsafe-method invalidation (§3.1, §4.4)
//! - [`tags`]: invalidation tags from Surrogate-Key, Cache-Tag, Cache-Groups
//! - [`cache_status`]: the Cache-Status field (RFC 9211)

pub mod age;
pub mod cache_control;
pub mod cache_status;
pub mod conditional;
pub mod headers;
pub mod range;
pub mod request;
pub mod response;
pub mod tags;
pub mod vary;

#[cfg(test)]
mod proptests;
#[cfg(test)]
pub(crate) mod test_support;
