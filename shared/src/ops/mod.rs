//! What operators and orchestrators ask every service: is it alive (`/healthz`), is it ready
//! (`/readyz`: connected to the broker with its queues declared) and what has it done
//! (`/metrics`, Prometheus text format).
//!
//! One process-wide [`Ops`] ([`global`]) holds the metrics registry and the readiness parts.
//! The AMQP plumbing ([`crate::amqp`]) counts every delivery and publish and reports its
//! connection state into it, so every service gets the same metrics and the same readiness rule
//! without code of its own; a service adds only what is particular to it (the runner's slots).
//! [`crate::service::main`] serves the endpoints on the service's `ops_listen` address.
//!
//! One file per concern, everything re-exported here (`taskbot::ops::Gauge`):
//! - `metrics.rs`: the registry (counters, gauges, histograms by label values) on the
//!   `prometheus` crate, and [`sample`] to read an exposition back;
//! - `readiness.rs`: [`Readiness`] and its [`ReadyFlag`]s;
//! - `amqp.rs`: [`AmqpMetrics`], what the AMQP plumbing counts;
//! - `server.rs`: the HTTP endpoints ([`serve`], [`router`]).

mod amqp;
mod metrics;
mod readiness;
mod server;

use std::sync::{Arc, Mutex, OnceLock};

pub use amqp::{AmqpMetrics, Ending, PROCESSING_BUCKETS};
pub use metrics::{
    sample, Counter, CounterFamily, Gauge, GaugeFamily, GaugeGuard, Histogram, HistogramFamily,
    Registry, METRICS_CONTENT_TYPE,
};
pub use readiness::{Readiness, ReadyFlag};
#[cfg(any(test, feature = "testing"))]
pub use server::http_get;
pub use server::{router, serve, Server};

/// The process-wide operations state: what the AMQP plumbing reports into and what the HTTP
/// endpoints show.
pub fn global() -> &'static Arc<Ops> {
    static GLOBAL: OnceLock<Arc<Ops>> = OnceLock::new();
    GLOBAL.get_or_init(|| Arc::new(Ops::new()))
}

/// A metrics registry, readiness, and the metrics the AMQP plumbing keeps.
pub struct Ops {
    pub registry: Registry,
    pub readiness: Readiness,
    pub amqp: AmqpMetrics,
    /// `taskbot_ready{part}`, copied from [`Ops::readiness`] at each render.
    ready: GaugeFamily,
}

impl Default for Ops {
    fn default() -> Self {
        Self::new()
    }
}

impl Ops {
    pub fn new() -> Ops {
        let registry = Registry::default();
        let amqp = AmqpMetrics::new(&registry);
        let ready = registry.gauge(
            "taskbot_ready",
            "Whether each broker link (consumer of a queue, or publisher) is connected with its queues declared.",
            &["part"],
        );
        Ops {
            registry,
            readiness: Readiness::default(),
            amqp,
            ready,
        }
    }

    /// Every metric in the Prometheus text format, with `taskbot_ready{part}` from the readiness
    /// parts (1 connected, 0 not; absent while there are none).
    pub fn render(&self) -> String {
        for (part, ready) in self.readiness.parts() {
            self.ready.with(&[&part]).set(i64::from(ready));
        }
        self.registry.render()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain data that is still consistent.
    m.lock().unwrap_or_else(|e| e.into_inner())
}
