//! The api cannot be exhausted by its callers: oversized and malformed requests are 400s before
//! any query, a query past the statement timeout is cancelled (504), store requests beyond the
//! pool and its queue are refused (503), and readiness answers while store queries are stuck.
//! Against the real PostgreSQL, with a table locked from the test to make store queries block.

mod support;

use std::time::Duration;

use support::{RunningApi, TestDb};
use taskbot::Config;

fn config(db: &TestDb, artifacts: &tempfile::TempDir) -> Config {
    let mut config = taskbot::testing::test_config();
    config.postgres.url = db.url.clone();
    config.api.artifacts_dir = Some(artifacts.path().to_path_buf());
    config
}

/// A session of the test holding `results` locked (every query of the api on it blocks) until
/// dropped or rolled back.
async fn lock_results(db: &TestDb) -> deadpool_postgres::Object {
    let client = db.writer_pool().get().await.unwrap();
    client
        .batch_execute("BEGIN; LOCK TABLE results IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    client
}

/// The api's sessions on this test's database waiting for a lock.
async fn api_sessions_waiting_for_a_lock(db: &TestDb) -> i64 {
    let client = db.writer_pool().get().await.unwrap();
    client
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 \
             AND application_name = 'taskbot-api' AND wait_event_type = 'Lock'",
            &[&db.name()],
        )
        .await
        .unwrap()
        .get(0)
}

/// Wait until `count` api sessions are blocked on the lock (a bound on how long the database
/// may take to get there, not a speed check).
async fn wait_for_blocked_sessions(db: &TestDb, count: i64) {
    for _ in 0..600 {
        if api_sessions_waiting_for_a_lock(db).await == count {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{count} api sessions never blocked on the locked table");
}

#[tokio::test]
async fn thousands_of_filter_keys_are_refused_naming_the_accepted_keys() {
    let db = TestDb::create().await;
    let artifacts = tempfile::tempdir().unwrap();
    let api = RunningApi::start_with(config(&db, &artifacts)).await;
    let query: Vec<String> = (0..5000).map(|i| format!("k{i}=1")).collect();
    let (status, body) = api
        .get(&format!("/api/v2.0/results?{}", query.join("&")))
        .await;
    assert_eq!(status, 400, "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("5000 keys filter result data, at most 10"),
        "{message}"
    );
    for reserved in ["outcome", "testcases:like", "since", "_distinct_on", "page"] {
        assert!(message.contains(reserved), "{reserved} missing: {message}");
    }
    let (status, body) = api
        .get(&format!(
            "/api/v2.0/results/latest?{}",
            query[..11].join("&")
        ))
        .await;
    assert_eq!(status, 400, "{body}");
    // Ten data filters are still a query.
    let (status, body) = api
        .get(&format!("/api/v2.0/results?{}", query[..10].join("&")))
        .await;
    assert_eq!(
        (status, &body["data"]),
        (200, &serde_json::json!([])),
        "{body}"
    );
    api.stop().await;
}

#[tokio::test]
async fn malformed_input_is_a_bad_request_everywhere() {
    let db = TestDb::create().await;
    let artifacts = tempfile::tempdir().unwrap();
    let api = RunningApi::start_with(config(&db, &artifacts)).await;
    let long_value = "x".repeat(taskbot_api::input::MAX_VALUE_BYTES + 1);
    for (path, expected) in [
        ("/api/v2.0/results?a%00b=1".to_string(), "NUL"),
        ("/api/v2.0/results?item=xchat%00".to_string(), "NUL"),
        ("/api/v2.0/results/latest?%00=1".to_string(), "NUL"),
        ("/api/v2.0/testcases?name=a%00".to_string(), "NUL"),
        ("/api/v2.0/testcases/dist%00rpmlint".to_string(), "NUL"),
        ("/api/v1/jobs?item=%00".to_string(), "NUL"),
        ("/api/v1/jobs/x/artifacts/a%00b".to_string(), "NUL"),
        (format!("/api/v2.0/results?item={long_value}"), "too long"),
        ("/api/v2.0/results?:like=x".to_string(), "key name"),
        ("/api/v2.0/results?limit=many".to_string(), "not an integer"),
        (
            "/api/v1/jobs?stat=queued".to_string(),
            "accepted keys are state",
        ),
    ] {
        let (status, body) = api.get(&path).await;
        assert_eq!(status, 400, "{path}: {body}");
        let message = body["message"].as_str().unwrap_or_default();
        assert!(message.contains(expected), "{path}: {message}");
    }
    // An escaped percent sign followed by 00 is just text.
    let (status, body) = api.get("/api/v2.0/results?item=a%2500").await;
    assert_eq!(status, 200, "{body}");
    api.stop().await;
}

#[tokio::test]
async fn a_query_past_the_statement_timeout_is_cancelled_while_readiness_answers() {
    let db = TestDb::create().await;
    let artifacts = tempfile::tempdir().unwrap();
    let mut config = config(&db, &artifacts);
    config.api.statement_timeout_ms = 200;
    let api = RunningApi::start_with(config).await;
    let lock = lock_results(&db).await;
    let (status, body) = api.get("/api/v2.0/results").await;
    assert_eq!(status, 504, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("api.statement_timeout_ms"),
        "{body}"
    );
    let (status, body) = api.get("/readyz").await;
    assert_eq!(status, 200, "readyz while results is locked: {body}");
    // The cancelled query left nothing behind: once the lock is gone, queries answer again.
    lock.batch_execute("ROLLBACK").await.unwrap();
    let (status, body) = api.get("/api/v2.0/results").await;
    assert_eq!(status, 200, "{body}");
    api.stop().await;
}

#[tokio::test]
async fn readiness_answers_while_store_queries_hold_every_connection() {
    let db = TestDb::create().await;
    let artifacts = tempfile::tempdir().unwrap();
    let mut config = config(&db, &artifacts);
    config.postgres.pool_size = 2;
    config.api.max_waiting_requests = 0;
    config.api.statement_timeout_ms = 120_000;
    let api = RunningApi::start_with(config).await;
    let lock = lock_results(&db).await;
    let stuck: Vec<_> = (0..2)
        .map(|_| {
            let url = format!("{}/api/v2.0/results", api.url);
            tokio::spawn(async move { support::get_json(&url).await })
        })
        .collect();
    wait_for_blocked_sessions(&db, 2).await;

    let (status, body) = api.get("/readyz").await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = api.get("/api/v2.0/healthcheck").await;
    assert_eq!(status, 200, "{body}");
    // Both store connections are taken and no request may wait: refused at once, not queued.
    let (status, body) = api.get("/api/v1/job-states").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("api busy"),
        "{body}"
    );
    assert_eq!(
        api_sessions_waiting_for_a_lock(&db).await,
        2,
        "the store queries were still blocked while readiness answered"
    );

    lock.batch_execute("ROLLBACK").await.unwrap();
    for request in stuck {
        let (status, body) = request.await.unwrap();
        assert_eq!(status, 200, "{body}");
    }
    let (status, body) = api.get("/api/v1/job-states").await;
    assert_eq!(status, 200, "{body}");
    api.stop().await;
}
