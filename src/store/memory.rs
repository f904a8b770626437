//! The in-memory tier: a sharded, weighted cache with scan-resistant
//! eviction (quick_cache's S3-FIFO-style clock), bounded by a byte budget.
//!
//! quick_cache splits the budget into equal shards and silently drops an
//! entry heavier than a shard's hot share. So the shard count is chosen
//! here so that an object of `max_object_size` fits one shard, and when not
//! even a single shard can hold one, [`MemoryStore::max_object_size`] says
//! how large an object can be (the node clamps its setting to it and says
//! so at start-up). Every insert is checked against that limit first, so a
//! refusal is a typed [`Put::Refused`], never a silent drop.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use quick_cache::sync::{Cache, EntryAction, EntryResult};
use quick_cache::{DefaultHashBuilder, Lifecycle, OptionsBuilder, Weighter};

use super::{Put, Refusal, Store, StoreStats, Variants};

/// Share of each shard given to quick_cache's hot queue; it admits no
/// entry heavier than this share.
const HOT_ALLOCATION: f64 = 0.97;

/// Room an object needs beside its body within one entry: key, header
/// fields, tags and bookkeeping. An object whose body is at most
/// `max_object_size` and whose head is within this is always admitted.
const HEAD_ALLOWANCE: u64 = 64 * 1024;

#[derive(Clone)]
struct ByBytes;

impl Weighter<Arc<str>, Arc<Variants>> for ByBytes {
    fn weight(&self, key: &Arc<str>, val: &Arc<Variants>) -> u64 {
        entry_weight(key, val)
    }
}

fn entry_weight(key: &str, variants: &Variants) -> u64 {
    (key.len() + variants.weight()) as u64
}

/// Collects what quick_cache lets go of during one insert (an evicted
/// entry, or the value a replacement displaced), so that `put` can tell
/// them apart afterwards and the values are dropped outside the shard lock.
#[derive(Clone, Default)]
struct Collect;

impl Lifecycle<Arc<str>, Arc<Variants>> for Collect {
    type RequestState = Vec<(Arc<str>, Arc<Variants>)>;

    fn begin_request(&self) -> Self::RequestState {
        Vec::new()
    }

    fn on_evict(&self, state: &mut Self::RequestState, key: Arc<str>, val: Arc<Variants>) {
        state.push((key, val));
    }
}

pub struct MemoryStore {
    cache: Cache<Arc<str>, Arc<Variants>, ByBytes, DefaultHashBuilder, Collect>,
    /// The heaviest entry one shard admits.
    largest_entry: u64,
    /// `max_object_size` as configured, before clamping.
    configured_max_object: u64,
    /// Stored variants, kept as a counter so a scrape never walks the store.
    objects: AtomicU64,
    evictions: AtomicU64,
    refused: [AtomicU64; Refusal::ALL.len()],
}

/// The largest entry quick_cache admits into a shard of `capacity` bytes,
/// computed as quick_cache computes it.
fn hot_share(capacity: u64) -> u64 {
    ((capacity as f64 * HOT_ALLOCATION) as u64).clamp(capacity.min(1), capacity)
}

impl MemoryStore {
    /// A store holding at most `budget` bytes of keys, headers, bodies and
    /// per-object bookkeeping, with shards large enough for an object of
    /// `max_object_size` where the budget allows.
    pub fn new(budget: u64, max_object_size: u64) -> MemoryStore {
        // Sized for ~4 KiB objects; the map grows if they are smaller.
        let estimated_items = (budget / 4096).clamp(1024, 1 << 24) as usize;
        let wanted = max_object_size.saturating_add(HEAD_ALLOWANCE);
        // quick_cache's default: four shards per CPU. Fewer, larger shards
        // cost a little lock contention; too small ones cost objects.
        let mut shards = (std::thread::available_parallelism().map_or(1, |n| n.get()) * 4).next_power_of_two();
        while shards > 1 && hot_share(budget.div_ceil(shards as u64)) < wanted {
            shards /= 2;
        }
        let options = OptionsBuilder::new()
            .shards(shards)
            .hot_allocation(HOT_ALLOCATION)
            .estimated_items_capacity(estimated_items)
            .weight_capacity(budget)
            .build()
            .expect("every option is set");
        let cache = Cache::with_options(options, ByBytes, DefaultHashBuilder::default(), Collect);
        // Read back: quick_cache may merge shards further.
        let largest_entry = hot_share(cache.shard_capacity());
        MemoryStore {
            cache,
            largest_entry,
            configured_max_object: max_object_size,
            objects: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
            refused: Default::default(),
        }
    }

    /// The largest body an object may have and be stored: the configured
    /// `max_object_size`, or less when the budget is too small for one
    /// shard to hold that.
    pub fn max_object_size(&self) -> u64 {
        self.configured_max_object.min(self.largest_entry.saturating_sub(HEAD_ALLOWANCE))
    }

