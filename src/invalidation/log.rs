//! The invalidation log: what orders invalidations and makes them durable.
//!
//! [`EmbeddedLog`] is the one-node log, an append-only file of JSON lines
//! in the data directory (`log_file.rs`) whose older history is folded into
//! a snapshot; the cluster's log is a JetStream stream (`nats.rs`). Both
//! are appended to through `service::KeyedLog`.
//!
//! The embedded log commits in groups: one writer task takes every request
//! queued while the previous fsync ran, gives identical requests (same
//! selectors, same mode) one entry, writes the batch, fsyncs once, applies
//! it, and only then answers. Merging this way never loses an invalidation:
//! a merged request gets a version assigned after it arrived, which outranks
//! every fetch that started before.
//!
//! A request with a client's `Idempotency-Key` is written with its key and
//! never merged with others; a request under a key the log holds from the
//! last `IDEMPOTENCY_WINDOW` (read back from the file at start-up, so a
//! restart in between changes nothing) gets that entry instead of a new
//! one, as the cluster's stream deduplicates by message id.
//!
//! Nothing acknowledged is lost and no version is handed out twice: a
//! record is acknowledged only after its fsync; a write that fails is cut
//! back to the last acknowledged record (or, if even that fails, the log
//! refuses everything until a restart) and its versions are skipped; a torn
//! tail left by a crash is cut at start-up before anything is appended.

use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use super::audit::Audit;
use super::log_file;
use super::selectors::{Invalidations, Mode, Selector};
use super::service::{IDEMPOTENCY_WINDOW, MAX_KEYS};
use crate::data_dir::{self, DataDirLock};

/// An invalidation as requested, before it has a version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewInvalidation {
    pub selectors: Vec<Selector>,
    pub mode: Mode,
    /// Free text: why.
    pub reason: String,
    /// Who: the token name, or `origin` for Cache-Group-Invalidation.
    pub issuer: String,
    /// Set on a purge of everything, which needs the explicit flag.
    #[serde(default)]
    pub break_glass: bool,
}

/// An accepted invalidation: its place in the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub version: u64,
    #[serde(flatten)]
    pub invalidation: NewInvalidation,
    /// When the log accepted it, in milliseconds since the Unix epoch.
    pub accepted_ms: u64,
}

impl Entry {
    pub fn id(&self) -> String {
        self.version.to_string()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogError {
    /// The writer's queue is full: come back later.
    Busy,
    /// The log cannot take writes (disk error, bus down).
    Unavailable(String),
}

impl std::fmt::Display for LogError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LogError::Busy => f.write_str("the invalidation log is busy; retry shortly"),
            LogError::Unavailable(e) => write!(f, "the invalidation log is unavailable: {e}"),
        }
    }
}

pub type Accepting<'a> = Pin<Box<dyn Future<Output = Result<Entry, LogError>> + Send + 'a>>;

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Most requests waiting for the writer; beyond it `append` answers Busy.
const QUEUE: usize = 10_000;
/// Most requests one commit takes.
const BATCH: usize = 1_000;

/// A request, the client's `Idempotency-Key` if it sent one, and where the
/// outcome goes.
type Pending = (NewInvalidation, Option<String>, oneshot::Sender<Result<Entry, LogError>>);

/// How much of the log compaction keeps: the newest entries, as many as
/// both limits allow, stay in the log (and so in the audit after a
/// restart); older ones are folded into the snapshot. Compaction starts
/// when the log holds twice either limit.
#[derive(Debug, Clone, Copy)]
struct Retain {
    entries: usize,
    bytes: u64,
}

impl Retain {
    const DEFAULT: Retain = Retain { entries: 1_000, bytes: 4 << 20 };
}

