//! The reporter against the real broker and a real PostgreSQL database (one per test): schema
//! migrations, idempotent storage of results and job statuses, job state ordering, and refusal of
//! bad messages. ResultsDB posting is in `resultsdb.rs`.

mod support;

use std::time::Duration;

use chrono::{DateTime, Utc};
use taskbot::amqp::REASON_HEADER;
use taskbot::messages::{JobState, Message, Outcome, TaskResult};
use taskbot::store;
use taskbot::testing::{test_config, TestBroker};
use taskbot_reporter::db;
use uuid::Uuid;

use support::{
    declare_sinks, job, publish_dispatched, result, status, time, wait_dispatched, wait_until,
    RunningReporter, TestDb,
};
use taskbot::topology::Sink;

/// A `job_events` row: status id, state, at, service, detail.
type HistoryRow = (Uuid, String, DateTime<Utc>, String, Option<String>);

async fn count(client: &tokio_postgres::Client, sql: &str, id: &Uuid) -> i64 {
    client.query_one(sql, &[id]).await.expect(sql).get(0)
}

#[tokio::test]
async fn migrating_twice_is_a_no_op_and_concurrent_migrations_do_not_fail() {
    let test_db = TestDb::create().await;
    let mut config = test_config();
    config.postgres.url = test_db.url.clone();
    let pool = db::connect_pool(&config.postgres).unwrap();
    assert_eq!(
        store::migrate(&pool).await.unwrap(),
        store::MIGRATIONS.len()
    );
    assert_eq!(
        store::migrate(&pool).await.unwrap(),
        0,
        "second run applies nothing"
    );
    let client = test_db.client().await;
    let versions: Vec<i32> = client
        .query(
            "SELECT version FROM taskbot_schema_migrations ORDER BY version",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        versions,
        (1..=store::MIGRATIONS.len() as i32).collect::<Vec<_>>()
    );
    let tables: Vec<String> = client
        .query(
            "SELECT table_name::text FROM information_schema.tables \
             WHERE table_schema = current_schema() ORDER BY table_name",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        tables,
        [
            "fedora_messaging_notices",
            "fedora_messaging_outcomes",
            "job_events",
            "job_records",
            "jobs",
            "results",
            "resultsdb_deliveries",
            "taskbot_schema_migrations"
        ]
    );
    let mut named = store::schema::TABLES.to_vec();
    named.sort();
    assert_eq!(
        tables, named,
        "the schema's table names are the tables it makes"
    );
    pool.close();

    // Two reporters starting at once on a fresh database: both succeed, exactly one applies.
    let fresh = TestDb::create().await;
    config.postgres.url = fresh.url.clone();
    let a = db::connect_pool(&config.postgres).unwrap();
    let b = db::connect_pool(&config.postgres).unwrap();
    let (ra, rb) = tokio::join!(store::migrate(&a), store::migrate(&b));
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert_eq!(ra + rb, store::MIGRATIONS.len(), "applied {ra} + {rb}");
    assert!(ra == 0 || rb == 0);
    a.close();
    b.close();
}

