//! `fresco diagnose` (issue 12): real origins, real `fresco` nodes, a real
//! NATS JetStream; the tool must name the layer serving a stale copy and why.

use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{Fresco, Nats, Origin, Relay, Reply, eventually, metric, send, temp_dir};

const TOKEN: &str = "diagnose-token-0123456789";
/// The public host every client (and the tool) asks for.
const HOST: &str = "shop.test";

fn config() -> std::path::PathBuf {
    let file = temp_dir("diagnose-cfg").join("fresco.toml");
    std::fs::write(&file, format!("[[token]]\nname = \"ops\"\nsecret = \"{TOKEN}\"\nscopes = [\"all\"]\n")).unwrap();
    file
}

fn version(v: &str) -> Reply {
    Reply::ok(&format!("release {v}"))
        .header("cache-control", "max-age=600")
        .header("surrogate-key", "obj")
        .header("etag", &format!("\"{v}\""))
        .header("x-deploy-version", v)
}

/// GETs `path` through `node` as a client of the public host would.
async fn fetch(node: &Fresco, path: &str) -> crate::harness::Got {
    send("GET", &node.url(path), &[("host", HOST)]).await
}

fn layer(node: &Fresco) -> String {
    format!("http://{},admin=http://{}", node.data, node.admin)
}

async fn diagnose(args: &[&str]) -> (Option<i32>, String, String) {
    crate::harness::run_cli(&[&["diagnose"], args].concat()).await
}

fn verdict<'a>(report: &'a Value, node: &Fresco) -> &'a Value {
    let name = format!("http://{}/", node.data);
    report["judgement"]["verdicts"].as_array().unwrap().iter().find(|v| v["layer"] == name.as_str()).unwrap()
}

/// Two nodes on one JetStream log; one is partitioned from the bus (its
/// `max_log_silence` set long, as an operator who prefers serving to
/// missing would) while a tag purge is accepted. The tool names that node
/// and the purge it has not applied, and finds the other one current.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_the_node_that_missed_a_purge_and_the_purge() {
    let nats = Nats::start().await;
    let origin = Origin::start().await;
    origin.route("/obj", version("41"));
    let cfg = config();
    let cfg = cfg.to_str().unwrap();
    let a = Fresco::start_in(&temp_dir("a"), &origin.url(), &["--bus", &nats.url(), "--node-id", "a", "--config", cfg]);
    let link = Relay::start(nats.port).await;
    let c = Fresco::start_in(
        &temp_dir("c"),
        &origin.url(),
        &["--bus", &link.nats_url(), "--node-id", "c", "--config", cfg, "--max-log-silence", "600s"],
    );
    for n in [&a, &c] {
        fetch(n, "/obj").await;
        assert!(fetch(n, "/obj").await.is_hit());
    }
    // a must know c (and the bound c serves for) before the partition, so
    // that its view says c may still be serving.
    let auth = format!("Bearer {TOKEN}");
    eventually("a hears c's heartbeat", Duration::from_secs(20), async || {
        send("GET", &a.admin_url("/api/v1/nodes"), &[("authorization", &auth)]).await.text().contains("\"c\"")
    })
    .await;
    link.cut();
    origin.route("/obj", version("42"));
    let accepted =
        crate::harness::invalidate(&a, TOKEN, json!({"tags": ["obj"], "reason": "deploy 42"}).to_string()).await;
    assert_eq!(accepted.status, 202, "{}", accepted.text());
    let purge: Value = serde_json::from_slice(&accepted.body).unwrap();
    let purged = purge["version"].as_u64().unwrap();
    eventually("a applies the purge", Duration::from_secs(20), async || {
        metric(&a, "fresco_invalidation_applied_version").await >= purged as f64
    })
    .await;
    assert_eq!(fetch(&c, "/obj").await.text(), "release 41", "c still serves its stored copy (the setup holds)");

    let url = format!("http://{HOST}/obj");
    let (code, stdout, stderr) = diagnose(&[
        &url,
        "--origin",
        &origin.url(),
        "--node",
        &layer(&a),
        "--node",
        &layer(&c),
        "--token",
        TOKEN,
        "--version-header",
        "x-deploy-version",
        "--json",
    ])
    .await;
    assert_eq!(code, Some(1), "a stale layer fails the run: {stderr}");
    let report: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(report["judgement"]["reference"]["version"], "42", "{stdout}");
    assert_eq!(verdict(&report, &a)["state"], "current", "{stdout}");
    let stale = verdict(&report, &c);
    assert_eq!(stale["state"], "stale", "{stdout}");
    let cause = &stale["causes"][0];
    assert_eq!(cause["cause"], "purge-not-applied", "{stdout}");
    assert_eq!(cause["version"], purged, "{stdout}");
    assert_eq!(cause["reason"], "deploy 42", "{stdout}");
    assert!(cause["applied"].as_u64().unwrap() < purged, "{stdout}");
    assert_eq!(cause["unconfirmed"], json!(["c"]), "the cluster's name for it: {stdout}");
    // The no-cache request through c fetched the current copy: nothing
    // behind c is old, so the purge is the whole story.
    assert!(!stale["causes"].as_array().unwrap().iter().any(|c| c["cause"] == "upstream-old"), "{stdout}");
}

