//! The cluster log on NATS JetStream (design §3, items 3 and 4).
//!
//! Every node appends to one stream. An invalidation's version (its id in
//! the API) is the stream's base plus its sequence number, the base being
//! the stream's creation time in milliseconds × 1024: a stream recreated
//! after its storage was lost starts its sequence at 1 again, and the base
//! keeps its versions apart from the old stream's, on every node alike
//! without agreeing on anything (see `base`). Every node consumes the stream in order
//! from the version it last applied (persisted in its data directory with
//! the identity of the stream, its creation time), applies each entry, and
//! reports: its position and counters in a heartbeat on a subject every
//! node listens to (each node measures heartbeat ages on its own clock, so
//! clock skew between nodes does not matter), and each applied range on an
//! acknowledgement subject so that any node can show per-node applied
//! times. A report names the stream and only ranges the node applied, never
//! versions it skipped.
//!
//! A watcher polls the stream. While the log is out of reach the node keeps
//! serving; `append` refuses at once (503): an invalidation is in the
//! replicated log or refused, never accepted and lost. Out of reach for
//! longer than `max_log_silence`, or with a consumer that makes no progress
//! towards the head for that long, the node distrusts its store (stored
//! objects are misses) and reports not ready. On regaining the log it treats
//! stored objects as misses until it has applied everything up to the head.
//!
//! Two things make a node skip versions, and both soft-purge everything it
//! stored before, are logged and counted in
//! `fresco_invalidation_retention_gaps_total`: its position fell out of the
//! stream's retention, or the stream is not the one it followed (recreated
//! after its storage was lost: the sequence starts again at 1). Internally a
//! node numbers versions `offset + sequence`, and a new stream gets a new
//! offset above everything applied before, so stamps stay ordered even if
//! the new stream's clock-derived base is not above the old one's.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, consumer, stream};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, mpsc, oneshot};

use super::audit::Audit;
use super::cluster::{Check, ClusterView, Membership, NodeInfo, Nodes};
use super::log::{Accepting, Entry, LogError, NewInvalidation, now_ms};
use super::selectors::{Invalidations, Mode, Selector};
use super::service::{IdempotencyKey, KeyedLog};
use crate::data_dir::{self, DataDirLock};
use crate::supervisor::{Health, Role, Supervisor};

const STREAM: &str = "FRESCO_INVALIDATIONS";
const SUBJECT: &str = "fresco.invalidations";
const ACKS: &str = "fresco.applied";
const HEARTBEATS: &str = "fresco.heartbeat";
const POSITION_FILE: &str = "applied-version";
const QUEUE: usize = 10_000;
const BATCH: usize = 1_000;
/// How long to keep trying to set up the stream at start.
const SETUP: Duration = Duration::from_secs(30);
/// How long a node tries to reach its bus at start-up before it starts
/// without it.
const OFFLINE_START: Duration = Duration::from_secs(3);
/// Bound on setting up the log consumer; past it the setup starts over.
const CONSUMER_SETUP: Duration = Duration::from_secs(5);
/// How often a node acknowledges what it applied: the acknowledgements
/// fan out to every node, so they are batched rather than sent per entry.
const REPORT_EVERY: Duration = Duration::from_millis(5);
/// How often the position is persisted when it changed (each write fsyncs).
const PERSIST_EVERY: Duration = Duration::from_millis(100);
/// How long the writer retries a publish the bus did not confirm, with the
/// same message id, so that a retry never makes a second entry.
const PUBLISH_RETRY_FOR: Duration = Duration::from_secs(5);
/// Beyond a node's own `max_log_silence`: how long after its last heartbeat
/// it may still be serving from its store: its last contact with the log
/// may follow its last heartbeat by a heartbeat interval, plus its judge's
/// tick and delivery delays on a loaded machine.
const SERVE_SLACK: Duration = Duration::from_secs(2);
/// How long the membership view waits for the log's head.
const VIEW_HEAD_WAIT: Duration = Duration::from_millis(500);

#[derive(Debug, Clone)]
pub struct BusConfig {
    pub url: String,
    pub node_id: String,
    pub replicas: usize,
    pub retention: Duration,
    pub heartbeat: Duration,
    /// A node silent this long is down.
    pub down_after: Duration,
    /// Out of reach of the log this long, the node distrusts its store.
    pub max_log_silence: Duration,
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
    #[serde(default)]
    stream: String,
    applied_version: u64,
    #[serde(default)]
    applied_from: u64,
    heartbeat_ms: u64,
    hits: u64,
    requests: u64,
    /// Its bound: after this much silence it no longer answers from its store.
    #[serde(default)]
    max_log_silence_ms: u64,
    /// Its last word at a clean shutdown: it has stopped serving, so the
    /// others drop it at once instead of waiting `down_after` for it.
    #[serde(default)]
    leaving: bool,
}

/// An applied range of one stream, published after each applied batch.
#[derive(Serialize, Deserialize)]
struct Applied {
    node: String,
    #[serde(default)]
    stream: String,
    from: u64,
    to: u64,
    applied_ms: u64,
}

/// Where this node is in which stream: `DATA_DIR/applied-version`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Position {
    /// The stream's identity (its creation time); empty when unknown.
    stream: String,
    /// Every version in `from..=applied` was applied here; versions before
    /// `from` may have been skipped.
    applied: u64,
    from: u64,
}

