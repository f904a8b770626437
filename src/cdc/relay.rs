//! The relay's event loop: replication events in, batches out, confirmed
//! positions back to the server.
//!
//! Two tasks. The follower reads the stream, renders tags, and hands a
//! batch to the deliverer when the batch's window has passed (and the
//! deliverer is free: whatever commits meanwhile joins the batch). The
//! deliverer sends a batch's requests one by one until each is accepted,
//! then its delayed purges when due, and publishes the position that may be
//! confirmed ([`Confirmations`]); the follower reports it to the server.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use pgwire_replication::{Lsn, ReplicationClient, ReplicationEvent};
use serde::Deserialize;
use tokio::sync::{mpsc, watch};

use super::batch::{Batch, Confirmations, FLUSH_TAGS, lsn_text};
use super::mapping::{Bound, Mapping, Unrendered, valid_tag};
use super::pgoutput::{self, Change};
use super::postgres::{self, Target, Unfit};
use super::sink::Sink;
use crate::cli::CliError;
use crate::invalidation::Mode;

/// The prefix of logical decoding messages the relay turns into invalidations.
pub(crate) const MESSAGE_PREFIX: &str = "fresco";
/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01).
const PG_EPOCH_US: i64 = 946_684_800_000_000;
/// Longest wait between reconnection attempts after the stream broke.
const RECONNECT_MAX: Duration = Duration::from_secs(5);
/// Warnings about rows whose tags cannot be rendered, per session, before
/// only the counter tells.
const WARN_LIMIT: usize = 20;

pub(crate) struct Options {
    pub(crate) slot: String,
    pub(crate) publication: String,
    pub(crate) window: Duration,
    pub(crate) metrics: Option<SocketAddr>,
}

/// `fresco cdc --setup`.
pub(crate) async fn setup(target: &Target, mapping: &Mapping, slot: &str, publication: &str) -> Result<(), CliError> {
    let (_client, report) =
        open(target, mapping, slot, publication).await.map_err(|e| CliError::Failed(e.to_string()))?;
    for line in &report.done {
        println!("ok: {line}");
    }
    for line in &report.warnings {
        println!("warning: {line}");
    }
    println!("fresco cdc: {} is ready to follow (slot {slot:?}, publication {publication:?})", target.display());
    Ok(())
}

/// Connects, checks and sets up; the session is left gated before START_REPLICATION.
async fn open(
    target: &Target,
    mapping: &Mapping,
    slot: &str,
    publication: &str,
) -> Result<(ReplicationClient, postgres::Report), Unfit> {
    let cfg = target.replication_config(slot, publication).map_err(Unfit::Other)?;
    let mut client = ReplicationClient::connect_gated(cfg).await.map_err(|e| Unfit::Other(target.explain(&e)))?;
    let report = postgres::prepare(&mut client, target, mapping, slot, publication).await?;
    Ok((client, report))
}

/// The deliverer's published state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Delivered {
    /// Every batch up to this commit end LSN is delivered, delayed purges included.
    confirmed: u64,
}

pub(crate) async fn run(target: Target, mapping: Mapping, sink: Sink, options: Options) -> Result<(), CliError> {
    let (mut client, report) = open(&target, &mapping, &options.slot, &options.publication)
        .await
        .map_err(|e| CliError::Failed(e.to_string()))?;
    for line in &report.done {
        tracing::info!("{line}");
    }
    for line in &report.warnings {
        tracing::warn!("{line}");
    }
    start(&mut client, &target).await.map_err(CliError::Failed)?;
    let metrics = options.metrics.map(|a| format!(" metrics={a}")).unwrap_or_default();
    println!(
        "fresco cdc ready database={} slot={} publication={}{metrics}",
        target.display(),
        options.slot,
        options.publication
    );

    let (batches, receiver) = mpsc::channel::<Batch>(1);
    let (delivered_tx, delivered) = watch::channel(Delivered::default());
    let deliverer = tokio::spawn(deliver(sink, options.slot.clone(), receiver, delivered_tx));
    let mut follower = Follower::new(&mapping, options.window, delivered);
    let mut shutdown = crate::server::shutdown_signal();
    let mut backoff = Duration::from_millis(100);
    let outcome = loop {
        let ended = follower.follow(&mut client, &batches, &mut shutdown).await;
        match ended {
            Ended::Shutdown => break Ok(()),
            Ended::Deliverer => break Err(CliError::Failed("the invalidation deliverer stopped".into())),
            Ended::Stream(e) => {
                tracing::warn!(error = %e, "the replication stream broke; reconnecting (the slot replays what was not confirmed)");
                client.abort();
                loop {
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        _ = shutdown.changed() => return Ok(()),
                    }
                    backoff = (backoff * 2).min(RECONNECT_MAX);
                    match open(&target, &mapping, &options.slot, &options.publication).await {
                        Ok((mut c, _)) => match start(&mut c, &target).await {
                            Ok(()) => {
                                client = c;
                                backoff = Duration::from_millis(100);
                                follower.reconnected();
                                tracing::info!("following the slot again");
                                break;
                            }
                            Err(e) => tracing::warn!(error = %e, "cannot restart replication yet"),
                        },
                        Err(e) => tracing::warn!(error = %e, "cannot reconnect to PostgreSQL yet"),
                    }
                }
            }
        }
    };
    // Deliver what is complete, then stop: what is left is replayed next time.
    if !follower.in_txn && !follower.batch.is_empty() {
        let _ = batches.send(std::mem::take(&mut follower.batch)).await;
    }
    drop(batches);
    match tokio::time::timeout(Duration::from_secs(10), deliverer).await {
        Ok(Ok(Err(e))) => return Err(CliError::Failed(e)),
        Ok(_) => {}
        Err(_) => {
            tracing::warn!("stopped before the last invalidations were delivered; they are replayed at the next start")
        }
    }
    // The last confirmed position goes to the server before the session closes.
    client.update_applied_lsn(Lsn::from_u64(follower.delivered.borrow().confirmed));
    let _ = tokio::time::timeout(Duration::from_secs(2), client.shutdown()).await;
    outcome
}

