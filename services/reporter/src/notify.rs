//! Which results the fedora-messaging sink publishes (`reporter.fedora_messaging_notify`):
//! every one, or only a change of outcome (and, if asked, every failure), as the maintainers of
//! the earlier system asked: a message for each passing run of each testcase on each build is
//! noise; a message when something starts or stops failing is news.
//!
//! A result is compared with the latest outcome the sink recorded for the same testcase, item,
//! item type, arch and scenario (the `scenario` data key, e.g. one of upgrade-tests'
//! configurations: one configuration failing while another passes is not a change): "latest" by the results' `finished_at`, so a result arriving late (after a
//! newer one for the same key) is not news and does not become the latest.
//!
//! The decision is recorded with the result's id, in the same transaction as the new latest
//! outcome, *before* the message is published. A result redelivered (the reporter stopped after
//! recording but before its publish was confirmed and the delivery acked) finds its decision and
//! is published again exactly when its first delivery was to be: it is never suppressed just
//! because its own first delivery made its outcome "the previous one". So the sink stays
//! at-least-once; consumers drop duplicates by the `taskbot_result_id` header.

use deadpool_postgres::Pool;
use taskbot::config::FedoraMessagingNotify;
use taskbot::messages::{Outcome, TaskResult};
use taskbot::store::StoreError;

/// What a result is compared with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Previous {
    /// No outcome recorded for its testcase, item, arch and scenario: the first one is a change.
    First,
    /// The latest recorded outcome (as stored, e.g. `PASSED`).
    Was(String),
    /// A result that finished later is already recorded: this one is old news.
    Superseded,
}

/// Whether an outcome is a failure for `changes-and-failures`: anything but PASSED and INFO.
pub fn is_failure(outcome: Outcome) -> bool {
    !matches!(outcome, Outcome::Passed | Outcome::Info)
}

/// Whether a result with `outcome`, compared with `previous`, is published under `mode`.
pub fn should_publish(mode: FedoraMessagingNotify, previous: &Previous, outcome: Outcome) -> bool {
    let changed = match previous {
        Previous::First => true,
        Previous::Was(was) => was != outcome.as_str(),
        Previous::Superseded => false,
    };
    match mode {
        FedoraMessagingNotify::All => true,
        FedoraMessagingNotify::Changes => changed,
        FedoraMessagingNotify::ChangesAndFailures => changed || is_failure(outcome),
    }
}

