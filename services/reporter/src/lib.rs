//! The `reporter` service: the end of the pipeline. It keeps every result and every job status
//! in PostgreSQL (results, each job's current state, each job's full history) and forwards results
//! to ResultsDB, where Fedora's tools look for them.
//!
//! Two consumers run in one process: results (`<ns>.reporter.results`) and job statuses
//! (`<ns>.reporter.status`). Both acknowledge a message only once what it says is committed to
//! PostgreSQL (and, for results, accepted by ResultsDB when one is configured), so nothing is
//! lost when the database or ResultsDB is down: the message waits in its queue.

pub mod db;
pub mod resultsdb;

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use taskbot::amqp::{self, Backoff, ConsumerSpec, Disposition, Handler, Incoming, Publisher};
use taskbot::messages::{JobStatus, Message, TaskResult};
use taskbot::{Config, Shutdown, Topology};

use crate::db::StoreError;
use crate::resultsdb::{PostOutcome, ResultsDb};

/// Pause before a delivery that failed transiently (database or ResultsDB down) is handed back
/// to its queue and tried again. Short enough that an outage ending is noticed quickly, long
/// enough not to spin.
pub const RETRY_DELAY: Duration = Duration::from_secs(2);

/// An error with its causes on one line (library errors often keep the useful part, such as the
/// server's message or "connection refused", in their source chain).
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Decode a result, refusing what cannot be stored or posted. The error is a dead-letter reason.
pub fn decode_result(body: &[u8]) -> Result<TaskResult, String> {
    let result = TaskResult::from_json(body).map_err(|e| e.to_string())?;
    if result.testcase.trim().is_empty() {
        return Err(format!(
            "result {} has an empty testcase (ResultsDB requires a name)",
            result.result_id
        ));
    }
    Ok(result)
}

/// Decode a job status, refusing one whose job id disagrees with the job it carries: storing it
/// would file the history under one job and the job's details under another.
pub fn decode_status(body: &[u8]) -> Result<JobStatus, String> {
    let status = JobStatus::from_json(body).map_err(|e| e.to_string())?;
    if status.job_id != status.job.job_id {
        return Err(format!(
            "status {} is for job {} but carries job {}",
            status.status_id, status.job_id, status.job.job_id
        ));
    }
    Ok(status)
}

/// What to do with a message whose database write failed: dead-letter it when its content is the
/// cause (retrying would loop forever), else retry. Nothing is acked before it is committed.
pub fn store_failure(what: &str, err: &StoreError) -> Disposition {
    if err.is_caused_by_data() {
        Disposition::DeadLetter(format!("PostgreSQL refused {what}: {err}"))
    } else {
        Disposition::Retry(format!("cannot store {what}: {err}"))
    }
}

/// The dead-letter reason for a result ResultsDB refused. Says that the row exists, so whoever
/// reads the dead-letter queue knows only the ResultsDB copy is missing, and that replaying the
/// message (once the cause is fixed) posts it.
pub fn refused_reason(result: &TaskResult, status: u16, message: &str) -> String {
    format!(
        "ResultsDB refused result {} (HTTP {status}): {message} [the result is stored in \
         PostgreSQL as results row {}, not marked as posted; replay this message once the cause \
         is fixed to post it]",
        result.result_id, result.result_id
    )
}

/// Stores results and forwards them to ResultsDB.
pub struct ResultsHandler {
    pub pool: Pool,
    /// `None` when no ResultsDB is configured: results are only stored.
    pub resultsdb: Option<ResultsDb>,
}

