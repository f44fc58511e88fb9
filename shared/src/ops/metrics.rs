//! The metrics registry: counters, gauges and histograms by label values, written in the classic
//! Prometheus text format (0.0.4). The `prometheus` crate keeps and encodes them; this file is
//! the small API the services use (`registry.counter(name, help, labels).with(&[..]).inc()`), so
//! no service depends on the crate, and asking twice for one metric gives the same one.
//!
//! Why `prometheus` and not `prometheus-client`: both now write the 0.0.4 text that `promtool
//! check metrics` accepts (the OpenMetrics text it does not), but `prometheus` takes label names
//! chosen at run time as they are, keeps metric names and help texts exactly as given (the other
//! strips `_total` from counter names and appends a period to help texts) and finds an existing
//! series without allocating (measured: 20–25 ns per labelled increment against 80–130 ns).

use std::any::Any;
use std::collections::BTreeMap;
use std::sync::Mutex;

use prometheus::core::{Collector, MetricVec, MetricVecBuilder};
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts};

use super::lock;

/// The content type of the classic Prometheus text exposition format.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Metric families by name. Asking twice for the same name returns the same family, so a service
/// run twice in one process (tests) does not expose a metric twice.
pub struct Registry {
    inner: prometheus::Registry,
    families: Mutex<BTreeMap<String, Registered>>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            inner: prometheus::Registry::new(),
            families: Mutex::default(),
        }
    }
}

/// A family as first registered, with its shape, to tell a second request for it from a clash.
struct Registered {
    kind: Kind,
    labels: Vec<String>,
    /// The crate's `IntCounterVec`, `IntGaugeVec` or `HistogramVec`.
    family: Box<dyn Any + Send + Sync>,
}

#[derive(Debug, Clone, PartialEq)]
enum Kind {
    Counter,
    Gauge,
    Histogram(Vec<f64>),
}

/// The name, help and label names of the families that are not exposed (see `Registry::family`).
const UNEXPOSED: &str = "taskbot_unexposed";

impl Registry {
    /// The family `name`, made by `make(name, help, labels)` the first time. One name asked for
    /// with another shape, or a name the crate refuses, is a programming error: the caller then
    /// gets a family that works but is not exposed (and it is logged), rather than a broken
    /// exposition or a panic.
    fn family<F>(
        &self,
        (name, help, labels): (&str, &str, &[&str]),
        kind: Kind,
        make: impl Fn(&str, &str, &[&str]) -> prometheus::Result<F>,
    ) -> F
    where
        F: Collector + Clone + Send + Sync + 'static,
    {
        let mut families = lock(&self.families);
        let made = match families.get(name) {
            Some(existing) => match existing.family.downcast_ref::<F>() {
                Some(family) if existing.kind == kind && existing.labels == labels => {
                    return family.clone();
                }
                _ => Err(prometheus::Error::Msg(
                    "registered before with another shape".into(),
                )),
            },
            None => make(name, help, labels).and_then(|family| {
                self.inner.register(Box::new(family.clone()))?;
                Ok(family)
            }),
        };
        match made {
            Ok(family) => {
                let registered = Registered {
                    kind,
                    labels: labels.iter().map(|l| l.to_string()).collect(),
                    family: Box::new(family.clone()),
                };
                families.insert(name.to_string(), registered);
                family
            }
            Err(e) => {
                tracing::error!(metric = name, error = %e, "metric not exposed");
                let placeholders: Vec<String> =
                    (0..labels.len()).map(|i| format!("label{i}")).collect();
                let placeholders: Vec<&str> = placeholders.iter().map(String::as_str).collect();
                make(UNEXPOSED, UNEXPOSED, &placeholders)
                    .expect("a valid name, help and label names")
            }
        }
    }

    /// A counter family (the name should end in `_total`).
    pub fn counter(&self, name: &str, help: &str, labels: &[&str]) -> CounterFamily {
        let make = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels)
        };
        CounterFamily {
            family: self.family((name, help, labels), Kind::Counter, make),
            labels: labels.len(),
        }
    }

    pub fn gauge(&self, name: &str, help: &str, labels: &[&str]) -> GaugeFamily {
        let make = |name: &str, help: &str, labels: &[&str]| {
            IntGaugeVec::new(Opts::new(name, help), labels)
        };
        GaugeFamily {
            family: self.family((name, help, labels), Kind::Gauge, make),
            labels: labels.len(),
        }
    }

    /// A histogram family with these bucket upper bounds (`+Inf` is added).
    pub fn histogram(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
        buckets: &[f64],
    ) -> HistogramFamily {
        // The crate refuses bounds out of order; a repeated or infinite one adds nothing.
        let mut bounds: Vec<f64> = buckets.iter().copied().filter(|b| b.is_finite()).collect();
        bounds.sort_by(f64::total_cmp);
        bounds.dedup();
        let make = |name: &str, help: &str, labels: &[&str]| {
            HistogramVec::new(
                HistogramOpts::new(name, help).buckets(bounds.clone()),
                labels,
            )
        };
        let kind = Kind::Histogram(buckets.to_vec());
        HistogramFamily {
            family: self.family((name, help, labels), kind, make),
            labels: labels.len(),
        }
    }

    /// Every family with at least one series, in the Prometheus text format, sorted by name
    /// (and each family's series by label values).
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus::TextEncoder::new().encode_utf8(&self.inner.gather(), &mut out) {
            tracing::error!(error = %e, "cannot encode the metrics");
        }
        out
    }
}

