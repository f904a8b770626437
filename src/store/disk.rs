//! The disk tier: a log-structured store of records in segment files under
//! `DATA_DIR/disk/`, with the index in memory.
//!
//! - A record is a key's whole variant set: a fixed head, the metadata of
//!   each variant (stamp, times, URL, tags, Vary selection, header fields)
//!   and the bodies, each part with its own checksum (rapidhash). A record
//!   of no variants is a tombstone: the key was removed or replaced.
//! - Writes are appended by one writer thread to the current segment;
//!   the request path only queues them, and a write that fails (disk full,
//!   I/O error) is skipped and counted, never retried on the request path.
//! - Eviction drops the oldest segment whole (FIFO by write time, as
//!   Varnish's persistent storage and foyer's large-object engine do):
//!   objects still read are promoted to memory and written again on a hit,
//!   so hot objects survive their segment.
//! - At start-up the index is rebuilt by reading only the record heads and
//!   metadata, skipping the bodies; a torn or damaged record ends its
//!   segment's scan. A body's checksum is verified on every read, so a
//!   corrupted object is dropped, counted and never served.
//! - Each index entry keeps a bodiless copy of its objects (a *skeleton*:
//!   URL, tags, stamp, Vary selection) that the sweeper judges like any
//!   stored object, so selector records a disk object still needs are
//!   never compacted away and a hard-purged one is dropped from disk. The
//!   objects read back share the skeleton's re-stamp state
//!   ([`Verified::share`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, StatusCode};

use super::{CachedObject, StoredHeaders, Variants};
use crate::invalidation::{Stamp, Verified};
use crate::policy::request::StaleDefaults;
use crate::policy::response::{PolicyConfig, ResponsePolicy};
use crate::policy::vary::VaryKey;

const MAGIC: &[u8; 4] = b"FRS1";
/// Local (RFC 9111 §4.4) invalidations, one `NANOS URL` line each: they are
/// not in the invalidation log, and disk objects fetched before one must
/// not come back after a restart.
const LOCAL: &str = "local-invalidations";
const HEAD_LEN: usize = 40;
/// Segments per budget: eviction frees one segment, so this is the
/// granularity of the budget (1/16 of it may be dead space).
const SEGMENTS: u64 = 16;
/// Writes queued and not yet written, in bytes, beyond which new ones are
/// skipped: a disk slower than the traffic sheds writes, not memory.
const MAX_QUEUED: u64 = 64 << 20;
/// One slot of the recently-stored filter per this much of the budget
/// (objects are rarely smaller on average).
const SEEN_BYTES_PER_SLOT: u64 = 16 << 10;
/// How often the writer refreshes the objects and bytes gauges.
const PUBLISH_EVERY: Duration = Duration::from_millis(100);
/// At most one warning per this interval for failed writes.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Where a key's record is, and what the sweeper judges in its place.
struct Entry {
    segment: u64,
    offset: u64,
    len: u64,
    fingerprint: u64,
    skeleton: Arc<Variants>,
}

struct Segment {
    file: Arc<File>,
    bytes: u64,
    /// Keys written to it (some since rewritten elsewhere).
    keys: Vec<Arc<str>>,
}

#[derive(Default)]
struct Index {
    entries: HashMap<Arc<str>, Entry>,
    segments: BTreeMap<u64, Segment>,
    bytes: u64,
}

type Queued = Arc<Mutex<HashMap<Arc<str>, (u64, Arc<Variants>)>>>;
type Evicted = Arc<Mutex<Vec<(Arc<str>, Arc<Variants>)>>>;

enum Job {
    Write(Arc<str>, Arc<Variants>, u64),
    Tombstone(Arc<str>),
}

/// Where a record was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    segment: u64,
    offset: u64,
}

/// What recovery found, for the start-up log line.
#[derive(Debug, Clone, Copy, Default)]
pub struct Recovered {
    pub objects: u64,
    pub keys: u64,
    pub bytes: u64,
    pub damaged_segments: u64,
    pub took: Duration,
}

pub struct DiskStore {
    dir: PathBuf,
    index: Arc<RwLock<Index>>,
    jobs: Mutex<Sender<Job>>,
    /// Keys queued for writing, with the fingerprint and set queued, so a
    /// key hit many times is queued once and the sweeper sees the set.
    queued: Queued,
    /// Skeletons of entries evicted since the sweeper last looked.
    evicted: Evicted,
    queued_bytes: Arc<AtomicU64>,
    /// The file of local invalidations, appended to synchronously.
    local: Arc<Mutex<File>>,
    /// Hashes of keys stored recently, one per slot (a newer key takes
    /// the slot): a key stored again while its hash is still here was
    /// asked for twice, however long the memory tier kept it.
    seen: Box<[AtomicU64]>,
    policy: PolicyConfig,
    segment_size: u64,
}

/// Identifies the response a variant set holds (which fetch, when it
/// arrived, how long), so a set already on disk is not written again.
pub fn fingerprint(variants: &Variants) -> u64 {
    // Computed on every memory hit: no allocation.
    variants.objects.iter().fold(variants.objects.len() as u64, |h, o| {
        let t = o.policy.response_time.duration_since(UNIX_EPOCH).unwrap_or_default();
        let mut words = [0u8; 40];
        for (i, w) in [o.stamp.log, o.stamp.local, t.as_secs(), u64::from(t.subsec_nanos()), o.body.len() as u64]
            .into_iter()
            .enumerate()
        {
            words[i * 8..i * 8 + 8].copy_from_slice(&w.to_le_bytes());
        }
        h.rotate_left(17) ^ rapidhash::v3::rapidhash_v3(&words)
    })
}

fn check(bytes: &[u8]) -> u64 {
    rapidhash::v3::rapidhash_v3(bytes)
}