    /// Number of shards the budget is split into.
    #[cfg(test)]
    fn shards(&self) -> usize {
        self.cache.num_shards()
    }

    /// Removes `key` if it still holds `variants` (that very set).
    pub fn remove_if_same(&self, key: &Arc<str>, variants: &Arc<Variants>) {
        let outcome = self.cache.entry(key, Some(Duration::ZERO), |_, v| {
            if Arc::ptr_eq(v, variants) { EntryAction::Remove } else { EntryAction::Retain(false) }
        });
        if let EntryResult::Removed(_, v) = outcome {
            self.objects.fetch_sub(v.objects.len() as u64, Ordering::Relaxed);
        }
    }

    /// [`Store::put`], also returning the set it tried to store (None when
    /// it was too large or empty).
    pub fn put_shared(&self, key: Arc<str>, mut variants: Variants) -> (Put, Option<Arc<Variants>>) {
        if variants.objects.is_empty() {
            self.remove(&key);
            return (Put::Removed, None);
        }
        // The newest variant is the one being stored; older ones give way
        // when the key as a whole would not fit a shard.
        while variants.objects.len() > 1 && entry_weight(&key, &variants) > self.largest_entry {
            variants.objects.remove(0);
        }
        if entry_weight(&key, &variants) > self.largest_entry {
            // What the key held is superseded either way (as quick_cache
            // itself would do): never serve the older response after a
            // newer one was refused.
            self.remove(&key);
            return (self.refuse(Refusal::TooLarge), None);
        }
        let new = Arc::new(variants);
        // Counted before it becomes visible, so a concurrent removal never
        // takes the counter below zero.
        self.objects.fetch_add(new.objects.len() as u64, Ordering::Relaxed);
        let released = self.cache.insert_with_lifecycle(key.clone(), new.clone());
        let mut result = Put::Stored;
        for (k, v) in released {
            self.objects.fetch_sub(v.objects.len() as u64, Ordering::Relaxed);
            if Arc::ptr_eq(&v, &new) {
                result = self.refuse(Refusal::NoRoom);
            } else if k != key {
                self.evictions.fetch_add(1, Ordering::Relaxed);
            }
            // Otherwise `v` is what the new set replaced: not an eviction.
        }
        (result, Some(new))
    }

    fn refuse(&self, why: Refusal) -> Put {
        let i = Refusal::ALL.iter().position(|r| *r == why).expect("ALL lists every reason");
        self.refused[i].fetch_add(1, Ordering::Relaxed);
        Put::Refused(why)
    }
}

impl Store for MemoryStore {
    fn get(&self, key: &str) -> Option<Arc<Variants>> {
        self.cache.get(key)
    }

    fn put(&self, key: Arc<str>, variants: Variants) -> Put {
        self.put_shared(key, variants).0
    }

    fn remove(&self, key: &str) {
        if let Some((_, v)) = self.cache.remove(key) {
            self.objects.fetch_sub(v.objects.len() as u64, Ordering::Relaxed);
        }
    }

    fn stats(&self) -> StoreStats {
        StoreStats {
            keys: self.cache.len() as u64,
            objects: self.objects.load(Ordering::Relaxed),
            bytes: self.cache.weight(),
            capacity: self.cache.capacity(),
            evictions: self.evictions.load(Ordering::Relaxed),
            refused: std::array::from_fn(|i| self.refused[i].load(Ordering::Relaxed)),
        }
    }

