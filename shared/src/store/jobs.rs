//! The job records (`job_records`): each job as it was requested and by whom it was dispatched.
//! The reporter writes one when it accepts a job's `queued` status and marks it dispatched at its
//! `provisioned` status; every sink then checks each result and status against it
//! (docs/security.md, "What binds a result to its job").

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use uuid::Uuid;

use super::StoreError;
use crate::messages::{JobRequest, TaskRef};

/// A job as the reporter first saw it requested.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRecord {
    pub job_id: Uuid,
    pub item: String,
    pub item_type: String,
    pub arch: String,
    pub task: TaskRef,
    pub rule: String,
    pub event_id: String,
    /// The broker user that published the `queued` status.
    pub requested_by: String,
    /// The broker user that published the `provisioned` status, once one was accepted.
    pub dispatched_by: Option<String>,
    pub dispatched_at: Option<DateTime<Utc>>,
}

impl JobRecord {
    /// The record of `job`, requested by `user` and not dispatched yet.
    pub fn requested(job: &JobRequest, user: &str) -> JobRecord {
        JobRecord {
            job_id: job.job_id,
            item: job.item.clone(),
            item_type: job.item_type.clone(),
            arch: job.arch.clone(),
            task: job.task.clone(),
            rule: job.rule.clone(),
            event_id: job.event_id.clone(),
            requested_by: user.to_string(),
            dispatched_by: None,
            dispatched_at: None,
        }
    }
}

const COLUMNS: &str = "job_id, item, item_type, arch, task_name, task_repo, task_ref, rule, \
                       event_id, requested_by, dispatched_by, dispatched_at";

/// The record of job `job_id`, if it was requested.
pub async fn job_record(
    client: &impl GenericClient,
    job_id: Uuid,
) -> Result<Option<JobRecord>, StoreError> {
    let sql = format!("SELECT {COLUMNS} FROM job_records WHERE job_id = $1");
    let Some(row) = client.query_opt(&sql, &[&job_id]).await? else {
        return Ok(None);
    };
    Ok(Some(JobRecord {
        job_id: row.try_get(0)?,
        item: row.try_get(1)?,
        item_type: row.try_get(2)?,
        arch: row.try_get(3)?,
        task: TaskRef {
            name: row.try_get(4)?,
            repo: row.try_get(5)?,
            git_ref: row.try_get(6)?,
        },
        rule: row.try_get(7)?,
        event_id: row.try_get(8)?,
        requested_by: row.try_get(9)?,
        dispatched_by: row.try_get(10)?,
        dispatched_at: row.try_get(11)?,
    }))
}

/// Record `record` unless its job has a record already; returns the job's record either way
/// (the first one wins: a second `queued` status cannot re-describe the job).
pub async fn record_requested(
    client: &impl GenericClient,
    record: &JobRecord,
) -> Result<JobRecord, StoreError> {
    client
        .execute(
            "INSERT INTO job_records (job_id, item, item_type, arch, task_name, task_repo, \
             task_ref, rule, event_id, requested_by) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (job_id) DO NOTHING",
            &[
                &record.job_id,
                &record.item,
                &record.item_type,
                &record.arch,
                &record.task.name,
                &record.task.repo,
                &record.task.git_ref,
                &record.rule,
                &record.event_id,
                &record.requested_by,
            ],
        )
        .await?;
    job_record(client, record.job_id)
        .await?
        .ok_or_else(|| StoreError::Corrupt(format!("job record {} vanished", record.job_id)))
}

/// Mark job `job_id` dispatched by broker user `user` at `at`, unless it already is (a job
/// provisioned again after a crash keeps its first dispatch). Returns whether the job has a
/// record at all.
pub async fn record_dispatched(
    client: &impl GenericClient,
    job_id: Uuid,
    user: &str,
    at: DateTime<Utc>,
) -> Result<bool, StoreError> {
    client
        .execute(
            "UPDATE job_records SET dispatched_by = $2, dispatched_at = $3 \
             WHERE job_id = $1 AND dispatched_by IS NULL",
            &[&job_id, &user, &at],
        )
        .await?;
    Ok(job_record(client, job_id).await?.is_some())
}