impl DiskStore {
    /// Opens the tier in `dir` with a budget of `budget` bytes and rebuilds
    /// its index. With `keep` false (the node cannot tell which selector
    /// records its objects need) every segment is deleted instead.
    pub fn open(dir: &Path, budget: u64, policy: PolicyConfig, keep: bool) -> Result<(DiskStore, Recovered), String> {
        let started = Instant::now();
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let mut ids: Vec<u64> = std::fs::read_dir(dir)
            .map_err(|e| format!("cannot read {}: {e}", dir.display()))?
            .filter_map(|e| e.ok()?.file_name().to_str()?.strip_suffix(".seg")?.parse().ok())
            .collect();
        ids.sort_unstable();
        let segment_size = (budget / SEGMENTS).max(1 << 20);
        let mut index = Index::default();
        let mut recovered = Recovered::default();
        let skeleton_policy = ResponsePolicy::new(StatusCode::OK, &HeaderMap::new(), UNIX_EPOCH, UNIX_EPOCH, &policy);
        for id in &ids {
            let path = segment_path(dir, *id);
            if !keep {
                std::fs::remove_file(&path).map_err(|e| format!("cannot remove {}: {e}", path.display()))?;
                continue;
            }
            let file = File::open(&path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
            let bytes = file.metadata().map_err(|e| format!("cannot stat {}: {e}", path.display()))?.len();
            let (records, complete) =
                scan(&file, bytes, &skeleton_policy).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            if !complete {
                recovered.damaged_segments += 1;
            }
            let mut keys = Vec::with_capacity(records.len());
            for r in records {
                keys.push(r.key.clone());
                if r.skeleton.objects.is_empty() {
                    index.entries.remove(&r.key);
                    continue;
                }
                let entry = Entry {
                    segment: *id,
                    offset: r.offset,
                    len: r.len,
                    fingerprint: fingerprint(&r.skeleton),
                    skeleton: Arc::new(r.skeleton),
                };
                index.entries.insert(r.key, entry);
            }
            index.bytes += bytes;
            index.segments.insert(*id, Segment { file: Arc::new(file), bytes, keys });
        }
        recovered.bytes = index.bytes;
        let local_path = dir.join(LOCAL);
        let dropped = if keep { apply_local_invalidations(&local_path, &mut index)? } else { Vec::new() };
        recovered.keys = index.entries.len() as u64;
        recovered.objects = index.entries.values().map(|e| e.skeleton.objects.len() as u64).sum();
        let next = ids.last().map_or(0, |l| l + 1);
        let index = Arc::new(RwLock::new(index));
        let queued: Queued = Default::default();
        let evicted: Evicted = Default::default();
        let queued_bytes = Arc::new(AtomicU64::new(0));
        let (tx, rx) = std::sync::mpsc::channel();
        let writer = Writer {
            dir: dir.to_path_buf(),
            index: index.clone(),
            queued: queued.clone(),
            evicted: evicted.clone(),
            queued_bytes: queued_bytes.clone(),
            budget,
            segment_size,
            next,
            current: None,
            failures_unreported: 0,
            last_warning: None,
        };
        let mut writer = writer;
        // Tombstones for what local invalidations removed, before the file
        // that lists them is emptied.
        let mut kept_all = true;
        for key in &dropped {
            kept_all &= writer.append(key, &encode_record(key, &Variants::default())).is_some();
        }
        let local = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&local_path)
            .map_err(|e| format!("cannot open {}: {e}", local_path.display()))?;
        if kept_all {
            local.set_len(0).map_err(|e| format!("cannot empty {}: {e}", local_path.display()))?;
        }
        writer.publish();
        metrics::gauge!("fresco_disk_capacity_bytes").set(budget as f64);
        // Exported from the start, so that a scrape tells 0 from absent.
        for name in [
            "fresco_disk_writes_total",
            "fresco_disk_write_failures_total",
            "fresco_disk_hits_total",
            "fresco_disk_corrupt_total",
            "fresco_disk_read_failures_total",
            "fresco_disk_evictions_total",
        ] {
            metrics::counter!(name).increment(0);
        }
        std::thread::Builder::new()
            .name("fresco-disk-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| format!("cannot start the disk writer: {e}"))?;
        recovered.took = started.elapsed();
        let store = DiskStore {
            dir: dir.to_path_buf(),
            index,
            jobs: Mutex::new(tx),
            queued,
            evicted,
            queued_bytes,
            local: Arc::new(Mutex::new(local)),
            seen: (0..(budget / SEEN_BYTES_PER_SLOT).clamp(4096, 1 << 22).next_power_of_two())
                .map(|_| AtomicU64::new(0))
                .collect(),
            policy,
            segment_size,
        };
        Ok((store, recovered))
    }

    /// What to call on each local invalidation (RFC 9111 §4.4): appends it
    /// to the file the next start-up applies, before the invalidation is
    /// acknowledged (no fsync: it is for process crashes).
    pub fn local_invalidation_hook(&self) -> impl Fn(&str) + Send + Sync + 'static {
        let file = self.local.clone();
        move |url: &str| {
            let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos();
            let line = format!("{nanos} {url}\n");
            if let Err(e) = file.lock().unwrap_or_else(|e| e.into_inner()).write_all(line.as_bytes()) {
                metrics::counter!("fresco_disk_write_failures_total").increment(1);
                tracing::warn!(error = %e, url, "cannot record a local invalidation for the disk tier");
            }
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Admission on a memory hit (the object's second request at least):
    /// queues `variants` for writing unless that very set is on disk or
    /// queued. Never blocks on I/O.
    pub fn admit(&self, key: &str, variants: &Arc<Variants>) {
        let fp = fingerprint(variants);
        if self.index.read().unwrap_or_else(|e| e.into_inner()).entries.get(key).is_some_and(|e| e.fingerprint == fp) {
            return;
        }
        let size: u64 = variants.objects.iter().map(|o| o.weight() as u64).sum();
        if size > self.segment_size {
            return;
        }
        {
            let mut queued = self.queued.lock().unwrap_or_else(|e| e.into_inner());
            if queued.get(key).is_some_and(|(q, _)| *q == fp) {
                return;
            }
            if self.queued_bytes.load(Ordering::Relaxed) + size > MAX_QUEUED {
                metrics::counter!("fresco_disk_writes_skipped_total", "reason" => "queue_full").increment(1);
                return;
            }
            let key: Arc<str> = Arc::from(key);
            queued.insert(key.clone(), (fp, variants.clone()));
            self.queued_bytes.fetch_add(size, Ordering::Relaxed);
            self.send(Job::Write(key, variants.clone(), size));
        }
    }

    /// Whether `key` was stored recently before (see `seen`); records it.
    pub fn stored_before(&self, key: &str) -> bool {
        let h = check(key.as_bytes()) | 1;
        let slot = (h as usize) & (self.seen.len() - 1);
        self.seen[slot].swap(h, Ordering::Relaxed) == h
    }

    /// Forgets `key` (removed, or replaced by a set not written yet), now
    /// in the index and, through a tombstone, after a restart.
    /// A write of it still queued is cancelled.
    pub fn forget(&self, key: &str) {
        let mut index = self.index.write().unwrap_or_else(|e| e.into_inner());
        let written = index.entries.remove_entry(key).map(|(k, _)| k);
        let queued = self.queued.lock().unwrap_or_else(|e| e.into_inner()).remove_entry(key).map(|(k, _)| k);
        drop(index);
        if let Some(key) = written.or(queued) {
            self.send(Job::Tombstone(key));
        }
    }

    /// Forgets `key` unless the set on disk is `variants`.
    pub fn forget_unless(&self, key: &str, variants: &Variants) {
        let same = self
            .index
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .entries
            .get(key)
            .map(|e| e.fingerprint == fingerprint(variants));
        if same == Some(false) {
            self.forget(key);
        }
    }

    fn send(&self, job: Job) {
        // The writer lives as long as the process.
        let _ = self.jobs.lock().unwrap_or_else(|e| e.into_inner()).send(job);
    }

    /// Reads `key`'s variants back: one read of the record into one
    /// buffer, which the bodies are slices of. A record whose checksums do
    /// not match is dropped and counted.
    pub fn load(&self, key: &str) -> Option<(Variants, Location)> {
        let (file, segment, offset, len, skeleton) = {
            let index = self.index.read().unwrap_or_else(|e| e.into_inner());
            let e = index.entries.get(key)?;
            let file = index.segments.get(&e.segment)?.file.clone();
            (file, e.segment, e.offset, e.len, e.skeleton.clone())
        };
        let mut buf = vec![0u8; len as usize];
        if let Err(e) = file.read_exact_at(&mut buf, offset) {
            metrics::counter!("fresco_disk_read_failures_total").increment(1);
            tracing::warn!(segment, offset, error = %e, "cannot read an object from the disk tier: treated as a miss");
            self.drop_if_current(key, segment, offset);
            return None;
        }
        match decode_record(Bytes::from(buf), &self.policy) {
            Ok(record) if record.key.as_ref() == key && record.objects.len() == skeleton.objects.len() => {
                metrics::counter!("fresco_disk_hits_total").increment(1);
                let objects = record
                    .objects
                    .into_iter()
                    .zip(&skeleton.objects)
                    .map(|(mut o, s)| {
                        // Judged as the skeleton the sweeper re-stamps.
                        o.stamp = s.stamp;
                        o.verified = s.verified.share();
                        Arc::new(o)
                    })
                    .collect();
                Some((Variants { objects }, Location { segment, offset }))
            }
            Ok(_) | Err(_) => {
                metrics::counter!("fresco_disk_corrupt_total").increment(1);
                tracing::warn!(
                    segment,
                    offset,
                    key,
                    "a damaged object on disk (checksum mismatch): dropped, not served"
                );
                self.drop_if_current(key, segment, offset);
                None
            }
        }
    }

    /// Whether `key`'s entry is still the record at `at` (not forgotten,
    /// rewritten or evicted since it was read).
    pub fn holds(&self, key: &str, at: Location) -> bool {
        let index = self.index.read().unwrap_or_else(|e| e.into_inner());
        index.entries.get(key).is_some_and(|e| e.segment == at.segment && e.offset == at.offset)
    }

    fn drop_if_current(&self, key: &str, segment: u64, offset: u64) {
        let mut index = self.index.write().unwrap_or_else(|e| e.into_inner());
        if index.entries.get(key).is_some_and(|e| e.segment == segment && e.offset == offset) {
            let (key, _) = index.entries.remove_entry(key).expect("just found");
            drop(index);
            self.send(Job::Tombstone(key));
        }
    }

    /// The sweeper's walk over the disk tier (see [`super::Store::sweep`]),
    /// after the memory tier's: the sets queued for writing, then the
    /// index's skeletons, then those evicted since the last walk, in the
    /// order an object moves between them, so that a copy read back (which
    /// shares its state) is visited wherever it is. A key with any variant
    /// to drop is dropped from disk whole (the memory tier keeps what it
    /// holds, and a hit writes it again).
    pub fn sweep(&self, f: &mut dyn FnMut(&str, &Variants) -> Option<Variants>) {
        let queued: Vec<(Arc<str>, Arc<Variants>)> = {
            let queued = self.queued.lock().unwrap_or_else(|e| e.into_inner());
            queued.iter().map(|(k, (_, v))| (k.clone(), v.clone())).collect()
        };
        for (key, variants) in queued {
            // A set judged hard is condemned (by the caller) and so never
            // served from disk, whenever the writer gets to it.
            let _ = f(&key, &variants);
        }
        let keys: Vec<(Arc<str>, Arc<Variants>)> = {
            let index = self.index.read().unwrap_or_else(|e| e.into_inner());
            index.entries.iter().map(|(k, e)| (k.clone(), e.skeleton.clone())).collect()
        };
        for (key, skeleton) in keys {
            if let Some(kept) = f(&key, &skeleton)
                && kept.objects.len() < skeleton.objects.len()
            {
                let mut index = self.index.write().unwrap_or_else(|e| e.into_inner());
                if index.entries.get(&key).is_some_and(|e| Arc::ptr_eq(&e.skeleton, &skeleton)) {
                    index.entries.remove(&key);
                    drop(index);
                    self.send(Job::Tombstone(key));
                }
            }
        }
        let evicted = std::mem::take(&mut *self.evicted.lock().unwrap_or_else(|e| e.into_inner()));
        for (key, skeleton) in evicted {
            let _ = f(&key, &skeleton);
        }
    }

    /// Keys on disk (for tests and figures).
    pub fn keys(&self) -> usize {
        self.index.read().unwrap_or_else(|e| e.into_inner()).entries.len()
    }
}

/// Drops from `index` every key with a variant fetched before a local
/// invalidation of its URL was recorded; returns the keys dropped.
fn apply_local_invalidations(path: &Path, index: &mut Index) -> Result<Vec<Arc<str>>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let mut latest: HashMap<&str, u128> = HashMap::new();
    // A torn last line (a crash mid-write) is ignored: the request that
    // wrote it was never answered.
    for line in text.lines() {
        if let Some((nanos, url)) = line.split_once(' ')
            && let Ok(nanos) = nanos.parse::<u128>()
        {
            let t = latest.entry(url).or_default();
            *t = (*t).max(nanos);
        }
    }
    if latest.is_empty() {
        return Ok(Vec::new());
    }
    let fetched_before = |o: &CachedObject| {
        let fetched = o.policy.request_time.duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos();
        latest.get(&*o.url).is_some_and(|t| fetched <= *t)
    };
    let dropped: Vec<Arc<str>> = index
        .entries
        .iter()
        .filter(|(_, e)| e.skeleton.objects.iter().any(|o| fetched_before(o)))
        .map(|(k, _)| k.clone())
        .collect();
    for key in &dropped {
        index.entries.remove(key);
    }
    Ok(dropped)
}

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:012}.seg"))
}

