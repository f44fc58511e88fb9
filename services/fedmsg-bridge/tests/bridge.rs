//! The bridge against the real broker and a real ZeroMQ publisher: bus messages in, events out,
//! malformed messages dead-lettered with their reason and counted. (Shutdown with the broker
//! away is in `shutdown.rs`: it drops messages, which this file's metric counts must not see.)

use std::time::{Duration, Instant};

use lapin::options::{BasicAckOptions, BasicGetOptions};
use taskbot::amqp::{REASON_HEADER, ROUTING_KEY_HEADER};
use taskbot::messages::{Event, Message};
use taskbot::testing::{test_config, TestBroker};
use taskbot::Shutdown;
use taskbot_fedmsg_bridge::FEDMSG_SOURCE_HEADER;

mod common;
use common::{
    koji_build_completed, messages_counted, publisher, send, KOJI_MSG_ID, KOJI_TOPIC, SAMPLES,
};

const PROBE_TOPIC: &str = "taskbot.test.probe";

/// ZeroMQ drops what a PUB socket sends before the subscription reached it (the "slow joiner"),
/// so send probes until one comes out of the bridge: from then on nothing is lost.
async fn wait_until_subscribed(socket: &zmq::Socket, broker: &TestBroker, probes: &str) {
    let probe = format!(r#"{{"topic": "{PROBE_TOPIC}", "msg": {{}}}}"#);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        send(socket, &[PROBE_TOPIC.as_bytes(), probe.as_bytes()]);
        if broker
            .get(probes, Duration::from_millis(200))
            .await
            .is_some()
        {
            return;
        }
        assert!(Instant::now() < deadline, "the bridge never subscribed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bus_messages_become_events_and_malformed_ones_are_dead_lettered() {
    let (socket, endpoint) = publisher();
    let mut config = test_config();
    config.bridge.endpoints = vec![endpoint.clone()];
    // Koji messages and the probes only: a Pagure message must be filtered out.
    config.bridge.topic_prefixes = vec![
        "org.fedoraproject.prod.buildsys.".into(),
        PROBE_TOPIC.into(),
    ];
    let broker = TestBroker::new(&config).await;
    let t = broker.topology.clone();
    let probes = broker.tap(&t.events_exchange(), PROBE_TOPIC).await;
    let koji = broker.tap(&t.events_exchange(), KOJI_TOPIC).await;
    let everything = broker.tap(&t.events_exchange(), "#").await;
    let dead = t.dead_letter_queue(&t.bridge_source());

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let service = tokio::spawn(taskbot_fedmsg_bridge::run(
        config.clone(),
        Shutdown::new(async {
            let _ = stopped.await;
        }),
    ));
    wait_until_subscribed(&socket, &broker, &probes).await;

    send(&socket, &[b"org.fedoraproject.prod.buildsys.single-frame"]);
    send(
        &socket,
        &[b"org.fedoraproject.prod.buildsys.garbage", b"{not json"],
    );
    let pagure = SAMPLES
        .lines()
        .find(|l| l.contains("\"io.pagure.prod.pagure.git.receive\""))
        .unwrap();
    send(
        &socket,
        &[b"io.pagure.prod.pagure.git.receive", pagure.as_bytes()],
    );
    let sample = koji_build_completed();
    send(&socket, &[KOJI_TOPIC.as_bytes(), sample.as_bytes()]);

    // The real message, after two bad ones: the bridge kept going.
    let channel = broker.publisher.channel();
    let deadline = Instant::now() + Duration::from_secs(15);
    let delivery = loop {
        if let Some(msg) = channel
            .basic_get(&koji, BasicGetOptions::default())
            .await
            .unwrap()
        {
            msg.delivery
                .acker
                .ack(BasicAckOptions::default())
                .await
                .unwrap();
            break msg.delivery;
        }
        assert!(Instant::now() < deadline, "the Koji event never arrived");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(delivery.routing_key.as_str(), KOJI_TOPIC);
    assert_eq!(
        delivery
            .properties
            .message_id()
            .as_ref()
            .map(|s| s.as_str()),
        Some(KOJI_MSG_ID)
    );
    let event = Event::from_json(&delivery.data).unwrap();
    assert_eq!(event.id, KOJI_MSG_ID);
    assert_eq!(event.topic, KOJI_TOPIC);
    assert_eq!(event.source, format!("fedmsg:{endpoint}"));
    assert_eq!(event.sent_at, Some(1424216566.0));
    assert_eq!(event.msg["name"], "ansible");
    assert_eq!(event.msg["new"], 1);

    // On the catch-all tap, after the probes, the Koji event comes next: the Pagure message sent
    // before it was filtered out by the topic prefixes.
    let mut topics = Vec::new();
    while let Some(msg) = broker.get(&everything, Duration::from_millis(500)).await {
        topics.push(msg.routing_key);
    }
    topics.retain(|t| t != PROBE_TOPIC);
    assert_eq!(topics, vec![KOJI_TOPIC.to_string()]);

    let first = broker
        .get(&dead, Duration::from_secs(5))
        .await
        .expect("the one-frame message is dead-lettered");
    assert_eq!(first.body, b"org.fedoraproject.prod.buildsys.single-frame");
    let reason = first.header(REASON_HEADER).unwrap();
    assert!(reason.starts_with("expected 2 frames"), "{reason}");
    assert_eq!(
        first.header(FEDMSG_SOURCE_HEADER),
        Some(format!("fedmsg:{endpoint}").as_str())
    );

    let second = broker
        .get(&dead, Duration::from_secs(5))
        .await
        .expect("the non-JSON message is dead-lettered");
    assert_eq!(second.body, b"{not json");
    let reason = second.header(REASON_HEADER).unwrap();
    assert!(reason.starts_with("envelope is not valid JSON"), "{reason}");
    assert_eq!(
        second.header(ROUTING_KEY_HEADER),
        Some("org.fedoraproject.prod.buildsys.garbage")
    );
    assert_eq!(broker.depth(&dead).await, 0, "nothing else was refused");

    // The same counts on /metrics (the bridge's own registry: this test runs it in-process).
    let metrics = taskbot::ops::global().registry.render();
    let count = |outcome: &str| messages_counted(&metrics, outcome);
    assert_eq!(count("malformed"), 2.0, "{metrics}");
    // The probes, the Pagure message (filtered out by prefix, so never received) aside: the
    // two bad messages and the Koji one were read, the Koji one published.
    assert!(count("received") >= 3.0, "{metrics}");
    assert!(count("published") >= 1.0, "{metrics}");
    assert_eq!(count("dropped"), 0.0, "{metrics}");

    let _ = stop.send(());
    let result = tokio::time::timeout(Duration::from_secs(10), service)
        .await
        .expect("run() returns promptly after shutdown")
        .unwrap();
    assert!(result.is_ok(), "{result:?}");
    broker.cleanup().await;
}

#[tokio::test]
async fn a_malformed_endpoint_is_refused_at_start() {
    let mut config = test_config();
    config.bridge.endpoints = vec!["not-an-endpoint".into()];
    let shutdown = Shutdown::new(std::future::pending());
    let err = taskbot_fedmsg_bridge::run(config, shutdown)
        .await
        .expect_err("the configuration refuses the endpoint before ZeroMQ sees it");
    assert!(
        format!("{err:#}").contains(
            "bridge.endpoints (--endpoint): \"not-an-endpoint\" is not a ZeroMQ endpoint \
             (TRANSPORT://ADDRESS"
        ),
        "{err:#}"
    );

    let mut config = test_config();
    config.bridge.topic_prefixes.clear();
    let err = taskbot_fedmsg_bridge::run(config, Shutdown::new(std::future::pending()))
        .await
        .expect_err("no prefix means nothing would be received");
    assert!(err.to_string().contains("bridge.topic_prefixes"), "{err}");
}
