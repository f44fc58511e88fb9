//! Each database-backed sink's handler called directly, as the consume loop calls it
//! (`Handler::handle` with an `Incoming` and a `taskbot::testing::Recorder` for the delivery),
//! without a broker: the PostgreSQL sink against the real PostgreSQL (a database per test), the
//! ResultsDB sink against it and the ResultsDB double. What the broker adds (queues, redelivery,
//! dead-letter queues) is tested in sinks.rs, store.rs and resultsdb.rs.

mod support;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use serde_json::json;
use taskbot::amqp::{Disposition, Handler, Incoming};
use taskbot::config::{AmqpUser, PostgresConfig};
use taskbot::messages::{JobRequest, JobState, Message, Outcome, TaskResult};
use taskbot::testing::Recorder;
use taskbot::{Config, Shutdown};
use taskbot_reporter::binding::Binding;
use taskbot_reporter::postgres::{ResultsHandler, StatusHandler};
use taskbot_reporter::resultsdb::{ResultsDb, ResultsDbSink};
use uuid::Uuid;

use support::fake_resultsdb::{FakeResultsDb, Fault, FEDORA_OUTCOMES, UPSTREAM_OUTCOMES};
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

/// The binding of a local development deployment (every service is `guest`), checking results
/// against the job records in `pool`.
fn binding(pool: &Pool) -> Arc<Binding> {
    Arc::new(Binding::new(&Config::default(), Some(pool.clone())))
}

/// A deployment with a broker user per service (`tb-rules`, `tb-provisioner`, `tb-runner`; the
/// operator stays `guest`), waiting `grace_secs` for unknown jobs.
fn deployment(grace_secs: u64) -> Config {
    let mut config = Config::default();
    for (section, name) in [
        ("rules", "tb-rules"),
        ("provisioner", "tb-provisioner"),
        ("runner", "tb-runner"),
    ] {
        let user = AmqpUser {
            name: name.into(),
            password_file: None,
        };
        config.amqp.users.insert(section.into(), user);
    }
    config.reporter.unknown_job_grace_secs = grace_secs;
    config
}

/// Both PostgreSQL handlers of `deployment` on `pool`.
fn postgres_sink(config: &Config, pool: &Pool) -> (ResultsHandler, StatusHandler) {
    let binding = Arc::new(Binding::new(config, Some(pool.clone())));
    let results = ResultsHandler {
        pool: pool.clone(),
        binding: binding.clone(),
    };
    (
        results,
        StatusHandler {
            pool: pool.clone(),
            binding,
        },
    )
}

/// Handle one delivery of `body` with routing key `key`, published by `guest`, checking that the
/// handler published nothing itself (only the fedora-messaging sink does).
async fn deliver(handler: &dyn Handler, key: &str, body: Vec<u8>) -> Disposition {
    deliver_as(handler, "guest", key, body).await
}

/// [`deliver`], published by broker user `user`.
async fn deliver_as(handler: &dyn Handler, user: &str, key: &str, body: Vec<u8>) -> Disposition {
    let ctx = Recorder::new();
    let incoming = Incoming::new(key, body).with_user_id(user);
    let disposition = handler.handle(incoming, &ctx).await;
    assert!(ctx.published().is_empty(), "{:?}", ctx.published());
    disposition
}

