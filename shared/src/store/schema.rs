//! The results store's schema: its tables and the migrations that create them. The reporter
//! applies the migrations at start ([`migrate`]) and is the only writer; the api only reads, and
//! is ready once [`READ_TABLES`] exist. Both take the names from here, so the schema has one
//! owner instead of one service's migrations and another's guesses.
//!
//! The tables live in the connection's default `search_path` (normally `public`), so an operator
//! chooses the place by choosing the database (and tests get one database each).

use deadpool_postgres::Pool;

use super::StoreError;

/// Every result, by `result_id` (and the integer `id` ResultsDB clients use).
pub const RESULTS: &str = "results";
/// Each job's latest state.
pub const JOBS: &str = "jobs";
/// Each job's full history of statuses.
pub const JOB_EVENTS: &str = "job_events";
/// What the ResultsDB sink has delivered.
pub const RESULTSDB_DELIVERIES: &str = "resultsdb_deliveries";
/// Every job the reporter saw requested, and by whom it was dispatched: what binds results and
/// statuses to their job.
pub const JOB_RECORDS: &str = "job_records";
/// The fedora-messaging sink's latest outcome per testcase, item, arch and scenario (the previous outcome
/// it compares a result with under `reporter.fedora_messaging_notify = "changes"`).
pub const FEDORA_MESSAGING_OUTCOMES: &str = "fedora_messaging_outcomes";
/// The fedora-messaging sink's decision per result (publish or not), so a redelivered result gets
/// the decision its first delivery made.
pub const FEDORA_MESSAGING_NOTICES: &str = "fedora_messaging_notices";
/// Which migrations a database has run.
pub const SCHEMA_MIGRATIONS: &str = "taskbot_schema_migrations";

/// The tables the migrations create, [`SCHEMA_MIGRATIONS`] included.
pub const TABLES: &[&str] = &[
    RESULTS,
    JOBS,
    JOB_EVENTS,
    RESULTSDB_DELIVERIES,
    JOB_RECORDS,
    FEDORA_MESSAGING_OUTCOMES,
    FEDORA_MESSAGING_NOTICES,
    SCHEMA_MIGRATIONS,
];

