//! How long a job's task may take. The delivery stays unacked while the task runs
//! (at-least-once), and RabbitMQ closes the channel of a delivery unacked past its consumer
//! timeout, taking the job away to run again, forever. So the task's time is capped below that
//! timeout (`runner.consumer_timeout_secs`), counted from when the delivery arrived, leaving a
//! margin for cleanup and for publishing the results.

use std::time::{Duration, Instant};

/// How long a task may take, and whether the broker's consumer timeout made it shorter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub limit: Duration,
    pub capped: bool,
}

/// Part of the consumer timeout kept for cleanup and publishing results: a quarter, at most 60 s.
fn consumer_margin(consumer: Duration) -> Duration {
    (consumer / 4).min(Duration::from_secs(60))
}

/// The task's time: its own limit, but never so long that its delivery (unacked while it runs,
/// received `elapsed` ago) would outlive RabbitMQ's consumer timeout, which closes the channel
/// and takes the job away. `consumer_timeout_secs` 0 means the broker has none.
pub fn task_budget(task_secs: u64, consumer_timeout_secs: u64, elapsed: Duration) -> Budget {
    let limit = Duration::from_secs(task_secs.max(1));
    let Some(left) = time_left(consumer_timeout_secs, elapsed) else {
        return Budget {
            limit,
            capped: false,
        };
    };
    if left < limit {
        Budget {
            limit: left,
            capped: true,
        }
    } else {
        Budget {
            limit,
            capped: false,
        }
    }
}

/// How much of a delivery's consumer timeout (received `elapsed` ago) is left for running the
/// task, the margin kept aside; `None` when the broker has no consumer timeout (0).
pub fn time_left(consumer_timeout_secs: u64, elapsed: Duration) -> Option<Duration> {
    if consumer_timeout_secs == 0 {
        return None;
    }
    let consumer = Duration::from_secs(consumer_timeout_secs);
    Some(
        consumer
            .saturating_sub(consumer_margin(consumer))
            .saturating_sub(elapsed),
    )
}

/// Until when cleanup steps may run: half the margin before the consumer timeout, leaving the
/// other half for publishing. `None` when the broker has no consumer timeout.
pub fn cleanup_deadline(consumer_timeout_secs: u64, elapsed: Duration) -> Option<Instant> {
    if consumer_timeout_secs == 0 {
        return None;
    }
    let consumer = Duration::from_secs(consumer_timeout_secs);
    let left = consumer
        .saturating_sub(consumer_margin(consumer) / 2)
        .saturating_sub(elapsed);
    Some(Instant::now() + left)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_time_is_capped_below_the_consumer_timeout() {
        let secs = Duration::from_secs;
        assert_eq!(
            task_budget(600, 1800, secs(10)),
            Budget {
                limit: secs(600),
                capped: false
            }
        );
        // 1800 s minus the 60 s margin minus the 100 s already spent cloning.
        assert_eq!(
            task_budget(3600, 1800, secs(100)),
            Budget {
                limit: secs(1640),
                capped: true
            }
        );
        // Short timeouts keep a quarter as margin.
        assert_eq!(
            task_budget(30, 8, Duration::ZERO),
            Budget {
                limit: secs(6),
                capped: true
            }
        );
        assert_eq!(
            task_budget(3600, 0, secs(5000)),
            Budget {
                limit: secs(3600),
                capped: false
            },
            "0: the broker has no consumer timeout"
        );
        assert_eq!(task_budget(30, 8, secs(20)).limit, Duration::ZERO);
    }
}
