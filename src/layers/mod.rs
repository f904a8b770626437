//! Other cache layers (design §3, "Other layers"): every invalidation this
//! node applies is carried, in log order and at least once, to each
//! `[[layer]]` whose scopes cover it — a Varnish in front of or behind the
//! node, the Redis an application caches in — and what each layer did is
//! part of the invalidation's status.
//!
//! One forwarder task per layer follows the audit (every entry the node
//! applies is recorded there, from either log) from a cursor persisted in
//! `DATA_DIR/layers/NAME`. A failed delivery is retried with backoff and
//! holds back the later entries (order matters: a later purge must not be
//! overtaken by an earlier one on its way). A layer that is down does not
//! block the node or the other layers; its backlog is counted, and when it
//! passes `backlog` entries, or entries the layer needed are no longer in
//! the audit (folded into the log's snapshot, skipped by the node in a
//! retention gap, applied before a restart), the layer is owed a gap: the
//! next delivery first removes everything the layer can remove (a Varnish
//! ban of everything), or, where it cannot (Redis), the gap is logged and
//! counted in `fresco_layer_gaps_total`.

mod redis;
mod varnish;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde::Serialize;

use crate::access::Scope;
use crate::data_dir;
use crate::invalidation::audit::{Audit, LayerOutcome};
use crate::invalidation::log::now_ms;
use crate::invalidation::{Entry, Mode, Selector};

/// How many entries one pass takes from the audit.
const BATCH: usize = 256;
/// Backoff between attempts at a layer that failed.
const RETRY_FIRST: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(30);
/// How often the cursor is persisted while entries flow.
const PERSIST_EVERY: Duration = Duration::from_millis(200);

/// What kind of cache a layer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Varnish,
    Redis,
}

/// One configured `[[layer]]`.
#[derive(Debug, Clone)]
pub struct LayerConfig {
    pub name: String,
    pub kind: Kind,
    pub url: String,
    pub scopes: Vec<Scope>,
    /// Entries a layer may fall behind before it is owed a gap instead.
    pub backlog: usize,
    /// Redis only: the prefix of the sets the application keeps.
    pub key_prefix: String,
}

/// Why a layer could not take an invalidation.
pub(crate) type Delivery<'a> = BoxFuture<'a, Result<String, String>>;

/// A cache layer that can be told about invalidations.
pub(crate) trait Layer: Send + Sync {
    /// Removes what `selectors` select (all in scope); `Ok` says what was done.
    fn invalidate<'a>(&'a self, selectors: &'a [Selector], mode: Mode) -> Delivery<'a>;
}

/// What `/api/v1/nodes` and the status of an invalidation show of a layer.
#[derive(Debug, Clone, Serialize)]
pub struct LayerInfo {
    pub name: String,
    pub kind: Kind,
    pub scopes: Vec<String>,
    /// The newest version delivered (or not in scope).
    pub delivered: u64,
    /// Entries applied here and not yet delivered.
    pub backlog: usize,
    /// The last attempt succeeded (true before any attempt).
    pub ok: bool,
    pub last_error: Option<String>,
    /// Gaps owed or taken: entries the layer could not be given one by one.
    pub gaps: u64,
    #[serde(skip)]
    pub covers: Vec<Scope>,
}

impl LayerInfo {
    /// Must this layer confirm an invalidation of `selectors`?
    pub fn concerned(&self, selectors: &[Selector]) -> bool {
        selectors.iter().any(|s| self.covers.iter().any(|scope| scope.covers(s)))
    }
}

/// The layers of this node, as their forwarders last reported.
pub struct Layers {
    infos: Mutex<Vec<LayerInfo>>,
    audit: Arc<Audit>,
}

