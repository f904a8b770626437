//! Membership: which nodes exist, which are live, how far each has applied
//! the log. One node alone with the embedded log; every node that
//! heartbeats on the bus in a cluster.

use std::future::Future;
use std::pin::Pin;

use serde::{Deserialize, Serialize};

/// One node as the cluster sees it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeInfo {
    pub node: String,
    pub applied_version: u64,
    /// Milliseconds since the node's last heartbeat.
    pub heartbeat_age_ms: u64,
    /// False once the node stopped heartbeating: listed, not counted.
    pub live: bool,
    /// Requests answered from the store, and all requests.
    pub hits: u64,
    pub requests: u64,
}

pub type Nodes<'a> = Pin<Box<dyn Future<Output = ClusterView> + Send + 'a>>;

/// The nodes and the log head, as of one query.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ClusterView {
    pub nodes: Vec<NodeInfo>,
    /// The newest version in the log, when known.
    pub head: Option<u64>,
}

pub trait Membership: Send + Sync + 'static {
    fn view(&self) -> Nodes<'_>;
}
