//! A cluster of edge nodes on NATS JetStream (issue 5): convergence with
//! per-node acknowledgement, recovery after SIGKILL, the bus going away,
//! retention gaps, and a three-server NATS cluster.

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::{Value, json};

use crate::harness::{Fresco, Nats, Origin, Relay, Reply, get, metric, send, send_body, temp_dir};

const TOKEN: &str = "cluster-token-0123456789";

/// A config file with one shared `all` token.
fn config() -> std::path::PathBuf {
    let dir = temp_dir("cluster-cfg");
    let file = dir.join("fresco.toml");
    std::fs::write(
        &file,
        format!("[[token]]\nname = \"ops\"\nsecret = \"{TOKEN}\"\nscopes = [\"all\"]\nrate = 100000\nburst = 100000\n"),
    )
    .unwrap();
    file
}

fn node(origin: &Origin, bus: &str, id: &str, dir: &std::path::Path, cfg: &std::path::Path) -> Fresco {
    Fresco::start_in(
        dir,
        &origin.url(),
        &["--bus", bus, "--node-id", id, "--config", cfg.to_str().unwrap(), "--down-after", "2s"],
    )
}

async fn post(fresco: &Fresco, body: Value) -> crate::harness::Got {
    crate::harness::invalidate(fresco, TOKEN, body.to_string()).await
}

async fn post_keyed(fresco: &Fresco, key: &str, body: Value) -> crate::harness::Got {
    let auth = format!("Bearer {TOKEN}");
    send_body(
        "POST",
        &fresco.admin_url("/api/v1/invalidations"),
        &[("authorization", &auth), ("idempotency-key", key)],
        Bytes::from(body.to_string()),
    )
    .await
}

fn body(got: &crate::harness::Got) -> Value {
    serde_json::from_slice(&got.body).unwrap_or_else(|e| panic!("{e}: {}", got.text()))
}

async fn status(fresco: &Fresco, version: u64) -> Value {
    let auth = format!("Bearer {TOKEN}");
    body(
        &send("GET", &fresco.admin_url(&format!("/api/v1/invalidations/{version}")), &[("authorization", &auth)]).await,
    )
}

/// The log's head as a node sees it.
/// The sequence number of the newest entry in the stream `fresco` follows.
async fn head(fresco: &Fresco) -> u64 {
    let view = nodes(fresco).await;
    view["head"].as_u64().unwrap_or(0) - view["base"].as_u64().unwrap()
}

/// The versions of the stream `fresco` follows are this plus sequence numbers.
async fn base(fresco: &Fresco) -> u64 {
    nodes(fresco).await["base"].as_u64().unwrap()
}

async fn readyz(fresco: &Fresco) -> (u16, Value) {
    let r = get(&fresco.admin_url("/readyz")).await;
    (r.status, body(&r))
}

async fn nodes(fresco: &Fresco) -> Value {
    let auth = format!("Bearer {TOKEN}");
    serde_json::from_slice(&send("GET", &fresco.admin_url("/api/v1/nodes"), &[("authorization", &auth)]).await.body)
        .unwrap()
}

/// The version `fresco` has applied, in the API's numbering.
async fn applied_version(fresco: &Fresco) -> f64 {
    metric(fresco, "fresco_invalidation_applied_version").await
}

/// The sequence number `fresco` has applied in the stream it follows.
async fn applied(fresco: &Fresco) -> f64 {
    let version = applied_version(fresco).await;
    version - base(fresco).await as f64
}