impl ResultsHandler {
    /// Handle one delivery: decode, store, post if not posted yet.
    pub async fn process(&self, body: &[u8]) -> Disposition {
        let result = match decode_result(body) {
            Ok(r) => r,
            Err(reason) => return Disposition::DeadLetter(reason),
        };
        let what = format!("result {}", result.result_id);
        let mut client = match self.pool.get().await {
            Ok(c) => c,
            Err(err) => return store_failure(&what, &StoreError::from(err)),
        };
        match db::insert_result(&client, &result).await {
            Ok(true) => tracing::info!(result_id = %result.result_id, job_id = %result.job_id,
                testcase = %result.testcase, outcome = %result.outcome, item = %result.item,
                arch = %result.arch, "result stored"),
            Ok(false) => {
                tracing::info!(result_id = %result.result_id, "result already stored (redelivery)")
            }
            Err(err) => return store_failure(&what, &err),
        }
        let Some(resultsdb) = &self.resultsdb else {
            return Disposition::Done(Vec::new());
        };
        // The row stays locked until the post is recorded, so a concurrent copy of this message
        // (here or in another reporter) waits and then finds it posted, instead of posting twice.
        let tx = match client.transaction().await {
            Ok(tx) => tx,
            Err(err) => return store_failure(&what, &StoreError::from(err)),
        };
        let stored = match db::lock_result(&tx, result.result_id).await {
            Ok(Some(stored)) => stored,
            Ok(None) => {
                return Disposition::Retry(format!(
                    "{what} vanished from the database after it was stored"
                ))
            }
            Err(err) => return store_failure(&what, &err),
        };
        if let Some(posted_at) = stored.resultsdb_posted_at {
            tracing::info!(result_id = %result.result_id, resultsdb_id = ?stored.resultsdb_id,
                %posted_at, "result already in ResultsDB");
            return Disposition::Done(Vec::new());
        }
        // Post the stored version: if an earlier copy with other content was stored first, it is
        // the one PostgreSQL keeps, and ResultsDB must agree with it.
        let payload = resultsdb::payload(&stored.result);
        match resultsdb.post(&payload).await {
            PostOutcome::Posted { id } => {
                if id.is_none() {
                    tracing::warn!(result_id = %result.result_id, "ResultsDB accepted the result but its answer had no id");
                }
                let recorded = async {
                    db::mark_posted(&tx, result.result_id, id).await?;
                    tx.commit().await.map_err(StoreError::from)
                }
                .await;
                match recorded {
                    Ok(()) => {
                        tracing::info!(result_id = %result.result_id, resultsdb_id = ?id, "result posted to ResultsDB");
                        Disposition::Done(Vec::new())
                    }
                    // ResultsDB has no idempotency key, so the retry will post a second copy;
                    // the alternative, acking, could lose the record that the result was posted.
                    Err(err) => {
                        tracing::error!(result_id = %result.result_id, error = %err,
                            "result posted to ResultsDB but recording that failed; it will be posted again");
                        Disposition::Retry(format!(
                            "{what} was posted to ResultsDB but recording that failed: {err}"
                        ))
                    }
                }
            }
            PostOutcome::Retry(reason) => Disposition::Retry(format!("{what}: {reason}")),
            PostOutcome::Refused { status, message } => {
                Disposition::DeadLetter(refused_reason(&stored.result, status, &message))
            }
        }
    }
}

#[async_trait::async_trait]
impl Handler for ResultsHandler {
    async fn handle(&self, incoming: Incoming, _publisher: &Publisher) -> Disposition {
        self.process(&incoming.body).await
    }
}

/// Records job statuses: each job's current state and its full history.
pub struct StatusHandler {
    pub pool: Pool,
}

impl StatusHandler {
    pub async fn process(&self, body: &[u8]) -> Disposition {
        let status = match decode_status(body) {
            Ok(s) => s,
            Err(reason) => return Disposition::DeadLetter(reason),
        };
        let what = format!("status {} of job {}", status.status_id, status.job_id);
        let mut client = match self.pool.get().await {
            Ok(c) => c,
            Err(err) => return store_failure(&what, &StoreError::from(err)),
        };
        match db::record_status(&mut client, &status).await {
            Ok(write) => {
                tracing::info!(job_id = %status.job_id, state = %status.state, service = %status.service,
                    new_event = write.new_event, job_updated = write.job_updated, "job status recorded");
                Disposition::Done(Vec::new())
            }
            Err(err) => store_failure(&what, &err),
        }
    }
}

#[async_trait::async_trait]
impl Handler for StatusHandler {
    async fn handle(&self, incoming: Incoming, _publisher: &Publisher) -> Disposition {
        self.process(&incoming.body).await
    }
}

/// Migrate the schema, waiting (with back-off) for the database to be reachable. Returns
/// `Ok(false)` if shutdown came first, and an error only for failures waiting cannot fix (a
/// migration script PostgreSQL refuses, a schema newer than this reporter).
pub async fn prepare_database(
    pool: &Pool,
    database: &str,
    max_backoff_secs: u64,
    shutdown: &mut Shutdown,
) -> anyhow::Result<bool> {
    let mut backoff = Backoff::new(max_backoff_secs);
    loop {
        if shutdown.is_triggered() {
            return Ok(false);
        }
        match db::migrate(pool).await {
            Ok(applied) => {
                tracing::info!(
                    database,
                    applied,
                    version = db::MIGRATIONS.len(),
                    "database schema up to date"
                );
                return Ok(true);
            }
            Err(err) if err.is_transient() => {
                let wait = backoff.next_delay();
                tracing::warn!(database, error = %err, retry_in_ms = wait.as_millis() as u64,
                    "PostgreSQL is not reachable yet; waiting for it before consuming");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.wait() => return Ok(false),
                }
            }
            Err(err) => {
                anyhow::bail!("cannot prepare the schema of database {database}: {err}")
            }
        }
    }
}

