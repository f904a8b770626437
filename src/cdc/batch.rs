//! Merging committed transactions into few invalidations, and deciding
//! which slot position may be confirmed (design §4: batch writes become few
//! invalidations; nothing is lost in a crash).
//!
//! pgoutput sends a transaction only once it has committed, whole, between
//! Begin and Commit; an aborted one is never sent. So a batch collects the
//! tags of whole committed transactions: one transaction is one
//! invalidation (its tags merged), and the transactions that commit within
//! the merge window (or while the previous batch is being delivered) share
//! one. A batch is cut only at a commit. The admin API takes at most
//! [`MAX_SELECTORS`] selectors per request, so a batch with more tags is
//! sent as several requests, each with an idempotency key derived from the
//! batch's commit LSNs. Pure: the time is a parameter.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use crate::invalidation::Mode;
use crate::invalidation::service::MAX_SELECTORS;

/// A batch holding this many tags is delivered at the next commit without
/// waiting for the window (bounds memory and request count per batch).
pub(crate) const FLUSH_TAGS: usize = 100_000;

/// One invalidation request for the sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Request {
    /// Derived from the batch's commit LSNs: a replay of the same batch
    /// after a crash reuses it, so the node (within its idempotency window)
    /// does not make a second entry.
    pub(crate) key: String,
    pub(crate) tags: Vec<String>,
    pub(crate) mode: Mode,
    pub(crate) reason: String,
}

/// Committed transactions not yet handed to the sink.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    /// End LSN of the first and last commit in the batch.
    first_lsn: u64,
    pub(crate) last_lsn: u64,
    /// Commit times (µs since the Unix epoch), for the latency metric.
    pub(crate) commits: Vec<i64>,
    hard: BTreeSet<String>,
    soft: BTreeSet<String>,
    delayed: BTreeMap<Duration, BTreeSet<String>>,
    /// When the first commit of the batch was seen.
    opened: Option<Instant>,
}

impl Batch {
    /// Adds tags of the transaction being received.
    pub(crate) fn add(&mut self, tags: impl IntoIterator<Item = String>, mode: Mode, delayed: Option<Duration>) {
        for tag in tags {
            if let Some(d) = delayed {
                self.delayed.entry(d).or_default().insert(tag.clone());
            }
            match mode {
                Mode::Hard => {
                    self.soft.remove(&tag);
                    self.hard.insert(tag);
                }
                // A tag purged hard by the same batch needs no soft purge.
                Mode::Soft if !self.hard.contains(&tag) => {
                    self.soft.insert(tag);
                }
                Mode::Soft => {}
            }
        }
    }

    /// The transaction being received committed, ending at `end_lsn`.
    pub(crate) fn commit(&mut self, end_lsn: u64, commit_us: i64, now: Instant) {
        if self.commits.is_empty() {
            self.first_lsn = end_lsn;
            self.opened = Some(now);
        }
        self.last_lsn = end_lsn;
        self.commits.push(commit_us);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.commits.is_empty()
    }

    pub(crate) fn tag_count(&self) -> usize {
        self.hard.len() + self.soft.len()
    }

    /// When the batch should be delivered, if it holds a commit.
    pub(crate) fn due(&self, window: Duration) -> Option<Instant> {
        self.opened.map(|t| t + window)
    }

    /// Should it be delivered now (between transactions)?
    pub(crate) fn ready(&self, now: Instant, window: Duration) -> bool {
        self.due(window).is_some_and(|due| now >= due) || (!self.is_empty() && self.tag_count() >= FLUSH_TAGS)
    }

    fn label(&self) -> String {
        format!("{}-{}", lsn_text(self.first_lsn), lsn_text(self.last_lsn))
    }

    /// The requests that deliver the batch now: hard tags, then soft tags,
    /// each in chunks of at most MAX_SELECTORS.
    pub(crate) fn requests(&self, slot: &str) -> Vec<Request> {
        let reason = format!("fresco cdc: {} transaction(s), commit LSN {}", self.commits.len(), self.label());
        let mut out = Vec::new();
        for (mode, tags, name) in [(Mode::Hard, &self.hard, "hard"), (Mode::Soft, &self.soft, "soft")] {
            chunks(&mut out, tags, mode, &format!("fresco-cdc:{slot}:{}:{name}", self.label()), &reason);
        }
        out
    }

    /// The delayed soft purges, each with its delay after the first delivery.
    pub(crate) fn delayed_requests(&self, slot: &str) -> Vec<(Duration, Request)> {
        let reason = format!("fresco cdc: delayed purge for commit LSN {}", self.label());
        let mut out = Vec::new();
        for (delay, tags) in &self.delayed {
            let mut reqs = Vec::new();
            let key = format!("fresco-cdc:{slot}:{}:delayed{}", self.label(), delay.as_millis());
            chunks(&mut reqs, tags, Mode::Soft, &key, &reason);
            out.extend(reqs.into_iter().map(|r| (*delay, r)));
        }
        out
    }
}

