//! What operators and orchestrators ask every service: is it alive (`/healthz`), is it ready
//! (`/readyz`: connected to the broker with its queues declared) and what has it done
//! (`/metrics`, Prometheus text format).
//!
//! One process-wide [`Ops`] ([`global`]) holds a small metrics registry and the readiness parts.
//! The AMQP plumbing ([`crate::amqp`]) counts every delivery and publish and reports its
//! connection state into it, so every service gets the same metrics and the same readiness rule
//! without code of its own; a service adds only what is particular to it (the runner's slots).
//! [`crate::service::main`] serves the endpoints on the service's `ops_listen` address.
//!
//! The registry is hand-written (counters, gauges, histograms with labels) rather than taken from
//! a crate: the one light crate, `prometheus-client`, writes only OpenMetrics text, whose counter
//! naming the `promtool` of current distributions rejects, while the classic text format (0.0.4)
//! written here is what every Prometheus version scrapes and checks.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

/// The content type of the classic Prometheus text exposition format.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Bucket bounds (seconds) of the processing-time histograms: from a rules evaluation (ms) to a
/// long task run (an hour), so one histogram serves every queue.
pub const PROCESSING_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0,
];

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
        Ops {
            registry,
            readiness: Readiness::default(),
            amqp,
        }
    }

    /// Every metric in the Prometheus text format, plus `taskbot_ready{part}` from the readiness
    /// parts (1 connected, 0 not).
    pub fn render(&self) -> String {
        let mut out = self.registry.render();
        let parts = self.readiness.parts();
        if !parts.is_empty() {
            out.push_str("# HELP taskbot_ready Whether each broker link (consumer of a queue, or publisher) is connected with its queues declared.\n");
            out.push_str("# TYPE taskbot_ready gauge\n");
            for (part, ready) in parts {
                let _ = writeln!(
                    out,
                    "taskbot_ready{{part=\"{}\"}} {}",
                    escape_label(&part),
                    u8::from(ready)
                );
            }
        }
        out
    }
}

/// The counters and histograms of [`crate::amqp`], labelled by queue (inputs) or exchange
/// (outputs).
pub struct AmqpMetrics {
    pub consumed: CounterFamily,
    pub acked: CounterFamily,
    pub rejected: CounterFamily,
    pub dead_lettered: CounterFamily,
    pub published: CounterFamily,
    pub publish_failed: CounterFamily,
    pub processing: HistogramFamily,
    pub in_flight: GaugeFamily,
}

/// How the handling of one delivery ended, for [`AmqpMetrics::finished`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Outputs confirmed, input acked.
    Acked,
    /// Copied to the dead-letter queue (confirmed), then acked.
    DeadLettered,
    /// Handed back to the queue (a transient failure, or outputs not confirmed).
    Rejected,
    /// Outputs confirmed but the ack itself failed (the broker redelivers it).
    AckFailed,
}

impl AmqpMetrics {
    fn new(registry: &Registry) -> AmqpMetrics {
        AmqpMetrics {
            consumed: registry.counter(
                "taskbot_messages_consumed_total",
                "Deliveries taken from the queue (redeliveries included).",
                &["queue"],
            ),
            acked: registry.counter(
                "taskbot_messages_acked_total",
                "Deliveries acknowledged after their outputs were confirmed (dead-lettered ones included).",
                &["queue"],
            ),
            rejected: registry.counter(
                "taskbot_messages_rejected_total",
                "Deliveries handed back to the queue for another try (transient failure, or outputs not confirmed).",
                &["queue"],
            ),
            dead_lettered: registry.counter(
                "taskbot_messages_dead_lettered_total",
                "Deliveries that can never be handled, copied to the queue's dead-letter queue.",
                &["queue"],
            ),
            published: registry.counter(
                "taskbot_messages_published_total",
                "Messages published and confirmed by the broker.",
                &["exchange"],
            ),
            publish_failed: registry.counter(
                "taskbot_messages_publish_failed_total",
                "Publishes the broker did not confirm (nacked, unroutable, or connection lost).",
                &["exchange"],
            ),
            processing: registry.histogram(
                "taskbot_message_processing_seconds",
                "Time from taking a delivery to acking or handing it back.",
                &["queue"],
                PROCESSING_BUCKETS,
            ),
            in_flight: registry.gauge(
                "taskbot_messages_in_flight",
                "Deliveries being handled now (on a run queue: the jobs running).",
                &["queue"],
            ),
        }
    }

