//! The PostgreSQL side of `fresco cdc`: the connection URL, the replication
//! session, and the start-up checks and setup (the server's settings, the
//! mapped tables and columns, their REPLICA IDENTITY, the publication and
//! the slot), each failure explained in terms of what to do about it.
//!
//! Everything runs on the one replication session (`replication=database`
//! accepts SQL before START_REPLICATION), so what is checked is what the
//! stream then opens on.

use pgwire_replication::{PgWireError, ReplicationClient, ReplicationConfig, TlsConfig};

use super::mapping::{Mapping, TableMapping, quote_ident, quote_literal};

/// Where to connect, from a `postgres://user:password@host:port/db?sslmode=..` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) user: String,
    password: String,
    pub(crate) database: String,
    sslmode: String,
    sslrootcert: Option<String>,
}

fn percent_decode(text: &str, what: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok());
            out.push(hex.ok_or_else(|| format!("--postgres: bad percent-escape in the {what}"))?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("--postgres: the {what} is not UTF-8"))
}

impl Target {
    pub(crate) fn parse(url: &str) -> Result<Target, String> {
        let usage = "give it as postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE[?sslmode=require]";
        let rest = url
            .strip_prefix("postgres://")
            .or_else(|| url.strip_prefix("postgresql://"))
            .ok_or_else(|| format!("--postgres {url:?} is not a PostgreSQL URL: {usage}"))?;
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (authority, database) = rest.split_once('/').unwrap_or((rest, ""));
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let (user, password) = match userinfo {
            Some(u) => match u.split_once(':') {
                Some((user, pw)) => (percent_decode(user, "user")?, percent_decode(pw, "password")?),
                None => (percent_decode(u, "user")?, String::new()),
            },
            None => ("postgres".to_string(), String::new()),
        };
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
                let port = p.parse::<u16>().map_err(|_| format!("--postgres {url:?}: port {p:?} is not a number"))?;
                (h.trim_start_matches('[').trim_end_matches(']').to_string(), port)
            }
            _ => (hostport.to_string(), 5432),
        };
        let mut target = Target {
            host: if host.is_empty() { "localhost".into() } else { host },
            port,
            user: user.clone(),
            password,
            database: if database.is_empty() { user } else { percent_decode(database, "database")? },
            sslmode: "prefer".into(),
            sslrootcert: None,
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_decode(v, k)?;
            match k {
                "sslmode" => target.sslmode = v,
                "sslrootcert" => target.sslrootcert = Some(v),
                // A Unix socket directory, as libpq's `host` parameter.
                "host" => target.host = v,
                "user" => target.user = v,
                "password" => target.password = v,
                "port" => {
                    target.port = v.parse().map_err(|_| format!("--postgres {url:?}: port {v:?} is not a number"))?
                }
                "dbname" => target.database = v,
                other => return Err(format!("--postgres {url:?}: unknown parameter {other:?}")),
            }
        }
        target.tls()?;
        Ok(target)
    }

    /// libpq's sslmode; `prefer` and `allow` connect without TLS here (the
    /// replication client does not fall back between the two).
    fn tls(&self) -> Result<TlsConfig, String> {
        let root = self.sslrootcert.clone().map(std::path::PathBuf::from);
        Ok(match self.sslmode.as_str() {
            "disable" | "allow" | "prefer" => TlsConfig::disabled(),
            "require" => TlsConfig::require(),
            "verify-ca" => TlsConfig::verify_ca(root),
            "verify-full" => TlsConfig::verify_full(root),
            other => {
                return Err(format!(
                    "sslmode {other:?} is not one of disable, allow, prefer, require, verify-ca, verify-full"
                ));
            }
        })
    }

    pub(crate) fn display(&self) -> String {
        format!("{}@{}:{}/{}", self.user, self.host, self.port, self.database)
    }

    pub(crate) fn replication_config(&self, slot: &str, publication: &str) -> Result<ReplicationConfig, String> {
        let mut cfg = ReplicationConfig::new(&self.host, &self.user, &self.password, &self.database, slot, publication)
            .with_port(self.port)
            .with_tls(self.tls()?)
            // The confirmed position reaches the server within a second
            // of the invalidation being accepted (metrics, WAL release).
            .with_status_interval(std::time::Duration::from_secs(1))
            .with_wakeup_interval(std::time::Duration::from_secs(1))
            .with_application_name("fresco cdc");
        cfg.buffer_events = 16_384;
        Ok(cfg)
    }

    /// A connection or server error, said in terms of what to do about it.
    pub(crate) fn explain(&self, e: &PgWireError) -> String {
        let at = self.display();
        let text = e.to_string();
        match e {
            PgWireError::Io(_) => format!(
                "cannot reach PostgreSQL at {}:{} ({text}): is it running, and listening there (listen_addresses, port)?",
                self.host, self.port
            ),
            PgWireError::Auth(_) => format!("PostgreSQL refused the login of {at}: {text}"),
            _ if text.contains("must be superuser or replication role")
                || text.contains("permission denied to start WAL sender")
                || text.contains("must have the REPLICATION attribute") =>
            {
                format!(
                    "{at}: user {} may not open a replication connection ({text}); as a superuser: ALTER ROLE {} REPLICATION",
                    self.user,
                    quote_ident(&self.user)
                )
            }
            _ if text.contains("pg_hba.conf") => format!(
                "{at}: {text}; add a pg_hba.conf line for database {} (logical replication connections match database lines)",
                self.database
            ),
            _ if text.contains("3D000") => format!("{at}: database {:?} does not exist ({text})", self.database),
            _ if text.contains("password authentication failed") || text.contains("28P01") => {
                format!("PostgreSQL refused the login of {at}: {text}")
            }
            _ => format!("PostgreSQL {at}: {text}"),
        }
    }
}