/// One node holding a copy whose TTL has not run out after the origin
/// changed: the tool says so in plain words, with when it expires, and a
/// purge of the URL makes the same check pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_stored_copy_is_reported_as_ttl_not_expired_until_purged() {
    let origin = Origin::start().await;
    origin.route("/app.js", version("41"));
    let node = Fresco::start(&origin.url(), &[]);
    fetch(&node, "/app.js").await;
    assert!(fetch(&node, "/app.js").await.is_hit());
    origin.route("/app.js", version("42"));

    let url = format!("http://{HOST}/app.js");
    let token = node.token();
    let args =
        ["--origin", &origin.url(), "--node", &layer(&node), "--token", &token, "--version-header", "x-deploy-version"];
    let (code, stdout, stderr) = diagnose(&[&[url.as_str()][..], &args].concat()).await;
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    let verdict = stdout.lines().find(|l| l.contains("STALE")).unwrap_or_else(|| panic!("{stdout}"));
    assert!(verdict.starts_with(&format!("http://{}/", node.data)), "{stdout}");
    assert!(stdout.contains("likely cause: the TTL has not expired"), "{stdout}");
    assert!(stdout.contains("not fingerprinted"), "{stdout}");
    assert!(stdout.contains("fresh for another 5") || stdout.contains("fresh for another 6"), "{stdout}");
    assert!(!stdout.contains("purge was not applied"), "{stdout}");

    let purged = crate::harness::invalidate(&node, &token, json!({"urls": [url]}).to_string()).await;
    assert_eq!(purged.status, 202, "{}", purged.text());
    let (code, stdout, stderr) = diagnose(&[&[url.as_str()][..], &args].concat()).await;
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("serves the origin's current copy"), "{stdout}");
}

/// A rolling deploy that has not reached every origin instance: the node in
/// front of the old instance serves the old version even when asked to
/// revalidate, and the origin instances disagree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_instance_on_the_old_deploy_is_found_behind_the_node() {
    let new = Origin::start().await;
    let old = Origin::start().await;
    new.route("/api/cart", version("42").header("cache-control", "no-cache"));
    old.route("/api/cart", version("41").header("cache-control", "no-cache"));
    let node = Fresco::start(&old.url(), &[]);
    let url = format!("http://{HOST}/api/cart");
    let data = format!("http://{}", node.data);
    let (code, stdout, stderr) = diagnose(&[
        &url,
        "--origin",
        &new.url(),
        "--origin",
        &old.url(),
        "--node",
        &data,
        "--version-header",
        "x-deploy-version",
        "--samples",
        "2",
        "--json",
    ])
    .await;
    assert_eq!(code, Some(1), "{stderr}");
    let report: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    let disagree = report["judgement"]["origins_disagree"].as_array().unwrap();
    assert_eq!(disagree.len(), 2, "both samples of the old instance: {stdout}");
    assert!(disagree.iter().all(|d| d.as_str().unwrap().contains("version 41")), "{stdout}");
    let causes = &report["judgement"]["verdicts"][0]["causes"];
    assert_eq!(causes[0]["cause"], "upstream-old", "{stdout}");
    assert_eq!(causes[0]["version"], "41", "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_layers_are_usage_errors() {
    let (code, _, stderr) =
        diagnose(&["http://shop.test/x", "--origin", "http://127.0.0.1:1", "--node", "http://127.0.0.1:2,tok=1"]).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("admin="), "{stderr}");
    let (code, _, stderr) = diagnose(&["http://shop.test/x"]).await;
    assert_eq!(code, Some(2), "--origin is required: {stderr}");
}
