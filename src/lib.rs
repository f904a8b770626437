//! Fresco: an HTTP edge cache whose invalidation is correct by construction.
//!
//! See ARCHITECTURE.md for how the modules fit together.

pub mod access;
pub mod access_log;
pub mod admin;
pub mod cdc;
pub mod classes;
pub mod cli;
pub mod config;
mod connections;
pub mod dashboard;
pub mod data_dir;
pub mod demo;
pub mod freshness;
pub mod invalidation;
pub mod key;
pub mod layers;
pub mod logging;
pub mod metrics;
pub mod policy;
pub mod proxy;
pub mod purge;
pub mod server;
pub mod store;
pub mod supervisor;
pub mod tls;
pub mod tools;
pub mod watch;
