//! The cluster's bus for the model test: one real `nats-server` with
//! JetStream that the test can stop, restart, and restart with its storage
//! lost (the stream recreated, its sequence numbers starting again at 1).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::harness::free_port;

pub(crate) struct Bus {
    pub port: u16,
    pub store: PathBuf,
    child: Option<Child>,
}

impl Bus {
    pub(crate) async fn start(store: PathBuf) -> Bus {
        let mut bus = Bus { port: free_port(), store, child: None };
        bus.restart().await;
        bus
    }

    pub(crate) fn is_up(&self) -> bool {
        self.child.is_some()
    }

    pub(crate) fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops the server, loses everything it stored, and starts it again.
    pub(crate) async fn wipe(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.store);
        self.restart().await;
    }

    /// Starts (again) on the same port and store; waits until it listens.
    pub(crate) async fn restart(&mut self) {
        self.stop();
        let child = Command::new("nats-server")
            .args(["-js", "-sd", self.store.to_str().unwrap(), "-a", "127.0.0.1", "-p", &self.port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server is installed (scripts/test.sh installs it)");
        self.child = Some(child);
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("nats-server did not start on port {}", self.port);
    }
}

impl Drop for Bus {
    fn drop(&mut self) {
        self.stop();
    }
}
