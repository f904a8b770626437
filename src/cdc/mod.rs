//! `fresco cdc`: PostgreSQL commits become tag invalidations (design §4).
//!
//! The relay follows a logical replication slot with the `pgoutput` plugin
//! (a publication of the mapped tables), so it sees every committed change
//! whoever wrote it, and never a rolled-back one: pgoutput sends a
//! transaction only after its commit. Each row change is rendered into tags
//! by the mapping ([`mapping`]); the tags of whole transactions are merged
//! into batches ([`batch`]) and delivered ([`sink`]); the slot is confirmed
//! past a transaction only once every invalidation it caused was accepted
//! durably, so a relay killed at any point resumes from the slot and loses
//! nothing (a replay may deliver a batch twice, which changes nothing).
//!
//! Modules: [`postgres`] (URL, checks, setup), [`pgoutput`] (decoding row
//! changes), [`mapping`] (tables to tag templates), [`batch`] (merging and
//! confirmation), [`sink`] (the admin API or the bus), [`relay`] (the event loop),
//! [`metrics`] (the relay's own Prometheus listener), [`demo`] (the
//! database part of `fresco demo`).

pub(crate) mod batch;
pub mod demo;
pub(crate) mod mapping;
pub(crate) mod metrics;
pub(crate) mod pgoutput;
pub(crate) mod postgres;
pub(crate) mod relay;
pub(crate) mod sink;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::cli::CliError;

/// `fresco cdc` options.
#[derive(clap::Args, Debug)]
pub struct CdcArgs {
    /// The database to follow: postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE[?sslmode=require].
    /// The user needs the REPLICATION attribute (and to own the tables for
    /// the publication to be created).
    #[arg(long)]
    pub postgres: String,
    /// TOML file mapping tables to tag templates (see the README).
    #[arg(long)]
    pub mapping: PathBuf,
    /// A node's admin API to send invalidations to, e.g. http://127.0.0.1:9091.
    #[arg(long, conflicts_with = "bus")]
    pub admin: Option<String>,
    /// Or the cluster's NATS JetStream bus to append them to directly
    /// (nats://HOST:PORT, comma-separated for several).
    #[arg(long)]
    pub bus: Option<String>,
    /// Bearer token for the admin API (a token with scope `all` or the
    /// tag prefixes the mapping produces).
    #[arg(long)]
    pub token: Option<String>,
    /// Replication slot name.
    #[arg(long, default_value = "fresco")]
    pub slot: String,
    /// Publication name.
    #[arg(long, default_value = "fresco")]
    pub publication: String,
    /// How long the first committed transaction of a batch waits for
    /// others to merge with (also merged: whatever commits while the
    /// previous batch is being delivered).
    #[arg(long, default_value = "10ms")]
    pub merge_window: String,
    /// Serve Prometheus metrics on this address (`/metrics`).
    #[arg(long)]
    pub metrics: Option<SocketAddr>,
    /// Create the publication and the slot (idempotent), report what the
    /// server lacks, and exit.
    #[arg(long)]
    pub setup: bool,
}

pub async fn run(args: CdcArgs) -> Result<(), CliError> {
    let target = postgres::Target::parse(&args.postgres).map_err(CliError::Usage)?;
    let mapping = mapping::Mapping::load(&args.mapping).map_err(CliError::Usage)?;
    let window = crate::config::parse_duration(&args.merge_window)
        .filter(|d| *d <= Duration::from_secs(10))
        .ok_or_else(|| {
            CliError::Usage(format!("--merge-window {:?}: give a duration up to 10s such as 10ms", args.merge_window))
        })?;
    for name in [&args.slot, &args.publication] {
        if name.is_empty()
            || name.len() > 63
            || !name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            return Err(CliError::Usage(format!(
                "slot and publication names are 1 to 63 of a-z, 0-9 and _ (PostgreSQL's rule for slots); got {name:?}"
            )));
        }
    }
    if args.setup {
        return relay::setup(&target, &mapping, &args.slot, &args.publication).await;
    }
    let sink = match (args.admin.as_deref(), args.bus.as_deref()) {
        (Some(admin), _) => {
            sink::Sink::Admin(sink::AdminSink::new(admin, args.token.as_deref()).map_err(CliError::Usage)?)
        }
        (None, Some(bus)) => sink::Sink::Bus(sink::BusSink::connect(bus).await.map_err(CliError::Failed)?),
        (None, None) => {
            return Err(CliError::Usage(
                "give --admin http://HOST:PORT (a node's admin API) or --bus nats://HOST:PORT (the cluster's log) to send invalidations to".into(),
            ));
        }
    };
    let handle = metrics::install();
    let metrics_addr = match args.metrics {
        Some(addr) => Some(metrics::serve(addr, handle).await.map_err(CliError::Usage)?),
        None => None,
    };
    let options = relay::Options { slot: args.slot, publication: args.publication, window, metrics: metrics_addr };
    relay::run(target, mapping, sink, options).await
}
