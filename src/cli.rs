//! The `fresco` command line: one subcommand per file would be overkill
//! while each is a few lines, so they live here and call into the library.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::{Config, RawConfig};

#[derive(Parser, Debug)]
#[command(name = "fresco", version, about = "An HTTP edge cache whose invalidation is correct by construction")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
// Parsed once at start-up; boxing the flattened flags would only obscure clap's derive.
#[allow(clippy::large_enum_variant)]
pub enum Command {
    /// Run an edge node: the caching proxy and its admin listener.
    Serve {
        /// TOML configuration file; flags override its values.
        #[arg(long)]
        config: Option<PathBuf>,
        #[command(flatten)]
        flags: RawConfig,
    },
    /// Run a demo origin app behind an edge node and print what to try.
    Demo {
        /// Edge (cache) listener.
        #[arg(long, default_value = "127.0.0.1:8081")]
        listen: SocketAddr,
        /// Admin listener.
        #[arg(long, default_value = "127.0.0.1:9091")]
        admin: SocketAddr,
        /// Demo origin listener.
        #[arg(long, default_value = "127.0.0.1:8080")]
        origin: SocketAddr,
        /// A NATS server with JetStream: runs a second edge node on the same invalidation log
        #[arg(long)]
        bus: Option<String>,
    },
    /// Invalidate cached objects through a node's admin API.
    Purge(crate::purge::PurgeArgs),
    /// Show the cluster: each node's applied version, lag, heartbeat, hit ratio.
    Status(crate::purge::StatusArgs),
    /// Synthetic freshness checks: compare what each node serves with the origin.
    Watch(crate::watch::WatchArgs),
    /// Check a site's caching headers against the practices and say what to fix.
    Audit(crate::tools::audit::AuditArgs),
    /// Find which layer (origin instance, edge node, any HTTP cache) serves a stale copy, and why.
    Diagnose(crate::tools::diagnose::DiagnoseArgs),
    /// Deploy steps; for now `warm`: fetch a list of URLs through every node.
    Deploy(crate::tools::warm::DeployArgs),
    /// Generate an API token: prints a random secret for the client and the
    /// `[[token]]` table (with only its SHA-256) for the node's config.
    Token {
        /// The token's name in the printed table (and in the audit log).
        #[arg(long, default_value = "api")]
        name: String,
    },
    /// Follow PostgreSQL by logical replication and turn committed row
    /// changes into tag invalidations (design §4).
    Cdc(crate::cdc::CdcArgs),
    /// Run only the demo origin app (used by the benchmarks).
    Origin {
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
    },
}

/// Why a command failed; it decides the exit status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CliError {
    /// Bad usage or configuration, or a node that cannot start: exit
    /// status 2, as clap's own usage errors.
    Usage(String),
    /// `purge` / `status`: the node could not be reached or refused, or the
    /// invalidation did not converge in time. Exit status 1.
    Failed(String),
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => 2,
            CliError::Failed(_) => 1,
        }
    }
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CliError::Usage(m) | CliError::Failed(m) => f.write_str(m),
        }
    }
}

/// Resolves `serve`'s configuration: file, then flags on top.
pub fn serve_config(config: Option<PathBuf>, flags: RawConfig) -> Result<Config, String> {
    let file = match config {
        Some(path) => RawConfig::from_file(&path).map_err(|e| e.to_string())?,
        None => RawConfig::default(),
    };
    Config::from_raw(flags.or(file)).map_err(|e| e.to_string())
}

/// The log level and format a command asks for: `serve`'s `log_level` and
/// `log_format` (flags over the file); other commands log as text at
/// `info`. A bad value is reported when the configuration is validated.
pub fn log_settings(command: &Command) -> (Option<String>, crate::logging::LogFormat) {
    let Command::Serve { config, flags } = command else {
        return (None, crate::logging::LogFormat::Text);
    };
    let file = config.as_ref().and_then(|path| RawConfig::from_file(path).ok()).unwrap_or_default();
    let level = flags.log_level.clone().or(file.log_level);
    let format = flags.log_format.clone().or(file.log_format);
    (level, format.as_deref().and_then(crate::logging::LogFormat::parse).unwrap_or_default())
}

pub async fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Serve { config, flags } => serve(config, flags).await.map_err(CliError::Usage),
        Command::Demo { listen, admin, origin, bus } => {
            crate::demo::run(listen, admin, origin, bus).await.map_err(CliError::Usage)
        }
        Command::Purge(args) => crate::purge::run(args).await,
        Command::Status(args) => crate::purge::status(args).await,
        Command::Watch(args) => crate::watch::run(args).await,
        Command::Audit(args) => crate::tools::audit::run(args).await,
        Command::Diagnose(args) => crate::tools::diagnose::run(args).await,
        Command::Deploy(args) => crate::tools::warm::run(args).await,
        Command::Origin { listen } => origin(listen).await.map_err(CliError::Usage),
        Command::Cdc(args) => crate::cdc::run(args).await,
        Command::Token { name } => token(&name).map_err(CliError::Failed),
    }
}

/// `fresco token`: a random secret for the client, and the config table
/// holding only its hash for the node.
fn token(name: &str) -> Result<(), String> {
    let secret = crate::access::random_secret()?;
    let hash = crate::access::hex(&crate::access::digest(&secret));
    println!("secret: {secret}");
    println!("# give the secret to the client (Authorization: Bearer SECRET); the node keeps only its hash:");
    println!(
        "[[token]]\nname = {name:?}\nsecret_sha256 = \"{hash}\"\nscopes = [\"all\"]   # or \"tag:PREFIX\", \"host:NAME\""
    );
    Ok(())
}

async fn serve(config: Option<PathBuf>, flags: RawConfig) -> Result<(), String> {
    let cfg = serve_config(config, flags)?;
    crate::server::run(cfg, crate::server::shutdown_signal()).await
}

async fn origin(listen: SocketAddr) -> Result<(), String> {
    let listener =
        tokio::net::TcpListener::bind(listen).await.map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    println!("fresco origin ready on {}", listener.local_addr().map_err(|e| e.to_string())?);
    crate::demo::serve_origin(listener).await;
    Ok(())
}