/// Runs one SQL statement on the gated session; text values.
async fn query(client: &mut ReplicationClient, target: &Target, sql: &str) -> Result<Vec<Vec<Option<String>>>, String> {
    let rows = client.simple_query(sql).await.map_err(|e| target.explain(&e))?;
    Ok(rows
        .into_iter()
        .map(|row| row.into_iter().map(|v| v.map(|b| String::from_utf8_lossy(&b).into_owned())).collect())
        .collect())
}

fn cell(rows: &[Vec<Option<String>>], row: usize, col: usize) -> Option<&str> {
    rows.get(row).and_then(|r| r.get(col)).and_then(|v| v.as_deref())
}

/// What the checks found and did, for the log and for `--setup`.
#[derive(Debug, Default)]
pub(crate) struct Report {
    pub(crate) done: Vec<String>,
    pub(crate) warnings: Vec<String>,
}

/// Why the relay cannot follow this database.
#[derive(Debug)]
pub(crate) enum Unfit {
    /// Server settings to change (then restart PostgreSQL).
    Settings(Vec<String>),
    /// Anything else: a wrong mapping, missing permissions, a foreign slot.
    Other(String),
}

impl std::fmt::Display for Unfit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unfit::Settings(missing) => write!(
                f,
                "PostgreSQL is not set up for logical replication: {}; set them in postgresql.conf (or ALTER SYSTEM SET ...) and restart PostgreSQL",
                missing.join("; ")
            ),
            Unfit::Other(m) => f.write_str(m),
        }
    }
}

/// Checks the server, the mapping against the catalog, and makes sure the
/// publication and the slot exist (creating them when absent).
pub(crate) async fn prepare(
    client: &mut ReplicationClient,
    target: &Target,
    mapping: &Mapping,
    slot: &str,
    publication: &str,
) -> Result<Report, Unfit> {
    let other = Unfit::Other;
    let mut report = Report::default();
    let mut missing = Vec::new();
    for (setting, ok) in [
        ("wal_level", (|v: &str| v == "logical") as fn(&str) -> bool),
        ("max_replication_slots", |v: &str| v.parse::<u32>().is_ok_and(|n| n > 0)),
        ("max_wal_senders", |v: &str| v.parse::<u32>().is_ok_and(|n| n > 0)),
    ] {
        let rows = query(client, target, &format!("SHOW {setting}")).await.map_err(other)?;
        let value = cell(&rows, 0, 0).unwrap_or_default().to_string();
        if !ok(&value) {
            let want = if setting == "wal_level" { "logical" } else { "at least 1" };
            missing.push(format!("{setting} is {value:?}, needs {want}"));
        }
    }
    if !missing.is_empty() {
        return Err(Unfit::Settings(missing));
    }
    for table in &mapping.tables {
        check_table(client, target, table, &mut report).await?;
    }
    ensure_publication(client, target, mapping, publication, &mut report).await?;
    ensure_slot(client, target, slot, &mut report).await?;
    Ok(report)
}

