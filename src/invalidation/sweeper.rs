//! The background sweeper, Fresco's ban lurker: frees objects that a hard
//! invalidation removed, then drops selector records that can no longer
//! match anything, so a long-running node does not grow without bound.
//! It runs beside the request path and never blocks it.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::selectors::{Invalidations, Stamp, Validity};
use crate::store::Store;

/// What one sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    pub objects_freed: usize,
    pub records_dropped: usize,
}

/// One pass over the store.
pub fn sweep(store: &dyn Store, invalidations: &Invalidations) -> Swept {
    // Read before walking: a fetch that starts during the walk stamps at
    // least this, and one in flight now is counted here.
    let mut floor = invalidations.oldest_possible_stamp();
    let mut freed = 0;
    store.sweep(&mut |_, variants| {
        let mut hard = 0;
        for o in &variants.objects {
            if invalidations.check(o) == Validity::Hard {
                hard += 1;
            } else {
                floor = Stamp { log: floor.log.min(o.stamp.log), local: floor.local.min(o.stamp.local) };
            }
        }
        if hard == 0 {
            return None;
        }
        freed += hard;
        Some(variants.without(|o| invalidations.check(o) == Validity::Hard))
    });
    let dropped = invalidations.compact(floor);
    Swept { objects_freed: freed, records_dropped: dropped }
}

/// Sweeps every `interval` until `shutdown` turns true.
pub async fn run(
    store: Arc<dyn Store>,
    invalidations: Arc<Invalidations>,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.changed() => return,
        }
        let (s, i) = (store.clone(), invalidations.clone());
        let Ok(swept) = tokio::task::spawn_blocking(move || sweep(s.as_ref(), &i)).await else { continue };
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
    use crate::store::{CachedObject, MemoryStore, Variants};

    fn put(store: &MemoryStore, url: &str, tag: &str, stamp: Stamp) {
        let o = CachedObject::for_test(url, &[tag], stamp);
        store.put(Arc::from(url), Variants::default().with(Arc::new(o), 4));
    }

    #[test]
    fn frees_hard_purged_objects_and_compacts_records() {
        let store = MemoryStore::new(64 << 20);
        let inv = Invalidations::default();
        put(&store, "http://h/a", "t", inv.stamp());
        put(&store, "http://h/b", "u", inv.stamp());
        inv.apply(&[Selector::Tag("t".into())], Mode::Hard, 1);
        inv.apply(&[Selector::Tag("u".into())], Mode::Soft, 2);
        let swept = sweep(&store, &inv);
        assert_eq!(swept.objects_freed, 1);
        assert!(store.get("http://h/a").is_none());
        assert!(store.get("http://h/b").is_some(), "soft-purged objects stay for stale serving");
        assert_eq!(inv.check(&store.get("http://h/b").unwrap().objects[0]), Validity::Soft);
        assert_eq!(inv.records(), 2, "an object older than the records still needs them");
        // Revalidated, b carries a new stamp: nothing needs the records now.
        put(&store, "http://h/b", "u", inv.stamp());
        assert_eq!(sweep(&store, &inv).records_dropped, 2);
        assert_eq!(inv.records(), 0);
    }
}