/// Polls until `f` holds, up to 10 s.
async fn eventually<F: AsyncFn() -> bool>(what: &str, f: F) {
    for _ in 0..200 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("not within 10 s: {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_apply_a_tag_purge_and_wait_reports_convergence() {
    let nats = Nats::start().await;
    let origin = Origin::start().await;
    origin.route("/item", Reply::ok("v1").header("cache-control", "max-age=600").header("surrogate-key", "item-1"));
    let cfg = config();
    let nodes3: Vec<Fresco> =
        (1..=3).map(|i| node(&origin, &nats.url(), &format!("edge-{i}"), &temp_dir("n"), &cfg)).collect();
    for n in &nodes3 {
        get(&n.url("/item")).await;
        assert!(get(&n.url("/item")).await.is_hit());
    }
    eventually("all three nodes heartbeat", async || nodes(&nodes3[0]).await["nodes"].as_array().unwrap().len() == 3)
        .await;
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_fresco"))
        .args([
            "purge",
            "--admin",
            &nodes3[0].admin_url(""),
            "--token",
            TOKEN,
            "--tag",
            "item-1",
            "--wait",
            "--timeout",
            "10",
        ])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    for i in 1..=3 {
        assert!(stdout.contains(&format!("edge-{i}")), "per-node line for edge-{i}: {stdout}");
    }
    assert!(stdout.contains("converged: 3 live node(s)"), "{stdout}");
    for n in &nodes3 {
        let r = get(&n.url("/item")).await;
        assert!(r.cache_status().contains("detail=invalidated"), "{}", r.cache_status());
    }
    let status = tokio::process::Command::new(env!("CARGO_BIN_EXE_fresco"))
        .args(["status", "--admin", &nodes3[1].admin_url(""), "--token", TOKEN])
        .output()
        .await
        .unwrap();
    let table = String::from_utf8_lossy(&status.stdout);
    assert!(table.contains("edge-3") && table.contains("live") && table.contains("log head: 1"), "{table}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_during_a_burst_applies_everything_before_serving() {
    let nats = Nats::start().await;
    let origin = Origin::start().await;
    origin.route("/p", Reply::ok("x").header("cache-control", "max-age=600").header("surrogate-key", "t-199"));
    let cfg = config();
    let a = node(&origin, &nats.url(), "a", &temp_dir("a"), &cfg);
    let b_dir = temp_dir("b");
    let b = node(&origin, &nats.url(), "b", &b_dir, &cfg);
    let burst = tokio::spawn({
        let admin = a.admin_url("/api/v1/invalidations");
        async move {
            for i in 0..200 {
                let auth = format!("Bearer {TOKEN}");
                let body = Bytes::from(json!({"tags": [format!("t-{i}")]}).to_string());
                assert_eq!(send_body("POST", &admin, &[("authorization", &auth)], body).await.status, 202);
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    b.kill9();
    burst.await.unwrap();
    eventually("a applies the whole burst", async || applied(&a).await == 200.0).await;
    let b = node(&origin, &nats.url(), "b", &b_dir, &cfg);
    assert_eq!(applied(&b).await, 200.0, "caught up before reporting ready");
    assert!(!get(&b.url("/p")).await.is_hit());
    // A retried request (same Idempotency-Key, sent to either node) yields
    // the same entry: the log holds one.
    let first = post_keyed(&a, "retry-t-7", json!({"tags": ["t-7"]})).await;
    let again = post_keyed(&b, "retry-t-7", json!({"tags": ["t-7"]})).await;
    assert_eq!((first.status, again.status), (202, 202), "{} {}", first.text(), again.text());
    let (first, again) = (body(&first), body(&again));
    assert_eq!((first["id"].clone(), first["version"].clone()), (again["id"].clone(), again["version"].clone()));
    assert_eq!(first["version"].as_u64().unwrap(), base(&a).await + 201);
    eventually("both nodes apply it", async || applied(&a).await == 201.0 && applied(&b).await == 201.0).await;
    assert_eq!(head(&a).await, 201, "one entry for both requests");
    // Same final state: an object fetched now is stored and valid on both.
    for n in [&a, &b] {
        get(&n.url("/p")).await;
        assert!(get(&n.url("/p")).await.is_hit());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_bus_purges_are_refused_and_hits_still_served() {
    let mut nats = Nats::start().await;
    let origin = Origin::start().await;
    origin.route("/c", Reply::ok("cached").header("cache-control", "max-age=600").header("surrogate-key", "c"));
    let cfg = config();
    let a = node(&origin, &nats.url(), "a", &temp_dir("a"), &cfg);
    let b = node(&origin, &nats.url(), "b", &temp_dir("b"), &cfg);
    get(&a.url("/c")).await;
    nats.stop();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let refused = post(&a, json!({"tags": ["c"]})).await;
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert!(refused.text().contains("bus"), "{}", refused.text());
    assert!(get(&a.url("/c")).await.is_hit(), "serving goes on");
    nats.restart().await;
    eventually("the bus accepts again", async || post(&a, json!({"tags": ["c"]})).await.status == 202).await;
    eventually("both nodes resume and converge", async || applied(&a).await >= 1.0 && applied(&b).await >= 1.0).await;
    assert!(!get(&a.url("/c")).await.is_hit());
    for n in [&a, &b] {
        assert_eq!(
            metric(n, "fresco_invalidation_retention_gaps_total").await,
            0.0,
            "the restarted server kept the stream"
        );
    }
}

/// A node partitioned from the bus while the stream's retention drops what
/// it missed: on reconnecting it soft-purges what it stored (revalidated,
/// not served as fresh), counts the gap, and the status never says it
/// applied the entries it skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_past_the_retention_soft_purges_and_says_so() {
    let nats = Nats::start().await;
    let origin = Origin::start().await;
    origin.route("/kept", Reply::ok("kept").header("cache-control", "max-age=600").header("etag", "\"k1\""));
    let cfg = config();
    let a = node(&origin, &nats.url(), "a", &temp_dir("a"), &cfg);
    let link = Relay::start(nats.port).await;
    let b = node(&origin, &link.nats_url(), "b", &temp_dir("b"), &cfg);
    assert_eq!(post(&a, json!({"tags": ["one"]})).await.status, 202);
    eventually("b applies 1", async || applied(&b).await == 1.0).await;
    get(&b.url("/kept")).await;
    assert!(get(&b.url("/kept")).await.is_hit());
    link.cut();
    for i in 0..5 {
        assert_eq!(post(&a, json!({"tags": [format!("gap-{i}")]})).await.status, 202);
    }
    // Trim the stream as retention would: keep only the newest entry.
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    js.get_stream("FRESCO_INVALIDATIONS").await.unwrap().purge().keep(1).await.unwrap();
    link.heal();
    eventually("b applies 6 after the gap", async || applied(&b).await == 6.0).await;
    assert_eq!(metric(&b, "fresco_invalidation_retention_gaps_total").await, 1.0);
    let r = get(&b.url("/kept")).await;
    assert!(!r.is_hit() && r.cache_status().contains("detail=invalidated"), "soft-purged: {}", r.cache_status());
    assert_eq!(r.text(), "kept");
    // b skipped 2..=5: never listed as having applied them; 6 it applied.
    let base = base(&a).await;
    let skipped = status(&a, base + 3).await;
    let b_row = skipped["nodes"].as_array().unwrap().iter().find(|n| n["node"] == "b").cloned().unwrap();
    assert_eq!(b_row["applied"], false, "{skipped}");
    assert_eq!(skipped["converged"], false, "b may still serve what entry 3 selected (stale): {skipped}");
    assert!(skipped["unconfirmed"].as_array().unwrap().contains(&json!("b")), "{skipped}");
    eventually("entry 6 converges", async || status(&a, base + 6).await["converged"] == true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_server_nats_cluster_carries_the_log() {
    let servers = Nats::cluster3().await;
    let origin = Origin::start().await;
    origin.route("/r", Reply::ok("r").header("cache-control", "max-age=600").header("cache-tag", "r"));
    let cfg = config();
    let nodes3: Vec<Fresco> = servers
        .iter()
        .enumerate()
        .map(|(i, s)| {
            Fresco::start_in(
                &temp_dir("n"),
                &origin.url(),
                &[
                    "--bus",
                    &s.url(),
                    "--node-id",
                    &format!("e{i}"),
                    "--config",
                    cfg.to_str().unwrap(),
                    "--bus-replicas",
                    "3",
                ],
            )
        })
        .collect();
    for n in &nodes3 {
        get(&n.url("/r")).await;
    }
    eventually("every node heartbeats", async || nodes(&nodes3[2]).await["nodes"].as_array().unwrap().len() == 3).await;
    let accepted: Value = serde_json::from_slice(&post(&nodes3[1], json!({"tags": ["r"]})).await.body).unwrap();
    let id = accepted["id"].as_str().unwrap().to_string();
    let auth = format!("Bearer {TOKEN}");
    eventually("converged on all three", async || {
        let s = send("GET", &nodes3[0].admin_url(&format!("/api/v1/invalidations/{id}")), &[("authorization", &auth)])
            .await;
        serde_json::from_slice::<Value>(&s.body).is_ok_and(|v| v["converged"] == true)
    })
    .await;
    for n in &nodes3 {
        assert!(!get(&n.url("/r")).await.is_hit());
        // Every server reports the stream's creation time alike, so no
        // node mistakes the leader it asked for a new stream.
        assert_eq!(metric(n, "fresco_invalidation_retention_gaps_total").await, 0.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_cannot_share_a_data_directory_in_bus_mode() {
    let nats = Nats::start().await;
    let origin = Origin::start().await;
    let cfg = config();
    let dir = temp_dir("shared");
    let _first = node(&origin, &nats.url(), "one", &dir, &cfg);
    let dir_arg = dir.to_str().unwrap();
    let bus = nats.url();
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
        "--bus",
        &bus,
        "--node-id",
        "two",
        "--config",
        cfg.to_str().unwrap(),
    ]);
    let err = second.err().expect("the second node must not start");
    assert!(err.contains("in use by another fresco process"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_storm_through_two_nodes_loses_nothing() {
    let nats = Nats::start().await;
    let origin = Origin::start().await;
    let cfg = config();
    let a = node(&origin, &nats.url(), "a", &temp_dir("a"), &cfg);
    let b = node(&origin, &nats.url(), "b", &temp_dir("b"), &cfg);
    let (admin_a, admin_b) = (a.admin_url("/api/v1/invalidations"), b.admin_url("/api/v1/invalidations"));
    let tasks: Vec<_> = (0..1000)
        .map(|i| {
            let admin = if i % 2 == 0 { admin_a.clone() } else { admin_b.clone() };
            tokio::spawn(async move {
                let auth = format!("Bearer {TOKEN}");
                // Every tenth request repeats a tag: merged or not, it is applied.
                let tag = if i % 10 == 0 { "hot".to_string() } else { format!("storm-{i}") };
                let body = Bytes::from(json!({ "tags": [tag] }).to_string());
                let r = send_body("POST", &admin, &[("authorization", &auth)], body).await;
                (r.status, serde_json::from_slice::<Value>(&r.body).ok().and_then(|v| v["version"].as_u64()))
            })
        })
        .collect();
    let mut highest = 0;
    for t in tasks {
        let (status, version) = t.await.unwrap();
        assert_eq!(status, 202, "accepted, or refused with 429 when over limits; this token has room");
        highest = highest.max(version.unwrap());
    }
    assert!(highest >= 900, "distinct tags are not merged away: {highest}");
    eventually("both nodes apply every accepted invalidation", async || {
        applied_version(&a).await == highest as f64 && applied_version(&b).await == highest as f64
    })
    .await;
    for n in [&a, &b] {
        assert_eq!(metric(n, "fresco_invalidation_retention_gaps_total").await, 0.0, "no version skipped");
    }
}

/// Item 9: the stream is deleted and recreated (its storage lost) while two
/// nodes run and a third is stopped. Sequences start again at 1, below every
/// node's position; each purge after that must still take effect on every
/// node, and the status never claims a node applied what it did not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recreated_stream_is_followed_and_its_purges_take_effect_everywhere() {
    let nats = Nats::start().await;
    let origin = Origin::start().await;
    let route = |i: usize, body: &str| {
        let tag = format!("o{i}");
        origin
            .route(&format!("/o{i}"), Reply::ok(body).header("cache-control", "max-age=600").header("cache-tag", &tag));
    };
    for i in 0..20 {
        route(i, "old");
    }
    let cfg = config();
    let a = node(&origin, &nats.url(), "a", &temp_dir("a"), &cfg);
    let b = node(&origin, &nats.url(), "b", &temp_dir("b"), &cfg);
    let c_dir = temp_dir("c");
    let c = node(&origin, &nats.url(), "c", &c_dir, &cfg);
    for i in 0..30 {
        assert_eq!(post(&a, json!({"tags": [format!("before-{i}")]})).await.status, 202);
    }
    eventually("every node applies 30", async || {
        applied(&a).await == 30.0 && applied(&b).await == 30.0 && applied(&c).await == 30.0
    })
    .await;
    let old_last = applied_version(&a).await as u64;
    c.kill9();
    for n in [&a, &b] {
        for i in 0..20 {
            get(&n.url(&format!("/o{i}"))).await;
            assert!(get(&n.url(&format!("/o{i}"))).await.is_hit());
        }
    }
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    js.delete_stream("FRESCO_INVALIDATIONS").await.unwrap();
    for i in 0..20 {
        route(i, "new");
    }
    // The nodes recreate the stream; until then an append is refused (503).
    let mut versions = Vec::new();
    for i in 0..20 {
        let mut accepted = None;
        for _ in 0..200 {
            let r = post(if i % 2 == 0 { &a } else { &b }, json!({"tags": [format!("o{i}")]})).await;
            if r.status == 202 {
                accepted = Some(body(&r)["version"].as_u64().unwrap());
                break;
            }
            assert_eq!(r.status, 503, "{}", r.text());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        versions.push(accepted.expect("the stream is back within 10 s"));
    }
    // Issue 8 item 9 / model finding F9: the new stream's sequences start
    // at 1 again, but its versions (the API's ids) are above the old ones.
    assert!(versions.iter().all(|v| *v > old_last), "numbered above the old stream ({old_last}): {versions:?}");
    let (low, high) = (versions.iter().min().unwrap(), versions.iter().max().unwrap());
    assert_eq!(high - low, 19, "one entry each, consecutive in the new stream: {versions:?}");
    for n in [&a, &b] {
        for i in 0..20 {
            let key = format!("/o{i}");
            let url = n.url(&key);
            eventually(&format!("{key} purged on {}", n.data), async || get(&url).await.text() == "new").await;
        }
    }
    assert!(metric(&a, "fresco_invalidation_retention_gaps_total").await >= 1.0, "counted");
    // The stopped node comes back with a position in the old stream.
    let c = node(&origin, &nats.url(), "c", &c_dir, &cfg);
    assert_eq!(metric(&c, "fresco_invalidation_retention_gaps_total").await, 1.0, "c noticed the new stream");
    let last = *versions.iter().max().unwrap();
    eventually("every node confirms the last purge", async || {
        let s = status(&a, last).await;
        s["converged"] == true && s["nodes"].as_array().unwrap().iter().filter(|n| n["applied"] == true).count() == 3
    })
    .await;
    let view = nodes(&c).await;
    for n in view["nodes"].as_array().unwrap() {
        assert_eq!(n["stream"], view["stream"], "every node follows the new stream: {view}");
        assert!(n["applied_version"].as_u64().unwrap() <= last, "no position from the old stream: {view}");
    }
    get(&c.url("/o3")).await;
    assert_eq!(get(&c.url("/o3")).await.text(), "new");
}

/// Item 10: a node cut off from the bus (a real partition of its TCP link)
/// stops answering from its store once `max_log_silence` has passed, says
/// it is not ready, and an invalidation accepted meanwhile never reports
/// converged while that node may still be serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_node_stops_serving_stored_objects_and_status_waits_for_it() {
    let nats = Nats::start().await;
    let origin = Origin::start().await;
    origin.route("/obj", Reply::ok("v1").header("cache-control", "max-age=600").header("surrogate-key", "obj"));
    let cfg = config();
    let a = node(&origin, &nats.url(), "a", &temp_dir("a"), &cfg);
    let link = Relay::start(nats.port).await;
    let c = node(&origin, &link.nats_url(), "c", &temp_dir("c"), &cfg);
    get(&c.url("/obj")).await;
    assert!(get(&c.url("/obj")).await.is_hit());
    assert_eq!(readyz(&c).await.0, 200, "{}", readyz(&c).await.1);
    eventually("both nodes heartbeat", async || nodes(&a).await["nodes"].as_array().unwrap().len() == 2).await;
    link.cut();
    origin.route("/obj", Reply::ok("v2").header("cache-control", "max-age=600").header("surrogate-key", "obj"));
    let accepted = post(&a, json!({"tags": ["obj"]})).await;
    assert_eq!(accepted.status, 202, "{}", accepted.text());
    let version = body(&accepted)["version"].as_u64().unwrap();
    // While c answers from its store, the purge is not converged. Read the
    // status first: c serving afterwards means it was serving then too.
    let mut served_while_cut = 0;
    for _ in 0..400 {
        let s = status(&a, version).await;
        let r = get(&c.url("/obj")).await;
        if r.text() == "v1" {
            served_while_cut += 1;
            assert_eq!(s["converged"], false, "c still serves the purged object: {s}");
            assert!(s["unconfirmed"].as_array().unwrap().contains(&json!("c")), "{s}");
        } else {
            assert!(!r.is_hit(), "{}", r.cache_status());
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(get(&c.url("/obj")).await.text(), "v2", "past the bound c fetches rather than serve its store");
    let (code, ready) = readyz(&c).await;
    assert_eq!(code, 503, "{ready}");
    assert!(ready["failed"].as_array().unwrap().contains(&json!("log_reachable")), "{ready}");
    eventually("converged once c can no longer be serving", async || status(&a, version).await["converged"] == true)
        .await;
    let s = status(&a, version).await;
    assert!(s["down"].as_array().unwrap().contains(&json!("c")), "{s}");
    assert!(served_while_cut < 400);
    link.heal();
    eventually("c is ready again", async || readyz(&c).await.0 == 200).await;
    eventually("c applied the purge", async || applied_version(&c).await >= version as f64).await;
    get(&c.url("/obj")).await;
    let r = get(&c.url("/obj")).await;
    assert!(r.is_hit() && r.text() == "v2", "{}", r.cache_status());
}

/// Item 11, in both modes: a request retried with the same
/// `Idempotency-Key` gets the same id and version and makes no second
/// entry; the key with another invalidation is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_makes_a_retry_yield_the_same_entry() {
    let nats = Nats::start().await;
    let origin = Origin::start().await;
    let cfg = config();
    let bus = node(&origin, &nats.url(), "a", &temp_dir("a"), &cfg);
    let alone_dir = temp_dir("alone");
    let alone = Fresco::start_in(&alone_dir, &origin.url(), &["--config", cfg.to_str().unwrap()]);
    for n in [&bus, &alone] {
        assert_eq!(post(n, json!({"tags": ["first"]})).await.status, 202);
        let once = post_keyed(n, "k-123", json!({"tags": ["x"], "mode": "soft"})).await;
        let twice = post_keyed(n, "k-123", json!({"tags": ["x"], "mode": "soft"})).await;
        assert_eq!((once.status, twice.status), (202, 202), "{}", twice.text());
        let base = base(n).await;
        assert_eq!(body(&once)["version"].as_u64().unwrap(), base + 2);
        assert_eq!(body(&once)["id"], body(&twice)["id"]);
        let other = post_keyed(n, "k-123", json!({"tags": ["y"]})).await;
        assert_eq!(other.status, 400, "{}", other.text());
        assert!(other.text().contains("Idempotency-Key"), "{}", other.text());
        let bad = post_keyed(n, "has space", json!({"tags": ["y"]})).await;
        assert_eq!(bad.status, 400, "{}", bad.text());
        let again = body(&post(n, json!({"tags": ["x"], "mode": "soft"})).await)["version"].as_u64();
        assert_eq!(again.unwrap(), base + 3, "no key: a new entry");
    }
    // The embedded log keeps the key with its entry: a retry after a crash
    // and restart still yields the entry, not a second one.
    alone.kill9();
    let alone = Fresco::start_in(&alone_dir, &origin.url(), &["--config", cfg.to_str().unwrap()]);
    let retry = post_keyed(&alone, "k-123", json!({"tags": ["x"], "mode": "soft"})).await;
    assert_eq!(retry.status, 202, "{}", retry.text());
    assert_eq!(body(&retry)["version"], 2, "the entry from before the restart");
    let reused = post_keyed(&alone, "k-123", json!({"tags": ["y"]})).await;
    assert_eq!(reused.status, 400, "{}", reused.text());
}

/// A `nats-server` with JetStream and two users, `admin` and `edge`, whose
/// permissions the test changes while it runs (SIGHUP reloads the file).
struct AuthNats {
    port: u16,
    conf: std::path::PathBuf,
    store: std::path::PathBuf,
    child: std::process::Child,
}

impl AuthNats {
    async fn start() -> AuthNats {
        let dir = temp_dir("nats-auth");
        let port = crate::harness::free_port();
        let (conf, store) = (dir.join("nats.conf"), dir.join("store"));
        let mut nats = AuthNats { port, conf, store, child: std::process::Command::new("true").spawn().unwrap() };
        nats.write(false);
        nats.child = std::process::Command::new("nats-server")
            .args(["-c", nats.conf.to_str().unwrap()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("nats-server is installed");
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                return nats;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("nats-server did not start");
    }

    /// With `deny`, `edge` may no longer create or pull from consumers.
    fn write(&self, deny: bool) {
        let perms = if deny { r#", permissions: { publish: { deny: ["$JS.API.CONSUMER.>"] } }"# } else { "" };
        std::fs::write(
            &self.conf,
            format!(
                "host: 127.0.0.1\nport: {}\njetstream {{ store_dir: \"{}\" }}\nauthorization {{ users = [\n  {{ user: \"admin\", password: \"adminpass\" }}\n  {{ user: \"edge\", password: \"edgepass\"{perms} }}\n] }}\n",
                self.port,
                self.store.display()
            ),
        )
        .unwrap();
    }

    async fn reload(&self, deny: bool) {
        self.write(deny);
        let pid = self.child.id().to_string();
        assert!(tokio::process::Command::new("kill").args(["-HUP", &pid]).status().await.unwrap().success());
    }

    /// Whether `edge` may create a consumer now (the reload has taken effect).
    async fn edge_may_consume(&self) -> bool {
        let Ok(client) = async_nats::ConnectOptions::with_user_and_password("edge".into(), "edgepass".into())
            .request_timeout(Some(Duration::from_millis(500)))
            .connect(self.url("edge", self.port))
            .await
        else {
            return false;
        };
        let js = async_nats::jetstream::new(client);
        let Ok(stream) = js.get_stream("FRESCO_INVALIDATIONS").await else { return false };
        stream.create_consumer(async_nats::jetstream::consumer::pull::Config::default()).await.is_ok()
    }

    /// Removes every consumer of the stream (as an operator would).
    async fn drop_consumers(&self) {
        let client = async_nats::ConnectOptions::with_user_and_password("admin".into(), "adminpass".into())
            .connect(self.url("admin", self.port))
            .await
            .unwrap();
        let stream = async_nats::jetstream::new(client).get_stream("FRESCO_INVALIDATIONS").await.unwrap();
        let names: Vec<String> = stream.consumer_names().filter_map(|n| async move { n.ok() }).collect().await;
        for name in names {
            let _ = stream.delete_consumer(&name).await;
        }
    }

    fn url(&self, user: &str, port: u16) -> String {
        format!("nats://{user}:{user}pass@127.0.0.1:{port}")
    }
}

impl Drop for AuthNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Item 12: a node whose log consumer stops applying while the log stays
/// reachable — here its NATS user loses the right to consume (a real
/// permission change the server reloads) and its consumer is removed, so
/// it cannot get another — serves no stored object as a hit and reports not
/// ready, naming the consumer; once allowed again it catches up and serves
/// from its store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_consumer_stops_serves_no_stored_hits_and_is_not_ready() {
    let nats = AuthNats::start().await;
    let origin = Origin::start().await;
    origin.route("/s", Reply::ok("v1").header("cache-control", "max-age=600").header("cache-tag", "s"));
    let cfg = config();
    let a = node(&origin, &nats.url("admin", nats.port), "a", &temp_dir("a"), &cfg);
    let c = node(&origin, &nats.url("edge", nats.port), "c", &temp_dir("c"), &cfg);
    assert_eq!(post(&a, json!({"tags": ["warm-up"]})).await.status, 202);
    eventually("c applies", async || applied(&c).await == 1.0).await;
    get(&c.url("/s")).await;
    assert!(get(&c.url("/s")).await.is_hit());
    nats.reload(true).await;
    eventually("the server refuses consumers to edge", async || !nats.edge_may_consume().await).await;
    nats.drop_consumers().await;
    origin.route("/s", Reply::ok("v2").header("cache-control", "max-age=600").header("cache-tag", "s"));
    assert_eq!(post(&a, json!({"tags": ["s"]})).await.status, 202);
    eventually("c reports its consumer", async || {
        let (code, body) = readyz(&c).await;
        code == 503 && body["failed"].as_array().unwrap().contains(&json!("consumer"))
    })
    .await;
    let (_, ready) = readyz(&c).await;
    assert!(!ready["failed"].as_array().unwrap().contains(&json!("log_reachable")), "the log is reachable: {ready}");
    assert_eq!(applied(&c).await, 1.0, "the purge is not applied on c");
    for _ in 0..2 {
        let r = get(&c.url("/s")).await;
        assert!(!r.is_hit() && r.text() == "v2", "no stored object answers: {}", r.cache_status());
    }
    nats.reload(false).await;
    eventually("c is ready again", async || readyz(&c).await.0 == 200).await;
    assert_eq!(applied(&c).await, 2.0);
    get(&c.url("/s")).await;
    assert!(get(&c.url("/s")).await.is_hit());
}

/// SIGTERM stops every background task and the node exits cleanly, with
/// its position (and the stream it refers to) on disk; the next start goes
/// on from there without replaying or skipping anything. A single node's
/// `/readyz` names its checks too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_stops_on_sigterm_with_its_position_persisted() {
    let nats = Nats::start().await;
    let origin = Origin::start().await;
    let cfg = config();
    let dir = temp_dir("a");
    let a = node(&origin, &nats.url(), "a", &dir, &cfg);
    for i in 0..3 {
        assert_eq!(post(&a, json!({"tags": [format!("t{i}")]})).await.status, 202);
    }
    eventually("a applies 3", async || applied(&a).await == 3.0).await;
    let stream = nodes(&a).await["stream"].clone();
    assert!(a.terminate().await.success());
    let position: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("applied-version")).unwrap()).unwrap();
    assert_eq!((position["applied"].clone(), position["stream"].clone()), (json!(3), stream));
    let a = node(&origin, &nats.url(), "a", &dir, &cfg);
    assert_eq!(applied(&a).await, 3.0);
    assert_eq!(metric(&a, "fresco_invalidation_retention_gaps_total").await, 0.0);
    let (code, ready) = readyz(&a).await;
    assert_eq!(code, 200, "{ready}");
    let alone = Fresco::start_in(&temp_dir("alone"), &origin.url(), &["--config", cfg.to_str().unwrap()]);
    let (code, ready) = readyz(&alone).await;
    assert_eq!(code, 200, "{ready}");
    let names: Vec<&str> = ready["checks"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["caught_up", "tasks"]);
}

/// An entry this node cannot read (another version's format) is applied as
/// a hard purge of everything rather than skipped: skipping could lose a
/// purge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_entry_purges_everything_instead_of_being_skipped() {
    let nats = Nats::start().await;
    let origin = Origin::start().await;
    origin.route("/u", Reply::ok("u").header("cache-control", "max-age=600"));
    let cfg = config();
    let a = node(&origin, &nats.url(), "a", &temp_dir("a"), &cfg);
    get(&a.url("/u")).await;
    assert!(get(&a.url("/u")).await.is_hit());
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let ack = js.publish("fresco.invalidations", r#"{"selectors":[{"regex":".*"}],"v":2}"#.into()).await.unwrap();
    assert_eq!(ack.await.unwrap().sequence, 1);
    eventually("a applies it", async || applied(&a).await == 1.0).await;
    assert_eq!(metric(&a, "fresco_invalidation_unreadable_total").await, 1.0);
    let r = get(&a.url("/u")).await;
    assert!(!r.is_hit() && r.cache_status().contains("detail=invalidated"), "{}", r.cache_status());
}

/// An edge restarted during a bus outage comes up anyway: it answers from
/// the origin, trusts nothing it stores and is not ready; once the bus is
/// back it follows the log and serves hits again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_started_while_the_bus_is_down_serves_from_the_origin_until_it_reaches_the_log() {
    let origin = Origin::start().await;
    origin.route("/page", Reply::ok("page").header("cache-control", "max-age=600"));
    let mut nats = Nats::start().await;
    nats.stop();
    let cfg = config();
    let edge = node(&origin, &nats.url(), "offline", &temp_dir("offline-start"), &cfg);
    for _ in 0..3 {
        let r = get(&edge.url("/page")).await;
        assert_eq!((r.status, r.text().as_str()), (200, "page"));
        assert!(!r.is_hit(), "nothing stored is trusted without the log: {}", r.cache_status());
    }
    assert_eq!(get(&edge.admin_url("/readyz")).await.status, 503);
    nats.restart().await;
    eventually("the node reaches the log and is ready", async || get(&edge.admin_url("/readyz")).await.status == 200)
        .await;
    get(&edge.url("/page")).await;
    assert!(get(&edge.url("/page")).await.is_hit());
    let accepted = post(&edge, json!({"urls": [format!("http://{}/page", edge.data)]})).await;
    assert_eq!(accepted.status, 202, "{}", accepted.text());
    eventually("the purge applies once the log is reached", async || !get(&edge.url("/page")).await.is_hit()).await;
}
