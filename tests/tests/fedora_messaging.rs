//! The fedora-messaging bridge against real peers: a RabbitMQ node of the test's own run as
//! Fedora's bus is (TLS 1.2+, client certificates made with `openssl`, SASL EXTERNAL, a vhost
//! `/pubsub`), Fedora's messages published by the real `fedora-messaging` library with the real
//! Koji and Bodhi message classes (the virtualenv `scripts/ensure-services.sh` makes), and the
//! real `fedora-messaging-bridge`, `rules` and `taskbot` binaries on the shared broker.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use taskbot::amqp::REASON_HEADER;
use taskbot::messages::{Event, JobRequest, Message};
use taskbot::testing::{http_get, TestBroker};
use taskbot_tests::{binary, workspace_root, Deployment, PrivateBroker};

const VHOST: &str = "/pubsub";
const PUBLISHER: &str = "fm-publisher";
const BRIDGE_USER: &str = "taskbot-bridge";
const QUEUE: &str = "taskbot-test";

/// The virtualenv's Python, with fedora-messaging and the schema packages.
fn python() -> PathBuf {
    let venv = std::env::var_os("TASKBOT_FEDORA_MESSAGING_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".run/fedora-messaging-venv"));
    let python = venv.join("bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/ensure-services.sh (make test does)",
        python.display()
    );
    python
}

/// fedora-messaging's configuration for the publisher: the TLS node, its certificate, Fedora's
/// topic prefix.
fn publisher_config(node: &PrivateBroker, dir: &Path) -> PathBuf {
    let files = node.tls_files();
    let (cert, key) = files.client(PUBLISHER);
    let file = dir.join("fedora-messaging.toml");
    std::fs::write(
        &file,
        format!(
            "amqp_url = \"{}\"\npublish_exchange = \"amq.topic\"\n\
             topic_prefix = \"org.fedoraproject.prod\"\n\
             [tls]\nca_cert = \"{}\"\nkeyfile = \"{}\"\ncertfile = \"{}\"\n\
             [client_properties]\napp = \"taskbot test publisher\"\n",
            node.tls_url(VHOST),
            files.ca().display(),
            key.display(),
            cert.display()
        ),
    )
    .unwrap();
    file
}

/// Publish `scenario` (see tests/fedora-messaging/publish.py) with the real library; returns the
/// dump it wrote (fedora-messaging's serialized form) and whether it succeeded.
fn publish(config: &Path, dump: &Path, args: &[&str]) -> bool {
    let script = workspace_root().join("tests/fedora-messaging/publish.py");
    let out = Command::new(python())
        // A publish to a broker that was killed fails after this many seconds.
        .env("FM_PUBLISH_TIMEOUT", "5")
        .arg(&script)
        .arg(config)
        .arg(dump)
        .args(args)
        .output()
        .expect("run the publisher");
    if !out.status.success() {
        eprintln!(
            "publish.py {args:?} failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out.status.success()
}

/// The ids of the messages in a dump.
fn dumped_ids(dump: &Path) -> Vec<String> {
    std::fs::read_to_string(dump)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["id"].as_str().unwrap().to_string()
        })
        .collect()
}

/// A deployment with the shipped rules and the bridge pointed at `node`'s TLS listener with the
/// bridge's certificate, consuming `queue` (None: an exclusive queue).
async fn deployment(node: &PrivateBroker, queue: Option<&str>) -> Deployment {
    let rules = std::fs::read_to_string(workspace_root().join("deploy/rules.yaml")).unwrap();
    let mut d = Deployment::new(&rules, &[], taskbot_tests::free_port()).await;
    let files = node.tls_files();
    let (cert, key) = files.client(BRIDGE_USER);
    let url = node.tls_url(VHOST);
    let queue = queue.map(str::to_string);
    d.configure(move |c| {
        let fm = &mut c.fedora_messaging_bridge;
        fm.url = url;
        fm.ca_file = Some(files.ca());
        fm.client_cert = Some(cert);
        fm.client_key = Some(key);
        fm.queue = queue;
        fm.topics = vec!["org.fedoraproject.prod.#".into()];
        c.amqp.reconnect_max_secs = 2;
        // The shipped rules name these arches.
        c.arches = vec!["x86_64".into(), "aarch64".into(), "noarch".into()];
    });
    d
}

/// Wait until the bridge's log says it consumes (`count` times: once per connection).
fn wait_for_log(d: &Deployment, index: usize, needle: &str, count: usize, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while d.services[index].log_text().matches(needle).count() < count {
        assert!(
            Instant::now() < deadline,
            "no {count}× {needle:?} in the bridge's log:\n{}",
            d.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Everything on `queue` until `done` says enough (or `timeout`).
async fn collect(
    broker: &TestBroker,
    queue: &str,
    timeout: Duration,
    done: impl Fn(&[taskbot::amqp::Incoming]) -> bool,
) -> Vec<taskbot::amqp::Incoming> {
    let deadline = Instant::now() + timeout;
    let mut got = Vec::new();
    while !done(&got) && Instant::now() < deadline {
        if let Some(m) = broker.get(queue, Duration::from_millis(200)).await {
            got.push(m);
        }
    }
    got
}

/// The job ids `taskbot rules test --json` predicts for the messages of `dump`, with the
/// deployment's configuration.
fn predicted_jobs(d: &Deployment, dump: &Path) -> BTreeSet<(String, String, String, String)> {
    let out = Command::new(binary("taskbot"))
        .args(["rules", "test", "--json"])
        .arg(&d.config.rules.file)
        .arg(dump)
        .env("TASKBOT_CONFIG", &d.config_file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    report["messages"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|m| m["jobs"].as_array().unwrap().clone())
        .map(|j| {
            (
                j["job_id"].as_str().unwrap().to_string(),
                j["task"]["name"].as_str().unwrap().to_string(),
                j["item"].as_str().unwrap().to_string(),
                j["arch"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Publish one raw message to the TLS node's `amq.topic` on `/pubsub` (as `guest`, over its
/// plain listener): what a broken or foreign producer sends.
async fn publish_raw(node: &PrivateBroker, topic: &str, body: &[u8], props: BasicProperties) {
    let url = format!("amqp://guest:guest@127.0.0.1:{}/%2Fpubsub", node.port);
    let conn = taskbot::amqp::connect(&url, "test-raw").await.unwrap();
    let channel = conn.create_channel().await.unwrap();
    channel.confirm_select(Default::default()).await.unwrap();
    channel
        .basic_publish(
            "amq.topic",
            topic,
            BasicPublishOptions::default(),
            body,
            props,
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let _ = conn.close(200, "done").await;
}

fn json_props(id: &str) -> BasicProperties {
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_content_encoding("utf-8".into())
        .with_message_id(id.into())
}

/// Fedora's messages from the real library reach the rules as events with their ids and
/// headers, and give exactly the jobs the shipped rules predict for fedora-messaging's own dump
/// of them; bad messages are dead-lettered with their reason; Taskbot's own are dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fedoras_messages_over_tls_become_the_predicted_jobs_and_bad_ones_dead_letters() {
    let node = PrivateBroker::with_tls(VHOST, &[PUBLISHER, BRIDGE_USER]);
    let mut d = deployment(&node, Some(QUEUE)).await;
    let t = d.broker.topology.clone();
    let events = d.broker.tap(&t.events_exchange(), "#").await;
    let jobs = d.broker.tap(&t.jobs_exchange(), "#").await;
    let dead = t.dead_letter_queue(&t.fedora_messaging_bridge_source());
    d.start("rules", "rules", &[]);
    let bridge = d.start("fedora-messaging-bridge", "fedora-messaging-bridge", &[]);
    wait_for_log(&d, bridge, "consuming", 1, Duration::from_secs(60));
    d.wait_for_consumers(&[t.rules_queue()], Duration::from_secs(60))
        .await;

    let dump = d.dir.path().join("fedora.jsonl");
    assert!(publish(
        &publisher_config(&node, d.dir.path()),
        &dump,
        &["fedora"]
    ));
    let ids = dumped_ids(&dump);
    assert_eq!(ids.len(), 4);

    // Events: one per message, with fedora-messaging's id and headers.
    let got = collect(&d.broker, &events, Duration::from_secs(60), |g| {
        g.len() >= 4
    })
    .await;
    let got: Vec<Event> = got
        .iter()
        .map(|m| Event::from_json(&m.body).unwrap())
        .collect();
    let got_ids: BTreeSet<&str> = got.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(
        got_ids,
        ids.iter().map(String::as_str).collect(),
        "{}",
        d.logs()
    );
    let koji = got
        .iter()
        .find(|e| e.topic == "org.fedoraproject.prod.buildsys.build.state.change")
        .expect("the Koji message");
    assert_eq!(
        koji.headers["fedora_messaging_schema"],
        "koji_fedoramessaging.build.BuildStateChangeV1"
    );
    assert_eq!(koji.headers["fedora_messaging_severity"], 20);
    assert_eq!(koji.headers["fedora_messaging_rpm_bash"], true);
    assert!(koji.sent_at.is_some());
    for id in &ids {
        assert!(
            uuid::Uuid::parse_str(id).is_ok_and(|u| u.get_version_num() == 4),
            "{id}"
        );
    }

    // Jobs: exactly those the dry run predicts from the library's own dump of the messages.
    let predicted = predicted_jobs(&d, &dump);
    let tasks: BTreeSet<(&str, &str, &str)> = predicted
        .iter()
        .map(|(_, task, item, arch)| (task.as_str(), item.as_str(), arch.as_str()))
        .collect();
    let expected: BTreeSet<(&str, &str, &str)> = [
        ("example", "bash-5.2.32-1.fc41", "x86_64"),
        ("example", "bash-5.2.32-1.fc41", "aarch64"),
        ("example", "bash-5.2.32-1.fc41", "noarch"),
        ("static-analysis", "bash-5.2.32-1.fc41", "noarch"),
        ("abicheck", "bash-5.2.32-1.fc41", "x86_64"),
        ("abicheck", "bash-5.2.32-1.fc41", "aarch64"),
        ("rpmlint", "python-requests-2.32.3-1.fc41", "noarch"),
        ("rpmlint", "python-urllib3-2.2.3-1.fc41", "noarch"),
        ("depcheck", "bash-5.2.32-1.fc41", "x86_64"),
        ("depcheck", "bash-5.2.32-1.fc41", "aarch64"),
        ("upgradepath", "FEDORA-2026-6f7a8b9c0d", "noarch"),
        ("rpmlint", "xz-5.6.3-1.fc41", "noarch"),
    ]
    .into_iter()
    .collect();
    assert_eq!(
        tasks, expected,
        "the shipped rules, on this deployment's arches"
    );
    let got = collect(&d.broker, &jobs, Duration::from_secs(60), |g| {
        g.len() >= predicted.len()
    })
    .await;
    let got: BTreeSet<String> = got
        .iter()
        .map(|m| JobRequest::from_json(&m.body).unwrap().job_id.to_string())
        .collect();
    let predicted_ids: BTreeSet<String> = predicted.iter().map(|j| j.0.clone()).collect();
    assert_eq!(got, predicted_ids, "{}", d.logs());

    // Bad messages: each dead-lettered on Taskbot's side with its reason.
    let topic = "org.fedoraproject.prod.test.bad";
    let bad: Vec<(&str, Vec<u8>, BasicProperties, &str)> = vec![
        (
            "not-json",
            b"not json".to_vec(),
            json_props("b1"),
            "body is not valid JSON",
        ),
        (
            "array",
            b"[1, 2]".to_vec(),
            json_props("b2"),
            "body is a JSON array, not an object",
        ),
        (
            "text",
            b"{}".to_vec(),
            json_props("b3").with_content_type("text/plain".into()),
            "content_type is \"text/plain\"",
        ),
        (
            "huge",
            format!(r#"{{"x": "{}"}}"#, "y".repeat(10 << 20)).into_bytes(),
            json_props("b4"),
            "over the limit of 1048576",
        ),
        (
            "latin-1",
            b"{\"name\": \"caf\xe9\"}".to_vec(),
            json_props("b5"),
            "body is not valid UTF-8",
        ),
    ];
    for (_, body, props, _) in &bad {
        publish_raw(&node, topic, body, props.clone()).await;
    }
    // Taskbot's own result, as its fedora-messaging sink publishes it: dropped, and counted.
    let mut own = FieldTable::default();
    own.insert(
        "taskbot_namespace".into(),
        AMQPValue::LongString(d.config.amqp.namespace.clone().into()),
    );
    publish_raw(
        &node,
        "org.fedoraproject.prod.taskbot.result.new",
        br#"{"outcome": "PASSED"}"#,
        json_props("own-1").with_headers(own),
    )
    .await;
    let letters = collect(&d.broker, &dead, Duration::from_secs(60), |g| g.len() >= 5).await;
    assert_eq!(letters.len(), 5, "{}", d.logs());
    // Deliveries are handled concurrently: find each by its message id.
    for (n, (name, body, _, reason)) in bad.iter().enumerate() {
        let id = format!("b{}", n + 1);
        let letter = letters
            .iter()
            .find(|l| l.header("x-taskbot-message-id") == Some(id.as_str()))
            .unwrap_or_else(|| panic!("no dead letter for {name}"));
        let said = letter.header(REASON_HEADER).unwrap_or_default();
        assert!(said.contains(reason), "{name}: {said}");
        assert_eq!(letter.body.len(), body.len().min(1 << 20), "{name}");
    }
    // The own message arrived after the bad ones: once it is counted, nothing else came of it.
    let address = d.services[bridge].ops_address(Duration::from_secs(10));
    let deadline = Instant::now() + Duration::from_secs(30);
    let own_series =
        "taskbot_fedora_messaging_bridge_messages_total{outcome=\"own\",topic=\"all\"}";
    loop {
        let (_, metrics) = http_get(address, "/metrics").await.unwrap();
        if taskbot::ops::sample(&metrics, own_series) == Some(1.0) {
            assert_eq!(
                taskbot::ops::sample(
                    &metrics,
                    "taskbot_fedora_messaging_bridge_messages_total{outcome=\"dead_lettered\",topic=\"all\"}"
                ),
                Some(5.0)
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the own message was not counted:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(d
        .broker
        .get(&events, Duration::from_millis(500))
        .await
        .is_none());
    let (status, _) = http_get(address, "/readyz").await.unwrap();
    assert_eq!(status, 200);
    d.shutdown().await;
}

/// The external broker killed while messages are being published and restarted: on a durable
/// queue every message the broker confirmed to the publisher becomes an event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_durable_queue_nothing_is_lost_when_the_external_broker_restarts() {
    let mut node = PrivateBroker::with_tls(VHOST, &[PUBLISHER, BRIDGE_USER]);
    let mut d = deployment(&node, Some(QUEUE)).await;
    let t = d.broker.topology.clone();
    let events = d
        .broker
        .tap(&t.events_exchange(), "org.fedoraproject.prod.buildsys.#")
        .await;
    let bridge = d.start("fedora-messaging-bridge", "fedora-messaging-bridge", &[]);
    wait_for_log(&d, bridge, "consuming", 1, Duration::from_secs(60));
    let config = publisher_config(&node, d.dir.path());

    // A feed running while the broker is killed: what was confirmed before is in the dump.
    let (first, second) = (d.dir.path().join("a.jsonl"), d.dir.path().join("b.jsonl"));
    let feeder = {
        let (config, first) = (config.clone(), first.clone());
        std::thread::spawn(move || publish(&config, &first, &["koji", "400", "0"]))
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while dumped_ids(&first).len() < 20 {
        assert!(Instant::now() < deadline, "the feed did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    node.kill();
    let _ = feeder.join();
    node.resume();
    assert!(publish(&config, &second, &["koji", "20", "1000"]));
    wait_for_log(&d, bridge, "consuming", 2, Duration::from_secs(60));

    let mut want: BTreeSet<String> = dumped_ids(&first).into_iter().collect();
    assert!(
        want.len() >= 20 && want.len() < 400,
        "{} confirmed before the kill",
        want.len()
    );
    want.extend(dumped_ids(&second));
    let mut seen = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !want.is_subset(&seen) && Instant::now() < deadline {
        if let Some(m) = d.broker.get(&events, Duration::from_millis(200)).await {
            seen.insert(Event::from_json(&m.body).unwrap().id);
        }
    }
    let missing: Vec<_> = want.difference(&seen).collect();
    assert!(missing.is_empty(), "lost {missing:?}\n{}", d.logs());
    d.shutdown().await;
}

/// A datagrepper of the test's own, answering `/datagrepper/raw` as Fedora's does (the
/// `start`, `end`, `page`, `rows_per_page` and `order` arguments; `raw_messages`, `count`,
/// `pages`, `total`, `arguments`), from `messages` (datagrepper's message shape), with a server
/// maximum of 2 rows per page, so that even a short period takes several pages.
async fn serve_datagrepper(messages: Vec<serde_json::Value>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let messages = messages.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&request);
                let target = text.split_whitespace().nth(1).unwrap_or("/").to_string();
                let (status, body) = datagrepper_answer(&target, &messages);
                let answer = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(answer.as_bytes()).await;
            });
        }
    });
    format!("http://{address}/datagrepper")
}

fn datagrepper_answer(target: &str, messages: &[serde_json::Value]) -> (&'static str, String) {
    let Some(query) = target.strip_prefix("/datagrepper/raw?") else {
        return ("404 Not Found", "{}".into());
    };
    let arg = |name: &str| {
        query
            .split('&')
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
            .map(str::to_string)
    };
    let number = |name: &str| arg(name).and_then(|v| v.parse::<f64>().ok());
    let (start, end) = (
        number("start").unwrap_or(0.0),
        number("end").unwrap_or(f64::MAX),
    );
    let rows = (number("rows_per_page").unwrap_or(25.0) as usize).clamp(1, 2);
    let page = (number("page").unwrap_or(1.0) as usize).max(1);
    let mut selected: Vec<&serde_json::Value> = messages
        .iter()
        .filter(|m| {
            let t = m["timestamp"].as_f64().unwrap();
            t >= start && t <= end
        })
        .collect();
    selected.sort_by(|a, b| {
        a["timestamp"]
            .as_f64()
            .partial_cmp(&b["timestamp"].as_f64())
            .unwrap()
    });
    if arg("order").as_deref() != Some("asc") {
        selected.reverse();
    }
    let total = selected.len();
    let pages = total.div_ceil(rows).max(1);
    let raw: Vec<&serde_json::Value> = selected
        .into_iter()
        .skip((page - 1) * rows)
        .take(rows)
        .collect();
    let body = serde_json::json!({
        "arguments": {"start": start, "end": end, "page": page, "rows_per_page": rows,
                      "order": arg("order").unwrap_or_else(|| "desc".into()), "topics": [],
                      "categories": [], "users": [], "packages": [], "grouped": false,
                      "meta": [], "not_topics": [], "not_categories": [], "not_users": [],
                      "not_packages": [], "contains": [], "delta": null},
        "count": raw.len(),
        "pages": pages,
        "raw_messages": raw,
        "total": total,
    });
    ("200 OK", body.to_string())
}

/// `text` without terminal colour codes (the text log format colours field names).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// What datagrepper stores of a message fedora-messaging serialized.
fn as_datagrepper(serialized: &serde_json::Value) -> serde_json::Value {
    let sent = serialized["headers"]["sent-at"].as_str().unwrap();
    let timestamp = chrono::DateTime::parse_from_rfc3339(sent)
        .unwrap()
        .timestamp() as f64;
    serde_json::json!({
        "certificate": null, "crypto": null, "headers": serialized["headers"], "i": 0,
        "msg": serialized["body"], "msg_id": serialized["id"], "signature": null,
        "source_name": "datanommer", "source_version": "1.4.0",
        "timestamp": timestamp, "topic": serialized["topic"], "username": null,
    })
}

fn dumped(dump: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dump)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// On the public bus's exclusive queue, what is published while the bridge is disconnected is
/// gone with the queue: the bridge logs the gap with its time span, and `taskbot replay
/// --datagrepper` over that span (and before it: a period partly seen already) closes it
/// without scheduling anything twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exclusive_queue_gap_is_logged_and_a_datagrepper_backfill_closes_it() {
    let mut node = PrivateBroker::with_tls(VHOST, &[PUBLISHER, BRIDGE_USER]);
    let mut d = deployment(&node, None).await;
    // Slow reconnection, so that messages published right after the broker is back fall into
    // the gap.
    d.configure(|c| c.amqp.reconnect_max_secs = 15);
    let t = d.broker.topology.clone();
    let events = d.broker.tap(&t.events_exchange(), "#").await;
    let jobs = d.broker.tap(&t.jobs_exchange(), "#").await;
    d.start("rules", "rules", &[]);
    let bridge = d.start("fedora-messaging-bridge", "fedora-messaging-bridge", &[]);
    wait_for_log(&d, bridge, "consuming", 1, Duration::from_secs(60));
    d.wait_for_consumers(&[t.rules_queue()], Duration::from_secs(60))
        .await;
    let config = publisher_config(&node, d.dir.path());
    let before = chrono::Utc::now() - chrono::Duration::seconds(2);

    let seen = d.dir.path().join("seen.jsonl");
    assert!(publish(&config, &seen, &["fedora"]));
    let live = collect(&d.broker, &events, Duration::from_secs(60), |g| {
        g.len() >= 4
    })
    .await;
    assert_eq!(live.len(), 4, "{}", d.logs());

    node.kill();
    wait_for_log(
        &d,
        bridge,
        "lost the external broker",
        1,
        Duration::from_secs(30),
    );
    node.resume();
    let missed = d.dir.path().join("missed.jsonl");
    assert!(publish(&config, &missed, &["koji", "3", "500"]));
    wait_for_log(&d, bridge, "consuming", 2, Duration::from_secs(60));

    // The gap, as logged: `gap_start=… gap_end=…`.
    let log = strip_ansi(&d.services[bridge].log_text());
    let line = log
        .lines()
        .find(|l| l.contains("exclusive queue; backfill them"))
        .unwrap_or_else(|| panic!("no gap logged:\n{log}"));
    let field = |name: &str| {
        let rest = &line[line.find(&format!("{name}=")).unwrap() + name.len() + 1..];
        rest.split_whitespace().next().unwrap().to_string()
    };
    let (gap_start, gap_end) = (field("gap_start"), field("gap_end"));
    let parsed = |t: &str| chrono::DateTime::parse_from_rfc3339(t).unwrap();
    assert!(parsed(&gap_start) < parsed(&gap_end), "{line}");
    let missed_messages = dumped(&missed);
    for m in &missed_messages {
        let sent = parsed(m["headers"]["sent-at"].as_str().unwrap());
        assert!(
            parsed(&gap_start) <= sent && sent <= parsed(&gap_end),
            "{m} was sent outside the logged gap {gap_start} .. {gap_end}"
        );
    }

    // Datagrepper has everything; a backfill from before the first message to the gap's end.
    let mut archive: Vec<serde_json::Value> = dumped(&seen).iter().map(as_datagrepper).collect();
    archive.extend(missed_messages.iter().map(as_datagrepper));
    let url = serve_datagrepper(archive).await;
    let since = before.to_rfc3339();
    let replay = Command::new(binary("taskbot"))
        .args([
            "replay",
            "--datagrepper",
            &url,
            "--since",
            &since,
            "--until",
            &gap_end,
        ])
        .env("TASKBOT_CONFIG", &d.config_file)
        .output()
        .unwrap();
    assert!(
        replay.status.success(),
        "{}",
        String::from_utf8_lossy(&replay.stderr)
    );
    assert!(
        String::from_utf8_lossy(&replay.stdout).starts_with("replayed 7 messages"),
        "{}",
        String::from_utf8_lossy(&replay.stdout)
    );

    // Every missed message is an event now, under its own id.
    let want: BTreeSet<String> = dumped_ids(&missed).into_iter().collect();
    let mut got = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !want.is_subset(&got) && Instant::now() < deadline {
        if let Some(m) = d.broker.get(&events, Duration::from_millis(200)).await {
            got.insert(Event::from_json(&m.body).unwrap().id);
        }
    }
    assert!(want.is_subset(&got), "{want:?} not all in {got:?}");

    // Jobs: the predicted ones of both periods, each requested once although the first
    // period's messages arrived twice (live, then backfilled).
    let mut predicted = predicted_jobs(&d, &seen);
    predicted.extend(predicted_jobs(&d, &missed));
    // Each Koji build: the example on 3 arches, a static analysis, abicheck on 2 arches.
    assert_eq!(predicted.len(), 12 + 3 * 6);
    let requested = collect(&d.broker, &jobs, Duration::from_secs(60), |g| {
        g.len() >= predicted.len()
    })
    .await;
    let ids: Vec<String> = requested
        .iter()
        .map(|m| JobRequest::from_json(&m.body).unwrap().job_id.to_string())
        .collect();
    let unique: BTreeSet<String> = ids.iter().cloned().collect();
    assert_eq!(ids.len(), unique.len(), "a job requested twice");
    assert_eq!(unique, predicted.iter().map(|j| j.0.clone()).collect());
    let address = d.services[bridge].ops_address(Duration::from_secs(10));
    let (_, metrics) = http_get(address, "/metrics").await.unwrap();
    assert_eq!(
        taskbot::ops::sample(&metrics, "taskbot_fedora_messaging_bridge_gaps_total"),
        Some(1.0)
    );
    d.shutdown().await;
}

/// A broker with passwords instead of certificates: plain `amqp://`, the password from
/// `fedora_messaging_bridge.password_file`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_login_with_a_password_file_works_too() {
    let node = PrivateBroker::with_tls(VHOST, &[]);
    let rules = "rules: []\n";
    let mut d = Deployment::new(rules, &[], taskbot_tests::free_port()).await;
    let password = d.dir.path().join("fm.password");
    std::fs::write(&password, "guest\n").unwrap();
    let url = format!("amqp://guest@127.0.0.1:{}/%2Fpubsub", node.port);
    d.configure(move |c| {
        c.fedora_messaging_bridge.url = url;
        c.fedora_messaging_bridge.password_file = Some(password);
        c.fedora_messaging_bridge.queue = Some(QUEUE.into());
    });
    let t = d.broker.topology.clone();
    let events = d.broker.tap(&t.events_exchange(), "#").await;
    let bridge = d.start("fedora-messaging-bridge", "fedora-messaging-bridge", &[]);
    wait_for_log(&d, bridge, "consuming", 1, Duration::from_secs(60));
    publish_raw(
        &node,
        "org.fedoraproject.prod.buildsys.tag",
        br#"{"tag": "f41-updates-candidate", "name": "bash"}"#,
        json_props("6c1e7b9e-0a63-4ad5-9a53-5ce1a2b3c4d5"),
    )
    .await;
    let got = collect(&d.broker, &events, Duration::from_secs(30), |g| {
        !g.is_empty()
    })
    .await;
    let event = Event::from_json(&got.first().expect("the event").body).unwrap();
    assert_eq!(event.id, "6c1e7b9e-0a63-4ad5-9a53-5ce1a2b3c4d5");
    assert_eq!(event.msg["tag"], "f41-updates-candidate");
    assert!(
        !d.services[bridge].log_text().contains("guest:guest"),
        "the password is not logged"
    );
    d.shutdown().await;
}
