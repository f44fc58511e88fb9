//! `taskbot status`, `dlq`, `submit` and `replay` against the real RabbitMQ (and its management
//! API), each test in a namespace of its own. The numbers `status` prints are checked against
//! the broker's own (queue declarations over AMQP), not against the management API it reads.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use serde_json::Value;
use taskbot::amqp::{Outgoing, REASON_HEADER, SOURCE_HEADER};
use taskbot::messages::{JobRequest, Message};
use taskbot::testing::{test_config, TestBroker};

fn taskbot(broker: &TestBroker, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_taskbot"))
        .args(args)
        .env_remove("TASKBOT_CONFIG")
        .env("TASKBOT_AMQP__URL", &broker.config.amqp.url)
        .env("TASKBOT_AMQP__NAMESPACE", &broker.config.amqp.namespace)
        // Nothing listens there: `status` must still work, saying the api is unreachable.
        .env("TASKBOT_API__PUBLIC_URL", "http://127.0.0.1:9")
        .output()
        .expect("run taskbot")
}

fn ok(output: &Output) -> String {
    assert!(
        output.status.success(),
        "taskbot failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

async fn dead_letter(broker: &TestBroker, source: &str, body: &str, reason: &str) {
    let t = &broker.topology;
    broker
        .publisher
        .publish(
            &Outgoing::new(t.dead_letter_exchange(), source, body.as_bytes().to_vec())
                .with_header(REASON_HEADER, reason)
                .with_header(SOURCE_HEADER, source),
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_the_brokers_numbers() {
    let config = test_config();
    let broker = TestBroker::new(&config).await;
    let t = broker.topology.clone();
    for n in 0..3 {
        broker
            .publish(
                &t.events_exchange(),
                "org.test.a",
                format!("{{\"n\": {n}}}").into_bytes(),
            )
            .await;
    }
    for _ in 0..2 {
        broker
            .publish(&t.jobs_exchange(), "x86_64", b"{}".to_vec())
            .await;
    }
    dead_letter(&broker, &t.rules_queue(), "{}", "broken").await;
    // One consumer on the provisioner queue, holding one message unacknowledged.
    let channel = broker.publisher.channel().clone();
    channel
        .basic_qos(1, BasicQosOptions::default())
        .await
        .unwrap();
    let mut consumer = channel
        .basic_consume(
            &t.provisioner_queue(),
            "status-test",
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let _held = consumer.next().await.unwrap().unwrap();

    // The broker's own numbers, over AMQP.
    let rules_ready = broker.depth(&t.rules_queue()).await;
    let provisioner_ready = broker.depth(&t.provisioner_queue()).await;
    let provisioner_consumers = broker.consumers(&t.provisioner_queue()).await;
    let rules_dead = broker.depth(&t.dead_letter_queue(&t.rules_queue())).await;
    assert_eq!(
        (
            rules_ready,
            provisioner_ready,
            provisioner_consumers,
            rules_dead
        ),
        (3, 1, 1, 1)
    );

    // The management API samples every few seconds: read until it has caught up.
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        let status: Value =
            serde_json::from_str(&ok(&taskbot(&broker, &["status", "--json"]))).unwrap();
        let stage = |name: &str| {
            status["stages"]
                .as_array()
                .unwrap()
                .iter()
                .find(|s| s["stage"] == name)
                .cloned()
                .unwrap_or(Value::Null)
        };
        let seen = (
            stage("rules")["queue"]["ready"].as_u64(),
            stage("provisioner")["queue"]["ready"].as_u64(),
            stage("provisioner")["queue"]["unacked"].as_u64(),
            stage("provisioner")["queue"]["consumers"].as_u64(),
            stage("rules")["dead_letters"].as_u64(),
        );
        if seen == (Some(3), Some(1), Some(1), Some(1), Some(1)) || Instant::now() > deadline {
            assert_eq!(
                seen,
                (
                    Some(rules_ready as u64),
                    Some(provisioner_ready as u64),
                    Some(1),
                    Some(provisioner_consumers as u64),
                    Some(rules_dead as u64)
                ),
                "{status:#}"
            );
            break status;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    // Runners per arch are the run queues' consumers: none here.
    assert_eq!(status["runners"]["x86_64"], 0, "{status:#}");
    assert!(
        status["jobs_error"]
            .as_str()
            .unwrap()
            .contains("cannot be reached"),
        "{status:#}"
    );
    let text = ok(&taskbot(&broker, &["status"]));
    assert!(text.contains("runners per arch: "), "{text}");
    assert!(text.contains("jobs by state: unknown"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("rules ") && l.split_whitespace().nth(1) == Some("3")),
        "{text}"
    );
    broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_shown_retried_and_purged_losing_none() {
    let config = test_config();
    let broker = TestBroker::new(&config).await;
    let t = broker.topology.clone();
    let provisioner = t.provisioner_queue();
    let provisioner_dead = t.dead_letter_queue(&provisioner);
    dead_letter(
        &broker,
        &provisioner,
        "{\"first\": 1}",
        "missing field `job`",
    )
    .await;
    dead_letter(
        &broker,
        &provisioner,
        "{\"second\": 2}",
        "missing field `job`",
    )
    .await;
    dead_letter(
        &broker,
        &t.rules_queue(),
        "not json",
        "body is not valid JSON",
    )
    .await;

    let list: Value =
        serde_json::from_str(&ok(&taskbot(&broker, &["dlq", "list", "--json"]))).unwrap();
    let count = |queue: &str| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|q| q["queue"] == queue)
            .map(|q| q["count"].as_u64().unwrap())
    };
    assert_eq!(count(&provisioner_dead), Some(2), "{list:#}");
    assert_eq!(
        count(&t.dead_letter_queue(&t.rules_queue())),
        Some(1),
        "{list:#}"
    );

    // `show` prints them and leaves them where they are.
    let shown = ok(&taskbot(
        &broker,
        &["dlq", "show", "--queue", "provisioner"],
    ));
    assert!(shown.contains("reason: missing field `job`"), "{shown}");
    assert!(
        shown.contains("{\"first\": 1}") && shown.contains("{\"second\": 2}"),
        "{shown}"
    );
    assert!(
        !shown.contains("not json"),
        "only the queue asked for: {shown}"
    );
    assert_eq!(broker.depth(&provisioner_dead).await, 2);

    // `retry` puts them back on the provisioner's queue, in order, and nowhere else.
    let retried = ok(&taskbot(
        &broker,
        &["dlq", "retry", "--queue", "provisioner"],
    ));
    assert!(retried.contains("2 dead letters re-queued"), "{retried}");
    assert_eq!(broker.depth(&provisioner_dead).await, 0);
    let first = broker
        .get(&provisioner, Duration::from_secs(5))
        .await
        .unwrap();
    let second = broker
        .get(&provisioner, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(first.body, b"{\"first\": 1}");
    assert_eq!(second.body, b"{\"second\": 2}");
    assert!(
        first.header(REASON_HEADER).is_none(),
        "dead-letter headers are dropped"
    );
    assert_eq!(broker.depth(&t.rules_queue()).await, 0);

    // A run message is not re-queued: runners take run messages only from the provisioner.
    let run = t.run_queue("x86_64");
    let run_dead = t.dead_letter_queue(&run);
    dead_letter(
        &broker,
        &run,
        "{\"job\": 1}",
        "published by broker user \"x\"",
    )
    .await;
    let retried = ok(&taskbot(
        &broker,
        &["dlq", "retry", "--queue", "run.x86_64"],
    ));
    assert!(retried.contains("taskbot submit"), "{retried}");
    assert!(retried.contains("0 dead letters re-queued"), "{retried}");
    assert_eq!(broker.depth(&run_dead).await, 1, "left where it was");
    assert_eq!(broker.depth(&run).await, 0);

    // `purge` needs --yes.
    let refused = taskbot(&broker, &["dlq", "purge", "--queue", "rules"]);
    assert_eq!(refused.status.code(), Some(2), "a usage error");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--yes"));
    assert_eq!(
        broker.depth(&t.dead_letter_queue(&t.rules_queue())).await,
        1
    );
    let purged = ok(&taskbot(
        &broker,
        &["dlq", "purge", "--queue", "rules", "--yes"],
    ));
    assert!(purged.contains(": 1 purged"), "{purged}");
    assert_eq!(
        broker.depth(&t.dead_letter_queue(&t.rules_queue())).await,
        0
    );
    broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_schedules_one_job_per_arch_like_a_rule() {
    let config = test_config();
    let broker = TestBroker::new(&config).await;
    let t = broker.topology.clone();
    let out = ok(&taskbot(
        &broker,
        &[
            "submit",
            "--task",
            "example",
            "--repo",
            "file:///srv/tasks/example",
            "--item",
            "xchat-0.5-1.fc20",
            "--arch",
            "x86_64,noarch",
            "--arg",
            "koji_url=http://koji.example",
        ],
    ));
    assert_eq!(
        out.lines()
            .filter(|l| l.starts_with("submitted job "))
            .count(),
        2,
        "{out}"
    );
    let mut arches = Vec::new();
    for _ in 0..2 {
        let msg = broker
            .get(&t.provisioner_queue(), Duration::from_secs(5))
            .await
            .unwrap();
        let job = JobRequest::from_json(&msg.body).unwrap();
        assert_eq!(
            (job.rule.as_str(), job.item.as_str()),
            ("manual", "xchat-0.5-1.fc20")
        );
        assert_eq!(job.args["koji_url"], "http://koji.example");
        assert!(out.contains(&job.job_id.to_string()), "{out}");
        arches.push(job.arch);
    }
    arches.sort();
    assert_eq!(arches, ["noarch", "x86_64"]);
    let bad = taskbot(
        &broker,
        &[
            "submit", "--task", "t", "--repo", "r", "--item", "i", "--arg", "novalue",
        ],
    );
    assert_eq!(bad.status.code(), Some(2), "a usage error");
    assert!(String::from_utf8_lossy(&bad.stderr).contains("is not KEY=VALUE"));
    broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_feeds_recorded_messages_and_datagrepper_dumps_as_events() {
    let config = test_config();
    let broker = TestBroker::new(&config).await;
    let t = broker.topology.clone();
    let samples = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/fedmsg-real.jsonl"
    );
    let lines = std::fs::read_to_string(samples).unwrap();
    let count = lines.lines().filter(|l| !l.trim().is_empty()).count();
    let out = ok(&taskbot(&broker, &["replay", samples]));
    assert!(
        out.starts_with(&format!("replayed {count} messages")),
        "{out}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while broker.depth(&t.rules_queue()).await < count as u32 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(broker.depth(&t.rules_queue()).await, count as u32);

    // A datagrepper dump of two of them.
    let dir = tempfile::tempdir().unwrap();
    let envelopes: Vec<Value> = lines
        .lines()
        .take(2)
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let dump = dir.path().join("dump.json");
    std::fs::write(
        &dump,
        serde_json::json!({"raw_messages": envelopes, "pages": 1}).to_string(),
    )
    .unwrap();
    ok(&taskbot(&broker, &["replay", dump.to_str().unwrap()]));
    let deadline = Instant::now() + Duration::from_secs(10);
    while broker.depth(&t.rules_queue()).await < count as u32 + 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(broker.depth(&t.rules_queue()).await, count as u32 + 2);
    let first = broker
        .get(&t.rules_queue(), Duration::from_secs(5))
        .await
        .unwrap();
    let event = taskbot::messages::Event::from_json(&first.body).unwrap();
    assert_eq!(first.routing_key, event.topic);

    // A broken input is refused before anything is published.
    std::fs::write(
        dir.path().join("bad.jsonl"),
        "{\"topic\": \"a\"}\nnot json\n",
    )
    .unwrap();
    let bad = taskbot(
        &broker,
        &["replay", dir.path().join("bad.jsonl").to_str().unwrap()],
    );
    assert_eq!(bad.status.code(), Some(1));
    broker.cleanup().await;
}
