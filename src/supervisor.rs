//! Supervision of a node's background tasks (the log consumer and its
//! watcher, heartbeats, acknowledgements, the sweeper, the admin server).
//! Every task is tracked, stops on the shutdown signal and is awaited at
//! shutdown. A task that ends before shutdown (it returned or panicked) is
//! reported by name; when correctness depends on it, the node stops
//! trusting its stored objects (they become misses) and reports not ready.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::FutureExt;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::invalidation::Invalidations;

/// Whether the node can answer correctly without the task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Applies invalidations or watches the log: without it stored objects
    /// cannot be trusted.
    Critical,
    /// Reporting and housekeeping: its loss shows in readiness only.
    Auxiliary,
}

/// The tasks that ended before shutdown, shared with `/readyz`.
pub struct Health {
    dead: Mutex<Vec<(&'static str, Role)>>,
    invalidations: Arc<Invalidations>,
}

impl Health {
    /// Names of supervised tasks that are no longer running.
    pub fn dead(&self) -> Vec<&'static str> {
        self.dead.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|(name, _)| *name).collect()
    }

    /// Whether a task correctness depends on has ended.
    pub fn critical_dead(&self) -> bool {
        self.dead.lock().unwrap_or_else(|e| e.into_inner()).iter().any(|(_, role)| *role == Role::Critical)
    }

    fn ended(&self, name: &'static str, role: Role, how: &str) {
        self.dead.lock().unwrap_or_else(|e| e.into_inner()).push((name, role));
        if role == Role::Critical {
            // Nothing clears this: the node stays a pass-through until restarted.
            self.invalidations.distrust(true);
        }
        tracing::error!(task = name, ?role, how, "a background task stopped before shutdown");
    }
}

pub struct Supervisor {
    tasks: Mutex<JoinSet<()>>,
    shutdown: watch::Receiver<bool>,
    pub health: Arc<Health>,
}

impl Supervisor {
    pub fn new(shutdown: watch::Receiver<bool>, invalidations: Arc<Invalidations>) -> Arc<Supervisor> {
        Arc::new(Supervisor {
            tasks: Mutex::new(JoinSet::new()),
            shutdown,
            health: Arc::new(Health { dead: Mutex::default(), invalidations }),
        })
    }

    /// Runs `task` until it ends or shutdown begins; an early end, by
    /// return or panic, is recorded in [`Health`].
    pub fn spawn(&self, name: &'static str, role: Role, task: impl Future<Output = ()> + Send + 'static) {
        self.track(name, role, true, task);
    }

    /// Runs `task`, which watches the shutdown signal itself (to finish its
    /// work, e.g. drain connections); an end before shutdown is recorded.
    pub fn spawn_until_done(&self, name: &'static str, role: Role, task: impl Future<Output = ()> + Send + 'static) {
        self.track(name, role, false, task);
    }

    fn track(&self, name: &'static str, role: Role, cancel: bool, task: impl Future<Output = ()> + Send + 'static) {
        let mut shutdown = self.shutdown.clone();
        let health = self.health.clone();
        let guarded = async move {
            let outcome = tokio::select! {
                outcome = AssertUnwindSafe(task).catch_unwind() => outcome,
                _ = shutdown.wait_for(|stop| *stop), if cancel => return,
            };
            if !*shutdown.borrow() {
                health.ended(name, role, if outcome.is_ok() { "returned" } else { "panicked" });
            }
        };
        self.tasks.lock().unwrap_or_else(|e| e.into_inner()).spawn(guarded);
    }

    /// After the shutdown signal: waits (up to `limit`) for every task.
    pub async fn join(&self, limit: Duration) {
        let mut tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        if tokio::time::timeout(limit, async { while tasks.join_next().await.is_some() {} }).await.is_err() {
            tracing::warn!("background tasks still running after {limit:?}; leaving them");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_critical_task_that_dies_makes_the_store_untrusted() {
        let (tx, rx) = watch::channel(false);
        let inv = Arc::new(Invalidations::default());
        let sup = Supervisor::new(rx, inv.clone());
        sup.spawn("helper", Role::Auxiliary, std::future::pending());
        sup.spawn("consumer", Role::Critical, async { panic!("boom") });
        for _ in 0..200 {
            if !sup.health.dead().is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(sup.health.dead(), vec!["consumer"]);
        assert!(inv.catching_up(), "stored objects are misses");
        tx.send(true).unwrap();
        sup.join(Duration::from_secs(5)).await;
        assert_eq!(sup.health.dead(), vec!["consumer"], "stopping on shutdown is not a death");
    }
}
