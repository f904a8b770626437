//! The invalidation log: what orders invalidations and makes them durable.
//!
//! [`InvalidationLog`] is the interface; [`EmbeddedLog`] is the one-node
//! implementation, an append-only file of JSON lines in the data directory.
//! A distributed log (a replicated stream whose sequence numbers are the
//! versions) implements the same trait.
//!
//! The embedded log commits in groups: one writer task takes every request
//! queued while the previous fsync ran, gives identical requests (same
//! selectors, same mode) one entry, writes the batch, fsyncs once, applies
//! it, and only then answers. Merging this way never loses an invalidation:
//! a merged request gets a version assigned after it arrived, which outranks
//! every fetch that started before.

use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use super::audit::Audit;
use super::selectors::{Invalidations, Mode, Selector};

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

/// Orders invalidations and makes them durable. `append` resolves once the
/// invalidation is durable; a node applies what the log orders.
pub trait InvalidationLog: Send + Sync + 'static {
    fn append(&self, invalidation: NewInvalidation) -> Accepting<'_>;
}

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Most requests waiting for the writer; beyond it `append` answers Busy.
const QUEUE: usize = 10_000;
/// Most requests one commit takes.
const BATCH: usize = 1_000;

type Pending = (NewInvalidation, oneshot::Sender<Result<Entry, LogError>>);

/// The one-node log: JSON lines in `DATA_DIR/invalidations.log`.
pub struct EmbeddedLog {
    /// Taken on drop so the writer ends, releasing the file lock.
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

/// One line of the log file.
#[derive(Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum Line {
    Invalidation(Entry),
}

impl EmbeddedLog {
    /// Opens (or creates) the log in `dir`, replays it into `invalidations`
    /// and `audit`, and starts the writer. Fails when the directory or the
    /// file cannot be used.
    pub fn open(
        dir: &Path,
        node: &str,
        invalidations: Arc<Invalidations>,
        audit: Arc<Audit>,
    ) -> Result<Arc<EmbeddedLog>, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create data directory {}: {e}", dir.display()))?;
        let path = dir.join("invalidations.log");
        let replayed = replay(&path)?;
        let mut next = 1;
        for entry in &replayed {
            apply(&invalidations, entry);
            audit.record(entry.clone());
            audit.applied(entry.version, node, now_ms());
            next = next.max(entry.version + 1);
        }
        if !replayed.is_empty() {
            tracing::info!(entries = replayed.len(), version = next - 1, "replayed the invalidation log");
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        // Two nodes appending to one log would interleave versions.
        file.try_lock().map_err(|_| format!("{} is in use by another fresco process (`data_dir`)", dir.display()))?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let writer = Writer { file, path, next, invalidations, audit, node: node.to_string() };
        let writer = std::thread::Builder::new()
            .name("fresco-log".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| format!("cannot start the log writer: {e}"))?;
        Ok(Arc::new(EmbeddedLog { queue: Some(tx), writer: Some(writer) }))
    }
}

