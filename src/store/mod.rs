//! Where cached responses live.
//!
//! [`Store`] is the seam for tiers: [`TieredStore`] puts the in-memory
//! [`MemoryStore`] over an optional [`DiskStore`] behind the same
//! interface. A key maps to the set of variants stored for one URL (one per
//! distinct `Vary` selection, §4.1), so a URL invalidation reaches all of
//! them and a lookup is one map access.

mod disk;
mod memory;

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

use crate::policy::response::ResponsePolicy;
use crate::policy::vary::VaryKey;

pub use disk::{DiskStore, Recovered};
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
    /// How far the sweeper has checked this object since (its re-stamp),
    /// so selector records older than that can be dropped.
    pub verified: crate::invalidation::Verified,
    /// Stale-serving defaults of the object's content class.
    pub stale: crate::policy::request::StaleDefaults,
}

/// Header fields in arrival order, without a hash index: a HeaderMap's
/// table costs more than the fields of a typical response, and replay
/// builds a fresh map anyway.
///
/// The values are copied into one buffer owned by the object. hyper parses
/// a response's values as slices of its connection read buffer, so keeping
/// those `HeaderValue`s would pin a whole read buffer (8 KiB and more) per
/// stored object, far more than the budget accounts for (issue 8, item 16).
#[derive(Debug, Clone, Default)]
pub struct StoredHeaders {
    /// Each field's name and the end of its value in `values`.
    fields: Box<[(HeaderName, u32)]>,
    values: Bytes,
}

impl StoredHeaders {
    pub fn from_map(map: &HeaderMap) -> StoredHeaders {
        let mut values = Vec::with_capacity(map.iter().map(|(_, v)| v.len()).sum());
        let fields = map
            .iter()
            .map(|(k, v)| {
                values.extend_from_slice(v.as_bytes());
                // A response head is bounded by hyper's read buffer, far
                // below 4 GiB.
                (k.clone(), u32::try_from(values.len()).unwrap_or(u32::MAX))
            })
            .collect();
        StoredHeaders { fields, values: Bytes::from(values) }
    }

    /// The fields in arrival order.
    pub fn iter(&self) -> impl Iterator<Item = (&HeaderName, HeaderValue)> + '_ {
        let mut start = 0usize;
        self.fields.iter().map(move |(name, end)| {
            let end = *end as usize;
            let value = self.values.slice(start..end);
            start = end;
            // The bytes were a valid HeaderValue when copied in.
            let value = HeaderValue::from_maybe_shared(value).expect("stored from a valid HeaderValue");
            (name, value)
        })
    }

    pub fn to_map(&self) -> HeaderMap {
        let mut map = HeaderMap::with_capacity(self.fields.len());
        for (k, v) in self.iter() {
            map.append(k.clone(), v);
        }
        map
    }

    /// Heap bytes of names and values, for the memory budget. Names
    /// count in full although standard ones are static: a few bytes of
    /// over-estimate per field keep the budget an upper bound.
    pub fn byte_size(&self) -> usize {
        let names: usize = self.fields.iter().map(|(k, _)| k.as_str().len()).sum();
        self.values.len() + self.fields.len() * std::mem::size_of::<(HeaderName, u32)>() + names
    }
}

/// Fixed bookkeeping per object beyond its key, headers and body: the
/// struct, its `Arc`, the variants vector and its `Arc`, the store's slab
/// entry, hash slot and ghost entries, and the allocator's rounding and
/// fragmentation. Measured through HTTP by `scripts/memory-bench.sh` with
/// the budget full and evicting (1 KiB objects from nginx): resident
/// growth per stored object minus the bytes `weight` counts besides this
/// was 761 B (see README), before the verification state became shared
/// between tiers: an `Arc` allocation (48 B) replacing 24 B of inline
/// atomics adds 32 B, not measured again yet.
pub const OBJECT_OVERHEAD: usize = 800;

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
    /// Keys evicted to make room (replacements and refusals not counted).
    pub evictions: u64,
    /// Inserts refused, by reason (indexed like [`Refusal::ALL`]).
    pub refused: [u64; Refusal::ALL.len()],
}

