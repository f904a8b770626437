//! Where cached responses live.
//!
//! [`Store`] is the seam for tiers: the in-memory [`MemoryStore`] today, a
//! disk tier later behind the same interface. A key maps to the set of
//! variants stored for one URL (one per distinct `Vary` selection, §4.1), so
//! a URL invalidation reaches all of them and a lookup is one map access.

mod memory;

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

use crate::policy::response::ResponsePolicy;
use crate::policy::vary::VaryKey;

pub use memory::MemoryStore;

/// One stored response.
#[derive(Debug, Clone)]
pub struct CachedObject {
    pub status: StatusCode,
    /// End-to-end header fields as received (hop-by-hop and `private=`
    /// fields already removed), kept for replay.
    pub headers: StoredHeaders,
    pub body: Bytes,
    pub policy: ResponsePolicy,
    /// The request header values this variant was selected by; empty when
    /// the response had no Vary.
    pub vary: VaryKey,
    /// The normalised URL, which URL and prefix invalidations match.
    pub url: Arc<str>,
    /// Invalidation tags from Surrogate-Key, Cache-Tag and Cache-Groups.
    pub tags: Box<[Arc<str>]>,
    /// The invalidation position the node had applied when the fetch that
    /// produced this object started.
    pub stamp: crate::invalidation::Stamp,
    /// Stale-serving defaults of the object's content class.
    pub stale: crate::policy::request::StaleDefaults,
}

/// Header fields in arrival order, without a hash index: a HeaderMap's
/// table costs more than the fields of a typical response, and replay
/// builds a fresh map anyway.
#[derive(Debug, Clone, Default)]
pub struct StoredHeaders(Box<[(HeaderName, HeaderValue)]>);

impl StoredHeaders {
    pub fn from_map(map: &HeaderMap) -> StoredHeaders {
        StoredHeaders(map.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
    }

    pub fn to_map(&self) -> HeaderMap {
        let mut map = HeaderMap::with_capacity(self.0.len());
        for (k, v) in self.0.iter() {
            map.append(k.clone(), v.clone());
        }
        map
    }

    pub fn get(&self, name: &HeaderName) -> Option<&HeaderValue> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }

    /// Bytes of names and values, for the memory budget.
    pub fn byte_size(&self) -> usize {
        self.0.iter().map(|(k, v)| k.as_str().len() + v.len() + std::mem::size_of::<(HeaderName, HeaderValue)>()).sum()
    }
}

/// Fixed bookkeeping per object beyond its key, headers and body: the
/// struct itself, its `Arc`, the variants vector slot and the store's entry.
/// Measured by `cargo bench --bench memory` (see README).
pub const OBJECT_OVERHEAD: usize = 512;

impl CachedObject {
    /// Bytes this object accounts for in the memory budget.
    pub fn weight(&self) -> usize {
        let tags: usize = self.tags.iter().map(|t| t.len() + 32).sum();
        OBJECT_OVERHEAD + self.headers.byte_size() + self.body.len() + self.url.len() + tags + self.vary.heap_size()
    }
}

/// The variants stored under one key. Replaced as a whole (copy on write),
/// so readers never hold a lock while they serve.
#[derive(Debug, Clone, Default)]
pub struct Variants {
    pub objects: Vec<Arc<CachedObject>>,
}

impl Variants {
    pub fn weight(&self) -> usize {
        self.objects.iter().map(|o| o.weight()).sum()
    }

    /// The variant selected by `request` (§4.1); the most recent one wins
    /// when several match (§4.1 allows any, and recent is best).
    pub fn select(&self, request: &HeaderMap) -> Option<&Arc<CachedObject>> {
        self.objects.iter().rev().find(|o| o.vary.matches(request))
    }

    /// A copy with `object` replacing any variant with the same selection.
    pub fn with(&self, object: Arc<CachedObject>, max_variants: usize) -> Variants {
        let mut objects: Vec<Arc<CachedObject>> =
            self.objects.iter().filter(|o| o.vary != object.vary).cloned().collect();
        objects.push(object);
        if objects.len() > max_variants {
            objects.drain(..objects.len() - max_variants);
        }
        Variants { objects }
    }

    /// A copy without the variants for which `drop` is true.
    pub fn without(&self, drop: impl Fn(&CachedObject) -> bool) -> Variants {
        Variants { objects: self.objects.iter().filter(|o| !drop(o)).cloned().collect() }
    }
}

/// Figures for /metrics.
#[derive(Debug, Clone, Copy, Default)]
pub struct StoreStats {
    pub keys: u64,
    pub objects: u64,
    pub bytes: u64,
    pub capacity: u64,
    pub evictions: u64,
}

/// A cache tier. Implementations are shared across request tasks and must
/// never block for long: no I/O under a lock.
pub trait Store: Send + Sync + 'static {
    fn get(&self, key: &str) -> Option<Arc<Variants>>;
    /// Inserts or replaces the variants of `key`; an empty set removes it.
    fn put(&self, key: Arc<str>, variants: Variants);
    fn remove(&self, key: &str);
    fn stats(&self) -> StoreStats;
    /// Visits every key; `f` returns the variants to keep (None to keep all
    /// as they are). For background sweeping, never on the request path.
    fn sweep(&self, f: &mut dyn FnMut(&str, &Variants) -> Option<Variants>);
}

#[cfg(test)]
impl CachedObject {
    /// A small stored object for tests: `url`, tagged `tags`, fetched at `stamp`.
    pub fn for_test(url: &str, tags: &[&str], stamp: crate::invalidation::Stamp) -> CachedObject {
        let now = std::time::SystemTime::now();
        CachedObject {
            status: StatusCode::OK,
            headers: StoredHeaders::default(),
            body: Bytes::from_static(b"x"),
            policy: ResponsePolicy::new(StatusCode::OK, &HeaderMap::new(), now, now, &Default::default()),
            vary: VaryKey::default(),
            url: Arc::from(url),
            tags: tags.iter().map(|t| Arc::from(*t)).collect(),
            stamp,
            stale: Default::default(),
        }
    }
}