impl Position {
    /// Reads the file; a bare number (written by older versions) is a
    /// position in an unknown stream.
    fn parse(text: &str) -> Option<Position> {
        if let Ok(applied) = text.trim().parse::<u64>() {
            return Some(Position { stream: String::new(), applied, from: 1 });
        }
        serde_json::from_str(text).ok()
    }

    fn fresh(stream: String) -> Position {
        Position { stream, applied: 0, from: 1 }
    }
}

/// The stream this node follows and how its versions map onto the node's.
struct Following {
    pos: Position,
    /// The node's internal version of stream sequence `s` is `offset + s`.
    offset: u64,
    /// Bumped when the node starts following another stream; a consumer
    /// of an older generation applies nothing more.
    generation: u64,
}

/// What the watcher last learned about the log.
struct Contact {
    last: Instant,
    /// The identity of the stream last seen, and its newest sequence.
    stream: String,
    head: u64,
    /// The applied version last seen to move, and when.
    progress: (u64, Instant),
    /// The last judgement: out of reach too long, no progress too long.
    /// Readiness reports these, so a 503 always means stored objects are
    /// already misses.
    silent: bool,
    stalled: bool,
}

type Pending = (NewInvalidation, IdempotencyKey, oneshot::Sender<Result<Entry, LogError>>);

pub struct NatsBus {
    client: async_nats::Client,
    js: jetstream::Context,
    stream_config: stream::Config,
    /// The last heartbeat heard from each node, and when it arrived.
    members: Mutex<std::collections::HashMap<String, (Heartbeat, Instant)>>,
    queue: mpsc::Sender<Pending>,
    cfg: BusConfig,
    invalidations: Arc<Invalidations>,
    audit: Arc<Audit>,
    counters: Arc<NodeCounters>,
    health: Arc<Health>,
    following: Mutex<Following>,
    contact: Mutex<Contact>,
    /// Tells the consumer to start a new JetStream consumer.
    restart: Notify,
    /// When the newest applied entry was applied (ms since the epoch).
    last_applied_ms: AtomicU64,
    /// One write of the position at a time: a write abandoned at shutdown
    /// may still be running when the final one starts.
    persisting: Arc<Mutex<()>>,
    _lock: DataDirLock,
}

/// A stream's identity: its creation time, which a recreated stream does
/// not share (the same on every server of a NATS cluster).
fn identity(info: &stream::Info) -> String {
    info.created.unix_timestamp_nanos().to_string()
}

/// Versions per millisecond of a stream's creation time.
const VERSIONS_PER_MS: u64 = 1024;

/// The version of sequence 0 of the stream with `identity`: its creation
/// time in milliseconds × 1024. Every node computes it from the stream
/// alone, so every node gives an entry the same version, and a recreated
/// stream's versions are above the old one's unless the old one held more
/// than 1024 entries per millisecond between the two creations (a million
/// invalidations a second) or the bus's clock went back. Versions stay
/// below 2^53 (exact in JSON numbers) until the year 2248. An unknown
/// stream (a node that never reached its bus) has base 0.
fn base(identity: &str) -> u64 {
    let ms = identity.parse::<i128>().unwrap_or(0).max(0) / 1_000_000;
    u64::try_from(ms).unwrap_or(u64::MAX).saturating_mul(VERSIONS_PER_MS)
}

