//! Node configuration: a TOML file and command-line flags with the same
//! names (flags win), every option with a default, validated up front so a
//! bad value stops the node with a message naming the key, the value and
//! what is accepted.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::Uri;
use serde::Deserialize;

use crate::access::{Scope, Token, parse_network};
use crate::classes::{Classes, ContentClass};
use crate::proxy::upstream::UpstreamSettings;

/// Options as written in the file or on the command line, before defaults
/// and validation. Every field is optional so the two sources can be merged.
#[derive(Debug, Default, Clone, Deserialize, clap::Args)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct RawConfig {
    /// Data listener address (the proxy) [default: 127.0.0.1:8081]
    #[arg(long)]
    pub listen: Option<String>,
    /// Origin base URL, e.g. http://127.0.0.1:8080
    #[arg(long)]
    pub origin: Option<String>,
    /// Admin listener address [default: 127.0.0.1:9091]
    #[arg(long)]
    pub admin: Option<String>,
    /// Cache memory budget, e.g. 512MiB [default: 256MiB]
    #[arg(long)]
    pub memory: Option<String>,
    /// Largest response body that is stored; larger ones stream through [default: 16MiB]
    #[arg(long)]
    pub max_object_size: Option<String>,
    /// Responses larger than this are fetched and stored in slices of this size (0: off) [default: 1MiB]
    #[arg(long)]
    pub slice_size: Option<String>,
    /// Largest request head accepted; larger gets 431 [default: 64KiB]
    #[arg(long)]
    pub max_header_size: Option<String>,
    /// Upstream connect timeout [default: 2s]
    #[arg(long)]
    pub connect_timeout: Option<String>,
    /// Time to wait for the upstream response head [default: 30s]
    #[arg(long)]
    pub first_byte_timeout: Option<String>,
    /// Time limit for a whole upstream response, body included [default: 300s]
    #[arg(long)]
    pub total_timeout: Option<String>,
    /// PEM certificate chain; with --tls-key the data listener speaks TLS
    #[arg(long)]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert
    #[arg(long)]
    pub tls_key: Option<PathBuf>,
    /// Store responses that carry Set-Cookie (off: they pass uncached) [default: false]
    #[arg(long)]
    pub store_set_cookie: Option<bool>,
    /// Sort query parameters in the cache key [default: false]
    #[arg(long)]
    pub sort_query: Option<bool>,
    /// Keep Surrogate-Key / Cache-Tag / Cache-Groups on client responses [default: false]
    #[arg(long)]
    pub expose_tag_headers: Option<bool>,
    /// Remove CDN-Cache-Control from client responses (it is forwarded for downstream CDNs, RFC 9213 §2.1) [default: false]
    #[arg(long)]
    pub strip_cdn_cache_control: Option<bool>,
    /// Parent node to fetch through (origin shield); repeat for several, chosen per object by rendezvous hashing
    #[arg(long = "parent")]
    pub parent: Option<Vec<String>>,
    /// How long a request waits on another's fetch of the same object before fetching itself [default: 10s]
    #[arg(long)]
    pub lock_timeout: Option<String>,
    /// How long an object found uncacheable skips request coalescing (hit-for-pass) [default: 10s]
    #[arg(long)]
    pub uncacheable_ttl: Option<String>,
    /// NATS server(s) for the cluster's invalidation log, e.g. nats://127.0.0.1:4222 (comma-separated); without it the embedded log is used
    #[arg(long)]
    pub bus: Option<String>,
    /// This node's name in the cluster [default: node_name, or HOSTNAME-PORT with --bus]
    #[arg(long)]
    pub node_id: Option<String>,
    /// JetStream replicas of the invalidation stream and node bucket [default: 1]
    #[arg(long)]
    pub bus_replicas: Option<usize>,
    /// How long the invalidation stream keeps entries [default: 24h]
    #[arg(long)]
    pub bus_retention: Option<String>,
    /// A node that has not heartbeaten for this long is shown as down [default: 5s]
    #[arg(long)]
    pub down_after: Option<String>,
    /// Out of reach of the bus's log this long, a node stops answering from its store and reports not ready [default: 3s]
    #[arg(long)]
    pub max_log_silence: Option<String>,
    /// Directory for the invalidation log and the local admin token [default: fresco-data]
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// How often the sweeper frees purged objects and compacts records [default: 10s]
    #[arg(long)]
    pub sweep_interval: Option<String>,
    /// Client networks allowed to send PURGE (file only: a list) [default: loopback]
    #[arg(skip)]
    pub purge_allow: Option<Vec<String>>,
    /// API tokens (file only: `[[token]]` tables)
    #[arg(skip)]
    #[serde(rename = "token")]
    pub tokens: Option<Vec<RawToken>>,
    /// Other cache layers invalidations are forwarded to (file only: `[[layer]]` tables)
    #[arg(skip)]
    #[serde(rename = "layer")]
    pub layers: Option<Vec<RawLayer>>,
    /// Name of this cache in Cache-Status and Via [default: fresco]
    #[arg(long)]
    pub node_name: Option<String>,
    /// Query parameters that do not count in the cache key (file only: a list)
    #[arg(skip)]
    pub ignore_query_params: Option<Vec<String>>,
    /// Request headers that count in the cache key (file only: a list)
    #[arg(skip)]
    pub key_headers: Option<Vec<String>>,
    /// Cookie names whose values count in the cache key (file only: a list)
    #[arg(skip)]
    pub key_cookies: Option<Vec<String>>,
    /// Content classes (file only: `[[class]]` tables)
    #[arg(skip)]
    #[serde(rename = "class")]
    pub classes: Option<Vec<RawClass>>,
    // Limits against hostile clients and overloaded upstreams.
    /// Time from accept (or from the first byte of a request) to a complete request head [default: 10s]
    #[arg(long)]
    pub client_header_timeout: Option<String>,
    /// How long an idle client connection is kept open between requests [default: 60s]
    #[arg(long)]
    pub client_idle_timeout: Option<String>,
    /// Time limit for a client's TLS handshake [default: 10s]
    #[arg(long)]
    pub tls_handshake_timeout: Option<String>,
    /// Open client connections; past it the longest-idle one is closed, or the new one if none is idle [default: 10000]
    #[arg(long)]
    pub max_connections: Option<usize>,
    /// Header fields in a request head; more gets 431 [default: 100]
    #[arg(long)]
    pub max_headers: Option<usize>,
    /// Longest request target; longer gets 414 [default: 8KiB]
    #[arg(long)]
    pub max_url_length: Option<String>,
    /// Largest request body forwarded; larger gets 413 [default: 16MiB]
    #[arg(long)]
    pub max_request_body: Option<String>,
    /// How long an idle upstream connection is kept; keep it below the origin's keep-alive timeout [default: 4s]
    #[arg(long)]
    pub upstream_idle_timeout: Option<String>,
    /// Connections in use per upstream (origin or parent) [default: 256]
    #[arg(long)]
    pub upstream_max_connections: Option<usize>,
    /// Requests waiting for an upstream connection, per upstream; past it 503 [default: 1024]
    #[arg(long)]
    pub upstream_queue: Option<usize>,
    /// Host names clients reach this node by; URL and prefix invalidations must name one (repeat, or a list in the file) [default: any]
    #[arg(long = "host")]
    pub hosts: Option<Vec<String>>,
    /// Log level or tracing directives, e.g. warn or fresco=debug,info; RUST_LOG wins when set [default: info]
    #[arg(long)]
    pub log_level: Option<String>,
    /// Log line format: text or json [default: text]
    #[arg(long)]
    pub log_format: Option<String>,
    /// Access log: "stdout" or a file path; one line per response [default: off]
    #[arg(long)]
    pub access_log: Option<String>,
}

