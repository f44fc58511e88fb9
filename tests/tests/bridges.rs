//! Redundant bridges: two real `fedmsg-bridge` binaries subscribed to one ZeroMQ publisher, one of
//! them killed (SIGKILL) and restarted again and again during a feed, and the real `rules`
//! binary behind them. Every bus message must be requested as a job exactly once: the surviving
//! bridge covers the other's outages, and the rules service drops the twin of an event whose job
//! it already requested (job ids are derived from the event id, the bus's `msg_id`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use taskbot::messages::{JobRequest, Message};
use taskbot_tests::{free_port, workspace_root, Deployment};

const TOPIC: &str = "org.taskbot.test.feed";
const PROBE: &str = "org.taskbot.test.probe";
const EVENTS: u64 = 300;
const SENDER: &str = "feeder";

const RULES: &str = r#"
tasks:
  example: { repo: example, ref: main }
rules:
  - name: one-job-per-feed-message
    when: { topic: org.taskbot.test.feed }
    do:
      - task: example
        item: "item-{{ msg.n }}"
        item_type: koji_build
        arches: [x86_64]
"#;

/// Envelope number `i` of the feed, as a fedmsg producer numbers them.
fn envelope(topic: &str, i: u64, msg_id: &str) -> String {
    serde_json::json!({
        "topic": topic, "i": i, "username": SENDER, "timestamp": 1_700_000_000 + i,
        "msg_id": msg_id, "msg": { "n": i },
    })
    .to_string()
}

fn send(bus: &zmq::Socket, topic: &str, body: &str) {
    bus.send_multipart([topic.as_bytes(), body.as_bytes()], 0)
        .unwrap();
}

/// The value of the bridge's gap counter on its /metrics.
async fn gaps(address: std::net::SocketAddr) -> f64 {
    let (status, text) = taskbot::ops::http_get(address, "/metrics").await.unwrap();
    assert_eq!(status, 200);
    taskbot::ops::sample(&text, "taskbot_bridge_gaps_total").unwrap_or(0.0)
}

/// Send probes (each its own msg_id) until one of them came out of the events exchange twice:
/// then both bridges are subscribed (ZeroMQ drops what is sent before a subscriber joined).
async fn wait_until_both_subscribed(d: &Deployment, bus: &zmq::Socket, tap: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen: BTreeMap<String, u32> = BTreeMap::new();
    for n in 0.. {
        send(bus, PROBE, &envelope(PROBE, n + 1, &format!("probe-{n}")));
        while let Some(msg) = d.broker.get(tap, Duration::from_millis(100)).await {
            let event = taskbot::messages::Event::from_json(&msg.body).unwrap();
            *seen.entry(event.id).or_default() += 1;
        }
        if seen.values().any(|&copies| copies >= 2) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "bridges never subscribed\n{}",
            d.logs()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_bridges_one_killed_repeatedly_lose_and_duplicate_nothing() {
    let port = free_port();
    let example = workspace_root().join("tasks/example");
    let mut d = Deployment::new(RULES, &[("example", example.as_path())], port).await;
    let context = zmq::Context::new();
    let bus = context.socket(zmq::PUB).unwrap();
    bus.bind(&format!("tcp://127.0.0.1:{port}")).unwrap();
    let t = d.broker.topology.clone();
    let jobs = d.broker.tap(&t.jobs_exchange(), "#").await;
    let probes = d.broker.tap(&t.events_exchange(), PROBE).await;
    let feed = d.broker.tap(&t.events_exchange(), TOPIC).await;

    d.start("rules", "rules", &[]);
    let steady = d.start("bridge-a", "fedmsg-bridge", &[]);
    let mut victim = d.start("bridge-b", "fedmsg-bridge", &[]);
    d.wait_for_consumers(&[t.rules_queue()], Duration::from_secs(60))
        .await;
    wait_until_both_subscribed(&d, &bus, &probes).await;

    // 300 messages over about 6 s; bridge b is killed three times for a second each.
    let mut kills = 0;
    for i in 1..=EVENTS {
        send(&bus, TOPIC, &envelope(TOPIC, i, &format!("feed-{i}")));
        tokio::time::sleep(Duration::from_millis(20)).await;
        if i % 80 == 40 && kills < 3 {
            d.services[victim].kill_hard();
            kills += 1;
        }
        if i % 80 == 0 {
            victim = d.start("bridge-b", "fedmsg-bridge", &[]);
        }
    }
    assert_eq!(kills, 3);

    // Every message is requested as a job exactly once.
    let mut requested: BTreeMap<String, u32> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while (requested.len() as u64) < EVENTS && Instant::now() < deadline {
        while let Some(msg) = d.broker.get(&jobs, Duration::from_millis(500)).await {
            let job = JobRequest::from_json(&msg.body).unwrap();
            *requested.entry(job.item).or_default() += 1;
        }
    }
    // Twins still on their way would show up now.
    while let Some(msg) = d.broker.get(&jobs, Duration::from_secs(3)).await {
        let job = JobRequest::from_json(&msg.body).unwrap();
        *requested.entry(job.item).or_default() += 1;
    }
    let missing: Vec<u64> = (1..=EVENTS)
        .filter(|i| !requested.contains_key(&format!("item-{i}")))
        .collect();
    assert!(
        missing.is_empty(),
        "never requested: {missing:?}\n{}",
        d.logs()
    );
    let twice: Vec<_> = requested.iter().filter(|(_, &n)| n > 1).collect();
    assert!(twice.is_empty(), "requested more than once: {twice:?}");
    assert_eq!(requested.len() as u64, EVENTS);

    // The redundancy was real: the events exchange carried twins (both bridges published), which
    // the rules service dropped.
    let mut copies = 0;
    while d
        .broker
        .get(&feed, Duration::from_millis(500))
        .await
        .is_some()
    {
        copies += 1;
    }
    assert!(copies > EVENTS, "only {copies} copies of {EVENTS} events");
    // And the kills really cost the victim messages: alone, it would have lost them.
    assert!(copies < 2 * EVENTS, "{copies}: the victim missed nothing");

    // The steady bridge saw every sequence number in order; a jump of 5 is one gap.
    let address = d.services[steady].ops_address(Duration::from_secs(10));
    assert_eq!(
        gaps(address).await,
        0.0,
        "{}",
        d.services[steady].log_text()
    );
    send(&bus, TOPIC, &envelope(TOPIC, EVENTS + 6, "feed-after-gap"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while gaps(address).await < 1.0 {
        assert!(Instant::now() < deadline, "the gap was not counted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(d.services[steady]
        .log_text()
        .contains("gap in the sender's sequence numbers"));
    d.shutdown().await;
}
