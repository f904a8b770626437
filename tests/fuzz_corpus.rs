//! Runs every fuzz target's body (fuzz/src/lib.rs) over the inputs kept in
//! fuzz/corpus/<target>/: the seeds of tricky input, and every input that
//! once made a target crash. So what the fuzzer found stays fixed, on every
//! `cargo test`, without nightly or cargo-fuzz. scripts/fuzz.sh runs the
//! fuzzer itself.

#[path = "../fuzz/src/lib.rs"]
mod targets;

use std::path::Path;

#[test]
fn every_fuzz_target_survives_its_corpus() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let mut failures = Vec::new();
    let mut inputs = 0;
    for (name, body) in targets::TARGETS {
        let dir = root.join(name);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: every target keeps a corpus ({e})", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "{}: empty corpus", dir.display());
        for file in files {
            let data = std::fs::read(&file).unwrap();
            inputs += 1;
            if let Err(panic) = std::panic::catch_unwind(|| body(&data)) {
                let why = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                failures.push(format!("{name} {}: {why}", file.display()));
            }
        }
    }
    assert!(failures.is_empty(), "{} of {inputs} corpus inputs crash:\n{}", failures.len(), failures.join("\n"));
}

/// Every target has a fuzz_targets/ entry point and a corpus folder, and
/// nothing else is there: a target added to one place only is caught.
#[test]
fn fuzz_targets_corpora_and_entry_points_agree() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let names = |dir: &str, strip: &str| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(fuzz.join(dir))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().trim_end_matches(strip).to_string())
            .collect();
        v.sort();
        v
    };
    let mut expected: Vec<String> = targets::TARGETS.iter().map(|(n, _)| n.to_string()).collect();
    expected.sort();
    assert_eq!(names("fuzz_targets", ".rs"), expected);
    assert_eq!(names("corpus", ""), expected);
}