/// Run until `shutdown`: prepare the database, then consume results and statuses.
pub async fn run(config: Config, mut shutdown: Shutdown) -> anyhow::Result<()> {
    let pool = db::connect_pool(&config.postgres)?;
    let database = db::database_name(&config.postgres.url);
    // Parse the ResultsDB URL before waiting for anything, so a typo fails the start at once.
    let resultsdb = match &config.reporter.resultsdb_url {
        Some(url) => {
            let rdb = ResultsDb::new(
                url,
                Duration::from_secs(config.reporter.resultsdb_timeout_secs.max(1)),
            )?;
            tracing::info!(url = %rdb.results_url(), "results will be posted to ResultsDB");
            Some(rdb)
        }
        None => {
            tracing::info!("no reporter.resultsdb_url: results are stored in PostgreSQL only");
            None
        }
    };
    if !prepare_database(
        &pool,
        &database,
        config.amqp.reconnect_max_secs,
        &mut shutdown,
    )
    .await?
    {
        tracing::info!("shutdown requested before the database was ready");
        return Ok(());
    }

    let topology = Topology::new(&config.amqp.namespace, &config.arches);
    // Both consumers share the pool and each handler holds one connection at a time, so half the
    // pool each keeps them from waiting on each other.
    let concurrency = (config.postgres.pool_size / 2).max(1);
    let results = ConsumerSpec {
        queue: topology.reporter_results_queue(),
        name: "taskbot-reporter-results".into(),
        concurrency,
        retry_delay: RETRY_DELAY,
    };
    let statuses = ConsumerSpec {
        queue: topology.reporter_status_queue(),
        name: "taskbot-reporter-status".into(),
        concurrency,
        retry_delay: RETRY_DELAY,
    };
    let results_handler = Arc::new(ResultsHandler {
        pool: pool.clone(),
        resultsdb,
    });
    let status_handler = Arc::new(StatusHandler { pool: pool.clone() });
    tokio::join!(
        amqp::consume(
            &config.amqp,
            &topology,
            results,
            results_handler,
            shutdown.clone()
        ),
        amqp::consume(
            &config.amqp,
            &topology,
            statuses,
            status_handler,
            shutdown.clone()
        ),
    );
    pool.close();
    tracing::info!("reporter stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use std::collections::BTreeMap;
    use taskbot::messages::{Environment, JobRequest, JobState, Outcome, TaskRef};

    fn job() -> JobRequest {
        let task = TaskRef {
            name: "rpmlint".into(),
            repo: "https://git.example/rpmlint.git".into(),
            git_ref: "main".into(),
        };
        JobRequest {
            job_id: JobRequest::derive_id("e", "r", &task, "x-1-1", "x86_64", &BTreeMap::new()),
            event_id: "e".into(),
            event_topic: "t".into(),
            rule: "r".into(),
            task,
            item: "x-1-1".into(),
            item_type: "koji_build".into(),
            arch: "x86_64".into(),
            args: BTreeMap::new(),
            priority: 0,
            environment: Environment::Local,
            destructive: false,
            created_at: Utc::now(),
        }
    }

    #[test]
    fn malformed_results_are_refused_with_a_reason() {
        let err = decode_result(b"{not json").unwrap_err();
        assert!(err.contains("not valid JSON"), "{err}");
        let status = JobStatus::new(&job(), JobState::Running, "s", None);
        let err = decode_result(&status.to_json()).unwrap_err();
        assert!(err.contains("expected schema taskbot.result.v1"), "{err}");
        let mut result = TaskResult::crashed(&job(), "runner", "boom");
        result.testcase = "  ".into();
        let err = decode_result(&result.to_json()).unwrap_err();
        assert!(err.contains("empty testcase"), "{err}");
        result.testcase = "dist.rpmlint".into();
        assert_eq!(decode_result(&result.to_json()).unwrap(), result);
    }

    #[test]
    fn status_must_agree_with_its_job() {
        let mut status = JobStatus::new(&job(), JobState::Running, "s", None);
        assert_eq!(decode_status(&status.to_json()).unwrap(), status);
        status.job_id = uuid::Uuid::new_v4();
        let err = decode_status(&status.to_json()).unwrap_err();
        assert!(err.contains("carries job"), "{err}");
        assert!(decode_status(b"[]").is_err());
    }

    #[test]
    fn refusal_reason_quotes_the_server_and_says_the_row_exists() {
        let mut result = TaskResult::crashed(&job(), "runner", "boom");
        result.outcome = Outcome::Aborted;
        let reason = refused_reason(&result, 400, "outcome must be one of ...");
        assert!(
            reason.contains("(HTTP 400): outcome must be one of ..."),
            "{reason}"
        );
        assert!(reason.contains("stored in PostgreSQL"), "{reason}");
        assert!(reason.contains(&result.result_id.to_string()), "{reason}");
    }

    #[test]
    fn error_chain_includes_causes_once() {
        #[derive(Debug)]
        struct Outer(std::io::Error);
        impl std::fmt::Display for Outer {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("db error")
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let err = Outer(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "connection refused",
        ));
        assert_eq!(error_chain(&err), "db error: connection refused");
    }
}