async fn check_table(
    client: &mut ReplicationClient,
    target: &Target,
    table: &TableMapping,
    report: &mut Report,
) -> Result<(), Unfit> {
    let name = table.display_name();
    let rows = query(
        client,
        target,
        &format!(
            "SELECT c.oid, c.relreplident FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = {} AND c.relname = {} AND c.relkind IN ('r', 'p')",
            quote_literal(&table.schema),
            quote_literal(&table.name)
        ),
    )
    .await
    .map_err(Unfit::Other)?;
    let (Some(oid), Some(identity)) = (cell(&rows, 0, 0), cell(&rows, 0, 1)) else {
        return Err(Unfit::Other(format!(
            "the mapping names table {name}, which database {} does not have",
            target.database
        )));
    };
    let (oid, identity) = (oid.to_string(), identity.to_string());
    let cols = query(
        client,
        target,
        &format!("SELECT attname FROM pg_attribute WHERE attrelid = {oid} AND attnum > 0 AND NOT attisdropped ORDER BY attnum"),
    )
    .await
    .map_err(Unfit::Other)?;
    let columns: Vec<String> = cols.iter().filter_map(|r| r.first().cloned().flatten()).collect();
    for t in &table.templates {
        for c in t.columns() {
            if !columns.iter().any(|have| have == c) {
                return Err(Unfit::Other(format!(
                    "the mapping's template {:?} for {name} names column {c:?}, which {name} does not have (its columns: {})",
                    t.source(),
                    columns.join(", ")
                )));
            }
        }
    }
    // Which columns an UPDATE's old row and a DELETE carry (REPLICA IDENTITY).
    let carried: Option<Vec<String>> = match identity.as_str() {
        "f" => None,
        "n" => Some(Vec::new()),
        kind => {
            let index = if kind == "i" { "i.indisreplident" } else { "i.indisprimary" };
            let rows = query(
                client,
                target,
                &format!(
                    "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid \
                     AND a.attnum = ANY(i.indkey) WHERE i.indrelid = {oid} AND {index}"
                ),
            )
            .await
            .map_err(Unfit::Other)?;
            Some(rows.iter().filter_map(|r| r.first().cloned().flatten()).collect())
        }
    };
    if let Some(carried) = carried {
        let uncovered: Vec<&str> = table.columns().into_iter().filter(|c| !carried.iter().any(|k| k == c)).collect();
        if !uncovered.is_empty() {
            report.warnings.push(format!(
                "{name} has REPLICA IDENTITY {}: an UPDATE or DELETE does not carry the old value of {} (a row moved out of a category does not invalidate the old category's tag, a deleted row only its key's tags); to invalidate the old values too: ALTER TABLE {} REPLICA IDENTITY FULL",
                match identity.as_str() {
                    "n" => "NOTHING",
                    "i" => "USING INDEX",
                    _ => "DEFAULT (the primary key)",
                },
                uncovered.join(", "),
                table.sql_name()
            ));
        }
    }
    Ok(())
}