    /// Expose every series of `queue` (at 0) from the start, so rates and "before" scrapes see
    /// the queue before its first delivery.
    pub fn declare_queue(&self, queue: &str) {
        for family in [
            &self.consumed,
            &self.acked,
            &self.rejected,
            &self.dead_lettered,
        ] {
            family.with(&[queue]);
        }
        self.in_flight.with(&[queue]);
        self.processing.with(&[queue]);
    }

    /// A delivery was taken from `queue`: counts it and keeps it in flight until the returned
    /// guard is dropped.
    pub fn started(&self, queue: &str) -> GaugeGuard {
        self.consumed.with(&[queue]).inc();
        self.in_flight.with(&[queue]).track()
    }

    /// A delivery from `queue` was done with, `elapsed` after it was taken.
    pub fn finished(&self, queue: &str, ending: Ending, elapsed: Duration) {
        match ending {
            Ending::Acked => self.acked.with(&[queue]).inc(),
            Ending::DeadLettered => {
                self.dead_lettered.with(&[queue]).inc();
                self.acked.with(&[queue]).inc();
            }
            Ending::Rejected => self.rejected.with(&[queue]).inc(),
            Ending::AckFailed => {}
        }
        self.processing
            .with(&[queue])
            .observe(elapsed.as_secs_f64());
    }
}

/// Readiness: a service is ready when it has at least one broker link and every link it has
/// (one per consumed queue, one per standalone publisher) is connected with its topology
/// declared.
#[derive(Default)]
pub struct Readiness {
    parts: Mutex<BTreeMap<String, Arc<AtomicBool>>>,
}

/// One link's readiness flag; cheap to clone and set from callbacks.
#[derive(Clone)]
pub struct ReadyFlag(Arc<AtomicBool>);

impl ReadyFlag {
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Relaxed);
    }

    pub fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

impl Readiness {
    /// The flag of `part` (created not ready). The same name gives the same flag.
    pub fn part(&self, part: &str) -> ReadyFlag {
        let mut parts = lock(&self.parts);
        ReadyFlag(parts.entry(part.to_string()).or_default().clone())
    }

    /// Every part and whether it is ready.
    pub fn parts(&self) -> Vec<(String, bool)> {
        lock(&self.parts)
            .iter()
            .map(|(k, v)| (k.clone(), v.load(Ordering::Relaxed)))
            .collect()
    }

    /// `Ok` when ready; otherwise why not, for the `/readyz` answer.
    pub fn check(&self) -> Result<(), String> {
        let parts = self.parts();
        if parts.is_empty() {
            return Err("no broker link started yet".into());
        }
        let waiting: Vec<&str> = parts
            .iter()
            .filter(|(_, ready)| !ready)
            .map(|(name, _)| name.as_str())
            .collect();
        if waiting.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "not connected to the broker: {}",
                waiting.join(", ")
            ))
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain data that is still consistent.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Metric families by name. Asking twice for the same name returns the same family, so a service
/// run twice in one process (tests) does not expose a metric twice.
#[derive(Default)]
pub struct Registry {
    families: Mutex<BTreeMap<String, Arc<Family>>>,
}

struct Family {
    name: String,
    help: String,
    labels: Vec<String>,
    kind: Kind,
    series: Mutex<BTreeMap<Vec<String>, Series>>,
}

#[derive(Debug, Clone, PartialEq)]
enum Kind {
    Counter,
    Gauge,
    Histogram(Vec<f64>),
}

#[derive(Clone)]
enum Series {
    Counter(Counter),
    Gauge(Gauge),
    Histogram(Histogram),
}

