//! The database part of `fresco demo`: with PostgreSQL installed, a
//! throwaway cluster (initdb into a temporary directory, its own loopback
//! port, `wal_level=logical`) holding a `products` table, followed by the
//! relay into the demo node, so that a `psql UPDATE` turns into a purge at
//! the edge. Without PostgreSQL the demo runs without it and says so.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::mapping::Mapping;
use super::postgres::Target;
use super::relay::{self, Options};
use super::sink::{AdminSink, Sink};

/// The demo's cluster; stopped when dropped.
pub struct DemoDatabase {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
    /// The node's data directory, where its admin token appears.
    data_dir: PathBuf,
    /// The outcome of creating the cluster, once known.
    created: tokio::sync::watch::Receiver<Option<Result<(), String>>>,
}

impl Drop for DemoDatabase {
    fn drop(&mut self) {
        let data = self.dir.join("data");
        let _ = as_postgres(&self.bin.join("pg_ctl"), &["-D", &data.to_string_lossy(), "stop", "-m", "fast"])
            .stdout(std::process::Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// PostgreSQL refuses to run as root: as root, run its binaries as `postgres`.
fn as_postgres(program: &Path, args: &[&str]) -> Command {
    let root = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    if root {
        let mut line = program.to_string_lossy().into_owned();
        for a in args {
            line.push_str(&format!(" '{}'", a.replace('\'', "'\\''")));
        }
        let mut c = Command::new("su");
        c.args(["postgres", "-s", "/bin/sh", "-c", &line]);
        c
    } else {
        let mut c = Command::new(program);
        c.args(args);
        c
    }
}

/// The newest PostgreSQL under Debian's /usr/lib/postgresql.
fn postgres_bin() -> Option<PathBuf> {
    let newest = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .max()?;
    let bin = PathBuf::from(format!("/usr/lib/postgresql/{newest}/bin"));
    bin.join("initdb").exists().then_some(bin)
}

fn run(mut cmd: Command, what: &str) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{what}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{what}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    }
}

fn create(bin: &Path, dir: &Path, port: u16) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let _ = Command::new("chown").args(["postgres:postgres", &dir.to_string_lossy()]).status();
    let data = dir.join("data").to_string_lossy().into_owned();
    run(as_postgres(&bin.join("initdb"), &["-D", &data, "-A", "trust", "-U", "postgres"]), "initdb")?;
    let options = format!(
        "-p {port} -k {} -c listen_addresses=127.0.0.1 -c wal_level=logical -c max_replication_slots=4 -c max_wal_senders=4",
        dir.display()
    );
    let log = dir.join("log").to_string_lossy().into_owned();
    run(as_postgres(&bin.join("pg_ctl"), &["-D", &data, "-l", &log, "-w", "-o", &options, "start"]), "pg_ctl start")?;
    let mut psql = Command::new("psql");
    psql.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres", "-X", "-q", "-v", "ON_ERROR_STOP=1"]);
    psql.args([
        "-c",
        "CREATE TABLE products (id int PRIMARY KEY, name text, price numeric NOT NULL);
         ALTER TABLE products REPLICA IDENTITY FULL;
         INSERT INTO products VALUES (42, 'Espresso cup', 19.99);",
    ]);
    run(psql, "psql")
}

/// Starts creating the cluster in the background, so that the node does
/// not wait for initdb. None, with a note, when PostgreSQL is not installed.
pub async fn start(data_dir: PathBuf) -> Option<DemoDatabase> {
    let Some(bin) = postgres_bin() else {
        println!("(PostgreSQL is not installed: `apt-get install postgresql` adds the database part of the demo.)");
        return None;
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0").ok()?.local_addr().ok()?.port();
    let dir = std::env::temp_dir().join(format!("fresco-demo-pg-{}", std::process::id()));
    let (tx, created) = tokio::sync::watch::channel(None);
    let (b, d) = (bin.clone(), dir.clone());
    tokio::task::spawn_blocking(move || {
        let _ = tx.send(Some(create(&b, &d, port)));
    });
    Some(DemoDatabase { dir, bin, port, data_dir, created })
}

impl DemoDatabase {
    /// Once the node listens: when the cluster is up, starts the relay into
    /// the node's admin API (with the token the node wrote to its data
    /// directory) and prints the guide's database part.
    pub fn follow(&self, edge: SocketAddr, admin: SocketAddr) {
        let port = self.port;
        let Ok(mapping) = Mapping::parse("[tables]\nproducts = [\"product-{id}\"]\n") else { return };
        let Ok(target) = Target::parse(&format!("postgres://postgres@127.0.0.1:{port}/postgres")) else { return };
        let token_file = self.data_dir.join("admin-token");
        let mut created = self.created.clone();
        tokio::spawn(async move {
            let outcome = match created.wait_for(Option::is_some).await {
                Ok(outcome) => outcome.clone().unwrap_or_else(|| Err("not created".into())),
                Err(_) => Err("its creation was abandoned".into()),
            };
            if let Err(e) = outcome {
                return println!("(the demo's PostgreSQL did not start: {e})");
            }
            print_guide(edge, port);
            let token = std::fs::read_to_string(&token_file).ok().map(|t| t.trim().to_string());
            let sink = match AdminSink::new(&format!("http://{admin}"), token.as_deref()) {
                Ok(s) => Sink::Admin(s),
                Err(e) => return tracing::error!(error = %e, "the demo's relay cannot start"),
            };
            let options = Options {
                slot: "fresco".into(),
                publication: "fresco".into(),
                window: Duration::from_millis(10),
                metrics: None,
            };
            if let Err(e) = relay::run(target, mapping, sink, options).await {
                tracing::error!(error = %e, "the demo's relay stopped");
            }
        });
    }
}

fn print_guide(edge: SocketAddr, port: u16) {
    println!(
        "\nDatabase (a throwaway PostgreSQL on 127.0.0.1:{port}, followed by `fresco cdc`; products -> product-{{id}}):\n\
  curl -si http://{edge}/api/products/42        # twice: a hit, tagged product-42\n\
  psql -h 127.0.0.1 -p {port} -U postgres -c \"UPDATE products SET price = 24.99 WHERE id = 42\"\n\
  curl -si http://{edge}/api/products/42        # a miss: the commit purged product-42\n\
                                            # (the demo app keeps its own price; the purge is the point)\n\
  psql -h 127.0.0.1 -p {port} -U postgres -c \"BEGIN; UPDATE products SET price = 1 WHERE id = 42; ROLLBACK\"\n\
                                            # rolled back: nothing purged, still a hit\n\
  psql -h 127.0.0.1 -p {port} -U postgres -c \"SELECT pg_logical_emit_message(true, 'fresco', '{{\\\"tags\\\":[\\\"products\\\"]}}')\"\n\
                                            # the outbox: purges the tag `products` as well\n"
    );
}
