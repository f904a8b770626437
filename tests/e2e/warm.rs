//! `fresco deploy warm` (issue 12): a URL list fetched through two real
//! nodes fills both caches, with counts of warmed, skipped and failed.

use crate::harness::{Fresco, Origin, Reply, send, temp_dir};

async fn warm(args: &[&str]) -> (Option<i32>, String, String) {
    crate::harness::run_cli(&[&["deploy", "warm"], args].concat()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_list_fills_every_node_and_counts_what_it_could_not() {
    let origin = Origin::start().await;
    for p in ["/a", "/b"] {
        origin.route(p, Reply::ok(p).header("cache-control", "max-age=600"));
    }
    origin.route("/private", Reply::ok("me").header("cache-control", "no-store"));
    let nodes = [Fresco::start(&origin.url(), &[]), Fresco::start(&origin.url(), &[])];
    let list = temp_dir("warm").join("urls.txt");
    std::fs::write(
        &list,
        "# hottest first\nhttp://shop.test/a\nhttp://shop.test/b\n\nhttp://shop.test/private\nhttp://shop.test/gone\n/relative\n",
    )
    .unwrap();
    let node_args: Vec<String> =
        nodes.iter().flat_map(|n| ["--node".to_string(), format!("http://{}", n.data)]).collect();
    let mut args = vec![list.to_str().unwrap(), "--concurrency", "3"];
    args.extend(node_args.iter().map(String::as_str));

    let (code, stdout, stderr) = warm(&args).await;
    assert_eq!(code, Some(1), "a failed fetch fails the run: {stdout}{stderr}");
    assert!(stdout.contains("warmed 4, skipped 3, failed 2"), "{stdout}");
    assert!(stdout.contains("http://shop.test/gone") && stdout.contains("answered 404"), "{stdout}");
    assert!(stdout.contains("\"/relative\""), "{stdout}");
    assert!(stderr.contains("warming: 9/9"), "progress lines when not on a terminal: {stderr}");
    for n in &nodes {
        for p in ["/a", "/b"] {
            let got = send("GET", &n.url(p), &[("host", "shop.test")]).await;
            assert!(got.is_hit(), "{p} is in the cache of {}: {}", n.data, got.cache_status());
        }
    }
    assert_eq!(origin.hits("/a"), 2, "one fetch per node");

    // Warming again finds everything held: nothing reaches the origin.
    let (_, stdout, _) = warm(&args).await;
    assert!(stdout.contains("warmed 4, skipped 3, failed 2"), "{stdout}");
    assert_eq!(origin.hits("/a"), 2);
}
