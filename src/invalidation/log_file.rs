//! The embedded log's files in the data directory.
//!
//! `invalidations.log` holds one JSON line per entry, in version order.
//! `invalidations.snapshot` holds, for every selector ever invalidated, the
//! highest hard and soft version, folded from every entry up to the version
//! it covers. Start-up applies the snapshot, then every line of the log; the
//! two may overlap because applying an invalidation twice changes nothing.
//!
//! Reading tells a torn tail from damage: bytes after the last good record
//! that no good record follows are a write that was interrupted before its
//! fsync, so never acknowledged, and are cut; a bad record with good ones
//! after it is acknowledged history that cannot be read, and stops the node.

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::log::Entry;
use super::selectors::{Mode, Selector};
use crate::data_dir;

pub(super) const LOG: &str = "invalidations.log";
pub(super) const SNAPSHOT: &str = "invalidations.snapshot";

/// One line of the log file.
#[derive(Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum Line {
    Invalidation(Logged),
}

/// An entry with the client's `Idempotency-Key`, if it sent one: kept in
/// the log (not in the audit the API shows) so that a retry after a
/// restart still finds its entry.
#[derive(Serialize, Deserialize)]
struct Logged {
    #[serde(flatten)]
    entry: Entry,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key: Option<String>,
}

/// The line for `entry` appended under `key`, newline included.
pub(super) fn encode(entry: &Entry, key: Option<&str>) -> Result<String, String> {
    let logged = Logged { entry: entry.clone(), key: key.map(str::to_string) };
    let mut line = serde_json::to_string(&Line::Invalidation(logged))
        .map_err(|e| format!("cannot encode invalidation {}: {e}", entry.version))?;
    line.push('\n');
    Ok(line)
}

/// What reading the log file found.
#[derive(Debug, Default)]
pub(super) struct Scan {
    pub entries: Vec<Entry>,
    /// The `Idempotency-Key` of each entry that has one, by version.
    pub keys: HashMap<u64, String>,
    /// Where the last good record ends: everything after it is a torn tail.
    pub good: u64,
    /// The file's length.
    pub len: u64,
}

/// Reads every good record of the log at `path` (none if it does not exist).
/// Errors name the file, the byte offset and the line of a damaged record
/// that good records follow, or of a version that does not increase.
pub(super) fn read_log(path: &Path) -> Result<Scan, String> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Scan::default()),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let mut scan = Scan { len: bytes.len() as u64, ..Scan::default() };
    // The first record that could not be read: (offset, line, why).
    let mut bad: Option<(usize, usize, String)> = None;
    let mut offset = 0;
    let mut number = 0;
    while offset < bytes.len() {
        number += 1;
        let end = bytes[offset..].iter().position(|b| *b == b'\n').map(|i| offset + i + 1);
        let line = &bytes[offset..end.unwrap_or(bytes.len())];
        let parsed = match end {
            // Every record is written with its newline before the fsync that
            // acknowledges it: one without is an unfinished write.
            None => Err("the record has no line end".to_string()),
            Some(_) if line.trim_ascii().is_empty() => Ok(None),
            Some(_) => serde_json::from_slice::<Line>(line).map(Some).map_err(|e| e.to_string()).or_else(|why| {
                let glued = unglue(line).ok_or(why)?;
                tracing::warn!(
                    path = %path.display(),
                    offset,
                    "recovered an entry written onto a torn record by an earlier version of fresco"
                );
                Ok(Some(glued))
            }),
        };
        match parsed {
            Ok(Some(Line::Invalidation(Logged { entry, key }))) => {
                if let Some((at, n, why)) = bad {
                    return Err(format!(
                        "{} offset {at} (line {n}): {why}; acknowledged entries follow it, so the log is damaged \
                         (restore it from a backup, or move the file away to start with an empty log)",
                        path.display()
                    ));
                }
                if let Some(last) = scan.entries.last()
                    && entry.version <= last.version
                {
                    return Err(format!(
                        "{} offset {offset} (line {number}): version {} after version {}; the log is damaged",
                        path.display(),
                        entry.version,
                        last.version
                    ));
                }
                if let Some(key) = key {
                    scan.keys.insert(entry.version, key);
                }
                scan.entries.push(entry);
                scan.good = end.unwrap_or(bytes.len()) as u64;
            }
            Ok(_) if bad.is_none() => scan.good = end.unwrap_or(bytes.len()) as u64,
            Ok(_) => {}
            Err(why) => {
                bad.get_or_insert((offset, number, why));
            }
        }
        offset = end.unwrap_or(bytes.len());
    }
    Ok(scan)
}

/// Earlier versions did not cut a torn tail, so the next acknowledged
/// record was written onto it on the same line: that record is the longest
/// suffix of the line that parses.
fn unglue(line: &[u8]) -> Option<Line> {
    const START: &[u8] = b"{\"type\":";
    (1..line.len())
        .filter(|&i| line[i..].starts_with(START))
        .find_map(|i| serde_json::from_slice::<Line>(&line[i..]).ok())
}

/// One selector's highest versions; 0 means never.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Record {
    pub selector: Selector,
    #[serde(default)]
    pub hard: u64,
    #[serde(default)]
    pub soft: u64,
}

/// Every invalidation up to `version`, folded per selector.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Snapshot {
    /// Every entry up to this version is folded into `records`.
    pub version: u64,
    /// The log's high-water mark when the snapshot was written: versions
    /// below it were handed out (perhaps to a write that then failed) and
    /// are never handed out again.
    pub next: u64,
    pub records: Vec<Record>,
}

