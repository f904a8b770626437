//! The model test's origin: a real HTTP server on loopback whose every
//! response says which production it is (`n=` in the body, `X-Serial` in
//! the header fields), and which the test tells, per path, what to send.
//!
//! Each response is a *production* with a serial number; the origin records
//! them all (path, version, epoch, the client and request it answered, its
//! shape, any cookie or private field it carried) so the oracle can tell
//! where any byte a client receives came from.
//!
//! Like the origins web cache poisoning targets, it *reflects* what shapes
//! a response: the body echoes the Host, the raw request target, the
//! steering fields (`X-Forwarded-Host`, `Forwarded`, ...), the cookie and
//! any request body it received, and a production whose request carried
//! an attacker's marker is recorded as such (`steered`, `attacker_page`).
//!
//! The *epoch* is bumped by the test just before it sends an invalidation
//! (and by the origin itself when it answers a POST), so "content produced
//! before the invalidation was sent" is exactly "epoch below the
//! invalidation's". The ETag contains the epoch, so a validator from before
//! an invalidation never gets a 304 after it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use tokio::net::TcpListener;

/// The Cache-Control variants the origin can answer with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cc {
    /// `max-age=600`
    Fresh,
    /// `public, max-age=600`
    Public,
    /// `s-maxage=600`
    SMaxAge,
    /// `max-age=0`: stored, always validated.
    Stale,
    /// `no-cache, max-age=600`
    NoCache,
    /// `no-store`
    NoStore,
    /// `private, max-age=600`
    Private,
    /// `max-age=600, private="X-Secret"` with an `X-Secret` field.
    PrivateField,
    /// `max-age=0, stale-while-revalidate=600`
    Swr,
    /// `max-age=600, stale-while-revalidate=600`
    FreshSwr,
    /// `max-age=600, must-revalidate`
    MustRevalidate,
    /// No Cache-Control: heuristic freshness from Last-Modified.
    Heuristic,
}

impl Cc {
    pub(crate) const ALL: [Cc; 12] = [
        Cc::Fresh,
        Cc::Public,
        Cc::SMaxAge,
        Cc::Stale,
        Cc::NoCache,
        Cc::NoStore,
        Cc::Private,
        Cc::PrivateField,
        Cc::Swr,
        Cc::FreshSwr,
        Cc::MustRevalidate,
        Cc::Heuristic,
    ];

    fn header(self) -> Option<&'static str> {
        Some(match self {
            Cc::Fresh => "max-age=600",
            Cc::Public => "public, max-age=600",
            Cc::SMaxAge => "s-maxage=600",
            Cc::Stale => "max-age=0",
            Cc::NoCache => "no-cache, max-age=600",
            Cc::NoStore => "no-store",
            Cc::Private => "private, max-age=600",
            Cc::PrivateField => "max-age=600, private=\"X-Secret\"",
            Cc::Swr => "max-age=0, stale-while-revalidate=600",
            Cc::FreshSwr => "max-age=600, stale-while-revalidate=600",
            Cc::MustRevalidate => "max-age=600, must-revalidate",
            Cc::Heuristic => return None,
        })
    }

    /// The whole response is for the requesting client only (§5.2.2.7,
    /// §5.2.2.5: a shared cache stores neither).
    pub(crate) fn personal(self) -> bool {
        matches!(self, Cc::Private | Cc::NoStore)
    }

    /// §3.5: a response to a request with Authorization may be reused only
    /// with `public`, `s-maxage` or `must-revalidate`.
    pub(crate) fn shareable_with_authorization(self) -> bool {
        matches!(self, Cc::Public | Cc::SMaxAge | Cc::MustRevalidate)
    }

    /// §4.2.4: directives that forbid serving the response stale.
    pub(crate) fn forbids_stale(self) -> bool {
        matches!(self, Cc::SMaxAge | Cc::NoCache | Cc::MustRevalidate)
    }

    /// RFC 5861 §3: a stale-while-revalidate window.
    pub(crate) fn has_swr(self) -> bool {
        matches!(self, Cc::Swr | Cc::FreshSwr)
    }
}

/// When the origin adds `Set-Cookie`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cookie {
    Never,
    On200,
    On304,
    Always,
}

/// What the origin sends for a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Shape {
    pub cc: Cc,
    pub etag: bool,
    pub last_modified: bool,
    pub cookie: Cookie,
    /// Adds `stale-if-error=600`.
    pub stale_if_error: bool,
}

impl Shape {
    pub(crate) fn plain() -> Shape {
        Shape { cc: Cc::Fresh, etag: true, last_modified: true, cookie: Cookie::Never, stale_if_error: false }
    }
}

