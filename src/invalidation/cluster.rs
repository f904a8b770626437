//! Membership: which nodes exist, which are live, how far each has applied
//! the log, and which may still be answering from their stores. One node
//! alone with the embedded log; every node that heartbeats on the bus in a
//! cluster.

use std::future::Future;
use std::pin::Pin;

use serde::{Deserialize, Serialize};

/// One node as the cluster sees it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeInfo {
    pub node: String,
    /// The log (stream identity) its versions refer to.
    pub stream: String,
    pub applied_version: u64,
    /// It applied every version in `applied_from..=applied_version`; older
    /// ones it may have skipped (a retention gap, another stream).
    pub applied_from: u64,
    /// Milliseconds since the node's last heartbeat.
    pub heartbeat_age_ms: u64,
    /// False once the node stopped heartbeating: listed as down.
    pub live: bool,
    /// The node may be answering from its store: it trusts its store, or
    /// it fell silent so recently that it may not have noticed yet.
    pub may_serve: bool,
    /// Requests answered from the store, and all requests.
    pub hits: u64,
    pub requests: u64,
}

impl NodeInfo {
    /// Did this node apply `version` of `stream`? Only what it applied
    /// counts, never a version it skipped.
    pub fn applied(&self, stream: &str, version: u64) -> bool {
        self.stream == stream && (self.applied_from..=self.applied_version).contains(&version)
    }
}

pub type Nodes<'a> = Pin<Box<dyn Future<Output = ClusterView> + Send + 'a>>;

/// The nodes and the log head, as of one query.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ClusterView {
    /// The log this node follows: its identity and newest version, when known.
    pub stream: String,
    /// The versions of this log are `base` plus its sequence numbers (0
    /// for the embedded log).
    pub base: u64,
    pub head: Option<u64>,
    pub nodes: Vec<NodeInfo>,
    /// Other cache layers this node forwards invalidations to.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub layers: Vec<crate::layers::LayerInfo>,
}

/// One readiness check, named for `/readyz`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
}

pub trait Membership: Send + Sync + 'static {
    fn view(&self) -> Nodes<'_>;
    /// The log-side readiness checks of this node.
    fn readiness(&self) -> Vec<Check>;
    /// The version this node has applied in the log it follows, in the
    /// numbering the API's versions use (a stream sequence with a bus).
    fn position(&self) -> u64;
}