impl InvalidationLog for EmbeddedLog {
    fn append(&self, invalidation: NewInvalidation) -> Accepting<'_> {
        Box::pin(async move {
            let (tx, rx) = oneshot::channel();
            let queue = self.queue.as_ref().ok_or_else(|| LogError::Unavailable("the log is closed".into()))?;
            queue.try_send((invalidation, tx)).map_err(|e| match e {
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

/// Reads every complete entry. A torn last line (a crash mid-write, before
/// the fsync that would have acknowledged it) is skipped.
fn replay(path: &Path) -> Result<Vec<Entry>, String> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let mut out = Vec::new();
    let lines: Vec<String> = BufReader::new(file)
        .lines()
        .collect::<Result<_, _>>()
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let count = lines.len();
    for (i, line) in lines.into_iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Line>(&line) {
            Ok(Line::Invalidation(e)) => out.push(e),
            Err(e) if i + 1 == count => tracing::warn!(error = %e, "ignoring a torn last line in the invalidation log"),
            Err(e) => return Err(format!("{} line {}: {e}; the log is damaged", path.display(), i + 1)),
        }
    }
    Ok(out)
}

struct Writer {
    file: File,
    path: PathBuf,
    next: u64,
    invalidations: Arc<Invalidations>,
    audit: Arc<Audit>,
    node: String,
}

impl Writer {
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
    }

    fn commit(&mut self, batch: Vec<Pending>) {
        let accepted_ms = now_ms();
        let mut entries: Vec<Entry> = Vec::new();
        let mut waiters: Vec<(usize, oneshot::Sender<Result<Entry, LogError>>)> = Vec::with_capacity(batch.len());
        for (inv, tx) in batch {
            let same = entries
                .iter()
                .position(|e| e.invalidation.selectors == inv.selectors && e.invalidation.mode == inv.mode);
            let index = match same {
                Some(i) => i,
                None => {
                    entries.push(Entry { version: self.next, invalidation: inv, accepted_ms });
                    self.next += 1;
                    entries.len() - 1
                }
            };
            waiters.push((index, tx));
        }
        let mut text = String::new();
        for e in &entries {
            match serde_json::to_string(&Line::Invalidation(e.clone())) {
                Ok(line) => {
                    text.push_str(&line);
                    text.push('\n');
                }
                Err(err) => tracing::error!(error = %err, "cannot encode an invalidation"),
            }
        }
        let written = self.file.write_all(text.as_bytes()).and_then(|()| self.file.sync_data());
        if let Err(err) = written {
            // Not durable, so not accepted: give the versions back.
            self.next -= entries.len() as u64;
            let msg = format!("cannot write {}: {err}", self.path.display());
            tracing::error!("{msg}");
            for (_, tx) in waiters {
                let _ = tx.send(Err(LogError::Unavailable(msg.clone())));
            }
            return;
        }
        let applied_ms = now_ms();
        for e in &entries {
            apply(&self.invalidations, e);
            self.audit.record(e.clone());
            self.audit.applied(e.version, &self.node, applied_ms);
        }
        metrics::counter!("fresco_invalidations_accepted_total").increment(waiters.len() as u64);
        metrics::counter!("fresco_invalidations_applied_total").increment(entries.len() as u64);
        metrics::gauge!("fresco_invalidation_log_version").set((self.next - 1) as f64);
        for (i, tx) in waiters {
            let _ = tx.send(Ok(entries[i].clone()));
        }
    }
}

/// How long `append` may wait before the caller reports a timeout; the
/// embedded log answers in one fsync.
pub const APPEND_TIMEOUT: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;

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

    #[tokio::test]
    async fn appended_entries_survive_reopening() {
        let d = dir("reopen");
        let inv = Arc::new(Invalidations::default());
        let log = EmbeddedLog::open(&d, "n1", inv.clone(), Arc::new(Audit::default())).unwrap();
        let a = log.append(tag("a")).await.unwrap();
        let b = log.append(tag("b")).await.unwrap();
        assert_eq!((a.version, b.version), (1, 2));
        assert_eq!(inv.applied(), 2);
        drop(log);
        let again = Arc::new(Invalidations::default());
        let audit = Arc::new(Audit::default());
        let log = EmbeddedLog::open(&d, "n1", again.clone(), audit.clone()).unwrap();
        assert_eq!(again.applied(), 2, "replayed");
        assert_eq!(audit.get(2).unwrap().entry.invalidation.selectors, vec![Selector::Tag("b".into())]);
        assert_eq!(log.append(tag("c")).await.unwrap().version, 3, "versions continue after a restart");
    }

    #[tokio::test]
    async fn identical_requests_in_one_commit_share_an_entry() {
        let d = dir("merge");
        let log = EmbeddedLog::open(&d, "n1", Arc::new(Invalidations::default()), Arc::new(Audit::default())).unwrap();
        let results =
            futures_util::future::join_all((0..200).map(|i| log.append(tag(if i % 2 == 0 { "x" } else { "y" })))).await;
        let versions: std::collections::BTreeSet<u64> = results.iter().map(|r| r.as_ref().unwrap().version).collect();
        assert!(versions.len() < 200, "a burst of identical selectors is merged");
        assert!(results.iter().all(|r| r.is_ok()), "nothing accepted is dropped");
    }

    #[test]
    fn a_torn_last_line_is_skipped_but_damage_elsewhere_is_an_error() {
        let d = dir("torn");
        std::fs::create_dir_all(&d).unwrap();
        let good =
            serde_json::to_string(&Line::Invalidation(Entry { version: 1, invalidation: tag("a"), accepted_ms: 1 }))
                .unwrap();
        std::fs::write(d.join("invalidations.log"), format!("{good}\n{{\"type\":\"invalid")).unwrap();
        assert_eq!(replay(&d.join("invalidations.log")).unwrap().len(), 1);
        std::fs::write(d.join("invalidations.log"), format!("garbage\n{good}\n")).unwrap();
        assert!(replay(&d.join("invalidations.log")).unwrap_err().contains("line 1"));
    }
}
