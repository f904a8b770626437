//! Served staleness per content class, against the class's freshness SLO
//! (design §6, `freshness_slo`): every response of a class is measured
//! (0 when fresh or just fetched; how long past its lifetime when served
//! stale) into `fresco_served_staleness_seconds{content_class}`, and one
//! staler than the SLO counts in
//! `fresco_freshness_slo_violations_total{content_class}`. The cap itself
//! is a caching decision and lives in `policy::request` (`max_staleness`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;

use crate::classes::{Classes, ContentClass};

/// How stale a response served from the store was; left by the proxy in
/// the response's extensions. Responses without it were fresh or fetched.
#[derive(Debug, Clone, Copy)]
pub struct Staleness(pub Duration);

#[derive(Default)]
pub struct Freshness {
    classes: Vec<ClassFreshness>,
}

impl std::fmt::Debug for Freshness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.classes.iter().map(|c| &c.name)).finish()
    }
}

struct ClassFreshness {
    name: String,
    /// Registered once, so a response costs no label allocation.
    staleness: metrics::Histogram,
    violations: metrics::Counter,
    slo: Option<Duration>,
    capped: bool,
    responses: AtomicU64,
    stale: AtomicU64,
    over_slo: AtomicU64,
    max_staleness_ms: AtomicU64,
}

/// One class, as the dashboard shows it.
#[derive(Debug, Serialize)]
pub struct ClassReport {
    pub name: String,
    pub freshness_slo_ms: Option<u64>,
    /// Whether the SLO is enforced as a cap (else only measured).
    pub capped: bool,
    pub responses: u64,
    pub stale_served: u64,
    pub over_slo: u64,
    pub max_staleness_ms: u64,
}

impl Freshness {
    /// The classes' counters; for those with an SLO, the violation
    /// counter and the SLO are exported from the start (a 0 that alerts
    /// can rely on).
    pub fn new(classes: &Classes) -> Freshness {
        let classes = classes
            .0
            .iter()
            .map(|c| {
                let violations =
                    metrics::counter!("fresco_freshness_slo_violations_total", "content_class" => c.name.clone());
                if let Some(slo) = c.freshness_slo {
                    violations.increment(0);
                    metrics::gauge!("fresco_freshness_slo_seconds", "content_class" => c.name.clone())
                        .set(slo.as_secs_f64());
                }
                ClassFreshness {
                    name: c.name.clone(),
                    staleness: metrics::histogram!("fresco_served_staleness_seconds", "content_class" => c.name.clone()),
                    violations,
                    slo: c.freshness_slo,
                    capped: c.stale.max_staleness.is_some(),
                    responses: AtomicU64::new(0),
                    stale: AtomicU64::new(0),
                    over_slo: AtomicU64::new(0),
                    max_staleness_ms: AtomicU64::new(0),
                }
            })
            .collect();
        Freshness { classes }
    }

    /// Records one response of `class` served `staleness` past its lifetime.
    pub fn record(&self, class: &ContentClass, staleness: Duration) {
        let Some(c) = self.classes.iter().find(|c| c.name == class.name) else { return };
        c.staleness.record(staleness.as_secs_f64());
        c.responses.fetch_add(1, Ordering::Relaxed);
        if staleness.is_zero() {
            return;
        }
        c.stale.fetch_add(1, Ordering::Relaxed);
        c.max_staleness_ms.fetch_max(staleness.as_millis() as u64, Ordering::Relaxed);
        if c.slo.is_some_and(|slo| staleness > slo) {
            c.over_slo.fetch_add(1, Ordering::Relaxed);
            c.violations.increment(1);
        }
    }

    pub fn report(&self) -> Vec<ClassReport> {
        self.classes
            .iter()
            .map(|c| ClassReport {
                name: c.name.clone(),
                freshness_slo_ms: c.slo.map(|s| s.as_millis() as u64),
                capped: c.capped,
                responses: c.responses.load(Ordering::Relaxed),
                stale_served: c.stale.load(Ordering::Relaxed),
                over_slo: c.over_slo.load(Ordering::Relaxed),
                max_staleness_ms: c.max_staleness_ms.load(Ordering::Relaxed),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_staler_than_the_slo_are_counted_per_class() {
        let class = |name: &str, slo: Option<u64>| ContentClass {
            name: name.into(),
            path_prefix: None,
            content_type: None,
            stale: crate::classes::stale(None, None, false, None),
            store_set_cookie: None,
            freshness_slo: slo.map(Duration::from_secs),
        };
        let (news, assets) = (class("news", Some(2)), class("assets", None));
        let f = Freshness::new(&Classes(vec![news.clone(), assets.clone()]));
        for s in [0, 1, 2, 3] {
            f.record(&news, Duration::from_secs(s));
        }
        f.record(&news, Duration::from_millis(2_001));
        f.record(&assets, Duration::from_secs(99));
        let r = f.report();
        assert_eq!((r[0].responses, r[0].stale_served, r[0].over_slo, r[0].max_staleness_ms), (5, 4, 2, 3_000));
        assert_eq!((r[1].responses, r[1].over_slo, r[1].freshness_slo_ms), (1, 0, None), "no SLO, nothing over it");
    }
}