async fn start(client: &mut ReplicationClient, target: &Target) -> Result<(), String> {
    client.start().await.map_err(|e| target.explain(&e))?;
    client.wait_started().await.map_err(|e| target.explain(&e))
}

/// Why following stopped.
enum Ended {
    Shutdown,
    Deliverer,
    Stream(String),
}

/// An outbox message: `pg_logical_emit_message(true, 'fresco', '{"tags":[...],"mode":"soft"}')`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Outbox {
    tags: Vec<String>,
    #[serde(default)]
    mode: Option<Mode>,
}

struct Follower<'a> {
    mapping: &'a Mapping,
    window: Duration,
    /// Relations of this session: their mapping bound to their columns, or
    /// None for a table the mapping does not name.
    relations: HashMap<u32, Option<Bound>>,
    batch: Batch,
    in_txn: bool,
    /// End LSN of the newest batch handed to the deliverer.
    handed: u64,
    delivered: watch::Receiver<Delivered>,
    /// Handed batches not yet confirmed: end LSN and first commit time.
    unconfirmed: VecDeque<(u64, i64)>,
    /// The server's WAL position as last reported in the stream.
    server_wal: u64,
    warned: usize,
}

fn now_us() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64)
}

impl<'a> Follower<'a> {
    fn new(mapping: &'a Mapping, window: Duration, delivered: watch::Receiver<Delivered>) -> Follower<'a> {
        Follower {
            mapping,
            window,
            relations: HashMap::new(),
            batch: Batch::default(),
            in_txn: false,
            handed: 0,
            delivered,
            unconfirmed: VecDeque::new(),
            server_wal: 0,
            warned: 0,
        }
    }

    /// A new session describes its relations again and resends every
    /// transaction after the confirmed position. The tags of a transaction
    /// cut off mid-way stay in the batch: it had committed (pgoutput sends
    /// nothing else), and it comes again whole.
    fn reconnected(&mut self) {
        self.relations.clear();
        self.in_txn = false;
    }

    async fn follow(
        &mut self,
        client: &mut ReplicationClient,
        batches: &mpsc::Sender<Batch>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Ended {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            let ready = !self.in_txn && self.batch.ready(Instant::now(), self.window);
            let due = if self.in_txn { None } else { self.batch.due(self.window) };
            // A batch too large to grow further waits for the deliverer.
            let may_read = self.in_txn || self.batch.tag_count() < FLUSH_TAGS;
            tokio::select! {
                biased;
                _ = shutdown.changed() => return Ended::Shutdown,
                changed = self.delivered.changed() => {
                    if changed.is_err() {
                        return Ended::Deliverer;
                    }
                    let confirmed = self.delivered.borrow_and_update().confirmed;
                    client.update_applied_lsn(Lsn::from_u64(confirmed));
                    self.report_lag();
                }
                permit = batches.reserve(), if ready => {
                    let Ok(permit) = permit else { return Ended::Deliverer };
                    let batch = std::mem::take(&mut self.batch);
                    self.handed = batch.last_lsn;
                    if let Some(first) = batch.commits.first() {
                        self.unconfirmed.push_back((batch.last_lsn, *first));
                    }
                    permit.send(batch);
                }
                () = sleep_until(due), if due.is_some() && !ready => {}
                event = client.recv(), if may_read => match event {
                    Ok(Some(event)) => self.on_event(client, event),
                    Ok(None) => return Ended::Stream("the server ended the replication stream".into()),
                    Err(e) => return Ended::Stream(e.to_string()),
                },
                _ = tick.tick() => self.report_lag(),
            }
        }
    }

    fn on_event(&mut self, client: &ReplicationClient, event: ReplicationEvent) {
        match event {
            ReplicationEvent::Begin { .. } => {
                self.in_txn = true;
            }
            ReplicationEvent::Commit { end_lsn, commit_time_micros, .. } => {
                self.in_txn = false;
                self.batch.commit(end_lsn.as_u64(), commit_time_micros + PG_EPOCH_US, Instant::now());
                self.server_wal = self.server_wal.max(end_lsn.as_u64());
                metrics::counter!("fresco_cdc_transactions_total").increment(1);
            }
            ReplicationEvent::XLogData { data, wal_end, .. } => {
                self.server_wal = self.server_wal.max(wal_end.as_u64());
                self.on_change(&data);
            }
            ReplicationEvent::Message { transactional, prefix, content, lsn } => {
                if prefix == MESSAGE_PREFIX {
                    self.on_message(transactional, &content, lsn);
                }
            }
            ReplicationEvent::KeepAlive { wal_end, .. } => {
                self.server_wal = self.server_wal.max(wal_end.as_u64());
                // Everything received is delivered: the slot may move up to
                // the server's position (other databases' and unpublished
                // tables' WAL is not held back). A transaction still being
                // decoded commits later, past this position.
                if !self.in_txn && self.batch.is_empty() && self.delivered.borrow().confirmed >= self.handed {
                    client.update_applied_lsn(wal_end);
                }
                self.report_lag();
            }
            ReplicationEvent::StoppedAt { .. } => {}
        }
    }

    fn on_change(&mut self, data: &[u8]) {
        let change = match pgoutput::decode(data) {
            Ok(c) => c,
            Err(e) => {
                // The stream is the server's; a message we cannot read is a
                // bug to report, not a reason to stop invalidating the rest.
                metrics::counter!("fresco_cdc_undecodable_total").increment(1);
                tracing::error!(error = %e, "cannot decode a change; its tags are not invalidated");
                return;
            }
        };
        let mut tags = Vec::new();
        let mut problems = Vec::new();
        let (relation, op) = match &change {
            Change::Relation(rel) => {
                let bound = self.mapping.find(&rel.schema, &rel.name).map(|i| Bound::new(self.mapping, i, rel));
                self.relations.insert(rel.id, bound);
                return;
            }
            Change::Insert { relation, .. } => (*relation, "insert"),
            Change::Update { relation, .. } => (*relation, "update"),
            Change::Delete { relation, .. } => (*relation, "delete"),
            Change::Truncate { relations } => {
                metrics::counter!("fresco_cdc_changes_total", "op" => "truncate").increment(1);
                for id in relations {
                    if let Some(Some(bound)) = self.relations.get(id) {
                        let table = &self.mapping.tables[bound.table];
                        if table.truncate.is_empty() {
                            metrics::counter!("fresco_cdc_unrendered_tags_total", "reason" => "truncate").increment(1);
                            tracing::warn!(table = %table.display_name(), "TRUNCATE: the mapping gives this table no `truncate` tags, so nothing is invalidated");
                        }
                        self.batch.add(table.truncate.iter().cloned(), table.mode, table.delayed_purge);
                    }
                }
                return;
            }
            Change::Other => return,
        };
        metrics::counter!("fresco_cdc_changes_total", "op" => op).increment(1);
        let Some(Some(bound)) = self.relations.get(&relation) else { return };
        match &change {
            Change::Insert { new, .. } => bound.render(new, None, &mut tags, &mut problems),
            Change::Update { old, new, .. } => {
                bound.render(new, old.as_deref(), &mut tags, &mut problems);
                if let Some(old) = old {
                    bound.render(old, None, &mut tags, &mut problems);
                }
            }
            Change::Delete { old, .. } => bound.render(old, None, &mut tags, &mut problems),
            _ => {}
        }
        let table = &self.mapping.tables[bound.table];
        let (mode, delayed) = (table.mode, table.delayed_purge);
        for problem in problems {
            let reason = match &problem {
                Unrendered::MissingColumn(_) => "missing_column",
                Unrendered::Unchanged(_) => "unchanged_toast",
                Unrendered::Invalid(_) => "invalid_tag",
            };
            metrics::counter!("fresco_cdc_unrendered_tags_total", "reason" => reason).increment(1);
            if self.warned < WARN_LIMIT {
                self.warned += 1;
                tracing::warn!(table = %table.display_name(), problem = ?problem, "a tag of a changed row cannot be rendered");
            }
        }
        self.batch.add(tags, mode, delayed);
    }

    fn on_message(&mut self, transactional: bool, content: &[u8], lsn: Lsn) {
        metrics::counter!("fresco_cdc_changes_total", "op" => "message").increment(1);
        if !transactional {
            metrics::counter!("fresco_cdc_bad_messages_total").increment(1);
            tracing::warn!(lsn = %lsn, "a non-transactional `fresco` message is ignored: emit it with pg_logical_emit_message(true, ...) so that it counts only if its transaction commits");
            return;
        }
        match serde_json::from_slice::<Outbox>(content) {
            Ok(outbox) => {
                let (good, bad): (Vec<String>, Vec<String>) = outbox.tags.into_iter().partition(|t| valid_tag(t));
                if !bad.is_empty() {
                    metrics::counter!("fresco_cdc_bad_messages_total").increment(1);
                    tracing::warn!(lsn = %lsn, tags = ?bad, "outbox tags that are empty, too long or not visible text are ignored");
                }
                self.batch.add(good.into_iter().map(|t| t.trim().to_string()), outbox.mode.unwrap_or(Mode::Hard), None);
            }
            Err(e) => {
                metrics::counter!("fresco_cdc_bad_messages_total").increment(1);
                tracing::warn!(lsn = %lsn, error = %e, "an outbox message is not {{\"tags\": [...], \"mode\": \"soft\"|\"hard\"}}; ignored");
            }
        }
    }

    fn report_lag(&mut self) {
        let confirmed = self.delivered.borrow().confirmed;
        while self.unconfirmed.front().is_some_and(|(lsn, _)| *lsn <= confirmed) {
            self.unconfirmed.pop_front();
        }
        let oldest = self.unconfirmed.front().map(|(_, t)| *t).or_else(|| self.batch.commits.first().copied());
        let seconds = oldest.map_or(0.0, |t| (now_us() - t).max(0) as f64 / 1e6);
        metrics::gauge!("fresco_cdc_lag_seconds").set(seconds);
        let caught_up = !self.in_txn && self.batch.is_empty() && confirmed >= self.handed;
        let bytes = if caught_up { 0 } else { self.server_wal.saturating_sub(confirmed) };
        metrics::gauge!("fresco_cdc_lag_bytes").set(bytes as f64);
        metrics::gauge!("fresco_cdc_confirmed_lsn").set(confirmed as f64);
    }
}

async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// The deliverer: batches in order, each request until accepted; delayed
/// purges when due. Returns an error when the node refused a request.
async fn deliver(
    sink: Sink,
    slot: String,
    mut batches: mpsc::Receiver<Batch>,
    delivered: watch::Sender<Delivered>,
) -> Result<(), String> {
    let mut confirmations = Confirmations::default();
    // Delayed purges in the order they fall due: (due, batch end LSN, request).
    let mut delayed: Vec<(Instant, u64, super::batch::Request)> = Vec::new();
    let mut open = true;
    while open || !delayed.is_empty() {
        let next_due = delayed.iter().map(|(due, _, _)| *due).min();
        tokio::select! {
            batch = batches.recv(), if open => {
                let Some(batch) = batch else {
                    open = false;
                    continue;
                };
                for request in batch.requests(&slot) {
                    sink.deliver(&request).await.map_err(|e| format!("invalidation refused: {e}"))?;
                    metrics::counter!("fresco_cdc_invalidations_total", "kind" => "immediate").increment(1);
                    metrics::counter!("fresco_cdc_tags_total").increment(request.tags.len() as u64);
                }
                let now = now_us();
                for commit in &batch.commits {
                    metrics::histogram!("fresco_cdc_commit_to_invalidation_seconds").record((now - commit).max(0) as f64 / 1e6);
                }
                let later = batch.delayed_requests(&slot);
                let accepted = Instant::now();
                confirmations.delivered(batch.last_lsn, later.len());
                delayed.extend(later.into_iter().map(|(d, r)| (accepted + d, batch.last_lsn, r)));
                tracing::debug!(lsn = %lsn_text(batch.last_lsn), transactions = batch.commits.len(), "batch delivered");
            }
            () = sleep_until(next_due), if next_due.is_some() => {
                let now = Instant::now();
                let (due, rest): (Vec<_>, Vec<_>) = delayed.drain(..).partition(|(at, _, _)| *at <= now);
                delayed = rest;
                for (_, lsn, request) in due {
                    sink.deliver(&request).await.map_err(|e| format!("delayed invalidation refused: {e}"))?;
                    metrics::counter!("fresco_cdc_invalidations_total", "kind" => "delayed").increment(1);
                    confirmations.delayed_done(lsn);
                }
            }
        }
        let _ = delivered.send(Delivered { confirmed: confirmations.confirmed() });
    }
    Ok(())
}