/// One record found by the start-up scan.
struct Scanned {
    key: Arc<str>,
    offset: u64,
    len: u64,
    skeleton: Variants,
}

/// Reads the heads and metadata of a segment's records, skipping bodies.
/// Also says whether the scan reached the end (false: a torn or damaged
/// record ended it).
fn scan(file: &File, size: u64, policy: &ResponsePolicy) -> std::io::Result<(Vec<Scanned>, bool)> {
    let mut reader = BufReader::with_capacity(256 << 10, file);
    let mut records = Vec::new();
    let mut pos = 0u64;
    while pos < size {
        let Some(head) = Head::read(&mut reader)? else { return Ok((records, false)) };
        let len = HEAD_LEN as u64 + u64::from(head.meta_len) + head.body_len;
        if pos + len > size {
            return Ok((records, false));
        }
        let mut meta = vec![0u8; head.meta_len as usize];
        reader.read_exact(&mut meta)?;
        if check(&meta) != head.meta_check {
            return Ok((records, false));
        }
        let Ok((key, skeleton)) = decode_skeleton(&meta, policy) else { return Ok((records, false)) };
        reader.seek_relative(head.body_len as i64)?;
        records.push(Scanned { key, offset: pos, len, skeleton });
        pos += len;
    }
    Ok((records, true))
}

