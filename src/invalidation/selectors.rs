//! The in-memory selector records and the per-object validity check.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use crate::store::CachedObject;

/// Hard removes; soft marks stale (usable for stale-while-revalidate and
/// stale-if-error, revalidated with validators).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Hard,
    Soft,
}

/// What an invalidation selects. In the log: `{"url": ".."}`,
/// `{"prefix": ".."}`, `{"tag": ".."}` or `"all"`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Selector {
    /// One normalised URL, all its variants.
    Url(String),
    /// Every URL under a normalised scheme://host/path prefix, by whole
    /// path segments.
    Prefix(String),
    Tag(String),
    All,
}

/// The invalidation position a fetch started at. `log` orders invalidations
/// from the log (embedded or distributed); `local` orders this node's own
/// unsafe-method invalidations (RFC 9111 §4.4), which are not logged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stamp {
    pub log: u64,
    pub local: u64,
}

impl Stamp {
    /// The component-wise minimum: a position no later than either.
    pub fn min(self, other: Stamp) -> Stamp {
        Stamp { log: self.log.min(other.log), local: self.local.min(other.local) }
    }

    /// The component-wise maximum.
    pub fn max(self, other: Stamp) -> Stamp {
        Stamp { log: self.log.max(other.log), local: self.local.max(other.local) }
    }
}

/// The verdict on one stored object, ordered from best to worst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Validity {
    Valid,
    Soft,
    Hard,
}

/// How far the sweeper has checked one stored object: every record up to
/// this stamp was judged against it (Varnish's ban lurker moving an object
/// past the bans it tested), and whether that verdict was soft. The object
/// is then judged from the later of its fetch stamp and this one, carrying
/// the soft verdict, so the records below can be dropped without changing
/// its verdict. Atomics, so the sweeper re-stamps an object in place while
/// requests read it.
///
/// The state is shared by the copies of one object in the store's tiers
/// (the memory object, its disk index entry, a copy read back from disk;
/// see [`Verified::share`]): the sweeper visits any one of them and the
/// re-stamp holds for all, so a record that compaction drops was needed by
/// none. A hard verdict is kept too (`condemned`), so a copy the sweeper
/// judged hard stays hard after the record that made it so is dropped.
#[derive(Debug, Default)]
pub struct Verified(Arc<VerifiedState>);

#[derive(Debug, Default)]
struct VerifiedState {
    log: AtomicU64,
    local: AtomicU64,
    soft: AtomicBool,
    condemned: AtomicBool,
}

/// A copy of a stored object is a different object (freshened, re-tagged)
/// that the sweeper has not checked: it starts unverified and is judged by
/// its own fetch stamp.
impl Clone for Verified {
    fn clone(&self) -> Verified {
        Verified::default()
    }
}

impl Verified {
    /// The same state, not a copy: raising one raises the other. For the
    /// copies of one object in different tiers.
    pub fn share(&self) -> Verified {
        Verified(self.0.clone())
    }

    /// Records that the sweeper judged the object hard-invalidated.
    pub fn condemn(&self) {
        self.0.condemned.store(true, Ordering::Release);
    }

    /// Records that the object's verdict against every record up to `to`
    /// is `verdict` (Valid or Soft). The flag is set before the stamp moves,
    /// so a reader that sees the new stamp sees the flag.
    fn raise(&self, to: Stamp, verdict: Validity) {
        debug_assert!(verdict != Validity::Hard, "a hard-invalidated object is freed, not re-stamped");
        if verdict == Validity::Soft {
            self.0.soft.store(true, Ordering::Release);
        }
        self.0.log.fetch_max(to.log, Ordering::Release);
        self.0.local.fetch_max(to.local, Ordering::Release);
    }

