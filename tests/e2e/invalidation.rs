//! The invalidation core (issue 4): versioned purges through the durable
//! embedded log, the admin API, access control, PURGE, the CLI.

use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};

use crate::harness::{Fresco, Got, Origin, Reply, get, metric, send, send_body, temp_dir};

async fn api(fresco: &Fresco, token: Option<&str>, body: Value) -> Got {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("content-type", "application/json")];
    if let Some(a) = &auth {
        headers.push(("authorization", a.as_str()));
    }
    send_body("POST", &fresco.admin_url("/api/v1/invalidations"), &headers, Bytes::from(body.to_string())).await
}

async fn purge(fresco: &Fresco, body: Value) -> Value {
    let r = api(fresco, Some(&fresco.token()), body).await;
    assert_eq!(r.status, 202, "{}", r.text());
    serde_json::from_slice(&r.body).unwrap()
}

async fn status(fresco: &Fresco, id: &str) -> Value {
    let auth = format!("Bearer {}", fresco.token());
    let r = send("GET", &fresco.admin_url(&format!("/api/v1/invalidations/{id}")), &[("authorization", &auth)]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    serde_json::from_slice(&r.body).unwrap()
}

fn site(fresco: &Fresco, path: &str) -> String {
    fresco.url(path)
}

/// The URL selector for `path` as clients reach the node.
fn absolute(fresco: &Fresco, path: &str) -> String {
    format!("http://{}{path}", fresco.data)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_during_a_fetch_is_not_undone_by_the_fetch() {
    let origin = Origin::start().await;
    origin.route(
        "/race",
        Reply::ok("before")
            .header("cache-control", "max-age=600")
            .header("surrogate-key", "p1")
            .delay(Duration::from_millis(800)),
    );
    let fresco = Fresco::start(&origin.url(), &[]);
    let url = site(&fresco, "/race");
    let inflight = tokio::spawn({
        let u = url.clone();
        async move { get(&u).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    purge(&fresco, json!({"tags": ["p1"], "reason": "price change"})).await;
    assert_eq!(inflight.await.unwrap().text(), "before");
    origin.route("/race", Reply::ok("after").header("cache-control", "max-age=600").header("surrogate-key", "p1"));
    let next = get(&url).await;
    assert_eq!(next.text(), "after", "the pre-purge body was not kept: {}", next.cache_status());
    assert_eq!(origin.hits("/race"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soft_purge_serves_stale_on_error_but_hard_purge_does_not() {
    let origin = Origin::start().await;
    for p in ["/soft", "/hard"] {
        origin.route(p, Reply::ok("stored").header("cache-control", "max-age=600, stale-if-error=600"));
    }
    let fresco = Fresco::start(&origin.url(), &[]);
    get(&site(&fresco, "/soft")).await;
    get(&site(&fresco, "/hard")).await;
    purge(&fresco, json!({"urls": [absolute(&fresco, "/soft")], "mode": "soft"})).await;
    purge(&fresco, json!({"urls": [absolute(&fresco, "/hard")], "mode": "hard"})).await;
    origin.stop();
    let soft = get(&site(&fresco, "/soft")).await;
    assert_eq!((soft.status, soft.text()), (200, "stored".to_string()));
    assert!(soft.cache_status().contains("invalidated stale-if-error"), "{}", soft.cache_status());
    let hard = get(&site(&fresco, "/hard")).await;
    assert!(hard.status >= 500, "hard-purged object is gone: {} {}", hard.status, hard.text());
    assert_ne!(hard.text(), "stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_from_each_header_prefixes_and_vary_variants() {
    let origin = Origin::start().await;
    let cached = |r: Reply| r.header("cache-control", "max-age=600");
    origin.route("/sk", cached(Reply::ok("sk")).header("surrogate-key", "a sk-tag"));
    origin.route("/ct", cached(Reply::ok("ct")).header("cache-tag", "b, ct-tag"));
    origin.route("/cg", cached(Reply::ok("cg")).header("cache-groups", "\"c\", \"cg tag\""));
    origin.route("/docs/a", cached(Reply::ok("a")));
    origin.route("/docs/a/b", cached(Reply::ok("ab")));
    origin.route("/docsx", cached(Reply::ok("x")));
    origin.handle("/v", |s| {
        let lang = s.headers.get("accept-language").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
        Reply::ok(&lang).header("cache-control", "max-age=600").header("vary", "accept-language")
    });
    let fresco = Fresco::start(&origin.url(), &[]);
    let warm = async |path: &str| {
        get(&site(&fresco, path)).await;
        assert!(get(&site(&fresco, path)).await.is_hit(), "{path} cached");
    };
    for p in ["/sk", "/ct", "/cg", "/docs/a", "/docs/a/b", "/docsx"] {
        warm(p).await;
    }
    assert!(get(&site(&fresco, "/sk")).await.header("surrogate-key").is_none(), "tag headers hidden from clients");
    for lang in ["en", "fr"] {
        send("GET", &site(&fresco, "/v"), &[("accept-language", lang)]).await;
    }
    purge(&fresco, json!({"tags": ["sk-tag", "ct-tag", "cg tag"]})).await;
    purge(&fresco, json!({"prefixes": [absolute(&fresco, "/docs")]})).await;
    purge(&fresco, json!({"urls": [absolute(&fresco, "/v")]})).await;
    for p in ["/sk", "/ct", "/cg", "/docs/a", "/docs/a/b"] {
        let r = get(&site(&fresco, p)).await;
        assert!(r.cache_status().contains("detail=invalidated"), "{p}: {}", r.cache_status());
    }
    assert!(get(&site(&fresco, "/docsx")).await.is_hit(), "prefixes match whole segments");
    for lang in ["en", "fr"] {
        let r = send("GET", &site(&fresco, "/v"), &[("accept-language", lang)]).await;
        assert!(!r.is_hit(), "variant {lang} purged with its URL");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_group_invalidation_from_a_post() {
    let origin = Origin::start().await;
    origin.route(
        "/product",
        Reply::ok("old").header("cache-control", "max-age=600").header("cache-groups", "\"product-7\""),
    );
    origin.route("/admin/save", Reply::ok("saved").header("cache-group-invalidation", "\"product-7\""));
    let fresco = Fresco::start(&origin.url(), &[]);
    get(&site(&fresco, "/product")).await;
    let second = get(&site(&fresco, "/product")).await;
    assert!(second.is_hit(), "{}", second.cache_status());
    let saved = send("POST", &site(&fresco, "/admin/save"), &[]).await;
    assert_eq!(saved.status, 200);
    assert!(saved.header("cache-group-invalidation").is_none());
    assert!(!get(&site(&fresco, "/product")).await.is_hit(), "group invalidated by the origin's response");
    let auth = format!("Bearer {}", fresco.token());
    let log = send("GET", &fresco.admin_url("/api/v1/invalidations"), &[("authorization", &auth)]).await;
    let log: Value = serde_json::from_slice(&log.body).unwrap();
    assert_eq!(log["invalidations"][0]["issuer"], "origin");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accepted_invalidation_survives_sigkill() {
    let origin = Origin::start().await;
    origin.route("/k", Reply::ok("k").header("cache-control", "max-age=600"));
    let dir = temp_dir("sigkill");
    let fresco = Fresco::start_in(&dir, &origin.url(), &[]);
    let accepted = purge(&fresco, json!({"tags": ["durable"], "reason": "crash test"})).await;
    let version = accepted["version"].as_u64().unwrap();
    fresco.kill9();
    let again = Fresco::start_in(&dir, &origin.url(), &[]);
    let s = status(&again, accepted["id"].as_str().unwrap()).await;
    assert_eq!(s["reason"], "crash test");
    assert_eq!(s["converged"], true, "{s}");
    assert!(metric(&again, "fresco_invalidation_applied_version").await >= version as f64);
    let next = purge(&again, json!({"tags": ["after"]})).await;
    assert_eq!(next["version"].as_u64().unwrap(), version + 1, "versions continue");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_scopes_and_break_glass() {
    let origin = Origin::start().await;
    origin.route(
        "/s",
        Reply::ok("s").header("cache-control", "max-age=600").header("surrogate-key", "product-1 category-1"),
    );
    let dir = temp_dir("auth");
    let config = dir.join("fresco.toml");
    std::fs::write(
        &config,
        "[[token]]\nname = \"cms\"\nsecret = \"cms-secret-0123456789\"\nscopes = [\"tag:product-\"]\n\n\
         [[token]]\nname = \"ops\"\nsecret = \"ops-secret-0123456789\"\nscopes = [\"all\"]\n\n\
         [[token]]\nname = \"slow\"\nsecret = \"slow-secret-0123456789\"\nscopes = [\"all\"]\nrate = 0.1\nburst = 2\n",
    )
    .unwrap();
    let fresco = Fresco::start_in(&dir, &origin.url(), &["--config", config.to_str().unwrap()]);
    get(&fresco.url("/s")).await;
    let no_token = api(&fresco, None, json!({"tags": ["product-1"]})).await;
    assert_eq!(no_token.status, 401);
    let wrong = api(&fresco, Some("nope-nope-nope-nope"), json!({"tags": ["product-1"]})).await;
    assert_eq!(wrong.status, 401);
    let scope = api(&fresco, Some("cms-secret-0123456789"), json!({"tags": ["category-1"]})).await;
    assert_eq!(scope.status, 403, "{}", scope.text());
    let no_glass = api(&fresco, Some("ops-secret-0123456789"), json!({"all": true})).await;
    assert_eq!(no_glass.status, 403);
    assert!(no_glass.text().contains("break_glass"));
    let cms_all = api(&fresco, Some("cms-secret-0123456789"), json!({"all": true, "break_glass": true})).await;
    assert_eq!(cms_all.status, 403);
    assert!(get(&fresco.url("/s")).await.is_hit(), "nothing was invalidated by refused requests");
    let bad = api(&fresco, Some("ops-secret-0123456789"), json!({"tagz": ["x"]})).await;
    assert_eq!(bad.status, 400);
    assert!(bad.text().contains("tagz"), "{}", bad.text());
    let not_json = send_body(
        "POST",
        &fresco.admin_url("/api/v1/invalidations"),
        &[("authorization", "Bearer ops-secret-0123456789")],
        Bytes::from_static(b"{"),
    )
    .await;
    assert_eq!(not_json.status, 400);
    for _ in 0..2 {
        assert_eq!(api(&fresco, Some("slow-secret-0123456789"), json!({"tags": ["z"]})).await.status, 202);
    }
    let limited = api(&fresco, Some("slow-secret-0123456789"), json!({"tags": ["z"]})).await;
    assert_eq!(limited.status, 429);
    assert!(limited.header("retry-after").is_some());
    let ok = api(&fresco, Some("cms-secret-0123456789"), json!({"tags": ["product-1"]})).await;
    assert_eq!(ok.status, 202);
    assert!(!get(&fresco.url("/s")).await.is_hit());
    let glass =
        api(&fresco, Some("ops-secret-0123456789"), json!({"all": true, "break_glass": true, "reason": "incident 42"}))
            .await;
    assert_eq!(glass.status, 202);
    let log = send(
        "GET",
        &fresco.admin_url("/api/v1/invalidations?limit=1"),
        &[("authorization", "Bearer ops-secret-0123456789")],
    )
    .await;
    let log: Value = serde_json::from_slice(&log.body).unwrap();
    assert_eq!(log["invalidations"][0]["break_glass"], true);
    assert_eq!(log["invalidations"][0]["issuer"], "ops");
    assert!(!log.to_string().contains("secret-0123456789"), "tokens never appear in the audit log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_method_needs_a_token() {
    let origin = Origin::start().await;
    origin.route("/pm", Reply::ok("pm").header("cache-control", "max-age=600"));
    let fresco = Fresco::start(&origin.url(), &[]);
    get(&fresco.url("/pm")).await;
    assert_eq!(send("PURGE", &fresco.url("/pm"), &[]).await.status, 401);
    assert!(get(&fresco.url("/pm")).await.is_hit());
    let auth = format!("Bearer {}", fresco.token());
    let purged = send("PURGE", &fresco.url("/pm"), &[("authorization", &auth)]).await;
    assert_eq!(purged.status, 200, "{}", purged.text());
    assert!(!get(&fresco.url("/pm")).await.is_hit());
    assert_eq!(origin.hits("/pm"), 2, "PURGE itself never reaches the origin");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_command_prints_id_and_waits_for_convergence() {
    let origin = Origin::start().await;
    origin.route("/cli", Reply::ok("cli").header("cache-control", "max-age=600").header("cache-tag", "cli-tag"));
    let fresco = Fresco::start(&origin.url(), &[]);
    get(&fresco.url("/cli")).await;
    let admin = format!("http://{}", fresco.admin);
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_fresco"))
        .args(["purge", "--admin", &admin, "--tag", "cli-tag", "--soft", "--reason", "from the CLI", "--wait"])
        .args(["--data-dir", fresco.data_dir.to_str().unwrap()])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout} {}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("accepted: id=") && stdout.contains("converged"), "{stdout}");
    let r = get(&fresco.url("/cli")).await;
    assert!(r.cache_status().contains("fwd=stale"), "soft purge revalidates: {}", r.cache_status());
    let refused = tokio::process::Command::new(env!("CARGO_BIN_EXE_fresco"))
        .args(["purge", "--admin", &admin, "--all", "--token", "wrong-token-wrong-token"])
        .output()
        .await
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("401"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweeper_frees_purged_objects() {
    let origin = Origin::start().await;
    origin.route("/sw", Reply::ok("x").header("cache-control", "max-age=600").header("surrogate-key", "gone"));
    origin.route("/keep", Reply::ok("y").header("cache-control", "max-age=600"));
    let fresco = Fresco::start(&origin.url(), &["--sweep-interval", "100ms"]);
    get(&fresco.url("/sw")).await;
    get(&fresco.url("/keep")).await;
    assert_eq!(metric(&fresco, "fresco_store_objects").await, 2.0);
    purge(&fresco, json!({"tags": ["gone"]})).await;
    let mut objects = 2.0;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        objects = metric(&fresco, "fresco_store_objects").await;
        if objects == 1.0 {
            break;
        }
    }
    assert_eq!(objects, 1.0, "the purged object's memory was reclaimed");
    assert!(get(&fresco.url("/keep")).await.is_hit());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standard_invalidation_events() {
    let origin = Origin::start().await;
    for p in ["/docs/a", "/docs/b", "/other"] {
        origin.route(p, Reply::ok(p).header("cache-control", "max-age=600").header("cache-groups", "\"docs\""));
    }
    let fresco = Fresco::start(&origin.url(), &[]);
    let auth = format!("Bearer {}", fresco.token());
    let event = async |body: Value| {
        send_body(
            "POST",
            &fresco.admin_url("/api/v1/invalidation-events"),
            &[("authorization", &auth)],
            Bytes::from(body.to_string()),
        )
        .await
    };
    for p in ["/docs/a", "/docs/b", "/other"] {
        get(&fresco.url(p)).await;
    }
    let prefix = event(json!({"type": "uri-prefix", "selectors": [absolute(&fresco, "/docs")], "purge": true})).await;
    assert_eq!(prefix.status, 200, "applied on every node before answering: {}", prefix.text());
    assert!(!get(&fresco.url("/docs/a")).await.is_hit());
    assert!(get(&fresco.url("/other")).await.is_hit());
    let group =
        event(json!({"type": "group", "selectors": [format!("http://{}", fresco.data)], "groups": ["docs"]})).await;
    assert_eq!(group.status, 200);
    let soft = get(&fresco.url("/other")).await;
    assert!(soft.cache_status().contains("fwd=stale"), "purge:false marks invalid: {}", soft.cache_status());
    assert_eq!(event(json!({"type": "regex", "selectors": ["."]})).await.status, 501);
    assert_eq!(event(json!({"type": "uri"})).await.status, 400);
    let anonymous =
        send_body("POST", &fresco.admin_url("/api/v1/invalidation-events"), &[], Bytes::from_static(b"{}")).await;
    assert_eq!(anonymous.status, 401);
}
