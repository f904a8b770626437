//! Deploy and diagnosis tools run from a workstation or a CI job, not on a
//! node: `fresco audit` (caching headers against the practices), `fresco
//! diagnose` (which layer serves a stale copy, and why) and `fresco deploy
//! warm` (fill every node's cache from a list of URLs).

pub mod audit;
pub mod diagnose;
mod fetch;
mod html;
mod rules;
pub mod warm;
