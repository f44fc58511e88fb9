//! The writes made to the results store, next to the schema they write (the reporter's sinks
//! make them; the api's tests make them too, to read back exactly what the reporter stores).
//!
//! Every write is idempotent because delivery is at-least-once: a redelivered result or status
//! hits `ON CONFLICT DO NOTHING` on its own id instead of making a second row.

use chrono::{DateTime, Utc};
use deadpool_postgres::{Object, Transaction};
use uuid::Uuid;

use super::StoreError;
use crate::messages::{JobState, JobStatus, TaskResult};

/// Store a result unless one with its id exists. Returns whether a row was written.
pub async fn insert_result(client: &Object, result: &TaskResult) -> Result<bool, StoreError> {
    let statement = client
        .prepare_cached(
            "INSERT INTO results (result_id, job_id, testcase, outcome, item, item_type, arch, \
             note, log_url, data, task_name, task_repo, task_ref, event_id, rule, runner, \
             finished_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17) \
             ON CONFLICT (result_id) DO NOTHING",
        )
        .await?;
    let data = serde_json::Value::Object(
        result
            .data
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    );
    let written = client
        .execute(
            &statement,
            &[
                &result.result_id,
                &result.job_id,
                &result.testcase,
                &result.outcome.as_str(),
                &result.item,
                &result.item_type,
                &result.arch,
                &result.note,
                &result.log_url,
                &data,
                &result.task.name,
                &result.task.repo,
                &result.task.git_ref,
                &result.event_id,
                &result.rule,
                &result.runner,
                &result.finished_at,
            ],
        )
        .await?;
    Ok(written == 1)
}

/// A result already delivered to ResultsDB.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    pub resultsdb_id: Option<i64>,
    pub posted_at: DateTime<Utc>,
}

/// Take a lock on a result's ResultsDB delivery until `tx` ends, then say whether it was already
/// delivered. Two reporters (or two copies of one message handled at once) thus cannot both post
/// it: the second waits, then finds the delivery recorded. An advisory lock, because the result
/// may have no row anywhere yet.
pub async fn lock_delivery(
    tx: &Transaction<'_>,
    result_id: Uuid,
) -> Result<Option<Delivery>, StoreError> {
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended($1::text, 7))",
        &[&result_id.to_string()],
    )
    .await?;
    let row = tx
        .query_opt(
            "SELECT resultsdb_id, posted_at FROM resultsdb_deliveries WHERE result_id = $1",
            &[&result_id],
        )
        .await?;
    Ok(match row {
        Some(row) => Some(Delivery {
            resultsdb_id: row.try_get(0)?,
            posted_at: row.try_get(1)?,
        }),
        None => None,
    })
}

/// Record that ResultsDB accepted a result (under `resultsdb_id`, when its answer said).
pub async fn record_delivery(
    tx: &Transaction<'_>,
    result_id: Uuid,
    resultsdb_id: Option<i64>,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO resultsdb_deliveries (result_id, resultsdb_id) VALUES ($1, $2) \
         ON CONFLICT (result_id) DO NOTHING",
        &[&result_id, &resultsdb_id],
    )
    .await?;
    Ok(())
}

/// What recording a status changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusWrite {
    /// The status was not in the history yet (false for a redelivery).
    pub new_event: bool,
    /// The job's current state is now this status's state.
    pub job_updated: bool,
}

/// Whether a status (`new_state` at `new_at`) should replace the job's stored state.
///
/// Statuses come from several services and may arrive out of order (redeliveries, concurrent
/// handling), so the newest by `at` wins, except that a final state (done, crashed) is never
/// replaced by a non-final one: a job that finished does not go back to `running` because that
/// status was late or came from a host whose clock runs ahead. Between two final states the newer
/// wins. `stored_state` is `None` for a state this version does not know (treated as non-final).
pub fn status_supersedes(
    stored_state: Option<JobState>,
    stored_at: DateTime<Utc>,
    new_state: JobState,
    new_at: DateTime<Utc>,
) -> bool {
    let stored_final = stored_state.is_some_and(JobState::is_final);
    match (stored_final, new_state.is_final()) {
        (false, true) => true,
        (true, false) => false,
        _ => new_at >= stored_at,
    }
}

fn parse_state(text: &str) -> Option<JobState> {
    serde_json::from_value(serde_json::Value::String(text.to_string())).ok()
}

/// The testcases a status says its job is declared to report: the rule's (on every status's
/// job request), then those of the task file the status names (`running`), each once.
pub fn declared_testcases(status: &JobStatus) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for testcase in status.job.testcases.iter().chain(&status.testcases) {
        if !out.contains(testcase) {
            out.push(testcase.clone());
        }
    }
    out
}

