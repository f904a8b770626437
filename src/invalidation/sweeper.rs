//! The background sweeper, Fresco's ban lurker: frees objects that a hard
//! invalidation removed, re-stamps the others past the records it checked
//! them against (keeping a soft verdict on the object), then drops the
//! records that no stored or in-flight object can still need. So records
//! stay bounded however long objects live. It runs beside the request path
//! and never blocks it, and it does not walk the store when nothing was
//! recorded since its last pass.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::selectors::{Invalidations, Stamp, Validity};
use crate::store::{Store, Variants};

/// What one pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    pub objects_freed: usize,
    pub records_dropped: usize,
}

/// What the sweeper remembers between passes.
#[derive(Debug, Default)]
pub struct Sweeper {
    /// The record generation and the oldest possible stamp when the last
    /// walk started; None before the first.
    last: Option<(u64, Stamp)>,
}

impl Sweeper {
    /// Walks the store and compacts, unless that would change nothing: no
    /// records at all, or nothing recorded since the last walk and the
    /// fetches in flight that held records back then are still in flight.
    /// Returns None when it did not walk.
    pub fn pass(&mut self, store: &dyn Store, invalidations: &Invalidations) -> Option<Swept> {
        let generation = invalidations.generation();
        let (current, oldest) = invalidations.positions();
        if invalidations.records() == 0 || self.last == Some((generation, oldest)) {
            return None;
        }
        let (swept, complete) = walk(store, invalidations, current, oldest);
        // After an incomplete walk the next pass walks again.
        self.last = complete.then_some((generation, oldest));
        Some(swept)
    }
}

/// One walk. `current` is a stamp read before it, so every record up to it
/// is in place when an object is checked; `oldest` is the oldest stamp an
/// object not yet stored can carry. Also says whether every key was swept.
fn walk(store: &dyn Store, invalidations: &Invalidations, current: Stamp, oldest: Stamp) -> (Swept, bool) {
    let mut floor = oldest;
    let mut freed = 0;
    let unswept = store.sweep(&mut |_, variants| {
        let verdicts: Vec<Validity> = variants.objects.iter().map(|o| invalidations.check(o)).collect();
        for (o, verdict) in variants.objects.iter().zip(&verdicts) {
            if *verdict != Validity::Hard {
                invalidations.verified(o, current, *verdict);
                floor = floor.min(invalidations.effective_stamp(o));
            }
        }
        let hard = verdicts.iter().filter(|v| **v == Validity::Hard).count();
        if hard == 0 {
            return None;
        }
        freed += hard;
        let kept = variants.objects.iter().zip(&verdicts).filter(|(_, v)| **v != Validity::Hard);
        Some(Variants { objects: kept.map(|(o, _)| o.clone()).collect() })
    });
    // A key the store could not sweep may still hold hard-invalidated
    // objects, whose records must stay: compact next time.
    let dropped = if unswept == 0 { invalidations.compact(floor) } else { 0 };
    (Swept { objects_freed: freed, records_dropped: dropped }, unswept == 0)
}