impl Registry {
    fn family(&self, name: &str, help: &str, labels: &[&str], kind: Kind) -> Arc<Family> {
        let mut families = lock(&self.families);
        if let Some(existing) = families.get(name) {
            if existing.kind == kind && existing.labels == labels {
                return existing.clone();
            }
            // A programming error (one name, two shapes): keep the first, and give the caller a
            // family that works but is not exposed, rather than a broken exposition.
            tracing::error!(
                metric = name,
                "metric registered twice with different shapes"
            );
            return Arc::new(Family::new(name, help, labels, kind));
        }
        let family = Arc::new(Family::new(name, help, labels, kind));
        families.insert(name.to_string(), family.clone());
        family
    }

    /// A counter family (the name should end in `_total`).
    pub fn counter(&self, name: &str, help: &str, labels: &[&str]) -> CounterFamily {
        CounterFamily(self.family(name, help, labels, Kind::Counter))
    }

    pub fn gauge(&self, name: &str, help: &str, labels: &[&str]) -> GaugeFamily {
        GaugeFamily(self.family(name, help, labels, Kind::Gauge))
    }

    /// A histogram family with these bucket upper bounds (ascending; `+Inf` is added).
    pub fn histogram(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
        buckets: &[f64],
    ) -> HistogramFamily {
        HistogramFamily(self.family(name, help, labels, Kind::Histogram(buckets.to_vec())))
    }

    /// Every family in the Prometheus text format, sorted by name.
    pub fn render(&self) -> String {
        let families: Vec<Arc<Family>> = lock(&self.families).values().cloned().collect();
        let mut out = String::new();
        for family in families {
            family.render(&mut out);
        }
        out
    }
}

impl Family {
    fn new(name: &str, help: &str, labels: &[&str], kind: Kind) -> Family {
        Family {
            name: name.to_string(),
            help: help.to_string(),
            labels: labels.iter().map(|l| l.to_string()).collect(),
            kind,
            series: Mutex::new(BTreeMap::new()),
        }
    }

    /// The series for these label values (missing values are empty, extra ones ignored).
    fn series(&self, values: &[&str]) -> Series {
        let key: Vec<String> = (0..self.labels.len())
            .map(|i| values.get(i).copied().unwrap_or_default().to_string())
            .collect();
        let mut series = lock(&self.series);
        series
            .entry(key)
            .or_insert_with(|| match &self.kind {
                Kind::Counter => Series::Counter(Counter::default()),
                Kind::Gauge => Series::Gauge(Gauge::default()),
                Kind::Histogram(bounds) => Series::Histogram(Histogram::new(bounds)),
            })
            .clone()
    }

    fn label_text(&self, values: &[String], extra: Option<(&str, &str)>) -> String {
        let mut pairs: Vec<String> = self
            .labels
            .iter()
            .zip(values)
            .map(|(k, v)| format!("{k}=\"{}\"", escape_label(v)))
            .collect();
        if let Some((k, v)) = extra {
            pairs.push(format!("{k}=\"{v}\""));
        }
        if pairs.is_empty() {
            String::new()
        } else {
            format!("{{{}}}", pairs.join(","))
        }
    }

    fn render(&self, out: &mut String) {
        let kind = match self.kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram(_) => "histogram",
        };
        let _ = writeln!(out, "# HELP {} {}", self.name, escape_help(&self.help));
        let _ = writeln!(out, "# TYPE {} {kind}", self.name);
        let series: Vec<(Vec<String>, Series)> = lock(&self.series)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (values, series) in series {
            match series {
                Series::Counter(c) => {
                    let _ = writeln!(
                        out,
                        "{}{} {}",
                        self.name,
                        self.label_text(&values, None),
                        c.get()
                    );
                }
                Series::Gauge(g) => {
                    let _ = writeln!(
                        out,
                        "{}{} {}",
                        self.name,
                        self.label_text(&values, None),
                        g.get()
                    );
                }
                Series::Histogram(h) => {
                    let snapshot = h.snapshot();
                    let mut cumulative = 0;
                    for (bound, count) in snapshot.bounds.iter().zip(&snapshot.counts) {
                        cumulative += count;
                        let le = format_float(*bound);
                        let _ = writeln!(
                            out,
                            "{}_bucket{} {cumulative}",
                            self.name,
                            self.label_text(&values, Some(("le", &le)))
                        );
                    }
                    let labels = self.label_text(&values, None);
                    let _ = writeln!(
                        out,
                        "{}_bucket{} {}",
                        self.name,
                        self.label_text(&values, Some(("le", "+Inf"))),
                        snapshot.count
                    );
                    let _ = writeln!(
                        out,
                        "{}_sum{labels} {}",
                        self.name,
                        format_float(snapshot.sum)
                    );
                    let _ = writeln!(out, "{}_count{labels} {}", self.name, snapshot.count);
                }
            }
        }
    }
}