/// One `[[token]]` table.
#[derive(Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawToken {
    pub name: String,
    /// The secret itself, or
    pub secret: Option<String>,
    /// the name of an environment variable holding it, or
    pub secret_env: Option<String>,
    /// its SHA-256 in hex (`fresco token` prints one), so the file holds no secret.
    pub secret_sha256: Option<String>,
    pub scopes: Vec<String>,
    /// Invalidations per second [default: 50]
    pub rate: Option<f64>,
    /// Burst size [default: 200]
    pub burst: Option<f64>,
}

impl std::fmt::Debug for RawToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawToken").field("name", &self.name).field("scopes", &self.scopes).finish_non_exhaustive()
    }
}

/// One `[[layer]]` table.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLayer {
    pub name: String,
    /// `varnish` or `redis`.
    #[serde(rename = "type")]
    pub kind: String,
    pub url: String,
    /// What it is told about, as token scopes [default: ["all"]]
    pub scopes: Option<Vec<String>>,
    /// Entries it may fall behind before it is owed a gap [default: 10000]
    pub backlog: Option<usize>,
    /// Redis: the prefix of the application's tag and URL sets [default: "fresco:"]
    pub key_prefix: Option<String>,
}

/// One `[[class]]` table.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClass {
    pub name: String,
    pub path_prefix: Option<String>,
    pub content_type: Option<String>,
    pub stale_while_revalidate: Option<String>,
    pub stale_if_error: Option<String>,
    pub forbid_stale: Option<bool>,
    pub store_set_cookie: Option<bool>,
    /// The most staleness this class's users may see, e.g. "60s".
    pub freshness_slo: Option<String>,
    /// Enforce `freshness_slo` as a cap on serving stale [default: true]; false only measures it.
    pub freshness_slo_cap: Option<bool>,
}