/// The one-node log: JSON lines in `DATA_DIR/invalidations.log`, older
/// history folded into `DATA_DIR/invalidations.snapshot`.
pub struct EmbeddedLog {
    /// Taken on drop so the writer ends, releasing the data directory.
    queue: Option<mpsc::Sender<Pending>>,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl Drop for EmbeddedLog {
    fn drop(&mut self) {
        self.queue.take();
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

impl EmbeddedLog {
    /// Locks `dir`, replays the snapshot and the log into `invalidations`
    /// and `audit`, cuts a torn tail, and starts the writer. Fails when the
    /// directory is in use or cannot be used, or the log is damaged.
    pub fn open(
        dir: &Path,
        node: &str,
        invalidations: Arc<Invalidations>,
        audit: Arc<Audit>,
    ) -> Result<Arc<EmbeddedLog>, String> {
        Self::start(Writer::open(dir, node, invalidations, audit, Retain::DEFAULT)?)
    }

    fn start(writer: Writer) -> Result<Arc<EmbeddedLog>, String> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let writer = std::thread::Builder::new()
            .name("fresco-log".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| format!("cannot start the log writer: {e}"))?;
        Ok(Arc::new(EmbeddedLog { queue: Some(tx), writer: Some(writer) }))
    }
}

impl EmbeddedLog {
    /// Resolves once the invalidation is durable and applied.
    pub fn append(&self, invalidation: NewInvalidation) -> Accepting<'_> {
        self.append_under(invalidation, None)
    }

    /// As `append`, under a client's `Idempotency-Key`: a key the log holds
    /// from the last `IDEMPOTENCY_WINDOW` answers with its entry.
    pub fn append_under(&self, invalidation: NewInvalidation, key: Option<String>) -> Accepting<'_> {
        Box::pin(async move {
            let (tx, rx) = oneshot::channel();
            let queue = self.queue.as_ref().ok_or_else(|| LogError::Unavailable("the log is closed".into()))?;
            queue.try_send((invalidation, key, tx)).map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => LogError::Busy,
                mpsc::error::TrySendError::Closed(_) => LogError::Unavailable("the log writer stopped".into()),
            })?;
            rx.await.unwrap_or_else(|_| Err(LogError::Unavailable("the log writer stopped".into())))
        })
    }
}

fn apply(invalidations: &Invalidations, entry: &Entry) {
    invalidations.apply(&entry.invalidation.selectors, entry.invalidation.mode, entry.version);
}

/// Says that this node applied `entry` (id, selectors, who, why, how long
/// after its acceptance): one info line, and the lag in
/// `fresco_invalidation_lag_seconds`. Replays at start-up are summed up in
/// one line instead.
pub(crate) fn report_applied(entry: &Entry, applied_ms: u64) {
    let lag_ms = applied_ms.saturating_sub(entry.accepted_ms);
    metrics::histogram!("fresco_invalidation_lag_seconds").record(lag_ms as f64 / 1000.0);
    let inv = &entry.invalidation;
    let selectors: Vec<String> = inv
        .selectors
        .iter()
        .map(|s| match s {
            Selector::Url(u) => format!("url:{u}"),
            Selector::Prefix(p) => format!("prefix:{p}"),
            Selector::Tag(t) => format!("tag:{t}"),
            Selector::All => "all".to_string(),
        })
        .collect();
    let mode = match inv.mode {
        Mode::Hard => "hard",
        Mode::Soft => "soft",
    };
    tracing::info!(
        id = entry.version,
        selectors = %selectors.join(" "),
        mode,
        issuer = %inv.issuer,
        reason = %inv.reason,
        lag_ms,
        "invalidation applied"
    );
}

struct Writer {
    /// The log, opened for appending.
    file: File,
    dir: PathBuf,
    /// Where the last durable record ends; a failed write is cut back to it.
    good: u64,
    /// Entries in the log file.
    lines: usize,
    /// The next version to hand out. It only grows: a version given to a
    /// write that failed is skipped, never handed out again.
    next: u64,
    /// The newest durable version.
    last: u64,
    /// Set when a failed write could not be cut back: the file's tail is
    /// unknown, so nothing more is accepted until a restart replays it.
    broken: Option<String>,
    retain: Retain,
    /// Entry count at which the next compaction starts.
    compact_at: usize,
    /// Size of the snapshot file. Compaction rewrites it whole, so it waits
    /// until the log has grown at least as large: the cost stays in
    /// proportion to the entries written, however many selectors there are.
    snapshot_bytes: u64,
    invalidations: Arc<Invalidations>,
    audit: Arc<Audit>,
    node: String,
    /// Client keys of the entries accepted in the last IDEMPOTENCY_WINDOW.
    keys: Keys,
    /// Held while the writer lives.
    _lock: DataDirLock,
}

