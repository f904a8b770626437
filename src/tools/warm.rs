//! `fresco deploy warm FILE`: fetches a list of URLs through every node so
//! their caches hold them before users ask (after a deploy's purge, or
//! before a cutover). Requests are bounded in number at once; the nodes
//! coalesce them with any user traffic for the same objects. Progress goes
//! to stderr: a bar on a terminal, a line every few seconds otherwise.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};
use serde::Serialize;

use super::audit::{parse_headers, parse_url};
use super::fetch::Fetcher;
use crate::cli::CliError;

const WARM_EXIT_STATUS: &str = "Exit status: 0 every URL answered on every node (stored or not); \
1 some fetch failed (an error, or a 4xx/5xx answer); 2 bad usage (an unreadable FILE, a malformed --node).";

/// Lines on a terminal are redrawn at most this often; elsewhere a line is
/// printed this often.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

#[derive(Debug, clap::Args)]
pub struct DeployArgs {
    #[command(subcommand)]
    pub command: DeployCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum DeployCommand {
    /// Fetch a list of URLs through every node so that their caches hold them.
    Warm(WarmArgs),
}

#[derive(Debug, clap::Args)]
#[command(after_help = WARM_EXIT_STATUS)]
pub struct WarmArgs {
    /// One absolute URL per line (its host is sent as Host); blank lines and `#` comments are ignored
    pub file: PathBuf,
    /// A node's data listener, `http://host:port` (repeatable)
    #[arg(long = "node", required = true)]
    pub nodes: Vec<String>,
    /// Requests in flight at once, over all nodes
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Extra request header `Name: value` (repeatable), e.g. the Accept-Encoding users send
    #[arg(long = "header", short = 'H')]
    pub headers: Vec<String>,
    /// Seconds to wait for each response
    #[arg(long, default_value_t = 30)]
    pub timeout: u64,
}

/// What warming one URL on one node did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub(crate) enum Outcome {
    /// The node stored it, or already held it.
    Warmed,
    /// It answered, but did not store it (the response is not cacheable).
    Skipped,
    Failed,
}

/// Judges one answer: `Cache-Status` (RFC 9211) says whether the node stored
/// or held it; a cache that sends none is taken at its 2xx/3xx word.
pub(crate) fn outcome(status: u16, headers: &HeaderMap) -> Outcome {
    if status >= 400 {
        return Outcome::Failed;
    }
    let entries: Vec<&str> = headers.get_all("cache-status").iter().filter_map(|v| v.to_str().ok()).collect();
    let Some(ours) = entries.last().and_then(|e| e.rsplit(',').next()) else {
        return Outcome::Warmed;
    };
    let params: Vec<&str> = ours.split(';').map(str::trim).collect();
    if params.contains(&"hit") || params.contains(&"stored") { Outcome::Warmed } else { Outcome::Skipped }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Counts {
    pub warmed: usize,
    pub skipped: usize,
    pub failed: usize,
}

impl Counts {
    fn add(&mut self, o: Outcome) {
        match o {
            Outcome::Warmed => self.warmed += 1,
            Outcome::Skipped => self.skipped += 1,
            Outcome::Failed => self.failed += 1,
        }
    }

    fn done(&self) -> usize {
        self.warmed + self.skipped + self.failed
    }
}

/// One progress line: a bar when `bar_width` is given.
pub(crate) fn progress(c: &Counts, total: usize, bar_width: Option<usize>) -> String {
    let done = c.done();
    let counts = format!("{done}/{total}  warmed {}  skipped {}  failed {}", c.warmed, c.skipped, c.failed);
    match bar_width {
        Some(w) => {
            let filled = (done * w).checked_div(total).unwrap_or(w);
            format!("[{}{}] {counts}", "#".repeat(filled), "-".repeat(w - filled))
        }
        None => format!("warming: {counts}"),
    }
}

/// The URLs of a warm list; lines that are not absolute http(s) URLs are
/// returned apart, to be counted as skipped and named.
pub(crate) fn read_list(text: &str) -> (Vec<Uri>, Vec<String>) {
    let mut urls = Vec::new();
    let mut bad = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        match parse_url("line", line) {
            Ok(u) => urls.push(u),
            Err(_) => bad.push(line.to_string()),
        }
    }
    (urls, bad)
}

pub async fn run(args: DeployArgs) -> Result<(), CliError> {
    match args.command {
        DeployCommand::Warm(w) => warm(w).await,
    }
}

