//! Each database-backed sink's handler called directly, as the consume loop calls it
//! (`Handler::handle` with an `Incoming` and a `taskbot::testing::Recorder` for the delivery),
//! without a broker: the PostgreSQL sink against the real PostgreSQL (a database per test), the
//! ResultsDB sink against it and the ResultsDB double. What the broker adds (queues, redelivery,
//! dead-letter queues) is tested in sinks.rs, store.rs and resultsdb.rs.

mod support;

use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use serde_json::json;
use taskbot::amqp::{Disposition, Handler, Incoming};
use taskbot::config::PostgresConfig;
use taskbot::messages::{JobState, Message, Outcome};
use taskbot::testing::Recorder;
use taskbot::Shutdown;
use taskbot_reporter::postgres::{ResultsHandler, StatusHandler};
use taskbot_reporter::resultsdb::{ResultsDb, ResultsDbSink};
use uuid::Uuid;

use support::fake_resultsdb::{FakeResultsDb, Fault, ALL_OUTCOMES};
use support::{job, result, status, time, TestDb};

/// A pool on `url`, as the reporter makes it.
fn pool(url: &str) -> Pool {
    let config = PostgresConfig {
        url: url.into(),
        ..PostgresConfig::default()
    };
    taskbot_reporter::db::connect_pool(&config).expect("a valid URL")
}

/// A pool on `db`, its schema migrated as the reporter does before it consumes.
async fn migrated(db: &TestDb) -> Pool {
    let pool = pool(&db.url);
    taskbot::store::migrate(&pool).await.expect("migrate");
    pool
}

/// Handle one delivery of `body` with routing key `key`, checking that the handler published
/// nothing itself (only the fedora-messaging sink does).
async fn deliver(handler: &dyn Handler, key: &str, body: Vec<u8>) -> Disposition {
    let ctx = Recorder::new();
    let disposition = handler.handle(Incoming::new(key, body), &ctx).await;
    assert!(ctx.published().is_empty(), "{:?}", ctx.published());
    disposition
}

fn done() -> Disposition {
    Disposition::Done(Vec::new())
}

fn dead_letter_reason(d: Disposition) -> String {
    match d {
        Disposition::DeadLetter(reason) => reason,
        other => panic!("expected DeadLetter, got {other:?}"),
    }
}

fn retry_reason(d: Disposition) -> String {
    match d {
        Disposition::Retry(reason) => reason,
        other => panic!("expected Retry, got {other:?}"),
    }
}

#[tokio::test]
async fn the_postgres_sink_stores_a_result_once_and_dead_letters_what_is_no_result() {
    let db = TestDb::create().await;
    let handler = ResultsHandler {
        pool: migrated(&db).await,
    };
    let job = job("xchat-0.5-1.fc20");
    let res = result(&job, "dist.rpmlint", Outcome::Failed);
    // Twice, as after a redelivery: the second finds the row and changes nothing.
    for _ in 0..2 {
        assert_eq!(
            deliver(&handler, &res.routing_key(), res.to_json()).await,
            done()
        );
    }
    let reason = dead_letter_reason(deliver(&handler, "result.PASSED.x", b"{junk".to_vec()).await);
    assert!(reason.contains("not valid JSON"), "{reason}");

    let client = db.client().await;
    let rows = client
        .query(
            "SELECT result_id, outcome, item, note, data, finished_at FROM results WHERE job_id = $1",
            &[&job.job_id],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 1, "one row for a result delivered twice");
    let row = &rows[0];
    assert_eq!(row.get::<_, Uuid>(0), res.result_id);
    assert_eq!(row.get::<_, String>(1), "FAILED");
    assert_eq!(row.get::<_, String>(2), "xchat-0.5-1.fc20");
    assert_eq!(row.get::<_, Option<String>>(3), res.note);
    assert_eq!(
        row.get::<_, serde_json::Value>(4),
        json!({"errors": 5, "koji:task_id": "1234567", "checked": ["spec", "rpm"]})
    );
    assert_eq!(row.get::<_, DateTime<Utc>>(5), res.finished_at);
}