/// What [`Store::put`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Put {
    /// The newest variant is stored (older ones may have been dropped to
    /// make the key fit).
    Stored,
    /// An empty set: the key is gone.
    Removed,
    /// Nothing was stored; what the key held before is gone too, since it
    /// was being replaced.
    Refused(Refusal),
}

/// Why the store refused an insert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Heavier than the largest entry the store can hold (a shard's share
    /// of the budget). The configuration clamps `max_object_size` below
    /// it, so only a response with an unusually large header block gets here.
    TooLarge,
    /// Admitted and at once evicted again by the store's own policy.
    NoRoom,
}

impl Refusal {
    pub const ALL: [Refusal; 2] = [Refusal::TooLarge, Refusal::NoRoom];

    /// The `reason` label of `fresco_store_refused_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::TooLarge => "too_large",
            Refusal::NoRoom => "no_room",
        }
    }
}

/// A cache tier. Implementations are shared across request tasks and must
/// never block for long: no I/O under a lock.
pub trait Store: Send + Sync + 'static {
    fn get(&self, key: &str) -> Option<Arc<Variants>>;
    /// Inserts or replaces the variants of `key`; an empty set removes it.
    fn put(&self, key: Arc<str>, variants: Variants) -> Put;
    fn remove(&self, key: &str);
    fn stats(&self) -> StoreStats;
    /// Visits every key; `f` returns the variants to keep (None to keep all
    /// as they are). The store replaces a set only if it is still the one
    /// `f` saw, and otherwise calls `f` again with the newer set, so what
    /// `f` asked to drop is gone unless the key is counted in the result:
    /// the number of keys left unswept because they kept changing. For
    /// background sweeping, never on the request path.
    fn sweep(&self, f: &mut dyn FnMut(&str, &Variants) -> Option<Variants>) -> usize;
}

/// The memory tier over an optional disk tier.
///
/// - A memory hit admits the set to disk (queued, written by the disk's
///   writer thread) unless that very set is there, and so does storing a
///   key stored recently before (evicted from memory in between): an
///   object goes to disk on its second request, so one-hit wonders never
///   cost a write.
/// - A memory miss reads the disk; what it finds is promoted to memory
///   (whose own admission decides whether it stays) and served.
/// - A replacement or removal forgets the key on disk too, so an older
///   response never comes back after a newer one was stored or refused.
pub struct TieredStore {
    memory: MemoryStore,
    disk: Option<DiskStore>,
}

impl TieredStore {
    pub fn new(memory: MemoryStore, disk: Option<DiskStore>) -> TieredStore {
        TieredStore { memory, disk }
    }

    pub fn memory(&self) -> &MemoryStore {
        &self.memory
    }

    pub fn disk(&self) -> Option<&DiskStore> {
        self.disk.as_ref()
    }
}

impl Store for TieredStore {
    fn get(&self, key: &str) -> Option<Arc<Variants>> {
        if let Some(found) = self.memory.get(key) {
            if let Some(disk) = &self.disk {
                disk.admit(key, &found);
            }
            return Some(found);
        }
        let disk = self.disk.as_ref()?;
        let (found, at) = disk.load(key)?;
        // Refused or evicted again at once: served this time all the same.
        let key: Arc<str> = Arc::from(key);
        let (put, promoted) = self.memory.put_shared(key.clone(), found.clone());
        if let Some(promoted) = promoted.as_ref().filter(|_| put == Put::Stored)
            && !disk.holds(&key, at)
        {
            // Replaced or removed meanwhile: the older set must not come
            // back through this promotion.
            self.memory.remove_if_same(&key, promoted);
            return None;
        }
        Some(promoted.unwrap_or_else(|| Arc::new(found)))
    }

