//! The sinks side by side, against the real broker, a real PostgreSQL database per test and a
//! ResultsDB test double: each sink end to end, one broken sink not delaying the others, the
//! sink queues following the configuration, and a subscriber's own queue.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use chrono::DateTime;
use lapin::types::AMQPValue;
use serde_json::json;
use taskbot::messages::{JobState, JobStatus, Message, Outcome, TaskResult};
use taskbot::testing::{test_config, TestBroker};
use taskbot::topology::Sink;
use uuid::Uuid;

use support::fake_resultsdb::{FakeResultsDb, Fault, FEDORA_OUTCOMES};
use support::{job, publish_dispatched, result, status, time, wait_until, RunningReporter, TestDb};

async fn publish_result(broker: &TestBroker, r: &TaskResult) {
    let t = &broker.topology;
    broker
        .publish(&t.results_exchange(), &r.routing_key(), r.to_json())
        .await;
}

async fn publish_status(broker: &TestBroker, s: &JobStatus) {
    let t = &broker.topology;
    broker
        .publish(&t.results_exchange(), &s.routing_key(), s.to_json())
        .await;
}

fn read_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

async fn count(client: &tokio_postgres::Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).await.expect(sql).get(0)
}

#[tokio::test]
async fn a_hanging_resultsdb_does_not_delay_postgres_or_jsonl() {
    let resultsdb = FakeResultsDb::start(FEDORA_OUTCOMES).await;
    for _ in 0..100 {
        resultsdb.fail_next(Fault::Hang(Duration::from_secs(3)));
    }
    let test_db = TestDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    let jsonl_path = dir.path().join("results.jsonl");
    let mut config = test_config();
    config.postgres.url = test_db.url.clone();
    config.reporter.resultsdb_url = Some(resultsdb.api_url.clone());
    config.reporter.resultsdb_timeout_secs = 1;
    config.reporter.resultsdb_retry_max_secs = 1;
    config.reporter.jsonl_path = Some(jsonl_path.clone());
    let broker = TestBroker::new(&config).await;
    let t = broker.topology.clone();
    let reporter = RunningReporter::start_ready(&config, &test_db).await;
    let client = test_db.client().await;

    let job = job("xchat-0.5-1.fc20");
    publish_dispatched(&broker, &job).await;
    let results: Vec<TaskResult> = ["dist.a", "dist.b", "dist.c", "dist.d", "dist.e"]
        .iter()
        .map(|tc| result(&job, tc, Outcome::Passed))
        .collect();
    let (first, later) = results.split_at(3);
    for r in first {
        publish_result(&broker, r).await;
    }
    // Every ResultsDB attempt hangs past its 1 s timeout and then waits its back-off. Once the
    // ResultsDB sink is stuck like that, more results and a status arrive: the other sinks must
    // not notice.
    wait_until("ResultsDB hanging", Duration::from_secs(15), || async {
        !resultsdb.requests().is_empty()
    })
    .await;
    let started = Instant::now();
    for r in later {
        publish_result(&broker, r).await;
    }
    publish_status(&broker, &status(&job, JobState::Done, time(0))).await;
    wait_until(
        "PostgreSQL and the JSON-lines file have everything",
        Duration::from_secs(5),
        || async {
            count(&client, "SELECT count(*) FROM results").await == 5
                && count(&client, "SELECT count(*) FROM job_events").await == 3
                && read_lines(&jsonl_path).len() == 8
        },
    )
    .await;
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
    assert_eq!(
        count(&client, "SELECT count(*) FROM resultsdb_deliveries").await,
        0,
        "ResultsDB has accepted nothing yet"
    );
    assert!(resultsdb.stored().is_empty());

    // ResultsDB comes back: everything it missed is posted, once each.
    resultsdb.clear_faults();
    wait_until("ResultsDB caught up", Duration::from_secs(30), || async {
        count(&client, "SELECT count(*) FROM resultsdb_deliveries").await == 5
    })
    .await;
    reporter.stop().await;
    let mut posted: Vec<String> = resultsdb
        .stored()
        .iter()
        .map(|r| r["testcase"]["name"].as_str().unwrap().to_string())
        .collect();
    posted.sort();
    assert_eq!(posted, ["dist.a", "dist.b", "dist.c", "dist.d", "dist.e"]);
    for queue in [
        t.postgres_results_queue(),
        t.postgres_status_queue(),
        t.resultsdb_queue(),
        t.jsonl_queue(),
    ] {
        assert_eq!(broker.depth(&queue).await, 0, "{queue}");
        assert_eq!(
            broker.depth(&t.dead_letter_queue(&queue)).await,
            0,
            "{queue}"
        );
    }
    broker.cleanup().await;
}