    /// The stamp to judge an object fetched at `fetched` by, and the
    /// verdict it carries from earlier checks.
    fn effective(&self, fetched: Stamp) -> (Stamp, Validity) {
        let s = &self.0;
        let stamp = Stamp { log: s.log.load(Ordering::Acquire), local: s.local.load(Ordering::Acquire) };
        let carried = if s.condemned.load(Ordering::Acquire) {
            Validity::Hard
        } else if s.soft.load(Ordering::Acquire) {
            Validity::Soft
        } else {
            Validity::Valid
        };
        (fetched.max(stamp), carried)
    }
}

/// The highest versions recorded for one selector, per mode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Mark {
    hard: u64,
    soft: u64,
    local: u64,
}

impl Mark {
    fn record(&mut self, mode: Mode, version: u64) {
        match mode {
            Mode::Hard => self.hard = self.hard.max(version),
            Mode::Soft => self.soft = self.soft.max(version),
        }
    }

    fn judge(&self, stamp: Stamp) -> Validity {
        if self.hard > stamp.log || self.local > stamp.local {
            Validity::Hard
        } else if self.soft > stamp.log {
            Validity::Soft
        } else {
            Validity::Valid
        }
    }
}

type Table = RwLock<HashMap<Arc<str>, Mark>>;

/// All selector records of a node.
#[derive(Default)]
pub struct Invalidations {
    applied: AtomicU64,
    local: AtomicU64,
    /// After a reconnect: the log head this node must reach before it may
    /// trust its stored objects again.
    catch_up: AtomicU64,
    /// Set while this node cannot vouch that it has every invalidation (cut
    /// off from the log past its bound, or its consumer not running).
    distrusted: AtomicBool,
    /// Number of records, so the common case (nothing invalidated) costs
    /// one atomic load per lookup.
    records: AtomicUsize,
    /// Bumped after every recording, so the sweeper can tell that nothing
    /// was recorded since its last pass.
    generation: AtomicU64,
    urls: Table,
    prefixes: Table,
    tags: Table,
    all: RwLock<Mark>,
    /// Log stamps of fetches in flight, so compaction never drops a record
    /// that an object still being fetched must be checked against.
    inflight: std::sync::Mutex<BTreeMap<(u64, u64), usize>>,
    /// Told of each local invalidation before it is recorded: local
    /// invalidations are not logged, and a disk tier must outlive neither
    /// them nor a restart.
    local_listener: std::sync::OnceLock<LocalListener>,
}

type LocalListener = Box<dyn Fn(&str) + Send + Sync>;

/// Registration of a fetch in flight; unregisters when dropped.
pub struct FetchGuard<'a> {
    owner: &'a Invalidations,
    pub stamp: Stamp,
}

impl Drop for FetchGuard<'_> {
    fn drop(&mut self) {
        let mut map = self.owner.inflight.lock().unwrap_or_else(|e| e.into_inner());
        let key = (self.stamp.log, self.stamp.local);
        if let Some(n) = map.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                map.remove(&key);
            }
        }
    }
}

impl Invalidations {
    /// The stamp for a fetch starting now.
    pub fn stamp(&self) -> Stamp {
        Stamp { log: self.applied.load(Ordering::Acquire), local: self.local.load(Ordering::Acquire) }
    }