impl Layers {
    /// Each layer with its backlog as of now.
    pub fn infos(&self) -> Vec<LayerInfo> {
        let mut infos = self.lock().clone();
        for info in &mut infos {
            info.backlog = self.audit.count_after(info.delivered);
        }
        infos
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<LayerInfo>> {
        self.infos.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn update(&self, name: &str, f: impl FnOnce(&mut LayerInfo)) {
        if let Some(info) = self.lock().iter_mut().find(|i| i.name == name) {
            f(info);
        }
    }
}

/// Starts one forwarder per layer, supervised (they stop at shutdown).
pub fn start(
    configs: &[LayerConfig],
    data_dir: &std::path::Path,
    audit: Arc<Audit>,
    supervisor: &crate::supervisor::Supervisor,
) -> Result<Arc<Layers>, String> {
    let layers = Arc::new(Layers { infos: Mutex::default(), audit: audit.clone() });
    let dir = data_dir.join("layers");
    if !configs.is_empty() {
        std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    for cfg in configs {
        let layer: Arc<dyn Layer> = match cfg.kind {
            Kind::Varnish => {
                Arc::new(varnish::Varnish::new(&cfg.url).map_err(|e| format!("layer `{}`: {e}", cfg.name))?)
            }
            Kind::Redis => Arc::new(
                redis::Redis::new(&cfg.url, &cfg.key_prefix).map_err(|e| format!("layer `{}`: {e}", cfg.name))?,
            ),
        };
        let path = dir.join(&cfg.name);
        let cursor = match std::fs::read_to_string(&path) {
            Ok(text) => text.trim().parse::<u64>().map_err(|_| {
                format!("{} is damaged ({text:?}); remove it to start the layer afresh", path.display())
            })?,
            // A new layer starts with what is applied from now on.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => audit.newest(),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        layers.lock().push(LayerInfo {
            name: cfg.name.clone(),
            kind: cfg.kind,
            scopes: cfg.scopes.iter().map(Scope::to_string).collect(),
            delivered: cursor,
            backlog: 0,
            ok: true,
            last_error: None,
            gaps: 0,
            covers: cfg.scopes.clone(),
        });
        let forwarder = Forwarder {
            cfg: cfg.clone(),
            layer,
            audit: audit.clone(),
            layers: layers.clone(),
            path,
            cursor,
            persisted: cursor,
            gap_handled: 0,
            owed_gap: false,
        };
        supervisor.spawn("layer-forwarder", crate::supervisor::Role::Auxiliary, forwarder.run());
    }
    Ok(layers)
}

struct Forwarder {
    cfg: LayerConfig,
    layer: Arc<dyn Layer>,
    audit: Arc<Audit>,
    layers: Arc<Layers>,
    /// Where the cursor is persisted.
    path: PathBuf,
    /// The newest version delivered or passed over (out of scope).
    cursor: u64,
    persisted: u64,
    /// The audit's `complete_from` a gap was last taken for.
    gap_handled: u64,
    /// A gap to deliver before the next entry.
    owed_gap: bool,
}

impl Forwarder {
    async fn run(mut self) {
        // Exported from the start, so a dashboard sees zero, not nothing.
        let name = self.cfg.name.clone();
        metrics::counter!("fresco_layer_gaps_total", "layer" => name.clone()).increment(0);
        for outcome in ["ok", "failed"] {
            metrics::counter!("fresco_layer_deliveries_total", "layer" => name.clone(), "outcome" => outcome)
                .increment(0);
        }
        metrics::gauge!("fresco_layer_backlog", "layer" => name).set(0.0);
        let mut last_persist = tokio::time::Instant::now();
        let audit = self.audit.clone();
        loop {
            // Made before looking, so a record added meanwhile wakes it.
            let added = audit.added();
            tokio::pin!(added);
            added.as_mut().enable();
            let (entries, complete_from) = self.audit.after(self.cursor, BATCH);
            if self.cursor.saturating_add(1) < complete_from && complete_from > self.gap_handled {
                tracing::warn!(
                    layer = %self.cfg.name,
                    delivered = self.cursor,
                    "entries this layer needed are no longer known here (compacted, skipped, or applied before a restart): it is owed a gap"
                );
                self.gap_handled = complete_from;
                self.owed_gap = true;
            }
            let backlog = self.audit.count_after(self.cursor);
            if backlog > self.cfg.backlog {
                tracing::warn!(layer = %self.cfg.name, backlog, "the layer is too far behind: it is owed a gap instead");
                self.cursor = self.audit.newest();
                self.owed_gap = true;
                continue;
            }
            metrics::gauge!("fresco_layer_backlog", "layer" => self.cfg.name.clone()).set(backlog as f64);
            if self.owed_gap {
                self.deliver_gap().await;
            }
            if entries.is_empty() {
                self.persist().await;
                added.await;
                continue;
            }
            for entry in entries {
                self.deliver(&entry).await;
                self.cursor = entry.version;
                self.layers.update(&self.cfg.name, |i| i.delivered = entry.version);
                if last_persist.elapsed() >= PERSIST_EVERY {
                    self.persist().await;
                    last_persist = tokio::time::Instant::now();
                }
            }
        }
    }

    /// Delivers what of `entry` is in scope, retrying until it is taken.
    async fn deliver(&mut self, entry: &Entry) {
        let selectors: Vec<Selector> = entry
            .invalidation
            .selectors
            .iter()
            .filter(|s| self.cfg.scopes.iter().any(|scope| scope.covers(s)))
            .cloned()
            .collect();
        if selectors.is_empty() {
            return;
        }
        let detail = self.until_taken(&selectors, entry.invalidation.mode, Some(entry.version)).await;
        tracing::info!(layer = %self.cfg.name, version = entry.version, %detail, "invalidation forwarded");
    }

    /// Removes everything the layer can remove, for a gap.
    async fn deliver_gap(&mut self) {
        metrics::counter!("fresco_layer_gaps_total", "layer" => self.cfg.name.clone()).increment(1);
        self.layers.update(&self.cfg.name, |i| i.gaps += 1);
        let detail = self.until_taken(&[Selector::All], Mode::Hard, None).await;
        tracing::warn!(layer = %self.cfg.name, %detail, "gap delivered");
        self.owed_gap = false;
        // Everything up to the cursor is covered now, also the entries
        // passed over when the layer fell too far behind.
        let cursor = self.cursor;
        self.layers.update(&self.cfg.name, |i| i.delivered = i.delivered.max(cursor));
    }

    /// Tries until the layer takes it, with backoff; reports every outcome.
    async fn until_taken(&self, selectors: &[Selector], mode: Mode, version: Option<u64>) -> String {
        let mut wait = RETRY_FIRST;
        let mut failures = 0u32;
        loop {
            let outcome = self.layer.invalidate(selectors, mode).await;
            let ok = outcome.is_ok();
            let detail = match &outcome {
                Ok(d) | Err(d) => d.clone(),
            };
            let label = if ok { "ok" } else { "failed" };
            metrics::counter!("fresco_layer_deliveries_total", "layer" => self.cfg.name.clone(), "outcome" => label)
                .increment(1);
            if let Some(v) = version {
                let record = LayerOutcome { layer: self.cfg.name.clone(), ok, detail: detail.clone(), at_ms: now_ms() };
                self.audit.layer_outcome(v, record);
            }
            self.layers.update(&self.cfg.name, |i| {
                i.ok = ok;
                i.last_error = (!ok).then(|| detail.clone());
            });
            if ok {
                return detail;
            }
            // While the layer is down the backlog grows: keep its gauge
            // current (a pass sets it when entries flow).
            let backlog = self.audit.count_after(self.cursor);
            metrics::gauge!("fresco_layer_backlog", "layer" => self.cfg.name.clone()).set(backlog as f64);
            // The first failure and then one line a minute or so: a layer
            // down for an hour must not flood the log.
            if failures.is_multiple_of(64) {
                tracing::warn!(layer = %self.cfg.name, error = %detail, "the layer did not take an invalidation; retrying");
            }
            failures += 1;
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(RETRY_MAX);
        }
    }

    async fn persist(&mut self) {
        if self.cursor == self.persisted {
            return;
        }
        let (path, text) = (self.path.clone(), self.cursor.to_string());
        match tokio::task::spawn_blocking(move || data_dir::replace(&path, text.as_bytes()).map(drop)).await {
            Ok(Ok(())) => self.persisted = self.cursor,
            Ok(Err(e)) => tracing::warn!(layer = %self.cfg.name, error = %e, "cannot persist the layer's position"),
            Err(e) => tracing::warn!(layer = %self.cfg.name, error = %e, "cannot persist the layer's position"),
        }
    }
}