/// A database migrated before job records existed keeps its jobs' results acceptable: its jobs
/// become records, dispatched when their history has a `provisioned` status.
#[tokio::test]
async fn jobs_stored_before_schema_v4_are_carried_over_as_job_records() {
    let test_db = TestDb::create().await;
    let client = test_db.client().await;
    for (i, script) in store::MIGRATIONS[..3].iter().enumerate() {
        client.batch_execute(script).await.unwrap();
        client
            .batch_execute(&format!(
                "CREATE TABLE IF NOT EXISTS taskbot_schema_migrations (version integer PRIMARY                  KEY, applied_at timestamptz NOT NULL DEFAULT now());                  INSERT INTO taskbot_schema_migrations (version) VALUES ({})",
                i + 1
            ))
            .await
            .unwrap();
    }
    let (old, undispatched) = (job("xchat-0.5-1.fc20"), job("ansible-1.8.3-1.el7"));
    for j in [&old, &undispatched] {
        client
            .execute(
                "INSERT INTO jobs (job_id, state, item, item_type, arch, task_name, task_repo, \
                 task_ref, rule, event_id, event_topic, created_at, updated_at) \
                 VALUES ($1, 'queued', $2, $3, $4, $5, $6, $7, $8, $9, $10, now(), now())",
                &[
                    &j.job_id,
                    &j.item,
                    &j.item_type,
                    &j.arch,
                    &j.task.name,
                    &j.task.repo,
                    &j.task.git_ref,
                    &j.rule,
                    &j.event_id,
                    &j.event_topic,
                ],
            )
            .await
            .unwrap();
    }
    client
        .execute(
            "INSERT INTO job_events (status_id, job_id, state, at, service) \
             VALUES ($1, $2, 'provisioned', now(), 'provisioner@old')",
            &[&Uuid::new_v4(), &old.job_id],
        )
        .await
        .unwrap();
    let mut config = test_config();
    config.postgres.url = test_db.url.clone();
    let pool = db::connect_pool(&config.postgres).unwrap();
    assert_eq!(
        store::migrate(&pool).await.unwrap(),
        store::MIGRATIONS.len() - 3
    );
    let pg = pool.get().await.unwrap();
    let record = store::job_record(&pg, old.job_id).await.unwrap().unwrap();
    assert_eq!(
        (
            record.item.as_str(),
            record.task.clone(),
            record.rule.as_str()
        ),
        (old.item.as_str(), old.task.clone(), old.rule.as_str())
    );
    assert_eq!(record.dispatched_by.as_deref(), Some("provisioner@old"));
    let record = store::job_record(&pg, undispatched.job_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.dispatched_by, None);
    drop(pg);
    pool.close();
}