/// The tables the api reads: while one is missing the reporter has not migrated the database
/// yet, and the api is not ready.
pub const READ_TABLES: &[&str] = &[RESULTS, JOBS, JOB_EVENTS];

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
    // v4: the record of each job as requested (its `queued` status, from the rules or the
    // operator's user) and dispatched (its `provisioned` status, from the provisioner's user);
    // the reporter accepts a job's results and statuses only when they agree with it. Jobs
    // stored before are carried over as requested (and dispatched when a `provisioned` status
    // of theirs was recorded), so their late results are still accepted.
    r#"
    CREATE TABLE job_records (
        job_id        uuid PRIMARY KEY,
        item          text NOT NULL,
        item_type     text NOT NULL,
        arch          text NOT NULL,
        task_name     text NOT NULL,
        task_repo     text NOT NULL,
        task_ref      text NOT NULL,
        rule          text NOT NULL,
        event_id      text NOT NULL,
        requested_by  text NOT NULL,
        requested_at  timestamptz NOT NULL DEFAULT now(),
        dispatched_by text,
        dispatched_at timestamptz
    );
    INSERT INTO job_records (job_id, item, item_type, arch, task_name, task_repo, task_ref,
                             rule, event_id, requested_by, dispatched_by, dispatched_at)
        SELECT j.job_id, j.item, j.item_type, j.arch, j.task_name, j.task_repo, j.task_ref,
               j.rule, j.event_id, '(before schema v4)', p.service, p.at
        FROM jobs j
        LEFT JOIN LATERAL (
            SELECT service, at FROM job_events e
            WHERE e.job_id = j.job_id AND e.state = 'provisioned'
            ORDER BY at LIMIT 1
        ) p ON true;
    "#,
    // v5: the fedora-messaging sink's state for publishing changes only: the latest outcome of
    // each testcase on each item and arch (by the result's `finished_at`, so a late result does
    // not count as the latest), and its decision on each result it handled, by result id, so a
    // result redelivered after a crash is published (or not) exactly as first decided.
    r#"
    CREATE TABLE fedora_messaging_outcomes (
        testcase    text NOT NULL,
        item        text NOT NULL,
        item_type   text NOT NULL,
        arch        text NOT NULL,
        outcome     text NOT NULL,
        result_id   uuid NOT NULL,
        finished_at timestamptz NOT NULL,
        PRIMARY KEY (testcase, item, item_type, arch)
    );
    CREATE TABLE fedora_messaging_notices (
        result_id        uuid PRIMARY KEY,
        publish          boolean NOT NULL,
        previous_outcome text,
        decided_at       timestamptz NOT NULL DEFAULT now()
    );
    "#,
    // v6: what each job is declared to report (the rule's `testcases:`, joined by the task
    // file's list when the job starts) and its `scenario:`, so the api can say which testcases
    // of an item are queued or running (`taskbot gate`). The fedora-messaging sink's latest
    // outcomes are kept per scenario too ('' for none), so one configuration of a test does not
    // count as a change of another's.
    r#"
    ALTER TABLE jobs ADD COLUMN testcases text[] NOT NULL DEFAULT '{}',
                     ADD COLUMN scenario text;
    ALTER TABLE fedora_messaging_outcomes ADD COLUMN scenario text NOT NULL DEFAULT '';
    ALTER TABLE fedora_messaging_outcomes DROP CONSTRAINT fedora_messaging_outcomes_pkey;
    ALTER TABLE fedora_messaging_outcomes
        ADD PRIMARY KEY (testcase, item, item_type, arch, scenario);
    "#,
    // v7: prefix searches on items (the dashboard's search box, `/api/v1/jobs?item:like=`,
    // ResultsDB's `item:like=`). A plain b-tree index serves `LIKE 'prefix%'` only under the C
    // collation; `text_pattern_ops` serves it under any, so the search does not read every row.
    r#"
    CREATE INDEX jobs_item_pattern_idx ON jobs (item text_pattern_ops);
    CREATE INDEX results_item_pattern_idx ON results (item text_pattern_ops);
    "#,
];

/// The table recording which [`MIGRATIONS`] a database has run (made before any of them).
const MIGRATIONS_TABLE_DDL: &str = "CREATE TABLE IF NOT EXISTS taskbot_schema_migrations (
             version    integer PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now()
         )";

/// Key of the advisory lock serialising migrations, so reporters started together do not race
/// to create the same tables. ("taskbot" in ASCII; any constant other tools do not use works.)
const MIGRATION_LOCK_KEY: i64 = 0x0074_6173_6b62_6f74;

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
    // Only when missing: a role that may not create tables (the reporter's own, when
    // `taskbot setup-users` made the schema's owner) must still find an up-to-date schema fine.
    let exists: bool = tx
        .query_one(
            "SELECT to_regclass('taskbot_schema_migrations') IS NOT NULL",
            &[],
        )
        .await?
        .get(0);
    if !exists {
        tx.batch_execute(MIGRATIONS_TABLE_DDL)
            .await
            .map_err(not_permitted)?;
    }
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
        tx.batch_execute(script).await.map_err(not_permitted)?;
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

/// A migration refused for want of privilege (SQLSTATE 42501) says who may run it.
fn not_permitted(err: tokio_postgres::Error) -> StoreError {
    if err.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) {
        return StoreError::NotPermitted(format!(
            "{}: the schema needs migrating and this role may not; run `taskbot setup-users` \
             (as the database's administrator), which migrates as the schema's owner",
            crate::error_chain(&err)
        ));
    }
    StoreError::Query(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_named_table_is_created_by_the_migrations() {
        for table in TABLES {
            let created = format!("CREATE TABLE {table} (");
            let created_first = format!("CREATE TABLE IF NOT EXISTS {table} (");
            assert!(
                MIGRATIONS.iter().any(|m| m.contains(&created))
                    || MIGRATIONS_TABLE_DDL.contains(&created_first),
                "no migration creates {table}"
            );
        }
        for table in READ_TABLES {
            assert!(TABLES.contains(table), "{table}");
        }
    }
}
