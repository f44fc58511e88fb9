//! PostgreSQL: the reporter's schema, its migrations, and the writes the handlers make.
//!
//! Every write is idempotent because delivery is at-least-once: a redelivered result or status
//! hits `ON CONFLICT DO NOTHING` on its own id instead of making a second row.
//!
//! The tables live in the connection's default `search_path` (normally `public`), so an operator
//! chooses the place by choosing the database (and tests get one database each).

use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::{Object, Pool, PoolError, Transaction};
use taskbot::config::PostgresConfig;
use taskbot::messages::{JobState, JobStatus, TaskResult};
use uuid::Uuid;

/// The schema, one SQL script per version, applied in order. Never edit a script once released:
/// add a new one, since deployed databases have already run the old ones.
pub const MIGRATIONS: &[&str] = &[
    // v1: results, the latest state of each job, and each job's full history.
    r#"
    CREATE TABLE results (
        result_id           uuid PRIMARY KEY,
        job_id              uuid NOT NULL,
        testcase            text NOT NULL,
        outcome             text NOT NULL,
        item                text NOT NULL,
        item_type           text NOT NULL,
        arch                text NOT NULL,
        note                text,
        log_url             text,
        data                jsonb NOT NULL DEFAULT '{}'::jsonb,
        task_name           text NOT NULL,
        task_repo           text NOT NULL,
        task_ref            text NOT NULL,
        event_id            text NOT NULL,
        rule                text NOT NULL,
        runner              text NOT NULL,
        finished_at         timestamptz NOT NULL,
        stored_at           timestamptz NOT NULL DEFAULT now(),
        -- Set once ResultsDB accepted the result; NULL means "still to post" (or never, when
        -- no ResultsDB is configured).
        resultsdb_posted_at timestamptz,
        resultsdb_id        bigint
    );
    CREATE INDEX results_job_id_idx ON results (job_id);
    CREATE INDEX results_item_idx ON results (item);
    CREATE INDEX results_testcase_idx ON results (testcase);

    CREATE TABLE jobs (
        job_id      uuid PRIMARY KEY,
        state       text NOT NULL,
        item        text NOT NULL,
        item_type   text NOT NULL,
        arch        text NOT NULL,
        task_name   text NOT NULL,
        task_repo   text NOT NULL,
        task_ref    text NOT NULL,
        rule        text NOT NULL,
        event_id    text NOT NULL,
        event_topic text NOT NULL,
        created_at  timestamptz NOT NULL,
        -- The `at` of the status that set `state` (not when the reporter wrote it), so a status
        -- arriving late can be recognised as older.
        updated_at  timestamptz NOT NULL
    );
    CREATE INDEX jobs_item_idx ON jobs (item);
    CREATE INDEX jobs_state_idx ON jobs (state);

    CREATE TABLE job_events (
        status_id uuid PRIMARY KEY,
        job_id    uuid NOT NULL REFERENCES jobs (job_id),
        state     text NOT NULL,
        at        timestamptz NOT NULL,
        service   text NOT NULL,
        detail    text
    );
    CREATE INDEX job_events_job_id_idx ON job_events (job_id, at);
    "#,
    // v2: the ResultsDB sink records its deliveries in its own table, so it works (and dedupes
    // redeliveries) whether or not the PostgreSQL sink stored the result, or stored it yet. What
    // v1 recorded in `results` is carried over; those columns are no longer written.
    r#"
    CREATE TABLE resultsdb_deliveries (
        result_id    uuid PRIMARY KEY,
        resultsdb_id bigint,
        posted_at    timestamptz NOT NULL DEFAULT now()
    );
    INSERT INTO resultsdb_deliveries (result_id, resultsdb_id, posted_at)
        SELECT result_id, resultsdb_id, resultsdb_posted_at FROM results
        WHERE resultsdb_posted_at IS NOT NULL;
    "#,
    // v3: an integer id per result, as ResultsDB clients expect (`GET /results/<id>`); existing
    // rows are numbered by the ALTER. Indexes for the api's newest-first listings.
    r#"
    ALTER TABLE results ADD COLUMN id bigserial UNIQUE;
    CREATE INDEX results_finished_at_idx ON results (finished_at);
    CREATE INDEX jobs_created_at_idx ON jobs (created_at);
    "#,
];

/// Key of the advisory lock serialising migrations, so reporters started together do not race
/// to create the same tables. ("taskbot" in ASCII; any constant other tools do not use works.)
const MIGRATION_LOCK_KEY: i64 = 0x0074_6173_6b62_6f74;