/// One response the origin produced.
#[derive(Debug, Clone)]
pub(crate) struct Production {
    pub serial: u64,
    pub path: String,
    pub version: u32,
    pub epoch: u64,
    /// `X-Client` of the request it answered.
    pub client: String,
    /// `X-Request-Id` of the request it answered.
    pub rid: String,
    pub shape: Shape,
    /// The request carried Authorization.
    pub auth: bool,
    /// The body of a GET 200.
    pub body: Option<Bytes>,
    /// The request the origin received carried the attacker's marker
    /// ([`MARKER`]) in something it reflects: everything it produced
    /// (body and header fields) was shaped by the attacker.
    pub steered: bool,
    /// The body is the attacker's own page: the request carried the
    /// attacker's session cookie and the response has only heuristic
    /// freshness (the cache-deception case).
    pub attacker_page: bool,
}

/// What every attacker request puts in whatever it uses to steer the
/// origin (a host, a scheme, a path, a method, a body).
pub(crate) const MARKER: &str = "evil";
/// The attacker's session cookie value.
pub(crate) const ATTACKER_SESSION: &str = "session=attacker";

/// Request fields the origin acts on (and so reflects) although a cache
/// key does not include them.
const STEERING: [&str; 5] =
    ["x-forwarded-host", "x-forwarded-proto", "x-original-url", "x-http-method-override", "forwarded"];
/// The echo is padded to this width, so that every legitimate body of a
/// path has the same length (see `produce`).
const ECHO_WIDTH: usize = 160;

#[derive(Debug, Clone)]
struct PathState {
    version: u32,
    shape: Shape,
    tags: Vec<String>,
    groups: Vec<String>,
    /// How long answers for the path take (to make requests overlap).
    delay: Duration,
}

#[derive(Default)]
struct State {
    paths: HashMap<String, PathState>,
    epoch: u64,
    productions: Vec<Production>,
    by_path: HashMap<String, Vec<u64>>,
}

/// The running origin; its task stops when dropped.
pub(crate) struct ModelOrigin {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ModelOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ModelOrigin {
    pub(crate) async fn start() -> ModelOrigin {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        // Last-Modified values count from ten days back, so that every one
        // is in the past and heuristic freshness is about a day.
        let base = SystemTime::now() - Duration::from_secs(10 * 86_400);
        let st = state.clone();
        let task = crate::harness::serve_http1(listener, move |req| {
            let st = st.clone();
            async move { answer(&st, base, req).await }
        });
        ModelOrigin { addr, state, task }
    }

    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Declares a path with its tags (`Surrogate-Key`) and groups
    /// (`Cache-Groups`).
    pub(crate) fn add_path(&self, path: &str, tags: Vec<String>, groups: Vec<String>) {
        let mut st = self.state.lock().unwrap();
        st.paths.insert(
            path.to_string(),
            PathState { version: 1, shape: Shape::plain(), tags, groups, delay: Duration::ZERO },
        );
    }

    pub(crate) fn set_shape(&self, path: &str, shape: Shape) {
        self.state.lock().unwrap().paths.get_mut(path).expect("declared path").shape = shape;
    }

    pub(crate) fn set_delay(&self, path: &str, delay: Duration) {
        self.state.lock().unwrap().paths.get_mut(path).expect("declared path").delay = delay;
    }

    pub(crate) fn bump_version(&self, path: &str) {
        self.state.lock().unwrap().paths.get_mut(path).expect("declared path").version += 1;
    }

    /// Starts a new epoch and returns it: everything produced so far has a
    /// lower one.
    pub(crate) fn bump_epoch(&self) -> u64 {
        let mut st = self.state.lock().unwrap();
        st.epoch += 1;
        st.epoch
    }

    /// The current epoch (the one a POST just started, say).
    pub(crate) fn epoch(&self) -> u64 {
        self.state.lock().unwrap().epoch
    }

    pub(crate) fn production(&self, serial: u64) -> Option<Production> {
        self.state.lock().unwrap().productions.get(serial as usize).cloned()
    }

    /// Every GET 200 produced for `path` whose body holds `bytes` at `offset`.
    pub(crate) fn productions_matching(&self, path: &str, offset: usize, bytes: &[u8]) -> Vec<Production> {
        let st = self.state.lock().unwrap();
        st.by_path
            .get(path)
            .into_iter()
            .flatten()
            .map(|s| &st.productions[*s as usize])
            .filter(|p| p.body.as_ref().is_some_and(|b| b.get(offset..offset + bytes.len()) == Some(bytes)))
            .cloned()
            .collect()
    }

    /// Whether the origin has answered a request with this `X-Request-Id`.
    pub(crate) fn answered(&self, rid: &str) -> bool {
        self.state.lock().unwrap().productions.iter().rev().any(|p| p.rid == rid)
    }

