//! `fresco audit` (issue 12) against real sites on loopback: one whose every
//! resource breaks one practice, one that follows them all.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::Value;

use crate::harness::{Origin, Reply};

const HTML: (&str, &str) = ("content-type", "text/html; charset=utf-8");
const JS: (&str, &str) = ("content-type", "text/javascript");
const CSS: (&str, &str) = ("content-type", "text/css");
const JSON: (&str, &str) = ("content-type", "application/json");
const PNG: (&str, &str) = ("content-type", "image/png");
const FONT: (&str, &str) = ("content-type", "font/woff2");

fn reply(body: &str, headers: &[(&str, &str)]) -> Reply {
    headers.iter().fold(Reply::ok(body), |r, (k, v)| r.header(k, v))
}

fn page(assets: &str) -> String {
    format!(
        r#"<!doctype html><html><head>{assets}
        <script>if ('serviceWorker' in navigator) navigator.serviceWorker.register('/sw.js');</script>
        </head><body><a href="/about">About</a><a href="https://elsewhere.test/">out</a></body></html>"#
    )
}

async fn audit(args: &[&str]) -> (Option<i32>, String, String) {
    crate::harness::run_cli(&[&["audit"], args].concat()).await
}

/// (path, rule) of every finding in a `--json` report.
fn findings(report: &Value) -> BTreeSet<(String, String)> {
    report["resources"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| {
            let url: http::Uri = r["url"].as_str().unwrap().parse().unwrap();
            let path = url.path_and_query().unwrap().to_string();
            r["findings"]
                .as_array()
                .unwrap()
                .iter()
                .map(move |f| (path.clone(), f["rule"].as_str().unwrap().to_string()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_breaking_each_practice_gets_exactly_those_findings_and_fails() {
    let site = Origin::start().await;
    let assets = r#"
        <link rel="stylesheet" href="/css/site.css?v=3">
        <script src="/js/app.js"></script>
        <script src="/js/vendor.3f2a9c1b.js"></script>
        <script src="/js/slow.js"></script>
        <link rel="preload" href="/api/me" as="fetch" crossorigin>
        <link rel="preload" href="/api/account" as="fetch" crossorigin>
        <link rel="preload" href="/api/products" as="fetch" crossorigin>
        <link rel="preload" href="/api/profile" as="fetch" crossorigin>
        <img src="/img/logo.png"><img src="/img/banner.png"><img src="/img/icon.png">
        <img src="/img/hero.png"><img src="/img/missing.png">"#;
    site.route("/", reply(&page(assets), &[HTML, ("cache-control", "max-age=3600")]));
    site.route("/about", reply("<html><body><a href=\"/\">home</a></body></html>", &[HTML, ("etag", "\"ab\"")]));
    let year_immutable = ("cache-control", "public, max-age=31536000, immutable");
    site.route("/js/app.js", reply("app()", &[JS, year_immutable, ("etag", "\"1\"")]));
    site.route("/js/vendor.3f2a9c1b.js", reply("v()", &[JS, ("cache-control", "public, max-age=31536000")]));
    site.route("/js/slow.js", reply("slow()", &[JS]).delay(Duration::from_secs(10)));
    site.route(
        "/css/site.css",
        reply(
            "@font-face { src: url(/fonts/brand.a1b2c3d4e5.woff2) }",
            &[CSS, ("cache-control", "max-age=86400"), ("etag", "\"2\"")],
        ),
    );
    site.route("/fonts/brand.a1b2c3d4e5.woff2", reply("font", &[FONT, ("cache-control", "max-age=3600")]));
    site.route(
        "/sw.js",
        reply("self.addEventListener('fetch', () => {})", &[JS, ("cache-control", "max-age=86400"), ("etag", "\"3\"")]),
    );
    let etag = ("etag", "\"4\"");
    site.route(
        "/api/me",
        reply("{}", &[JSON, ("cache-control", "public, max-age=60"), ("set-cookie", "session=abc"), etag]),
    );
    site.route("/api/account", reply("{}", &[JSON, ("cache-control", "private, no-cache"), etag]));
    site.route(
        "/api/products",
        reply("[]", &[JSON, ("cache-control", "public, max-age=3600"), ("vary", "Cookie"), etag]),
    );
    site.route(
        "/api/profile",
        reply("{}", &[JSON, ("cache-control", "private, no-store"), ("cdn-cache-control", "max-age=600")]),
    );
    let day = ("cache-control", "max-age=86400");
    site.route("/img/logo.png", reply("png", &[PNG, day, etag, ("vary", "User-Agent")]));
    site.route(
        "/img/banner.png",
        reply("png", &[PNG, day, etag, ("cdn-cache-control", "max-age=600"), ("surrogate-control", "max-age=60")]),
    );
    site.route("/img/icon.png", reply("png", &[PNG, day, etag, ("cdn-cache-control", "max-age=600 garbage")]));
    site.route("/img/hero.png", reply("png", &[PNG, day]));

    let (code, stdout, stderr) = audit(&[&site.url(), "--crawl", "1", "--json", "--timeout", "2"]).await;
    assert_eq!(code, Some(1), "an error-level finding fails the run: {stderr}");
    let report: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    let expected: BTreeSet<(String, String)> = [
        ("/", "html-cached-too-long"),
        ("/", "missing-validator"),
        ("/about", "no-explicit-lifetime"),
        ("/js/app.js", "immutable-unfingerprinted"),
        ("/js/vendor.3f2a9c1b.js", "fingerprinted-not-immutable"),
        ("/js/slow.js", "fetch-failed"),
        ("/css/site.css?v=3", "query-string-versioning"),
        ("/fonts/brand.a1b2c3d4e5.woff2", "fingerprinted-short-lived"),
        ("/sw.js", "service-worker-cacheable"),
        ("/api/me", "user-specific-public"),
        ("/api/account", "no-cache-for-sensitive"),
        ("/api/products", "api-cached-too-long"),
        ("/api/products", "vary-cookie"),
        ("/api/profile", "targeted-shares-private"),
        ("/img/logo.png", "vary-user-agent"),
        ("/img/banner.png", "targeted-conflict"),
        ("/img/icon.png", "targeted-invalid"),
        ("/img/hero.png", "missing-validator"),
        ("/img/missing.png", "fetch-failed"),
    ]
    .into_iter()
    .map(|(p, r)| (p.to_string(), r.to_string()))
    .collect();
    assert_eq!(findings(&report), expected, "{stdout}");
    assert_eq!(report["pages"], 2, "the crawl followed the one same-site link and not the other site");
    assert_eq!(site.hits("/"), 1, "the page linked back from /about is not fetched twice");

    // The table a person reads: severity, resource, finding, and the fix.
    let (code, table, _) = audit(&[&site.url(), "--timeout", "2"]).await;
    assert_eq!(code, Some(1));
    let line = table.lines().position(|l| l.starts_with("error") && l.contains("/js/app.js")).expect(&table);
    assert!(table.lines().nth(line).unwrap().contains("immutable-unfingerprinted"), "{table}");
    assert!(table.lines().nth(line + 1).unwrap().contains("fix: drop immutable"), "{table}");
    assert!(!table.contains("/about"), "without --crawl only the page itself is audited: {table}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_following_every_practice_has_no_findings_and_passes() {
    let site = Origin::start().await;
    let assets = r#"
        <link rel="stylesheet" href="/css/site.5e6f7a8b.css">
        <script src="/js/app.3f2a9c1b.js"></script>
        <link rel="preload" href="/api/products" as="fetch" crossorigin>
        <link rel="preload" href="/api/me" as="fetch" crossorigin>
        <link rel="manifest" href="/manifest.json">
        <img src="/img/logo.png">"#;
    let revalidate = [HTML, ("cache-control", "no-cache"), ("etag", "\"p1\"")];
    site.route("/", reply(&page(assets), &revalidate));
    site.route("/about", reply("<html><body>about</body></html>", &revalidate));
    let year = ("cache-control", "public, max-age=31536000, immutable");
    site.route("/js/app.3f2a9c1b.js", reply("app()", &[JS, year]));
    site.route("/css/site.5e6f7a8b.css", reply("@font-face { src: url(/fonts/brand.a1b2c3d4e5.woff2) }", &[CSS, year]));
    site.route("/fonts/brand.a1b2c3d4e5.woff2", reply("font", &[FONT, year]));
    site.route("/sw.js", reply("self.skipWaiting()", &[JS, ("cache-control", "no-cache"), ("etag", "\"s\"")]));
    let etag = ("etag", "\"e\"");
    site.route("/api/products", reply("[]", &[JSON, ("cache-control", "public, max-age=60"), etag]));
    site.route("/api/me", reply("{}", &[JSON, ("cache-control", "private, no-store"), ("set-cookie", "session=abc")]));
    site.route("/manifest.json", reply("{}", &[JSON, ("cache-control", "max-age=86400"), etag]));
    site.route("/img/logo.png", reply("png", &[PNG, ("cache-control", "public, max-age=86400"), etag]));

    let (code, stdout, stderr) = audit(&[&site.url(), "--crawl", "5", "--json"]).await;
    let report: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout} {stderr}"));
    assert_eq!(findings(&report), BTreeSet::new(), "{stdout}");
    assert_eq!(code, Some(0), "{stderr}");
    // Every referenced resource was checked: 2 pages, 8 assets.
    assert_eq!(report["resources"].as_array().unwrap().len(), 10, "{stdout}");
    for path in ["/sw.js", "/fonts/brand.a1b2c3d4e5.woff2", "/manifest.json", "/api/me"] {
        assert_eq!(site.hits(path), 1, "{path} was found and fetched");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_usage_and_an_unreachable_page_have_their_exit_status() {
    let (code, _, stderr) = audit(&["not a url"]).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("absolute http"), "{stderr}");
    let (code, _, stderr) = audit(&["http://127.0.0.1:1/", "--header", "no colon"]).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--header"), "{stderr}");
    let port = crate::harness::free_port();
    let (code, _, stderr) = audit(&[&format!("http://127.0.0.1:{port}/")]).await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("cannot fetch the page"), "{stderr}");
    let site = Origin::start().await;
    let (code, _, stderr) = audit(&[&format!("{}/gone", site.url())]).await;
    assert_eq!(code, Some(1), "a page that is not there does not pass: {stderr}");
    assert!(stderr.contains("answered 404"), "{stderr}");
}

/// A hostile site: an endless-looking page, a redirect loop, a page
/// linking to a hundred others. The audit stays bounded and still reports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_site_is_audited_within_bounds() {
    let site = Origin::start().await;
    let mut html = String::from(r#"<html><head><script src="/loop.js"></script></head><body>"#);
    for i in 0..100 {
        html.push_str(&format!(r#"<a href="/p{i}">p{i}</a>"#));
    }
    // Past the 4 MiB read limit: the rest is never read.
    html.push_str(&"<p>filler</p>".repeat(500_000));
    let revalidate = [HTML, ("cache-control", "no-cache"), ("etag", "\"h\"")];
    site.route("/", reply(&html, &revalidate));
    for i in 0..100 {
        site.route(&format!("/p{i}"), reply("<html></html>", &revalidate));
    }
    site.route("/loop.js", Reply::ok("").status(302).header("location", "/loop2.js"));
    site.route("/loop2.js", Reply::ok("").status(302).header("location", "/loop.js"));

    let (code, stdout, stderr) = audit(&[&site.url(), "--crawl", "3", "--json"]).await;
    assert_eq!(code, Some(0), "{stderr}");
    let report: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(report["pages"], 4, "the page and 3 more, not 100");
    let pages_fetched = (0..100).filter(|i| site.hits(&format!("/p{i}")) > 0).count();
    assert_eq!(pages_fetched, 3);
    let found = findings(&report);
    assert_eq!(found, [("/loop.js".to_string(), "fetch-failed".to_string())].into(), "{stdout}");
    assert!(stdout.contains("redirects"), "{stdout}");
    assert!(site.hits("/loop.js") <= 6, "redirects are bounded");
}