#[tokio::test]
async fn the_postgres_sink_keeps_every_status_in_the_history_and_a_finished_job_finished() {
    let db = TestDb::create().await;
    let handler = StatusHandler {
        pool: migrated(&db).await,
    };
    let job = job("xchat-0.5-1.fc20");
    let queued = status(&job, JobState::Queued, time(-30));
    let running = status(&job, JobState::Running, time(-20));
    let done_status = status(&job, JobState::Done, time(-10));
    // Late statuses after `done`: `running` from before it, and `reporting` stamped after it (a
    // host whose clock runs ahead). Both go into the history; neither reopens the job.
    let reporting_from_skewed_clock = status(&job, JobState::Reporting, time(60));
    for s in [
        &queued,
        &queued,
        &done_status,
        &done_status,
        &running,
        &running,
        &reporting_from_skewed_clock,
    ] {
        assert_eq!(
            deliver(&handler, &s.routing_key(), s.to_json()).await,
            done()
        );
    }
    let reason = dead_letter_reason(
        deliver(
            &handler,
            "job.running",
            br#"{"schema":"taskbot.result.v1"}"#.to_vec(),
        )
        .await,
    );
    assert!(
        reason.contains("expected schema taskbot.job-status.v1"),
        "{reason}"
    );

    let client = db.client().await;
    let job_row = client
        .query_one(
            "SELECT state, updated_at FROM jobs WHERE job_id = $1",
            &[&job.job_id],
        )
        .await
        .unwrap();
    assert_eq!(job_row.get::<_, String>(0), "done");
    assert_eq!(job_row.get::<_, DateTime<Utc>>(1), done_status.at);
    let history: Vec<(Uuid, String, DateTime<Utc>)> = client
        .query(
            "SELECT status_id, state, at FROM job_events WHERE job_id = $1 ORDER BY at",
            &[&job.job_id],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let expected: Vec<_> = [
        &queued,
        &running,
        &done_status,
        &reporting_from_skewed_clock,
    ]
    .iter()
    .map(|s| (s.status_id, s.state.to_string(), s.at))
    .collect();
    assert_eq!(history, expected);
}

#[tokio::test]
async fn the_postgres_sink_retries_while_the_database_is_unreachable() {
    let unreachable = pool("postgres://postgres@127.0.0.1:1/nowhere");
    let job = job("xchat-0.5-1.fc20");
    let res = result(&job, "dist.rpmlint", Outcome::Passed);
    let results = ResultsHandler {
        pool: unreachable.clone(),
    };
    let reason = retry_reason(deliver(&results, &res.routing_key(), res.to_json()).await);
    assert!(
        reason.starts_with(&format!("cannot store result {}: ", res.result_id)),
        "{reason}"
    );
    let statuses = StatusHandler { pool: unreachable };
    let s = status(&job, JobState::Running, time(0));
    let reason = retry_reason(deliver(&statuses, &s.routing_key(), s.to_json()).await);
    assert!(
        reason.starts_with(&format!("cannot store status {}", s.status_id)),
        "{reason}"
    );
}

/// A ResultsDB sink posting to `resultsdb` (1 s timeout, an auth header, a job page template),
/// recording deliveries in `db`.
async fn resultsdb_sink(db: &TestDb, resultsdb: &FakeResultsDb) -> ResultsDbSink {
    let server = ResultsDb::new(
        &resultsdb.api_url,
        Duration::from_secs(1),
        Some("Authorization: Bearer s3cret"),
    )
    .unwrap();
    ResultsDbSink::new(
        migrated(db).await,
        server,
        Some("https://taskbot.example/jobs/{job_id}".into()),
        1,
        Shutdown::new(std::future::pending()),
    )
}

/// `resultsdb_id` of the recorded delivery of `id`, if one is recorded.
async fn recorded_delivery(db: &TestDb, id: Uuid) -> Option<Option<i64>> {
    db.client()
        .await
        .query_opt(
            "SELECT resultsdb_id FROM resultsdb_deliveries WHERE result_id = $1",
            &[&id],
        )
        .await
        .unwrap()
        .map(|r| r.get(0))
}

#[tokio::test]
async fn the_resultsdb_sink_posts_a_result_once_and_records_resultsdbs_id() {
    let resultsdb = FakeResultsDb::start(ALL_OUTCOMES).await;
    let db = TestDb::create().await;
    let sink = resultsdb_sink(&db, &resultsdb).await;
    let job = job("xchat-0.5-1.fc20");
    let res = result(&job, "dist.rpmlint", Outcome::NeedsInspection);
    // A redelivery after it was posted finds the delivery recorded and posts nothing.
    for _ in 0..2 {
        assert_eq!(
            deliver(&sink, &res.routing_key(), res.to_json()).await,
            done()
        );
    }
    let requests = resultsdb.requests();
    assert_eq!(requests.len(), 1, "posted once: {requests:#?}");
    assert_eq!(
        (requests[0].method.as_str(), requests[0].status),
        ("POST", 201)
    );
    assert_eq!(requests[0].authorization.as_deref(), Some("Bearer s3cret"));
    assert_eq!(
        requests[0].body,
        taskbot_reporter::resultsdb::payload(
            &res,
            Some(&format!("https://taskbot.example/jobs/{}", job.job_id))
        )
    );
    let stored = resultsdb.stored();
    assert_eq!(stored.len(), 1);
    assert_eq!(
        recorded_delivery(&db, res.result_id).await,
        Some(stored[0]["id"].as_i64()),
        "ResultsDB's id recorded"
    );
}

#[tokio::test]
async fn the_resultsdb_sink_retries_an_unavailable_resultsdb_then_posts_once() {
    let resultsdb = FakeResultsDb::start(ALL_OUTCOMES).await;
    resultsdb.fail_next(Fault::Hang(Duration::from_secs(5)));
    resultsdb.fail_next(Fault::Status(503));
    let db = TestDb::create().await;
    let sink = resultsdb_sink(&db, &resultsdb).await;
    let res = result(&job("ansible-1.8.3-1.el7"), "dist.rpmlint", Outcome::Passed);
    let reason = retry_reason(deliver(&sink, &res.routing_key(), res.to_json()).await);
    assert!(
        reason.contains("ResultsDB did not answer within 1 s"),
        "{reason}"
    );
    let reason = retry_reason(deliver(&sink, &res.routing_key(), res.to_json()).await);
    assert!(reason.contains("ResultsDB answered HTTP 503"), "{reason}");
    assert_eq!(recorded_delivery(&db, res.result_id).await, None);
    assert_eq!(
        deliver(&sink, &res.routing_key(), res.to_json()).await,
        done()
    );
    let statuses: Vec<u16> = resultsdb.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [0, 503, 201], "hung, unavailable, then accepted");
    assert_eq!(resultsdb.stored().len(), 1);
    assert!(recorded_delivery(&db, res.result_id).await.is_some());
}

