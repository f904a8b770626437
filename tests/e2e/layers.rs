//! Issue 14: invalidations reach the other cache layers — a real `varnishd`
//! running the shipped `contrib/varnish/default.vcl` in front of the same
//! origin, and a real `redis-server` holding an application's cache — in
//! log order, with each layer's outcome in the invalidation's status, and a
//! layer that is out of reach catching up once it is back.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{Fresco, Origin, Relay, Reply, eventually, free_port, get, invalidate, metric, send, temp_dir};

const WAIT: Duration = Duration::from_secs(20);

/// A real `varnishd` on loopback with the shipped VCL, its backend the
/// origin. Killed when dropped.
struct Varnish {
    port: u16,
    child: Child,
}

impl Varnish {
    async fn start(origin_port: u16) -> Varnish {
        let dir = temp_dir("varnish");
        let shipped = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/varnish/default.vcl"))
            .expect("contrib/varnish/default.vcl");
        // The two lines the VCL says to edit.
        let vcl = shipped.replace(".port = \"8080\";", &format!(".port = \"{origin_port}\";"));
        assert_ne!(vcl, shipped, "the shipped VCL names its backend port as documented");
        let vcl_path = dir.join("default.vcl");
        std::fs::write(&vcl_path, vcl).unwrap();
        let port = free_port();
        let child = Command::new("varnishd")
            .args(["-F", "-a", &format!("127.0.0.1:{port}"), "-f", vcl_path.to_str().unwrap()])
            .args(["-s", "malloc,64m", "-n", dir.join("work").to_str().unwrap(), "-T", "none"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("varnishd is installed (scripts/test.sh installs it)");
        let v = Varnish { port, child };
        eventually("varnishd answers", WAIT, async || {
            tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok()
        })
        .await;
        v
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for Varnish {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A real `redis-server` on loopback without persistence.
struct Redis {
    port: u16,
    child: Child,
}

impl Redis {
    async fn start() -> Redis {
        let dir = temp_dir("redis");
        let port = free_port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--dir", dir.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/test.sh installs it)");
        let r = Redis { port, child };
        eventually("redis-server answers", WAIT, async || r.connection().await.is_some()).await;
        r
    }

    async fn connection(&self) -> Option<redis::aio::MultiplexedConnection> {
        let client = redis::Client::open(format!("redis://127.0.0.1:{}/", self.port)).ok()?;
        client.get_multiplexed_async_connection().await.ok()
    }

    async fn cmd(&self, args: &[&str]) -> redis::Value {
        let mut c = self.connection().await.expect("redis reachable");
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query_async(&mut c).await.expect("redis command")
    }

    async fn exists(&self, key: &str) -> bool {
        matches!(self.cmd(&["EXISTS", key]).await, redis::Value::Int(1))
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn origin_port(origin: &Origin) -> u16 {
    origin.url().rsplit(':').next().unwrap().trim_end_matches('/').parse().unwrap()
}

/// A node whose only layer is `table` (a `[[layer]]` body).
fn node_with_layer(origin: &Origin, table: &str) -> Fresco {
    let dir = temp_dir("layers");
    let cfg = dir.join("fresco.toml");
    std::fs::write(&cfg, format!("[[layer]]\n{table}\n")).unwrap();
    Fresco::start_in(&dir, &origin.url(), &["--config", cfg.to_str().unwrap()])
}

async fn purge(fresco: &Fresco, body: Value) -> u64 {
    let r = invalidate(fresco, &fresco.token(), body.to_string()).await;
    assert_eq!(r.status, 202, "{}", r.text());
    serde_json::from_slice::<Value>(&r.body).unwrap()["version"].as_u64().unwrap()
}

async fn status(fresco: &Fresco, version: u64) -> Value {
    let auth = format!("Bearer {}", fresco.token());
    let r =
        send("GET", &fresco.admin_url(&format!("/api/v1/invalidations/{version}")), &[("authorization", &auth)]).await;
    serde_json::from_slice(&r.body).unwrap()
}

async fn converged(fresco: &Fresco, version: u64) {
    eventually(&format!("invalidation {version} converged, layers included"), WAIT, async || {
        status(fresco, version).await["converged"] == true
    })
    .await;
}

/// A URL purge becomes a PURGE, a tag and a prefix purge become bans, each
/// taken by a stock Varnish with the shipped VCL, and the status says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_tag_and_prefix_purges_reach_varnish() {
    let origin = Origin::start().await;
    let route = |body: &str| {
        origin.route("/p", Reply::ok(body).header("cache-control", "max-age=600").header("surrogate-key", "a t1 b"));
        origin.route("/t", Reply::ok(body).header("cache-control", "max-age=600").header("cache-tag", "x, t.2"));
        origin.route("/docs/one", Reply::ok(body).header("cache-control", "max-age=600"));
        origin.route("/docsother", Reply::ok(body).header("cache-control", "max-age=600"));
    };
    route("old");
    let varnish = Varnish::start(origin_port(&origin)).await;
    let fresco = node_with_layer(
        &origin,
        &format!("name = \"varnish\"\ntype = \"varnish\"\nurl = \"http://127.0.0.1:{}\"", varnish.port),
    );
    let host = format!("127.0.0.1:{}", varnish.port);
    for path in ["/p", "/t", "/docs/one", "/docsother"] {
        get(&varnish.url(path)).await;
        assert_eq!(get(&varnish.url(path)).await.text(), "old");
        assert_eq!(origin.hits(path), 1, "{path} cached in Varnish");
    }
    route("new");

    let v = purge(&fresco, json!({"urls": [format!("http://{host}/p")]})).await;
    converged(&fresco, v).await;
    let s = status(&fresco, v).await;
    assert_eq!(s["layers"][0]["layer"], "varnish", "{s}");
    assert_eq!(s["layers"][0]["ok"], true, "{s}");
    assert_eq!(get(&varnish.url("/p")).await.text(), "new", "purged in Varnish");
    assert_eq!(get(&varnish.url("/t")).await.text(), "old", "nothing else");

    // A tag with a regex character in it, carried in Cache-Tag.
    let v = purge(&fresco, json!({"tags": ["t.2"]})).await;
    converged(&fresco, v).await;
    assert_eq!(get(&varnish.url("/t")).await.text(), "new", "banned by tag");

    // A prefix selects whole path segments: /docs/one, not /docsother.
    let v = purge(&fresco, json!({"prefixes": [format!("http://{host}/docs")]})).await;
    converged(&fresco, v).await;
    assert_eq!(get(&varnish.url("/docs/one")).await.text(), "new", "banned by prefix");
    assert_eq!(get(&varnish.url("/docsother")).await.text(), "old", "another segment is kept");
    assert_eq!(metric(&fresco, "fresco_layer_deliveries_total{layer=\"varnish\",outcome=\"failed\"}").await, 0.0);
}

/// A Varnish out of reach: the node goes on (the purge is accepted and
/// applied here), the status names the layer as pending, and once Varnish
/// is reachable again the forwarder delivers, in order, what it missed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layer_out_of_reach_catches_up_when_it_is_back() {
    let origin = Origin::start().await;
    origin.route("/a", Reply::ok("old-a").header("cache-control", "max-age=600").header("surrogate-key", "ka"));
    origin.route("/b", Reply::ok("old-b").header("cache-control", "max-age=600").header("surrogate-key", "kb"));
    let varnish = Varnish::start(origin_port(&origin)).await;
    let relay = Relay::start(varnish.port).await;
    let fresco = node_with_layer(
        &origin,
        &format!("name = \"edge-varnish\"\ntype = \"varnish\"\nurl = \"http://127.0.0.1:{}\"", relay.port),
    );
    for path in ["/a", "/b"] {
        get(&varnish.url(path)).await;
        assert_eq!(origin.hits(path), 1);
    }
    origin.route("/a", Reply::ok("new-a").header("cache-control", "max-age=600").header("surrogate-key", "ka"));
    origin.route("/b", Reply::ok("new-b").header("cache-control", "max-age=600").header("surrogate-key", "kb"));
    relay.cut();
    let first = purge(&fresco, json!({"tags": ["ka"]})).await;
    let second = purge(&fresco, json!({"tags": ["kb"]})).await;
    eventually("the failed attempt is in the status", WAIT, async || {
        let s = status(&fresco, first).await;
        s["layers"][0]["ok"] == false && s["layers_pending"] == json!(["edge-varnish"])
    })
    .await;
    let s = status(&fresco, first).await;
    assert_eq!(s["converged"], false, "not converged while a layer has not taken it: {s}");
    assert!(s["nodes"][0]["applied"] == true, "the node itself applied it: {s}");
    assert_eq!(get(&varnish.url("/a")).await.text(), "old-a", "Varnish did not hear of it");
    let nodes: Value = {
        let auth = format!("Bearer {}", fresco.token());
        serde_json::from_slice(&send("GET", &fresco.admin_url("/api/v1/nodes"), &[("authorization", &auth)]).await.body)
            .unwrap()
    };
    assert_eq!(nodes["layers"][0]["ok"], false, "{nodes}");
    assert_eq!(nodes["layers"][0]["backlog"], 2, "both purges wait: {nodes}");
    assert!(metric(&fresco, "fresco_layer_backlog{layer=\"edge-varnish\"}").await >= 1.0);
    relay.heal();
    converged(&fresco, second).await;
    assert_eq!(status(&fresco, first).await["converged"], true);
    assert_eq!(get(&varnish.url("/a")).await.text(), "new-a");
    assert_eq!(get(&varnish.url("/b")).await.text(), "new-b");
}

/// The Redis convention: an application that keeps `fresco:tag:TAG` sets of
/// its cache keys has exactly the keys of a purged tag deleted; a layer
/// scoped to some tags hears only of those; Redis out of reach catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_purges_delete_an_applications_redis_keys() {
    let origin = Origin::start().await;
    let redis = Redis::start().await;
    let relay = Relay::start(redis.port).await;
    let fresco = node_with_layer(
        &origin,
        &format!(
            "name = \"app-cache\"\ntype = \"redis\"\nurl = \"redis://127.0.0.1:{}/\"\nscopes = [\"tag:product-\"]",
            relay.port
        ),
    );
    for (key, tag) in [("page:42", "product-42"), ("price:42", "product-42"), ("page:7", "product-7"), ("nav", "menu")]
    {
        redis.cmd(&["SET", key, "cached"]).await;
        redis.cmd(&["SADD", &format!("fresco:tag:{tag}"), key]).await;
    }
    let v = purge(&fresco, json!({"tags": ["product-42"]})).await;
    converged(&fresco, v).await;
    assert!(!redis.exists("page:42").await && !redis.exists("price:42").await, "the tag's keys are deleted");
    assert!(!redis.exists("fresco:tag:product-42").await, "and its set");
    assert!(redis.exists("page:7").await && redis.exists("nav").await, "other keys stay");
    let s = status(&fresco, v).await;
    assert!(s["layers"][0]["detail"].as_str().unwrap().contains("deleted 2 key"), "{s}");

    // Out of the layer's scope: converged without it, and nothing deleted.
    let v = purge(&fresco, json!({"tags": ["menu"]})).await;
    converged(&fresco, v).await;
    assert_eq!(status(&fresco, v).await["layers"], json!([]), "not forwarded");
    assert!(redis.exists("nav").await);

    relay.cut();
    let v = purge(&fresco, json!({"tags": ["product-7"]})).await;
    eventually("Redis out of reach is reported", WAIT, async || status(&fresco, v).await["layers"][0]["ok"] == false)
        .await;
    assert!(redis.exists("page:7").await);
    relay.heal();
    converged(&fresco, v).await;
    assert!(!redis.exists("page:7").await, "delivered once Redis is reachable");
}

/// A layer's position survives a restart: what it took is not sent again,
/// and what was accepted while the node was down is not lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_resumes_forwarding_where_it_stopped() {
    let origin = Origin::start().await;
    let redis = Redis::start().await;
    let dir = temp_dir("layers-restart");
    let cfg = dir.join("fresco.toml");
    std::fs::write(
        &cfg,
        format!("[[layer]]\nname = \"r\"\ntype = \"redis\"\nurl = \"redis://127.0.0.1:{}/\"\n", redis.port),
    )
    .unwrap();
    let args = ["--config", cfg.to_str().unwrap()];
    let fresco = Fresco::start_in(&dir, &origin.url(), &args);
    let v = purge(&fresco, json!({"tags": ["one"]})).await;
    converged(&fresco, v).await;
    // Persisted within a fraction of a second; then a crash.
    eventually("the layer's position is persisted", WAIT, async || {
        std::fs::read_to_string(dir.join("layers/r")).is_ok_and(|t| t.trim() == v.to_string())
    })
    .await;
    fresco.kill9();
    redis.cmd(&["SET", "k1", "v"]).await;
    redis.cmd(&["SADD", "fresco:tag:one", "k1"]).await;
    let fresco = Fresco::start_in(&dir, &origin.url(), &args);
    redis.cmd(&["SET", "k2", "v"]).await;
    redis.cmd(&["SADD", "fresco:tag:two", "k2"]).await;
    let v2 = purge(&fresco, json!({"tags": ["two"]})).await;
    converged(&fresco, v2).await;
    assert!(!redis.exists("k2").await, "the new purge is delivered");
    assert!(redis.exists("k1").await, "the purge delivered before the restart is not sent again");
    assert_eq!(metric(&fresco, "fresco_layer_gaps_total{layer=\"r\"}").await, 0.0, "{}", "no gap");
}

/// Bad `[[layer]]` tables stop the node at start-up with the field named.
#[tokio::test]
async fn a_bad_layer_table_is_refused_with_its_field_named() {
    for (table, expect) in [
        ("name = \"x\"\ntype = \"memcached\"\nurl = \"http://127.0.0.1:1\"", "layer.type"),
        ("name = \"../x\"\ntype = \"varnish\"\nurl = \"http://127.0.0.1:1\"", "layer name"),
        ("name = \"x\"\ntype = \"varnish\"\nurl = \"redis://127.0.0.1:1\"", "http://HOST:PORT"),
        ("name = \"x\"\ntype = \"redis\"\nurl = \"http://127.0.0.1:1\"\nscopes = [\"tags:x\"]", "layer.scopes"),
    ] {
        let dir = temp_dir("bad-layer");
        let cfg = dir.join("fresco.toml");
        std::fs::write(&cfg, format!("[[layer]]\n{table}\n")).unwrap();
        let dir_arg = dir.to_str().unwrap().to_string();
        let args = ["serve", "--origin", "http://127.0.0.1:1", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"];
        let err = Fresco::spawn(&[&args[..], &["--data-dir", &dir_arg, "--config", cfg.to_str().unwrap()]].concat())
            .err()
            .unwrap_or_else(|| panic!("{table} was accepted"));
        assert!(err.contains(expect), "{table}: {err}");
    }
}

/// A layer that falls more than `backlog` entries behind is owed a gap
/// rather than an unbounded queue: once back it gets a ban of everything
/// (so nothing purged meanwhile survives there, including what was never
/// sent one by one), the gap is counted, and every invalidation converges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layer_too_far_behind_gets_a_gap_and_loses_nothing_purged() {
    let origin = Origin::start().await;
    for i in 0..4 {
        origin.route(&format!("/g{i}"), Reply::ok("old").header("cache-control", "max-age=600"));
    }
    let varnish = Varnish::start(origin_port(&origin)).await;
    let relay = Relay::start(varnish.port).await;
    let table = format!("name = \"v\"\ntype = \"varnish\"\nurl = \"http://127.0.0.1:{}\"\nbacklog = 2", relay.port);
    let fresco = node_with_layer(&origin, &table);
    let host = format!("127.0.0.1:{}", varnish.port);
    for i in 0..4 {
        get(&varnish.url(&format!("/g{i}"))).await;
        origin.route(&format!("/g{i}"), Reply::ok("new").header("cache-control", "max-age=600"));
    }
    relay.cut();
    let mut versions = Vec::new();
    for i in 0..4 {
        versions.push(purge(&fresco, json!({"urls": [format!("http://{host}/g{i}")]})).await);
    }
    relay.heal();
    for v in &versions {
        converged(&fresco, *v).await;
    }
    assert_eq!(metric(&fresco, "fresco_layer_gaps_total{layer=\"v\"}").await, 1.0);
    for i in 0..4 {
        assert_eq!(get(&varnish.url(&format!("/g{i}"))).await.text(), "new", "/g{i}");
    }
}
