//! The access log (`access_log = "stdout" | PATH`, off by default): one
//! line per response in the Common Log Format, followed by Fresco's
//! `Cache-Status` entry and the seconds until the response head was ready:
//!
//! `127.0.0.1 - - [23/Nov/2026:15:46:46 +0000] "GET /about HTTP/1.1" 200 74 "fresco; hit; ttl=297" 0.000143`
//!
//! The size is the body length when known up front (`Content-Length` or a
//! body of known size), else `-` as in CLF. Lines are handed to a writer
//! thread through a bounded queue, so a slow disk never stalls a request;
//! when the queue is full the line is dropped and counted in
//! `fresco_access_log_dropped_total`.

use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::time::{Duration, SystemTime};

/// Lines waiting for the writer; past it lines are dropped.
const QUEUE: usize = 16 * 1024;

/// Where the access log goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Stdout,
    File(PathBuf),
}

#[derive(Debug)]
pub struct AccessLog {
    tx: SyncSender<String>,
}

/// One response, as the access log records it.
struct Entry<'a> {
    client: IpAddr,
    time: SystemTime,
    method: &'a str,
    target: &'a str,
    version: http::Version,
    status: u16,
    bytes: Option<u64>,
    /// Fresco's own Cache-Status entry.
    cache_status: &'a str,
    elapsed: Duration,
}

/// What the access log keeps of a request, taken before the proxy
/// consumes it.
pub struct RequestLine {
    time: SystemTime,
    method: http::Method,
    target: String,
    version: http::Version,
}

impl RequestLine {
    pub fn of<B>(req: &http::Request<B>) -> RequestLine {
        RequestLine {
            time: SystemTime::now(),
            method: req.method().clone(),
            target: req.uri().path_and_query().map_or("/", |p| p.as_str()).to_string(),
            version: req.version(),
        }
    }
}

impl AccessLog {
    /// Logs the response to `line`: its status, size when known, Fresco's
    /// own (last) Cache-Status entry, and `elapsed`.
    pub fn response<B: http_body::Body>(
        &self,
        line: &RequestLine,
        client: IpAddr,
        resp: &http::Response<B>,
        elapsed: Duration,
    ) {
        let header = |name: &str| resp.headers().get_all(name).iter().next_back().and_then(|v| v.to_str().ok());
        self.record(&Entry {
            client,
            time: line.time,
            method: line.method.as_str(),
            target: &line.target,
            version: line.version,
            status: resp.status().as_u16(),
            bytes: resp.body().size_hint().exact().or_else(|| header("content-length")?.parse().ok()),
            cache_status: header("cache-status").unwrap_or("-"),
            elapsed,
        });
    }

    /// Opens (appends to) the target and starts its writer thread.
    pub fn open(target: &Target) -> Result<AccessLog, String> {
        let out: Box<dyn Write + Send> = match target {
            Target::Stdout => Box::new(std::io::stdout()),
            Target::File(path) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| format!("cannot open the access log {} (`access_log`): {e}", path.display()))?,
            ),
        };
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_lines(rx, out))
            .map_err(|e| format!("cannot start the access log writer: {e}"))?;
        Ok(AccessLog { tx })
    }

    fn record(&self, entry: &Entry<'_>) {
        match self.tx.try_send(format_line(entry)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => ::metrics::counter!("fresco_access_log_dropped_total").increment(1),
            // The writer stopped (its output failed); it said why.
            Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

/// Writes lines as they come, flushing whenever the queue is drained, so a
/// line reaches the file promptly without a write call per line under load.
fn write_lines(rx: Receiver<String>, out: Box<dyn Write + Send>) {
    let mut out = std::io::BufWriter::new(out);
    while let Ok(line) = rx.recv() {
        let mut result = out.write_all(line.as_bytes());
        while let (Ok(()), Ok(more)) = (&result, rx.try_recv()) {
            result = out.write_all(more.as_bytes());
        }
        if let Err(e) = result.and_then(|()| out.flush()) {
            tracing::error!(error = %e, "cannot write the access log; access logging stops");
            return;
        }
    }
}

/// The CLF time, `[10/Oct/2000:13:55:36 +0000]`, from the HTTP-date of the
/// same instant (`Tue, 10 Oct 2000 13:55:36 GMT`).
fn clf_time(t: SystemTime) -> String {
    let date = httpdate::fmt_http_date(t);
    let parts: Vec<&str> = date.split(' ').collect();
    match parts.as_slice() {
        [_, day, month, year, time, _] => format!("{day}/{month}/{year}:{time} +0000"),
        _ => date,
    }
}

/// A request target or Cache-Status as a CLF quoted string: quotes,
/// backslashes and control bytes escaped, so a hostile target cannot forge
/// a line or a field.
fn quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

fn format_line(e: &Entry<'_>) -> String {
    let bytes = e.bytes.map_or_else(|| "-".to_string(), |b| b.to_string());
    format!(
        "{} - - [{}] \"{} {} {:?}\" {} {} \"{}\" {:.6}\n",
        e.client,
        clf_time(e.time),
        quoted(e.method),
        quoted(e.target),
        e.version,
        e.status,
        bytes,
        quoted(e.cache_status),
        e.elapsed.as_secs_f64()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry<'a>(target: &'a str, status: &'a str) -> Entry<'a> {
        Entry {
            client: "127.0.0.1".parse().unwrap(),
            time: SystemTime::UNIX_EPOCH + Duration::from_secs(971_186_136),
            method: "GET",
            target,
            version: http::Version::HTTP_11,
            status: 200,
            bytes: Some(74),
            cache_status: status,
            elapsed: Duration::from_micros(143),
        }
    }

    #[test]
    fn a_line_is_common_log_format_with_cache_status_and_seconds() {
        assert_eq!(
            format_line(&entry("/about", "fresco; hit; ttl=297")),
            "127.0.0.1 - - [10/Oct/2000:13:55:36 +0000] \"GET /about HTTP/1.1\" 200 74 \"fresco; hit; ttl=297\" 0.000143\n"
        );
    }

    #[test]
    fn a_hostile_target_cannot_break_the_line_or_its_fields() {
        let line = format_line(&entry("/a\" 500 0 \"x\n127.0.0.1 forged", "fresco; fwd=uri-miss"));
        assert_eq!(line.matches('\n').count(), 1, "{line}");
        assert!(line.contains(r#""GET /a\" 500 0 \"x\x0a127.0.0.1 forged HTTP/1.1" 200"#), "{line}");
    }
}