impl Writer {
    fn open(
        dir: &Path,
        node: &str,
        invalidations: Arc<Invalidations>,
        audit: Arc<Audit>,
        retain: Retain,
    ) -> Result<Writer, String> {
        // Before reading anything: another node may be appending.
        let lock = DataDirLock::acquire(dir)?;
        let path = dir.join(log_file::LOG);
        let snapshot_path = dir.join(log_file::SNAPSHOT);
        let snapshot = log_file::read_snapshot(&snapshot_path)?;
        let snapshot_bytes = std::fs::metadata(&snapshot_path).map_or(0, |m| m.len());
        let scan = log_file::read_log(&path)?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        // A log (or data directory) just created must still exist after a
        // power loss, or the entries fsynced into it go with it.
        for d in [dir, dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."))] {
            data_dir::sync_dir(d).map_err(|e| format!("cannot sync directory {}: {e}", d.display()))?;
        }
        if scan.good < scan.len {
            // Never acknowledged (its fsync did not complete). Cut it before
            // anything is appended, or the next entry would be glued onto it.
            file.set_len(scan.good)
                .and_then(|()| file.sync_all())
                .and_then(|()| data_dir::sync_dir(dir))
                .map_err(|e| format!("cannot cut the torn tail of {} at offset {}: {e}", path.display(), scan.good))?;
            tracing::warn!(
                path = %path.display(),
                offset = scan.good,
                bytes = scan.len - scan.good,
                "cut a torn tail (an interrupted, never acknowledged write) off the invalidation log"
            );
        }
        for record in &snapshot.records {
            let selector = std::slice::from_ref(&record.selector);
            for (mode, version) in [(Mode::Hard, record.hard), (Mode::Soft, record.soft)] {
                if version > 0 {
                    invalidations.apply(selector, mode, version);
                }
            }
        }
        invalidations.advance(snapshot.version);
        let now = now_ms();
        for entry in &scan.entries {
            apply(&invalidations, entry);
            audit.record(entry.clone());
            audit.applied(entry.version, node, now);
        }
        let last = scan.entries.last().map_or(snapshot.version, |e| e.version.max(snapshot.version));
        let next = snapshot.next.max(last + 1);
        // Entries folded into the snapshot are not in the audit.
        audit.complete_from(scan.entries.first().map_or(next, |e| e.version));
        if last > 0 {
            tracing::info!(
                snapshot_version = snapshot.version,
                snapshot_records = snapshot.records.len(),
                entries = scan.entries.len(),
                version = last,
                "replayed the invalidation log"
            );
        }
        metrics::gauge!("fresco_invalidation_log_version").set(last as f64);
        let lines = scan.entries.len();
        let mut keys = Keys::default();
        for entry in &scan.entries {
            if let Some(key) = scan.keys.get(&entry.version) {
                keys.insert(key.clone(), entry.clone());
            }
        }
        keys.expire(now);
        Ok(Writer {
            file,
            dir: dir.to_path_buf(),
            good: scan.good,
            lines,
            next,
            last,
            broken: None,
            retain,
            compact_at: 2 * retain.entries,
            snapshot_bytes,
            invalidations,
            audit,
            node: node.to_string(),
            keys,
            _lock: lock,
        })
    }

    fn path(&self) -> PathBuf {
        self.dir.join(log_file::LOG)
    }

    /// Runs on its own thread: fsync blocks, and must not stall the runtime.
    fn run(mut self, mut rx: mpsc::Receiver<Pending>) {
        while let Some(first) = rx.blocking_recv() {
            let mut batch = vec![first];
            while batch.len() < BATCH {
                match rx.try_recv() {
                    Ok(p) => batch.push(p),
                    Err(_) => break,
                }
            }
            self.commit(batch);
        }
        // A clean shutdown: leave the next start-up as little to replay as
        // a compaction would.
        if self.broken.is_none() && self.lines > self.retain.entries {
            self.compact();
        }
    }