/// The series of `family` (with `labels` label names) for these label values: missing values
/// are empty, extra ones ignored (the crate panics on a wrong count).
fn series<T: MetricVecBuilder>(family: &MetricVec<T>, labels: usize, values: &[&str]) -> T::M {
    if values.len() == labels {
        return family.with_label_values(values);
    }
    let values: Vec<&str> = (0..labels)
        .map(|i| values.get(i).copied().unwrap_or_default())
        .collect();
    family.with_label_values(&values)
}

/// Counters by label values.
#[derive(Clone)]
pub struct CounterFamily {
    family: IntCounterVec,
    labels: usize,
}

impl CounterFamily {
    pub fn with(&self, values: &[&str]) -> Counter {
        Counter(series(&self.family, self.labels, values))
    }
}

/// Gauges by label values.
#[derive(Clone)]
pub struct GaugeFamily {
    family: IntGaugeVec,
    labels: usize,
}

impl GaugeFamily {
    pub fn with(&self, values: &[&str]) -> Gauge {
        Gauge(series(&self.family, self.labels, values))
    }
}

/// Histograms by label values.
#[derive(Clone)]
pub struct HistogramFamily {
    family: HistogramVec,
    labels: usize,
}

impl HistogramFamily {
    pub fn with(&self, values: &[&str]) -> Histogram {
        Histogram(series(&self.family, self.labels, values))
    }
}

/// A monotonic count.
#[derive(Clone)]
pub struct Counter(prometheus::IntCounter);

impl Counter {
    pub fn inc(&self) {
        self.0.inc();
    }

    pub fn inc_by(&self, n: u64) {
        self.0.inc_by(n);
    }

    pub fn get(&self) -> u64 {
        self.0.get()
    }
}

/// A value that goes up and down.
#[derive(Clone)]
pub struct Gauge(prometheus::IntGauge);

impl Gauge {
    pub fn set(&self, v: i64) {
        self.0.set(v);
    }

    pub fn inc(&self) {
        self.0.inc();
    }

    pub fn dec(&self) {
        self.0.dec();
    }

    pub fn get(&self) -> i64 {
        self.0.get()
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
pub struct Histogram(prometheus::Histogram);

impl Histogram {
    pub fn observe(&self, v: f64) {
        self.0.observe(v);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.0.get_sample_count()
    }
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
        assert_eq!(h.with(&["q"]).count(), 4);
    }

    #[test]
    fn missing_label_values_are_empty_and_extra_ones_ignored() {
        let r = Registry::default();
        let c = r.counter("t_pairs_total", "Pairs.", &["a", "b"]);
        c.with(&["1"]).inc();
        c.with(&["1", "", "extra"]).inc();
        assert_eq!(c.with(&["1", ""]).get(), 2);
        assert_eq!(
            sample(&r.render(), "t_pairs_total{a=\"1\",b=\"\"}"),
            Some(2.0)
        );
    }

    #[test]
    fn an_invalid_name_is_not_exposed_but_still_counts() {
        let r = Registry::default();
        let c = r.counter("t bad name", "Bad.", &["a"]);
        c.with(&["1"]).inc();
        c.with(&["1"]).inc();
        assert_eq!(c.with(&["1"]).get(), 2);
        r.counter("t_ok_total", "Fine.", &[]).with(&[]).inc();
        assert_eq!(
            r.render(),
            "# HELP t_ok_total Fine.\n# TYPE t_ok_total counter\nt_ok_total 1\n"
        );
    }

    #[test]
    fn histogram_bounds_out_of_order_are_sorted() {
        let r = Registry::default();
        let h = r.histogram("t_wait_seconds", "Wait.", &[], &[1.0, 0.1, 1.0]);
        h.with(&[]).observe(0.5);
        let text = r.render();
        assert_eq!(
            sample(&text, "t_wait_seconds_bucket{le=\"0.1\"}"),
            Some(0.0)
        );
        assert_eq!(sample(&text, "t_wait_seconds_bucket{le=\"1\"}"), Some(1.0));
    }
}
