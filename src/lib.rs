//! Fresco: an HTTP edge cache whose invalidation is correct by construction.
//!
//! See ARCHITECTURE.md for how the modules fit together.

pub mod policy;
pub mod config;
pub mod invalidation;
pub mod key;
pub mod store;
