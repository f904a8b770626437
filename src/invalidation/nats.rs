//! The cluster log on NATS JetStream (design §3, items 3 and 4).
//!
//! Every node appends to one stream; the stream sequence number of an
//! invalidation is its version. Every node consumes the stream in order
//! from the version it last applied (persisted in its data directory),
//! applies each entry, and reports: its applied version and counters in a
//! heartbeat on a subject every node listens to (each node measures
//! heartbeat ages on its own clock, so clock skew between nodes does not
//! matter), and each applied range on an acknowledgement subject so that
//! any node can show per-node applied times.
//!
//! While the bus is unreachable the node keeps serving, and `append`
//! refuses at once (503): an invalidation is in the replicated log or
//! refused, never accepted and lost. After a reconnect the node treats its
//! stored objects as misses until it has applied everything up to the head
//! it saw on reconnecting. A node whose position fell out of the stream's
//! retention soft-purges everything older than the gap and says so.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use super::audit::Audit;
use super::cluster::{ClusterView, Membership, NodeInfo, Nodes};
use super::log::{Accepting, Entry, InvalidationLog, LogError, NewInvalidation, now_ms};
use super::selectors::{Invalidations, Mode, Selector};

const STREAM: &str = "FRESCO_INVALIDATIONS";
const SUBJECT: &str = "fresco.invalidations";
const ACKS: &str = "fresco.applied";
const HEARTBEATS: &str = "fresco.heartbeat";
const QUEUE: usize = 10_000;
const BATCH: usize = 1_000;
/// How long to keep trying to set up the stream at start.
const SETUP: Duration = Duration::from_secs(30);
/// How often a node acknowledges what it applied: the acknowledgements
/// fan out to every node, so they are batched rather than sent per entry.
const REPORT_EVERY: Duration = Duration::from_millis(5);

#[derive(Debug, Clone)]
pub struct BusConfig {
    pub url: String,
    pub node_id: String,
    pub replicas: usize,
    pub retention: Duration,
    pub heartbeat: Duration,
    /// A node silent this long is down.
    pub down_after: Duration,
    pub data_dir: PathBuf,
}

/// Counters a node reports in its heartbeat.
#[derive(Default)]
pub struct NodeCounters {
    pub hits: AtomicU64,
    pub requests: AtomicU64,
}

/// What a node publishes about itself.
#[derive(Serialize, Deserialize)]
struct Heartbeat {
    node: String,
    applied_version: u64,
    heartbeat_ms: u64,
    hits: u64,
    requests: u64,
}

/// An applied range, published after each applied batch.
#[derive(Serialize, Deserialize)]
struct Applied {
    node: String,
    from: u64,
    to: u64,
    applied_ms: u64,
}

type Pending = (NewInvalidation, oneshot::Sender<Result<Entry, LogError>>);

pub struct NatsBus {
    client: async_nats::Client,
    js: jetstream::Context,
    /// The last heartbeat heard from each node, and when it arrived.
    members: std::sync::Mutex<std::collections::HashMap<String, (Heartbeat, std::time::Instant)>>,
    queue: mpsc::Sender<Pending>,
    cfg: BusConfig,
    invalidations: Arc<Invalidations>,
    counters: Arc<NodeCounters>,
    /// When the newest applied entry was applied (ms since the epoch).
    last_applied_ms: AtomicU64,
}

fn position_file(cfg: &BusConfig) -> PathBuf {
    cfg.data_dir.join("applied-version")
}

