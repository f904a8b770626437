//! The audit trail: who invalidated what, why, when it was accepted and when
//! each node applied it. Recent entries are kept in memory for the API;
//! the log file holds the newest entries (older ones are folded into the
//! snapshot, which keeps their selectors but not who, why or when).

use std::collections::BTreeMap;
use std::sync::RwLock;

use serde::Serialize;
use tokio::sync::Notify;

use super::log::Entry;

/// Entries kept in memory for queries.
const RETAIN: usize = 100_000;

#[derive(Debug, Clone, Serialize)]
pub struct Applied {
    pub node: String,
    pub applied_ms: u64,
}

/// What another cache layer (`[[layer]]`) did with an invalidation.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct LayerOutcome {
    pub layer: String,
    /// Delivered (true), or the last attempt failed and is being retried.
    pub ok: bool,
    pub detail: String,
    pub at_ms: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct AuditRecord {
    #[serde(flatten)]
    pub entry: Entry,
    pub applied: Vec<Applied>,
    /// One outcome per layer this node forwards the invalidation to.
    pub layers: Vec<LayerOutcome>,
}

#[derive(Default)]
struct Records {
    map: BTreeMap<u64, AuditRecord>,
    /// Every entry applied here with a version from this one on is in
    /// `map` (or was dropped for RETAIN, which raises it); older ones may
    /// be missing (not replayed at start-up, skipped in a retention gap).
    complete_from: u64,
}

#[derive(Default)]
pub struct Audit {
    records: RwLock<Records>,
    /// Woken when a record is added, for the layer forwarders.
    added: Notify,
}

impl Audit {
    pub fn record(&self, entry: Entry) {
        let mut r = self.records.write().unwrap_or_else(|e| e.into_inner());
        r.map.entry(entry.version).or_insert_with(|| AuditRecord { entry, applied: Vec::new(), layers: Vec::new() });
        while r.map.len() > RETAIN {
            if let Some((v, _)) = r.map.pop_first() {
                r.complete_from = r.complete_from.max(v + 1);
            }
        }
        drop(r);
        self.added.notify_waiters();
    }

    /// Entries before `version` may be missing from here on (the log was
    /// replayed from there, or the node skipped entries before it).
    pub fn complete_from(&self, version: u64) {
        let mut r = self.records.write().unwrap_or_else(|e| e.into_inner());
        r.complete_from = r.complete_from.max(version);
    }

    /// Up to `limit` entries after `version`, oldest first, and the
    /// version from which on every applied entry is here (entries after
    /// `version` and before it may be missing).
    pub fn after(&self, version: u64, limit: usize) -> (Vec<Entry>, u64) {
        let r = self.records.read().unwrap_or_else(|e| e.into_inner());
        let entries: Vec<Entry> =
            r.map.range(version.saturating_add(1)..).take(limit).map(|(_, rec)| rec.entry.clone()).collect();
        (entries, r.complete_from)
    }

    /// How many entries there are after `version`.
    pub fn count_after(&self, version: u64) -> usize {
        self.records.read().unwrap_or_else(|e| e.into_inner()).map.range(version.saturating_add(1)..).count()
    }

    /// The newest version recorded (0 when none).
    pub fn newest(&self) -> u64 {
        let r = self.records.read().unwrap_or_else(|e| e.into_inner());
        r.map.last_key_value().map_or(r.complete_from.saturating_sub(1), |(v, _)| *v)
    }

    /// Resolves after the next record is added; create it before looking.
    pub fn added(&self) -> tokio::sync::futures::Notified<'_> {
        self.added.notified()
    }

    /// Records what `outcome.layer` did with `version` (the latest word).
    pub fn layer_outcome(&self, version: u64, outcome: LayerOutcome) {
        let mut r = self.records.write().unwrap_or_else(|e| e.into_inner());
        if let Some(rec) = r.map.get_mut(&version) {
            rec.layers.retain(|o| o.layer != outcome.layer);
            rec.layers.push(outcome);
        }
    }

    /// Notes that `node` applied `version` (once per node).
    pub fn applied(&self, version: u64, node: &str, at_ms: u64) {
        let mut records = self.records.write().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = records.map.get_mut(&version)
            && !r.applied.iter().any(|a| a.node == node)
        {
            r.applied.push(Applied { node: node.to_string(), applied_ms: at_ms });
        }
    }

    /// Notes that `node` applied every version in `from..=to`.
    pub fn applied_range(&self, from: u64, to: u64, node: &str, at_ms: u64) {
        let mut records = self.records.write().unwrap_or_else(|e| e.into_inner());
        for (_, r) in records.map.range_mut(from..=to) {
            if !r.applied.iter().any(|a| a.node == node) {
                r.applied.push(Applied { node: node.to_string(), applied_ms: at_ms });
            }
        }
    }

    pub fn get(&self, version: u64) -> Option<AuditRecord> {
        self.records.read().unwrap_or_else(|e| e.into_inner()).map.get(&version).cloned()
    }

    /// Newest first, strictly older than `before` when given.
    pub fn page(&self, before: Option<u64>, limit: usize) -> Vec<AuditRecord> {
        let records = self.records.read().unwrap_or_else(|e| e.into_inner());
        let upper = before.unwrap_or(u64::MAX);
        records.map.range(..upper).rev().take(limit).map(|(_, r)| r.clone()).collect()
    }
}
