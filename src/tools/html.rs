//! Finding what a page references: the assets a browser would load for it
//! (scripts, styles, images, fonts, the manifest, preloads, the service
//! worker it registers) and the same-site pages it links to. Pure functions
//! of (document, base URL); the fetching is in `audit.rs`.

use std::sync::LazyLock;

use html5gum::{Token, Tokenizer};
use http::Uri;
use regex::Regex;

/// Why a URL was referenced: it decides how the resource is classified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Referenced {
    Script,
    Style,
    Image,
    Font,
    Manifest,
    ServiceWorker,
    Preload,
    Media,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reference {
    pub url: Uri,
    pub as_: Referenced,
}

/// What one HTML document points at.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct PageRefs {
    pub assets: Vec<Reference>,
    /// `<a href>` targets, for `--crawl`.
    pub links: Vec<Uri>,
}

/// `navigator.serviceWorker.register("/sw.js")` (also with backquotes).
static SW_REGISTER: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r#"serviceWorker\s*\.\s*register\s*\(\s*(?:new\s+URL\s*\(\s*)?["'`]([^"'`]+)["'`]"#).expect("valid")
});
/// `url(...)` and `@import "..."` in a stylesheet.
static CSS_URL: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r#"url\(\s*["']?([^"')]+?)["']?\s*\)|@import\s+["']([^"']+)["']"#).expect("valid"));

/// The references of an HTML document served at `base`.
pub(crate) fn scan_html(html: &[u8], base: &Uri) -> PageRefs {
    let mut refs = PageRefs::default();
    let mut base = base.clone();
    let mut in_script = false;
    let mut emitter = html5gum::DefaultEmitter::default();
    // Script and style contents are raw text, not markup.
    emitter.naively_switch_states(true);
    for token in Tokenizer::new_with_emitter(html, emitter).flatten() {
        match token {
            Token::StartTag(tag) => {
                let name = String::from_utf8_lossy(&tag.name).to_ascii_lowercase();
                let attr = |n: &str| {
                    tag.attributes
                        .iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case(n.as_bytes()))
                        .map(|(_, v)| String::from_utf8_lossy(&v.value).into_owned())
                };
                let mut add = |value: Option<String>, as_: Referenced| {
                    if let Some(url) = value.and_then(|v| resolve(&base, &v)) {
                        refs.assets.push(Reference { url, as_ });
                    }
                };
                match name.as_str() {
                    "base" => {
                        if let Some(b) = attr("href").and_then(|h| resolve(&base, &h)) {
                            base = b;
                        }
                    }
                    "script" => {
                        in_script = attr("src").is_none();
                        add(attr("src"), Referenced::Script);
                    }
                    "link" => {
                        let rel = attr("rel").unwrap_or_default().to_ascii_lowercase();
                        let rels: Vec<&str> = rel.split_ascii_whitespace().collect();
                        let as_ = if rels.contains(&"stylesheet") {
                            Some(Referenced::Style)
                        } else if rels.contains(&"manifest") {
                            Some(Referenced::Manifest)
                        } else if rels.contains(&"modulepreload") {
                            Some(Referenced::Script)
                        } else if rels.contains(&"preload") || rels.contains(&"prefetch") {
                            Some(preload_kind(attr("as").as_deref()))
                        } else if rels.iter().any(|r| *r == "icon" || *r == "apple-touch-icon") {
                            Some(Referenced::Image)
                        } else {
                            None
                        };
                        if let Some(as_) = as_ {
                            add(attr("href"), as_);
                        }
                    }
                    "img" | "source" | "input" => {
                        add(attr("src"), if name == "source" { Referenced::Media } else { Referenced::Image });
                        for candidate in attr("srcset").unwrap_or_default().split(',') {
                            let url = candidate.split_ascii_whitespace().next().map(str::to_string);
                            add(url, Referenced::Image);
                        }
                    }
                    "video" => {
                        add(attr("src"), Referenced::Media);
                        add(attr("poster"), Referenced::Image);
                    }
                    "audio" | "track" => add(attr("src"), Referenced::Media),
                    "a" => {
                        if let Some(url) = attr("href").and_then(|h| resolve(&base, &h)) {
                            refs.links.push(url);
                        }
                    }
                    _ => {}
                }
            }
            Token::EndTag(_) => in_script = false,
            Token::String(text) if in_script => {
                for sw in service_workers(&text.value, &base) {
                    refs.assets.push(Reference { url: sw, as_: Referenced::ServiceWorker });
                }
            }
            _ => {}
        }
    }
    dedup(&mut refs.assets);
    refs.links.dedup();
    refs
}