#[tokio::test]
async fn the_resultsdb_sink_dead_letters_a_refused_result_with_the_servers_message() {
    // A deployment without the ABORTED extra outcome refuses ABORTED results with HTTP 400.
    let resultsdb =
        FakeResultsDb::start(&["PASSED", "INFO", "FAILED", "NEEDS_INSPECTION", "CRASHED"]).await;
    let db = TestDb::create().await;
    let sink = resultsdb_sink(&db, &resultsdb).await;
    let res = result(&job("xchat-0.5-1.fc20"), "dist.abicheck", Outcome::Aborted);
    let reason = dead_letter_reason(deliver(&sink, &res.routing_key(), res.to_json()).await);
    assert_eq!(
        reason,
        taskbot_reporter::resultsdb::refused_reason(
            &res,
            400,
            "outcome must be one of [\"PASSED\", \"INFO\", \"FAILED\", \"NEEDS_INSPECTION\", \
             \"CRASHED\"]"
        )
    );
    assert_eq!(recorded_delivery(&db, res.result_id).await, None);
    assert_eq!(resultsdb.requests().len(), 1);
    // A result ResultsDB would refuse for sure is not even posted.
    let mut unnamed = res.clone();
    unnamed.testcase = " ".into();
    let reason =
        dead_letter_reason(deliver(&sink, &unnamed.routing_key(), unnamed.to_json()).await);
    assert!(
        reason.ends_with("has an empty testcase (ResultsDB requires a name)"),
        "{reason}"
    );
    assert_eq!(
        resultsdb.requests().len(),
        1,
        "not retried, nothing more posted"
    );
}