impl NatsBus {
    /// Locks the data directory, connects, ensures the stream exists, starts
    /// following it from the persisted position (or from the start of a
    /// stream that is not the one the position refers to), and waits (up to
    /// `catch_up`) until the node has applied the log's head.
    pub async fn start(
        cfg: BusConfig,
        invalidations: Arc<Invalidations>,
        audit: Arc<Audit>,
        counters: Arc<NodeCounters>,
        supervisor: &Supervisor,
        catch_up: Duration,
    ) -> Result<Arc<NatsBus>, String> {
        let lock = DataDirLock::acquire(&cfg.data_dir)?;
        let reconnected = Arc::new(AtomicBool::new(false));
        let flag = reconnected.clone();
        let mut options = async_nats::ConnectOptions::new();
        // The client ignores credentials written in the URL: pass them on.
        let first = cfg.url.split(',').next().unwrap_or_default().trim();
        if let Ok(addr) = first.parse::<async_nats::ServerAddr>()
            && let Some(user) = addr.username()
        {
            options = options.user_and_password(user.to_string(), addr.password().unwrap_or_default().to_string());
        }
        let client = options
            .name(format!("fresco {}", cfg.node_id))
            .request_timeout(Some(Duration::from_secs(2)))
            .retry_on_initial_connect()
            .event_callback(move |event| {
                let flag = flag.clone();
                async move {
                    match event {
                        async_nats::Event::Connected => {
                            tracing::info!("connected to the bus");
                            flag.store(true, Ordering::Release);
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
        // The first connection is not a reconnect.
        reconnected.store(false, Ordering::Release);
        let js = jetstream::new(client.clone());
        let stream_config = stream::Config {
            name: STREAM.into(),
            subjects: vec![SUBJECT.into()],
            max_age: cfg.retention,
            num_replicas: cfg.replicas,
            storage: stream::StorageType::File,
            ..Default::default()
        };
        // A NATS cluster that has just started needs a few seconds to elect
        // its JetStream leader.
        let path = cfg.data_dir.join(POSITION_FILE);
        let persisted = match std::fs::read_to_string(&path) {
            Ok(text) => Position::parse(&text)
                .ok_or_else(|| format!("{} is damaged: {text:?}; remove it to start over", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Position::fresh(String::new()),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        let started = tokio::time::Instant::now();
        let info = loop {
            match js.get_or_create_stream(stream_config.clone()).await {
                Ok(s) => break Some(s.cached_info().clone()),
                // An edge restarted during a bus outage comes up anyway:
                // it serves from the origin, trusts nothing it stores, and
                // reports not ready until it has reached and applied the
                // log. A bus that answers but whose JetStream is still
                // electing a leader is waited for.
                Err(e)
                    if client.connection_state() != async_nats::connection::State::Connected
                        && started.elapsed() > OFFLINE_START =>
                {
                    tracing::warn!(bus = %cfg.url, error = %e, "the bus is out of reach: starting without it; stored objects are not trusted and the node is not ready until the log is reached");
                    break None;
                }
                Err(e) if started.elapsed() < SETUP => {
                    tracing::debug!(error = %e, "waiting for JetStream");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return Err(format!("cannot set up the invalidation stream on {}: {e}", cfg.url)),
            }
        };
        let (stream_id, head) = match &info {
            Some(info) => (identity(info), info.state.last_sequence),
            None => (persisted.stream.clone(), persisted.applied),
        };
        let same = (persisted.stream == stream_id || persisted.stream.is_empty()) && head >= persisted.applied;
        let pos = if same {
            Position { stream: stream_id, ..persisted }
        } else {
            // Nothing is stored yet, so there is nothing to soft-purge.
            tracing::warn!(
                followed = %persisted.stream,
                applied = persisted.applied,
                stream = %stream_id,
                head,
                "the invalidation stream is not the one this node followed (recreated?); following it from its start"
            );
            metrics::counter!("fresco_invalidation_retention_gaps_total").increment(1);
            Position::fresh(stream_id)
        };
        invalidations.advance(pos.applied);
        // Entries applied before this start are not in the audit.
        audit.complete_from(base(&pos.stream) + pos.applied + 1);

        let (tx, rx) = mpsc::channel(QUEUE);
        let now = Instant::now();
        let bus = Arc::new(NatsBus {
            client,
            js,
            stream_config,
            members: Default::default(),
            queue: tx,
            invalidations,
            audit,
            counters,
            health: supervisor.health.clone(),
            following: Mutex::new(Following { pos, offset: 0, generation: 0 }),
            // Started without the bus: the log has never been reached, so
            // the trust judge distrusts the store from the first tick.
            contact: Mutex::new(Contact {
                last: if info.is_some() { now } else { now.checked_sub(cfg.max_log_silence * 2).unwrap_or(now) },
                stream: info.as_ref().map(identity).unwrap_or_default(),
                head,
                progress: (0, now),
                silent: false,
                stalled: false,
            }),
            restart: Notify::new(),
            last_applied_ms: AtomicU64::new(0),
            persisting: Arc::default(),
            cfg,
            _lock: lock,
        });
        bus.persist().await;
        supervisor.spawn("log-consumer", Role::Critical, bus.clone().consume());
        supervisor.spawn("log-watcher", Role::Critical, bus.clone().watch_log(reconnected));
        supervisor.spawn("trust-judge", Role::Critical, bus.clone().judge());
        supervisor.spawn("log-writer", Role::Auxiliary, bus.clone().write(rx));
        supervisor.spawn("applied-reports", Role::Auxiliary, bus.clone().report());
        supervisor.spawn("heartbeat", Role::Auxiliary, bus.clone().heartbeat());
        supervisor.spawn("heartbeat-listener", Role::Auxiliary, bus.clone().listen_heartbeats());
        supervisor.spawn("ack-listener", Role::Auxiliary, bus.clone().collect_acks());

        // Apply what was missed before serving.
        let deadline = tokio::time::Instant::now() + catch_up;
        while bus.applied() < head && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if bus.applied() < head {
            tracing::warn!(
                applied = bus.applied(),
                head,
                "still catching up with the log; stored objects are revalidated meanwhile"
            );
            let offset = bus.lock_following().offset;
            bus.invalidations.catch_up_to(offset + head);
        }
        Ok(bus)
    }

    fn lock_following(&self) -> std::sync::MutexGuard<'_, Following> {
        self.following.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_contact(&self) -> std::sync::MutexGuard<'_, Contact> {
        self.contact.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The newest stream sequence applied.
    fn applied(&self) -> u64 {
        self.lock_following().pos.applied
    }

    fn connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// Writes the position atomically, off the runtime.
    async fn persist(&self) {
        let pos = self.lock_following().pos.clone();
        let text = serde_json::to_vec(&pos).unwrap_or_default();
        let dir = self.cfg.data_dir.clone();
        let one_at_a_time = self.persisting.clone();
        let written = tokio::task::spawn_blocking(move || {
            let _only = one_at_a_time.lock().unwrap_or_else(|e| e.into_inner());
            data_dir::replace(&dir.join(POSITION_FILE), &text).map(drop)
        })
        .await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot persist the applied position"),
            Err(e) => tracing::warn!(error = %e, "cannot persist the applied position"),
        }
    }

    /// Group commit, as in the embedded log: identical requests queued
    /// while the previous batch was published share one entry, unless a
    /// client named its request with an `Idempotency-Key` (a retry of it
    /// must find that entry). Entries are published before their versions
    /// exist, so a merged request still outranks every fetch that started
    /// before it.
    async fn write(self: Arc<Self>, mut rx: mpsc::Receiver<Pending>) {
        while let Some(first) = rx.recv().await {
            let mut batch = vec![first];
            while batch.len() < BATCH {
                match rx.try_recv() {
                    Ok(p) => batch.push(p),
                    Err(_) => break,
                }
            }
            let mut unique: Vec<(NewInvalidation, IdempotencyKey)> = Vec::new();
            let mut waiters = Vec::with_capacity(batch.len());
            for (inv, key, tx) in batch {
                let merge = if key.client {
                    None
                } else {
                    unique.iter().position(|(u, k)| !k.client && u.selectors == inv.selectors && u.mode == inv.mode)
                };
                let i = match merge {
                    Some(i) => i,
                    None => {
                        unique.push((inv, key));
                        unique.len() - 1
                    }
                };
                waiters.push((i, tx));
            }
            let accepted_ms = now_ms();
            // The stream seen before publishing: if it is still the one
            // after the confirmations, they are sequences of that stream.
            let before = self.lock_contact().stream.clone();
            let confirmed: Vec<Result<Confirmed, LogError>> =
                futures_util::future::join_all(unique.iter().map(|(inv, key)| self.publish(inv, key, accepted_ms)))
                    .await;
            let results = self.settle(&before, unique, confirmed, accepted_ms).await;
            let accepted = waiters.len();
            for (i, tx) in waiters {
                let _ = tx.send(results[i].clone());
            }
            metrics::counter!("fresco_invalidations_accepted_total").increment(accepted as u64);
        }
    }

    /// Publishes one entry with its key as the JetStream message id, so the
    /// stream keeps one entry however often it is sent (within the stream's
    /// duplicate window, two minutes). Returns what the bus confirmed.
    async fn publish(
        &self,
        inv: &NewInvalidation,
        key: &IdempotencyKey,
        accepted_ms: u64,
    ) -> Result<Confirmed, LogError> {
        let payload = serde_json::to_vec(&Published { invalidation: inv.clone(), accepted_ms })
            .map_err(|e| LogError::Unavailable(format!("cannot encode the invalidation: {e}")))?;
        let payload = bytes::Bytes::from(payload);
        let deadline = Instant::now() + PUBLISH_RETRY_FOR;
        loop {
            let message = PublishMessage::build().payload(payload.clone()).message_id(&key.id);
            let outcome = match self.js.send_publish(SUBJECT, message).await {
                Ok(ack) => ack.await.map_err(|e| format!("the bus did not confirm: {e}")),
                Err(e) => Err(format!("cannot publish to the bus: {e}")),
            };
            match outcome {
                Ok(ack) => return Ok(Confirmed { seq: ack.sequence, duplicate: ack.duplicate }),
                Err(e) if Instant::now() < deadline && self.connected() => {
                    tracing::debug!(error = %e, key = %key.id, "publish not confirmed; retrying with the same id");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return Err(LogError::Unavailable(e)),
            }
        }
    }

    /// Turns confirmed sequences into entries with their versions. A
    /// confirmation names a sequence but not the stream: when the stream
    /// seen before publishing (`before`) is still the stream now, that is
    /// the one; otherwise (it was recreated meanwhile) an entry counts only
    /// if the current stream holds it under its key at that sequence, and
    /// is refused if not (it went into the lost stream; the client's retry
    /// with the same key appends it to the new one). A duplicate answers
    /// with the entry first stored under its key.
    async fn settle(
        &self,
        before: &str,
        published: Vec<(NewInvalidation, IdempotencyKey)>,
        confirmed: Vec<Result<Confirmed, LogError>>,
        accepted_ms: u64,
    ) -> Vec<Result<Entry, LogError>> {
        let stream = self.js.get_stream(STREAM).await.ok();
        let mut out = Vec::with_capacity(published.len());
        for ((inv, key), confirmation) in published.into_iter().zip(confirmed) {
            let entry = match (confirmation, &stream) {
                (Err(e), _) => Err(e),
                (Ok(_), None) => Err(LogError::Unavailable(
                    "the bus confirmed the invalidation but its stream could not be read back; send it again with the same Idempotency-Key".into(),
                )),
                (Ok(Confirmed { seq, duplicate }), Some(stream)) => {
                    let now = identity(stream.cached_info());
                    if !duplicate && now == before {
                        out.push(Ok(Entry { version: base(&now) + seq, invalidation: inv, accepted_ms }));
                        continue;
                    }
                    let held = async {
                        let m = stream.get_raw_message(seq).await.ok()?;
                        let id = m.headers.get(async_nats::header::NATS_MESSAGE_ID)?;
                        (id.as_str() == key.id).then_some(serde_json::from_slice::<Published>(&m.payload).ok()?)
                    };
                    match held.await {
                        Some(p) => Ok(Entry { version: base(&now) + seq, invalidation: p.invalidation, accepted_ms: p.accepted_ms }),
                        // The message may have been trimmed already (retention):
                        // the stream did not change, so the sequence is ours.
                        None if now == before => Ok(Entry { version: base(&now) + seq, invalidation: inv, accepted_ms }),
                        None => Err(LogError::Unavailable(
                            "the bus lost its storage while accepting the invalidation; send it again with the same Idempotency-Key".into(),
                        )),
                    }
                }
            };
            out.push(entry);
        }
        out
    }

    /// Applies the stream in order from the position, starting over on a
    /// reconnect (the server may have lost the consumer), on any error of
    /// the consumer, and when the node starts following another stream.
    ///
    /// The consumer is a plain pull consumer, not JetStream's "ordered"
    /// one: that one recreates itself after an error, on whatever stream
    /// has the name by then, so a recreated stream's entries would be
    /// applied as the old stream's. A plain consumer belongs to its stream
    /// and fails with it; every setup checks which stream it is on.
    async fn consume(self: Arc<Self>) {
        loop {
            let (generation, start) = {
                let f = self.lock_following();
                (f.generation, f.pos.applied + 1)
            };
            let setup = async {
                let stream = self.js.get_stream(STREAM).await.map_err(|e| e.to_string())?;
                let before = identity(stream.cached_info());
                if !self.on_followed_stream(stream.cached_info()) {
                    return Err("the stream is not the one followed; starting over on the new one".to_string());
                }
                let config = consumer::pull::Config {
                    deliver_policy: consumer::DeliverPolicy::ByStartSequence { start_sequence: start },
                    ack_policy: consumer::AckPolicy::None,
                    inactive_threshold: Duration::from_secs(30),
                    memory_storage: true,
                    ..Default::default()
                };
                let consumer = stream.create_consumer(config).await.map_err(|e| e.to_string())?;
                // The same stream before and after: the consumer was made on
                // it (a recreated stream never has an old identity).
                let after = self.js.get_stream(STREAM).await.map_err(|e| e.to_string())?;
                if identity(after.cached_info()) != before {
                    return Err("the stream was recreated while the consumer was set up".to_string());
                }
                consumer.messages().await.map_err(|e| e.to_string())
            };
            // A request the bus never answers (it went away mid-setup) must
            // not leave the node without a consumer for good.
            let messages = match tokio::time::timeout(CONSUMER_SETUP, setup).await {
                Ok(m) => m,
                Err(_) => Err("the bus did not answer in time".to_string()),
            };
            let mut messages = match messages {
                Ok(m) => m,
                Err(e) => {
                    tracing::debug!(error = %e, "cannot start the log consumer; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            loop {
                let next = tokio::select! {
                    m = messages.next() => m,
                    () = self.restart.notified() => break,
                };
                let Some(Ok(message)) = next else { break };
                let Ok(info) = message.info() else { continue };
                if !self.apply(generation, info.stream_sequence, &message.payload) {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Applies the entry at `seq` of the stream followed in `generation`.
    /// False when the node follows another stream by now.
    fn apply(&self, generation: u64, seq: u64, payload: &[u8]) -> bool {
        let mut f = self.lock_following();
        if f.generation != generation {
            return false;
        }
        let expected = f.pos.applied + 1;
        if seq < expected {
            // Redelivery of something applied: idempotent anyway.
            return true;
        }
        if seq > expected {
            tracing::warn!(
                missed_from = expected,
                missed_to = seq - 1,
                "this node's position fell out of the log's retention: everything stored before the gap is treated as soft-purged"
            );
            self.invalidations.apply(&[Selector::All], Mode::Soft, f.offset + seq - 1);
            metrics::counter!("fresco_invalidation_retention_gaps_total").increment(1);
            f.pos.from = seq;
            self.audit.complete_from(base(&f.pos.stream) + seq);
        }
        let version = f.offset + seq;
        let public = base(&f.pos.stream) + seq;
        match serde_json::from_slice::<Published>(payload) {
            Ok(p) => {
                self.invalidations.apply(&p.invalidation.selectors, p.invalidation.mode, version);
                let entry = Entry { version: public, invalidation: p.invalidation, accepted_ms: p.accepted_ms };
                super::log::report_applied(&entry, now_ms());
                self.audit.record(entry);
            }
            Err(e) => {
                // Skipping it could lose a purge: assume it selects everything.
                tracing::error!(seq, error = %e, "unreadable invalidation in the log: applied as a hard purge of everything");
                self.invalidations.apply(&[Selector::All], Mode::Hard, version);
                metrics::counter!("fresco_invalidation_unreadable_total").increment(1);
            }
        }
        f.pos.applied = seq;
        metrics::counter!("fresco_invalidations_applied_total").increment(1);
        metrics::gauge!("fresco_invalidation_log_version").set(public as f64);
        let applied_ms = now_ms();
        self.audit.applied(public, &self.cfg.node_id, applied_ms);
        self.last_applied_ms.store(applied_ms, Ordering::Release);
        true
    }

    /// Polls the stream: creates it when it is missing (storage lost),
    /// follows a stream that is not the one followed so far, and decides
    /// whether the node may trust its store.
    async fn watch_log(self: Arc<Self>, reconnected: Arc<AtomicBool>) {
        let poll = (self.cfg.max_log_silence / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
        loop {
            // Applied before asking, so a head below it means the stream
            // went backwards, not that the consumer moved on meanwhile.
            let applied_before = self.applied();
            match self.js.get_or_create_stream(self.stream_config.clone()).await {
                Ok(stream) => {
                    self.reached(stream.cached_info(), applied_before, reconnected.swap(false, Ordering::AcqRel))
                }
                Err(e) => tracing::debug!(error = %e, "cannot reach the invalidation stream"),
            }
            tokio::time::sleep(poll).await;
        }
    }

    /// Judges trust on its own clock: a poll that hangs on an unreachable
    /// bus must not delay it.
    async fn judge(self: Arc<Self>) {
        let tick = (self.cfg.max_log_silence / 20).clamp(Duration::from_millis(10), Duration::from_millis(100));
        loop {
            self.judge_trust();
            tokio::time::sleep(tick).await;
        }
    }

    /// Is `info` the stream this node follows? If it is another, the node
    /// starts following it (and false is the answer).
    fn on_followed_stream(&self, info: &stream::Info) -> bool {
        let id = identity(info);
        let mut f = self.lock_following();
        if f.pos.stream.is_empty() {
            // First contact of a node that started without the bus and had
            // never followed a stream: this one is its stream.
            f.pos.stream = id;
            true
        } else if f.pos.stream != id {
            self.follow_new_stream(&mut f, id, info.state.last_sequence);
            false
        } else {
            true
        }
    }

    /// The log answered with `info`, asked when `applied_before` was applied.
    fn reached(&self, info: &stream::Info, applied_before: u64, reconnected: bool) {
        let id_seen = identity(info);
        let head = info.state.last_sequence;
        if self.on_followed_stream(info) {
            let mut f = self.lock_following();
            if head < applied_before.min(f.pos.applied) {
                // The same creation time but fewer entries: storage lost
                // and the stream restored under its old identity.
                self.follow_new_stream(&mut f, id_seen.clone(), head);
            }
        }
        let offset = self.lock_following().offset;
        let mut c = self.lock_contact();
        if reconnected || c.last.elapsed() > self.cfg.max_log_silence {
            // Invalidations may have been missed meanwhile: none of the
            // stored objects is trusted until the head seen now is applied.
            self.invalidations.catch_up_to(offset + head);
        }
        if reconnected {
            self.restart.notify_one();
        }
        c.last = Instant::now();
        c.stream = id_seen;
        c.head = head;
    }

    /// The stream was replaced: its sequences start again. Soft-purge
    /// everything stored so far, renumber above it, and consume the new one
    /// from its start. The old stream's audit records stay: their versions
    /// are the old stream's, which the new one's do not reuse.
    fn follow_new_stream(&self, f: &mut Following, id: String, head: u64) {
        tracing::warn!(
            followed = %f.pos.stream,
            applied = f.pos.applied,
            stream = %id,
            head,
            "the invalidation stream is not the one this node followed (recreated?): everything stored is treated as soft-purged"
        );
        let base = self.invalidations.applied() + 1;
        self.invalidations.apply(&[Selector::All], Mode::Soft, base);
        f.offset = base;
        self.audit.complete_from(self::base(&id) + 1);
        f.pos = Position::fresh(id);
        f.generation += 1;
        self.invalidations.catch_up_to(base + head);
        metrics::counter!("fresco_invalidation_retention_gaps_total").increment(1);
        self.restart.notify_one();
    }

    /// Distrusts the store while the log has been out of reach, or the
    /// consumer has made no progress towards the head, for longer than
    /// `max_log_silence`, or a critical task has died.
    fn judge_trust(&self) {
        let bound = self.cfg.max_log_silence;
        let (applied, offset) = {
            let f = self.lock_following();
            (f.pos.applied, f.offset)
        };
        let mut c = self.lock_contact();
        let now = Instant::now();
        if applied >= c.head || applied != c.progress.0 {
            c.progress = (applied, now);
        }
        let silent = now.duration_since(c.last) > bound;
        let stalled = now.duration_since(c.progress.1) > bound;
        let (distrust, was) = (silent || stalled, c.silent || c.stalled);
        if distrust && !was {
            tracing::warn!(
                silent,
                stalled,
                applied,
                head = c.head,
                "the log is out of reach or not applied for longer than max_log_silence: stored objects are treated as misses"
            );
        } else if was && !distrust {
            tracing::info!("the log is reachable and applied again: trusting stored objects once caught up");
            self.invalidations.catch_up_to(offset + c.head);
        }
        // Gate first, then report: readiness never says 503 before stored
        // objects are misses.
        self.invalidations.distrust(distrust || self.health.critical_dead());
        (c.silent, c.stalled) = (silent, stalled);
    }

    /// Every REPORT_EVERY, publishes the range applied since the last
    /// report (only what was applied, never a skipped range) and, every
    /// PERSIST_EVERY, persists the position when it changed.
    async fn report(self: Arc<Self>) {
        let mut reported = self.lock_following().pos.clone();
        let mut persisted = reported.clone();
        let mut last_persist = Instant::now();
        loop {
            tokio::time::sleep(REPORT_EVERY).await;
            let pos = self.lock_following().pos.clone();
            if pos.stream != reported.stream {
                reported = Position::fresh(pos.stream.clone());
            }
            if pos.applied > reported.applied {
                let ack = Applied {
                    node: self.cfg.node_id.clone(),
                    stream: pos.stream.clone(),
                    from: (reported.applied + 1).max(pos.from),
                    to: pos.applied,
                    applied_ms: self.last_applied_ms.load(Ordering::Acquire),
                };
                if let Ok(payload) = serde_json::to_vec(&ack) {
                    let _ = self.client.publish(ACKS, payload.into()).await;
                }
                reported = pos.clone();
            }
            if pos != persisted && last_persist.elapsed() >= PERSIST_EVERY {
                self.persist().await;
                persisted = pos;
                last_persist = Instant::now();
            }
        }
    }

    /// What this node says of itself now.
    fn heartbeat_now(&self, leaving: bool) -> Heartbeat {
        let pos = self.lock_following().pos.clone();
        Heartbeat {
            node: self.cfg.node_id.clone(),
            stream: pos.stream,
            applied_version: pos.applied,
            applied_from: pos.from,
            heartbeat_ms: now_ms(),
            hits: self.counters.hits.load(Ordering::Relaxed),
            requests: self.counters.requests.load(Ordering::Relaxed),
            max_log_silence_ms: self.cfg.max_log_silence.as_millis() as u64,
            leaving,
        }
    }

    async fn beat(&self) {
        let hb = self.heartbeat_now(false);
        if let Ok(payload) = serde_json::to_vec(&hb) {
            let _ = self.client.publish(HEARTBEATS, payload.into()).await;
        }
    }

    /// At a clean shutdown, once the node no longer serves (its connections
    /// are drained and its heartbeat task stopped): tells the others it
    /// left, on the heartbeat subject so that it arrives after its last
    /// heartbeat. Bounded: a bus out of reach does not hold the shutdown.
    pub async fn leave(&self) {
        let hb = self.heartbeat_now(true);
        let Ok(payload) = serde_json::to_vec(&hb) else { return };
        let sent = async {
            self.client.publish(HEARTBEATS, payload.into()).await.ok()?;
            self.client.flush().await.ok()
        };
        if tokio::time::timeout(Duration::from_secs(2), sent).await.ok().flatten().is_some() {
            tracing::info!(node = %self.cfg.node_id, "announced this node's leave to the cluster");
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
            if hb.leaving {
                if members.remove(&hb.node).is_some() {
                    tracing::info!(node = %hb.node, "a node left the cluster");
                }
            } else {
                members.insert(hb.node.clone(), (hb, Instant::now()));
            }
        })
        .await;
    }

    async fn heartbeat(self: Arc<Self>) {
        loop {
            self.beat().await;
            tokio::time::sleep(self.cfg.heartbeat).await;
        }
    }

    /// Records other nodes' applied ranges in the local audit, in the
    /// versions of the stream each range is of.
    async fn collect_acks(self: Arc<Self>) {
        self.each(ACKS, |a: Applied| {
            if !a.stream.is_empty() {
                // The membership view moves with acknowledgements too, and
                // before the audit does, so that it is as current as an
                // invalidation's status (`fresco status` right after
                // `purge --wait`), not a heartbeat late. Both count in the
                // stream's own sequence.
                if let Some((hb, _)) = self.members.lock().unwrap_or_else(|e| e.into_inner()).get_mut(&a.node)
                    && hb.stream == a.stream
                    && a.from <= hb.applied_version + 1
                {
                    hb.applied_version = hb.applied_version.max(a.to);
                }
                let b = base(&a.stream);
                self.audit.applied_range(b + a.from, b + a.to, &a.node, a.applied_ms);
            }
        })
        .await;
    }

    /// At shutdown, after the tasks have stopped: the final position.
    pub async fn flush(&self) {
        self.persist().await;
    }
}

/// Appends an invalidation to the cluster's stream from outside a node
/// (`fresco cdc --bus`): the message a node's writer publishes, with `key`
/// as the message id, so the stream's duplicate window drops a replay.
/// Resolves once JetStream acknowledged it (durable); a missing
/// stream (no node has created it yet) is an error to retry.
pub async fn publish_external(js: &jetstream::Context, invalidation: NewInvalidation, key: &str) -> Result<(), String> {
    let payload = serde_json::to_vec(&Published { invalidation, accepted_ms: now_ms() })
        .map_err(|e| format!("cannot encode the invalidation: {e}"))?;
    let message = PublishMessage::build().payload(payload.into()).message_id(key);
    let ack = js.send_publish(SUBJECT, message).await.map_err(|e| format!("cannot publish to the bus: {e}"))?;
    ack.await.map_err(|e| format!("the bus did not confirm: {e}"))?;
    Ok(())
}

/// What the bus confirmed for one publish: the sequence of the entry, or
/// of the entry first stored under its key.
struct Confirmed {
    seq: u64,
    duplicate: bool,
}

/// The message body in the stream; the version is the stream's base plus
/// its sequence.
#[derive(Serialize, Deserialize)]
struct Published {
    #[serde(flatten)]
    invalidation: NewInvalidation,
    accepted_ms: u64,
}

impl KeyedLog for NatsBus {
    fn append_keyed(&self, invalidation: NewInvalidation, key: IdempotencyKey) -> Accepting<'_> {
        Box::pin(async move {
            if !self.connected() {
                return Err(LogError::Unavailable(format!("the bus ({}) is not reachable", self.cfg.url)));
            }
            let (tx, rx) = oneshot::channel();
            self.queue.try_send((invalidation, key, tx)).map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => LogError::Busy,
                mpsc::error::TrySendError::Closed(_) => LogError::Unavailable("the bus writer stopped".into()),
            })?;
            rx.await.unwrap_or_else(|_| Err(LogError::Unavailable("the bus writer stopped".into())))
        })
    }
}

impl Membership for NatsBus {
    fn position(&self) -> u64 {
        let f = self.lock_following();
        base(&f.pos.stream) + f.pos.applied
    }

    fn view(&self) -> Nodes<'_> {
        Box::pin(async move {
            let mut nodes: Vec<NodeInfo> = {
                let members = self.members.lock().unwrap_or_else(|e| e.into_inner());
                members
                    .values()
                    .map(|(hb, heard)| {
                        let age = heard.elapsed();
                        let bound = Duration::from_millis(hb.max_log_silence_ms) + SERVE_SLACK;
                        let b = base(&hb.stream);
                        NodeInfo {
                            node: hb.node.clone(),
                            stream: hb.stream.clone(),
                            applied_version: b + hb.applied_version,
                            applied_from: b + hb.applied_from,
                            heartbeat_age_ms: age.as_millis() as u64,
                            live: age <= self.cfg.down_after,
                            // A node that never said its bound is assumed to serve while live.
                            may_serve: age <= bound || (hb.max_log_silence_ms == 0 && age <= self.cfg.down_after),
                            hits: hb.hits,
                            requests: hb.requests,
                        }
                    })
                    .collect()
            };
            nodes.sort_by(|a, b| a.node.cmp(&b.node));
            let stream = self.lock_following().pos.stream.clone();
            // Bounded: with the bus out of reach the view (and /metrics, the
            // dashboard, `fresco status`) answers at once, without the head.
            let head = match tokio::time::timeout(VIEW_HEAD_WAIT, self.js.get_stream(STREAM)).await {
                Ok(Ok(s)) if identity(s.cached_info()) == stream => {
                    Some(base(&stream) + s.cached_info().state.last_sequence)
                }
                _ => None,
            };
            ClusterView { base: base(&stream), stream, head, nodes, layers: Vec::new() }
        })
    }

    fn readiness(&self) -> Vec<Check> {
        let bound = self.cfg.max_log_silence;
        let applied = self.applied();
        let c = self.lock_contact();
        let consumer_dead = self.health.dead().contains(&"log-consumer");
        vec![
            Check {
                name: "log_reachable",
                ok: !c.silent,
                detail: format!(
                    "last reached the log {} ms ago (bound {} ms)",
                    c.last.elapsed().as_millis(),
                    bound.as_millis()
                ),
            },
            Check {
                name: "consumer",
                ok: !consumer_dead && !c.stalled,
                detail: if consumer_dead {
                    "the log consumer stopped".to_string()
                } else {
                    format!(
                        "applied {applied} of head {}; last progress {} ms ago",
                        c.head,
                        c.progress.1.elapsed().as_millis()
                    )
                },
            },
            Check {
                name: "caught_up",
                ok: !self.invalidations.catching_up(),
                detail: if self.invalidations.catching_up() {
                    "stored objects are treated as misses until the log is applied".to_string()
                } else {
                    format!("applied {applied}")
                },
            },
        ]
    }
}

/// Membership of a node alone.
pub struct Alone {
    pub node: String,
    pub invalidations: Arc<Invalidations>,
    pub counters: Arc<NodeCounters>,
}

impl Membership for Alone {
    fn position(&self) -> u64 {
        self.invalidations.applied()
    }

    fn view(&self) -> Nodes<'_> {
        Box::pin(async move {
            let applied = self.invalidations.applied();
            ClusterView {
                stream: String::new(),
                base: 0,
                head: Some(applied),
                nodes: vec![NodeInfo {
                    node: self.node.clone(),
                    stream: String::new(),
                    applied_version: applied,
                    applied_from: 1,
                    heartbeat_age_ms: 0,
                    live: true,
                    may_serve: true,
                    hits: self.counters.hits.load(Ordering::Relaxed),
                    requests: self.counters.requests.load(Ordering::Relaxed),
                }],
                layers: Vec::new(),
            }
        })
    }

    fn readiness(&self) -> Vec<Check> {
        let caught_up = !self.invalidations.catching_up();
        vec![Check {
            name: "caught_up",
            ok: caught_up,
            detail: if caught_up { "the embedded log is applied" } else { "stored objects are not trusted" }.into(),
        }]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_position_names_its_stream_and_older_files_still_read() {
        let p = Position { stream: "123".into(), applied: 7, from: 3 };
        assert_eq!(Position::parse(&serde_json::to_string(&p).unwrap()), Some(p));
        assert_eq!(Position::parse("42\n"), Some(Position { stream: String::new(), applied: 42, from: 1 }));
        assert_eq!(Position::parse("{\"stream\":"), None);
    }
}