/// A float as Prometheus reads it (`1`, `0.005`, `+Inf`).
fn format_float(v: f64) -> String {
    if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.to_string()
    } else if v.is_nan() {
        "NaN".to_string()
    } else {
        format!("{v}")
    }
}

/// Label values escape backslash, double quote and newline.
fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Help texts escape backslash and newline.
fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

/// Counters by label values.
#[derive(Clone)]
pub struct CounterFamily(Arc<Family>);

impl CounterFamily {
    pub fn with(&self, values: &[&str]) -> Counter {
        match self.0.series(values) {
            Series::Counter(c) => c,
            _ => Counter::default(),
        }
    }
}

/// Gauges by label values.
#[derive(Clone)]
pub struct GaugeFamily(Arc<Family>);

impl GaugeFamily {
    pub fn with(&self, values: &[&str]) -> Gauge {
        match self.0.series(values) {
            Series::Gauge(g) => g,
            _ => Gauge::default(),
        }
    }
}

/// Histograms by label values.
#[derive(Clone)]
pub struct HistogramFamily(Arc<Family>);

impl HistogramFamily {
    pub fn with(&self, values: &[&str]) -> Histogram {
        match self.0.series(values) {
            Series::Histogram(h) => h,
            _ => Histogram::new(&[]),
        }
    }
}

/// A monotonic count.
#[derive(Clone, Default)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    pub fn inc(&self) {
        self.inc_by(1);
    }

    pub fn inc_by(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Clone, Default)]
pub struct Gauge(Arc<AtomicI64>);

impl Gauge {
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }

    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }

    /// Add one now and take it away when the guard is dropped (also on an early return or a
    /// panic), so an in-flight gauge cannot drift.
    pub fn track(&self) -> GaugeGuard {
        self.inc();
        GaugeGuard(self.clone())
    }
}

/// See [`Gauge::track`].
pub struct GaugeGuard(Gauge);

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Observations counted in buckets.
#[derive(Clone)]
pub struct Histogram(Arc<Mutex<HistogramState>>);

#[derive(Debug, Clone, PartialEq)]
struct HistogramState {
    bounds: Vec<f64>,
    /// Observations per bucket (not cumulative); the last bucket is `+Inf`'s own.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &[f64]) -> Histogram {
        Histogram(Arc::new(Mutex::new(HistogramState {
            bounds: bounds.to_vec(),
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        })))
    }

    pub fn observe(&self, v: f64) {
        let mut s = lock(&self.0);
        if let Some(i) = s.bounds.iter().position(|b| v <= *b) {
            s.counts[i] += 1;
        }
        s.sum += v;
        s.count += 1;
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        lock(&self.0).count
    }

    fn snapshot(&self) -> HistogramState {
        lock(&self.0).clone()
    }
}

/// The routes: `/healthz` (the process answers), `/readyz` (see [`Readiness`]), `/metrics`. The
/// JSON answers are those of the api's own `/healthz` and `/readyz`.
pub fn router(ops: Arc<Ops>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(ops)
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

async fn readyz(State(ops): State<Arc<Ops>>) -> Response {
    match ops.readiness.check() {
        Ok(()) => Json(json!({"status": "ready"})).into_response(),
        Err(message) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not ready", "message": message})),
        )
            .into_response(),
    }
}

async fn metrics(State(ops): State<Arc<Ops>>) -> Response {
    ([(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)], ops.render()).into_response()
}

