//! A running node: binds the data and admin listeners, wires the store,
//! the invalidation state and the proxy together, and shuts down gracefully
//! on SIGINT / SIGTERM.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::access::{Access, Scope, Token, digest, random_secret, weak_secret};
use crate::admin::{self, AdminState};
use crate::config::Config;
use crate::invalidation::cluster::Membership;
use crate::invalidation::nats::{Alone, BusConfig, NatsBus, NodeCounters};
use crate::invalidation::service::{KeyedLog, Served, Service};
use crate::invalidation::{Audit, EmbeddedLog, Invalidations, sweeper};
use crate::key::KeyPolicy;
use crate::proxy::upstream::Upstream;
use crate::proxy::{Proxy, ProxySettings};
use crate::store::MemoryStore;
use crate::supervisor::{Role, Supervisor};
use crate::{connections, metrics, tls};

/// How long a node joining a cluster waits to apply the log before serving.
const CATCH_UP: Duration = Duration::from_secs(10);

/// How long in-flight requests get to finish after a shutdown signal.
const DRAIN: Duration = Duration::from_secs(10);

/// A node's parts: the proxy, the supervisor of its background tasks, and
/// the cluster log when there is one.
pub struct Node {
    pub proxy: Arc<Proxy>,
    pub supervisor: Arc<Supervisor>,
    pub bus: Option<Arc<NatsBus>>,
}

/// Builds the proxy a configuration describes, with its invalidation log
/// opened and replayed (embedded) or joined and caught up with (bus); its
/// background tasks stop on `shutdown`.
pub async fn build_node(cfg: &Config, shutdown: watch::Receiver<bool>) -> Result<Node, String> {
    let mut settings = ProxySettings::new(cfg.node_name.clone());
    settings.policy.store_set_cookie = cfg.store_set_cookie;
    settings.keys = KeyPolicy {
        sort_query: cfg.sort_query,
        ignore_query_params: cfg.ignore_query_params.clone(),
        headers: cfg.key_headers.clone(),
        cookies: cfg.key_cookies.clone(),
    };
    settings.total_timeout = cfg.total_timeout;
    settings.expose_tag_headers = cfg.expose_tag_headers;
    settings.strip_cdn_cache_control = cfg.strip_cdn_cache_control;
    settings.lock_timeout = cfg.lock_timeout;
    settings.uncacheable_ttl = cfg.uncacheable_ttl;
    settings.classes = cfg.classes.clone();
    settings.freshness = Arc::new(crate::freshness::Freshness::new(&cfg.classes));
    if let Some(target) = &cfg.access_log {
        settings.access_log = Some(Arc::new(crate::access_log::AccessLog::open(target)?));
    }
    let store = Arc::new(MemoryStore::new(cfg.memory, cfg.max_object_size));
    if store.max_object_size() < cfg.max_object_size {
        tracing::warn!(
            max_object_size = cfg.max_object_size,
            memory = cfg.memory,
            clamped_to = store.max_object_size(),
            "max_object_size is larger than the memory budget can hold in one entry; larger responses stream through uncached"
        );
    }
    settings.max_object_size = store.max_object_size() as usize;
    // A slice is an object: it must fit what the store keeps.
    settings.slice_size = (cfg.slice_size as usize).min(settings.max_object_size);
    let upstream = Upstream::new(cfg.origin.clone(), cfg.parents.clone(), &cfg.upstream);
    let invalidations = Arc::new(Invalidations::default());
    let audit = Arc::new(Audit::default());
    let counters = Arc::new(NodeCounters::default());
    let supervisor = Supervisor::new(shutdown, invalidations.clone());
    let mut bus = None;
    let (log, membership): (Arc<dyn KeyedLog>, Arc<dyn Membership>) = match &cfg.bus {
        None => {
            let log = EmbeddedLog::open(&cfg.data_dir, &cfg.node_id, invalidations.clone(), audit.clone())?;
            let alone =
                Alone { node: cfg.node_id.clone(), invalidations: invalidations.clone(), counters: counters.clone() };
            (log, Arc::new(alone))
        }
        Some(url) => {
            let bus_cfg = BusConfig {
                url: url.clone(),
                node_id: cfg.node_id.clone(),
                replicas: cfg.bus_replicas,
                retention: cfg.bus_retention,
                heartbeat: Duration::from_millis(500),
                down_after: cfg.down_after,
                max_log_silence: cfg.max_log_silence,
                data_dir: cfg.data_dir.clone(),
            };
            let started =
                NatsBus::start(bus_cfg, invalidations.clone(), audit.clone(), counters.clone(), &supervisor, CATCH_UP)
                    .await?;
            bus = Some(started.clone());
            (started.clone(), started)
        }
    };
    let tokens = if cfg.tokens.is_empty() { vec![local_admin_token(&cfg.data_dir)?] } else { cfg.tokens.clone() };
    let layers = crate::layers::start(&cfg.layers, &cfg.data_dir, audit.clone(), &supervisor)?;
    let service = Arc::new(Service {
        log,
        audit,
        layers,
        invalidations: invalidations.clone(),
        access: Access::new(tokens, cfg.purge_allow.clone()),
        node: cfg.node_id.clone(),
        keys: settings.keys.clone(),
        served: Served {
            scheme: if cfg.tls.is_some() { "https" } else { "http" },
            hosts: cfg.hosts.clone(),
            origin: cfg.origin.authority().map_or_else(String::new, |a| a.as_str().to_ascii_lowercase()),
        },
        membership,
        recent: Default::default(),
        key_prefix: format!("{}-{}", cfg.node_id, crate::invalidation::log::now_ms()),
        key_counter: Default::default(),
    });
    let proxy = Arc::new(Proxy::new(settings, store, invalidations, upstream, service, counters));
    Ok(Node { proxy, supervisor, bus })
}