impl NatsBus {
    /// Connects, ensures the stream and the bucket exist, starts consuming
    /// from the persisted position, and waits (up to `catch_up`) until the
    /// node has applied the log's head.
    pub async fn start(
        cfg: BusConfig,
        invalidations: Arc<Invalidations>,
        audit: Arc<Audit>,
        counters: Arc<NodeCounters>,
        catch_up: Duration,
    ) -> Result<Arc<NatsBus>, String> {
        std::fs::create_dir_all(&cfg.data_dir)
            .map_err(|e| format!("cannot create data directory {}: {e}", cfg.data_dir.display()))?;
        let reconnected = Arc::new(tokio::sync::Notify::new());
        let notify = reconnected.clone();
        let client = async_nats::ConnectOptions::new()
            .name(format!("fresco {}", cfg.node_id))
            .request_timeout(Some(Duration::from_secs(2)))
            .retry_on_initial_connect()
            .event_callback(move |event| {
                let notify = notify.clone();
                async move {
                    match event {
                        async_nats::Event::Connected => {
                            tracing::info!("connected to the bus");
                            notify.notify_one();
                        }
                        async_nats::Event::Disconnected => {
                            tracing::warn!("lost the bus; serving on, refusing new invalidations")
                        }
                        _ => {}
                    }
                }
            })
            .connect(cfg.url.as_str())
            .await
            .map_err(|e| format!("`bus` {}: {e}", cfg.url))?;
        let js = jetstream::new(client.clone());
        // A NATS cluster that has just started needs a few seconds to elect
        // its JetStream leader.
        let setup_deadline = tokio::time::Instant::now() + SETUP;
        let stream = loop {
            let config = stream::Config {
                name: STREAM.into(),
                subjects: vec![SUBJECT.into()],
                max_age: cfg.retention,
                num_replicas: cfg.replicas,
                storage: stream::StorageType::File,
                ..Default::default()
            };
            match js.get_or_create_stream(config).await {
                Ok(s) => break s,
                Err(e) if tokio::time::Instant::now() < setup_deadline => {
                    tracing::debug!(error = %e, "waiting for JetStream");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return Err(format!("cannot set up the invalidation stream on {}: {e}", cfg.url)),
            }
        };
        let start =
            std::fs::read_to_string(position_file(&cfg)).ok().and_then(|s| s.trim().parse::<u64>().ok()).unwrap_or(0);
        invalidations.advance(start);

        let (tx, rx) = mpsc::channel(QUEUE);
        let bus = Arc::new(NatsBus {
            client,
            js,
            members: Default::default(),
            queue: tx,
            cfg,
            invalidations,
            counters,
            last_applied_ms: AtomicU64::new(0),
        });
        tokio::spawn(bus.clone().report());
        tokio::spawn(bus.clone().listen_heartbeats());
        tokio::spawn(bus.clone().write(rx));
        tokio::spawn(bus.clone().consume(stream, audit.clone(), reconnected));
        tokio::spawn(bus.clone().heartbeat());
        tokio::spawn(bus.clone().collect_acks(audit));

        // Apply what was missed before serving.
        let deadline = tokio::time::Instant::now() + catch_up;
        let head = bus.head().await.unwrap_or(0);
        while bus.invalidations.applied() < head && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if bus.invalidations.applied() < head {
            tracing::warn!(
                applied = bus.invalidations.applied(),
                head,
                "still catching up with the log; stored objects are revalidated meanwhile"
            );
        }
        Ok(bus)
    }

    /// The newest sequence in the stream.
    async fn head(&self) -> Option<u64> {
        let stream = self.js.get_stream(STREAM).await.ok()?;
        stream.get_info().await.ok().map(|i| i.state.last_sequence)
    }

    fn connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// Group commit, as in the embedded log: identical requests queued
    /// while the previous batch was published share one entry. Entries are
    /// published before their versions exist, so a merged request still
    /// outranks every fetch that started before it.
    async fn write(self: Arc<Self>, mut rx: mpsc::Receiver<Pending>) {
        while let Some(first) = rx.recv().await {
            let mut batch = vec![first];
            while batch.len() < BATCH {
                match rx.try_recv() {
                    Ok(p) => batch.push(p),
                    Err(_) => break,
                }
            }
            let mut unique: Vec<NewInvalidation> = Vec::new();
            let mut waiters = Vec::with_capacity(batch.len());
            for (inv, tx) in batch {
                let i = match unique.iter().position(|u| u.selectors == inv.selectors && u.mode == inv.mode) {
                    Some(i) => i,
                    None => {
                        unique.push(inv);
                        unique.len() - 1
                    }
                };
                waiters.push((i, tx));
            }
            let accepted_ms = now_ms();
            let mut acks = Vec::with_capacity(unique.len());
            for inv in &unique {
                let payload =
                    serde_json::to_vec(&Published { invalidation: inv.clone(), accepted_ms }).unwrap_or_default();
                acks.push(self.js.publish(SUBJECT, payload.into()).await);
            }
            let mut results: Vec<Result<Entry, LogError>> = Vec::with_capacity(unique.len());
            for (inv, ack) in unique.into_iter().zip(acks) {
                let result = match ack {
                    Ok(future) => match future.await {
                        Ok(ack) => Ok(Entry { version: ack.sequence, invalidation: inv, accepted_ms }),
                        Err(e) => Err(LogError::Unavailable(format!("the bus did not confirm: {e}"))),
                    },
                    Err(e) => Err(LogError::Unavailable(format!("cannot publish to the bus: {e}"))),
                };
                results.push(result);
            }
            let accepted = waiters.len();
            for (i, tx) in waiters {
                let _ = tx.send(results[i].clone());
            }
            metrics::counter!("fresco_invalidations_accepted_total").increment(accepted as u64);
        }
    }

    /// Applies the stream in order, from the persisted position.
    async fn consume(
        self: Arc<Self>,
        stream: stream::Stream,
        audit: Arc<Audit>,
        reconnected: Arc<tokio::sync::Notify>,
    ) {
        let mut expected = self.invalidations.applied() + 1;
        loop {
            let config = consumer::pull::OrderedConfig {
                deliver_policy: consumer::DeliverPolicy::ByStartSequence { start_sequence: expected },
                ..Default::default()
            };
            let consumer = match stream.create_consumer(config).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(error = %e, "cannot create the log consumer; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            let Ok(mut messages) = consumer.messages().await else {
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            };
            loop {
                let next = tokio::select! {
                    m = messages.next() => m,
                    _ = reconnected.notified() => {
                        // Until we reach the head seen now, stored objects may
                        // predate invalidations we have not applied yet.
                        if let Some(head) = self.head().await
                            && head > self.invalidations.applied()
                        {
                            self.invalidations.catch_up_to(head);
                        }
                        // The server may have lost our consumer: start a
                        // new one from where we are.
                        break;
                    }
                };
                let Some(Ok(message)) = next else { break };
                let Ok(info) = message.info() else { continue };
                let seq = info.stream_sequence;
                if seq < expected {
                    // Redelivery of something applied: idempotent anyway.
                    continue;
                }
                if seq > expected {
                    // Retention dropped what this node never applied.
                    self.retention_gap(expected, seq);
                }
                match serde_json::from_slice::<Published>(&message.payload) {
                    Ok(p) => {
                        let entry = Entry { version: seq, invalidation: p.invalidation, accepted_ms: p.accepted_ms };
                        self.invalidations.apply(&entry.invalidation.selectors, entry.invalidation.mode, seq);
                        audit.record(entry);
                    }
                    Err(e) => {
                        tracing::error!(seq, error = %e, "unreadable invalidation in the log; skipped");
                        self.invalidations.advance(seq);
                    }
                }
                metrics::counter!("fresco_invalidations_applied_total").increment(1);
                metrics::gauge!("fresco_invalidation_log_version").set(seq as f64);
                let applied_ms = now_ms();
                audit.applied(seq, &self.cfg.node_id, applied_ms);
                self.last_applied_ms.store(applied_ms, Ordering::Release);
                expected = seq + 1;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            expected = self.invalidations.applied() + 1;
        }
    }

    fn retention_gap(&self, expected: u64, got: u64) {
        tracing::warn!(
            missed_from = expected,
            missed_to = got - 1,
            "this node's position fell out of the log's retention: everything stored before the gap is treated as soft-purged"
        );
        self.invalidations.apply(&[Selector::All], Mode::Soft, got - 1);
        metrics::counter!("fresco_invalidation_retention_gaps_total").increment(1);
    }

    /// Every REPORT_EVERY, publishes the range applied since the last
    /// report (with when its newest entry was applied) and persists the
    /// position.
    async fn report(self: Arc<Self>) {
        let mut reported = self.invalidations.applied();
        loop {
            tokio::time::sleep(REPORT_EVERY).await;
            let to = self.invalidations.applied();
            if to <= reported {
                continue;
            }
            let ack = Applied {
                node: self.cfg.node_id.clone(),
                from: reported + 1,
                to,
                applied_ms: self.last_applied_ms.load(Ordering::Acquire),
            };
            if let Ok(payload) = serde_json::to_vec(&ack) {
                let _ = self.client.publish(ACKS, payload.into()).await;
            }
            if let Err(e) = std::fs::write(position_file(&self.cfg), to.to_string()) {
                tracing::warn!(error = %e, "cannot persist the applied position");
            }
            reported = to;
        }
    }

    async fn beat(&self) {
        let hb = Heartbeat {
            node: self.cfg.node_id.clone(),
            applied_version: self.invalidations.applied(),
            heartbeat_ms: now_ms(),
            hits: self.counters.hits.load(Ordering::Relaxed),
            requests: self.counters.requests.load(Ordering::Relaxed),
        };
        if let Ok(payload) = serde_json::to_vec(&hb) {
            let _ = self.client.publish(HEARTBEATS, payload.into()).await;
        }
    }

    /// Calls `f` with every message on `subject` that decodes as `T`,
    /// resubscribing whenever the subscription ends.
    async fn each<T: serde::de::DeserializeOwned>(&self, subject: &'static str, mut f: impl FnMut(T)) {
        loop {
            let Ok(mut sub) = self.client.subscribe(subject).await else {
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            };
            while let Some(msg) = sub.next().await {
                if let Ok(value) = serde_json::from_slice::<T>(&msg.payload) {
                    f(value);
                }
            }
        }
    }

    async fn listen_heartbeats(self: Arc<Self>) {
        self.each(HEARTBEATS, |hb: Heartbeat| {
            let mut members = self.members.lock().unwrap_or_else(|e| e.into_inner());
            members.insert(hb.node.clone(), (hb, std::time::Instant::now()));
        })
        .await;
    }

    async fn heartbeat(self: Arc<Self>) {
        loop {
            self.beat().await;
            tokio::time::sleep(self.cfg.heartbeat).await;
        }
    }

    /// Records other nodes' applied ranges in the local audit.
    async fn collect_acks(self: Arc<Self>, audit: Arc<Audit>) {
        self.each(ACKS, |a: Applied| audit.applied_range(a.from, a.to, &a.node, a.applied_ms)).await;
    }
}

/// The message body in the stream; the version is the stream sequence.
#[derive(Serialize, Deserialize)]
struct Published {
    #[serde(flatten)]
    invalidation: NewInvalidation,
    accepted_ms: u64,
}

impl InvalidationLog for NatsBus {
    fn append(&self, invalidation: NewInvalidation) -> Accepting<'_> {
        Box::pin(async move {
            if !self.connected() {
                return Err(LogError::Unavailable(format!("the bus ({}) is not reachable", self.cfg.url)));
            }
            let (tx, rx) = oneshot::channel();
            self.queue.try_send((invalidation, tx)).map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => LogError::Busy,
                mpsc::error::TrySendError::Closed(_) => LogError::Unavailable("the bus writer stopped".into()),
            })?;
            rx.await.unwrap_or_else(|_| Err(LogError::Unavailable("the bus writer stopped".into())))
        })
    }
}

