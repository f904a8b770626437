//! The audit trail: who invalidated what, why, when it was accepted and when
//! each node applied it. Recent entries are kept in memory for the API;
//! the log file holds the newest entries (older ones are folded into the
//! snapshot, which keeps their selectors but not who, why or when).

use std::collections::BTreeMap;
use std::sync::RwLock;

use serde::Serialize;

use super::log::Entry;

/// Entries kept in memory for queries.
const RETAIN: usize = 100_000;

#[derive(Debug, Clone, Serialize)]
pub struct Applied {
    pub node: String,
    pub applied_ms: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct AuditRecord {
    #[serde(flatten)]
    pub entry: Entry,
    pub applied: Vec<Applied>,
}

#[derive(Default)]
pub struct Audit {
    records: RwLock<BTreeMap<u64, AuditRecord>>,
}

impl Audit {
    pub fn record(&self, entry: Entry) {
        let mut map = self.records.write().unwrap_or_else(|e| e.into_inner());
        map.entry(entry.version).or_insert_with(|| AuditRecord { entry, applied: Vec::new() });
        while map.len() > RETAIN {
            map.pop_first();
        }
    }

    /// Notes that `node` applied `version` (once per node).
    pub fn applied(&self, version: u64, node: &str, at_ms: u64) {
        let mut map = self.records.write().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = map.get_mut(&version)
            && !r.applied.iter().any(|a| a.node == node)
        {
            r.applied.push(Applied { node: node.to_string(), applied_ms: at_ms });
        }
    }

    /// Notes that `node` applied every version in `from..=to`.
    pub fn applied_range(&self, from: u64, to: u64, node: &str, at_ms: u64) {
        let mut map = self.records.write().unwrap_or_else(|e| e.into_inner());
        for (_, r) in map.range_mut(from..=to) {
            if !r.applied.iter().any(|a| a.node == node) {
                r.applied.push(Applied { node: node.to_string(), applied_ms: at_ms });
            }
        }
    }

    pub fn get(&self, version: u64) -> Option<AuditRecord> {
        self.records.read().unwrap_or_else(|e| e.into_inner()).get(&version).cloned()
    }

    /// Newest first, strictly older than `before` when given.
    pub fn page(&self, before: Option<u64>, limit: usize) -> Vec<AuditRecord> {
        let map = self.records.read().unwrap_or_else(|e| e.into_inner());
        let upper = before.unwrap_or(u64::MAX);
        map.range(..upper).rev().take(limit).map(|(_, r)| r.clone()).collect()
    }
}