    /// Stamps a fetch that starts now and keeps its stamp visible to
    /// compaction until the guard is dropped.
    pub fn begin_fetch(&self) -> FetchGuard<'_> {
        let mut map = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
        // Read under the lock so compaction sees either the registration or
        // a stamp at least as new as the applied version it read.
        let stamp = self.stamp();
        *map.entry((stamp.log, stamp.local)).or_default() += 1;
        FetchGuard { owner: self, stamp }
    }

    /// The current stamp, and the oldest stamp an object not stored yet
    /// can carry: that of the oldest fetch in flight, or the current one.
    /// Read together under the registry's lock.
    pub fn positions(&self) -> (Stamp, Stamp) {
        let map = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.stamp();
        let oldest = map.keys().fold(current, |acc, (log, local)| acc.min(Stamp { log: *log, local: *local }));
        (current, oldest)
    }

    /// Changes whenever something is recorded.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Records that the sweeper found `object` to be `verdict` (not Hard)
    /// against every record up to `to`, which must all be recorded: `to`
    /// is a [`Invalidations::stamp`] read before the check.
    pub fn verified(&self, object: &CachedObject, to: Stamp, verdict: Validity) {
        object.verified.raise(to, verdict);
    }

    /// The stamp `object` is judged by: its fetch stamp or, if later, the
    /// one the sweeper re-stamped it to.
    pub fn effective_stamp(&self, object: &CachedObject) -> Stamp {
        object.verified.effective(object.stamp).0
    }

    /// Number of selector records held.
    pub fn records(&self) -> usize {
        self.records.load(Ordering::Acquire)
    }

    /// Drops every record that can no longer invalidate anything: all its
    /// versions are at or below `floor`, the oldest stamp of any stored or
    /// in-flight object. Returns how many were dropped.
    pub fn compact(&self, floor: Stamp) -> usize {
        let stale = |m: &Mark| m.hard <= floor.log && m.soft <= floor.log && m.local <= floor.local;
        let mut dropped = 0;
        for table in [&self.urls, &self.prefixes, &self.tags] {
            let mut map = table.write().unwrap_or_else(|e| e.into_inner());
            let before = map.len();
            map.retain(|_, m| !stale(m));
            dropped += before - map.len();
        }
        {
            let mut all = self.all.write().unwrap_or_else(|e| e.into_inner());
            if *all != Mark::default() && stale(&all) {
                *all = Mark::default();
                dropped += 1;
            }
        }
        self.records.fetch_sub(dropped, Ordering::AcqRel);
        dropped
    }

    /// Distrust stored objects until `head` is applied.
    pub fn catch_up_to(&self, head: u64) {
        self.catch_up.fetch_max(head, Ordering::AcqRel);
    }

    /// Distrust stored objects (true) until told otherwise (false).
    pub fn distrust(&self, distrusted: bool) {
        self.distrusted.store(distrusted, Ordering::Release);
    }

    /// True while invalidations this node knows it missed are not applied,
    /// or while it cannot know whether it missed any.
    pub fn catching_up(&self) -> bool {
        self.distrusted.load(Ordering::Acquire) || self.catch_up.load(Ordering::Acquire) > self.applied()
    }

    /// The highest log version applied.
    pub fn applied(&self) -> u64 {
        self.applied.load(Ordering::Acquire)
    }

    /// Records every selector of the invalidation at log `version`, and only
    /// then counts `version` as applied: a fetch stamped `version` must be
    /// outranked by none of them. Idempotent and order-free.
    pub fn apply(&self, selectors: &[Selector], mode: Mode, version: u64) {
        for selector in selectors {
            self.record_selector(selector, mode, version);
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.advance(version);
    }

    fn record_selector(&self, selector: &Selector, mode: Mode, version: u64) {
        match selector {
            Selector::Url(u) => self.record(&self.urls, u, |m| m.record(mode, version)),
            Selector::Prefix(p) => self.record(&self.prefixes, p.trim_end_matches('/'), |m| m.record(mode, version)),
            Selector::Tag(t) => self.record(&self.tags, t, |m| m.record(mode, version)),
            Selector::All => {
                let mut all = self.all.write().unwrap_or_else(|e| e.into_inner());
                if *all == Mark::default() {
                    self.records.fetch_add(1, Ordering::Release);
                }
                all.record(mode, version);
            }
        }
    }

    /// Marks every log version up to `version` as applied.
    pub fn advance(&self, version: u64) {
        self.applied.fetch_max(version, Ordering::AcqRel);
    }

    /// RFC 9111 §4.4: this node saw a successful unsafe request for `url`.
    pub fn invalidate_local(&self, url: &str) {
        if let Some(listener) = self.local_listener.get() {
            listener(url);
        }
        let mut urls = self.urls.write().unwrap_or_else(|e| e.into_inner());
        // As with log versions, the counter moves only once the record is
        // in place: a stamp (a fetch's, or one the sweeper re-stamps an
        // object to) must never claim a record that is not there yet. The
        // table lock orders concurrent calls.
        let seq = self.local.load(Ordering::Acquire) + 1;
        self.record_in(&mut urls, url, |m| m.local = m.local.max(seq));
        self.local.store(seq, Ordering::Release);
        drop(urls);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Sets the listener of local invalidations (once; later calls are
    /// ignored).
    pub fn on_local_invalidation(&self, listener: impl Fn(&str) + Send + Sync + 'static) {
        let _ = self.local_listener.set(Box::new(listener));
    }

    fn record(&self, table: &Table, key: &str, f: impl FnOnce(&mut Mark)) {
        let mut map = table.write().unwrap_or_else(|e| e.into_inner());
        self.record_in(&mut map, key, f);
    }

    fn record_in(&self, map: &mut HashMap<Arc<str>, Mark>, key: &str, f: impl FnOnce(&mut Mark)) {
        let mark = match map.get_mut(key) {
            Some(m) => m,
            None => {
                self.records.fetch_add(1, Ordering::Release);
                map.entry(Arc::from(key)).or_default()
            }
        };
        f(mark);
    }

    /// Is `object` still valid? Looks up only the selectors that could
    /// match it: O(tags + path depth), independent of the record count.
    pub fn check(&self, object: &CachedObject) -> Validity {
        // The object's re-stamp is read after the record count and under
        // the table locks: compaction drops a record only after re-stamping
        // the objects that needed it, so a reader that finds the record
        // gone also sees the re-stamp that made it unnecessary.
        if self.records.load(Ordering::Acquire) == 0 {
            return object.verified.effective(object.stamp).1;
        }
        let all = self.all.read().unwrap_or_else(|e| e.into_inner());
        let urls = self.urls.read().unwrap_or_else(|e| e.into_inner());
        let prefixes = self.prefixes.read().unwrap_or_else(|e| e.into_inner());
        let tags = self.tags.read().unwrap_or_else(|e| e.into_inner());
        let (stamp, carried) = object.verified.effective(object.stamp);
        let mut worst = carried.max(all.judge(stamp));
        if let Some(m) = urls.get(&*object.url) {
            worst = worst.max(m.judge(stamp));
        }
        if !prefixes.is_empty() {
            for prefix in path_prefixes(&object.url) {
                if let Some(m) = prefixes.get(prefix) {
                    worst = worst.max(m.judge(stamp));
                }
            }
        }
        for tag in object.tags.iter() {
            if let Some(m) = tags.get(&**tag) {
                worst = worst.max(m.judge(stamp));
            }
        }
        worst
    }
}

/// The whole-segment prefixes of a normalised URL, shortest first:
/// `http://h/a/b?q` gives `http://h`, `http://h/a`, `http://h/a/b`.
pub fn path_prefixes(url: &str) -> impl Iterator<Item = &str> {
    let without_query = url.split(['?', '#']).next().unwrap_or(url);
    let path_start = without_query.find("://").map_or(0, |i| i + 3);
    let path_start = without_query[path_start..].find('/').map_or(without_query.len(), |i| path_start + i);
    let ends = std::iter::once(path_start)
        .chain(
            without_query[path_start + 1.min(without_query.len() - path_start)..]
                .match_indices('/')
                .map(move |(i, _)| path_start + 1 + i),
        )
        .chain(std::iter::once(without_query.len()));
    let mut last = usize::MAX;
    ends.filter_map(move |end| {
        let p = without_query[..end].trim_end_matches('/');
        if p.len() == last || p.is_empty() {
            return None;
        }
        last = p.len();
        Some(p)
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A few URLs, prefixes and tags that overlap, so random selectors
    /// often match random objects.
    pub(crate) const URLS: [&str; 5] = ["http://h/a", "http://h/a/b", "http://h/ab", "http://h/c?x=1", "http://g/a"];
    const PREFIXES: [&str; 4] = ["http://h", "http://h/a", "http://h/a/", "http://g"];
    pub(crate) const TAGS: [&str; 3] = ["t1", "t2", "t3"];

    pub(crate) fn selector() -> impl Strategy<Value = Selector> {
        prop_oneof![
            4 => prop::sample::select(&URLS[..]).prop_map(|u| Selector::Url(u.into())),
            2 => prop::sample::select(&PREFIXES[..]).prop_map(|p| Selector::Prefix(p.into())),
            4 => prop::sample::select(&TAGS[..]).prop_map(|t| Selector::Tag(t.into())),
            1 => Just(Selector::All),
        ]
    }

    /// One log entry's selectors and mode.
    pub(crate) fn invalidation() -> impl Strategy<Value = (Vec<Selector>, Mode)> {
        (prop::collection::vec(selector(), 1..3), prop_oneof![Just(Mode::Hard), Just(Mode::Soft)])
    }

    /// An object's URL and tags.
    pub(crate) fn object_shape() -> impl Strategy<Value = (&'static str, Vec<&'static str>)> {
        (prop::sample::select(&URLS[..]), prop::sample::subsequence(&TAGS[..], 0..=2))
    }

    /// The model: what the design says an object's verdict is, from the
    /// list of log invalidations (version = index + 1) alone.
    fn model_verdict(log: &[(Vec<Selector>, Mode)], url: &str, tags: &[&str], stamp: u64) -> Validity {
        let matches = |s: &Selector| match s {
            Selector::Url(u) => u == url,
            Selector::Prefix(p) => {
                let p = p.trim_end_matches('/');
                let path = url.split(['?', '#']).next().unwrap_or(url);
                path == p || url.strip_prefix(p).is_some_and(|rest| rest.starts_with(['/', '?', '#']))
            }
            Selector::Tag(t) => tags.contains(&t.as_str()),
            Selector::All => true,
        };
        let mut worst = Validity::Valid;
        for (i, (selectors, mode)) in log.iter().enumerate() {
            if i as u64 + 1 > stamp && selectors.iter().any(matches) {
                worst = worst.max(if *mode == Mode::Hard { Validity::Hard } else { Validity::Soft });
            }
        }
        worst
    }

    proptest! {
        /// Design §3: applying invalidations in any order, any number of
        /// times, gives the same verdict for the same stamp, and that
        /// verdict is the model's.
        #[test]
        fn any_order_of_application_gives_the_same_verdicts(
            (log, first, second) in prop::collection::vec(invalidation(), 0..10).prop_flat_map(|log| {
                let order: Vec<usize> = (0..log.len()).collect();
                let replays = prop::collection::vec(0..log.len().max(1), 0..4);
                (Just(log), Just(order.clone()).prop_shuffle(), (Just(order).prop_shuffle(), replays))
            }),
            objects in prop::collection::vec(object_shape(), 1..6),
        ) {
            let (a, b) = (Invalidations::default(), Invalidations::default());
            for i in &first {
                a.apply(&log[*i].0, log[*i].1, *i as u64 + 1);
            }
            let (order, replays) = second;
            for i in order.iter().chain(replays.iter().filter(|i| **i < log.len())) {
                b.apply(&log[*i].0, log[*i].1, *i as u64 + 1);
            }
            prop_assert_eq!(a.applied(), b.applied());
            for (url, tags) in &objects {
                for log_stamp in 0..=log.len() as u64 {
                    let o = object(url, tags, Stamp { log: log_stamp, local: 0 });
                    let want = model_verdict(&log, url, tags, log_stamp);
                    prop_assert_eq!(a.check(&o), want, "{} {:?} at {}", url, tags, log_stamp);
                    prop_assert_eq!(b.check(&o), want, "{} {:?} at {}", url, tags, log_stamp);
                }
            }
        }
    }

    fn object(url: &str, tags: &[&str], stamp: Stamp) -> CachedObject {
        CachedObject::for_test(url, tags, stamp)
    }

    #[test]
    fn prefixes_are_whole_segments() {
        let got: Vec<&str> = path_prefixes("http://h/foo/bar/baz?x=1").collect();
        assert_eq!(got, vec!["http://h", "http://h/foo", "http://h/foo/bar", "http://h/foo/bar/baz"]);
        let got: Vec<&str> = path_prefixes("http://h/").collect();
        assert_eq!(got, vec!["http://h"]);
    }

    #[test]
    fn prefix_matches_segments_not_substrings() {
        let inv = Invalidations::default();
        inv.apply(&[Selector::Prefix("http://h/foo/bar".into())], Mode::Hard, 1);
        assert_eq!(inv.check(&object("http://h/foo/bar/baz", &[], Stamp::default())), Validity::Hard);
        assert_eq!(inv.check(&object("http://h/foo/bar?x", &[], Stamp::default())), Validity::Hard);
        assert_eq!(inv.check(&object("http://h/foo/barbaz", &[], Stamp::default())), Validity::Valid);
    }

    #[test]
    fn object_fetched_after_invalidation_is_valid() {
        let inv = Invalidations::default();
        inv.apply(&[Selector::Tag("p-1".into())], Mode::Hard, 5);
        assert_eq!(inv.check(&object("http://h/a", &["p-1"], Stamp { log: 4, local: 0 })), Validity::Hard);
        assert_eq!(inv.check(&object("http://h/a", &["p-1"], Stamp { log: 5, local: 0 })), Validity::Valid);
    }

    #[test]
    fn duplicate_and_reordered_application_gives_same_state() {
        let a = Invalidations::default();
        let b = Invalidations::default();
        let ops = [(Selector::Tag("t".into()), Mode::Soft, 3), (Selector::Tag("t".into()), Mode::Hard, 2)];
        for (s, m, v) in &ops {
            a.apply(std::slice::from_ref(s), *m, *v);
        }
        for (s, m, v) in ops.iter().rev().chain(ops.iter()) {
            b.apply(std::slice::from_ref(s), *m, *v);
        }
        for log in 0..5 {
            let o = object("http://h/x", &["t"], Stamp { log, local: 0 });
            assert_eq!(a.check(&o), b.check(&o), "stamp {log}");
        }
        assert_eq!(a.applied(), b.applied());
    }

    #[test]
    fn soft_then_hard_is_hard_for_old_objects() {
        let inv = Invalidations::default();
        inv.apply(&[Selector::All], Mode::Soft, 1);
        assert_eq!(inv.check(&object("http://h/x", &[], Stamp::default())), Validity::Soft);
        inv.apply(&[Selector::Url("http://h/x".into())], Mode::Hard, 2);
        assert_eq!(inv.check(&object("http://h/x", &[], Stamp::default())), Validity::Hard);
        assert_eq!(inv.check(&object("http://h/x", &[], Stamp { log: 1, local: 0 })), Validity::Hard);
        assert_eq!(inv.check(&object("http://h/x", &[], Stamp { log: 2, local: 0 })), Validity::Valid);
    }

    #[test]
    fn compaction_keeps_records_an_old_object_or_fetch_still_needs() {
        let inv = Invalidations::default();
        inv.apply(&[Selector::Tag("a".into())], Mode::Hard, 1);
        let old_fetch = inv.begin_fetch();
        inv.apply(&[Selector::Tag("b".into())], Mode::Hard, 2);
        assert_eq!(inv.records(), 2);
        // The fetch that started at 1 must still be checked against "b".
        assert_eq!(inv.compact(inv.positions().1), 1);
        assert_eq!(inv.check(&object("http://h/x", &["b"], old_fetch.stamp)), Validity::Hard);
        drop(old_fetch);
        assert_eq!(inv.compact(inv.positions().1), 1);
        assert_eq!(inv.records(), 0);
    }

    #[test]
    fn rfc9111_4_4_local_invalidation_uses_its_own_sequence() {
        let inv = Invalidations::default();
        let before = inv.stamp();
        inv.invalidate_local("http://h/cart");
        assert_eq!(inv.check(&object("http://h/cart", &[], before)), Validity::Hard);
        assert_eq!(inv.check(&object("http://h/cart", &[], inv.stamp())), Validity::Valid);
    }
}
