//! The embedded invalidation log never loses an acknowledged entry and never
//! hands a version out twice (issue 8 item 8): torn writes from a crash, a
//! full disk, compaction across restarts, the data-directory lock; and the
//! exit status of `fresco purge`. Real `fresco` processes, SIGKILL, a real
//! full file system (a small tmpfs, when running as root).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{Fresco, Got, Nats, Origin, free_port, metric, send, temp_dir};

const LOG: &str = "invalidations.log";

async fn post(fresco: &Fresco, token: &str, body: Value) -> Got {
    crate::harness::invalidate(fresco, token, body.to_string()).await
}

/// Purges `tag` and returns its version; the answer must be 202.
async fn purge(fresco: &Fresco, tag: &str, reason: &str) -> u64 {
    purge_tags(fresco, &[tag.to_string()], reason).await
}

async fn purge_tags(fresco: &Fresco, tags: &[String], reason: &str) -> u64 {
    let r = post(fresco, &fresco.token(), json!({"tags": tags, "reason": reason})).await;
    assert_eq!(r.status, 202, "{}", r.text());
    serde_json::from_slice::<Value>(&r.body).unwrap()["version"].as_u64().unwrap()
}

/// Every acknowledged (version, tag) is in the node's log with that version
/// and selector, and no version went to two entries.
async fn assert_all_kept(fresco: &Fresco, acknowledged: &[(u64, String)], when: &str) {
    let mut versions: Vec<u64> = acknowledged.iter().map(|(v, _)| *v).collect();
    versions.sort();
    versions.dedup();
    assert_eq!(versions.len(), acknowledged.len(), "{when}: a version was handed out twice: {acknowledged:?}");
    let auth = format!("Bearer {}", fresco.token());
    for (version, tag) in acknowledged {
        let r =
            send("GET", &fresco.admin_url(&format!("/api/v1/invalidations/{version}")), &[("authorization", &auth)])
                .await;
        assert_eq!(r.status, 200, "{when}: acknowledged version {version} ({tag}) is gone: {}", r.text());
        let entry: Value = serde_json::from_slice(&r.body).unwrap();
        let first = &entry["selectors"][0];
        assert_eq!(*first, json!({"tag": tag}), "{when}: version {version} now holds another entry: {entry}");
    }
    let newest = versions.last().copied().unwrap_or(0) as f64;
    assert!(metric(fresco, "fresco_invalidation_applied_version").await >= newest, "{when}: replayed up to {newest}");
}

fn restart(dir: &Path, origin: &Origin) -> Fresco {
    let dir_arg = dir.to_str().unwrap();
    let args = ["serve", "--origin", &origin.url(), "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"];
    Fresco::spawn(&[&args[..], &["--data-dir", dir_arg]].concat())
        .unwrap_or_else(|e| panic!("the node must start again after a crash: {e}"))
}

/// What a crash in the middle of writing the next record can leave.
fn tear(log: &Path, round: usize) {
    let record = format!(
        r#"{{"type":"invalidation","version":{},"tags":["torn"],"mode":"hard","reason":"never acknowledged","issuer":"local-admin","break_glass":false,"accepted_ms":1}}"#,
        1000 + round
    );
    let tail: Vec<u8> = match round % 3 {
        0 => record.as_bytes()[..record.len() / 2].to_vec(),
        // The whole record but not its newline: the fsync never ran.
        1 => record.into_bytes(),
        // A crash after the file grew but before its block was written.
        _ => vec![0; 700],
    };
    let mut f = std::fs::OpenOptions::new().append(true).open(log).unwrap();
    std::io::Write::write_all(&mut f, &tail).unwrap();
}