    fn commit(&mut self, batch: Vec<Pending>) {
        if let Some(why) = &self.broken {
            for (_, _, tx) in batch {
                let _ = tx.send(Err(LogError::Unavailable(why.clone())));
            }
            return;
        }
        let accepted_ms = now_ms();
        self.keys.expire(accepted_ms);
        let mut entries: Vec<(Entry, Option<String>)> = Vec::new();
        let mut waiters: Vec<(usize, oneshot::Sender<Result<Entry, LogError>>)> = Vec::with_capacity(batch.len());
        for (inv, key, tx) in batch {
            if let Some(held) = key.as_ref().and_then(|k| self.keys.get(k)) {
                let _ = tx.send(Ok(held.clone()));
                continue;
            }
            let same = entries.iter().position(|(e, k)| match &key {
                Some(_) => *k == key,
                None => k.is_none() && e.invalidation.selectors == inv.selectors && e.invalidation.mode == inv.mode,
            });
            let index = match same {
                Some(i) => i,
                None => {
                    entries.push((Entry { version: self.next, invalidation: inv, accepted_ms }, key));
                    self.next += 1;
                    entries.len() - 1
                }
            };
            waiters.push((index, tx));
        }
        if entries.is_empty() {
            return;
        }
        if let Err(msg) = self.write(&entries) {
            for (_, tx) in waiters {
                let _ = tx.send(Err(LogError::Unavailable(msg.clone())));
            }
            return;
        }
        let applied_ms = now_ms();
        for (e, key) in &entries {
            apply(&self.invalidations, e);
            report_applied(e, applied_ms);
            self.audit.record(e.clone());
            self.audit.applied(e.version, &self.node, applied_ms);
            if let Some(key) = key {
                self.keys.insert(key.clone(), e.clone());
            }
        }
        metrics::counter!("fresco_invalidations_accepted_total").increment(waiters.len() as u64);
        metrics::counter!("fresco_invalidations_applied_total").increment(entries.len() as u64);
        metrics::gauge!("fresco_invalidation_log_version").set(self.last as f64);
        for (i, tx) in waiters {
            let _ = tx.send(Ok(entries[i].0.clone()));
        }
        if (self.lines >= self.compact_at || self.good >= 2 * self.retain.bytes) && self.good >= self.snapshot_bytes {
            self.compact();
        }
    }

    /// Appends `entries` and makes them durable, or leaves the file as it
    /// was: a failed write (a full disk, an I/O error) may have put part of
    /// a record in the file, which the next record must not be glued onto.
    fn write(&mut self, entries: &[(Entry, Option<String>)]) -> Result<(), String> {
        let text =
            entries.iter().map(|(e, k)| log_file::encode(e, k.as_deref())).collect::<Result<String, String>>()?;
        let written = self.file.write_all(text.as_bytes()).and_then(|()| self.file.sync_data());
        let Err(err) = written else {
            self.good += text.len() as u64;
            self.lines += entries.len();
            self.last = entries.last().map_or(self.last, |(e, _)| e.version);
            return Ok(());
        };
        let path = self.path();
        let msg = format!("cannot write {}: {err}", path.display());
        match self.file.set_len(self.good).and_then(|()| self.file.sync_all()) {
            Ok(()) => tracing::error!(offset = self.good, "{msg}; cut the log back to its last acknowledged entry"),
            Err(cut) => {
                let why = format!(
                    "{msg}; cannot cut it back to offset {} ({cut}): refusing invalidations until a restart replays it",
                    self.good
                );
                tracing::error!("{why}");
                self.broken = Some(why);
            }
        }
        Err(msg)
    }

    /// Folds every entry into the snapshot and rewrites the log with only
    /// the newest ones, so start-up replays a bounded amount. A failure
    /// leaves both files valid and is retried after more entries.
    fn compact(&mut self) {
        match self.try_compact() {
            Ok(()) => {
                self.compact_at = 2 * self.retain.entries;
                tracing::info!(version = self.last, kept = self.lines, "compacted the invalidation log");
            }
            Err(e) => {
                self.compact_at = self.lines + self.retain.entries;
                tracing::warn!("cannot compact the invalidation log: {e}");
            }
        }
    }