impl RawConfig {
    /// `self` with every unset option taken from `base`.
    pub fn or(self, base: RawConfig) -> RawConfig {
        RawConfig {
            listen: self.listen.or(base.listen),
            origin: self.origin.or(base.origin),
            admin: self.admin.or(base.admin),
            memory: self.memory.or(base.memory),
            max_object_size: self.max_object_size.or(base.max_object_size),
            slice_size: self.slice_size.or(base.slice_size),
            max_header_size: self.max_header_size.or(base.max_header_size),
            connect_timeout: self.connect_timeout.or(base.connect_timeout),
            first_byte_timeout: self.first_byte_timeout.or(base.first_byte_timeout),
            total_timeout: self.total_timeout.or(base.total_timeout),
            tls_cert: self.tls_cert.or(base.tls_cert),
            tls_key: self.tls_key.or(base.tls_key),
            store_set_cookie: self.store_set_cookie.or(base.store_set_cookie),
            sort_query: self.sort_query.or(base.sort_query),
            expose_tag_headers: self.expose_tag_headers.or(base.expose_tag_headers),
            strip_cdn_cache_control: self.strip_cdn_cache_control.or(base.strip_cdn_cache_control),
            node_name: self.node_name.or(base.node_name),
            ignore_query_params: self.ignore_query_params.or(base.ignore_query_params),
            key_headers: self.key_headers.or(base.key_headers),
            key_cookies: self.key_cookies.or(base.key_cookies),
            parent: self.parent.or(base.parent),
            lock_timeout: self.lock_timeout.or(base.lock_timeout),
            uncacheable_ttl: self.uncacheable_ttl.or(base.uncacheable_ttl),
            classes: self.classes.or(base.classes),
            data_dir: self.data_dir.or(base.data_dir),
            sweep_interval: self.sweep_interval.or(base.sweep_interval),
            purge_allow: self.purge_allow.or(base.purge_allow),
            tokens: self.tokens.or(base.tokens),
            layers: self.layers.or(base.layers),
            bus: self.bus.or(base.bus),
            node_id: self.node_id.or(base.node_id),
            bus_replicas: self.bus_replicas.or(base.bus_replicas),
            bus_retention: self.bus_retention.or(base.bus_retention),
            down_after: self.down_after.or(base.down_after),
            max_log_silence: self.max_log_silence.or(base.max_log_silence),
            client_header_timeout: self.client_header_timeout.or(base.client_header_timeout),
            client_idle_timeout: self.client_idle_timeout.or(base.client_idle_timeout),
            tls_handshake_timeout: self.tls_handshake_timeout.or(base.tls_handshake_timeout),
            max_connections: self.max_connections.or(base.max_connections),
            max_headers: self.max_headers.or(base.max_headers),
            max_url_length: self.max_url_length.or(base.max_url_length),
            max_request_body: self.max_request_body.or(base.max_request_body),
            upstream_idle_timeout: self.upstream_idle_timeout.or(base.upstream_idle_timeout),
            upstream_max_connections: self.upstream_max_connections.or(base.upstream_max_connections),
            upstream_queue: self.upstream_queue.or(base.upstream_queue),
            hosts: self.hosts.or(base.hosts),
            log_level: self.log_level.or(base.log_level),
            log_format: self.log_format.or(base.log_format),
            access_log: self.access_log.or(base.access_log),
        }
    }

    /// Reads a TOML file.
    pub fn from_file(path: &std::path::Path) -> Result<RawConfig, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read config file {}: {e}", path.display())))?;
        toml::from_str(&text).map_err(|e| ConfigError(format!("config file {}: {e}", path.display())))
    }
}

/// A configuration problem, worded for the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

fn invalid(key: &str, value: &str, accepted: &str) -> ConfigError {
    ConfigError(format!("invalid value for `{key}`: {value:?}; accepted: {accepted}"))
}