/// `job` requested and dispatched, as the rules service and the provisioner announce it: its
/// `queued` and `provisioned` statuses through the PostgreSQL sink (published by `guest`).
async fn dispatch(pool: &Pool, job: &JobRequest) {
    let statuses = StatusHandler {
        pool: pool.clone(),
        binding: binding(pool),
    };
    for state in [JobState::Queued, JobState::Provisioned] {
        let s = status(job, state, time(-50));
        assert_eq!(
            deliver(&statuses, &s.routing_key(), s.to_json()).await,
            done()
        );
    }
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
    let pool = migrated(&db).await;
    let handler = ResultsHandler {
        pool: pool.clone(),
        binding: binding(&pool),
    };
    let job = job("xchat-0.5-1.fc20");
    dispatch(&pool, &job).await;
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
    let pool = migrated(&db).await;
    let handler = StatusHandler {
        pool: pool.clone(),
        binding: binding(&pool),
    };
    let job = job("xchat-0.5-1.fc20");
    let queued = status(&job, JobState::Queued, time(-30));
    let provisioned = status(&job, JobState::Provisioned, time(-25));
    let running = status(&job, JobState::Running, time(-20));
    let done_status = status(&job, JobState::Done, time(-10));
    // Late statuses after `done`: `running` from before it, and `reporting` stamped after it (a
    // host whose clock runs ahead). Both go into the history; neither reopens the job.
    let reporting_from_skewed_clock = status(&job, JobState::Reporting, time(60));
    for s in [
        &queued,
        &queued,
        &provisioned,
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
        &provisioned,
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
    // The job records are in the database too: checking the result against its job is what
    // waits first.
    let (results, statuses) = postgres_sink(&Config::default(), &unreachable);
    let reason = retry_reason(deliver(&results, &res.routing_key(), res.to_json()).await);
    assert!(
        reason.starts_with(&format!(
            "cannot check the job of result {}: ",
            res.result_id
        )),
        "{reason}"
    );
    let s = status(&job, JobState::Running, time(0));
    let reason = retry_reason(deliver(&statuses, &s.routing_key(), s.to_json()).await);
    assert!(
        reason.starts_with(&format!(
            "cannot check the job of running status {}",
            s.status_id
        )),
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
    let pool = migrated(db).await;
    ResultsDbSink::new(
        pool.clone(),
        server,
        Some("https://taskbot.example/jobs/{job_id}".into()),
        fedora_profile(),
        1,
        Shutdown::new(std::future::pending()),
        binding(&pool),
    )
}

fn fedora_profile() -> taskbot::outcomes::OutcomeMap {
    taskbot::outcomes::OutcomeProfile::Named("fedora".into())
        .resolve()
        .unwrap()
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
    let resultsdb = FakeResultsDb::start(FEDORA_OUTCOMES).await;
    let db = TestDb::create().await;
    let sink = resultsdb_sink(&db, &resultsdb).await;
    let job = job("xchat-0.5-1.fc20");
    dispatch(&sink.pool, &job).await;
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
            Some(&format!("https://taskbot.example/jobs/{}", job.job_id)),
            &fedora_profile(),
        )
        .unwrap()
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
    let resultsdb = FakeResultsDb::start(FEDORA_OUTCOMES).await;
    resultsdb.fail_next(Fault::Hang(Duration::from_secs(5)));
    resultsdb.fail_next(Fault::Status(503));
    let db = TestDb::create().await;
    let sink = resultsdb_sink(&db, &resultsdb).await;
    let job = job("ansible-1.8.3-1.el7");
    dispatch(&sink.pool, &job).await;
    let res = result(&job, "dist.rpmlint", Outcome::Passed);
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
    // A profile that does not fit the instance (fedora's, against upstream's four outcomes):
    // CRASHED is refused with HTTP 400 and ResultsDB's validation report.
    let resultsdb = FakeResultsDb::start(UPSTREAM_OUTCOMES).await;
    let db = TestDb::create().await;
    let sink = resultsdb_sink(&db, &resultsdb).await;
    let job = job("xchat-0.5-1.fc20");
    dispatch(&sink.pool, &job).await;
    let res = result(&job, "dist.abicheck", Outcome::Crashed);
    let reason = dead_letter_reason(deliver(&sink, &res.routing_key(), res.to_json()).await);
    assert!(reason.contains("(HTTP 400)"), "{reason}");
    assert!(
        reason.contains("must be one of: PASSED, INFO, FAILED, NEEDS_INSPECTION"),
        "{reason}"
    );
    assert!(
        reason.contains("only the ResultsDB copy is missing"),
        "{reason}"
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

/// Rows of `table` about job `job_id`.
async fn rows(db: &TestDb, table: &str, job_id: Uuid) -> i64 {
    db.client()
        .await
        .query_one(
            &format!("SELECT count(*) FROM {table} WHERE job_id = $1"),
            &[&job_id],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn a_result_for_a_job_never_requested_waits_its_grace_then_is_dead_lettered() {
    let db = TestDb::create().await;
    let pool = migrated(&db).await;
    let job = job("xchat-0.5-1.fc20");
    let res = result(&job, "dist.rpmlint", Outcome::Passed);
    let (waiting, _) = postgres_sink(&deployment(600), &pool);
    let reason =
        retry_reason(deliver_as(&waiting, "tb-runner", &res.routing_key(), res.to_json()).await);
    assert!(
        reason.contains("which the reporter never saw requested"),
        "{reason}"
    );
    assert!(reason.contains("waiting up to 600s"), "{reason}");
    let (refusing, _) = postgres_sink(&deployment(0), &pool);
    let reason = dead_letter_reason(
        deliver_as(&refusing, "tb-runner", &res.routing_key(), res.to_json()).await,
    );
    assert!(
        reason.ends_with(&format!(
            "is for job {}, which the reporter never saw requested (no `queued` status from the \
             rules service or the operator) (within 0s)",
            job.job_id
        )),
        "{reason}"
    );
    assert_eq!(rows(&db, "results", job.job_id).await, 0);
}

#[tokio::test]
async fn a_runner_reports_only_on_a_job_the_provisioner_dispatched() {
    let db = TestDb::create().await;
    let pool = migrated(&db).await;
    let (results, statuses) = postgres_sink(&deployment(0), &pool);
    let job = job("xchat-0.5-1.fc20");
    let deliver_status = |user: &'static str, state| {
        let s = status(&job, state, time(-5));
        let statuses = &statuses;
        async move { deliver_as(statuses, user, &s.routing_key(), s.to_json()).await }
    };
    assert_eq!(deliver_status("tb-rules", JobState::Queued).await, done());
    let passed = result(&job, "dist.rpmlint", Outcome::Passed);
    let reason = dead_letter_reason(
        deliver_as(
            &results,
            "tb-runner",
            &passed.routing_key(),
            passed.to_json(),
        )
        .await,
    );
    assert!(
        reason.contains("which was never dispatched to a runner"),
        "{reason}"
    );
    let reason = dead_letter_reason(deliver_status("tb-runner", JobState::Running).await);
    assert!(reason.contains("never dispatched"), "{reason}");
    // The provisioner may crash a job it cannot serve before dispatching it.
    let crashed = result(&job, "dist.other", Outcome::Crashed);
    assert_eq!(
        deliver_as(
            &results,
            "tb-provisioner",
            &crashed.routing_key(),
            crashed.to_json()
        )
        .await,
        done()
    );
    // Only the provisioner dispatches.
    let reason = dead_letter_reason(deliver_status("tb-runner", JobState::Provisioned).await);
    assert!(
        reason.contains(
            "broker user \"tb-runner\", which may not send it; it must come from the \
                         provisioner's \"tb-provisioner\" or the operator's \"guest\""
        ),
        "{reason}"
    );
    assert_eq!(
        deliver_status("tb-provisioner", JobState::Provisioned).await,
        done()
    );
    assert_eq!(deliver_status("tb-runner", JobState::Running).await, done());
    for _ in 0..2 {
        // A redelivery (or the job re-run by another runner instance) changes nothing.
        assert_eq!(
            deliver_as(
                &results,
                "tb-runner",
                &passed.routing_key(),
                passed.to_json()
            )
            .await,
            done()
        );
    }
    assert_eq!(rows(&db, "results", job.job_id).await, 2);
    let dispatched_by: Option<String> = db
        .client()
        .await
        .query_one(
            "SELECT dispatched_by FROM job_records WHERE job_id = $1",
            &[&job.job_id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(dispatched_by.as_deref(), Some("tb-provisioner"));
}

#[tokio::test]
async fn a_result_from_another_user_or_about_another_item_is_refused_and_not_stored() {
    let db = TestDb::create().await;
    let pool = migrated(&db).await;
    let job = job("xchat-0.5-1.fc20");
    dispatch(&pool, &job).await;
    let (results, _) = postgres_sink(&deployment(0), &pool);
    let forged = result(&job, "dist.rpmlint", Outcome::Passed);
    for (user, says) in [
        (
            "tb-rules",
            "published by broker user \"tb-rules\", which may not send it",
        ),
        (
            "intruder",
            "published by broker user \"intruder\", which may not send it",
        ),
    ] {
        let reason = dead_letter_reason(
            deliver_as(&results, user, &forged.routing_key(), forged.to_json()).await,
        );
        assert!(reason.contains(says), "{reason}");
        assert!(reason.contains("the runner's \"tb-runner\""), "{reason}");
    }
    let no_user = results
        .handle(
            Incoming::new(&forged.routing_key(), forged.to_json()),
            &Recorder::new(),
        )
        .await;
    assert!(dead_letter_reason(no_user).contains("without a user_id"));
    // From the runner's user, but about a package the job was not asked to check.
    let mut retargeted = forged.clone();
    retargeted.item = "glibc-9.99-1.fc99".into();
    retargeted.result_id = TaskResult::derive_id(
        job.job_id,
        &retargeted.testcase,
        &retargeted.item,
        &retargeted.item_type,
        &retargeted.arch,
    );
    let key = retargeted.routing_key();
    let reason =
        dead_letter_reason(deliver_as(&results, "tb-runner", &key, retargeted.to_json()).await);
    assert!(
        reason.contains(
            "says item \"glibc-9.99-1.fc99\", but its job was requested with \"xchat-0.5-1.fc20\""
        ),
        "{reason}"
    );
    assert_eq!(rows(&db, "results", job.job_id).await, 0, "nothing stored");
    // A task the operator lets report on other items may.
    let mut config = deployment(0);
    config.reporter.tasks_reporting_other_items = vec![job.task.name.clone()];
    let (allowed, _) = postgres_sink(&config, &pool);
    assert_eq!(
        deliver_as(&allowed, "tb-runner", &key, retargeted.to_json()).await,
        done()
    );
    assert_eq!(rows(&db, "results", job.job_id).await, 1);
}

/// A deployment whose runners log in as one user per arch (`tb-runner-x86_64`,
/// `tb-runner-aarch64`), as `taskbot setup-users` makes them.
fn deployment_with_runner_arch_users() -> Config {
    let mut config = deployment(0);
    config.amqp.users.remove("runner");
    for arch in ["x86_64", "aarch64"] {
        let user = AmqpUser {
            name: format!("tb-runner-{arch}"),
            password_file: None,
        };
        config.amqp.users.insert(format!("runner_{arch}"), user);
    }
    config
}

#[tokio::test]
async fn a_runner_of_another_arch_cannot_report_on_a_job() {
    let db = TestDb::create().await;
    let pool = migrated(&db).await;
    let job = job("xchat-0.5-1.fc20");
    assert_eq!(job.arch, "x86_64");
    dispatch(&pool, &job).await;
    let (results, statuses) = postgres_sink(&deployment_with_runner_arch_users(), &pool);
    let passed = result(&job, "dist.rpmlint", Outcome::Passed);
    let running = status(&job, JobState::Running, time(-5));
    let (result_key, status_key) = (passed.routing_key(), running.routing_key());
    let aarch64 = "tb-runner-aarch64";
    for (handler, key, body) in [
        (&results as &dyn Handler, &result_key, passed.to_json()),
        (&statuses, &status_key, running.to_json()),
    ] {
        let reason = dead_letter_reason(deliver_as(handler, aarch64, key, body).await);
        assert!(
            reason.contains(
                "was published by broker user \"tb-runner-aarch64\", but its job is for arch \
                 x86_64, whose runners log in as \"tb-runner-x86_64\""
            ),
            "{reason}"
        );
    }
    // Nor by claiming the job was for its own arch (a result's id follows its arch).
    let mut claimed = passed.clone();
    claimed.arch = "aarch64".into();
    claimed.result_id = TaskResult::derive_id(
        job.job_id,
        &claimed.testcase,
        &claimed.item,
        &claimed.item_type,
        &claimed.arch,
    );
    let reason = dead_letter_reason(
        deliver_as(&results, aarch64, &claimed.routing_key(), claimed.to_json()).await,
    );
    assert!(
        reason.contains("whose runners log in as \"tb-runner-x86_64\""),
        "{reason}"
    );
    assert_eq!(rows(&db, "results", job.job_id).await, 0, "nothing stored");
    // The job's own arch's runners may; a user shared by every arch no longer exists.
    let x86 = "tb-runner-x86_64";
    assert_eq!(
        deliver_as(&statuses, x86, &status_key, running.to_json()).await,
        done()
    );
    assert_eq!(
        deliver_as(&results, x86, &result_key, passed.to_json()).await,
        done()
    );
    assert_eq!(rows(&db, "results", job.job_id).await, 1);
    let reason =
        dead_letter_reason(deliver_as(&results, "tb-runner", &result_key, passed.to_json()).await);
    assert!(reason.contains("which may not send it"), "{reason}");
}

#[tokio::test]
async fn a_job_is_described_once_and_its_statuses_must_agree_with_it() {
    let db = TestDb::create().await;
    let pool = migrated(&db).await;
    let (_, statuses) = postgres_sink(&deployment(0), &pool);
    let job = job("xchat-0.5-1.fc20");
    let queued = status(&job, JobState::Queued, time(-5));
    assert_eq!(
        deliver_as(&statuses, "tb-rules", "job.queued", queued.to_json()).await,
        done()
    );
    let other = JobRequest {
        item: "glibc-9.99-1.fc99".into(),
        ..job.clone()
    };
    for (user, state) in [
        ("tb-rules", JobState::Queued),
        ("tb-provisioner", JobState::Provisioned),
    ] {
        let s = status(&other, state, time(-4));
        let reason =
            dead_letter_reason(deliver_as(&statuses, user, &s.routing_key(), s.to_json()).await);
        assert!(
            reason.contains("says item \"glibc-9.99-1.fc99\""),
            "{reason}"
        );
    }
    let running = status(&job, JobState::Running, time(-3));
    let reason = dead_letter_reason(
        deliver_as(
            &statuses,
            "tb-provisioner",
            "job.running",
            running.to_json(),
        )
        .await,
    );
    assert!(reason.contains("the runner's \"tb-runner\""), "{reason}");
    let item: String = db
        .client()
        .await
        .query_one("SELECT item FROM jobs WHERE job_id = $1", &[&job.job_id])
        .await
        .unwrap()
        .get(0);
    assert_eq!(item, "xchat-0.5-1.fc20");
    assert_eq!(
        rows(&db, "job_events", job.job_id).await,
        1,
        "only the queued status"
    );
}

#[tokio::test]
async fn the_resultsdb_sink_posts_no_forged_result() {
    let resultsdb = FakeResultsDb::start(FEDORA_OUTCOMES).await;
    let db = TestDb::create().await;
    let sink = resultsdb_sink(&db, &resultsdb).await;
    let known = job("xchat-0.5-1.fc20");
    dispatch(&sink.pool, &known).await;
    let forged = result(&known, "dist.rpmlint", Outcome::Passed);
    let mut never_requested = result(&job("glibc-9.99-1.fc99"), "dist.rpmlint", Outcome::Passed);
    never_requested.finished_at = time(-3600);
    let reason = dead_letter_reason(
        deliver_as(&sink, "intruder", &forged.routing_key(), forged.to_json()).await,
    );
    assert!(reason.contains("broker user \"intruder\""), "{reason}");
    // Sent an hour ago, but this sink started just now: it waits its grace (600 s by default).
    let key = never_requested.routing_key();
    let reason = retry_reason(deliver(&sink, &key, never_requested.to_json()).await);
    assert!(reason.contains("never saw requested"), "{reason}");
    assert!(
        resultsdb.requests().is_empty(),
        "{:?}",
        resultsdb.requests()
    );
}

// Poison messages: every store error is either the message's fault (dead-lettered at once, with
// the SQLSTATE, so the queue moves on) or the store's (retried). One test per class, against
// the real PostgreSQL.

/// Text that does not compress (PostgreSQL compresses long values before indexing them), so
/// `bytes` of it is too big for a B-tree index entry however it is stored.
fn incompressible(bytes: usize) -> String {
    let mut text = String::with_capacity(bytes + 32);
    while text.len() < bytes {
        text.push_str(&Uuid::new_v4().simple().to_string());
    }
    text.truncate(bytes);
    text
}

/// Like [`dispatch`], with the reporter's limits checked by the handlers.
async fn queued_is_stored(statuses: &StatusHandler, job: &JobRequest) {
    let s = status(job, JobState::Queued, time(-50));
    assert_eq!(
        deliver(statuses, &s.routing_key(), s.to_json()).await,
        done()
    );
}

#[tokio::test]
async fn a_status_with_an_oversized_item_is_dead_lettered_at_once_and_the_next_job_is_stored() {
    let db = TestDb::create().await;
    let pool = migrated(&db).await;
    let (_, statuses) = postgres_sink(&Config::default(), &pool);
    // The measured case: a 300 KB package name, which broke the `jobs` index and was retried
    // every 2 s while the jobs behind it waited.
    let poison = job(&incompressible(300_000));
    let s = status(&poison, JobState::Queued, time(-50));
    let reason = dead_letter_reason(deliver(&statuses, &s.routing_key(), s.to_json()).await);
    assert!(
        reason.contains("job: item is 300000 bytes, over the limit of 1024 bytes"),
        "{reason}"
    );
    for table in ["jobs", "job_records", "job_events"] {
        assert_eq!(rows(&db, table, poison.job_id).await, 0, "{table}");
    }
    let next = job("xchat-0.5-1.fc20");
    queued_is_stored(&statuses, &next).await;
    assert_eq!(rows(&db, "jobs", next.job_id).await, 1);
}

#[tokio::test]
async fn a_value_too_big_for_its_index_is_poison_sqlstate_54() {
    // Defence in depth: were a value over an index's size to get past the limits, the store's
    // refusal (program limit exceeded) still dead-letters it instead of retrying it forever.
    let db = TestDb::create().await;
    let pool = migrated(&db).await;
    let mut client = pool.get().await.unwrap();
    let poison = job(&incompressible(300_000));
    let s = status(&poison, JobState::Queued, time(-50));
    let err = taskbot::store::record_status(&mut client, &s)
        .await
        .unwrap_err();
    assert_eq!(err.sql_state(), Some("54000"), "{err}");
    let reason = dead_letter_reason(taskbot_reporter::store_failure("the status", &err));
    assert!(
        reason.starts_with("PostgreSQL refused the status (SQLSTATE 54000): "),
        "{reason}"
    );
    assert!(reason.contains("index row"), "{reason}");
    assert_eq!(rows(&db, "jobs", poison.job_id).await, 0);
}

#[tokio::test]
async fn a_value_postgresql_cannot_hold_is_poison_sqlstate_22() {
    let db = TestDb::create().await;
    let pool = migrated(&db).await;
    let client = pool.get().await.unwrap();
    let mut res = result(&job("x-1-1"), "dist.nul", Outcome::Passed);
    res.note = Some("binary\u{0}junk".into());
    let err = taskbot::store::insert_result(&client, &res)
        .await
        .unwrap_err();
    assert!(
        err.sql_state().is_some_and(|c| c.starts_with("22")),
        "{err}"
    );
    let reason = dead_letter_reason(taskbot_reporter::store_failure("the result", &err));
    assert!(reason.contains("(SQLSTATE 22"), "{reason}");
}

#[tokio::test]
async fn a_constraint_violation_is_dead_lettered_sqlstate_23_and_the_queue_moves_on() {
    let db = TestDb::create().await;
    let pool = migrated(&db).await;
    let (results, statuses) = postgres_sink(&Config::default(), &pool);
    let job = job("xchat-0.5-1.fc20");
    for state in [JobState::Queued, JobState::Provisioned] {
        let s = status(&job, state, time(-50));
        assert_eq!(
            deliver(&statuses, &s.routing_key(), s.to_json()).await,
            done()
        );
    }
    // A rule the database holds that this result breaks (an operator's CHECK constraint):
    // storing it again can never succeed.
    db.client()
        .await
        .batch_execute("ALTER TABLE results ADD CONSTRAINT short_testcase CHECK (octet_length(testcase) <= 20)")
        .await
        .unwrap();
    let refused = result(&job, "dist.a-rather-long-testcase", Outcome::Passed);
    let reason =
        dead_letter_reason(deliver(&results, &refused.routing_key(), refused.to_json()).await);
    assert!(
        reason.starts_with(&format!(
            "PostgreSQL refused result {} (SQLSTATE 23514): ",
            refused.result_id
        )),
        "{reason}"
    );
    assert!(reason.contains("short_testcase"), "{reason}");
    let next = result(&job, "dist.rpmlint", Outcome::Passed);
    assert_eq!(
        deliver(&results, &next.routing_key(), next.to_json()).await,
        done()
    );
    assert_eq!(rows(&db, "results", job.job_id).await, 1);
}

#[tokio::test]
async fn a_misconfigured_database_is_retried_not_dead_lettered_sqlstate_42() {
    // A missing table (42P01) is never one message's fault: every message would fail alike, so
    // they wait in their queue, in order, until the database is fixed.
    let db = TestDb::create().await;
    let pool = migrated(&db).await;
    let (_, statuses) = postgres_sink(&Config::default(), &pool);
    let admin = db.client().await;
    admin
        .batch_execute("ALTER TABLE jobs RENAME TO jobs_moved")
        .await
        .unwrap();
    let job = job("xchat-0.5-1.fc20");
    let s = status(&job, JobState::Queued, time(-50));
    let reason = retry_reason(deliver(&statuses, &s.routing_key(), s.to_json()).await);
    assert!(reason.contains("jobs"), "{reason}");
    admin
        .batch_execute("ALTER TABLE jobs_moved RENAME TO jobs")
        .await
        .unwrap();
    assert_eq!(
        deliver(&statuses, &s.routing_key(), s.to_json()).await,
        done()
    );
}

#[tokio::test]
async fn a_store_outage_is_retried_and_the_message_stored_once_it_is_back() {
    let db = TestDb::create().await;
    let pool = migrated(&db).await;
    let (_, statuses) = postgres_sink(&Config::default(), &pool);
    let job = job("xchat-0.5-1.fc20");
    queued_is_stored(&statuses, &job).await;
    // The database goes away: the reporter's connections are cut (SQLSTATE 57P01) and new ones
    // refused, as while PostgreSQL restarts.
    let admin = taskbot::testing::connect_postgres(&taskbot::testing::postgres_url()).await;
    let outage = |allow: bool| {
        format!(
            "ALTER DATABASE {} ALLOW_CONNECTIONS {allow}; \
             SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = '{}' AND pid <> pg_backend_pid()",
            db.name, db.name
        )
    };
    let held = pool.get().await.unwrap();
    admin.batch_execute(&outage(false)).await.unwrap();
    // A write on a connection that was cut (admin shutdown, or the socket closed): retried.
    let err = taskbot::store::job_record(&held, job.job_id)
        .await
        .unwrap_err();
    assert!(!err.is_caused_by_data(), "{err}");
    retry_reason(taskbot_reporter::store_failure("the status", &err));
    drop(held);
    let running = status(&job, JobState::Provisioned, time(-40));
    // New connections are refused meanwhile: handed back each time, never dead-lettered.
    for _ in 0..2 {
        let reason =
            retry_reason(deliver(&statuses, &running.routing_key(), running.to_json()).await);
        assert!(
            reason.contains("cannot get a database connection"),
            "{reason}"
        );
    }
    admin
        .batch_execute(&format!(
            "ALTER DATABASE {} ALLOW_CONNECTIONS true",
            db.name
        ))
        .await
        .unwrap();
    assert_eq!(
        deliver(&statuses, &running.routing_key(), running.to_json()).await,
        done()
    );
    assert_eq!(rows(&db, "job_events", job.job_id).await, 2);
}