#[tokio::test]
async fn resultsdb_sink_alone_posts_once_with_the_auth_header_and_the_job_page() {
    let resultsdb = FakeResultsDb::start(FEDORA_OUTCOMES).await;
    let test_db = TestDb::create().await;
    let mut config = test_config();
    config.postgres.url = test_db.url.clone();
    config.reporter.sinks = Some(vec![Sink::Resultsdb]);
    config.reporter.resultsdb_url = Some(resultsdb.api_url.clone());
    config.reporter.resultsdb_auth_header = Some("Authorization: Bearer s3cret".into());
    config.reporter.job_url_template = Some("https://taskbot.example/jobs/{job_id}".into());
    let broker = TestBroker::new(&config).await;
    let t = broker.topology.clone();
    let reporter = RunningReporter::start_ready(&config, &test_db).await;
    let client = test_db.client().await;

    let job = job("ansible-1.8.3-1.el7");
    let res = result(&job, "dist.rpmlint", Outcome::Failed);
    publish_result(&broker, &res).await;
    publish_result(&broker, &res).await;
    wait_until("the delivery recorded", Duration::from_secs(20), || async {
        count(&client, "SELECT count(*) FROM resultsdb_deliveries").await == 1
    })
    .await;
    // A redelivery long after: found recorded, not posted again.
    publish_result(&broker, &res).await;
    wait_until("the copy taken", Duration::from_secs(10), || async {
        broker.depth(&t.resultsdb_queue()).await == 0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    reporter.stop().await;

    let requests = resultsdb.requests();
    assert_eq!(requests.len(), 1, "posted once: {requests:#?}");
    assert_eq!(requests[0].authorization.as_deref(), Some("Bearer s3cret"));
    assert_eq!(
        requests[0].body["groups"][0]["ref_url"],
        json!(format!("https://taskbot.example/jobs/{}", job.job_id))
    );
    assert_eq!(requests[0].body["ref_url"], json!(res.log_url));
    // Only the ResultsDB sink runs: no results rows, no PostgreSQL sink queues.
    assert_eq!(count(&client, "SELECT count(*) FROM results").await, 0);
    assert!(broker.queue_exists(&t.resultsdb_queue()).await);
    assert!(!broker.queue_exists(&t.postgres_results_queue()).await);
    assert!(!broker.queue_exists(&t.postgres_status_queue()).await);
    assert_eq!(
        broker
            .depth(&t.dead_letter_queue(&t.resultsdb_queue()))
            .await,
        0
    );
    broker.cleanup().await;
}

#[tokio::test]
async fn jsonl_sink_appends_results_and_statuses_without_a_database() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log/results.jsonl");
    let mut config = test_config();
    // No sink needs it: the reporter must not wait for it.
    config.postgres.url = "postgres://postgres@127.0.0.1:1/nowhere".into();
    config.reporter.sinks = Some(vec![Sink::Jsonl]);
    config.reporter.jsonl_path = Some(path.clone());
    let broker = TestBroker::new(&config).await;
    let t = broker.topology.clone();
    let reporter = RunningReporter::start(&config);
    wait_until(
        "the jsonl sink consuming",
        Duration::from_secs(20),
        || async { broker.consumers(&t.jsonl_queue()).await == 1 },
    )
    .await;
    for queue in [
        t.postgres_results_queue(),
        t.postgres_status_queue(),
        t.resultsdb_queue(),
        t.fedora_messaging_queue(),
    ] {
        assert!(
            !broker.queue_exists(&queue).await,
            "{queue} of a disabled sink declared"
        );
    }

    let job = job("xchat-0.5-1.fc20");
    let res = result(&job, "dist.rpmlint", Outcome::Failed);
    let running = status(&job, JobState::Running, time(-5));
    publish_status(&broker, &running).await;
    publish_result(&broker, &res).await;
    // A redelivered copy is appended again (at-least-once; readers dedupe by id).
    publish_result(&broker, &res).await;
    broker
        .publish(&t.results_exchange(), "result.PASSED.x", b"{junk".to_vec())
        .await;
    wait_until("three lines", Duration::from_secs(10), || async {
        read_lines(&path).len() == 3
    })
    .await;
    let dead = broker
        .get(
            &t.dead_letter_queue(&t.jsonl_queue()),
            Duration::from_secs(10),
        )
        .await
        .expect("the junk dead-lettered");
    assert_eq!(dead.body, b"{junk");
    reporter.stop().await;
    let lines = read_lines(&path);
    assert_eq!(lines.len(), 3, "{lines:#?}");
    assert_eq!(JobStatus::from_json(lines[0].as_bytes()).unwrap(), running);
    assert_eq!(TaskResult::from_json(lines[1].as_bytes()).unwrap(), res);
    assert_eq!(lines[1], lines[2]);
    broker.cleanup().await;
}

#[tokio::test]
async fn jsonl_file_rotates_by_size_keeping_n_old_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("results.jsonl");
    let mut config = test_config();
    config.reporter.sinks = Some(vec![Sink::Jsonl]);
    config.reporter.jsonl_path = Some(path.clone());
    // Every line is larger than this: each one starts a new file.
    config.reporter.jsonl_max_bytes = 100;
    config.reporter.jsonl_keep = 2;
    let broker = TestBroker::new(&config).await;
    let t = broker.topology.clone();
    let reporter = RunningReporter::start(&config);
    wait_until(
        "the jsonl sink consuming",
        Duration::from_secs(20),
        || async { broker.consumers(&t.jsonl_queue()).await == 1 },
    )
    .await;
    let job = job("xchat-0.5-1.fc20");
    let results: Vec<TaskResult> = ["dist.a", "dist.b", "dist.c", "dist.d"]
        .iter()
        .map(|tc| result(&job, tc, Outcome::Passed))
        .collect();
    for r in &results {
        publish_result(&broker, r).await;
    }
    let rotated = |n: usize| {
        let mut p = path.as_os_str().to_owned();
        p.push(format!(".{n}"));
        std::path::PathBuf::from(p)
    };
    wait_until(
        "the last result written",
        Duration::from_secs(10),
        || async {
            read_lines(&path)
                .first()
                .is_some_and(|l| l.contains("dist.d"))
        },
    )
    .await;
    reporter.stop().await;
    let testcase = |p: &Path| -> Vec<String> {
        read_lines(p)
            .iter()
            .map(|l| TaskResult::from_json(l.as_bytes()).unwrap().testcase)
            .collect()
    };
    assert_eq!(testcase(&path), ["dist.d"]);
    assert_eq!(testcase(&rotated(1)), ["dist.c"]);
    assert_eq!(testcase(&rotated(2)), ["dist.b"]);
    assert!(!rotated(3).exists(), "only two old files are kept");
    broker.cleanup().await;
}

