//! Observability and the operator's experience (issue 13, design §6): what
//! the node logs, the access log, the errors clients see, the CLI's
//! messages and cluster status, the demo, and the metrics' exact values.

use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{Fresco, Nats, Origin, Reply, eventually, free_port, get, invalidate, send, temp_dir};

/// The node's stderr, as the harness saved it.
fn node_log(node: &Fresco) -> String {
    std::fs::read_to_string(node.data_dir.join("node.log")).unwrap_or_default()
}

async fn cli(args: &[&str]) -> (i32, String) {
    let (code, stdout, stderr) = crate::harness::run_cli(args).await;
    (code.expect("exited"), format!("{stdout}{stderr}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_logs_each_invalidation_and_each_upstream_failure_with_its_cause_and_no_colours() {
    let origin = Origin::start().await;
    origin.route("/page", Reply::ok("page").header("cache-control", "max-age=60"));
    let node = Fresco::start(&origin.url(), &[]);
    assert!(get(&node.url("/page")).await.status == 200);
    let purge =
        invalidate(&node, &node.token(), json!({"tags": ["product-42"], "reason": "price change"}).to_string()).await;
    assert_eq!(purge.status, 202, "{}", purge.text());
    eventually("the invalidation is logged", Duration::from_secs(10), async || {
        node_log(&node).contains("invalidation applied")
    })
    .await;
    let log = node_log(&node);
    let line = log.lines().find(|l| l.contains("invalidation applied")).unwrap();
    for field in
        ["id=1", "selectors=tag:product-42", "mode=\"hard\"", "issuer=local-admin", "reason=price change", "lag_ms="]
    {
        assert!(line.contains(field), "{field} in {line}");
    }

    // The origin goes away: the client gets a short, stable message and the
    // Cache-Status detail; the log names the upstream URL and the cause.
    origin.stop();
    let failed = get(&node.url("/missing?q=1")).await;
    assert_eq!(failed.status, 502);
    assert_eq!(failed.text(), "the upstream server could not be reached\n");
    assert!(failed.cache_status().contains("detail=upstream-connect"), "{}", failed.cache_status());
    let upstream = format!("upstream={}/missing?q=1", origin.url());
    eventually("the upstream failure is logged", Duration::from_secs(10), async || {
        node_log(&node).lines().any(|l| l.contains("upstream request failed") && l.contains(&upstream))
    })
    .await;
    let log = node_log(&node);
    let line = log.lines().find(|l| l.contains("upstream request failed")).unwrap();
    assert!(line.contains("Connection refused"), "the cause is named: {line}");
    assert!(!log.contains('\u{1b}'), "stderr is not a terminal: no ANSI escapes in\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_log_format_writes_one_json_object_per_line() {
    let origin = Origin::start().await;
    let node = Fresco::start(&origin.url(), &["--log-format", "json"]);
    invalidate(&node, &node.token(), json!({"urls": [node.url("/a")]}).to_string()).await;
    eventually("the invalidation is logged", Duration::from_secs(10), async || {
        node_log(&node).contains("invalidation applied")
    })
    .await;
    let log = node_log(&node);
    let lines: Vec<Value> =
        log.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect();
    let applied = lines.iter().find(|l| l["message"] == "invalidation applied").unwrap();
    assert_eq!(applied["id"], 1);
    assert_eq!(applied["level"], "INFO");
    assert_eq!(applied["selectors"], format!("url:{}", node.url("/a")));

    let bad = Fresco::spawn(&["serve", "--origin", &origin.url(), "--log-format", "yaml"]).err().unwrap();
    assert!(bad.contains("`log_format`") && bad.contains("text or json"), "{bad}");
    let bad = Fresco::spawn(&["serve", "--origin", &origin.url(), "--log-level", "loud=1=2"]).err().unwrap();
    assert!(bad.contains("`log_level`"), "{bad}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_has_a_common_log_format_line_per_response_with_cache_status_and_time() {
    let origin = Origin::start().await;
    origin.route("/page", Reply::ok("0123456789").header("cache-control", "max-age=60"));
    let dir = temp_dir("access");
    let path = dir.join("access.log");
    let node = Fresco::start(&origin.url(), &["--access-log", path.to_str().unwrap()]);
    get(&node.url("/page")).await;
    get(&node.url("/page")).await;
    send("HEAD", &node.url("/nothing%22here"), &[]).await;
    eventually("three access log lines", Duration::from_secs(10), async || {
        std::fs::read_to_string(&path).unwrap_or_default().lines().count() == 3
    })
    .await;
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    // host ident user [time] "request" status bytes "cache-status" seconds
    let shape = |line: &str| -> (String, String, String, String, f64) {
        let (head, rest) = line.split_once(" [").unwrap();
        let (_time, rest) = rest.split_once("] \"").unwrap();
        let (request, rest) = rest.split_once("\" ").unwrap();
        let (status_bytes, rest) = rest.split_once(" \"").unwrap();
        let (cache, seconds) = rest.rsplit_once("\" ").unwrap();
        assert_eq!(head, "127.0.0.1 - -", "{line}");
        (request.into(), status_bytes.into(), cache.into(), seconds.into(), seconds.parse().unwrap())
    };
    let (request, status_bytes, cache, _, seconds) = shape(lines[0]);
    assert_eq!((request.as_str(), status_bytes.as_str()), ("GET /page HTTP/1.1", "200 10"));
    assert!(cache.starts_with("fresco; fwd=uri-miss"), "{cache}");
    assert!(seconds >= 0.0);
    let (_, status_bytes, cache, _, _) = shape(lines[1]);
    assert_eq!(status_bytes, "200 10");
    assert!(cache.starts_with("fresco; hit"), "{cache}");
    let (request, _, _, _, _) = shape(lines[2]);
    assert_eq!(request, "HEAD /nothing%22here HTTP/1.1");

    // Off by default: no access log lines among a default node's output.
    let quiet = Fresco::start(&origin.url(), &[]);
    get(&quiet.url("/page")).await;
    assert!(!node_log(&quiet).contains("GET /page"), "{}", node_log(&quiet));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_errors_name_their_cause_and_a_bare_admin_address_gets_a_hint() {
    let port = free_port();
    let bare = format!("127.0.0.1:{port}");
    let (code, text) = cli(&["purge", "--admin", &bare, "--token", "t", "--tag", "x"]).await;
    assert_eq!(code, 2, "{text}");
    assert!(text.contains(&format!("did you mean http://{bare}")), "{text}");
    let (code, text) = cli(&["status", "--admin", &bare, "--token", "t"]).await;
    assert_eq!(code, 2, "{text}");
    assert!(text.contains(&format!("did you mean http://{bare}")), "{text}");
    let (code, text) = cli(&["status", "--admin", &format!("http://{bare}"), "--token", "t"]).await;
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("connection refused"), "{text}");
}

/// A node on the bus with a config holding one shared token.
fn bus_node(origin: &Origin, bus: &str, id: &str, cfg: &std::path::Path, extra: &[&str]) -> Fresco {
    let mut args = vec!["--bus", bus, "--node-id", id, "--config", cfg.to_str().unwrap()];
    args.extend_from_slice(extra);
    Fresco::start_in(&temp_dir(id), &origin.url(), &args)
}

const TOKEN: &str = "obs-token-0123456789abcdef";

fn token_config() -> std::path::PathBuf {
    let file = temp_dir("obs-cfg").join("fresco.toml");
    std::fs::write(&file, format!("[[token]]\nname = \"ops\"\nsecret = \"{TOKEN}\"\nscopes = [\"all\"]\n")).unwrap();
    file
}

async fn nodes(node: &Fresco) -> Value {
    let auth = format!("Bearer {TOKEN}");
    serde_json::from_slice(&send("GET", &node.admin_url("/api/v1/nodes"), &[("authorization", &auth)]).await.body)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_is_current_right_after_purge_wait_returns() {
    let nats = Nats::start().await;
    let origin = Origin::start().await;
    let cfg = token_config();
    let a = bus_node(&origin, &nats.url(), "obs-a", &cfg, &[]);
    let b = bus_node(&origin, &nats.url(), "obs-b", &cfg, &[]);
    eventually("both nodes see each other", Duration::from_secs(20), async || {
        nodes(&a).await["nodes"].as_array().is_some_and(|n| n.len() == 2)
    })
    .await;
    let admin = a.admin_url("");
    for round in 0..3 {
        let tag = format!("t{round}");
        let (code, text) = cli(&["purge", "--admin", &admin, "--token", TOKEN, "--tag", &tag, "--wait"]).await;
        assert_eq!(code, 0, "{text}");
        let version: u64 = text
            .split_whitespace()
            .find_map(|w| w.strip_prefix("version="))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no version in {text}"));
        let (code, status) = cli(&["status", "--admin", &admin, "--token", TOKEN]).await;
        assert_eq!(code, 0, "{status}");
        for id in ["obs-a", "obs-b"] {
            let row: Vec<&str> = status
                .lines()
                .find(|l| l.starts_with(id))
                .unwrap_or_else(|| panic!("{id} in {status}"))
                .split_whitespace()
                .collect();
            assert_eq!(
                row[2],
                version.to_string(),
                "{id} has applied {version} by the time purge --wait returned:\n{status}"
            );
            assert_eq!(row[3], "0", "{id} lags by nothing:\n{status}");
        }
    }
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_shutdown_announces_the_leave_so_convergence_does_not_wait_for_the_node() {
    let nats = Nats::start().await;
    let origin = Origin::start().await;
    let cfg = token_config();
    // Without the announcement the leaving node would count as possibly
    // serving for max_log_silence + 2 s and as live for down_after: a minute.
    let slow = ["--down-after", "60s", "--max-log-silence", "60s"];
    let a = bus_node(&origin, &nats.url(), "stay", &cfg, &slow);
    let b = bus_node(&origin, &nats.url(), "leave", &cfg, &slow);
    eventually("both nodes see each other", Duration::from_secs(20), async || {
        nodes(&a).await["nodes"].as_array().is_some_and(|n| n.len() == 2)
    })
    .await;
    assert!(b.terminate().await.success());
    eventually("the leaving node is dropped from the view", Duration::from_secs(20), async || {
        nodes(&a).await["nodes"].as_array().is_some_and(|n| n.len() == 1 && n[0]["node"] == "stay")
    })
    .await;
    let got = invalidate(&a, TOKEN, json!({"tags": ["x"]}).to_string()).await;
    assert_eq!(got.status, 202, "{}", got.text());
    let id = serde_json::from_slice::<Value>(&got.body).unwrap()["id"].as_str().unwrap().to_string();
    let auth = format!("Bearer {TOKEN}");
    let url = a.admin_url(&format!("/api/v1/invalidations/{id}"));
    eventually("the purge converges without the node that left", Duration::from_secs(20), async || {
        let s: Value = serde_json::from_slice(&send("GET", &url, &[("authorization", &auth)]).await.body).unwrap();
        s["converged"] == true && s["unconfirmed"] == json!([]) && s["nodes"].as_array().is_some_and(|n| n.len() == 1)
    })
    .await;
    assert!(node_log(&a).contains("a node left the cluster"), "{}", node_log(&a));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_prints_its_guide_once_listening_with_its_own_addresses_and_data_directory() {
    use std::io::{BufRead, BufReader};
    let cwd = temp_dir("demo-cwd");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_fresco"))
        .args(["demo", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--origin", "127.0.0.1:0"])
        .current_dir(&cwd)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = lines.next().unwrap().unwrap();
    assert!(ready.starts_with("fresco ready"), "the guide comes after the node listens: {ready}");
    let field = |name: &str| ready.split_whitespace().find_map(|w| w.strip_prefix(name)).unwrap().to_string();
    let (data, admin) = (field("data="), field("admin="));
    let mut guide = String::new();
    for line in lines.by_ref().map_while(Result::ok) {
        guide.push_str(&line);
        guide.push('\n');
        if line.starts_with("Ctrl-C") {
            break;
        }
    }
    // The guide's commands reach this demo, not the defaults.
    assert!(guide.contains(&format!("--admin http://{admin}")), "{guide}");
    assert!(guide.contains(&format!("dashboard:    http://{admin}/")), "{guide}");
    assert!(guide.contains(&format!("curl -si http://{data}/")), "{guide}");
    let data_dir = guide
        .lines()
        .find_map(|l| l.trim().strip_prefix("data:"))
        .map(|l| l.trim().trim_end_matches(" (removed at exit)").to_string())
        .unwrap();
    assert!(std::path::Path::new(&data_dir).join("admin-token").exists(), "{data_dir}");
    // A purge exactly as the guide prints it works.
    let purge = guide.lines().find(|l| l.contains(" purge ") && l.contains("--tag product-42")).unwrap();
    let args: Vec<&str> = purge.split_whitespace().skip(1).take_while(|w| !w.starts_with("--reason")).collect();
    let (code, text) = cli(&args).await;
    assert_eq!(code, 0, "{purge}: {text}");
    // Nothing of the demo's lands where it was started (a later `fresco
    // serve` there must not replay its invalidations or reuse its token).
    assert!(!cwd.join("fresco-data").exists());
    let _ = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let _ = child.wait();
    assert!(!std::path::Path::new(&data_dir).exists(), "the demo's data directory is removed at exit");
}

/// Design §6, issue 13: after a scripted sequence of hits, misses, stale
/// serves and purges, every counter has exactly the expected value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_exactly_what_a_scripted_sequence_did() {
    let origin = Origin::start().await;
    let html = |body: &str, cc: &str| Reply::ok(body).header("cache-control", cc).header("content-type", "text/html");
    origin.route("/page", html("page", "max-age=60"));
    origin.route(
        "/swr",
        Reply::ok("swr")
            .header("cache-control", "max-age=60, stale-while-revalidate=60")
            .header("surrogate-key", "swr"),
    );
    origin.route("/sie", Reply::ok("sie").header("cache-control", "max-age=1, stale-if-error=600"));
    let cfg = temp_dir("metrics-cfg").join("fresco.toml");
    std::fs::write(&cfg, "[[class]]\nname = \"html\"\ncontent_type = \"text/html\"\n").unwrap();
    let node = Fresco::start(&origin.url(), &["--config", cfg.to_str().unwrap()]);
    let token = node.token();
    let cache = |got: &crate::harness::Got| got.cache_status();

    let first = get(&node.url("/page")).await;
    assert!(cache(&first).contains("fwd=uri-miss"), "{}", cache(&first));
    for _ in 0..2 {
        assert!(get(&node.url("/page")).await.is_hit());
    }
    assert!(cache(&get(&node.url("/swr")).await).contains("fwd=uri-miss"));
    let soft = invalidate(&node, &token, json!({"tags": ["swr"], "mode": "soft"}).to_string()).await;
    assert_eq!(soft.status, 202, "{}", soft.text());
    let stale = get(&node.url("/swr")).await;
    assert!(cache(&stale).contains("detail=stale-while-revalidate"), "{}", cache(&stale));
    eventually("the background revalidation reaches the origin", Duration::from_secs(10), async || {
        origin.hits("/swr") == 2
    })
    .await;
    let hard = invalidate(&node, &token, json!({"urls": [node.url("/page")]}).to_string()).await;
    assert_eq!(hard.status, 202, "{}", hard.text());
    assert!(cache(&get(&node.url("/page")).await).contains("fwd=uri-miss"));
    assert!(cache(&get(&node.url("/sie")).await).contains("fwd=uri-miss"));
    // Until /sie expires; each probe is a request too: a hit while fresh,
    // a 504 (`fwd=stale`, counted as revalidated) once stale.
    let mut probe_hits = 0.0;
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let probe = send("GET", &node.url("/sie"), &[("cache-control", "only-if-cached")]).await;
        if probe.status == 504 {
            break;
        }
        assert!(probe.is_hit() && std::time::Instant::now() < deadline, "{} {}", probe.status, cache(&probe));
        probe_hits += 1.0;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    origin.stop();
    let sie = get(&node.url("/sie")).await;
    assert!(cache(&sie).contains("detail=stale-if-error"), "{}", cache(&sie));
    assert_eq!(get(&node.url("/gone")).await.status, 502);

    let expected = [
        ("fresco_requests_total{cache=\"hit\"}", 2.0 + probe_hits),
        ("fresco_requests_total{cache=\"miss\"}", 5.0),
        ("fresco_requests_total{cache=\"stale\"}", 2.0),
        ("fresco_requests_total{cache=\"revalidated\"}", 1.0),
        ("fresco_request_duration_seconds_count{cache=\"hit\",content_class=\"html\"}", 2.0),
        ("fresco_request_duration_seconds_count{cache=\"miss\",content_class=\"html\"}", 2.0),
        ("fresco_stale_served_total{reason=\"soft-purged\"}", 1.0),
        ("fresco_stale_served_total{reason=\"stale-if-error\"}", 1.0),
        ("fresco_stale_served_total{reason=\"stale-while-revalidate\"}", 0.0),
        ("fresco_stale_served_total{reason=\"max-stale\"}", 0.0),
        ("fresco_background_revalidations_total", 1.0),
        // /page twice, /swr and its revalidation, /sie twice, /gone.
        ("fresco_origin_requests_total{kind=\"fetch\"}", 7.0),
        ("fresco_origin_request_duration_seconds_count{kind=\"fetch\"}", 5.0),
        ("fresco_origin_errors_total{kind=\"upstream-connect\"}", 2.0),
        ("fresco_invalidations_accepted_total", 2.0),
        ("fresco_invalidations_applied_total", 2.0),
        ("fresco_invalidation_lag_seconds_count", 2.0),
        ("fresco_invalidation_applied_version", 2.0),
        ("fresco_cluster_node_applied_version{node=\"fresco\"}", 2.0),
        ("fresco_cluster_node_lag_versions{node=\"fresco\"}", 0.0),
        ("fresco_cluster_node_live{node=\"fresco\"}", 1.0),
        ("fresco_store_objects", 3.0),
    ];
    let text = get(&node.admin_url("/metrics")).await.text();
    let mut wrong = Vec::new();
    for (sample, want) in expected {
        let got = text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == sample).then(|| value.parse::<f64>().unwrap())
        });
        if got != Some(want) {
            wrong.push(format!("{sample}: want {want}, got {got:?}"));
        }
    }
    assert!(wrong.is_empty(), "{}\n\n{text}", wrong.join("\n"));
    // Never a URL in a label.
    assert!(!text.contains("/page") && !text.contains("/sie"), "{text}");
}

/// Serves `/news/a` (1 s fresh, stale-if-error for an hour) through a node
/// whose `news` class has a 2 s freshness SLO, stops the origin, and asks
/// until the node stops serving it stale (or, measuring only, until it has
/// served it more than 2 s stale). Returns the node and the ages served.
async fn stale_news(cap: bool) -> (Fresco, Origin, Vec<u64>) {
    let origin = Origin::start().await;
    origin.route("/news/a", Reply::ok("news").header("cache-control", "max-age=1, stale-if-error=3600"));
    let cfg = temp_dir("slo-cfg").join("fresco.toml");
    let cap_line = if cap { "" } else { "freshness_slo_cap = false\n" };
    std::fs::write(
        &cfg,
        format!("[[class]]\nname = \"news\"\npath_prefix = \"/news/\"\nfreshness_slo = \"2s\"\n{cap_line}"),
    )
    .unwrap();
    let node = Fresco::start(&origin.url(), &["--config", cfg.to_str().unwrap()]);
    assert_eq!(get(&node.url("/news/a")).await.status, 200);
    origin.stop();
    let mut ages = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        assert!(std::time::Instant::now() < deadline, "ages served so far: {ages:?}");
        let got = get(&node.url("/news/a")).await;
        if got.status != 200 {
            assert!(cap, "measuring only, the stale copy stays available: {} {}", got.status, got.cache_status());
            assert_eq!(got.status, 504, "{}", got.cache_status());
            break;
        }
        let age: u64 = got.header("age").unwrap().parse().unwrap();
        ages.push(age);
        if !cap && age >= 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (node, origin, ages)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_freshness_slo_caps_served_staleness_and_counts_violations_when_only_measured() {
    // Enforced: nothing is served more than 2 s past its 1 s lifetime (Age
    // counts whole seconds), the origin being down notwithstanding.
    let (node, _origin, ages) = stale_news(true).await;
    assert!(ages.iter().all(|a| *a <= 3), "served staleness within the SLO: ages {ages:?}");
    assert!(ages.iter().any(|a| *a >= 2), "it was served stale meanwhile: ages {ages:?}");
    let violations = "fresco_freshness_slo_violations_total{content_class=\"news\"}";
    assert_eq!(crate::harness::metric(&node, violations).await, 0.0);
    assert_eq!(crate::harness::metric(&node, "fresco_freshness_slo_seconds{content_class=\"news\"}").await, 2.0);
    let measured = "fresco_served_staleness_seconds_count{content_class=\"news\"}";
    assert_eq!(crate::harness::metric(&node, measured).await, ages.len() as f64 + 2.0, "every response measured");

    // Measured only: the same history serves past the SLO, and says so.
    let (node, _origin, ages) = stale_news(false).await;
    let over = ages.iter().filter(|a| **a >= 4).count() as f64;
    let counted = crate::harness::metric(&node, violations).await;
    assert!(counted >= over && counted > 0.0, "{counted} violations counted; ages {ages:?}");
    let auth = format!("Bearer {}", node.token());
    let dash: Value = serde_json::from_slice(
        &send("GET", &node.admin_url("/api/v1/dashboard"), &[("authorization", &auth)]).await.body,
    )
    .unwrap();
    let news = &dash["classes"][0];
    assert_eq!((news["name"].as_str(), news["freshness_slo_ms"].as_u64()), (Some("news"), Some(2000)));
    assert_eq!(news["over_slo"].as_f64(), Some(counted));
    assert!(news["max_staleness_ms"].as_u64() > Some(2000), "{news}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_on_a_bus_runs_two_edge_nodes_that_a_purge_converges_on() {
    use std::io::{BufRead, BufReader};
    let nats = Nats::start().await;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_fresco"))
        .args(["demo", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--origin", "127.0.0.1:0"])
        .args(["--bus", &nats.url()])
        .current_dir(temp_dir("demo2-cwd"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut guide = String::new();
    for line in BufReader::new(child.stdout.take().unwrap()).lines().map_while(Result::ok) {
        guide.push_str(&line);
        guide.push('\n');
        if line.starts_with("Ctrl-C") {
            break;
        }
    }
    let after = |prefix: &str| -> String {
        guide
            .lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .unwrap_or_else(|| panic!("{prefix} in {guide}"))
            .trim()
            .to_string()
    };
    let edge2 = after("edge 2:");
    let edge2 = edge2.split_whitespace().next().unwrap().to_string();
    let origin = after("origin:");
    let data_dir = after("data:").trim_end_matches(" (removed at exit)").to_string();
    let purge = guide.lines().find(|l| l.contains(" purge ") && l.contains("--tag product-42")).unwrap();
    let mut args: Vec<&str> = purge.split_whitespace().skip(1).take_while(|w| !w.starts_with("--reason")).collect();
    args.push("--wait");
    eventually("the purge reaches both edge nodes", Duration::from_secs(30), async || {
        let (code, text) = cli(&args).await;
        code == 0 && text.contains("converged: 2 live node(s)")
    })
    .await;
    // The origin outage the guide offers: the edges relay its 503.
    let down = send("POST", &format!("{origin}__outage?seconds=60"), &[]).await;
    assert_eq!(down.status, 200, "{}", down.text());
    assert_eq!(get(&format!("{edge2}about")).await.status, 503);
    let _ = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let _ = child.wait();
    assert!(!std::path::Path::new(&data_dir).exists());
    let edge2_addr = edge2.trim_start_matches("http://").trim_end_matches('/').to_string();
    eventually("the second edge node stops with the demo", Duration::from_secs(10), async || {
        tokio::net::TcpStream::connect(&edge2_addr).await.is_err()
    })
    .await;
}

/// The shipped alert rules name only metrics a node exports, so none of
/// them silently never fires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_alert_rules_use_only_exported_metrics() {
    let rules =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/prometheus/fresco-alerts.yml")).unwrap();
    let origin = Origin::start().await;
    origin.route("/news/a", Reply::ok("a").header("cache-control", "max-age=60"));
    let cfg = temp_dir("alerts-cfg").join("fresco.toml");
    std::fs::write(&cfg, "[[class]]\nname = \"news\"\npath_prefix = \"/news/\"\nfreshness_slo = \"60s\"\n").unwrap();
    let node = Fresco::start(&origin.url(), &["--config", cfg.to_str().unwrap()]);
    get(&node.url("/news/a")).await;
    invalidate(&node, &node.token(), json!({"tags": ["x"]}).to_string()).await;
    let text = get(&node.admin_url("/metrics")).await.text();
    let exported: std::collections::BTreeSet<&str> =
        text.lines().filter(|l| !l.starts_with('#')).filter_map(|l| l.split(['{', ' ']).next()).collect();
    let mut named: Vec<&str> =
        rules.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).filter(|w| w.starts_with("fresco_")).collect();
    named.sort_unstable();
    named.dedup();
    assert!(named.len() >= 8, "{named:?}");
    let missing: Vec<&&str> = named.iter().filter(|n| !exported.contains(**n)).collect();
    assert!(missing.is_empty(), "alert rules name metrics no node exports: {missing:?}\n{text}");
}

/// `fresco watch`: a purge that landed on one node but not the other is
/// found, naming the node that diverged; once it lands there too, none is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_finds_the_node_where_a_purge_did_not_land() {
    let origin = Origin::start().await;
    let version = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(1));
    let v = version.clone();
    origin.handle("/x", move |_| {
        let n = v.load(std::sync::atomic::Ordering::SeqCst);
        Reply::ok(&format!("version {n}")).header("cache-control", "max-age=600").header("etag", &format!("\"v{n}\""))
    });
    // Two nodes with logs of their own: a purge sent to one never reaches the other.
    let (a, b) = (Fresco::start(&origin.url(), &[]), Fresco::start(&origin.url(), &[]));
    for node in [&a, &b] {
        get(&node.url("/x")).await;
        assert!(get(&node.url("/x")).await.is_hit());
    }
    version.store(2, std::sync::atomic::Ordering::SeqCst);
    let purge = invalidate(&a, &a.token(), json!({"urls": [a.url("/x")]}).to_string()).await;
    assert_eq!(purge.status, 202);
    let (node_a, node_b, origin_url) = (a.url(""), b.url(""), origin.url());
    let watch = ["watch", "--node", &node_a, "--node", &node_b, "--origin", &origin_url, "--path", "/x"];
    let once = ["--slo", "0s", "--interval", "100ms", "--rounds", "2"];
    let (code, text) = cli(&[&watch[..], &once[..]].concat()).await;
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains(&format!(
            "DIVERGED node={node_b} path=/x serves [etag \"v1\"] while the origin has [etag \"v2\"]"
        )),
        "{text}"
    );
    assert!(!text.contains(&format!("node={node_a} ")), "{text}");
    let purge = invalidate(&b, &b.token(), json!({"urls": [b.url("/x")]}).to_string()).await;
    assert_eq!(purge.status, 202);
    let (code, text) = cli(&[&watch[..], &once[..]].concat()).await;
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("round 2: 1 path(s) on 2 node(s), 0 diverged"), "{text}");

    // Recently invalidated URLs are watched without naming them.
    let admin = a.admin_url("");
    let token = a.token();
    let from_log = ["watch", "--node", &node_a, "--origin", &origin_url, "--admin", &admin, "--token", &token];
    let (code, text) = cli(&[&from_log[..], &["--rounds", "1"][..]].concat()).await;
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("round 1: 1 path(s) on 1 node(s), 0 diverged"), "{text}");
}

/// `log_level` and `log_format` from the config file, without `RUST_LOG`:
/// warnings in JSON, no info lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_level_and_format_come_from_the_config_file_when_rust_log_is_unset() {
    use std::io::{BufRead, BufReader};
    let origin = Origin::start().await;
    let dir = temp_dir("log-cfg");
    let cfg = dir.join("fresco.toml");
    std::fs::write(&cfg, "log_level = \"warn\"\nlog_format = \"json\"\n").unwrap();
    let stderr = std::fs::File::create(dir.join("stderr.log")).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_fresco"))
        .args(["serve", "--origin", &origin.url(), "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .args(["--data-dir", dir.to_str().unwrap(), "--config", cfg.to_str().unwrap()])
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let ready = BufReader::new(child.stdout.take().unwrap()).lines().next().unwrap().unwrap();
    let addr = |name: &str| ready.split_whitespace().find_map(|w| w.strip_prefix(name)).unwrap().to_string();
    let (data, admin) = (addr("data="), addr("admin="));
    let token = std::fs::read_to_string(dir.join("admin-token")).unwrap();
    let auth = format!("Bearer {}", token.trim());
    let purge = crate::harness::send_body(
        "POST",
        &format!("http://{admin}/api/v1/invalidations"),
        &[("authorization", &auth)],
        bytes::Bytes::from(json!({"tags": ["t"]}).to_string()),
    )
    .await;
    assert_eq!(purge.status, 202);
    origin.stop();
    assert_eq!(get(&format!("http://{data}/down")).await.status, 502);
    let log = || std::fs::read_to_string(dir.join("stderr.log")).unwrap();
    eventually("the upstream failure is logged", Duration::from_secs(10), async || {
        log().contains("upstream request failed")
    })
    .await;
    let _ = child.kill();
    let _ = child.wait();
    let text = log();
    for line in text.lines() {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["level"] == "WARN" || v["level"] == "ERROR", "only warnings and errors at log_level warn: {line}");
    }
}
