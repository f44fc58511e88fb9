//! `taskbot dlq` against the real RabbitMQ, each test in a namespace of its own: `retry` moves
//! each dead letter once, back to the one queue that refused it under the routing key it was
//! first published with (whether a service or the broker dead-lettered it), `show` prints that
//! routing key, and a queue name that is none of the namespace's is a usage error.

use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicRejectOptions};
use lapin::types::FieldTable;
use serde_json::Value;
use taskbot::amqp::{self, Incoming, Outgoing, Publisher, REASON_HEADER, SOURCE_HEADER};
use taskbot::testing::{test_config, TestBroker};

fn taskbot(broker: &TestBroker, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_taskbot"))
        .args(args)
        .env_remove("TASKBOT_CONFIG")
        .env("TASKBOT_AMQP__URL", &broker.config.amqp.url)
        .env("TASKBOT_AMQP__NAMESPACE", &broker.config.amqp.namespace)
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

/// What a consumer that refuses everything saw: each delivery's exchange and routing key.
type Seen = Arc<Mutex<Vec<(String, String)>>>;

/// A consumer of `queue` that dead-letters every delivery again, as a service whose cause was not
/// fixed would (through the same [`Outgoing::dead_letter`]).
async fn refuse_everything(broker: &TestBroker, queue: &str) -> (lapin::Connection, Seen) {
    let conn = amqp::connect(&broker.config.amqp.url, "refuser")
        .await
        .unwrap();
    let publisher = Publisher::new(&conn, "refuser").await.unwrap();
    let mut consumer = publisher
        .channel()
        .basic_consume(
            queue,
            "refuser",
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let seen: Seen = Arc::default();
    let (topology, queue, record) = (broker.topology.clone(), queue.to_string(), seen.clone());
    tokio::spawn(async move {
        while let Some(Ok(delivery)) = consumer.next().await {
            let incoming = Incoming {
                exchange: delivery.exchange.to_string(),
                routing_key: delivery.routing_key.to_string(),
                body: delivery.data.clone(),
                headers: delivery
                    .properties
                    .headers()
                    .as_ref()
                    .map(|t| {
                        t.inner()
                            .iter()
                            .filter_map(|(k, v)| match v {
                                lapin::types::AMQPValue::LongString(s) => Some((
                                    k.to_string(),
                                    String::from_utf8_lossy(s.as_bytes()).into_owned(),
                                )),
                                _ => None,
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
                ..Default::default()
            };
            record
                .lock()
                .unwrap()
                .push((incoming.exchange.clone(), incoming.routing_key.clone()));
            let dead = Outgoing::dead_letter(&topology, &queue, &incoming, "still refused");
            publisher.publish(&dead).await.unwrap();
            delivery
                .acker
                .ack(BasicAckOptions::default())
                .await
                .unwrap();
        }
    });
    (conn, seen)
}

/// Wait until `done` holds or `timeout` passed.
async fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_moves_each_letter_once_back_to_its_queue_under_its_first_routing_key() {
    let mut config = test_config();
    // The JSON-lines sink tells statuses from results by their routing key.
    config.reporter.jsonl_path = Some("/nonexistent/taskbot.jsonl".into());
    let broker = TestBroker::new(&config).await;
    let t = broker.topology.clone();
    let jsonl = t.jsonl_queue();
    let dead = t.dead_letter_queue(&jsonl);
    for key in ["job.done", "result.PASSED.dist.rpmlint"] {
        let first = Incoming {
            exchange: t.results_exchange(),
            ..Incoming::new(key, format!("{{\"key\": \"{key}\"}}").into_bytes())
        };
        let letter = Outgoing::dead_letter(&t, &jsonl, &first, "the sink refused it");
        broker.publisher.publish(&letter).await.unwrap();
    }
    let (_conn, seen) = refuse_everything(&broker, &jsonl).await;

    let retried = ok(&taskbot(
        &broker,
        &["dlq", "retry", "--queue", "sink.jsonl"],
    ));
    assert!(retried.contains(": 2 re-queued"), "{retried}");
    assert!(retried.contains("2 dead letters re-queued"), "{retried}");
    // Refused again, both are back in the dead-letter queue, and were delivered once each.
    wait_until(Duration::from_secs(10), || seen.lock().unwrap().len() >= 2).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let seen = seen.lock().unwrap().clone();
    let keys: Vec<&str> = seen.iter().map(|(_, key)| key.as_str()).collect();
    assert_eq!(keys, ["job.done", "result.PASSED.dist.rpmlint"], "{seen:?}");
    assert_eq!(broker.depth(&dead).await, 2);
    // No other queue bound to the results exchange got a copy.
    assert_eq!(broker.depth(&t.postgres_status_queue()).await, 0);
    assert_eq!(broker.depth(&t.postgres_results_queue()).await, 0);

    // Dead-lettered a second time, they still know their first route.
    let shown: Value = serde_json::from_str(&ok(&taskbot(
        &broker,
        &["dlq", "show", "--queue", "sink.jsonl", "--json"],
    )))
    .unwrap();
    let messages = shown[0]["messages"].as_array().unwrap();
    let routes: Vec<(&str, &str)> = messages
        .iter()
        .map(|m| {
            (
                m["exchange"].as_str().unwrap_or("?"),
                m["routing_key"].as_str().unwrap(),
            )
        })
        .collect();
    let results = t.results_exchange();
    assert_eq!(
        routes,
        [
            (results.as_str(), "job.done"),
            (results.as_str(), "result.PASSED.dist.rpmlint")
        ],
        "{shown:#}"
    );
    assert_eq!(messages[0]["reason"], "still refused");
    broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_letter_the_broker_dead_lettered_goes_back_under_its_x_death_route() {
    let broker = TestBroker::new(&test_config()).await;
    let t = broker.topology.clone();
    let (rules, dead) = (t.rules_queue(), t.dead_letter_queue(&t.rules_queue()));
    broker
        .publish(
            &t.events_exchange(),
            "org.example.build",
            b"{\"n\": 1}".to_vec(),
        )
        .await;
    // Rejected without requeue: the broker itself dead-letters it (x-death).
    let channel = broker.publisher.channel();
    let mut taken = None;
    for _ in 0..50 {
        taken = channel
            .basic_get(&rules, BasicGetOptions::default())
            .await
            .unwrap();
        if taken.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let taken = taken.expect("the event reached the rules queue");
    taken
        .delivery
        .acker
        .reject(BasicRejectOptions { requeue: false })
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while broker.depth(&dead).await == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let shown = ok(&taskbot(&broker, &["dlq", "show", "--queue", "rules"]));
    assert!(shown.contains("routing key: org.example.build"), "{shown}");
    assert!(
        shown.contains(&format!("exchange: {}", t.events_exchange())),
        "{shown}"
    );
    assert!(!shown.contains(&format!("routing key: {rules}")), "{shown}");

    let retried = ok(&taskbot(&broker, &["dlq", "retry", "--queue", "rules"]));
    assert!(retried.contains("1 dead letters re-queued"), "{retried}");
    let back = broker.get(&rules, Duration::from_secs(5)).await.unwrap();
    assert_eq!(back.routing_key, "org.example.build");
    assert_eq!(back.body, b"{\"n\": 1}");
    assert!(back.header("x-death").is_none(), "{:?}", back.headers);
    assert_eq!(broker.depth(&dead).await, 0);
    broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_queue_names_are_usage_errors_naming_the_valid_ones() {
    let broker = TestBroker::new(&test_config()).await;
    let t = broker.topology.clone();
    for args in [
        &["dlq", "retry", "--queue", "bridge"][..],
        &["dlq", "list", "--queue", "nope"],
        &["dlq", "show", "--queue", "run.s390x"],
        &["dlq", "purge", "--queue", "bridge", "--yes"],
    ] {
        let refused = taskbot(&broker, args);
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert_eq!(refused.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(refused.stdout.is_empty(), "{args:?}");
        for name in [
            "rules",
            "provisioner",
            "run.x86_64",
            "fedmsg-bridge",
            "sink.postgres.results",
        ] {
            assert!(stderr.contains(name), "{args:?} names {name}: {stderr}");
        }
    }
    // The full name, and the dead-letter queue's own name, are understood.
    let rules = t.rules_queue();
    for name in [rules.clone(), t.dead_letter_queue(&rules)] {
        let listed = ok(&taskbot(&broker, &["dlq", "list", "--queue", &name]));
        assert!(
            listed.contains(&format!("{rules}.dead: 0 dead letters")),
            "{listed}"
        );
    }

    // A bridge's dead letters have no queue to go back to: said, not a silent "0 re-queued".
    let source = t.bridge_source();
    for body in ["not json", "{\"topic\": 5}"] {
        let letter = Outgoing::new(t.dead_letter_exchange(), &source, body.as_bytes().to_vec())
            .with_header(REASON_HEADER, "malformed")
            .with_header(SOURCE_HEADER, &source);
        broker.publisher.publish(&letter).await.unwrap();
    }
    let retried = ok(&taskbot(
        &broker,
        &["dlq", "retry", "--queue", "fedmsg-bridge"],
    ));
    assert!(retried.contains("2 not re-queued"), "{retried}");
    assert!(retried.contains("taskbot replay"), "{retried}");
    assert_eq!(broker.depth(&t.dead_letter_queue(&source)).await, 2);
    broker.cleanup().await;
}