/// Take one message from `queue` with its AMQP properties, on a connection of its own.
async fn get_raw(queue: &str, timeout: Duration) -> Option<lapin::message::BasicGetMessage> {
    let conn = taskbot::amqp::connect(&taskbot::testing::amqp_url(), "taskbot-test-raw")
        .await
        .expect("connect");
    let channel = conn.create_channel().await.expect("channel");
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(msg) = channel
            .basic_get(queue, lapin::options::BasicGetOptions { no_ack: true })
            .await
            .expect("basic_get")
        {
            let _ = conn.close(200, "done").await;
            return Some(msg);
        }
        if Instant::now() >= deadline {
            let _ = conn.close(200, "done").await;
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn fedora_messaging_sink_publishes_results_with_fedora_messaging_properties() {
    let mut config = test_config();
    let ns = config.amqp.namespace.clone();
    config.reporter.sinks = Some(vec![Sink::FedoraMessaging]);
    config.reporter.fedora_messaging_topic =
        format!("org.fedoraproject.{ns}.taskbot.{{testcase}}.{{outcome}}");
    let broker = TestBroker::new(&config).await;
    let t = broker.topology.clone();
    // A fedora-messaging subscriber of failures only.
    let subscriber = broker
        .tap(
            "amq.topic",
            &format!("org.fedoraproject.{ns}.taskbot.#.failed"),
        )
        .await;
    let reporter = RunningReporter::start(&config);
    wait_until("the sink consuming", Duration::from_secs(20), || async {
        broker.consumers(&t.fedora_messaging_queue()).await == 1
    })
    .await;

    let job = job("xchat-0.5-1.fc20");
    // Nobody subscribes to passed results: published all the same, and acked.
    let passed = result(&job, "dist.upgradepath", Outcome::Passed);
    let failed = result(&job, "dist.rpmlint", Outcome::Failed);
    publish_result(&broker, &passed).await;
    publish_result(&broker, &failed).await;
    let msg = get_raw(&subscriber, Duration::from_secs(10))
        .await
        .expect("the subscriber got the failure");
    let delivery = &msg.delivery;
    assert_eq!(
        delivery.routing_key.as_str(),
        format!("org.fedoraproject.{ns}.taskbot.dist.rpmlint.failed")
    );
    assert_eq!(delivery.exchange.as_str(), "amq.topic");
    let props = &delivery.properties;
    assert_eq!(
        props.content_type().as_ref().map(|s| s.as_str()),
        Some("application/json")
    );
    assert_eq!(
        props.content_encoding().as_ref().map(|s| s.as_str()),
        Some("utf-8")
    );
    assert_eq!(*props.delivery_mode(), Some(2));
    let message_id = props.message_id().as_ref().map(|s| s.to_string());
    let message_id = Uuid::parse_str(message_id.as_deref().expect("a message_id")).unwrap();
    assert_eq!(message_id.get_version_num(), 4, "a random UUID4");
    assert_eq!(*props.priority(), Some(0));
    let headers = props.headers().as_ref().expect("headers").inner();
    let string = |key: &str| match headers.get(key) {
        Some(AMQPValue::LongString(s)) => s.to_string(),
        other => panic!("{key}: {other:?}"),
    };
    assert_eq!(string("fedora_messaging_schema"), "taskbot.result.v1");
    assert_eq!(
        string("fedora_messaging_schema_package"),
        "taskbot_messages"
    );
    assert_eq!(string("taskbot_result_id"), failed.result_id.to_string());
    assert_eq!(string("taskbot_namespace"), ns);
    match headers.get("fedora_messaging_severity") {
        Some(AMQPValue::LongLongInt(30)) => {}
        other => panic!("fedora_messaging_severity of a failure: {other:?}"),
    }
    match headers.get("priority") {
        Some(AMQPValue::LongLongInt(0)) => {}
        other => panic!("priority: {other:?}"),
    }
    match headers.get("fedora_messaging_rpm_xchat") {
        Some(AMQPValue::Boolean(true)) => {}
        other => panic!("fedora_messaging_rpm_xchat: {other:?}"),
    }
    let sent_at = match headers.get("sent-at") {
        Some(AMQPValue::LongString(s)) => s.to_string(),
        other => panic!("sent-at: {other:?}"),
    };
    assert!(
        sent_at.ends_with("+00:00") && !sent_at.contains('.'),
        "{sent_at}"
    );
    assert!(DateTime::parse_from_rfc3339(&sent_at).is_ok(), "{sent_at}");
    // The body is the result itself, a plain JSON object.
    assert_eq!(TaskResult::from_json(&delivery.data).unwrap(), failed);
    let body: serde_json::Value = serde_json::from_slice(&delivery.data).unwrap();
    assert_eq!(body["testcase"], "dist.rpmlint");
    assert_eq!(body["outcome"], "FAILED");

    wait_until("both results handled", Duration::from_secs(10), || async {
        broker.depth(&t.fedora_messaging_queue()).await == 0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    reporter.stop().await;
    assert_eq!(broker.depth(&t.fedora_messaging_queue()).await, 0);
    assert_eq!(
        broker
            .depth(&t.dead_letter_queue(&t.fedora_messaging_queue()))
            .await,
        0,
        "an unsubscribed topic is not an error"
    );
    assert_eq!(
        broker.depth(&subscriber).await,
        0,
        "only the failure matched"
    );
    broker.cleanup().await;
}

#[tokio::test]
async fn a_queue_bound_by_hand_receives_the_results_and_statuses_it_asks_for() {
    // What docs/results.md tells subscribers to do: bind their own queue to the results
    // exchange with the keys they want. No reporter is needed for that.
    let config = test_config();
    let broker = TestBroker::new(&config).await;
    let t = broker.topology.clone();
    let failures = broker.tap(&t.results_exchange(), "result.FAILED.#").await;
    let finished_jobs = broker.tap(&t.results_exchange(), "job.done").await;
    // And one that takes everything (no sink queue exists here: without a bound queue the
    // publishes below would be unroutable).
    let everything = broker.tap(&t.results_exchange(), "#").await;

    let job = job("xchat-0.5-1.fc20");
    let passed = result(&job, "dist.upgradepath", Outcome::Passed);
    let failed = result(&job, "dist.rpmlint", Outcome::Failed);
    let running = status(&job, JobState::Running, time(-5));
    let done = status(&job, JobState::Done, time(0));
    publish_result(&broker, &passed).await;
    publish_result(&broker, &failed).await;
    publish_status(&broker, &running).await;
    publish_status(&broker, &done).await;

    let got = broker
        .get(&failures, Duration::from_secs(5))
        .await
        .expect("the failed result");
    assert_eq!(got.routing_key, "result.FAILED.dist.rpmlint");
    assert_eq!(TaskResult::from_json(&got.body).unwrap(), failed);
    let got = broker
        .get(&finished_jobs, Duration::from_secs(5))
        .await
        .expect("the done status");
    assert_eq!(got.routing_key, "job.done");
    assert_eq!(JobStatus::from_json(&got.body).unwrap(), done);
    assert_eq!(
        broker.depth(&failures).await,
        0,
        "the passed result is not there"
    );
    assert_eq!(
        broker.depth(&finished_jobs).await,
        0,
        "nor the running status"
    );
    assert_eq!(broker.depth(&everything).await, 4, "`#` takes all four");
    broker.cleanup().await;
}

#[tokio::test]
async fn a_missing_fedora_messaging_exchange_stops_the_start_after_the_queues_are_declared() {
    let mut config = test_config();
    config.reporter.sinks = Some(vec![Sink::FedoraMessaging]);
    config.reporter.fedora_messaging_exchange =
        format!("{}.no-such-exchange", config.amqp.namespace);
    let queue = taskbot::Topology::for_config(&config).fedora_messaging_queue();
    let run = taskbot_reporter::run(
        config.clone(),
        taskbot::Shutdown::new(std::future::pending()),
    );
    let err = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("the reporter gives up at once: waiting does not create an exchange")
        .expect_err("a missing exchange is an error");
    let text = format!("{err:#}");
    assert!(
        text.contains("reporter.fedora_messaging_exchange")
            && text.contains("no-such-exchange")
            && text.contains("cannot be used"),
        "{text}"
    );
    // Declared (by the reporter: nothing else ran) before the check, so results published
    // meanwhile are kept.
    // Asked passively on a bare connection: TestBroker::new would declare the queue itself.
    let conn = taskbot::amqp::connect(&config.amqp.url, "taskbot-test")
        .await
        .unwrap();
    let channel = conn.create_channel().await.unwrap();
    let passive = lapin::options::QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let declared = channel
        .queue_declare(&queue, passive, Default::default())
        .await;
    assert!(declared.is_ok(), "{queue}: {declared:?}");
    let _ = conn.close(200, "done").await;
    TestBroker::new(&config).await.cleanup().await;
}