struct Head {
    meta_len: u32,
    body_len: u64,
    meta_check: u64,
    body_check: u64,
}

impl Head {
    fn encode(&self) -> [u8; HEAD_LEN] {
        let mut h = [0u8; HEAD_LEN];
        h[0..4].copy_from_slice(MAGIC);
        h[4..8].copy_from_slice(&self.meta_len.to_le_bytes());
        h[8..16].copy_from_slice(&self.body_len.to_le_bytes());
        h[16..24].copy_from_slice(&self.meta_check.to_le_bytes());
        h[24..32].copy_from_slice(&self.body_check.to_le_bytes());
        let c = check(&h[0..32]);
        h[32..40].copy_from_slice(&c.to_le_bytes());
        h
    }

    fn decode(h: &[u8]) -> Option<Head> {
        let word = |r: std::ops::Range<usize>| u64::from_le_bytes(h[r].try_into().expect("8 bytes"));
        if h.len() < HEAD_LEN || &h[0..4] != MAGIC || check(&h[0..32]) != word(32..40) {
            return None;
        }
        Some(Head {
            meta_len: u32::from_le_bytes(h[4..8].try_into().expect("4 bytes")),
            body_len: word(8..16),
            meta_check: word(16..24),
            body_check: word(24..32),
        })
    }

    /// None at the end of the file or on a head that does not check out.
    fn read(reader: &mut impl Read) -> std::io::Result<Option<Head>> {
        let mut h = [0u8; HEAD_LEN];
        match reader.read_exact(&mut h) {
            Ok(()) => Ok(Head::decode(&h)),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Little-endian, length-prefixed fields.
#[derive(Default)]
struct Enc(Vec<u8>);

impl Enc {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.u32(b.len() as u32);
        self.0.extend_from_slice(b);
    }
    fn duration(&mut self, d: Duration) {
        self.u64(d.as_secs());
        self.u32(d.subsec_nanos());
    }
    fn time(&mut self, t: SystemTime) {
        self.duration(t.duration_since(UNIX_EPOCH).unwrap_or_default());
    }
    fn opt_duration(&mut self, d: Option<Duration>) {
        match d {
            Some(d) => {
                self.u8(1);
                self.duration(d);
            }
            None => self.u8(0),
        }
    }
}

#[derive(Debug)]
struct Malformed;

struct Dec<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Dec<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
        let end = self.pos.checked_add(n).filter(|e| *e <= self.buf.len()).ok_or(Malformed)?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, Malformed> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, Malformed> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().map_err(|_| Malformed)?))
    }
    fn u64(&mut self) -> Result<u64, Malformed> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().map_err(|_| Malformed)?))
    }
    fn bytes(&mut self) -> Result<&'a [u8], Malformed> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn str(&mut self) -> Result<&'a str, Malformed> {
        std::str::from_utf8(self.bytes()?).map_err(|_| Malformed)
    }
    fn duration(&mut self) -> Result<Duration, Malformed> {
        let secs = self.u64()?;
        let nanos = self.u32()?;
        if nanos >= 1_000_000_000 {
            return Err(Malformed);
        }
        Ok(Duration::new(secs, nanos))
    }
    fn time(&mut self) -> Result<SystemTime, Malformed> {
        UNIX_EPOCH.checked_add(self.duration()?).ok_or(Malformed)
    }
    fn opt_duration(&mut self) -> Result<Option<Duration>, Malformed> {
        match self.u8()? {
            0 => Ok(None),
            1 => Ok(Some(self.duration()?)),
            _ => Err(Malformed),
        }
    }
}