/// The validated configuration of a node.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub origin: Uri,
    pub admin: SocketAddr,
    pub memory: u64,
    pub max_object_size: u64,
    /// Objects above this are stored in slices of this size; 0 turns slicing off.
    pub slice_size: u64,
    pub max_header_size: usize,
    pub connect_timeout: Duration,
    pub first_byte_timeout: Duration,
    pub total_timeout: Duration,
    pub tls: Option<(PathBuf, PathBuf)>,
    pub store_set_cookie: bool,
    pub sort_query: bool,
    pub expose_tag_headers: bool,
    pub strip_cdn_cache_control: bool,
    pub node_name: String,
    pub ignore_query_params: Vec<String>,
    pub key_headers: Vec<http::HeaderName>,
    pub key_cookies: Vec<String>,
    pub parents: Vec<Uri>,
    pub lock_timeout: Duration,
    pub uncacheable_ttl: Duration,
    pub classes: Classes,
    pub data_dir: PathBuf,
    pub sweep_interval: Duration,
    pub purge_allow: Vec<(std::net::IpAddr, u8)>,
    /// Configured tokens; empty means a local admin token is generated.
    pub tokens: Vec<Token>,
    pub layers: Vec<crate::layers::LayerConfig>,
    pub bus: Option<String>,
    pub node_id: String,
    pub bus_replicas: usize,
    pub bus_retention: Duration,
    pub down_after: Duration,
    pub max_log_silence: Duration,
    pub limits: ClientLimits,
    pub upstream: UpstreamSettings,
    /// Host names (lower case, with a port if not the scheme's default)
    /// clients use; empty: any.
    pub hosts: Vec<String>,
    /// Where the access log goes; None: off.
    pub access_log: Option<crate::access_log::Target>,
}

/// What one client connection may take from the node.
#[derive(Debug, Clone)]
pub struct ClientLimits {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub tls_handshake_timeout: Duration,
    pub max_connections: usize,
    pub max_headers: usize,
    pub max_header_size: usize,
    pub max_url_length: usize,
    pub max_request_body: u64,
}

