//! The metrics the AMQP plumbing ([`crate::amqp`]) keeps: every delivery and publish, counted
//! by queue (inputs) or exchange (outputs), so every service has the same ones without code of
//! its own.

use std::time::Duration;

use super::metrics::{CounterFamily, GaugeFamily, GaugeGuard, HistogramFamily, Registry};

/// Bucket bounds (seconds) of the processing-time histograms: from a rules evaluation (ms) to a
/// long task run (an hour), so one histogram serves every queue.
pub const PROCESSING_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0,
];

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
    pub(super) fn new(registry: &Registry) -> AmqpMetrics {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::{sample, Ops};

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
}