    /// How many requests the origin answered.
    pub(crate) fn produced(&self) -> usize {
        self.state.lock().unwrap().productions.len()
    }
}

fn last_modified(base: SystemTime, version: u32, epoch: u64) -> SystemTime {
    base + Duration::from_secs(epoch * 1000 + u64::from(version))
}

fn etag(path: &str, version: u32, epoch: u64) -> String {
    format!("\"{}-v{version}-e{epoch}\"", path.trim_start_matches('/').replace('/', "."))
}

fn header<'a, B>(req: &'a Request<B>, name: &str) -> &'a str {
    req.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

/// RFC 9110 §13.1.2: weak comparison against any listed tag, or `*`.
fn none_match(list: &str, tag: &str) -> bool {
    list.split(',').map(str::trim).any(|t| t == "*" || t.trim_start_matches("W/") == tag)
}

/// Keeps a reflected value on one line of visible ASCII without spaces.
fn visible(value: &[u8]) -> String {
    value.iter().map(|b| if b.is_ascii_graphic() { char::from(*b) } else { '_' }).collect()
}

/// The path as an origin that resolves it would look it up: `%2e` decoded
/// and dot segments removed (RFC 3986 §5.2.4), so that a target Fresco
/// forwarded unnormalised would still find the content it names.
fn resolve(path: &str) -> String {
    let decoded = path.replace("%2e", ".").replace("%2E", ".");
    let mut out: Vec<&str> = Vec::new();
    for seg in decoded.split('/').skip(1) {
        match seg {
            "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    format!("/{}", out.join("/"))
}

/// What the origin reflects of a request: everything that may shape the
/// response besides the path it names.
fn echo(req: &Request<()>, body: &[u8]) -> String {
    let mut e = format!(
        "host={};target={}",
        visible(header(req, "host").as_bytes()),
        visible(req.uri().to_string().as_bytes())
    );
    for name in STEERING {
        for v in req.headers().get_all(name) {
            e.push_str(&format!(";{name}={}", visible(v.as_bytes())));
        }
    }
    if let Some(c) = req.headers().get(http::header::COOKIE) {
        e.push_str(&format!(";cookie={}", visible(c.as_bytes())));
    }
    if !body.is_empty() {
        e.push_str(&format!(";body={}", visible(body)));
    }
    format!("{e:.<ECHO_WIDTH$}")
}

async fn answer(st: &Mutex<State>, base: SystemTime, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = resolve(req.uri().path());
    let attacker_session = header(&req, "cookie").contains(ATTACKER_SESSION);
    let method = req.method().clone();
    let client = header(&req, "x-client").to_string();
    let rid = header(&req, "x-request-id").to_string();
    let auth = req.headers().contains_key(http::header::AUTHORIZATION);
    let inm = req.headers().get(http::header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()).map(str::to_string);
    let ims = req
        .headers()
        .get(http::header::IF_MODIFIED_SINCE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok());
    let invalidate_group = header(&req, "x-invalidate-group").to_string();
    let range = header(&req, "range").to_string();
    let (parts, body) = req.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let req = Request::from_parts(parts, ());
    let echo = echo(&req, &body);
    let from = Reflected { echo, attacker_session };

    let get = method == Method::GET;
    let (mut resp, delay) =
        produce(&mut st.lock().unwrap(), base, method, path, client, rid, auth, inm, ims, invalidate_group, from);
    // Like a file server, the origin answers one byte range of a GET 200
    // with 206 (RFC 9110 §14), so that sliced objects are fetched in
    // parts; the production is still the whole body.
    let serial = resp.headers().get("x-serial").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok());
    if get
        && resp.status() == StatusCode::OK
        && let Some(body) = serial.and_then(|n| st.lock().unwrap().productions.get(n).and_then(|p| p.body.clone()))
        && let Some((first, last)) = byte_range(&range, body.len())
    {
        let len = body.len();
        *resp.body_mut() = Full::new(body.slice(first..=last));
        *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
        let v = HeaderValue::from_str(&format!("bytes {first}-{last}/{len}")).unwrap();
        resp.headers_mut().insert(http::header::CONTENT_RANGE, v);
    }
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    resp
}

/// The one satisfiable byte range `bytes=a-b` or `bytes=a-` of a body of
/// `len` bytes asks for; None for anything else (then the whole is sent).
fn byte_range(range: &str, len: usize) -> Option<(usize, usize)> {
    let (a, b) = range.strip_prefix("bytes=")?.split_once('-')?;
    let first: usize = a.parse().ok()?;
    let last = if b.is_empty() { len.checked_sub(1)? } else { b.parse::<usize>().ok()?.min(len.checked_sub(1)?) };
    (first <= last).then_some((first, last))
}

/// What the origin took from a request besides its path and validators.
struct Reflected {
    echo: String,
    attacker_session: bool,
}

/// The response for a request, recorded as a production.
#[allow(clippy::too_many_arguments)]
fn produce(
    st: &mut State,
    base: SystemTime,
    method: Method,
    path: String,
    client: String,
    rid: String,
    auth: bool,
    inm: Option<String>,
    ims: Option<SystemTime>,
    invalidate_group: String,
    from: Reflected,
) -> (Response<Full<Bytes>>, Duration) {
    if method == Method::POST {
        // A POST changes the resource: what was produced before is old.
        st.epoch += 1;
        let mut resp = Response::new(Full::new(Bytes::from_static(b"posted\n")));
        if !invalidate_group.is_empty() {
            let v = HeaderValue::from_str(&format!("\"{invalidate_group}\"")).unwrap();
            resp.headers_mut().insert("cache-group-invalidation", v);
        }
        return (resp, Duration::ZERO);
    }
    let Some(ps) = st.paths.get(&path).cloned() else {
        let mut resp = Response::new(Full::new(Bytes::from_static(b"no such path\n")));
        *resp.status_mut() = StatusCode::NOT_FOUND;
        return (resp, Duration::ZERO);
    };
    let epoch = st.epoch;
    let serial = st.productions.len() as u64;
    let shape = ps.shape;
    let tag = etag(&path, ps.version, epoch);
    let lm = last_modified(base, ps.version, epoch);
    // §13.2.2: If-None-Match wins over If-Modified-Since.
    let not_modified = match (&inm, ims) {
        (Some(list), _) => shape.etag && none_match(list, &tag),
        (None, Some(since)) => shape.last_modified && lm <= since,
        (None, None) => false,
    };
    let status = if not_modified { 304 } else { 200 };
    let cookie = match (shape.cookie, status) {
        (Cookie::Always, _) | (Cookie::On200, 200) | (Cookie::On304, 304) => Some(format!("{client}-{serial}")),
        _ => None,
    };
    let secret = (shape.cc == Cc::PrivateField).then(|| format!("{client}-{serial}"));
    // Fixed-width numbers and a padded echo: every legitimate body of a
    // path has the same length, so Content-Length alone never tells two
    // productions apart (§4.3.5).
    let text = format!(
        "path={path} v={:04} e={epoch:06} client={client} rid={rid} auth={} echo={} n={serial:08}\n",
        ps.version,
        u8::from(auth),
        from.echo
    );
    let steered = from.echo.contains(MARKER);
    let attacker_page = from.attacker_session && shape.cc == Cc::Heuristic;
    let body = Bytes::from(text);
    let mut resp =
        Response::new(Full::new(if status == 200 && method == Method::GET { body.clone() } else { Bytes::new() }));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap();
    let h = resp.headers_mut();
    let mut add = |name: &'static str, value: String| {
        h.append(name, HeaderValue::from_str(&value).unwrap());
    };
    let mut cc = shape.cc.header().map(str::to_string);
    if shape.stale_if_error {
        cc = Some(cc.map_or("stale-if-error=600".into(), |c| format!("{c}, stale-if-error=600")));
    }
    if let Some(cc) = cc {
        add("cache-control", cc);
    }
    if shape.etag {
        add("etag", tag);
    }
    if shape.last_modified || shape.cc == Cc::Heuristic {
        add("last-modified", httpdate::fmt_http_date(lm));
    }
    add("x-version", ps.version.to_string());
    add("x-epoch", epoch.to_string());
    add("x-serial", serial.to_string());
    if !ps.tags.is_empty() {
        add("surrogate-key", ps.tags.join(" "));
    }
    if !ps.groups.is_empty() {
        add("cache-groups", ps.groups.iter().map(|g| format!("\"{g}\"")).collect::<Vec<_>>().join(", "));
    }
    if let Some(c) = &cookie {
        add("set-cookie", format!("session={c}; Path=/"));
    }
    if let Some(s) = &secret {
        add("x-secret", s.clone());
    }
    if steered {
        // Like a reflected Link or Location field.
        add("x-echo", from.echo.clone());
    }
    if method == Method::HEAD && status == 200 {
        // The length the GET would have (§9.3.2).
        add("content-length", body.len().to_string());
    }
    st.productions.push(Production {
        serial,
        path: path.clone(),
        version: ps.version,
        epoch,
        client,
        rid,
        shape,
        auth,
        body: (status == 200 && method == Method::GET).then_some(body),
        steered,
        attacker_page,
    });
    st.by_path.entry(path).or_default().push(serial);
    (resp, ps.delay)
}
