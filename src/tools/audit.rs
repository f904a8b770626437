//! `fresco audit URL`: fetches a page (and with `--crawl N` up to N more
//! same-site pages), every asset they reference, and checks each response
//! against the practices in `rules.rs`. Prints a table (or `--json`) and
//! fails when an error-level finding exists, so it can gate a pipeline.

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use http::{HeaderName, HeaderValue, Uri};
use serde::Serialize;

use super::fetch::{Fetched, Fetcher};
use super::html::{self, Referenced};
use super::rules::{self, Class, Context, Finding, Rule, Severity, Subject};
use crate::cli::CliError;

const AUDIT_EXIT_STATUS: &str = "Exit status: 0 no error-level finding; 1 at least one error-level finding, \
or the page itself could not be fetched or answered 4xx/5xx; 2 bad usage (a URL that is not absolute http(s), a malformed --header).";

/// Assets fetched at once.
const CONCURRENCY: usize = 8;

#[derive(Debug, clap::Args)]
#[command(after_help = AUDIT_EXIT_STATUS)]
pub struct AuditArgs {
    /// The page to audit (absolute http:// or https:// URL)
    pub url: String,
    /// Also audit up to N same-site pages the page links to (breadth first)
    #[arg(long, default_value_t = 0)]
    pub crawl: usize,
    /// Print JSON instead of the table
    #[arg(long)]
    pub json: bool,
    /// Extra request header `Name: value` (repeatable), e.g. a Cookie or Authorization
    #[arg(long = "header", short = 'H')]
    pub headers: Vec<String>,
    /// Seconds to wait for each response
    #[arg(long, default_value_t = 15)]
    pub timeout: u64,
    /// Most assets to check, in the order they are found
    #[arg(long, default_value_t = 500)]
    pub max_assets: usize,
}

/// One audited resource.
#[derive(Debug, Serialize)]
struct Audited {
    url: String,
    /// How a page referenced it; absent for a page.
    referenced_as: Option<Referenced>,
    status: Option<u16>,
    class: Option<Class>,
    user_specific: bool,
    findings: Vec<Finding>,
}

#[derive(Debug, Serialize)]
struct Report {
    url: String,
    pages: usize,
    resources: Vec<Audited>,
    errors: usize,
    warnings: usize,
    info: usize,
}

/// Parses `Name: value` request headers given on the command line.
pub(crate) fn parse_headers(given: &[String]) -> Result<Vec<(HeaderName, HeaderValue)>, CliError> {
    given
        .iter()
        .map(|h| {
            let (name, value) =
                h.split_once(':').ok_or_else(|| CliError::Usage(format!("--header {h:?}: expected `Name: value`")))?;
            let name = HeaderName::from_bytes(name.trim().as_bytes())
                .map_err(|_| CliError::Usage(format!("--header {h:?}: {:?} is not a header name", name.trim())))?;
            let value = HeaderValue::from_str(value.trim()).map_err(|_| {
                CliError::Usage(format!("--header {h:?}: the value has characters a header cannot carry"))
            })?;
            Ok((name, value))
        })
        .collect()
}

/// An absolute http(s) URL from the command line.
pub(crate) fn parse_url(what: &str, text: &str) -> Result<Uri, CliError> {
    let wrong = || CliError::Usage(format!("{what} {text:?}: give an absolute http:// or https:// URL"));
    let uri: Uri = text.parse().map_err(|_| wrong())?;
    match (uri.scheme_str(), uri.authority()) {
        (Some("http") | Some("https"), Some(_)) => Ok(uri),
        _ => Err(wrong()),
    }
}

pub async fn run(args: AuditArgs) -> Result<(), CliError> {
    let start = parse_url("URL", &args.url)?;
    let headers = parse_headers(&args.headers)?;
    let sent_authorization = headers.iter().any(|(n, _)| n == http::header::AUTHORIZATION);
    let fetcher = Fetcher::new(Duration::from_secs(args.timeout.max(1)));

    let mut resources: Vec<Audited> = Vec::new();
    let mut seen: HashSet<String> = HashSet::new();
    let mut pages: VecDeque<Uri> = VecDeque::from([start.clone()]);
    let mut assets: VecDeque<(Uri, Referenced)> = VecDeque::new();
    let mut page_count = 0;
    seen.insert(start.to_string());

    while let Some(page) = pages.pop_front() {
        let got = fetcher.get(&page, &headers).await;
        if page_count == 0 {
            match &got {
                Err(e) => return Err(CliError::Failed(format!("cannot fetch the page: {e}"))),
                Ok(g) if g.status >= 400 => {
                    return Err(CliError::Failed(format!("the page answered {}: nothing to audit", g.status)));
                }
                Ok(_) => {}
            }
        }
        page_count += 1;
        let (audited, refs) = audit_one(&page, None, got, sent_authorization);
        resources.push(audited);
        for r in refs.assets {
            if seen.insert(r.url.to_string()) {
                assets.push_back((r.url, r.as_));
            }
        }
        for link in refs.links {
            let room = page_count + pages.len() <= args.crawl;
            if room && html::same_site(&start, &link) && seen.insert(link.to_string()) {
                pages.push_back(link);
            }
        }
    }

    // Assets in waves: stylesheets and scripts can reference more.
    let mut checked = 0;
    while !assets.is_empty() && checked < args.max_assets {
        let wave: Vec<(Uri, Referenced)> = assets.drain(..assets.len().min(args.max_assets - checked)).collect();
        checked += wave.len();
        let results: Vec<_> = futures_util::stream::iter(wave)
            .map(|(url, as_)| {
                let (fetcher, headers) = (&fetcher, &headers);
                async move {
                    let got = fetcher.get(&url, headers).await;
                    (url, as_, got)
                }
            })
            .buffered(CONCURRENCY)
            .collect()
            .await;
        for (url, as_, got) in results {
            let (audited, refs) = audit_one(&url, Some(as_), got, sent_authorization);
            resources.push(audited);
            for r in refs.assets {
                if seen.insert(r.url.to_string()) {
                    assets.push_back((r.url, r.as_));
                }
            }
        }
    }

    let count = |s: Severity| resources.iter().flat_map(|r| &r.findings).filter(|f| f.severity == s).count();
    let report = Report {
        url: start.to_string(),
        pages: page_count,
        errors: count(Severity::Error),
        warnings: count(Severity::Warning),
        info: count(Severity::Info),
        resources,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
    } else {
        print_table(&report, &start, assets.len());
    }
    if report.errors > 0 {
        return Err(CliError::Failed(format!("{} error-level finding(s)", report.errors)));
    }
    Ok(())
}

