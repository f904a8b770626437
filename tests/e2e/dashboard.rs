//! The dashboard (issue 13, design §6) in a real headless Chromium, driven
//! by Debian's chromedriver over the W3C WebDriver HTTP protocol: the page
//! loads from a running node of a two-node cluster, its charts draw the
//! node's traffic, and a purge issued through the API appears with each
//! node's convergence. A screenshot is saved under target/.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};

use crate::harness::{Fresco, Nats, Origin, Reply, eventually, free_port, get, invalidate, send, send_body, temp_dir};

const TOKEN: &str = "dashboard-token-0123456789abcdef";

/// A chromedriver process and one browser session.
struct Browser {
    driver: Child,
    base: String,
    session: String,
}

impl Browser {
    async fn start() -> Browser {
        let port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver is installed (scripts/test.sh installs chromium-driver)");
        let base = format!("http://127.0.0.1:{port}");
        let mut browser = Browser { driver, base, session: String::new() };
        eventually("chromedriver listens", Duration::from_secs(20), async || {
            tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok()
        })
        .await;
        let profile = temp_dir("chromium-profile");
        // Loopback only: no background networking, updates or sync (see
        // testing-services.md); as root, no sandbox.
        let args = [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1300,1100",
            &format!("--user-data-dir={}", profile.display()),
        ];
        let caps =
            json!({"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {"args": args}}}});
        let created = browser.call("POST", "/session", caps).await;
        browser.session = created["sessionId"].as_str().unwrap_or_else(|| panic!("no session: {created}")).to_string();
        browser
    }

    /// One WebDriver command; its `value`.
    async fn call(&self, method: &str, path: &str, body: Value) -> Value {
        let url = format!("{}{path}", self.base);
        let headers = [("content-type", "application/json")];
        let body = if body.is_null() { Bytes::new() } else { Bytes::from(body.to_string()) };
        let got = send_body(method, &url, &headers, body).await;
        let v: Value =
            serde_json::from_slice(&got.body).unwrap_or_else(|e| panic!("{method} {path}: {e}: {}", got.text()));
        assert_eq!(got.status, 200, "{method} {path}: {v}");
        v["value"].clone()
    }

    async fn goto(&self, url: &str) {
        self.call("POST", &format!("/session/{}/url", self.session), json!({ "url": url })).await;
    }

    /// Runs `script` (a function body) in the page; its return value.
    async fn eval(&self, script: &str) -> Value {
        self.call("POST", &format!("/session/{}/execute/sync", self.session), json!({"script": script, "args": []}))
            .await
    }

    async fn screenshot(&self) -> Vec<u8> {
        let png = self.call("GET", &format!("/session/{}/screenshot", self.session), Value::Null).await;
        base64_decode(png.as_str().expect("base64 PNG"))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ends the session (and its Chromium) before the driver goes.
        if !self.session.is_empty() {
            let url = format!("{}/session/{}", self.base, self.session);
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                rt.block_on(async { tokio::time::timeout(Duration::from_secs(10), send("DELETE", &url, &[])).await })
            })
            .join();
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let digits: Vec<u8> = text.bytes().filter(|c| !c.is_ascii_whitespace() && *c != b'=').map(value).collect();
    digits
        .chunks(4)
        .flat_map(|q| {
            let n = q.iter().enumerate().fold(0u32, |n, (i, d)| n | (u32::from(*d) << (18 - 6 * i)));
            let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
            bytes.into_iter().take(q.len() - 1)
        })
        .collect()
}

fn config() -> std::path::PathBuf {
    let file = temp_dir("dashboard-cfg").join("fresco.toml");
    std::fs::write(&file, format!("[[token]]\nname = \"ops\"\nsecret = \"{TOKEN}\"\nscopes = [\"all\"]\n")).unwrap();
    file
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_in_chromium_shows_live_charts_and_a_purge_converging_on_every_node() {
    let nats = Nats::start().await;
    let origin = Origin::start().await;
    origin.route("/page", Reply::ok("page").header("cache-control", "max-age=60"));
    let cfg = config();
    let node = |id: &str| {
        Fresco::start_in(
            &temp_dir(id),
            &origin.url(),
            &["--bus", &nats.url(), "--node-id", id, "--config", cfg.to_str().unwrap()],
        )
    };
    let (a, _b) = (node("edge-a"), node("edge-b"));

    // The page and its assets come from the node, with nothing external.
    let page = get(&a.admin_url("/")).await;
    assert_eq!(page.status, 200);
    assert!(page.header("content-security-policy").is_some_and(|c| c.contains("default-src 'none'")));
    let script = get(&a.admin_url("/dashboard.js")).await.text();
    for text in [page.text(), script.clone(), get(&a.admin_url("/dashboard.css")).await.text()] {
        let external = text.replace("http://www.w3.org/2000/svg", "");
        assert!(!external.contains("http://") && !external.contains("https://"), "an external reference: {text}");
    }
    assert_eq!(get(&a.admin_url("/api/v1/dashboard")).await.status, 401, "its data needs a token");

    // Traffic for the charts: a miss, then hits, until the test ends.
    let running = Arc::new(AtomicBool::new(true));
    let traffic = {
        let (running, url) = (running.clone(), a.url("/page"));
        tokio::spawn(async move {
            for _ in 0..2_000 {
                if !running.load(Ordering::Relaxed) {
                    break;
                }
                get(&url).await;
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
        })
    };

    let browser = Browser::start().await;
    browser.goto(&a.admin_url(&format!("/#token={TOKEN}"))).await;
    let look = r##"
        const line = id => document.querySelector(`#${id} polyline`);
        const points = id => line(id) ? line(id).getAttribute("points").trim().split(" ").length : 0;
        return {
            url: location.href,
            rps: points("chart-rps"), hit: points("chart-hit"), offload: points("chart-offload"),
            lastHit: document.getElementById("last-hit").textContent,
            nodes: [...document.querySelectorAll("#nodes tbody tr")].map(r => r.dataset.node),
        };"##;
    eventually("the charts draw the node's traffic and both nodes are listed", Duration::from_secs(60), async || {
        let v = browser.eval(look).await;
        v["rps"].as_u64() >= Some(2)
            && v["hit"].as_u64() >= Some(2)
            && v["offload"].as_u64() >= Some(2)
            && v["lastHit"].as_str().is_some_and(|t| t.ends_with('%'))
            && v["nodes"] == json!(["edge-a", "edge-b"])
    })
    .await;
    let v = browser.eval(look).await;
    assert!(!v["url"].as_str().unwrap().contains(TOKEN), "the token is taken out of the address bar: {v}");

    let purge = invalidate(&a, TOKEN, json!({"tags": ["dashboard"], "reason": "dashboard test"}).to_string()).await;
    assert_eq!(purge.status, 202, "{}", purge.text());
    let id = serde_json::from_slice::<Value>(&purge.body).unwrap()["id"].as_str().unwrap().to_string();
    let row = format!(
        r#"
        const row = document.querySelector('tr[data-invalidation="{id}"]');
        if (!row) return null;
        return {{
            converged: row.dataset.converged,
            text: row.textContent,
            nodes: [...row.querySelectorAll("circle[data-node]")].map(c => [c.dataset.node, c.dataset.applied]),
        }};"#
    );
    eventually("the purge shows, applied by each node", Duration::from_secs(30), async || {
        let v = browser.eval(&row).await;
        v["converged"] == "true"
            && v["nodes"] == json!([["edge-a", "true"], ["edge-b", "true"]])
            && v["text"].as_str().is_some_and(|t| t.contains("dashboard test") && t.contains("tag dashboard"))
    })
    .await;

    let png = browser.screenshot().await;
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000, "a real screenshot ({} bytes)", png.len());
    let artifact = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target").join("dashboard-e2e.png");
    std::fs::write(&artifact, png).unwrap();
    running.store(false, Ordering::Relaxed);
    traffic.await.unwrap();
}