    fn put(&self, key: Arc<str>, variants: Variants) -> Put {
        let Some(disk) = &self.disk else { return self.memory.put(key, variants) };
        disk.forget_unless(&key, &variants);
        let again = disk.stored_before(&key);
        let (put, stored) = self.memory.put_shared(key.clone(), variants);
        // Fetched again after the memory tier let it go: its second
        // request as much as a memory hit is. Kept on disk even when the
        // memory tier's own admission turned it away at once (NoRoom).
        if again && let Some(stored) = &stored {
            disk.admit(&key, stored);
        }
        put
    }

    fn remove(&self, key: &str) {
        self.memory.remove(key);
        if let Some(disk) = &self.disk {
            disk.forget(key);
        }
    }

    fn stats(&self) -> StoreStats {
        self.memory.stats()
    }

    /// The memory tier first, then the disk tier (see [`DiskStore::sweep`]).
    /// A variant `f` drops is condemned in every tier: the copies share
    /// their verification state, so none of them is served again.
    fn sweep(&self, f: &mut dyn FnMut(&str, &Variants) -> Option<Variants>) -> usize {
        let mut condemning = |key: &str, variants: &Variants| {
            let kept = f(key, variants);
            if let Some(kept) = &kept {
                for o in &variants.objects {
                    if !kept.objects.iter().any(|k| Arc::ptr_eq(k, o)) {
                        o.verified.condemn();
                    }
                }
            }
            kept
        };
        let unswept = self.memory.sweep(&mut condemning);
        if let Some(disk) = &self.disk {
            disk.sweep(&mut condemning);
        }
        unswept
    }
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
            verified: Default::default(),
            stale: Default::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_object_stored_again_after_memory_let_it_go_is_written_to_disk() {
        let dir = std::env::temp_dir().join(format!("fresco-tiered-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let policy = crate::policy::response::PolicyConfig::default();
        let (disk, _) = DiskStore::open(&dir, 64 << 20, policy, true).unwrap();
        let store = TieredStore::new(MemoryStore::new(1 << 20, 64 << 10), Some(disk));
        let put = |url: &str| {
            let mut o = CachedObject::for_test(url, &[], Default::default());
            o.body = Bytes::from(vec![b'x'; 50_000]);
            let _ = store.put(Arc::from(url), Variants::default().with(Arc::new(o), 4));
        };
        put("http://h/first");
        for i in 0..100 {
            put(&format!("http://h/{i}"));
        }
        assert!(store.memory().get("http://h/first").is_none(), "evicted from memory");
        let disk = store.disk().unwrap();
        assert_eq!(disk.keys(), 0, "one-hit wonders are not written");
        put("http://h/first");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while disk.keys() == 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(disk.keys(), 1, "its second request wrote it");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn stored_headers_keep_order_and_duplicates_and_own_their_bytes() {
        // As hyper hands them over: values sliced out of one large read buffer.
        let read_buffer = Bytes::from(format!("{}etag: \"v1\"\r\nvary: a\r\nvary: b\r\n", "x".repeat(16 << 10)));
        let slice = |s: &str| {
            let at = read_buffer.windows(s.len()).position(|w| w == s.as_bytes()).unwrap();
            HeaderValue::from_maybe_shared(read_buffer.slice(at..at + s.len())).unwrap()
        };
        let mut map = HeaderMap::new();
        map.append("etag", slice("\"v1\""));
        map.append("vary", slice("a"));
        map.append("vary", slice("b"));
        map.append("x-empty", HeaderValue::from_static(""));
        let stored = StoredHeaders::from_map(&map);
        drop(map);
        let round: Vec<(String, String)> =
            stored.iter().map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_string())).collect();
        let want = [("etag", "\"v1\""), ("vary", "a"), ("vary", "b"), ("x-empty", "")];
        assert_eq!(round, want.map(|(k, v)| (k.to_string(), v.to_string())));
        let buffer = read_buffer.as_ptr_range();
        for (_, v) in stored.iter() {
            assert!(!buffer.contains(&v.as_bytes().as_ptr()), "a stored value must not pin the read buffer");
        }
        assert_eq!(stored.to_map().get_all("vary").iter().count(), 2);
    }
}