/// Judges one fetched resource and returns what it references in turn.
fn audit_one(
    url: &Uri,
    referenced_as: Option<Referenced>,
    got: Result<Fetched, String>,
    sent_authorization: bool,
) -> (Audited, html::PageRefs) {
    let mut refs = html::PageRefs::default();
    let got = match got {
        Ok(g) => g,
        Err(e) => {
            let f = Finding {
                rule: Rule::FetchFailed,
                severity: Severity::Warning,
                finding: format!("could not be fetched: {e}"),
                fix: "check the reference and the server",
            };
            let audited = Audited {
                url: url.to_string(),
                referenced_as,
                status: None,
                class: None,
                user_specific: false,
                findings: vec![f],
            };
            return (audited, refs);
        }
    };
    let ctx = Context { referenced_as, sent_authorization, now: SystemTime::now() };
    let subject = Subject::new(&got.url, &got.headers, &ctx);
    let findings = if (200..300).contains(&got.status) {
        rules::check(&subject)
    } else {
        vec![Finding {
            rule: Rule::FetchFailed,
            severity: Severity::Warning,
            finding: format!("answered {}", got.status),
            fix: "fix or remove the reference",
        }]
    };
    if (200..300).contains(&got.status) {
        match (subject.class, referenced_as) {
            (Class::HtmlEntry, None) => refs = html::scan_html(&got.body, &got.url),
            (_, Some(Referenced::Style)) => refs.assets = html::scan_css(&got.body, &got.url),
            (_, Some(Referenced::Script)) => {
                refs.assets = html::service_workers(&got.body, &got.url)
                    .into_iter()
                    .map(|url| html::Reference { url, as_: Referenced::ServiceWorker })
                    .collect()
            }
            _ => {}
        }
    }
    let audited = Audited {
        url: url.to_string(),
        referenced_as,
        status: Some(got.status),
        class: Some(subject.class),
        user_specific: subject.user_specific,
        findings,
    };
    (audited, refs)
}

fn print_table(report: &Report, start: &Uri, skipped: usize) {
    let mut rows: Vec<(&Audited, &Finding)> =
        report.resources.iter().flat_map(|r| r.findings.iter().map(move |f| (r, f))).collect();
    rows.sort_by(|a, b| b.1.severity.cmp(&a.1.severity).then(a.0.url.cmp(&b.0.url)).then(a.1.rule.cmp(&b.1.rule)));
    let shown: Vec<String> = rows.iter().map(|(r, _)| resource_label(r, start)).collect();
    let width = shown.iter().map(|s| s.chars().count()).max().unwrap_or(8).clamp(8, 48);
    if !rows.is_empty() {
        println!("{:<8} {:<width$} {:<28} FINDING", "SEVERITY", "RESOURCE", "RULE");
    }
    for ((_, f), label) in rows.iter().zip(&shown) {
        let label: String = if label.chars().count() > width {
            let tail: String = label.chars().rev().take(width - 1).collect::<Vec<_>>().into_iter().rev().collect();
            format!("…{tail}")
        } else {
            label.clone()
        };
        println!("{:<8} {:<width$} {:<28} {}", f.severity.as_str(), label, f.rule.as_str(), f.finding);
        println!("{:<8} {:<width$} {:<28} fix: {}", "", "", "", f.fix);
    }
    let clean = report.resources.iter().filter(|r| r.findings.is_empty()).count();
    println!(
        "{} resource(s) checked ({} page(s)), {clean} without findings: {} error(s), {} warning(s), {} info",
        report.resources.len(),
        report.pages,
        report.errors,
        report.warnings,
        report.info
    );
    if skipped > 0 {
        println!("{skipped} more asset(s) not checked (--max-assets)");
    }
}

/// The path for the audited site's own resources, the URL for others, and
/// the class.
fn resource_label(r: &Audited, start: &Uri) -> String {
    let url: Option<Uri> = r.url.parse().ok();
    let place = match url {
        Some(u) if html::same_site(&u, start) => u.path_and_query().map_or("/".into(), |p| p.to_string()),
        _ => r.url.clone(),
    };
    let class = match (r.class, r.user_specific) {
        (Some(c), true) => format!(" ({}, user-specific)", c.as_str()),
        (Some(c), false) => format!(" ({})", c.as_str()),
        (None, _) => String::new(),
    };
    format!("{place}{class}")
}
