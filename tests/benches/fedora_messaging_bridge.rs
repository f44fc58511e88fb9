//! `make bench`: events per second through the fedora-messaging bridge, against a raw lapin
//! consume-and-republish loop on the same two brokers, in the same run.
//!
//! The external broker is a RabbitMQ node of the bench's own set up like Fedora's (TLS, client
//! certificate, SASL EXTERNAL; `PrivateBroker::with_tls`); Taskbot's is the shared one (a namespace
//! of the bench's own). Before each run `MESSAGES` Koji-shaped messages (fedora-messaging's
//! properties and headers, a 727-byte body) wait in a durable queue on the external broker. A run
//! takes them all to Taskbot's events exchange, publisher confirms on, each external delivery
//! acked only once its publish was confirmed, with the same prefetch:
//!
//! - A, the bridge: `taskbot_fedora_messaging_bridge::run` in-process (optimised build), timed
//!   from its first delivery to its `MESSAGES`th confirmed event (its /metrics counters);
//! - B, raw: the same connection code (`ExternalBroker::connect`), `basic_consume`, and for each
//!   delivery a `basic_publish` of the body as it is, the confirm awaited in a task of its own that
//!   then acks: no decoding, no mapping, no dead-letter checks.
//!
//! A B A B; each figure is printed, then the mean of each way and their ratio.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueuePurgeOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use taskbot::amqp::ExternalBroker;
use taskbot::config::FedoraMessagingBridgeConfig;
use taskbot::testing::{test_config, TestBroker};
use taskbot::Shutdown;
use taskbot_tests::PrivateBroker;

const MESSAGES: usize = 20_000;
const ROUNDS: usize = 2;
const QUEUE: &str = "taskbot-bench";
const VHOST: &str = "/pubsub";
const USER: &str = "taskbot-bridge";
const TOPIC: &str = "org.fedoraproject.prod.buildsys.build.state.change";

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(bench());
}

fn body(n: usize) -> Vec<u8> {
    serde_json::json!({
        "name": format!("pkg{n}"), "version": "1.0", "release": "1.fc41", "epoch": null,
        "attribute": "state", "old": 0, "new": 1, "build_id": 3_000_000 + n,
        "task_id": 30_000_000 + n, "owner": "alice", "instance": "primary",
        "url": format!("https://koji.fedoraproject.org/koji/buildinfo?buildID={}", 3_000_000 + n),
        "request": [format!("git+https://src.fedoraproject.org/rpms/pkg{n}.git#0123456789abcdef"),
                    "f41-candidate", {}],
        "task": {"id": 30_000_000 + n, "method": "build", "arch": "noarch", "state": 2,
                 "host_id": 42, "priority": 20, "channel_id": 1,
                 "result": {"rpms": [format!("tasks/{n}/pkg{n}-1.0-1.fc41.x86_64.rpm"),
                                     format!("tasks/{n}/pkg{n}-1.0-1.fc41.aarch64.rpm")],
                            "srpms": [format!("tasks/{n}/pkg{n}-1.0-1.fc41.src.rpm")],
                            "logs": [format!("tasks/{n}/build.log"), format!("tasks/{n}/root.log")]}},
        "creation_time": "2026-03-01T10:13:20+00:00",
        "completion_time": "2026-03-01T10:20:30+00:00",
    })
    .to_string()
    .into_bytes()
}

/// Fill the external queue with `MESSAGES` messages, as fedora-messaging publishes them.
async fn preload(node: &PrivateBroker) {
    let url = format!("amqp://guest:guest@127.0.0.1:{}/%2Fpubsub", node.port);
    let conn = taskbot::amqp::connect(&url, "bench-preload").await.unwrap();
    let channel = conn.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let mut pending = Vec::new();
    for n in 0..MESSAGES {
        let mut headers = FieldTable::default();
        let text = |s: &str| AMQPValue::LongString(s.into());
        headers.insert(
            "fedora_messaging_schema".into(),
            text("koji_fedoramessaging.build.BuildStateChangeV1"),
        );
        headers.insert(
            "fedora_messaging_severity".into(),
            AMQPValue::LongLongInt(20),
        );
        headers.insert("sent-at".into(), text("2026-03-01T10:20:30+00:00"));
        headers.insert("priority".into(), AMQPValue::LongLongInt(0));
        headers.insert(
            format!("fedora_messaging_rpm_pkg{n}").as_str().into(),
            AMQPValue::Boolean(true),
        );
        let props = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_content_encoding("utf-8".into())
            .with_delivery_mode(2)
            .with_message_id(uuid::Uuid::new_v4().to_string().into())
            .with_headers(headers);
        let confirm = channel
            .basic_publish("", QUEUE, BasicPublishOptions::default(), &body(n), props)
            .await
            .unwrap();
        pending.push(confirm);
        if pending.len() >= 500 {
            for c in pending.drain(..) {
                c.await.unwrap();
            }
        }
    }
    for c in pending {
        c.await.unwrap();
    }
    let _ = conn.close(200, "loaded").await;
}

fn metric(outcome: &str) -> f64 {
    let series = format!(
        "{}{{outcome=\"{outcome}\",topic=\"all\"}}",
        taskbot_fedora_messaging_bridge::MESSAGES_METRIC
    );
    taskbot::ops::sample(&taskbot::ops::global().registry.render(), &series).unwrap_or(0.0)
}