/// The scenario a result is for, as the change key holds it: its `scenario` data key (a string;
/// any other value as its JSON text), `""` for none.
pub fn scenario_of(result: &TaskResult) -> String {
    match result.data.get("scenario") {
        None | Some(serde_json::Value::Null) => String::new(),
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

/// The class id of the advisory locks taken per testcase, item, arch and scenario (the two-key form, whose
/// key space does not overlap the one-key form of the migrations' lock). "fm" in ASCII.
const LOCK_CLASS: i32 = 0x666d;

/// The sink's record of latest outcomes and of its decisions, in PostgreSQL (schema v5).
#[derive(Clone)]
pub struct ChangeLog {
    pub pool: Pool,
    pub mode: FedoraMessagingNotify,
}

impl ChangeLog {
    /// Decide whether `result` is published, recording the decision (and the new latest outcome)
    /// first; a result already decided gets its recorded decision. Committed before it returns,
    /// so the caller may publish and then ack.
    pub async fn decide(&self, result: &TaskResult) -> Result<bool, StoreError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        // One decision at a time per change key, across reporters: two first
        // results for one key must not both see "no outcome yet". Keyed by the same values as
        // the row, so every result of a key (and each redelivery) takes the same lock.
        let scenario = scenario_of(result);
        let key = serde_json::json!([
            result.testcase,
            result.item,
            result.item_type,
            result.arch,
            scenario
        ])
        .to_string();
        tx.execute(
            "SELECT pg_advisory_xact_lock($1, hashtext($2))",
            &[&LOCK_CLASS, &key],
        )
        .await?;
        if let Some(row) = tx
            .query_opt(
                "SELECT publish FROM fedora_messaging_notices WHERE result_id = $1",
                &[&result.result_id],
            )
            .await?
        {
            tx.commit().await?;
            return Ok(row.get(0));
        }
        let latest = tx
            .query_opt(
                "SELECT outcome, finished_at FROM fedora_messaging_outcomes
                 WHERE testcase = $1 AND item = $2 AND item_type = $3 AND arch = $4
                   AND scenario = $5",
                &[
                    &result.testcase,
                    &result.item,
                    &result.item_type,
                    &result.arch,
                    &scenario,
                ],
            )
            .await?;
        let previous = match latest {
            None => Previous::First,
            Some(row) if result.finished_at < row.get::<_, chrono::DateTime<chrono::Utc>>(1) => {
                Previous::Superseded
            }
            Some(row) => Previous::Was(row.get(0)),
        };
        let publish = should_publish(self.mode, &previous, result.outcome);
        if previous != Previous::Superseded {
            tx.execute(
                "INSERT INTO fedora_messaging_outcomes
                     (testcase, item, item_type, arch, scenario, outcome, result_id,
                      finished_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                 ON CONFLICT (testcase, item, item_type, arch, scenario) DO UPDATE
                 SET outcome = EXCLUDED.outcome, result_id = EXCLUDED.result_id,
                     finished_at = EXCLUDED.finished_at",
                &[
                    &result.testcase,
                    &result.item,
                    &result.item_type,
                    &result.arch,
                    &scenario,
                    &result.outcome.as_str(),
                    &result.result_id,
                    &result.finished_at,
                ],
            )
            .await?;
        }
        let was = match &previous {
            Previous::Was(was) => Some(was.as_str()),
            _ => None,
        };
        tx.execute(
            "INSERT INTO fedora_messaging_notices (result_id, publish, previous_outcome)
             VALUES ($1, $2, $3)",
            &[&result.result_id, &publish, &was],
        )
        .await?;
        tx.commit().await?;
        tracing::debug!(result_id = %result.result_id, ?previous, outcome = %result.outcome,
            publish, mode = self.mode.as_str(), "fedora-messaging notice decided");
        Ok(publish)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use FedoraMessagingNotify::{All, Changes, ChangesAndFailures};

    fn was(outcome: &str) -> Previous {
        Previous::Was(outcome.into())
    }

    #[test]
    fn all_publishes_every_result() {
        for previous in [Previous::First, was("PASSED"), Previous::Superseded] {
            assert!(should_publish(All, &previous, Outcome::Passed));
            assert!(should_publish(All, &previous, Outcome::Failed));
        }
    }

    #[test]
    fn changes_publishes_the_first_outcome_and_each_change_only() {
        assert!(should_publish(Changes, &Previous::First, Outcome::Passed));
        assert!(!should_publish(Changes, &was("PASSED"), Outcome::Passed));
        assert!(should_publish(Changes, &was("PASSED"), Outcome::Failed));
        assert!(!should_publish(Changes, &was("FAILED"), Outcome::Failed));
        assert!(should_publish(Changes, &was("FAILED"), Outcome::Passed));
        assert!(should_publish(
            Changes,
            &was("NEEDS_INSPECTION"),
            Outcome::Crashed
        ));
        assert!(!should_publish(
            Changes,
            &Previous::Superseded,
            Outcome::Failed
        ));
    }

    #[test]
    fn changes_and_failures_adds_every_failure_even_repeated_or_late() {
        let m = ChangesAndFailures;
        assert!(!should_publish(m, &was("PASSED"), Outcome::Passed));
        assert!(!should_publish(m, &was("INFO"), Outcome::Info));
        assert!(should_publish(m, &was("PASSED"), Outcome::Info));
        for failure in [
            Outcome::Failed,
            Outcome::NeedsInspection,
            Outcome::Aborted,
            Outcome::Crashed,
        ] {
            assert!(is_failure(failure));
            assert!(should_publish(m, &was(failure.as_str()), failure));
            assert!(should_publish(m, &Previous::Superseded, failure));
        }
        assert!(!should_publish(m, &Previous::Superseded, Outcome::Passed));
    }
}