fn chunks(out: &mut Vec<Request>, tags: &BTreeSet<String>, mode: Mode, key: &str, reason: &str) {
    let tags: Vec<&String> = tags.iter().collect();
    for (i, chunk) in tags.chunks(MAX_SELECTORS).enumerate() {
        out.push(Request {
            key: format!("{key}:{i}"),
            tags: chunk.iter().map(|t| t.to_string()).collect(),
            mode,
            reason: reason.to_string(),
        });
    }
}

/// An LSN as PostgreSQL writes it (`16/B374D848`).
pub(crate) fn lsn_text(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

/// Which position the slot may be confirmed to: that of the newest batch
/// such that it and every batch before it were delivered entirely,
/// delayed purges included. Confirming less than that only replays
/// harmlessly; confirming more could lose a change in a crash.
#[derive(Debug, Default)]
pub(crate) struct Confirmations {
    /// Delivered batches in commit order: end LSN and delayed purges not
    /// yet accepted.
    open: VecDeque<(u64, usize)>,
    confirmed: u64,
}

impl Confirmations {
    /// A batch's immediate requests were accepted; `delayed` requests are
    /// still to come.
    pub(crate) fn delivered(&mut self, lsn: u64, delayed: usize) {
        self.open.push_back((lsn, delayed));
        self.advance();
    }

    /// One delayed request of the batch ending at `lsn` was accepted.
    pub(crate) fn delayed_done(&mut self, lsn: u64) {
        if let Some(entry) = self.open.iter_mut().find(|(l, _)| *l == lsn) {
            entry.1 = entry.1.saturating_sub(1);
        }
        self.advance();
    }

    fn advance(&mut self) {
        while let Some(&(lsn, 0)) = self.open.front() {
            self.confirmed = self.confirmed.max(lsn);
            self.open.pop_front();
        }
    }

    pub(crate) fn confirmed(&self) -> u64 {
        self.confirmed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_tag_purged_hard_and_soft_in_one_batch_is_purged_hard_once() {
        let mut b = Batch::default();
        b.add(tags(&["a", "b"]), Mode::Soft, None);
        b.add(tags(&["b", "c"]), Mode::Hard, None);
        b.add(tags(&["c"]), Mode::Soft, None);
        b.commit(0x1_0000_0010, 0, Instant::now());
        let reqs = b.requests("fresco");
        assert_eq!(reqs.len(), 2);
        assert_eq!((reqs[0].mode, reqs[0].tags.clone()), (Mode::Hard, tags(&["b", "c"])));
        assert_eq!((reqs[1].mode, reqs[1].tags.clone()), (Mode::Soft, tags(&["a"])));
        assert_eq!(reqs[0].key, "fresco-cdc:fresco:1/10-1/10:hard:0");
    }

    #[test]
    fn a_batch_over_the_api_limit_is_split_with_distinct_keys_and_no_tag_lost() {
        let mut b = Batch::default();
        b.add((0..2500).map(|i| format!("product-{i}")), Mode::Hard, Some(Duration::from_secs(2)));
        b.commit(5, 0, Instant::now());
        let reqs = b.requests("s");
        assert_eq!(reqs.iter().map(|r| r.tags.len()).collect::<Vec<_>>(), vec![1000, 1000, 500]);
        let keys: BTreeSet<&String> = reqs.iter().map(|r| &r.key).collect();
        assert_eq!(keys.len(), 3);
        let all: BTreeSet<&String> = reqs.iter().flat_map(|r| &r.tags).collect();
        assert_eq!(all.len(), 2500);
        let delayed = b.delayed_requests("s");
        assert_eq!(delayed.len(), 3);
        assert!(delayed.iter().all(|(d, r)| *d == Duration::from_secs(2) && r.mode == Mode::Soft));
    }

    #[test]
    fn a_batch_is_ready_after_the_window_or_when_large() {
        let t0 = Instant::now();
        let w = Duration::from_millis(10);
        let mut b = Batch::default();
        assert!(!b.ready(t0 + w * 10, w));
        b.add(tags(&["a"]), Mode::Hard, None);
        b.commit(1, 0, t0);
        assert!(!b.ready(t0, w));
        assert!(b.ready(t0 + w, w));
        let mut big = Batch::default();
        big.add((0..FLUSH_TAGS).map(|i| i.to_string()), Mode::Hard, None);
        big.commit(1, 0, t0);
        assert!(big.ready(t0, w));
    }

    #[test]
    fn the_slot_is_confirmed_only_past_batches_whose_delayed_purges_were_accepted() {
        let mut c = Confirmations::default();
        c.delivered(10, 0);
        assert_eq!(c.confirmed(), 10);
        c.delivered(20, 2);
        c.delivered(30, 0);
        assert_eq!(c.confirmed(), 10);
        c.delayed_done(20);
        assert_eq!(c.confirmed(), 10);
        c.delayed_done(20);
        assert_eq!(c.confirmed(), 30);
    }
}