/// A: the bridge, in-process; events per second.
async fn bridge_run(config: &taskbot::Config) -> f64 {
    let (received0, published0) = (metric("received"), metric("published"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let service = tokio::spawn(taskbot_fedora_messaging_bridge::run(
        config.clone(),
        Shutdown::new(async {
            let _ = stopped.await;
        }),
    ));
    while metric("received") <= received0 {
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    let started = Instant::now();
    let target = published0 + MESSAGES as f64;
    while metric("published") < target {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let rate = MESSAGES as f64 / started.elapsed().as_secs_f64();
    let _ = stop.send(());
    service.await.unwrap().unwrap();
    rate
}

/// B: a raw consume-and-republish loop; events per second.
async fn raw_run(
    external: &ExternalBroker,
    fm: &FedoraMessagingBridgeConfig,
    taskbot_url: &str,
    exchange: &str,
) -> f64 {
    let source = external.connect("bench-raw").await.unwrap();
    let channel = source.create_channel().await.unwrap();
    channel
        .basic_qos(fm.prefetch, BasicQosOptions::default())
        .await
        .unwrap();
    let target = taskbot::amqp::connect(taskbot_url, "bench-raw-publish")
        .await
        .unwrap();
    let out = target.create_channel().await.unwrap();
    out.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let mut consumer = channel
        .basic_consume(
            QUEUE,
            "bench-raw",
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let done = Arc::new(AtomicUsize::new(0));
    let mut started = None;
    let mut taken = 0;
    while taken < MESSAGES {
        let delivery = consumer.next().await.unwrap().unwrap();
        started.get_or_insert_with(Instant::now);
        taken += 1;
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_message_id(delivery.properties.message_id().clone().unwrap_or_default());
        let confirm = out
            .basic_publish(
                exchange,
                delivery.routing_key.as_str(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                &delivery.data,
                props,
            )
            .await
            .unwrap();
        let done = done.clone();
        tokio::spawn(async move {
            confirm.await.unwrap();
            delivery
                .acker
                .ack(BasicAckOptions::default())
                .await
                .unwrap();
            done.fetch_add(1, Ordering::SeqCst);
        });
    }
    while done.load(Ordering::SeqCst) < MESSAGES {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let rate = MESSAGES as f64 / started.unwrap().elapsed().as_secs_f64();
    let _ = source.close(200, "done").await;
    let _ = target.close(200, "done").await;
    rate
}

async fn bench() {
    let node = PrivateBroker::with_tls(VHOST, &[USER]);
    let files = node.tls_files();
    let (cert, key) = files.client(USER);
    let mut config = test_config();
    config.log.level = "warn".into();
    taskbot::telemetry::init(&config.log);
    config.fedora_messaging_bridge = FedoraMessagingBridgeConfig {
        url: node.tls_url(VHOST),
        ca_file: Some(files.ca()),
        client_cert: Some(cert),
        client_key: Some(key),
        queue: Some(QUEUE.into()),
        topics: vec![TOPIC.into()],
        ..Default::default()
    };
    let broker = TestBroker::new(&config).await;
    let t = broker.topology.clone();
    // Where the events go: the rules queue (declared with the topology, bound to `#`); emptied
    // after each run.
    let sink = t.rules_queue();
    let external = ExternalBroker::new(&config.fedora_messaging_bridge).unwrap();
    {
        let conn = external.connect("bench-declare").await.unwrap();
        let channel = conn.create_channel().await.unwrap();
        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        channel
            .queue_declare(QUEUE, durable, FieldTable::default())
            .await
            .unwrap();
        let _ = conn.close(200, "declared").await;
    }
    println!(
        "fedora-messaging bridge benchmark: {MESSAGES} messages per run ({} bytes of body each), \
         TLS + EXTERNAL external broker, prefetch {}, confirms on",
        body(0).len(),
        config.fedora_messaging_bridge.prefetch
    );
    let purge = |queue: String| {
        let broker = &broker;
        async move {
            broker
                .publisher
                .channel()
                .queue_purge(&queue, QueuePurgeOptions::default())
                .await
                .unwrap();
        }
    };
    let (mut bridge_rates, mut raw_rates) = (Vec::new(), Vec::new());
    for round in 1..=ROUNDS {
        preload(&node).await;
        let rate = bridge_run(&config).await;
        println!("round {round} A bridge: {rate:>9.0} events/s");
        bridge_rates.push(rate);
        purge(sink.clone()).await;

        preload(&node).await;
        let rate = raw_run(
            &external,
            &config.fedora_messaging_bridge,
            &config.amqp.url,
            &t.events_exchange(),
        )
        .await;
        println!("round {round} B raw:    {rate:>9.0} events/s");
        raw_rates.push(rate);
        purge(sink.clone()).await;
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (a, b) = (mean(&bridge_rates), mean(&raw_rates));
    println!(
        "mean: bridge {a:.0} events/s, raw loop {b:.0} events/s: the bridge does {:.0}% of the raw loop",
        100.0 * a / b
    );
    broker.cleanup().await;
}