impl Snapshot {
    /// The snapshot with `entries` folded in.
    pub fn fold(self, entries: &[Entry], next: u64) -> Snapshot {
        let mut version = self.version;
        let mut marks: HashMap<Selector, (u64, u64)> =
            self.records.into_iter().map(|r| (r.selector, (r.hard, r.soft))).collect();
        for entry in entries {
            version = version.max(entry.version);
            for selector in &entry.invalidation.selectors {
                let mark = marks.entry(selector.clone()).or_default();
                match entry.invalidation.mode {
                    Mode::Hard => mark.0 = mark.0.max(entry.version),
                    Mode::Soft => mark.1 = mark.1.max(entry.version),
                }
            }
        }
        let records = marks.into_iter().map(|(selector, (hard, soft))| Record { selector, hard, soft }).collect();
        Snapshot { version, next: next.max(self.next), records }
    }
}

/// Reads the snapshot at `path`; an empty one if there is none.
pub(super) fn read_snapshot(path: &Path) -> Result<Snapshot, String> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| format!("{}: {e}; the snapshot is damaged (it is only ever replaced whole)", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Snapshot::default()),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// Replaces the snapshot at `path` atomically; returns its size.
pub(super) fn write_snapshot(path: &Path, snapshot: &Snapshot) -> Result<u64, String> {
    let bytes = serde_json::to_vec(snapshot).map_err(|e| format!("cannot encode the snapshot: {e}"))?;
    data_dir::replace(path, &bytes).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(bytes.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::invalidation::NewInvalidation;

    fn entry(version: u64, tag: &str, mode: Mode) -> Entry {
        Entry {
            version,
            invalidation: NewInvalidation {
                selectors: vec![Selector::Tag(tag.into())],
                mode,
                reason: "test".into(),
                issuer: "t".into(),
                break_glass: false,
            },
            accepted_ms: 1,
        }
    }

    fn file(name: &str, content: &[u8]) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("fresco-logfile-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let p = d.join(LOG);
        std::fs::write(&p, content).unwrap();
        p
    }

    #[test]
    fn a_torn_tail_ends_the_good_part_and_is_reported_for_cutting() {
        let good = encode(&entry(1, "a", Mode::Hard), None).unwrap();
        let second = encode(&entry(2, "b", Mode::Hard), None).unwrap();
        // Half a record, a complete record without its newline, and the
        // zero-filled block a crash can leave behind.
        for tail in [&second.as_bytes()[..20], second.trim_end().as_bytes(), &[0u8; 512][..]] {
            let mut content = good.clone().into_bytes();
            content.extend_from_slice(tail);
            let scan = read_log(&file("torn", &content)).unwrap();
            assert_eq!(scan.entries.len(), 1);
            assert_eq!((scan.good, scan.len), (good.len() as u64, content.len() as u64));
        }
        // A torn record followed by blank lines is still only a tail.
        let content = format!("{good}{{\"type\":\"inval\n\n");
        assert_eq!(read_log(&file("torn-blank", content.as_bytes())).unwrap().good, good.len() as u64);
    }

    #[test]
    fn damage_before_a_good_record_is_an_error_naming_file_and_offset() {
        let good = encode(&entry(1, "a", Mode::Hard), None).unwrap();
        let later = encode(&entry(2, "b", Mode::Hard), None).unwrap();
        let content = format!("{good}garbage\n{later}");
        let p = file("middle", content.as_bytes());
        let err = read_log(&p).unwrap_err();
        assert!(err.contains(&*p.to_string_lossy()), "{err}");
        assert!(err.contains(&format!("offset {} (line 2)", good.len())) && err.contains("damaged"), "{err}");
    }

    #[test]
    fn an_entry_glued_onto_a_torn_record_by_an_older_writer_is_recovered() {
        let good = encode(&entry(1, "a", Mode::Hard), None).unwrap();
        let torn = encode(&entry(2, "torn", Mode::Hard), None).unwrap();
        let acknowledged = encode(&entry(2, "b", Mode::Hard), None).unwrap();
        let content = format!("{good}{}{acknowledged}", &torn[..30]);
        let scan = read_log(&file("glued", content.as_bytes())).unwrap();
        assert_eq!(scan.entries.iter().map(|e| e.version).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(scan.entries[1].invalidation.selectors, vec![Selector::Tag("b".into())]);
        assert_eq!(scan.good, scan.len);
    }

    #[test]
    fn a_version_that_does_not_increase_is_damage() {
        let content = format!(
            "{}{}",
            encode(&entry(5, "a", Mode::Hard), None).unwrap(),
            encode(&entry(5, "b", Mode::Hard), None).unwrap()
        );
        let err = read_log(&file("reused", content.as_bytes())).unwrap_err();
        assert!(err.contains("version 5 after version 5"), "{err}");
    }

    #[test]
    fn folding_keeps_the_highest_version_per_selector_and_mode() {
        let s = Snapshot::default().fold(&[entry(1, "a", Mode::Hard), entry(2, "a", Mode::Soft)], 3);
        let s = s.fold(&[entry(3, "a", Mode::Hard), entry(4, "b", Mode::Soft)], 7);
        assert_eq!((s.version, s.next), (4, 7));
        let mut records = s.records.clone();
        records.sort_by_key(|r| r.hard + r.soft);
        assert_eq!(
            records,
            vec![
                Record { selector: Selector::Tag("b".into()), hard: 0, soft: 4 },
                Record { selector: Selector::Tag("a".into()), hard: 3, soft: 2 },
            ]
        );
    }
}