/// A database operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No connection could be had: the database is down, unreachable, or refuses us.
    #[error("cannot get a database connection: {}", taskbot::error_chain(.0))]
    Pool(#[from] PoolError),
    #[error("database error: {}", taskbot::error_chain(.0))]
    Query(#[from] tokio_postgres::Error),
    /// A stored row the reporter cannot read back (edited by hand, or by a newer version).
    #[error("unreadable row: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// Whether the message being handled is the cause, so retrying can never succeed: PostgreSQL's
    /// class 22 "data exception" (e.g. a NUL character, which `text` and `jsonb` cannot hold), or
    /// a row we cannot read. Everything else (connection lost, server restarting, lock timeouts,
    /// even bugs in our SQL) is worth retrying: a stuck queue is visible and loses nothing.
    pub fn is_caused_by_data(&self) -> bool {
        match self {
            StoreError::Query(err) => sql_state(err).is_some_and(|code| code.starts_with("22")),
            StoreError::Corrupt(_) => true,
            StoreError::Pool(_) => false,
        }
    }

    /// Whether waiting may help: no connection, or a server-side condition that passes (class 08
    /// connection exception, 53 insufficient resources, 57 operator intervention such as a
    /// restart, 40 transaction rollback), or an I/O error with no SQLSTATE at all.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Pool(_) => true,
            StoreError::Query(err) => match sql_state(err) {
                None => true,
                Some(code) => ["08", "40", "53", "57"]
                    .iter()
                    .any(|class| code.starts_with(class)),
            },
            StoreError::Corrupt(_) => false,
        }
    }
}

fn sql_state(err: &tokio_postgres::Error) -> Option<&str> {
    err.code().map(|c| c.code())
}

/// A pool for `config.url`. Connecting is lazy: this fails only on an invalid URL.
pub fn connect_pool(config: &PostgresConfig) -> anyhow::Result<Pool> {
    taskbot::postgres::connect_pool(
        config,
        &taskbot::postgres::PoolOptions {
            application_name: "taskbot-reporter",
            read_only: false,
            connect_timeout: Duration::from_secs(10),
            // A handler facing a dead database returns Retry instead of hanging.
            wait_timeout: Duration::from_secs(30),
            create_timeout: Duration::from_secs(15),
        },
    )
}

pub use taskbot::postgres::database_name;

/// Bring the schema up to date; returns how many migrations this call applied (0 when another
/// process, or an earlier start, already did).
///
/// Runs in one transaction holding an advisory lock: a second reporter starting at the same
/// moment waits for the first, then finds everything applied. A failing script rolls back
/// entirely, so no database is left half-migrated.
pub async fn migrate(pool: &Pool) -> Result<usize, StoreError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK_KEY])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS taskbot_schema_migrations (
             version    integer PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now()
         )",
    )
    .await?;
    let applied: Vec<i32> = tx
        .query("SELECT version FROM taskbot_schema_migrations", &[])
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    if let Some(newest) = applied.iter().max() {
        if *newest as usize > MIGRATIONS.len() {
            return Err(StoreError::Corrupt(format!(
                "the database is at schema version {newest}, newer than this reporter knows ({}); \
                 run a newer reporter",
                MIGRATIONS.len()
            )));
        }
    }
    let mut count = 0;
    for (index, script) in MIGRATIONS.iter().enumerate() {
        let version = index as i32 + 1;
        if applied.contains(&version) {
            continue;
        }
        tx.batch_execute(script).await?;
        tx.execute(
            "INSERT INTO taskbot_schema_migrations (version, applied_at) VALUES ($1, now())",
            &[&version],
        )
        .await?;
        tracing::info!(version, "schema migration applied");
        count += 1;
    }
    tx.commit().await?;
    Ok(count)
}

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

/// Add a status to the job's history and bring the job's row up to date, in one transaction.
pub async fn record_status(
    client: &mut Object,
    status: &JobStatus,
) -> Result<StatusWrite, StoreError> {
    let job = &status.job;
    let tx = client.transaction().await?;
    let inserted = tx
        .execute(
            "INSERT INTO jobs (job_id, state, item, item_type, arch, task_name, task_repo, \
             task_ref, rule, event_id, event_topic, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
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

    #[test]
    fn database_name_hides_the_rest_of_the_url() {
        assert_eq!(
            database_name("postgres://user:secret@db.example:5432/results"),
            "results"
        );
        assert_eq!(database_name("not a url"), "(default)");
    }
}