/// With no `[[token]]` configured, an `all`-scoped token for the local
/// operator is kept in `DATA_DIR/admin-token` (created once, mode 0600),
/// which `fresco purge` reads by default.
fn local_admin_token(dir: &Path) -> Result<Token, String> {
    let path = dir.join("admin-token");
    let secret = match std::fs::read_to_string(&path) {
        Ok(s) if weak_secret(s.trim()).is_none() => s.trim().to_string(),
        _ => {
            let secret = random_secret()?;
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            options
                .open(&path)
                .and_then(|mut f| std::io::Write::write_all(&mut f, secret.as_bytes()))
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            secret
        }
    };
    tracing::info!(path = %path.display(), "no [[token]] configured: the local admin token (scope all) is in this file");
    // The same limits as a configured token's defaults: a leaked local
    // token cannot flood the log either.
    Ok(Token {
        name: "local-admin".into(),
        digest: digest(&secret),
        scopes: vec![Scope::All],
        rate: 50.0,
        burst: 200.0,
    })
}

/// Runs a node until `shutdown` turns true. Prints one `ready` line with
/// the bound addresses once both listeners accept connections.
pub async fn run(cfg: Config, shutdown: watch::Receiver<bool>) -> Result<(), String> {
    run_then(cfg, shutdown, |_, _| {}).await
}

/// [`run`], calling `ready` with the data and admin addresses once both
/// listeners accept connections (the demo prints its guide then).
pub async fn run_then(
    cfg: Config,
    shutdown: watch::Receiver<bool>,
    ready: impl FnOnce(std::net::SocketAddr, std::net::SocketAddr),
) -> Result<(), String> {
    // First, so that what start-up records (replay, catch-up) is counted.
    let metrics_handle = metrics::install();
    let Node { proxy, supervisor, bus } = build_node(&cfg, shutdown.clone()).await?;
    let tls = match &cfg.tls {
        Some((cert, key)) => Some(tls::acceptor(cert, key)?),
        None => None,
    };
    let data =
        TcpListener::bind(cfg.listen).await.map_err(|e| format!("cannot listen on {} (`listen`): {e}", cfg.listen))?;
    let admin_listener =
        TcpListener::bind(cfg.admin).await.map_err(|e| format!("cannot listen on {} (`admin`): {e}", cfg.admin))?;
    let data_addr = data.local_addr().map_err(|e| e.to_string())?;
    let admin_addr = admin_listener.local_addr().map_err(|e| e.to_string())?;
    let state = AdminState {
        proxy: proxy.clone(),
        service: proxy.service.clone(),
        metrics: metrics_handle,
        health: supervisor.health.clone(),
        samples: Arc::new(crate::dashboard::Samples::default()),
    };
    supervisor.spawn_until_done(
        "dashboard-sampler",
        Role::Auxiliary,
        crate::dashboard::sample(proxy.counters.clone(), state.samples.clone(), shutdown.clone()),
    );
    supervisor.spawn_until_done(
        "sweeper",
        Role::Auxiliary,
        sweeper::run(proxy.store.clone(), proxy.invalidations.clone(), cfg.sweep_interval, shutdown.clone()),
    );
    supervisor.spawn_until_done("admin-server", Role::Auxiliary, admin::serve(admin_listener, state, shutdown.clone()));
    println!("fresco ready data={data_addr} admin={admin_addr} origin={}", cfg.origin);
    ready(data_addr, admin_addr);
    tracing::info!(%data_addr, %admin_addr, origin = %cfg.origin, "node started");

    connections::serve(data, proxy, tls, cfg.limits.clone(), shutdown).await;
    supervisor.join(DRAIN).await;
    if let Some(bus) = bus {
        bus.flush().await;
        bus.leave().await;
    }
    Ok(())
}

/// A watch channel that turns true on SIGINT or SIGTERM.
pub fn shutdown_signal() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! {
            _ = ctrl_c => {}
            _ = term => {}
        }
        let _ = tx.send(true);
    });
    rx
}