/// The running endpoints: where they listen, and the task serving them (aborted on drop).
pub struct Server {
    pub address: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Listen on `address` (`host:port`; port 0 picks a free one) and serve [`router`] in the
/// background. The address actually bound is logged, as `ops endpoints on http://HOST:PORT/`,
/// so whoever asked for port 0 can find it.
pub async fn serve(address: &str, ops: Arc<Ops>) -> anyhow::Result<Server> {
    let listener = tokio::net::TcpListener::bind(address).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot listen on {address} for /healthz, /readyz and /metrics: {e} (set another address with --ops-listen; port 0 picks a free one)"
        )
    })?;
    let bound = listener.local_addr()?;
    tracing::info!(address = %bound, "ops endpoints on http://{bound}/ (/healthz, /readyz, /metrics)");
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router(ops)).await {
            tracing::error!(error = %e, "ops endpoints stopped");
        }
    });
    Ok(Server {
        address: bound,
        task,
    })
}

/// A plain HTTP/1.1 GET (status, body), for tests of the endpoints without an HTTP client crate.
#[cfg(any(test, feature = "testing"))]
pub async fn http_get(address: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "not an HTTP answer");
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(bad)?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(bad)?;
    Ok((status, body.to_string()))
}

/// The value of one sample (`name{labels}` exactly as exposed, or a bare name) in an exposition,
/// or `None` when it is absent: what tests and scripts compare before and after.
pub fn sample(exposition: &str, series: &str) -> Option<f64> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == series).then(|| value.parse().ok())?
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_gauges_render_by_label_in_text_format() {
        let r = Registry::default();
        let c = r.counter("t_things_total", "Things.\nMore", &["queue"]);
        c.with(&["b"]).inc();
        c.with(&["a\"x"]).inc_by(3);
        let g = r.gauge("t_level", "Level.", &[]);
        g.with(&[]).set(-2);
        let text = r.render();
        assert_eq!(
            text,
            "# HELP t_level Level.\n# TYPE t_level gauge\nt_level -2\n\
             # HELP t_things_total Things.\\nMore\n# TYPE t_things_total counter\n\
             t_things_total{queue=\"a\\\"x\"} 3\nt_things_total{queue=\"b\"} 1\n"
        );
        assert_eq!(sample(&text, "t_things_total{queue=\"b\"}"), Some(1.0));
        assert_eq!(sample(&text, "t_level"), Some(-2.0));
        assert_eq!(sample(&text, "t_missing"), None);
    }

    #[test]
    fn same_name_gives_the_same_family_and_a_clash_is_not_exposed() {
        let r = Registry::default();
        r.counter("t_total", "x", &["a"]).with(&["1"]).inc();
        r.counter("t_total", "x", &["a"]).with(&["1"]).inc();
        r.gauge("t_total", "x", &["a"]).with(&["1"]).set(100);
        let text = r.render();
        assert_eq!(sample(&text, "t_total{a=\"1\"}"), Some(2.0));
        assert_eq!(text.matches("# TYPE").count(), 1);
    }

    #[test]
    fn histogram_buckets_are_cumulative_with_inf_sum_and_count() {
        let r = Registry::default();
        let h = r.histogram("t_seconds", "Time.", &["queue"], &[0.1, 1.0]);
        for v in [0.05, 0.5, 0.7, 5.0] {
            h.with(&["q"]).observe(v);
        }
        let text = r.render();
        let get = |s: &str| sample(&text, s).unwrap_or(-1.0);
        assert_eq!(get("t_seconds_bucket{queue=\"q\",le=\"0.1\"}"), 1.0);
        assert_eq!(get("t_seconds_bucket{queue=\"q\",le=\"1\"}"), 3.0);
        assert_eq!(get("t_seconds_bucket{queue=\"q\",le=\"+Inf\"}"), 4.0);
        assert_eq!(get("t_seconds_count{queue=\"q\"}"), 4.0);
        assert!((get("t_seconds_sum{queue=\"q\"}") - 6.25).abs() < 1e-9);
    }

    #[test]
    fn endings_move_the_right_counters() {
        let ops = Ops::new();
        let m = &ops.amqp;
        assert_eq!(
            sample(
                &ops.render(),
                "taskbot_messages_consumed_total{queue=\"q\"}"
            ),
            None
        );
        m.declare_queue("q");
        let declared = ops.render();
        for series in [
            "taskbot_messages_consumed_total{queue=\"q\"}",
            "taskbot_messages_dead_lettered_total{queue=\"q\"}",
            "taskbot_messages_in_flight{queue=\"q\"}",
            "taskbot_message_processing_seconds_count{queue=\"q\"}",
        ] {
            assert_eq!(
                sample(&declared, series),
                Some(0.0),
                "{series} exposed at 0"
            );
        }
        {
            let _a = m.started("q");
            let _b = m.started("q");
            assert_eq!(m.in_flight.with(&["q"]).get(), 2);
        }
        assert_eq!(m.in_flight.with(&["q"]).get(), 0, "guards give back");
        let d = Duration::from_millis(3);
        m.finished("q", Ending::Acked, d);
        m.finished("q", Ending::DeadLettered, d);
        m.finished("q", Ending::Rejected, d);
        m.finished("q", Ending::AckFailed, d);
        assert_eq!(m.consumed.with(&["q"]).get(), 2);
        assert_eq!(m.acked.with(&["q"]).get(), 2, "a dead letter is acked too");
        assert_eq!(m.dead_lettered.with(&["q"]).get(), 1);
        assert_eq!(m.rejected.with(&["q"]).get(), 1);
        assert_eq!(m.processing.with(&["q"]).count(), 4);
        assert_eq!(m.acked.with(&["other"]).get(), 0);
    }

    #[test]
    fn ready_only_when_some_link_exists_and_all_are_connected() {
        let r = Readiness::default();
        assert!(r.check().unwrap_err().contains("no broker link"));
        let a = r.part("tb.rules");
        let b = r.part("publisher");
        a.set(true);
        let err = r.check().unwrap_err();
        assert!(
            err.contains("publisher") && !err.contains("tb.rules"),
            "{err}"
        );
        b.set(true);
        assert_eq!(r.check(), Ok(()));
        r.part("tb.rules").set(false);
        assert!(!a.get(), "the same name is the same flag");
        assert!(r.check().is_err());
    }

    #[tokio::test]
    async fn endpoints_answer_health_readiness_and_metrics() {
        let ops = Arc::new(Ops::new());
        let server = serve("127.0.0.1:0", ops.clone()).await.unwrap();
        assert_ne!(server.address.port(), 0, "the bound port is reported");
        let (status, body) = http_get(server.address, "/healthz").await.unwrap();
        assert_eq!((status, body.as_str()), (200, r#"{"status":"ok"}"#));
        let (status, body) = http_get(server.address, "/readyz").await.unwrap();
        assert_eq!(status, 503, "{body}");
        let flag = ops.readiness.part("tb.provisioner");
        flag.set(true);
        let (status, _) = http_get(server.address, "/readyz").await.unwrap();
        assert_eq!(status, 200);
        flag.set(false);
        let (status, body) = http_get(server.address, "/readyz").await.unwrap();
        assert_eq!(status, 503);
        assert!(body.contains("tb.provisioner"), "{body}");
        ops.amqp.published.with(&["tb.jobs"]).inc();
        let (status, body) = http_get(server.address, "/metrics").await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(
            sample(
                &body,
                "taskbot_messages_published_total{exchange=\"tb.jobs\"}"
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(&body, "taskbot_ready{part=\"tb.provisioner\"}"),
            Some(0.0)
        );
    }

    #[tokio::test]
    async fn an_address_in_use_is_a_clear_error() {
        let ops = Arc::new(Ops::new());
        let first = serve("127.0.0.1:0", ops.clone()).await.unwrap();
        let err = serve(&first.address.to_string(), ops)
            .await
            .err()
            .expect("second bind fails")
            .to_string();
        assert!(err.contains(&first.address.to_string()), "{err}");
        assert!(err.contains("--ops-listen"), "{err}");
    }
}
