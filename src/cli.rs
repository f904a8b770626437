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
    },
    /// Invalidate cached objects through a node's admin API.
    Purge(crate::purge::PurgeArgs),
    /// Show the cluster: each node's applied version, lag, heartbeat, hit ratio.
    Status(crate::purge::StatusArgs),
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

pub async fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Serve { config, flags } => serve(config, flags).await.map_err(CliError::Usage),
        Command::Demo { listen, admin, origin } => demo(listen, admin, origin).await.map_err(CliError::Usage),
        Command::Purge(args) => crate::purge::run(args).await,
        Command::Status(args) => crate::purge::status(args).await,
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

async fn demo(listen: SocketAddr, admin: SocketAddr, origin: SocketAddr) -> Result<(), String> {
    let origin_listener = tokio::net::TcpListener::bind(origin)
        .await
        .map_err(|e| format!("cannot listen on {origin} for the demo origin: {e}; pick another with --origin"))?;
    let origin_addr = origin_listener.local_addr().map_err(|e| e.to_string())?;
    tokio::spawn(crate::demo::serve_origin(origin_listener));
    let raw = RawConfig {
        listen: Some(listen.to_string()),
        admin: Some(admin.to_string()),
        origin: Some(format!("http://{origin_addr}")),
        ..Default::default()
    };
    let cfg = Config::from_raw(raw).map_err(|e| e.to_string())?;
    crate::demo::print_guide(listen, admin, origin_addr);
    // Stopped (its cluster removed) when the demo ends.
    let _database = crate::cdc::demo::start(listen, admin, cfg.data_dir.clone()).await;
    crate::server::run(cfg, crate::server::shutdown_signal()).await
}

async fn origin(listen: SocketAddr) -> Result<(), String> {
    let listener =
        tokio::net::TcpListener::bind(listen).await.map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    println!("fresco origin ready on {}", listener.local_addr().map_err(|e| e.to_string())?);
    crate::demo::serve_origin(listener).await;
    Ok(())
}