/// Service workers a script registers.
pub(crate) fn service_workers(script: &[u8], base: &Uri) -> Vec<Uri> {
    let text = String::from_utf8_lossy(script);
    SW_REGISTER.captures_iter(&text).filter_map(|c| resolve(base, &c[1])).collect()
}

/// Fonts and images a stylesheet loads (and the stylesheets it imports).
pub(crate) fn scan_css(css: &[u8], base: &Uri) -> Vec<Reference> {
    let text = String::from_utf8_lossy(css);
    let mut out: Vec<Reference> = CSS_URL
        .captures_iter(&text)
        .filter_map(|c| {
            let (raw, imported) = match (c.get(1), c.get(2)) {
                (Some(u), _) => (u.as_str(), false),
                (None, Some(i)) => (i.as_str(), true),
                _ => return None,
            };
            let url = resolve(base, raw)?;
            let ext = url.path().rsplit('.').next().unwrap_or_default().to_ascii_lowercase();
            let as_ = if imported || ext == "css" {
                Referenced::Style
            } else if matches!(ext.as_str(), "woff" | "woff2" | "ttf" | "otf" | "eot") {
                Referenced::Font
            } else {
                Referenced::Image
            };
            Some(Reference { url, as_ })
        })
        .collect();
    dedup(&mut out);
    out
}

fn preload_kind(as_: Option<&str>) -> Referenced {
    match as_.map(str::to_ascii_lowercase).as_deref() {
        Some("script") | Some("worker") => Referenced::Script,
        Some("style") => Referenced::Style,
        Some("font") => Referenced::Font,
        Some("image") => Referenced::Image,
        Some("audio") | Some("video") | Some("track") => Referenced::Media,
        _ => Referenced::Preload,
    }
}

fn dedup(refs: &mut Vec<Reference>) {
    let mut seen = std::collections::HashSet::new();
    refs.retain(|r| seen.insert(r.url.to_string()));
}

/// Resolves a reference found in a document; `None` for what is not
/// fetched over HTTP (data:, javascript:, mailto:, fragments alone).
pub(crate) fn resolve(base: &Uri, reference: &str) -> Option<Uri> {
    let reference = reference.trim();
    let without_fragment = reference.split('#').next().unwrap_or_default();
    if without_fragment.is_empty() {
        return None;
    }
    if let Some((scheme, _)) = without_fragment.split_once(':')
        && scheme.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'-' || b == b'.')
        && !matches!(scheme.to_ascii_lowercase().as_str(), "http" | "https")
    {
        return None;
    }
    if let Some(query) = without_fragment.strip_prefix('?') {
        return format!("{}://{}{}?{query}", base.scheme_str()?, base.authority()?, base.path()).parse().ok();
    }
    let absolute = if without_fragment.starts_with("//") {
        format!("{}:{without_fragment}", base.scheme_str()?)
    } else if ["http://", "https://"]
        .iter()
        .any(|s| without_fragment.get(..s.len()).is_some_and(|p| p.eq_ignore_ascii_case(s)))
    {
        without_fragment.to_string()
    } else if without_fragment.starts_with('/') {
        format!("{}://{}{without_fragment}", base.scheme_str()?, base.authority()?)
    } else {
        let dir = &base.path()[..base.path().rfind('/').map_or(0, |i| i + 1)];
        format!("{}://{}{dir}{without_fragment}", base.scheme_str()?, base.authority()?)
    };
    let resolved: Uri = absolute.parse().ok()?;
    // RFC 3986 §5.2.4 (`../` in relative references), as cache keys do.
    let path = crate::key::normalise_path(resolved.path());
    let pq = match resolved.query() {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };
    format!("{}://{}{pq}", resolved.scheme_str()?, resolved.authority()?).parse().ok()
}