/// The record for `key` holding `variants` (a tombstone when empty).
fn encode_record(key: &str, variants: &Variants) -> Vec<u8> {
    let mut meta = Enc::default();
    meta.bytes(key.as_bytes());
    meta.u32(variants.objects.len() as u32);
    for o in &variants.objects {
        meta.u32(u32::from(o.status.as_u16()));
        meta.u64(o.stamp.log);
        meta.u64(o.stamp.local);
        meta.time(o.policy.request_time);
        meta.time(o.policy.response_time);
        meta.duration(o.policy.lifetime);
        meta.duration(o.policy.corrected_initial_age);
        meta.u8(u8::from(o.policy.heuristic) | u8::from(o.policy.credentialed) << 1 | u8::from(o.stale.forbid) << 2);
        meta.opt_duration(o.stale.stale_while_revalidate);
        meta.opt_duration(o.stale.stale_if_error);
        meta.opt_duration(o.stale.max_staleness);
        meta.bytes(o.url.as_bytes());
        meta.u32(o.tags.len() as u32);
        for t in o.tags.iter() {
            meta.bytes(t.as_bytes());
        }
        meta.u32(o.vary.fields.len() as u32);
        for (name, value) in &o.vary.fields {
            meta.bytes(name.as_str().as_bytes());
            match value {
                Some(v) => {
                    meta.u8(1);
                    meta.bytes(v.as_bytes());
                }
                None => meta.u8(0),
            }
        }
        meta.u32(o.headers.fields.len() as u32);
        for (name, end) in o.headers.fields.iter() {
            meta.bytes(name.as_str().as_bytes());
            meta.u32(*end);
        }
        meta.bytes(&o.headers.values);
        meta.u64(o.body.len() as u64);
    }
    let meta = meta.0;
    let body_len: usize = variants.objects.iter().map(|o| o.body.len()).sum();
    let mut out = Vec::with_capacity(HEAD_LEN + meta.len() + body_len);
    out.extend_from_slice(&[0u8; HEAD_LEN]);
    out.extend_from_slice(&meta);
    for o in &variants.objects {
        out.extend_from_slice(&o.body);
    }
    let body_start = HEAD_LEN + meta.len();
    let head = Head {
        meta_len: meta.len() as u32,
        body_len: body_len as u64,
        meta_check: check(&meta),
        body_check: check(&out[body_start..]),
    };
    out[..HEAD_LEN].copy_from_slice(&head.encode());
    out
}

/// One variant's metadata; `headers` and `body` are what a full decode
/// fills in.
struct Meta {
    status: StatusCode,
    stamp: Stamp,
    policy: ResponsePolicy,
    stale: StaleDefaults,
    url: Arc<str>,
    tags: Box<[Arc<str>]>,
    vary: VaryKey,
    headers: StoredHeaders,
    body_len: u64,
}

/// Decodes the metadata block; header values are sliced from `values`
/// when given (a full read), skipped otherwise.
fn decode_meta(
    meta: &[u8],
    values: Option<&Bytes>,
    base: impl Fn(StatusCode, &StoredHeaders, SystemTime, SystemTime) -> ResponsePolicy,
) -> Result<(Arc<str>, Vec<Meta>), Malformed> {
    let mut d = Dec { buf: meta, pos: 0 };
    let key: Arc<str> = Arc::from(d.str()?);
    let n = d.u32()? as usize;
    let mut out = Vec::with_capacity(n.min(64));
    for _ in 0..n {
        let status = StatusCode::from_u16(u16::try_from(d.u32()?).map_err(|_| Malformed)?).map_err(|_| Malformed)?;
        let stamp = Stamp { log: d.u64()?, local: d.u64()? };
        let request_time = d.time()?;
        let response_time = d.time()?;
        let lifetime = d.duration()?;
        let corrected_initial_age = d.duration()?;
        let flags = d.u8()?;
        let stale = StaleDefaults {
            stale_while_revalidate: d.opt_duration()?,
            stale_if_error: d.opt_duration()?,
            max_staleness: d.opt_duration()?,
            forbid: flags & 4 != 0,
        };
        let url: Arc<str> = Arc::from(d.str()?);
        let tags = (0..d.u32()?).map(|_| d.str().map(Arc::from)).collect::<Result<Box<[Arc<str>]>, _>>()?;
        let mut vary = VaryKey::default();
        for _ in 0..d.u32()? {
            let name = HeaderName::from_bytes(d.bytes()?).map_err(|_| Malformed)?;
            let value = match d.u8()? {
                0 => None,
                1 => Some(d.str()?.to_string()),
                _ => return Err(Malformed),
            };
            vary.fields.push((name, value));
        }
        let mut fields = Vec::new();
        for _ in 0..d.u32()? {
            let name = HeaderName::from_bytes(d.bytes()?).map_err(|_| Malformed)?;
            fields.push((name, d.u32()?));
        }
        let values_len = d.u32()? as usize;
        let values_at = d.pos;
        d.take(values_len)?;
        let headers = match values {
            Some(buf) => {
                let mut last = 0u32;
                for (_, end) in &fields {
                    if *end < last || *end as usize > values_len {
                        return Err(Malformed);
                    }
                    last = *end;
                }
                let values = buf.slice(values_at..values_at + values_len);
                // Every value must be a valid HeaderValue again.
                let headers = StoredHeaders { fields: fields.into_boxed_slice(), values };
                for (i, (_, _)) in headers.fields.iter().enumerate() {
                    let start = if i == 0 { 0 } else { headers.fields[i - 1].1 as usize };
                    let end = headers.fields[i].1 as usize;
                    http::HeaderValue::from_bytes(&headers.values[start..end]).map_err(|_| Malformed)?;
                }
                headers
            }
            None => StoredHeaders::default(),
        };
        let mut policy = base(status, &headers, request_time, response_time);
        policy.request_time = request_time;
        policy.response_time = response_time;
        policy.lifetime = lifetime;
        policy.corrected_initial_age = corrected_initial_age;
        policy.heuristic = flags & 1 != 0;
        policy.credentialed = flags & 2 != 0;
        let body_len = d.u64()?;
        out.push(Meta { status, stamp, policy, stale, url, tags, vary, headers, body_len });
    }
    if d.pos != meta.len() {
        return Err(Malformed);
    }
    Ok((key, out))
}