/// Add a status to the job's history and bring the job's row up to date (its state, and the
/// testcases it is declared to report), in one transaction.
pub async fn record_status(
    client: &mut Object,
    status: &JobStatus,
) -> Result<StatusWrite, StoreError> {
    let job = &status.job;
    let declared = declared_testcases(status);
    let tx = client.transaction().await?;
    let inserted = tx
        .execute(
            "INSERT INTO jobs (job_id, state, item, item_type, arch, task_name, task_repo, \
             task_ref, rule, event_id, event_topic, created_at, updated_at, testcases, \
             scenario) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) \
             ON CONFLICT (job_id) DO NOTHING",
            &[
                &status.job_id,
                &status.state.as_str(),
                &job.item,
                &job.item_type,
                &job.arch,
                &job.task.name,
                &job.task.repo,
                &job.task.git_ref,
                &job.rule,
                &job.event_id,
                &job.event_topic,
                &job.created_at,
                &status.at,
                &declared,
                &job.scenario,
            ],
        )
        .await?
        == 1;
    let job_updated = if inserted {
        true
    } else {
        // The row lock makes this read-decide-write atomic against concurrent statuses of the job.
        let row = tx
            .query_one(
                "SELECT state, updated_at FROM jobs WHERE job_id = $1 FOR UPDATE",
                &[&status.job_id],
            )
            .await?;
        let stored_state: String = row.try_get(0)?;
        let stored_at: DateTime<Utc> = row.try_get(1)?;
        let replace = status_supersedes(
            parse_state(&stored_state),
            stored_at,
            status.state,
            status.at,
        );
        if replace {
            tx.execute(
                "UPDATE jobs SET state = $2, updated_at = $3 WHERE job_id = $1",
                &[&status.job_id, &status.state.as_str(), &status.at],
            )
            .await?;
        }
        if !status.testcases.is_empty() {
            // The task file's list (on the `running` status) joins the rule's, in order, once.
            tx.execute(
                "UPDATE jobs SET testcases = testcases || ARRAY(SELECT t FROM \
                 unnest($2::text[]) WITH ORDINALITY AS u(t, n) \
                 WHERE t <> ALL(testcases) ORDER BY n) WHERE job_id = $1",
                &[&status.job_id, &declared],
            )
            .await?;
        }
        replace
    };
    let new_event = tx
        .execute(
            "INSERT INTO job_events (status_id, job_id, state, at, service, detail) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (status_id) DO NOTHING",
            &[
                &status.status_id,
                &status.job_id,
                &status.state.as_str(),
                &status.at,
                &status.service,
                &status.detail,
            ],
        )
        .await?
        == 1;
    tx.commit().await?;
    Ok(StatusWrite {
        new_event,
        job_updated,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + secs, 0).unwrap()
    }

    #[test]
    fn newer_status_replaces_older_one() {
        assert!(status_supersedes(
            Some(JobState::Queued),
            t(0),
            JobState::Running,
            t(5)
        ));
        assert!(!status_supersedes(
            Some(JobState::Running),
            t(5),
            JobState::Queued,
            t(0)
        ));
        // Equal times: the later arrival wins (both orders are plausible; keep the fresh one).
        assert!(status_supersedes(
            Some(JobState::Cloning),
            t(5),
            JobState::Running,
            t(5)
        ));
    }

    #[test]
    fn final_state_is_never_replaced_by_a_non_final_one() {
        assert!(!status_supersedes(
            Some(JobState::Done),
            t(5),
            JobState::Running,
            t(1)
        ));
        // Even when the late status claims to be newer (another host's clock running ahead).
        assert!(!status_supersedes(
            Some(JobState::Done),
            t(5),
            JobState::Provisioned,
            t(9)
        ));
        // A final state wins over a non-final one whatever its time.
        assert!(status_supersedes(
            Some(JobState::Running),
            t(9),
            JobState::Crashed,
            t(5)
        ));
        // Between final states, the newer wins.
        assert!(status_supersedes(
            Some(JobState::Crashed),
            t(5),
            JobState::Done,
            t(6)
        ));
        assert!(!status_supersedes(
            Some(JobState::Done),
            t(6),
            JobState::Crashed,
            t(5)
        ));
    }

    #[test]
    fn unknown_stored_state_counts_as_non_final() {
        assert_eq!(parse_state("done"), Some(JobState::Done));
        assert_eq!(parse_state("teleporting"), None);
        assert!(status_supersedes(None, t(5), JobState::Running, t(6)));
        assert!(!status_supersedes(None, t(5), JobState::Running, t(4)));
    }
}
