//! Deploy and diagnosis tools run from a workstation or a CI job, not on a
//! node: `fresco audit` (caching headers against the practices) and
//! `fresco diagnose` (which layer serves a stale copy, and why).

pub mod audit;
pub mod diagnose;
mod fetch;
mod html;
mod rules;