/// Sweeps every `interval` until `shutdown` turns true.
pub async fn run(
    store: Arc<dyn Store>,
    invalidations: Arc<Invalidations>,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let sweeper = Arc::new(std::sync::Mutex::new(Sweeper::default()));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.changed() => return,
        }
        let (s, i, sw) = (store.clone(), invalidations.clone(), sweeper.clone());
        let pass = move || sw.lock().unwrap_or_else(|e| e.into_inner()).pass(s.as_ref(), &i);
        let Ok(Some(swept)) = tokio::task::spawn_blocking(pass).await else { continue };
        metrics::counter!("fresco_sweeper_walks_total").increment(1);
        metrics::counter!("fresco_sweeper_objects_freed_total").increment(swept.objects_freed as u64);
        metrics::counter!("fresco_sweeper_records_dropped_total").increment(swept.records_dropped as u64);
        if swept != Swept::default() {
            tracing::debug!(?swept, "sweep");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::invalidation::{Mode, Selector};
    use crate::store::{CachedObject, MemoryStore, Put};

    fn put(store: &MemoryStore, url: &str, tag: &str, stamp: Stamp) {
        let o = CachedObject::for_test(url, &[tag], stamp);
        assert_eq!(store.put(Arc::from(url), Variants::default().with(Arc::new(o), 4)), Put::Stored);
    }

    fn verdict(store: &MemoryStore, inv: &Invalidations, url: &str) -> Option<Validity> {
        store.get(url).map(|v| inv.check(&v.objects[0]))
    }

    #[test]
    fn frees_hard_purged_objects_and_compacts_records() {
        let store = MemoryStore::new(64 << 20, 1 << 20);
        let inv = Invalidations::default();
        let mut sweeper = Sweeper::default();
        put(&store, "http://h/a", "t", inv.stamp());
        put(&store, "http://h/b", "u", inv.stamp());
        inv.apply(&[Selector::Tag("t".into())], Mode::Hard, 1);
        inv.apply(&[Selector::Tag("u".into())], Mode::Soft, 2);
        let swept = sweeper.pass(&store, &inv).expect("records to sweep");
        assert_eq!(swept.objects_freed, 1);
        assert!(store.get("http://h/a").is_none());
        // b was re-stamped past both records and keeps its soft verdict.
        assert_eq!(swept.records_dropped, 2);
        assert_eq!(inv.records(), 0);
        assert_eq!(
            verdict(&store, &inv, "http://h/b"),
            Some(Validity::Soft),
            "soft-purged objects stay for stale serving"
        );
        // A later hard purge still removes it.
        inv.apply(&[Selector::Tag("u".into())], Mode::Hard, 3);
        assert_eq!(verdict(&store, &inv, "http://h/b"), Some(Validity::Hard));
    }

    #[test]
    fn one_long_lived_object_does_not_pin_later_records() {
        let store = MemoryStore::new(64 << 20, 1 << 20);
        let inv = Invalidations::default();
        let mut sweeper = Sweeper::default();
        put(&store, "http://h/immutable", "asset", inv.stamp());
        for i in 1..=1000u64 {
            inv.apply(&[Selector::Tag(format!("other-{i}"))], Mode::Hard, i);
            inv.invalidate_local(&format!("http://h/cart/{i}"));
            if i % 100 == 0 {
                sweeper.pass(&store, &inv);
                assert_eq!(inv.records(), 0, "after the pass at {i}");
            }
        }
        assert_eq!(verdict(&store, &inv, "http://h/immutable"), Some(Validity::Valid));
    }

    #[test]
    fn a_fetch_in_flight_holds_back_the_records_it_needs_until_it_ends() {
        let store = MemoryStore::new(64 << 20, 1 << 20);
        let inv = Invalidations::default();
        let mut sweeper = Sweeper::default();
        let fetch = inv.begin_fetch();
        inv.apply(&[Selector::Url("http://h/a".into())], Mode::Hard, 1);
        assert_eq!(sweeper.pass(&store, &inv).unwrap().records_dropped, 0);
        // The fetch stores what it brought back: outranked by the purge.
        put(&store, "http://h/a", "t", fetch.stamp);
        assert_eq!(sweeper.pass(&store, &inv), None, "nothing changed since the last walk");
        assert_eq!(verdict(&store, &inv, "http://h/a"), Some(Validity::Hard));
        drop(fetch);
        let swept = sweeper.pass(&store, &inv).expect("the fetch ended: walk again");
        assert_eq!((swept.objects_freed, swept.records_dropped), (1, 1));
        assert!(store.get("http://h/a").is_none());
    }

    /// Counts walks.
    struct Counting(MemoryStore, std::sync::atomic::AtomicUsize);

    impl Store for Counting {
        fn get(&self, key: &str) -> Option<Arc<Variants>> {
            self.0.get(key)
        }
        fn put(&self, key: Arc<str>, variants: Variants) -> Put {
            self.0.put(key, variants)
        }
        fn remove(&self, key: &str) {
            self.0.remove(key)
        }
        fn stats(&self) -> crate::store::StoreStats {
            self.0.stats()
        }
        fn sweep(&self, f: &mut dyn FnMut(&str, &Variants) -> Option<Variants>) -> usize {
            self.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.0.sweep(f)
        }
    }

    #[test]
    fn does_not_walk_when_nothing_was_recorded_since_the_last_pass() {
        let store = Counting(MemoryStore::new(64 << 20, 1 << 20), Default::default());
        let walks = || store.1.load(std::sync::atomic::Ordering::Relaxed);
        let inv = Invalidations::default();
        let mut sweeper = Sweeper::default();
        let o = CachedObject::for_test("http://h/a", &[], inv.stamp());
        let _ = store.put(Arc::from("http://h/a"), Variants::default().with(Arc::new(o), 4));
        assert_eq!(sweeper.pass(&store, &inv), None);
        assert_eq!(walks(), 0, "no records: nothing to walk for");
        let pinned = inv.begin_fetch();
        inv.apply(&[Selector::Tag("t".into())], Mode::Hard, 1);
        assert!(sweeper.pass(&store, &inv).is_some());
        assert_eq!(walks(), 1);
        // Records held back by the fetch, nothing new: no walk.
        for _ in 0..3 {
            let _other = inv.begin_fetch();
            assert_eq!(sweeper.pass(&store, &inv), None);
        }
        assert_eq!(walks(), 1);
        inv.invalidate_local("http://h/b");
        assert!(sweeper.pass(&store, &inv).is_some(), "something new was recorded");
        assert_eq!(walks(), 2);
        drop(pinned);
        assert_eq!(sweeper.pass(&store, &inv).map(|s| s.records_dropped), Some(2));
        assert_eq!(sweeper.pass(&store, &inv), None);
        assert_eq!(walks(), 3);
    }

    mod properties {
        use super::*;
        use crate::invalidation::selectors::tests::{URLS, invalidation, object_shape};
        use proptest::prelude::*;

        #[derive(Debug, Clone)]
        enum Op {
            /// The next log entry (versions in order of application).
            Apply(Vec<Selector>, Mode),
            /// A successful unsafe request for one URL (§4.4).
            Local(&'static str),
            /// A fetch starts; it stores its object at a later `Finish`.
            Start(&'static str, Vec<&'static str>),
            /// The oldest unfinished fetch stores its object and ends.
            Finish,
            Sweep,
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                3 => invalidation().prop_map(|(s, m)| Op::Apply(s, m)),
                1 => prop::sample::select(&URLS[..]).prop_map(Op::Local),
                3 => object_shape().prop_map(|(u, t)| Op::Start(u, t)),
                3 => Just(Op::Finish),
                2 => Just(Op::Sweep),
            ]
        }

        proptest! {
            /// Sweeping (freeing, re-stamping) and compaction never change
            /// any object's verdict: every stored object is judged as it
            /// would be by a node that never sweeps, and only objects that
            /// node finds hard-invalidated are freed.
            #[test]
            fn sweeps_and_compaction_never_change_a_verdict(ops in prop::collection::vec(op(), 1..60)) {
                let swept = Invalidations::default();
                let reference = Invalidations::default();
                let store = MemoryStore::new(64 << 20, 1 << 20);
                let mut sweeper = Sweeper::default();
                let mut fetches = std::collections::VecDeque::new();
                // (store key, the same object as the reference judges it)
                let mut stored: Vec<(String, CachedObject)> = Vec::new();
                let mut version = 0;
                for op in ops {
                    match op {
                        Op::Apply(selectors, mode) => {
                            version += 1;
                            swept.apply(&selectors, mode, version);
                            reference.apply(&selectors, mode, version);
                        }
                        Op::Local(url) => {
                            swept.invalidate_local(url);
                            reference.invalidate_local(url);
                        }
                        Op::Start(url, tags) => fetches.push_back((swept.begin_fetch(), url, tags)),
                        Op::Finish => {
                            if let Some((guard, url, tags)) = fetches.pop_front() {
                                let key = format!("k{}", stored.len());
                                let object = CachedObject::for_test(url, &tags, guard.stamp);
                                let put = store.put(Arc::from(key.as_str()), Variants::default().with(Arc::new(object), 4));
                                prop_assert_eq!(put, Put::Stored);
                                stored.push((key, CachedObject::for_test(url, &tags, guard.stamp)));
                                drop(guard);
                            }
                        }
                        Op::Sweep => {
                            sweeper.pass(&store, &swept);
                        }
                    }
                    for (key, model) in &stored {
                        let want = reference.check(model);
                        match store.get(key) {
                            Some(v) => prop_assert_eq!(swept.check(&v.objects[0]), want, "{}", key),
                            None => prop_assert_eq!(want, Validity::Hard, "{} was freed", key),
                        }
                    }
                }
                // With every fetch ended, one more pass leaves no record
                // that a stored object is not newer than.
                drop(fetches);
                sweeper.pass(&store, &swept);
                prop_assert_eq!(swept.records(), 0);
            }
        }
    }
}