/// Polls `path` (the node's stderr copy) until it mentions `what`.
async fn logged(path: &Path, what: &str) -> bool {
    for _ in 0..100 {
        if std::fs::read_to_string(path).is_ok_and(|t| t.contains(what)) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torn_writes_after_sigkill_lose_no_acknowledged_entry_across_restarts() {
    let origin = Origin::start().await;
    let dir = temp_dir("torn");
    let mut node = Fresco::start_in(&dir, &origin.url(), &[]);
    let mut acknowledged: Vec<(u64, String)> = Vec::new();
    for round in 0..4 {
        for i in 0..3 {
            let tag = format!("r{round}-{i}");
            acknowledged.push((purge(&node, &tag, "torn write test").await, tag));
        }
        node.kill9();
        tear(&dir.join(LOG), round);
        std::fs::remove_file(dir.join("node.log")).unwrap();
        node = restart(&dir, &origin);
        assert!(logged(&dir.join("node.log"), "cut a torn tail").await, "round {round}: the cut is logged");
        let content = std::fs::read(dir.join(LOG)).unwrap();
        assert!(content.ends_with(b"\n") && !content.contains(&0), "round {round}: the torn tail is cut from the file");
        assert!(!String::from_utf8_lossy(&content).contains("never acknowledged"), "round {round}");
        assert_all_kept(&node, &acknowledged, &format!("after restart {round}")).await;
    }
    // The versions continue above every one handed out.
    let newest = acknowledged.iter().map(|(v, _)| *v).max().unwrap();
    assert_eq!(purge(&node, "last", "").await, newest + 1);
}

/// A small tmpfs at `dir`, unmounted when dropped. Needs root: `None`, with
/// the reason printed, where mounting is not allowed.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs(dir.to_path_buf())),
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
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the file system holding `dir` (bounded: at most 4 GiB of writes).
fn fill(dir: &Path) {
    let mut f = std::fs::File::create(dir.join("filler")).unwrap();
    let block = [0u8; 4096];
    for _ in 0..1_000_000 {
        if std::io::Write::write(&mut f, &block).map_or(true, |n| n == 0) {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_answers_503_and_loses_nothing_once_space_is_back() {
    let origin = Origin::start().await;
    let dir = temp_dir("enospc");
    let Some(_tmpfs) = Tmpfs::mount(&dir, "1m") else { return };
    let mut node = Fresco::start_in(&dir, &origin.url(), &[]);
    // Records longer than a page (the first tag names the entry), so that a
    // write into a full file system can leave part of one behind.
    let big = |tag: &str| -> Vec<String> {
        std::iter::once(tag.to_string()).chain((0..40).map(|i| format!("{i}-{}", "p".repeat(200)))).collect()
    };
    let mut acknowledged: Vec<(u64, String)> = Vec::new();
    for i in 0..3 {
        let tag = format!("before-{i}");
        acknowledged.push((purge_tags(&node, &big(&tag), "").await, tag));
    }
    let log_len = std::fs::metadata(dir.join(LOG)).unwrap().len();
    fill(&dir);
    for i in 0..3 {
        let r = post(&node, &node.token(), json!({"tags": big(&format!("refused-{i}"))})).await;
        assert_eq!(r.status, 503, "a full disk refuses: {}", r.text());
        assert!(r.text().contains("No space left"), "{}", r.text());
        assert_eq!(std::fs::metadata(dir.join(LOG)).unwrap().len(), log_len, "no partial record is left behind");
    }
    std::fs::remove_file(dir.join("filler")).unwrap();
    let before = acknowledged.last().unwrap().0;
    for i in 0..3 {
        let tag = format!("after-{i}");
        let version = purge_tags(&node, &big(&tag), "").await;
        assert!(version > before + 3, "the 3 versions handed to refused writes are never reused: {version}");
        acknowledged.push((version, tag));
    }
    assert_all_kept(&node, &acknowledged, "before any restart").await;
    for round in 0..3 {
        if round == 1 {
            node.terminate().await;
        } else {
            node.kill9();
        }
        node = restart(&dir, &origin);
        assert_all_kept(&node, &acknowledged, &format!("after restart {round}")).await;
        let tag = format!("restart-{round}");
        acknowledged.push((purge(&node, &tag, "").await, tag));
    }
    node.kill9();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_stays_bounded_across_thousands_of_purges_and_restarts() {
    let origin = Origin::start().await;
    let dir = temp_dir("compact");
    // The generated local token is rate limited; a bulk job uses its own.
    let token = "bulk-token-0123456789abcdef".to_string();
    let cfg = dir.join("fresco.toml");
    std::fs::create_dir_all(&dir).unwrap();
    let table = format!(
        "[[token]]\nname = \"bulk\"\nsecret = \"{token}\"\nscopes = [\"all\"]\nrate = 100000\nburst = 100000\n"
    );
    std::fs::write(&cfg, table).unwrap();
    let node = Fresco::start_in(&dir, &origin.url(), &["--config", cfg.to_str().unwrap()]);
    const N: usize = 2_600;
    let mut acknowledged: Vec<(u64, String)> = Vec::with_capacity(N);
    let (node_ref, token) = (&node, token.as_str());
    for chunk in (0..N).collect::<Vec<_>>().chunks(50) {
        let answers = futures_util::future::join_all(chunk.iter().map(|i| async move {
            let tag = format!("c{i}");
            let r = post(node_ref, token, json!({"tags": [&tag], "reason": "bulk"})).await;
            assert_eq!(r.status, 202, "{}", r.text());
            (serde_json::from_slice::<Value>(&r.body).unwrap()["version"].as_u64().unwrap(), tag)
        }))
        .await;
        acknowledged.extend(answers);
    }
    acknowledged.sort();
    let mut versions: Vec<u64> = acknowledged.iter().map(|(v, _)| *v).collect();
    versions.dedup();
    assert_eq!(versions.len(), N, "every distinct purge has its own version");
    let newest = acknowledged.last().unwrap().clone();
    let lines = |d: &Path| std::fs::read_to_string(d.join(LOG)).unwrap().lines().count();
    // The log keeps at most 2 000 entries; the rest is in the snapshot.
    assert!(lines(&dir) <= 2_000, "{} lines after {N} purges", lines(&dir));
    assert!(dir.join("invalidations.snapshot").exists());
    node.kill9();
    let node = restart(&dir, &origin);
    assert_eq!(metric(&node, "fresco_invalidation_applied_version").await, newest.0 as f64);
    // The newest entries keep their audit; older ones live on as selector
    // records in the snapshot.
    assert_all_kept(&node, &acknowledged[N - 1_000..], "after a crash").await;
    assert_eq!(purge(&node, "next", "").await, newest.0 + 1, "versions continue after compaction");
    node.terminate().await;
    assert!(lines(&dir) <= 1_000, "a clean shutdown compacts: {} lines", lines(&dir));
    let node = restart(&dir, &origin);
    assert_all_kept(&node, &[(newest.0 + 1, "next".to_string())], "after a clean restart").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_node_on_a_data_directory_is_refused_before_it_reads_the_log() {
    let origin = Origin::start().await;
    let dir = temp_dir("locked");
    let node = Fresco::start_in(&dir, &origin.url(), &[]);
    let version = purge(&node, "first", "").await;
    // A record being written by the running node: a second node must not
    // take it for a torn tail and cut it.
    let log = dir.join(LOG);
    std::fs::OpenOptions::new()
        .append(true)
        .open(&log)
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"{\"type\":"))
        .unwrap();
    let len = std::fs::metadata(&log).unwrap().len();
    let dir_arg = dir.to_str().unwrap();
    let second = Fresco::spawn(&[
        "serve",
        "--origin",
        &origin.url(),
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--data-dir",
        dir_arg,
    ]);
    let err = second.err().expect("the second node must not start");
    assert!(err.contains("in use by another fresco process"), "{err}");
    assert_eq!(std::fs::metadata(&log).unwrap().len(), len, "the second node cut nothing");
    assert_all_kept(&node, &[(version, "first".to_string())], "beside a refused second node").await;
}

/// Runs `fresco purge ARGS` with no token in the environment.
async fn purge_cli(args: &[&str]) -> (i32, String) {
    let (code, stdout, stderr) = crate::harness::run_cli(&[&["purge"], args].concat()).await;
    (code.expect("exited"), format!("{stdout}{stderr}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_exit_status_is_what_its_help_says() {
    let (code, help) = purge_cli(&["--help"]).await;
    assert_eq!(code, 0);
    assert!(help.contains("Exit status: 0") && help.contains("1 the node") && help.contains("2 bad usage"), "{help}");
    let origin = Origin::start().await;
    let node = Fresco::start(&origin.url(), &[]);
    let admin = node.admin_url("");
    let data_dir = node.data_dir.to_str().unwrap();
    let empty = temp_dir("no-token");
    let unreachable = format!("http://127.0.0.1:{}", free_port());
    let cases: [(&[&str], i32, &str); 9] = [
        (&["--admin", &admin, "--data-dir", data_dir, "--tag", "ok"], 0, "accepted: id="),
        (&["--admin", &admin, "--data-dir", data_dir, "--tag", "ok", "--wait"], 0, "converged"),
        (&["--admin", &admin, "--data-dir", data_dir], 2, "nothing to purge"),
        (&["--admin", &admin, "--data-dir", empty.to_str().unwrap(), "--tag", "x"], 2, "no token"),
        (&["--admin", &admin, "--data-dir", data_dir, "--tag", "x", "--bogus"], 2, "--bogus"),
        (&["--admin", "http://bad host", "--token", "t", "--tag", "x"], 2, "bad admin URL"),
        (&["--admin", &admin, "--token", "wrong-token-wrong-token", "--tag", "x"], 1, "refused (401)"),
        (&["--admin", &admin, "--data-dir", data_dir, "--all"], 1, "refused (403)"),
        (&["--admin", &unreachable, "--token", "t", "--tag", "x"], 1, "cannot reach"),
    ];
    for (args, want, says) in cases {
        let (code, text) = purge_cli(args).await;
        assert_eq!(code, want, "fresco purge {args:?}: {text}");
        assert!(text.contains(says), "fresco purge {args:?} says {says:?}: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_wait_exits_1_when_a_live_node_has_not_applied_in_time() {
    let nats = Nats::start().await;
    let origin = Origin::start().await;
    let dir = temp_dir("cli-cfg");
    let cfg = dir.join("fresco.toml");
    let token = "cli-token-0123456789abcdef";
    std::fs::write(&cfg, format!("[[token]]\nname = \"ops\"\nsecret = \"{token}\"\nscopes = [\"all\"]\n")).unwrap();
    let node = |id: &str| {
        let flags = ["--bus", &nats.url(), "--node-id", id, "--config", cfg.to_str().unwrap(), "--down-after", "60s"];
        Fresco::start_in(&temp_dir(id), &origin.url(), &flags)
    };
    let (a, b) = (node("cli-a"), node("cli-b"));
    let auth = format!("Bearer {token}");
    let mut both = false;
    for _ in 0..200 {
        let r = send("GET", &a.admin_url("/api/v1/nodes"), &[("authorization", &auth)]).await;
        let view: Value = serde_json::from_slice(&r.body).unwrap_or_default();
        if view["nodes"].as_array().is_some_and(|n| n.len() == 2) {
            both = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(both, "node a sees node b within 10 s");
    // b is gone but still counted as live (down_after 60 s): it cannot apply.
    b.kill9();
    let (code, text) =
        purge_cli(&["--admin", &a.admin_url(""), "--token", token, "--tag", "t", "--wait", "--timeout", "1"]).await;
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("not converged") && text.contains("cli-b"), "{text}");
}
