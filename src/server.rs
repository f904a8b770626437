//! A running node: binds the data and admin listeners, wires the store,
//! the invalidation state and the proxy together, and shuts down gracefully
//! on SIGINT / SIGTERM.

use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::access::{Access, Scope, Token};
use crate::admin::{self, AdminState};
use crate::config::Config;
use crate::invalidation::cluster::Membership;
use crate::invalidation::nats::{Alone, BusConfig, NatsBus, NodeCounters};
use crate::invalidation::service::{KeyedLog, Service};
use crate::invalidation::{Audit, EmbeddedLog, Invalidations, sweeper};
use crate::key::KeyPolicy;
use crate::proxy::upstream::Upstream;
use crate::proxy::{Client, Proxy, ProxySettings};
use crate::store::MemoryStore;
use crate::supervisor::{Role, Supervisor};
use crate::{metrics, tls};

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
    settings.lock_timeout = cfg.lock_timeout;
    settings.uncacheable_ttl = cfg.uncacheable_ttl;
    settings.classes = cfg.classes.clone();
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
    let upstream = Upstream::new(cfg.origin.clone(), cfg.parents.clone(), cfg.connect_timeout, cfg.first_byte_timeout);
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
    let service = Arc::new(Service {
        log,
        audit,
        invalidations: invalidations.clone(),
        access: Access::new(tokens, cfg.purge_allow.clone()),
        node: cfg.node_id.clone(),
        keys: settings.keys.clone(),
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
        Ok(s) if s.trim().len() >= 16 => s.trim().to_string(),
        _ => {
            let mut bytes = [0u8; 24];
            std::fs::File::open("/dev/urandom")
                .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
                .map_err(|e| format!("cannot read random bytes for the admin token: {e}"))?;
            let secret: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
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
    Ok(Token { name: "local-admin".into(), secret, scopes: vec![Scope::All], rate: 1000.0, burst: 10_000.0 })
}

/// Runs a node until `shutdown` turns true. Prints one `ready` line with
/// the bound addresses once both listeners accept connections.
pub async fn run(cfg: Config, mut shutdown: watch::Receiver<bool>) -> Result<(), String> {
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
    };
    supervisor.spawn_until_done(
        "sweeper",
        Role::Auxiliary,
        sweeper::run(proxy.store.clone(), proxy.invalidations.clone(), cfg.sweep_interval, shutdown.clone()),
    );
    supervisor.spawn_until_done("admin-server", Role::Auxiliary, admin::serve(admin_listener, state, shutdown.clone()));
    println!("fresco ready data={data_addr} admin={admin_addr} origin={}", cfg.origin);
    tracing::info!(%data_addr, %admin_addr, origin = %cfg.origin, "node started");

    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .max_buf_size(cfg.max_header_size.max(8192));
    builder.http2().timer(TokioTimer::new()).max_header_list_size(cfg.max_header_size as u32);
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    let scheme = if tls.is_some() { "https" } else { "http" };
    loop {
        tokio::select! {
            accepted = data.accept() => {
                let (stream, addr) = match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        // Out of file descriptors and the like: back off, keep serving.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let client = Client { addr, scheme };
                let proxy = proxy.clone();
                let svc = service_fn(move |req| {
                    let proxy = proxy.clone();
                    async move { Ok::<_, Infallible>(proxy.handle(req, client).await) }
                });
                let builder = builder.clone();
                let watcher = graceful.watcher();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let result = match tls {
                        None => watcher.watch(builder.serve_connection(TokioIo::new(stream), svc).into_owned()).await,
                        Some(acceptor) => match acceptor.accept(stream).await {
                            Ok(s) => watcher.watch(builder.serve_connection(TokioIo::new(s), svc).into_owned()).await,
                            Err(e) => {
                                tracing::debug!(%addr, error = %e, "TLS handshake failed");
                                return;
                            }
                        },
                    };
                    if let Err(e) = result {
                        tracing::debug!(%addr, error = %e, "connection ended with an error");
                    }
                });
            }
            _ = shutdown.changed() => break,
        }
    }
    drop(data);
    tracing::info!("draining connections");
    if tokio::time::timeout(DRAIN, graceful.shutdown()).await.is_err() {
        tracing::warn!("connections still open after {DRAIN:?}; closing");
    }
    supervisor.join(DRAIN).await;
    if let Some(bus) = bus {
        bus.flush().await;
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