fn object(m: Meta, body: Bytes, verified: Verified) -> CachedObject {
    CachedObject {
        status: m.status,
        headers: m.headers,
        body,
        policy: m.policy,
        vary: m.vary,
        url: m.url,
        tags: m.tags,
        stamp: m.stamp,
        verified,
        stale: m.stale,
    }
}

/// The skeleton of a record for the index: no headers, no bodies, a
/// stand-in policy. Stamps are of a process that is gone: its own
/// (`local`) invalidation counter started again at 0.
fn decode_skeleton(meta: &[u8], policy: &ResponsePolicy) -> Result<(Arc<str>, Variants), Malformed> {
    let (key, metas) = decode_meta(meta, None, |_, _, _, _| policy.clone())?;
    let objects = metas
        .into_iter()
        .map(|mut m| {
            m.stamp.local = 0;
            Arc::new(object(m, Bytes::new(), Verified::default()))
        })
        .collect();
    Ok((key, Variants { objects }))
}

/// A whole record read back, checksums verified.
struct Record {
    key: Arc<str>,
    objects: Vec<CachedObject>,
}

fn decode_record(buf: Bytes, policy: &PolicyConfig) -> Result<Record, Malformed> {
    let head = Head::decode(&buf[..HEAD_LEN.min(buf.len())]).ok_or(Malformed)?;
    let meta_end = HEAD_LEN + head.meta_len as usize;
    if buf.len() as u64 != meta_end as u64 + head.body_len {
        return Err(Malformed);
    }
    if check(&buf[HEAD_LEN..meta_end]) != head.meta_check || check(&buf[meta_end..]) != head.body_check {
        return Err(Malformed);
    }
    let meta = buf.slice(HEAD_LEN..meta_end);
    let (key, metas) = decode_meta(&meta, Some(&meta), |status, headers, request_time, response_time| {
        ResponsePolicy::new(status, &headers.to_map(), request_time, response_time, policy)
    })?;
    let mut at = meta_end;
    let mut objects = Vec::with_capacity(metas.len());
    for m in metas {
        let end = at.checked_add(m.body_len as usize).filter(|e| *e <= buf.len()).ok_or(Malformed)?;
        let body = buf.slice(at..end);
        at = end;
        objects.push(object(m, body, Verified::default()));
    }
    if at != buf.len() {
        return Err(Malformed);
    }
    Ok(Record { key, objects })
}

/// The writer thread's state.
struct Writer {
    dir: PathBuf,
    index: Arc<RwLock<Index>>,
    queued: Queued,
    evicted: Evicted,
    queued_bytes: Arc<AtomicU64>,
    budget: u64,
    segment_size: u64,
    next: u64,
    /// The segment being appended to: its id, file and length.
    current: Option<(u64, File, u64)>,
    failures_unreported: u64,
    last_warning: Option<Instant>,
}

/// Why a write failed.
#[derive(Debug, Clone, Copy)]
enum WriteFailure {
    Open,
    Write,
}

impl Writer {
    fn run(mut self, jobs: Receiver<Job>) {
        // The gauges walk the index: at most every PUBLISH_EVERY, and once
        // the queue is drained.
        let mut published = Instant::now();
        let mut dirty = false;
        loop {
            let job = match jobs.recv_timeout(PUBLISH_EVERY) {
                Ok(job) => job,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    if dirty {
                        self.publish();
                        (published, dirty) = (Instant::now(), false);
                    }
                    continue;
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
            };
            match job {
                Job::Write(key, variants, size) => {
                    self.write(&key, &variants);
                    self.queued_bytes.fetch_sub(size, Ordering::Relaxed);
                }
                Job::Tombstone(key) => {
                    self.append(&key, &encode_record(&key, &Variants::default()));
                }
            }
            dirty = true;
            if published.elapsed() >= PUBLISH_EVERY {
                self.publish();
                (published, dirty) = (Instant::now(), false);
            }
        }
    }