    fn try_compact(&mut self) -> Result<(), String> {
        let path = self.path();
        let snapshot_path = self.dir.join(log_file::SNAPSHOT);
        let scan = log_file::read_log(&path)?;
        let snapshot = log_file::read_snapshot(&snapshot_path)?.fold(&scan.entries, self.next);
        // The snapshot first: until the log is replaced, both hold the
        // folded entries, and replaying them twice changes nothing.
        self.snapshot_bytes = log_file::write_snapshot(&snapshot_path, &snapshot)?;
        let mut kept: Vec<String> = Vec::new();
        let mut bytes = 0;
        for entry in scan.entries.iter().rev().take(self.retain.entries) {
            let line = log_file::encode(entry, scan.keys.get(&entry.version).map(String::as_str))?;
            bytes += line.len() as u64;
            if bytes > self.retain.bytes {
                break;
            }
            kept.push(line);
        }
        let text: String = kept.iter().rev().map(String::as_str).collect();
        self.file =
            data_dir::replace(&path, text.as_bytes()).map_err(|e| format!("cannot rewrite {}: {e}", path.display()))?;
        self.good = text.len() as u64;
        self.lines = kept.len();
        Ok(())
    }
}

/// The client keys of recent entries, oldest first for expiry.
#[derive(Default)]
struct Keys {
    entries: HashMap<String, Entry>,
    order: VecDeque<(u64, String)>,
}

impl Keys {
    fn get(&self, key: &str) -> Option<&Entry> {
        self.entries.get(key)
    }

    fn insert(&mut self, key: String, entry: Entry) {
        self.order.push_back((entry.accepted_ms, key.clone()));
        self.entries.insert(key, entry);
    }

    /// Forgets keys accepted IDEMPOTENCY_WINDOW before `now_ms`, and the
    /// oldest beyond MAX_KEYS.
    fn expire(&mut self, now_ms: u64) {
        let window = IDEMPOTENCY_WINDOW.as_millis() as u64;
        while let Some((at, _)) = self.order.front() {
            if now_ms.saturating_sub(*at) < window && self.order.len() <= MAX_KEYS {
                break;
            }
            if let Some((_, key)) = self.order.pop_front() {
                self.entries.remove(&key);
            }
        }
    }
}

