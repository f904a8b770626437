//! A cluster of edge nodes on NATS JetStream (issue 5): convergence with
//! per-node acknowledgement, recovery after SIGKILL, the bus going away,
//! retention gaps, and a three-server NATS cluster.

use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};

use crate::harness::{Fresco, Nats, Origin, Reply, get, metric, send, send_body, temp_dir};

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
    let auth = format!("Bearer {TOKEN}");
    send_body(
        "POST",
        &fresco.admin_url("/api/v1/invalidations"),
        &[("authorization", &auth)],
        Bytes::from(body.to_string()),
    )
    .await
}

async fn nodes(fresco: &Fresco) -> Value {
    let auth = format!("Bearer {TOKEN}");
    serde_json::from_slice(&send("GET", &fresco.admin_url("/api/v1/nodes"), &[("authorization", &auth)]).await.body)
        .unwrap()
}

async fn applied(fresco: &Fresco) -> f64 {
    metric(fresco, "fresco_invalidation_applied_version").await
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
    let head = 200.0;
    let b = node(&origin, &nats.url(), "b", &b_dir, &cfg);
    assert_eq!(applied(&b).await, head, "caught up before reporting ready");
    assert!(!get(&b.url("/p")).await.is_hit());
    // A duplicate of an applied invalidation changes nothing on either node.
    let again = post(&a, json!({"tags": ["t-7"]})).await;
    assert_eq!(again.status, 202);
    eventually("both nodes apply the duplicate", async || applied(&a).await == 201.0 && applied(&b).await == 201.0)
        .await;
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_past_the_retention_soft_purges_and_says_so() {
    let nats = Nats::start().await;
    let origin = Origin::start().await;
    let cfg = config();
    let a = node(&origin, &nats.url(), "a", &temp_dir("a"), &cfg);
    let b_dir = temp_dir("b");
    let b = node(&origin, &nats.url(), "b", &b_dir, &cfg);
    assert_eq!(post(&a, json!({"tags": ["one"]})).await.status, 202);
    eventually("b applies 1", async || applied(&b).await == 1.0).await;
    b.kill9();
    for i in 0..5 {
        assert_eq!(post(&a, json!({"tags": [format!("gap-{i}")]})).await.status, 202);
    }
    // Trim the stream as retention would: keep only the newest entry.
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    js.get_stream("FRESCO_INVALIDATIONS").await.unwrap().purge().keep(1).await.unwrap();
    let b = node(&origin, &nats.url(), "b", &b_dir, &cfg);
    assert_eq!(metric(&b, "fresco_invalidation_retention_gaps_total").await, 1.0);
    assert_eq!(applied(&b).await, 6.0);
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
    }
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
        applied(&a).await == highest as f64 && applied(&b).await == highest as f64
    })
    .await;
}