    fn write(&mut self, key: &Arc<str>, variants: &Arc<Variants>) {
        let wanted = {
            let queued = self.queued.lock().unwrap_or_else(|e| e.into_inner());
            queued.get(key).is_some_and(|(_, q)| Arc::ptr_eq(q, variants))
        };
        if !wanted {
            return;
        }
        let record = encode_record(key, variants);
        let Some((segment, offset)) = self.append(key, &record) else {
            // Skipped: a later hit may queue it again.
            let mut queued = self.queued.lock().unwrap_or_else(|e| e.into_inner());
            if queued.get(key).is_some_and(|(_, q)| Arc::ptr_eq(q, variants)) {
                queued.remove(key);
            }
            return;
        };
        metrics::counter!("fresco_disk_writes_total").increment(1);
        let skeleton = Variants {
            objects: variants
                .objects
                .iter()
                .map(|o| {
                    let mut s = CachedObject {
                        headers: StoredHeaders::default(),
                        body: Bytes::new(),
                        verified: o.verified.share(),
                        ..(**o).clone()
                    };
                    s.policy.directives = Default::default();
                    Arc::new(s)
                })
                .collect(),
        };
        let entry = Entry {
            segment,
            offset,
            len: record.len() as u64,
            fingerprint: fingerprint(variants),
            skeleton: Arc::new(skeleton),
        };
        // Indexed only if still wanted: a key forgotten meanwhile (replaced,
        // removed) has a tombstone queued after this record.
        let mut index = self.index.write().unwrap_or_else(|e| e.into_inner());
        let mut queued = self.queued.lock().unwrap_or_else(|e| e.into_inner());
        if queued.get(key).is_some_and(|(_, q)| Arc::ptr_eq(q, variants)) {
            queued.remove(key);
            index.entries.insert(key.clone(), entry);
        }
    }

    /// Appends `record` to the current segment (a new one when full),
    /// evicting the oldest segments past the budget. None when it failed:
    /// counted, logged at most every [`WARN_EVERY`], and the segment cut
    /// back so no partial record is left before later ones.
    fn append(&mut self, key: &Arc<str>, record: &[u8]) -> Option<(u64, u64)> {
        let len = record.len() as u64;
        if len > self.segment_size {
            metrics::counter!("fresco_disk_writes_skipped_total", "reason" => "too_large").increment(1);
            return None;
        }
        if self.current.as_ref().is_none_or(|(_, _, at)| at + len > self.segment_size)
            && let Err(e) = self.rotate()
        {
            self.failed(WriteFailure::Open, &e);
            return None;
        }
        self.evict(len);
        let (id, file, at) = self.current.as_mut().expect("rotated");
        let offset = *at;
        if let Err(e) = file.write_all(record) {
            // Cut back what was written; if that fails too, the segment
            // is done with (its scan stops at the torn record) and the
            // next write starts a new one.
            if file.set_len(offset).is_err() {
                self.current = None;
            }
            self.failed(WriteFailure::Write, &e);
            return None;
        }
        *at += len;
        let id = *id;
        let mut index = self.index.write().unwrap_or_else(|e| e.into_inner());
        index.bytes += len;
        if let Some(s) = index.segments.get_mut(&id) {
            s.bytes += len;
            s.keys.push(key.clone());
        }
        Some((id, offset))
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        let id = self.next;
        let path = segment_path(&self.dir, id);
        let file = OpenOptions::new().create_new(true).append(true).read(true).open(&path)?;
        let reader = Arc::new(file.try_clone()?);
        self.next += 1;
        self.current = Some((id, file, 0));
        let mut index = self.index.write().unwrap_or_else(|e| e.into_inner());
        index.segments.insert(id, Segment { file: reader, bytes: 0, keys: Vec::new() });
        Ok(())
    }

