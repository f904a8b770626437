//! The in-memory tier: a sharded, weighted cache with scan-resistant
//! eviction (quick_cache's S3-FIFO-style clock), bounded by a byte budget.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use quick_cache::sync::Cache;
use quick_cache::{DefaultHashBuilder, Lifecycle, Weighter};

use super::{Store, StoreStats, Variants};

#[derive(Clone)]
struct ByBytes;

impl Weighter<Arc<str>, Arc<Variants>> for ByBytes {
    fn weight(&self, key: &Arc<str>, val: &Arc<Variants>) -> u64 {
        (key.len() + val.weight()) as u64
    }
}

/// Counts evictions for /metrics.
#[derive(Clone, Default)]
struct CountEvictions(Arc<AtomicU64>);

impl Lifecycle<Arc<str>, Arc<Variants>> for CountEvictions {
    type RequestState = ();

    fn begin_request(&self) -> Self::RequestState {}

    fn on_evict(&self, _state: &mut Self::RequestState, _key: Arc<str>, _val: Arc<Variants>) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

pub struct MemoryStore {
    cache: Cache<Arc<str>, Arc<Variants>, ByBytes, DefaultHashBuilder, CountEvictions>,
    evictions: Arc<AtomicU64>,
}

impl MemoryStore {
    /// A store holding at most `budget` bytes of keys, headers, bodies and
    /// per-object bookkeeping.
    pub fn new(budget: u64) -> MemoryStore {
        let evictions = CountEvictions::default();
        let counter = evictions.0.clone();
        // Sized for ~4 KiB objects; the map grows if they are smaller.
        let estimated_items = (budget / 4096).clamp(1024, 1 << 24) as usize;
        let cache = Cache::with(estimated_items, budget, ByBytes, DefaultHashBuilder::default(), evictions);
        MemoryStore { cache, evictions: counter }
    }
}

impl Store for MemoryStore {
    fn get(&self, key: &str) -> Option<Arc<Variants>> {
        self.cache.get(key)
    }

    fn put(&self, key: Arc<str>, variants: Variants) {
        if variants.objects.is_empty() {
            self.cache.remove(&*key);
        } else {
            self.cache.insert(key, Arc::new(variants));
        }
    }

    fn remove(&self, key: &str) {
        self.cache.remove(key);
    }

    fn stats(&self) -> StoreStats {
        let mut objects = 0;
        // Counting variants needs a walk; keys is what the map knows. The
        // walk is cheap enough for a scrape and never runs per request.
        for (_, v) in self.cache.iter() {
            objects += v.objects.len() as u64;
        }
        StoreStats {
            keys: self.cache.len() as u64,
            objects,
            bytes: self.cache.weight(),
            capacity: self.cache.capacity(),
            evictions: self.evictions.load(Ordering::Relaxed),
        }
    }

    fn sweep(&self, f: &mut dyn FnMut(&str, &Variants) -> Option<Variants>) {
        let keys: Vec<Arc<str>> = self.cache.iter().map(|(k, _)| k).collect();
        for key in keys {
            let Some(current) = self.cache.peek(&*key) else {
                continue;
            };
            if let Some(kept) = f(&key, &current) {
                // Only replace what we looked at; a newer fill wins.
                let removed = self.cache.remove_if(&*key, |v| Arc::ptr_eq(v, &current));
                if removed.is_some() && !kept.objects.is_empty() {
                    self.cache.insert(key.clone(), Arc::new(kept));
                }
            }
        }
    }
}