#[tokio::test]
async fn results_and_statuses_are_stored_once_and_a_finished_job_stays_finished() {
    let test_db = TestDb::create().await;
    let mut config = test_config();
    config.postgres.url = test_db.url.clone();
    let broker = TestBroker::new(&config).await;
    let t = broker.topology.clone();
    let reporter = RunningReporter::start_ready(&config, &test_db).await;
    let client = test_db.client().await;

    let job = job("xchat-0.5-1.fc20");
    let res = result(&job, "dist.rpmlint", Outcome::Failed);
    let other = result(&job, "dist.other", Outcome::Passed);
    let queued = status(&job, JobState::Queued, time(-30));
    let provisioned = status(&job, JobState::Provisioned, time(-25));
    let running = status(&job, JobState::Running, time(-20));
    let done = status(&job, JobState::Done, time(-10));
    // The reporter takes a runner's results only for a job it saw requested and dispatched; once
    // it has, the same result twice (as after a redelivery), then another one: once that is
    // stored, both copies ahead of it have been taken, and stopping the reporter waits for their
    // handling. (A result that arrives before its job's statuses waits: handlers.rs.)
    for s in [&queued, &queued, &provisioned] {
        broker
            .publish(&t.results_exchange(), &s.routing_key(), s.to_json())
            .await;
    }
    wait_dispatched(&test_db, &job).await;
    for r in [&res, &res, &other] {
        broker
            .publish(&t.results_exchange(), &r.routing_key(), r.to_json())
            .await;
    }
    for s in [&done, &done] {
        broker
            .publish(&t.results_exchange(), &s.routing_key(), s.to_json())
            .await;
    }
    wait_until(
        "the job is done with three events",
        Duration::from_secs(15),
        || async {
            count(
                &client,
                "SELECT count(*) FROM job_events WHERE job_id = $1",
                &job.job_id,
            )
            .await
                == 3
                && count(
                    &client,
                    "SELECT count(*) FROM jobs WHERE job_id = $1 AND state = 'done'",
                    &job.job_id,
                )
                .await
                    == 1
        },
    )
    .await;
    // Late statuses after `done`: `running` from before it, and `reporting` stamped after it (a
    // host whose clock runs ahead). Both go into the history; neither reopens the job.
    let reporting_from_skewed_clock = status(&job, JobState::Reporting, time(60));
    for s in [&running, &running, &reporting_from_skewed_clock] {
        broker
            .publish(&t.results_exchange(), &s.routing_key(), s.to_json())
            .await;
    }
    wait_until("five events stored", Duration::from_secs(15), || async {
        count(
            &client,
            "SELECT count(*) FROM job_events WHERE job_id = $1",
            &job.job_id,
        )
        .await
            == 5
    })
    .await;
    wait_until(
        "the last result stored",
        Duration::from_secs(15),
        || async {
            count(
                &client,
                "SELECT count(*) FROM results WHERE result_id = $1",
                &other.result_id,
            )
            .await
                == 1
        },
    )
    .await;
    // After shutdown every delivery is acked or back in its queue: empty queues mean the
    // duplicates were all handled, so the counts below are final.
    reporter.stop().await;
    for queue in [t.postgres_results_queue(), t.postgres_status_queue()] {
        assert_eq!(broker.depth(&queue).await, 0, "{queue}");
        assert_eq!(
            broker.depth(&t.dead_letter_queue(&queue)).await,
            0,
            "{queue} dead letters"
        );
    }

    let rows = client
        .query(
            "SELECT * FROM results WHERE job_id = $1 AND testcase = 'dist.rpmlint'",
            &[&job.job_id],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 1, "one row for a result delivered twice");
    let row = &rows[0];
    assert_eq!(row.get::<_, Uuid>("result_id"), res.result_id);
    assert_eq!(row.get::<_, String>("testcase"), "dist.rpmlint");
    assert_eq!(row.get::<_, String>("outcome"), "FAILED");
    assert_eq!(row.get::<_, String>("item"), "xchat-0.5-1.fc20");
    assert_eq!(row.get::<_, String>("item_type"), "koji_build");
    assert_eq!(row.get::<_, String>("arch"), "x86_64");
    assert_eq!(row.get::<_, Option<String>>("note"), res.note);
    assert_eq!(row.get::<_, Option<String>>("log_url"), res.log_url);
    assert_eq!(
        row.get::<_, serde_json::Value>("data"),
        serde_json::json!({"errors": 5, "koji:task_id": "1234567", "checked": ["spec", "rpm"]})
    );
    assert_eq!(row.get::<_, String>("task_name"), "rpmlint");
    assert_eq!(row.get::<_, String>("task_repo"), job.task.repo);
    assert_eq!(row.get::<_, String>("task_ref"), "main");
    assert_eq!(row.get::<_, String>("event_id"), job.event_id);
    assert_eq!(row.get::<_, String>("rule"), "rpmlint-on-builds");
    assert_eq!(row.get::<_, String>("runner"), "runner@test/x86_64");
    assert_eq!(row.get::<_, DateTime<Utc>>("finished_at"), res.finished_at);
    assert_eq!(
        row.get::<_, Option<DateTime<Utc>>>("resultsdb_posted_at"),
        None,
        "no ResultsDB configured"
    );

    let job_row = client
        .query_one("SELECT * FROM jobs WHERE job_id = $1", &[&job.job_id])
        .await
        .unwrap();
    assert_eq!(job_row.get::<_, String>("state"), "done");
    assert_eq!(job_row.get::<_, DateTime<Utc>>("updated_at"), done.at);
    assert_eq!(
        job_row.get::<_, DateTime<Utc>>("created_at"),
        job.created_at
    );
    assert_eq!(job_row.get::<_, String>("item"), job.item);
    assert_eq!(job_row.get::<_, String>("item_type"), "koji_build");
    assert_eq!(job_row.get::<_, String>("arch"), "x86_64");
    assert_eq!(job_row.get::<_, String>("task_name"), "rpmlint");
    assert_eq!(job_row.get::<_, String>("task_repo"), job.task.repo);
    assert_eq!(job_row.get::<_, String>("task_ref"), "main");
    assert_eq!(job_row.get::<_, String>("rule"), job.rule);
    assert_eq!(job_row.get::<_, String>("event_id"), job.event_id);
    assert_eq!(job_row.get::<_, String>("event_topic"), job.event_topic);

    let history: Vec<HistoryRow> = client
        .query(
            "SELECT status_id, state, at, service, detail FROM job_events \
             WHERE job_id = $1 ORDER BY at",
            &[&job.job_id],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect();
    let expected: Vec<_> = [
        &queued,
        &provisioned,
        &running,
        &done,
        &reporting_from_skewed_clock,
    ]
    .iter()
    .map(|s| {
        (
            s.status_id,
            s.state.to_string(),
            s.at,
            s.service.clone(),
            s.detail.clone(),
        )
    })
    .collect();
    assert_eq!(history, expected);
    broker.cleanup().await;
}

#[tokio::test]
async fn bad_messages_are_dead_lettered_with_a_reason_and_the_reporter_keeps_going() {
    let test_db = TestDb::create().await;
    let mut config = test_config();
    config.postgres.url = test_db.url.clone();
    let broker = TestBroker::new(&config).await;
    let t = broker.topology.clone();
    let reporter = RunningReporter::start_ready(&config, &test_db).await;

    let job = job("ansible-1.8.3-1.el7");
    publish_dispatched(&broker, &job).await;
    let not_json = b"{not json".to_vec();
    let a_status_on_the_results_queue = status(&job, JobState::Running, time(0)).to_json();
    // PostgreSQL cannot store NUL characters: retrying would never help, and the reporter
    // refuses it before writing (taskbot::limits).
    let mut with_nul = result(&job, "dist.nul", Outcome::Passed);
    with_nul.note = Some("binary\u{0}junk".into());
    let with_nul = with_nul.to_json();
    for body in [&not_json, &a_status_on_the_results_queue, &with_nul] {
        broker
            .publish(&t.results_exchange(), "result.PASSED.x", body.clone())
            .await;
    }
    broker
        .publish(&t.results_exchange(), "job.running", b"{}".to_vec())
        .await;
    let good = result(&job, "dist.good", Outcome::Passed);
    broker
        .publish(&t.results_exchange(), &good.routing_key(), good.to_json())
        .await;

    let dlq = t.dead_letter_queue(&t.postgres_results_queue());
    let mut reasons = Vec::new();
    for _ in 0..3 {
        let msg = broker
            .get(&dlq, Duration::from_secs(15))
            .await
            .expect("a dead letter");
        let reason = msg
            .header(REASON_HEADER)
            .expect("reason header")
            .to_string();
        reasons.push((msg.body, reason));
    }
    let reason_for = |body: &Vec<u8>| {
        reasons
            .iter()
            .find(|(b, _)| b == body)
            .map(|(_, r)| r.clone())
            .expect("dead-lettered with its original body")
    };
    assert!(reason_for(&not_json).contains("not valid JSON"));
    assert!(reason_for(&a_status_on_the_results_queue)
        .contains("expected schema taskbot.result.v1, found taskbot.job-status.v1"));
    let nul_reason = reason_for(&with_nul);
    assert!(
        nul_reason.contains("cannot be stored: note contains a NUL character"),
        "{nul_reason}"
    );

    let status_dead = broker
        .get(
            &t.dead_letter_queue(&t.postgres_status_queue()),
            Duration::from_secs(15),
        )
        .await
        .expect("the bad status dead-lettered");
    assert!(status_dead
        .header(REASON_HEADER)
        .unwrap()
        .contains("expected schema taskbot.job-status.v1, found (none)"));

    let client = test_db.client().await;
    wait_until(
        "the good result stored",
        Duration::from_secs(15),
        || async {
            count(
                &client,
                "SELECT count(*) FROM results WHERE result_id = $1",
                &good.result_id,
            )
            .await
                == 1
        },
    )
    .await;
    reporter.stop().await;
    assert_eq!(broker.depth(&t.postgres_results_queue()).await, 0);
    assert_eq!(broker.depth(&dlq).await, 0, "exactly three dead letters");
    broker.cleanup().await;
}

#[tokio::test]
async fn unreachable_database_holds_consumption_until_shutdown() {
    let mut config = test_config();
    // Nothing listens on port 1.
    config.postgres.url = "postgres://postgres@127.0.0.1:1/nowhere".into();
    let broker = TestBroker::new(&config).await;
    let t = broker.topology.clone();
    // As if the reporter had run before: its queue exists and holds a result.
    declare_sinks(&broker, &[Sink::Postgres]).await;
    let job = job("x-1-1");
    let res: TaskResult = result(&job, "dist.rpmlint", Outcome::Passed);
    broker
        .publish(&t.results_exchange(), &res.routing_key(), res.to_json())
        .await;
    let reporter = RunningReporter::start(&config);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!reporter.is_finished(), "keeps waiting for the database");
    assert_eq!(
        broker.depth(&t.postgres_results_queue()).await,
        1,
        "nothing is consumed before the database is ready"
    );
    assert_eq!(broker.consumers(&t.postgres_results_queue()).await, 0);
    reporter.stop().await;
    broker.cleanup().await;
}