    /// Drops the oldest segments (never the current one) until `incoming`
    /// more bytes fit the budget.
    fn evict(&mut self, incoming: u64) {
        let current = self.current.as_ref().map(|(id, _, _)| *id);
        loop {
            let mut index = self.index.write().unwrap_or_else(|e| e.into_inner());
            if index.bytes + incoming <= self.budget {
                return;
            }
            let Some((&oldest, _)) = index.segments.first_key_value() else { return };
            if Some(oldest) == current {
                return;
            }
            let segment = index.segments.remove(&oldest).expect("first key");
            index.bytes -= segment.bytes;
            let mut evicted = 0u64;
            let unique: HashSet<Arc<str>> = segment.keys.into_iter().collect();
            for key in unique {
                if index.entries.get(&key).is_some_and(|e| e.segment == oldest) {
                    let e = index.entries.remove(&key).expect("just found");
                    evicted += e.skeleton.objects.len() as u64;
                    // A copy read back before may still be in memory.
                    self.evicted.lock().unwrap_or_else(|e| e.into_inner()).push((key, e.skeleton));
                }
            }
            drop(index);
            metrics::counter!("fresco_disk_evictions_total").increment(evicted);
            let path = segment_path(&self.dir, oldest);
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove an evicted disk segment");
            }
        }
    }

    fn failed(&mut self, why: WriteFailure, error: &std::io::Error) {
        metrics::counter!("fresco_disk_write_failures_total").increment(1);
        self.failures_unreported += 1;
        if self.last_warning.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
            tracing::warn!(
                dir = %self.dir.display(),
                ?why,
                %error,
                failures = self.failures_unreported,
                "disk tier writes are failing: skipped; the node keeps serving from memory and the origin"
            );
            self.failures_unreported = 0;
            self.last_warning = Some(Instant::now());
        }
    }

    fn publish(&self) {
        let index = self.index.read().unwrap_or_else(|e| e.into_inner());
        let objects: usize = index.entries.values().map(|e| e.skeleton.objects.len()).sum();
        metrics::gauge!("fresco_disk_objects").set(objects as f64);
        metrics::gauge!("fresco_disk_bytes").set(index.bytes as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::CachedObject;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("fresco-disk-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn variants(url: &str, body: &[u8]) -> Arc<Variants> {
        let mut o = CachedObject::for_test(url, &["t1", "t2"], Stamp { log: 7, local: 3 });
        o.body = Bytes::copy_from_slice(body);
        let mut h = HeaderMap::new();
        h.append("etag", "\"v1\"".parse().unwrap());
        h.append("cache-control", "max-age=60".parse().unwrap());
        o.headers = StoredHeaders::from_map(&h);
        Arc::new(Variants { objects: vec![Arc::new(o)] })
    }

    fn written(store: &DiskStore, key: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if store.index.read().unwrap().entries.contains_key(key) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }

    #[test]
    fn a_record_round_trips_with_its_stamp_headers_and_body() {
        let v = variants("http://h/a", b"hello");
        let record = encode_record("http://h/a", &v);
        let back = decode_record(Bytes::from(record), &PolicyConfig::default()).unwrap();
        assert_eq!(&*back.key, "http://h/a");
        let o = &back.objects[0];
        assert_eq!(&o.body[..], b"hello");
        assert_eq!(o.stamp, Stamp { log: 7, local: 3 });
        assert_eq!(o.headers.to_map().get("etag").unwrap(), "\"v1\"");
        assert_eq!(o.tags.len(), 2);
        assert_eq!(o.policy.response_time, v.objects[0].policy.response_time);
        assert_eq!(o.policy.lifetime, v.objects[0].policy.lifetime);
    }

    #[test]
    fn any_flipped_byte_of_a_record_is_detected() {
        let record = encode_record("http://h/a", &variants("http://h/a", b"some body bytes"));
        for i in 0..record.len() {
            let mut bad = record.clone();
            bad[i] ^= 0x40;
            assert!(decode_record(Bytes::from(bad), &PolicyConfig::default()).is_err(), "byte {i}");
        }
    }

    #[test]
    fn objects_survive_reopening_with_the_local_stamp_reset_and_tombstones_hold() {
        let d = dir("reopen");
        {
            let (store, _) = DiskStore::open(&d, 64 << 20, PolicyConfig::default(), true).unwrap();
            store.admit("http://h/a", &variants("http://h/a", b"a"));
            store.admit("http://h/b", &variants("http://h/b", b"b"));
            assert!(written(&store, "http://h/a") && written(&store, "http://h/b"));
            store.forget("http://h/b");
            // The tombstone is queued after the writes: wait for it through
            // a later write.
            store.admit("http://h/c", &variants("http://h/c", b"c"));
            assert!(written(&store, "http://h/c"));
        }
        let (store, recovered) = DiskStore::open(&d, 64 << 20, PolicyConfig::default(), true).unwrap();
        assert_eq!(recovered.keys, 2, "{recovered:?}");
        let (a, _) = store.load("http://h/a").expect("kept");
        assert_eq!(&a.objects[0].body[..], b"a");
        assert_eq!(a.objects[0].stamp, Stamp { log: 7, local: 0 });
        assert!(store.load("http://h/b").is_none(), "a tombstoned key stays removed after a restart");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn rfc9111_4_4_a_local_invalidation_outlives_a_restart_and_spares_later_fetches() {
        let d = dir("local");
        {
            let (store, _) = DiskStore::open(&d, 64 << 20, PolicyConfig::default(), true).unwrap();
            store.admit("http://h/old", &variants("http://h/old", b"old"));
            assert!(written(&store, "http://h/old"));
            let hook = store.local_invalidation_hook();
            hook("http://h/old");
            hook("http://h/new");
            // Fetched after the invalidation of its URL.
            store.admit("http://h/new", &variants("http://h/new", b"new"));
            assert!(written(&store, "http://h/new"));
        }
        let (store, recovered) = DiskStore::open(&d, 64 << 20, PolicyConfig::default(), true).unwrap();
        assert_eq!(recovered.keys, 1, "{recovered:?}");
        assert!(store.load("http://h/old").is_none());
        assert!(store.load("http://h/new").is_some());
        drop(store);
        // Applied once, through tombstones: the list is emptied.
        assert_eq!(std::fs::metadata(d.join(LOCAL)).unwrap().len(), 0);
        let (_, recovered) = DiskStore::open(&d, 64 << 20, PolicyConfig::default(), true).unwrap();
        assert_eq!(recovered.keys, 1, "{recovered:?}");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_corrupted_body_is_a_miss_and_the_key_is_dropped() {
        let d = dir("corrupt");
        let (store, _) = DiskStore::open(&d, 64 << 20, PolicyConfig::default(), true).unwrap();
        store.admit("http://h/a", &variants("http://h/a", b"precious bytes"));
        assert!(written(&store, "http://h/a"));
        let path = segment_path(&d, 0);
        let mut data = std::fs::read(&path).unwrap();
        let at = data.windows(8).position(|w| w == b"precious").unwrap();
        data[at] = b'P';
        std::fs::write(&path, &data).unwrap();
        assert!(store.load("http://h/a").is_none());
        assert_eq!(store.keys(), 0);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn the_budget_evicts_the_oldest_segments() {
        let d = dir("evict");
        let (store, _) = DiskStore::open(&d, 4 << 20, PolicyConfig::default(), true).unwrap();
        let body = vec![b'x'; 100 << 10];
        for i in 0..200 {
            let key: Arc<str> = Arc::from(format!("http://h/{i}"));
            store.admit(&key, &variants(&key, &body));
            assert!(written(&store, &key));
        }
        let bytes = store.index.read().unwrap().bytes;
        assert!(bytes <= 4 << 20, "{bytes}");
        assert!(store.load("http://h/199").is_some());
        assert!(store.load("http://h/0").is_none());
        let on_disk: u64 = std::fs::read_dir(&d).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum();
        assert!(on_disk <= 4 << 20, "{on_disk}");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_torn_tail_ends_the_scan_and_keeps_what_precedes_it() {
        let d = dir("torn");
        {
            let (store, _) = DiskStore::open(&d, 64 << 20, PolicyConfig::default(), true).unwrap();
            for k in ["http://h/a", "http://h/b"] {
                store.admit(k, &variants(k, b"body"));
                assert!(written(&store, k));
            }
        }
        let path = segment_path(&d, 0);
        let len = std::fs::metadata(&path).unwrap().len();
        OpenOptions::new().write(true).open(&path).unwrap().set_len(len - 3).unwrap();
        let (store, recovered) = DiskStore::open(&d, 64 << 20, PolicyConfig::default(), true).unwrap();
        assert_eq!((recovered.keys, recovered.damaged_segments), (1, 1));
        assert!(store.load("http://h/a").is_some());
        let _ = std::fs::remove_dir_all(&d);
    }
}