    fn sweep(&self, f: &mut dyn FnMut(&str, &Variants) -> Option<Variants>) -> usize {
        // Bounded: a key refilled faster than it can be swept is left for
        // the next pass.
        const ATTEMPTS: usize = 16;
        let keys: Vec<Arc<str>> = self.cache.iter().map(|(k, _)| k).collect();
        let mut unswept = 0;
        for key in keys {
            let mut attempts = 0;
            loop {
                let Some(current) = self.cache.peek(&*key) else { break };
                let Some(kept) = f(&key, &current) else { break };
                let removed = (current.objects.len() - kept.objects.len()) as u64;
                // Only replace what `f` looked at, in place: not an eviction,
                // and the key keeps its place in the queues.
                let outcome = self.cache.entry(&key, Some(Duration::ZERO), |_, v| {
                    if !Arc::ptr_eq(v, &current) {
                        EntryAction::Retain(false)
                    } else if kept.objects.is_empty() {
                        EntryAction::Remove
                    } else {
                        *v = Arc::new(kept);
                        EntryAction::Retain(true)
                    }
                });
                match outcome {
                    EntryResult::Removed(..) | EntryResult::Retained(true) => {
                        self.objects.fetch_sub(removed, Ordering::Relaxed);
                        break;
                    }
                    // Gone meanwhile: nothing left to sweep.
                    EntryResult::Vacant(_) => break,
                    // Replaced meanwhile: sweep the newer set.
                    _ => {
                        attempts += 1;
                        if attempts == ATTEMPTS {
                            unswept += 1;
                            break;
                        }
                    }
                }
            }
        }
        unswept
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::invalidation::Stamp;
    use crate::store::CachedObject;
    use bytes::Bytes;

    fn object(url: &str, body: usize) -> Arc<CachedObject> {
        let mut o = CachedObject::for_test(url, &[], Stamp::default());
        o.body = Bytes::from(vec![b'x'; body]);
        Arc::new(o)
    }

    fn put(store: &MemoryStore, url: &str, body: usize) -> Put {
        store.put(Arc::from(url), Variants::default().with(object(url, body), 16))
    }

    #[test]
    fn an_object_of_max_object_size_fits_whatever_the_cpu_count() {
        // 8 MiB split four ways per CPU would give 256 KiB shards on 8 CPUs.
        let store = MemoryStore::new(8 << 20, 2 << 20);
        assert_eq!(store.max_object_size(), 2 << 20);
        assert_eq!(put(&store, "http://h/big", 2 << 20), Put::Stored);
        assert!(store.get("http://h/big").is_some());
        assert_eq!(store.stats().objects, 1);
    }

    #[test]
    fn max_object_size_is_clamped_to_what_one_shard_holds() {
        let store = MemoryStore::new(8 << 20, 16 << 20);
        assert_eq!(store.shards(), 1);
        let max = store.max_object_size();
        assert!(max < 8 << 20 && max > 7 << 20, "{max}");
        assert_eq!(put(&store, "http://h/fits", max as usize), Put::Stored);
        assert_eq!(put(&store, "http://h/huge", 9 << 20), Put::Refused(Refusal::TooLarge));
        assert!(store.get("http://h/huge").is_none());
        assert_eq!(store.stats().refused, [1, 0]);
        assert_eq!(store.stats().evictions, 0);
    }

    #[test]
    fn a_refused_replacement_removes_the_older_response() {
        let store = MemoryStore::new(8 << 20, 16 << 20);
        assert_eq!(put(&store, "http://h/a", 10), Put::Stored);
        assert_eq!(put(&store, "http://h/a", 9 << 20), Put::Refused(Refusal::TooLarge));
        assert!(store.get("http://h/a").is_none(), "the superseded response must not be served");
        assert_eq!(store.stats().objects, 0);
    }

    #[test]
    fn replacements_are_not_evictions() {
        let store = MemoryStore::new(64 << 20, 1 << 20);
        for _ in 0..100 {
            assert_eq!(put(&store, "http://h/a", 100), Put::Stored);
        }
        let s = store.stats();
        assert_eq!((s.evictions, s.refused, s.objects, s.keys), (0, [0, 0], 1, 1));
    }

    #[test]
    fn evictions_count_keys_let_go_for_room_and_objects_stay_exact() {
        let store = MemoryStore::new(1 << 20, 64 << 10);
        for i in 0..1000 {
            assert_eq!(put(&store, &format!("http://h/{i}"), 10 << 10), Put::Stored);
        }
        let s = store.stats();
        assert!(s.bytes <= s.capacity, "{s:?}");
        assert_eq!(s.evictions, 1000 - s.keys, "{s:?}");
        assert_eq!(s.objects, s.keys);
        let walked: u64 = store.cache.iter().map(|(_, v)| v.objects.len() as u64).sum();
        assert_eq!(walked, s.objects);
    }

    #[test]
    fn the_newest_variant_is_kept_when_the_key_would_not_fit() {
        let store = MemoryStore::new(8 << 20, 16 << 20);
        let max = store.max_object_size() as usize;
        let mut a = CachedObject::for_test("http://h/v", &[], Stamp::default());
        a.body = Bytes::from(vec![b'a'; max]);
        a.vary = crate::policy::vary::VaryKey::for_request(
            &[http::header::ACCEPT_LANGUAGE],
            &http::HeaderMap::from_iter([(http::header::ACCEPT_LANGUAGE, "en".parse().unwrap())]),
        );
        let b = object("http://h/v", max);
        let both = Variants::default().with(Arc::new(a), 16).with(b.clone(), 16);
        assert_eq!(both.objects.len(), 2);
        assert_eq!(store.put(Arc::from("http://h/v"), both), Put::Stored);
        let stored = store.get("http://h/v").unwrap();
        assert_eq!(stored.objects.len(), 1);
        assert!(Arc::ptr_eq(&stored.objects[0], &b));
        assert_eq!(store.stats().objects, 1);
    }

    #[test]
    fn sweep_replaces_in_place_and_keeps_the_count() {
        let store = MemoryStore::new(64 << 20, 1 << 20);
        for i in 0..10 {
            assert_eq!(put(&store, &format!("http://h/{i}"), 10), Put::Stored);
        }
        assert_eq!(store.sweep(&mut |k, v| k.ends_with('3').then(|| v.without(|_| true))), 0);
        let s = store.stats();
        assert_eq!((s.objects, s.keys, s.evictions), (9, 9, 0));
        assert!(store.get("http://h/3").is_none());
    }
}