async fn warm(args: WarmArgs) -> Result<(), CliError> {
    let text = std::fs::read_to_string(&args.file)
        .map_err(|e| CliError::Usage(format!("cannot read the warm list {}: {e}", args.file.display())))?;
    let nodes: Vec<Uri> = args.nodes.iter().map(|n| parse_url("--node", n)).collect::<Result<_, _>>()?;
    let headers = parse_headers(&args.headers)?;
    let (urls, bad) = read_list(&text);
    let fetcher = Fetcher::new(Duration::from_secs(args.timeout.max(1)));
    let jobs: Vec<(Uri, Uri)> = urls.iter().flat_map(|u| nodes.iter().map(move |n| (u.clone(), n.clone()))).collect();
    let total = jobs.len() + bad.len();
    let mut counts = Counts { skipped: bad.len(), ..Counts::default() };
    let mut failures: Vec<String> = bad.iter().map(|l| format!("not an absolute http(s) URL: {l:?}")).collect();
    let terminal = std::io::stderr().is_terminal();
    let mut last_shown = Instant::now();
    let mut results = futures_util::stream::iter(jobs)
        .map(|(url, node)| {
            let (fetcher, headers) = (&fetcher, &headers);
            async move {
                let result = fetch_through(fetcher, &node, &url, headers).await;
                (url, node, result)
            }
        })
        .buffer_unordered(args.concurrency.max(1));
    while let Some((url, node, result)) = results.next().await {
        let o = match result {
            Ok((status, h)) => {
                let o = outcome(status, &h);
                if o == Outcome::Failed {
                    failures.push(format!("{url} via {node}: answered {status}"));
                }
                o
            }
            Err(e) => {
                failures.push(format!("{url} via {node}: {e}"));
                Outcome::Failed
            }
        };
        counts.add(o);
        if last_shown.elapsed() >= PROGRESS_EVERY || counts.done() == total {
            last_shown = Instant::now();
            let mut err = std::io::stderr();
            if terminal {
                let _ = write!(err, "\r{}", progress(&counts, total, Some(30)));
            } else {
                let _ = writeln!(err, "{}", progress(&counts, total, None));
            }
        }
    }
    if terminal {
        eprintln!();
    }
    println!(
        "warmed {}, skipped {}, failed {} ({} URL(s) x {} node(s), {} unusable line(s))",
        counts.warmed,
        counts.skipped,
        counts.failed,
        urls.len(),
        nodes.len(),
        bad.len()
    );
    for f in failures.iter().take(20) {
        println!("  {f}");
    }
    if failures.len() > 20 {
        println!("  ... and {} more", failures.len() - 20);
    }
    if counts.failed > 0 {
        return Err(CliError::Failed(format!("{} fetch(es) failed", counts.failed)));
    }
    Ok(())
}

async fn fetch_through(
    fetcher: &Fetcher,
    node: &Uri,
    url: &Uri,
    headers: &[(HeaderName, HeaderValue)],
) -> Result<(u16, HeaderMap), String> {
    let pq = url.path_and_query().map_or("/", |p| p.as_str());
    let target: Uri =
        format!("{}://{}{pq}", node.scheme_str().unwrap_or("http"), node.authority().map_or("", |a| a.as_str()))
            .parse()
            .map_err(|e| format!("{e}"))?;
    let host = url.authority().map(|a| a.as_str());
    let got = fetcher.once(&Method::GET, &target, host, headers).await?;
    Ok((got.status, got.headers))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache_status(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.append("cache-status", "upstream-cdn; hit".parse().unwrap());
        h.append("cache-status", v.parse().unwrap());
        h
    }

    #[test]
    fn rfc9211_the_nearest_cache_says_whether_it_stored_the_response() {
        assert_eq!(outcome(200, &cache_status("fresco; fwd=uri-miss; stored; ttl=60")), Outcome::Warmed);
        assert_eq!(outcome(200, &cache_status("fresco; hit; ttl=50")), Outcome::Warmed);
        assert_eq!(outcome(200, &cache_status("fresco; fwd=uri-miss; detail=no-store")), Outcome::Skipped);
        assert_eq!(outcome(200, &HeaderMap::new()), Outcome::Warmed, "a cache without Cache-Status");
        assert_eq!(outcome(404, &cache_status("fresco; fwd=uri-miss; stored")), Outcome::Failed);
        assert_eq!(outcome(503, &HeaderMap::new()), Outcome::Failed);
    }

    #[test]
    fn the_list_skips_comments_and_names_unusable_lines() {
        let (urls, bad) =
            read_list("# hot pages\nhttps://shop.test/\n\n  https://shop.test/app.js  \n/relative\nftp://x/y\n");
        assert_eq!(urls.len(), 2);
        assert_eq!(bad, ["/relative", "ftp://x/y"]);
    }

    #[test]
    fn progress_shows_a_bar_on_terminals_and_counts_everywhere() {
        let c = Counts { warmed: 5, skipped: 2, failed: 3 };
        assert_eq!(progress(&c, 20, Some(10)), "[#####-----] 10/20  warmed 5  skipped 2  failed 3");
        assert_eq!(progress(&c, 10, Some(4)), "[####] 10/10  warmed 5  skipped 2  failed 3");
        assert_eq!(progress(&Counts::default(), 0, Some(4)), "[####] 0/0  warmed 0  skipped 0  failed 0");
        assert_eq!(progress(&c, 20, None), "warming: 10/20  warmed 5  skipped 2  failed 3");
    }
}