/// Same scheme, host and port: what `--crawl` stays within.
pub(crate) fn same_site(a: &Uri, b: &Uri) -> bool {
    let port = |u: &Uri| u.port_u16().unwrap_or(if u.scheme_str() == Some("https") { 443 } else { 80 });
    a.scheme_str() == b.scheme_str()
        && a.host().map(str::to_ascii_lowercase) == b.host().map(str::to_ascii_lowercase)
        && port(a) == port(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Uri {
        "https://shop.test/en/index.html".parse().unwrap()
    }

    fn urls(refs: &[Reference], as_: Referenced) -> Vec<String> {
        refs.iter().filter(|r| r.as_ == as_).map(|r| r.url.to_string()).collect()
    }

    #[test]
    fn finds_every_kind_of_asset_a_browser_loads() {
        let html = br##"<!doctype html><html><head>
            <link rel="stylesheet" href="/css/app.3f2a9c1b.css">
            <link rel="manifest" href="manifest.webmanifest">
            <link rel="preload" href="/fonts/inter.woff2" as="font" crossorigin>
            <link rel="modulepreload" href="/js/chunk.js">
            <link rel="icon" href="/favicon.ico">
            <script src="/js/app.js?v=12"></script>
            <script>if ('serviceWorker' in navigator) { navigator.serviceWorker.register('/sw.js'); }</script>
            </head><body>
            <img src="../img/hero.png" srcset="/img/hero-2x.png 2x, /img/hero-3x.png 3x">
            <video src="/v.mp4" poster="/poster.jpg"></video>
            <a href="/en/about">About</a><a href="mailto:x@y">mail</a><a href="#top">top</a>
            <img src="data:image/png;base64,AAAA">
            </body></html>"##;
        let refs = scan_html(html, &base());
        assert_eq!(urls(&refs.assets, Referenced::Style), ["https://shop.test/css/app.3f2a9c1b.css"]);
        assert_eq!(urls(&refs.assets, Referenced::Manifest), ["https://shop.test/en/manifest.webmanifest"]);
        assert_eq!(urls(&refs.assets, Referenced::Font), ["https://shop.test/fonts/inter.woff2"]);
        assert_eq!(
            urls(&refs.assets, Referenced::Script),
            ["https://shop.test/js/chunk.js", "https://shop.test/js/app.js?v=12"]
        );
        assert_eq!(urls(&refs.assets, Referenced::ServiceWorker), ["https://shop.test/sw.js"]);
        assert_eq!(
            urls(&refs.assets, Referenced::Image),
            [
                "https://shop.test/favicon.ico",
                "https://shop.test/img/hero.png",
                "https://shop.test/img/hero-2x.png",
                "https://shop.test/img/hero-3x.png",
                "https://shop.test/poster.jpg"
            ]
        );
        assert_eq!(urls(&refs.assets, Referenced::Media), ["https://shop.test/v.mp4"]);
        assert_eq!(refs.links.iter().map(|u| u.to_string()).collect::<Vec<_>>(), ["https://shop.test/en/about"]);
    }

    #[test]
    fn markup_inside_a_script_is_not_a_reference() {
        let html = br#"<script>var s = '<img src="/not-an-image.png">';</script><img src="/real.png">"#;
        let refs = scan_html(html, &base());
        assert_eq!(urls(&refs.assets, Referenced::Image), ["https://shop.test/real.png"]);
    }

    #[test]
    fn base_element_changes_resolution() {
        let refs = scan_html(br#"<base href="https://cdn.test/v2/"><script src="a.js"></script>"#, &base());
        assert_eq!(urls(&refs.assets, Referenced::Script), ["https://cdn.test/v2/a.js"]);
    }

    #[test]
    fn stylesheets_give_fonts_images_and_imports() {
        let css = br#"@import "base.css"; @font-face { src: url('/f/inter.woff2') format('woff2'), url(/f/inter.ttf); }
            .hero { background: url("../img/bg.jpg"); } .x { background: url(data:image/png;base64,AA); }"#;
        let base: Uri = "https://shop.test/css/app.css".parse().unwrap();
        let refs = scan_css(css, &base);
        assert_eq!(urls(&refs, Referenced::Style), ["https://shop.test/css/base.css"]);
        assert_eq!(urls(&refs, Referenced::Font), ["https://shop.test/f/inter.woff2", "https://shop.test/f/inter.ttf"]);
        assert_eq!(urls(&refs, Referenced::Image), ["https://shop.test/img/bg.jpg"]);
    }

    #[test]
    fn service_worker_registrations_in_scripts() {
        let js = b"navigator.serviceWorker.register(`/service-worker.js`, {scope: '/'})";
        assert_eq!(service_workers(js, &base()), ["https://shop.test/service-worker.js".parse::<Uri>().unwrap()]);
    }

    #[test]
    fn same_site_compares_scheme_host_and_port() {
        let a: Uri = "https://Shop.test/a".parse().unwrap();
        assert!(same_site(&a, &"https://shop.test:443/b".parse().unwrap()));
        assert!(!same_site(&a, &"http://shop.test/b".parse().unwrap()));
        assert!(!same_site(&a, &"https://cdn.shop.test/b".parse().unwrap()));
    }
}