#[tokio::test]
async fn a_crashed_job_has_its_whole_history_and_its_crashed_result() {
    let test_db = TestDb::create().await;
    let mut config = test_config();
    config.postgres.url = test_db.url.clone();
    let broker = TestBroker::new(&config).await;
    let t = broker.topology.clone();
    let reporter = RunningReporter::start_ready(&config, &test_db).await;
    let client = test_db.client().await;

    let job = job("xchat-0.5-1.fc20");
    let states = [
        JobState::Queued,
        JobState::Provisioning,
        JobState::Provisioned,
        JobState::Cloning,
        JobState::Running,
        JobState::Crashed,
    ];
    let statuses: Vec<_> = states
        .iter()
        .enumerate()
        .map(|(i, state)| status(&job, *state, time(i as i64 - 10)))
        .collect();
    // Published out of order, the crash first, and one twice: the history is complete and the
    // job ends crashed all the same.
    for s in statuses.iter().rev().chain(std::iter::once(&statuses[2])) {
        broker
            .publish(&t.results_exchange(), &s.routing_key(), s.to_json())
            .await;
    }
    let crashed = TaskResult::crashed(&job, "runner@test/x86_64", "the task's clone failed");
    broker
        .publish(
            &t.results_exchange(),
            &crashed.routing_key(),
            crashed.to_json(),
        )
        .await;
    wait_until(
        "six events and the result",
        Duration::from_secs(15),
        || async {
            count(
                &client,
                "SELECT count(*) FROM job_events WHERE job_id = $1",
                &job.job_id,
            )
            .await
                == 6
                && count(
                    &client,
                    "SELECT count(*) FROM results WHERE job_id = $1 AND outcome = 'CRASHED'",
                    &job.job_id,
                )
                .await
                    == 1
        },
    )
    .await;
    reporter.stop().await;
    let history: Vec<(String, DateTime<Utc>, String, Option<String>)> = client
        .query(
            "SELECT state, at, service, detail FROM job_events WHERE job_id = $1 ORDER BY at",
            &[&job.job_id],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    let expected: Vec<_> = statuses
        .iter()
        .map(|s| {
            (
                s.state.to_string(),
                s.at,
                s.service.clone(),
                s.detail.clone(),
            )
        })
        .collect();
    assert_eq!(history, expected);
    let row = client
        .query_one(
            "SELECT state, event_id, rule, task_repo, task_ref, arch FROM jobs WHERE job_id = $1",
            &[&job.job_id],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "crashed");
    assert_eq!(row.get::<_, String>(1), job.event_id);
    assert_eq!(row.get::<_, String>(2), job.rule);
    assert_eq!(row.get::<_, String>(3), job.task.repo);
    assert_eq!(row.get::<_, String>(4), job.task.git_ref);
    assert_eq!(row.get::<_, String>(5), job.arch);
    let note: Option<String> = client
        .query_one(
            "SELECT note FROM results WHERE result_id = $1",
            &[&crashed.result_id],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        note.is_some_and(|n| n.contains("the task's clone failed")),
        "the crash reason is kept"
    );
    broker.cleanup().await;
}