async fn ensure_publication(
    client: &mut ReplicationClient,
    target: &Target,
    mapping: &Mapping,
    publication: &str,
    report: &mut Report,
) -> Result<(), Unfit> {
    let permission = |sql: &str, e: String| {
        Unfit::Other(format!(
            "cannot set up publication {publication:?}: {e}; run as the tables' owner (or a superuser): {sql}"
        ))
    };
    let rows = query(
        client,
        target,
        &format!(
            "SELECT puballtables, pubinsert, pubupdate, pubdelete, pubtruncate FROM pg_publication WHERE pubname = {}",
            quote_literal(publication)
        ),
    )
    .await
    .map_err(Unfit::Other)?;
    if rows.is_empty() {
        let list: Vec<String> = mapping.tables.iter().map(TableMapping::sql_name).collect();
        let sql = format!("CREATE PUBLICATION {} FOR TABLE {}", quote_ident(publication), list.join(", "));
        query(client, target, &sql).await.map_err(|e| permission(&sql, e))?;
        report.done.push(format!("created publication {publication:?} for {}", list.join(", ")));
        return Ok(());
    }
    let flag = |i: usize| cell(&rows, 0, i) == Some("t");
    for (i, op) in [(1, "insert"), (2, "update"), (3, "delete"), (4, "truncate")] {
        if !flag(i) {
            report.warnings.push(format!(
                "publication {publication:?} does not publish {op}: those changes invalidate nothing; ALTER PUBLICATION {} SET (publish = 'insert, update, delete, truncate')",
                quote_ident(publication)
            ));
        }
    }
    if flag(0) {
        report.done.push(format!("publication {publication:?} exists (all tables)"));
        return Ok(());
    }
    let rows = query(
        client,
        target,
        &format!(
            "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = {}",
            quote_literal(publication)
        ),
    )
    .await
    .map_err(Unfit::Other)?;
    let absent: Vec<String> = mapping
        .tables
        .iter()
        .filter(|t| {
            !rows.iter().any(|r| {
                r.first().and_then(|v| v.as_deref()) == Some(t.schema.as_str())
                    && r.get(1).and_then(|v| v.as_deref()) == Some(t.name.as_str())
            })
        })
        .map(TableMapping::sql_name)
        .collect();
    if absent.is_empty() {
        report.done.push(format!("publication {publication:?} exists and covers every mapped table"));
    } else {
        let sql = format!("ALTER PUBLICATION {} ADD TABLE {}", quote_ident(publication), absent.join(", "));
        query(client, target, &sql).await.map_err(|e| permission(&sql, e))?;
        report.done.push(format!("added {} to publication {publication:?}", absent.join(", ")));
    }
    Ok(())
}

async fn ensure_slot(
    client: &mut ReplicationClient,
    target: &Target,
    slot: &str,
    report: &mut Report,
) -> Result<(), Unfit> {
    let rows = query(
        client,
        target,
        &format!("SELECT plugin, database, active FROM pg_replication_slots WHERE slot_name = {}", quote_literal(slot)),
    )
    .await
    .map_err(Unfit::Other)?;
    if rows.is_empty() {
        // A replication command, not pg_create_logical_replication_slot():
        // it needs no transaction of its own.
        let sql = format!("CREATE_REPLICATION_SLOT {} LOGICAL pgoutput", quote_ident(slot));
        query(client, target, &sql).await.map_err(|e| Unfit::Other(format!("cannot create slot {slot:?}: {e}")))?;
        report.done.push(format!("created replication slot {slot:?} (pgoutput)"));
        return Ok(());
    }
    let plugin = cell(&rows, 0, 0).unwrap_or_default();
    let database = cell(&rows, 0, 1).unwrap_or_default();
    if plugin != "pgoutput" || database != target.database {
        return Err(Unfit::Other(format!(
            "replication slot {slot:?} exists but belongs to another consumer (plugin {plugin:?}, database {database:?}); choose another with --slot"
        )));
    }
    if cell(&rows, 0, 2) == Some("t") {
        return Err(Unfit::Other(format!(
            "replication slot {slot:?} is in use by another session (another `fresco cdc`?); one relay follows one slot"
        )));
    }
    report.done.push(format!("replication slot {slot:?} exists"));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_like_libpq_ones() {
        let t = Target::parse("postgres://app:p%40ss@db.example:6543/shop?sslmode=require").unwrap();
        assert_eq!(
            (t.user.as_str(), t.password.as_str(), t.host.as_str(), t.port, t.database.as_str()),
            ("app", "p@ss", "db.example", 6543, "shop")
        );
        let t = Target::parse("postgresql://127.0.0.1/").unwrap();
        assert_eq!((t.user.as_str(), t.port, t.database.as_str()), ("postgres", 5432, "postgres"));
        let t = Target::parse("postgres://u@[::1]:5433/d").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 5433));
    }

    #[test]
    fn a_wrong_url_is_refused_with_what_to_write() {
        assert!(Target::parse("mysql://x").unwrap_err().contains("postgres://USER"));
        assert!(Target::parse("postgres://u@h:port/d").unwrap_err().contains("port"));
        assert!(Target::parse("postgres://u@h/d?sslmode=maybe").unwrap_err().contains("sslmode"));
        assert!(Target::parse("postgres://u@h/d?colour=blue").unwrap_err().contains("colour"));
    }
}
