//! The invalidation model (design §3): versioned selectors, never a scan.
//!
//! Applying an invalidation records "selector S invalidated at version v"
//! and nothing else. Every stored object carries the [`Stamp`] the node had
//! applied when the fetch that produced it started; on lookup the object is
//! checked against the selectors that could match it (its URL, each path
//! prefix of it, its tags, everything). It is invalid when any of them
//! carries a greater version. So a purge that lands while a fetch is in
//! flight is never undone by that fetch, and applying an invalidation twice
//! or out of order changes nothing: the highest version wins.

pub mod audit;
pub mod cluster;
pub mod log;
mod log_file;
pub mod nats;
pub mod selectors;
pub mod service;
pub mod sweeper;

pub use audit::Audit;
pub use log::{EmbeddedLog, Entry, LogError, NewInvalidation};
pub use selectors::{Invalidations, Mode, Selector, Stamp, Validity, Verified};