impl Config {
    pub fn from_raw(raw: RawConfig) -> Result<Config, ConfigError> {
        let addr = |key: &str, v: Option<String>, default: &str| -> Result<SocketAddr, ConfigError> {
            let v = v.unwrap_or_else(|| default.to_string());
            v.parse().map_err(|_| invalid(key, &v, "an IP address and port, e.g. 127.0.0.1:8081"))
        };
        let size = |key: &str, v: Option<String>, default: &str| -> Result<u64, ConfigError> {
            let v = v.unwrap_or_else(|| default.to_string());
            parse_size(&v).ok_or_else(|| invalid(key, &v, "a size such as 512MiB, 64KiB, 1GB or 1048576"))
        };
        let duration = |key: &str, v: Option<String>, default: &str| -> Result<Duration, ConfigError> {
            let v = v.unwrap_or_else(|| default.to_string());
            parse_duration(&v)
                .filter(|d| !d.is_zero())
                .ok_or_else(|| invalid(key, &v, "a positive duration such as 500ms, 2s, 5m or 1h"))
        };
        let http_url = |key: &str, text: &str| -> Result<Uri, ConfigError> {
            text.parse()
                .ok()
                .filter(|u: &Uri| u.scheme_str() == Some("http") && u.authority().is_some())
                .ok_or_else(|| invalid(key, text, "an http:// URL with a host, e.g. http://127.0.0.1:8080"))
        };
        let parents =
            raw.parent.unwrap_or_default().iter().map(|p| http_url("parent", p)).collect::<Result<Vec<_>, _>>()?;
        let classes = Classes(
            raw.classes
                .unwrap_or_default()
                .into_iter()
                .map(|c| {
                    let window = |key: &str, v: Option<String>| -> Result<Option<Duration>, ConfigError> {
                        v.map(|v| {
                            parse_duration(&v).ok_or_else(|| {
                                invalid(&format!("class.{key}"), &v, "a duration such as 30s, 5m, 24h or 1d")
                            })
                        })
                        .transpose()
                    };
                    if c.name.is_empty() {
                        return Err(ConfigError("a [[class]] has an empty `name`".into()));
                    }
                    let slo = window("freshness_slo", c.freshness_slo)?;
                    if c.freshness_slo_cap.is_some() && slo.is_none() {
                        return Err(ConfigError(format!(
                            "class {:?}: `freshness_slo_cap` without `freshness_slo`",
                            c.name
                        )));
                    }
                    Ok(ContentClass {
                        stale: crate::classes::stale(
                            window("stale_while_revalidate", c.stale_while_revalidate)?,
                            window("stale_if_error", c.stale_if_error)?,
                            c.forbid_stale.unwrap_or(false),
                            slo.filter(|_| c.freshness_slo_cap.unwrap_or(true)),
                        ),
                        freshness_slo: slo,
                        store_set_cookie: c.store_set_cookie,
                        name: c.name,
                        path_prefix: c.path_prefix,
                        content_type: c.content_type,
                    })
                })
                .collect::<Result<_, _>>()?,
        );
        let origin_text = raw.origin.ok_or_else(|| {
            ConfigError(
                "missing `origin`: give --origin URL or `origin = \"http://host:port\"` in the config file".into(),
            )
        })?;
        let origin = http_url("origin", &origin_text)?;
        let purge_allow = raw
            .purge_allow
            .unwrap_or_else(|| vec!["127.0.0.0/8".into(), "::1/128".into()])
            .iter()
            .map(|n| {
                parse_network(n).ok_or_else(|| invalid("purge_allow", n, "IP addresses or networks such as 10.0.0.0/8"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let tokens = raw.tokens.unwrap_or_default().into_iter().map(token).collect::<Result<Vec<_>, _>>()?;
        let layers = raw.layers.unwrap_or_default().into_iter().map(layer).collect::<Result<Vec<_>, _>>()?;
        if let Some(twice) = layers
            .iter()
            .enumerate()
            .find_map(|(i, l)| layers[..i].iter().any(|other| other.name == l.name).then_some(&l.name))
        {
            return Err(ConfigError(format!("two [[layer]] tables are named `{twice}`; names must differ")));
        }
        let tls = match (raw.tls_cert, raw.tls_key) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            (Some(_), None) => {
                return Err(ConfigError("`tls_cert` is set but `tls_key` is not; give both or neither".into()));
            }
            (None, Some(_)) => {
                return Err(ConfigError("`tls_key` is set but `tls_cert` is not; give both or neither".into()));
            }
        };
        let memory = size("memory", raw.memory, "256MiB")?;
        if memory < 1 << 20 {
            return Err(invalid("memory", &memory.to_string(), "at least 1MiB"));
        }
        let max_header_size = size("max_header_size", raw.max_header_size, "64KiB")?;
        if !(8192..=1 << 24).contains(&max_header_size) {
            return Err(invalid("max_header_size", &max_header_size.to_string(), "between 8KiB and 16MiB"));
        }
        let key_headers = raw
            .key_headers
            .unwrap_or_default()
            .into_iter()
            .map(|h| {
                http::HeaderName::from_bytes(h.as_bytes()).map_err(|_| invalid("key_headers", &h, "header field names"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let node_name = raw.node_name.unwrap_or_else(|| "fresco".to_string());
        if node_name.is_empty() || !node_name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
            return Err(invalid("node_name", &node_name, "letters, digits, '-', '_' and '.'"));
        }
        let listen = addr("listen", raw.listen, "127.0.0.1:8081")?;
        let node_id = match raw.node_id {
            Some(id) if !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) => id,
            Some(id) => return Err(invalid("node_id", &id, "letters, digits, '-', '_' and '.'")),
            None if raw.bus.is_some() => default_node_id(listen.port()),
            None => node_name.clone(),
        };
        let limits = ClientLimits {
            header_timeout: duration("client_header_timeout", raw.client_header_timeout, "10s")?,
            idle_timeout: duration("client_idle_timeout", raw.client_idle_timeout, "60s")?,
            tls_handshake_timeout: duration("tls_handshake_timeout", raw.tls_handshake_timeout, "10s")?,
            max_connections: match raw.max_connections.unwrap_or(10_000) {
                n @ 1..=1_000_000 => n,
                n => return Err(invalid("max_connections", &n.to_string(), "1 to 1000000")),
            },
            max_headers: match raw.max_headers.unwrap_or(100) {
                n @ 8..=10_000 => n,
                n => return Err(invalid("max_headers", &n.to_string(), "8 to 10000")),
            },
            max_header_size: max_header_size as usize,
            max_url_length: match size("max_url_length", raw.max_url_length, "8KiB")? {
                n @ 256..=65_535 => n as usize,
                n => return Err(invalid("max_url_length", &n.to_string(), "between 256 and 65535 bytes")),
            },
            max_request_body: size("max_request_body", raw.max_request_body, "16MiB")?,
        };
        let first_byte_timeout = duration("first_byte_timeout", raw.first_byte_timeout, "30s")?;
        let upstream = UpstreamSettings {
            connect_timeout: duration("connect_timeout", raw.connect_timeout, "2s")?,
            first_byte_timeout,
            idle_timeout: duration("upstream_idle_timeout", raw.upstream_idle_timeout, "4s")?,
            max_connections: match raw.upstream_max_connections.unwrap_or(256) {
                n @ 1..=100_000 => n,
                n => return Err(invalid("upstream_max_connections", &n.to_string(), "1 to 100000")),
            },
            queue: match raw.upstream_queue.unwrap_or(1024) {
                n @ 0..=1_000_000 => n,
                n => return Err(invalid("upstream_queue", &n.to_string(), "0 to 1000000")),
            },
        };
        let hosts = raw
            .hosts
            .unwrap_or_default()
            .iter()
            .map(|h| {
                h.parse::<http::uri::Authority>()
                    .ok()
                    .filter(|_| !h.contains('@'))
                    .map(|a| a.as_str().to_ascii_lowercase())
                    .ok_or_else(|| invalid("hosts", h, "host names such as shop.example or shop.example:8443"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(level) = &raw.log_level {
            crate::logging::filter(level).map_err(ConfigError)?;
        }
        // The log is set up before the configuration is read (`cli::log_settings`);
        // a bad value still stops the node here, with the usual message.
        if let Some(f) = raw.log_format.as_deref().filter(|f| crate::logging::LogFormat::parse(f).is_none()) {
            return Err(invalid("log_format", f, "text or json"));
        }
        let access_log = match raw.access_log.as_deref() {
            None => None,
            Some("") => return Err(invalid("access_log", "", "\"stdout\" or a file path")),
            Some("stdout") => Some(crate::access_log::Target::Stdout),
            Some(path) => Some(crate::access_log::Target::File(PathBuf::from(path))),
        };
        Ok(Config {
            access_log,
            limits,
            hosts,
            listen,
            origin,
            admin: addr("admin", raw.admin, "127.0.0.1:9091")?,
            memory,
            max_object_size: size("max_object_size", raw.max_object_size, "16MiB")?,
            slice_size: size("slice_size", raw.slice_size, "1MiB")?,
            max_header_size: max_header_size as usize,
            connect_timeout: upstream.connect_timeout,
            first_byte_timeout,
            total_timeout: duration("total_timeout", raw.total_timeout, "300s")?,
            tls,
            store_set_cookie: raw.store_set_cookie.unwrap_or(false),
            sort_query: raw.sort_query.unwrap_or(false),
            expose_tag_headers: raw.expose_tag_headers.unwrap_or(false),
            strip_cdn_cache_control: raw.strip_cdn_cache_control.unwrap_or(false),
            node_name,
            ignore_query_params: raw.ignore_query_params.unwrap_or_default(),
            key_headers,
            key_cookies: raw.key_cookies.unwrap_or_default(),
            parents,
            lock_timeout: duration("lock_timeout", raw.lock_timeout, "30s")?,
            uncacheable_ttl: duration("uncacheable_ttl", raw.uncacheable_ttl, "10s")?,
            classes,
            data_dir: raw.data_dir.unwrap_or_else(|| PathBuf::from("fresco-data")),
            sweep_interval: duration("sweep_interval", raw.sweep_interval, "10s")?,
            purge_allow,
            tokens,
            layers,
            node_id,
            bus: match raw.bus {
                Some(url) if url.split(',').all(|u| u.trim().starts_with("nats://")) => Some(url),
                Some(url) => return Err(invalid("bus", &url, "nats://HOST:PORT, comma-separated for several")),
                None => None,
            },
            bus_replicas: match raw.bus_replicas.unwrap_or(1) {
                r @ 1..=5 => r,
                r => return Err(invalid("bus_replicas", &r.to_string(), "1 to 5")),
            },
            bus_retention: duration("bus_retention", raw.bus_retention, "24h")?,
            down_after: duration("down_after", raw.down_after, "5s")?,
            max_log_silence: duration("max_log_silence", raw.max_log_silence, "3s")?,
            upstream,
        })
    }
}

/// A cluster-unique default: the host's name and the data port.
fn default_node_id(port: u16) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_else(|_| "fresco".into());
    let host: String =
        host.trim().chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '-' }).collect();
    format!("{host}-{port}")
}

/// Parses the `scopes` list at `key` of `what` (a token, a layer): at
/// least one, each `all`, `tag:PREFIX` or `host:NAME`.
fn scopes(key: &str, list: &[String], what: &str) -> Result<Vec<Scope>, ConfigError> {
    let scopes = list
        .iter()
        .map(|s| Scope::parse(s).ok_or_else(|| invalid(key, s, "`all`, `tag:PREFIX` or `host:NAME`")))
        .collect::<Result<Vec<_>, _>>()?;
    if scopes.is_empty() {
        return Err(ConfigError(format!("{key}: {what} needs at least one scope")));
    }
    Ok(scopes)
}

/// Validates one `[[layer]]`.
fn layer(l: RawLayer) -> Result<crate::layers::LayerConfig, ConfigError> {
    use crate::layers::Kind;
    let key = |k: &str| format!("layer.{k} (layer `{}`)", l.name);
    let safe_name = !l.name.is_empty()
        && l.name.len() <= 64
        && l.name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !safe_name {
        return Err(ConfigError(format!(
            "layer name {:?}: 1 to 64 letters, digits, `-` or `_` (it names a file in the data directory)",
            l.name
        )));
    }
    let kind = match l.kind.as_str() {
        "varnish" => Kind::Varnish,
        "redis" => Kind::Redis,
        other => return Err(invalid(&key("type"), other, "`varnish` or `redis`")),
    };
    let scopes = scopes(&key("scopes"), &l.scopes.unwrap_or_else(|| vec!["all".into()]), "a layer")?;
    let backlog = l.backlog.unwrap_or(10_000);
    if backlog == 0 {
        return Err(ConfigError(format!("{}: must be at least 1", key("backlog"))));
    }
    Ok(crate::layers::LayerConfig {
        name: l.name,
        kind,
        url: l.url,
        scopes,
        backlog,
        key_prefix: l.key_prefix.unwrap_or_else(|| "fresco:".into()),
    })
}

/// Validates one `[[token]]`.
fn token(t: RawToken) -> Result<Token, ConfigError> {
    let key = |k: &str| format!("token.{k} (token `{}`)", t.name);
    if t.name.is_empty() {
        return Err(ConfigError("a [[token]] has an empty `name`".into()));
    }
    let plain = |secret: String, from: &str| -> Result<[u8; 32], ConfigError> {
        match crate::access::weak_secret(&secret) {
            Some(why) => Err(ConfigError(format!("{}: the secret {why}; generate one with `fresco token`", key(from)))),
            None => Ok(crate::access::digest(&secret)),
        }
    };
    let digest = match (&t.secret, &t.secret_env, &t.secret_sha256) {
        (Some(s), None, None) => plain(s.clone(), "secret")?,
        (None, Some(var), None) => plain(
            std::env::var(var)
                .map_err(|_| ConfigError(format!("{}: environment variable {var} is not set", key("secret_env"))))?,
            "secret_env",
        )?,
        (None, None, Some(hex)) => parse_sha256(hex).ok_or_else(|| {
            ConfigError(format!(
                "{}: expected 64 hexadecimal digits (`fresco token` prints them)",
                key("secret_sha256")
            ))
        })?,
        _ => {
            return Err(ConfigError(format!(
                "{}: give exactly one of `secret`, `secret_env` and `secret_sha256`",
                key("secret")
            )));
        }
    };
    let scopes = scopes(&key("scopes"), &t.scopes, "a token")?;
    let rate = t.rate.unwrap_or(50.0);
    let burst = t.burst.unwrap_or(200.0);
    if !(rate > 0.0 && rate.is_finite() && burst >= 1.0 && burst.is_finite()) {
        return Err(ConfigError(format!("{}: rate must be > 0 and burst >= 1", key("rate"))));
    }
    Ok(Token { name: t.name, digest, scopes, rate, burst })
}

/// 64 hex digits as 32 bytes.
fn parse_sha256(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim();
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// Parses `512MiB`, `64KiB`, `1GB`, `100kb`, `1048576`.
pub fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits.parse().ok()?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// Parses `500ms`, `2s`, `5m`, `1h`, `1d`; a bare number is seconds.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits.parse().ok()?;
    match unit.trim() {
        "ms" => Some(Duration::from_millis(n)),
        "" | "s" => Some(Duration::from_secs(n)),
        "m" => n.checked_mul(60).map(Duration::from_secs),
        "h" => n.checked_mul(3600).map(Duration::from_secs),
        "d" => n.checked_mul(86400).map(Duration::from_secs),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(origin: &str) -> RawConfig {
        RawConfig { origin: Some(origin.into()), ..Default::default() }
    }

    #[test]
    fn defaults_apply_with_only_an_origin() {
        let c = Config::from_raw(raw("http://127.0.0.1:8080")).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8081");
        assert_eq!(c.admin.to_string(), "127.0.0.1:9091");
        assert_eq!(c.memory, 256 << 20);
    }

    #[test]
    fn bad_values_name_key_value_and_what_is_accepted() {
        let err = Config::from_raw(RawConfig { memory: Some("lots".into()), ..raw("http://o:1") }).unwrap_err();
        assert!(err.0.contains("`memory`") && err.0.contains("\"lots\"") && err.0.contains("512MiB"), "{err}");
        let err = Config::from_raw(raw("ftp://x")).unwrap_err();
        assert!(err.0.contains("`origin`"), "{err}");
        let err =
            Config::from_raw(RawConfig { first_byte_timeout: Some("0s".into()), ..raw("http://o:1") }).unwrap_err();
        assert!(err.0.contains("first_byte_timeout"), "{err}");
    }

    #[test]
    fn flags_override_file() {
        let file = RawConfig { listen: Some("127.0.0.1:1".into()), memory: Some("2MiB".into()), ..raw("http://o:1") };
        let flags = RawConfig { listen: Some("127.0.0.1:2".into()), ..Default::default() };
        let c = Config::from_raw(flags.or(file)).unwrap();
        assert_eq!(c.listen.port(), 2);
        assert_eq!(c.memory, 2 << 20);
    }

    #[test]
    fn unknown_file_keys_are_refused_by_name() {
        let err = toml::from_str::<RawConfig>("origin = \"http://o:1\"\nmemroy = \"1GiB\"").unwrap_err();
        assert!(err.to_string().contains("memroy"), "{err}");
    }

    #[test]
    fn content_classes_and_parents_from_the_file() {
        let text = r#"
            origin = "http://o:1"
            parent = ["http://shield-a:8081", "http://shield-b:8081"]
            [[class]]
            name = "html"
            content_type = "text/html"
            stale_while_revalidate = "30s"
            stale_if_error = "1d"
            [[class]]
            name = "sw"
            path_prefix = "/sw.js"
            forbid_stale = true
        "#;
        let c = Config::from_raw(toml::from_str(text).unwrap()).unwrap();
        assert_eq!(c.parents.len(), 2);
        assert_eq!(c.classes.0[0].stale.stale_if_error, Some(Duration::from_secs(86400)));
        assert!(c.classes.0[1].stale.forbid);
        let bad = "origin = \"http://o:1\"\n[[class]]\nname = \"x\"\nstale_if_error = \"forever\"\n";
        let err = Config::from_raw(toml::from_str(bad).unwrap()).unwrap_err();
        assert!(err.0.contains("class.stale_if_error") && err.0.contains("forever"), "{err}");
    }

    #[test]
    fn limits_have_defaults_and_bad_ones_are_named() {
        let c = Config::from_raw(raw("http://o:1")).unwrap();
        assert_eq!(c.limits.header_timeout, Duration::from_secs(10));
        assert_eq!((c.limits.max_connections, c.limits.max_headers, c.limits.max_url_length), (10_000, 100, 8192));
        assert_eq!(
            (c.upstream.idle_timeout, c.upstream.max_connections, c.upstream.queue),
            (Duration::from_secs(4), 256, 1024)
        );
        let err = Config::from_raw(RawConfig { max_connections: Some(0), ..raw("http://o:1") }).unwrap_err();
        assert!(err.0.contains("`max_connections`"), "{err}");
        let err = Config::from_raw(RawConfig { max_url_length: Some("1MiB".into()), ..raw("http://o:1") }).unwrap_err();
        assert!(err.0.contains("`max_url_length`"), "{err}");
        let err = Config::from_raw(RawConfig { hosts: Some(vec!["a@b".into()]), ..raw("http://o:1") }).unwrap_err();
        assert!(err.0.contains("`hosts`") && err.0.contains("a@b"), "{err}");
        let c = Config::from_raw(RawConfig { hosts: Some(vec!["Shop.Example".into()]), ..raw("http://o:1") }).unwrap();
        assert_eq!(c.hosts, vec!["shop.example".to_string()]);
    }

    #[test]
    fn token_secrets_must_be_hard_to_guess_or_given_as_a_hash() {
        let cfg = |table: &str| {
            Config::from_raw(toml::from_str(&format!("origin = \"http://o:1\"\n[[token]]\n{table}")).unwrap())
        };
        let err = cfg("name = \"t\"\nsecret = \"aaaaaaaaaaaaaaaa\"\nscopes = [\"all\"]").unwrap_err();
        assert!(err.0.contains("token.secret") && err.0.contains("fresco token"), "{err}");
        let hash = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        let c = cfg(&format!("name = \"t\"\nsecret_sha256 = \"{hash}\"\nscopes = [\"all\"]")).unwrap();
        assert_eq!(c.tokens[0].digest, crate::access::digest("abc"));
        let err = cfg("name = \"t\"\nsecret_sha256 = \"abc\"\nscopes = [\"all\"]").unwrap_err();
        assert!(err.0.contains("64 hexadecimal"), "{err}");
        let err =
            cfg(&format!("name = \"t\"\nsecret = \"x\"\nsecret_sha256 = \"{hash}\"\nscopes = [\"all\"]")).unwrap_err();
        assert!(err.0.contains("exactly one"), "{err}");
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("512MiB"), Some(512 << 20));
        assert_eq!(parse_size("1GB"), Some(1_000_000_000));
        assert_eq!(parse_size("12 parsecs"), None);
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("soon"), None);
    }
}