/// How long `append` may wait before the caller reports a timeout; the
/// embedded log answers in one fsync.
pub const APPEND_TIMEOUT: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::invalidation::Validity;
    use crate::store::CachedObject;

    fn tag(t: &str) -> NewInvalidation {
        NewInvalidation {
            selectors: vec![Selector::Tag(t.into())],
            mode: Mode::Hard,
            reason: "test".into(),
            issuer: "t".into(),
            break_glass: false,
        }
    }

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("fresco-log-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    type Opened = (Arc<EmbeddedLog>, Arc<Invalidations>, Arc<Audit>);

    /// Opens `d` as a restarted node would. A log dropped just before
    /// releases the directory lock when its writer task ends, which a busy
    /// runtime may not have run yet: wait for that, boundedly.
    fn open(d: &Path) -> Result<Opened, String> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let (inv, audit) = (Arc::new(Invalidations::default()), Arc::new(Audit::default()));
            match EmbeddedLog::open(d, "n1", inv.clone(), audit.clone()) {
                Err(e) if e.contains("in use by another") && std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                opened => return Ok((opened?, inv, audit)),
            }
        }
    }

    /// Every entry the audit holds after opening `d`: (version, tag).
    fn history(audit: &Audit) -> Vec<(u64, String)> {
        let mut all: Vec<(u64, String)> = audit
            .page(None, usize::MAX)
            .into_iter()
            .map(|r| match &r.entry.invalidation.selectors[..] {
                [Selector::Tag(t)] => (r.entry.version, t.clone()),
                other => panic!("unexpected selectors {other:?}"),
            })
            .collect();
        all.sort();
        all
    }

    #[tokio::test]
    async fn appended_entries_survive_reopening() {
        let d = dir("reopen");
        let (log, inv, _) = open(&d).unwrap();
        let a = log.append(tag("a")).await.unwrap();
        let b = log.append(tag("b")).await.unwrap();
        assert_eq!((a.version, b.version), (1, 2));
        assert_eq!(inv.applied(), 2);
        drop(log);
        let (log, again, audit) = open(&d).unwrap();
        assert_eq!(again.applied(), 2, "replayed");
        assert_eq!(audit.get(2).unwrap().entry.invalidation.selectors, vec![Selector::Tag("b".into())]);
        assert_eq!(log.append(tag("c")).await.unwrap().version, 3, "versions continue after a restart");
    }

    /// Issue 8 item 11: a retry under the same `Idempotency-Key` yields the
    /// same entry, also after a restart and after a compaction; keyed
    /// requests are never merged with others.
    #[tokio::test]
    async fn a_client_key_finds_its_entry_after_a_restart() {
        let d = dir("keys");
        let (log, _, _) = open(&d).unwrap();
        let first = log.append_under(tag("k"), Some("key-1".into())).await.unwrap();
        let unkeyed = log.append(tag("k")).await.unwrap();
        assert_ne!(first.version, unkeyed.version, "a keyed request is its own entry");
        assert_eq!(log.append_under(tag("k"), Some("key-1".into())).await.unwrap(), first);
        drop(log);
        let (log, _, _) = open(&d).unwrap();
        assert_eq!(log.append_under(tag("k"), Some("key-1".into())).await.unwrap(), first, "after a restart");
        let other = log.append_under(tag("k"), Some("key-2".into())).await.unwrap();
        assert!(other.version > unkeyed.version);
        drop(log);
        let (_, _, audit) = open(&d).unwrap();
        assert_eq!(history(&audit).len(), 3, "three entries in all");
    }

    #[test]
    fn client_keys_are_forgotten_after_the_window() {
        let mut keys = Keys::default();
        let entry = |ms| Entry { version: 1, invalidation: tag("a"), accepted_ms: ms };
        keys.insert("old".into(), entry(1_000));
        keys.insert("new".into(), entry(60_000));
        let window = IDEMPOTENCY_WINDOW.as_millis() as u64;
        keys.expire(1_000 + window - 1);
        assert!(keys.get("old").is_some() && keys.get("new").is_some());
        keys.expire(1_000 + window);
        assert!(keys.get("old").is_none() && keys.get("new").is_some());
    }

    #[tokio::test]
    async fn identical_requests_in_one_commit_share_an_entry() {
        let d = dir("merge");
        let (log, _, _) = open(&d).unwrap();
        let results =
            futures_util::future::join_all((0..200).map(|i| log.append(tag(if i % 2 == 0 { "x" } else { "y" })))).await;
        let versions: std::collections::BTreeSet<u64> = results.iter().map(|r| r.as_ref().unwrap().version).collect();
        assert!(versions.len() < 200, "a burst of identical selectors is merged");
        assert!(results.iter().all(|r| r.is_ok()), "nothing accepted is dropped");
    }

    #[tokio::test]
    async fn a_torn_tail_is_cut_at_start_up_so_later_entries_survive_every_restart() {
        let d = dir("torn");
        let (log, _, _) = open(&d).unwrap();
        log.append(tag("a")).await.unwrap();
        log.append(tag("b")).await.unwrap();
        drop(log);
        let path = d.join(log_file::LOG);
        let acknowledged = std::fs::metadata(&path).unwrap().len();
        // A crash in the middle of writing entry 3.
        let torn = log_file::encode(&Entry { version: 3, invalidation: tag("torn"), accepted_ms: 1 }, None).unwrap();
        OpenOptions::new().append(true).open(&path).unwrap().write_all(&torn.as_bytes()[..25]).unwrap();
        let (log, _, _) = open(&d).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), acknowledged, "the torn tail is cut before appending");
        assert_eq!(log.append(tag("c")).await.unwrap().version, 3);
        drop(log);
        for round in 0..2 {
            let (log, _, audit) = open(&d).unwrap_or_else(|e| panic!("restart {round}: {e}"));
            let want: Vec<(u64, String)> = ["a", "b", "c", "d"]
                .iter()
                .take(3 + round)
                .enumerate()
                .map(|(i, t)| (i as u64 + 1, t.to_string()))
                .collect();
            assert_eq!(history(&audit), want, "restart {round}");
            if round == 0 {
                assert_eq!(log.append(tag("d")).await.unwrap().version, 4);
            }
        }
    }

    #[tokio::test]
    async fn a_damaged_record_before_good_ones_stops_start_up_and_changes_nothing() {
        let d = dir("damaged");
        let (log, _, _) = open(&d).unwrap();
        log.append(tag("a")).await.unwrap();
        drop(log);
        let path = d.join(log_file::LOG);
        let mut content = std::fs::read(&path).unwrap();
        let at = content.len();
        content.extend_from_slice(b"{\"type\":\"inv\n");
        content.extend_from_slice(
            log_file::encode(&Entry { version: 2, invalidation: tag("b"), accepted_ms: 1 }, None).unwrap().as_bytes(),
        );
        std::fs::write(&path, &content).unwrap();
        let err = open(&d).err().expect("refused");
        assert!(err.contains(&*path.to_string_lossy()) && err.contains(&format!("offset {at}")), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), content, "nothing is cut from a damaged log");
    }

    #[tokio::test]
    async fn the_data_directory_is_locked_before_the_log_is_read() {
        let d = dir("lock");
        let (log, _, _) = open(&d).unwrap();
        log.append(tag("a")).await.unwrap();
        // Bytes a running node is writing must not be cut as a torn tail by
        // a second node pointed at the same directory.
        let path = d.join(log_file::LOG);
        OpenOptions::new().append(true).open(&path).unwrap().write_all(b"{\"type\":").unwrap();
        let len = std::fs::metadata(&path).unwrap().len();
        let (inv, audit) = (Arc::new(Invalidations::default()), Arc::new(Audit::default()));
        let err = EmbeddedLog::open(&d, "n1", inv, audit).err().expect("a second node is refused");
        assert!(err.contains("in use by another fresco process"), "{err}");
        assert_eq!(std::fs::metadata(&path).unwrap().len(), len);
    }

    #[tokio::test]
    async fn a_write_that_cannot_be_cut_back_stops_the_log_and_no_version_is_reused() {
        let d = dir("broken");
        let (inv, audit) = (Arc::new(Invalidations::default()), Arc::new(Audit::default()));
        let mut writer = Writer::open(&d, "n1", inv.clone(), audit, Retain::DEFAULT).unwrap();
        let commit = |writer: &mut Writer, t: &str| {
            let (tx, mut rx) = oneshot::channel();
            writer.commit(vec![(tag(t), None, tx)]);
            rx.try_recv().expect("answered")
        };
        assert_eq!(commit(&mut writer, "a").unwrap().version, 1);
        // A handle that can neither write nor truncate: the failed write's
        // tail cannot be cut, so the log must stop taking entries.
        writer.file = File::open(d.join(log_file::LOG)).unwrap();
        let failed = commit(&mut writer, "b").unwrap_err();
        assert!(matches!(&failed, LogError::Unavailable(m) if m.contains("cannot write")), "{failed:?}");
        assert_eq!(writer.next, 3, "version 2 went to the failed write and stays used");
        writer.file = OpenOptions::new().append(true).open(d.join(log_file::LOG)).unwrap();
        let refused = commit(&mut writer, "c").unwrap_err();
        assert!(matches!(&refused, LogError::Unavailable(m) if m.contains("until a restart")), "{refused:?}");
        assert_eq!(inv.applied(), 1, "nothing refused was applied");
        drop(writer);
        let (log, _, audit) = open(&d).unwrap();
        assert_eq!(history(&audit), vec![(1, "a".to_string())]);
        assert!(log.append(tag("d")).await.unwrap().version > 1);
    }

    /// A small tmpfs, so that writes fail with ENOSPC the way a full disk
    /// does. Needs root; `None` (with the reason printed) otherwise.
    fn small_tmpfs(d: &Path, size: &str) -> Option<TmpfsMount> {
        std::fs::create_dir_all(d).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(d)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(TmpfsMount(d.to_path_buf())),
            Ok(o) => {
                eprintln!("skipped: cannot mount a tmpfs (needs root): {}", String::from_utf8_lossy(&o.stderr).trim());
                None
            }
            Err(e) => {
                eprintln!("skipped: cannot run mount: {e}");
                None
            }
        }
    }

    struct TmpfsMount(PathBuf);

    impl Drop for TmpfsMount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }

    /// Fills the file system holding `dir` with `dir/filler`.
    fn fill(dir: &Path) {
        let mut f = File::create(dir.join("filler")).unwrap();
        let block = [0u8; 4096];
        for _ in 0..1_000_000 {
            if f.write(&block).map_or(true, |n| n == 0) {
                break;
            }
        }
        let _ = f.flush();
    }

    #[tokio::test]
    async fn a_full_disk_refuses_without_leaving_a_partial_record_and_skips_the_version() {
        let d = dir("enospc");
        let Some(_mount) = small_tmpfs(&d, "64k") else { return };
        let (log, _, _) = open(&d).unwrap();
        let long = |t: &str| NewInvalidation { reason: "x".repeat(3000), ..tag(t) };
        assert_eq!(log.append(long("a")).await.unwrap().version, 1);
        let path = d.join(log_file::LOG);
        let good = std::fs::metadata(&path).unwrap().len();
        fill(&d);
        for t in ["b", "c"] {
            let err = log.append(long(t)).await.unwrap_err();
            assert!(matches!(&err, LogError::Unavailable(m) if m.contains("No space")), "{err:?}");
            assert_eq!(std::fs::metadata(&path).unwrap().len(), good, "the partial record is cut");
        }
        std::fs::remove_file(d.join("filler")).unwrap();
        assert_eq!(log.append(long("e")).await.unwrap().version, 4, "versions 2 and 3 are skipped, not reused");
        drop(log);
        let (log, _, audit) = open(&d).unwrap();
        assert_eq!(history(&audit), vec![(1, "a".to_string()), (4, "e".to_string())]);
        assert_eq!(log.append(tag("f")).await.unwrap().version, 5);
    }

    fn object(tags: &[&str]) -> CachedObject {
        CachedObject::for_test("http://h/x", tags, crate::invalidation::Stamp::default())
    }

    #[tokio::test]
    async fn compaction_bounds_the_log_and_keeps_every_purge_in_force_across_restarts() {
        let d = dir("compact");
        let retain = Retain { entries: 5, bytes: 1 << 20 };
        let start = |d: &Path| {
            let (inv, audit) = (Arc::new(Invalidations::default()), Arc::new(Audit::default()));
            let log = EmbeddedLog::start(Writer::open(d, "n1", inv.clone(), audit.clone(), retain).unwrap()).unwrap();
            (log, inv, audit)
        };
        let path = d.join(log_file::LOG);
        let (log, _, _) = start(&d);
        for i in 0..57u64 {
            // Soft for every third, so some tags end up only soft-purged.
            let mode = if i % 3 == 0 { Mode::Soft } else { Mode::Hard };
            let e = log.append(NewInvalidation { mode, ..tag(&format!("t{}", i % 20)) }).await.unwrap();
            assert_eq!(e.version, i + 1);
            let lines = std::fs::read_to_string(&path).unwrap().lines().count();
            assert!(lines <= 2 * retain.entries, "{lines} lines after {} entries", i + 1);
        }
        drop(log);
        let lines = std::fs::read_to_string(&path).unwrap().lines().count();
        assert_eq!(lines, retain.entries, "a clean shutdown compacts");
        let (log, inv, audit) = start(&d);
        assert_eq!(inv.applied(), 57);
        let recent: Vec<u64> = history(&audit).iter().map(|(v, _)| *v).collect();
        assert_eq!(recent, (53..=57).collect::<Vec<_>>(), "the newest entries keep their audit");
        // An object fetched before everything: hard-purged if any purge of
        // its tag was hard, else soft-purged.
        for k in 0..20u64 {
            let hard = (k..57).step_by(20).any(|i| i % 3 != 0);
            let want = if hard { Validity::Hard } else { Validity::Soft };
            assert_eq!(inv.check(&object(&[&format!("t{k}")])), want, "t{k}");
        }
        assert_eq!(inv.check(&object(&["never"])), Validity::Valid);
        assert_eq!(log.append(tag("next")).await.unwrap().version, 58, "versions continue after compaction");
    }
}