impl Membership for NatsBus {
    fn view(&self) -> Nodes<'_> {
        Box::pin(async move {
            let mut nodes: Vec<NodeInfo> = {
                let members = self.members.lock().unwrap_or_else(|e| e.into_inner());
                members
                    .values()
                    .map(|(hb, heard)| {
                        let age = heard.elapsed();
                        NodeInfo {
                            node: hb.node.clone(),
                            applied_version: hb.applied_version,
                            heartbeat_age_ms: age.as_millis() as u64,
                            live: age <= self.cfg.down_after,
                            hits: hb.hits,
                            requests: hb.requests,
                        }
                    })
                    .collect()
            };
            nodes.sort_by(|a, b| a.node.cmp(&b.node));
            ClusterView { nodes, head: self.head().await }
        })
    }
}

/// Membership of a node alone.
pub struct Alone {
    pub node: String,
    pub invalidations: Arc<Invalidations>,
    pub counters: Arc<NodeCounters>,
}

impl Membership for Alone {
    fn view(&self) -> Nodes<'_> {
        Box::pin(async move {
            let applied = self.invalidations.applied();
            ClusterView {
                nodes: vec![NodeInfo {
                    node: self.node.clone(),
                    applied_version: applied,
                    heartbeat_age_ms: 0,
                    live: true,
                    hits: self.counters.hits.load(Ordering::Relaxed),
                    requests: self.counters.requests.load(Ordering::Relaxed),
                }],
                head: Some(applied),
            }
        })
    }
}
