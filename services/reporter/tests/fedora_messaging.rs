//! The fedora-messaging sink against its real peers: what the reporter publishes is consumed by
//! the real fedora-messaging library (`fedora-messaging consume`, from PyPI, in the virtualenv
//! scripts/ensure-services.sh makes) with Taskbot's schema package installed, and must come out
//! as typed `taskbot_messages.result.ResultV1` messages; and the "changes only" modes, with their
//! state in a real PostgreSQL database, across redeliveries.

mod support;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use taskbot::amqp::{Disposition, Handler, Incoming};
use taskbot::config::FedoraMessagingNotify;
use taskbot::messages::{Message, Outcome, TaskResult};
use taskbot::testing::{test_config, Recorder, TestBroker};
use taskbot::topology::Sink;
use taskbot_reporter::binding::Binding;
use taskbot_reporter::fedora_messaging::FedoraMessagingSink;
use taskbot_reporter::notify::ChangeLog;

use support::{job, result, time, wait_until, RunningReporter, TestDb};

/// The virtualenv with fedora-messaging and taskbot-messages (scripts/ensure-services.sh).
fn venv() -> PathBuf {
    let path = std::env::var_os("TASKBOT_FEDORA_MESSAGING_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.run/fedora-messaging-venv")
        });
    assert!(
        path.join("bin/fedora-messaging").exists(),
        "no fedora-messaging in {}: run scripts/ensure-services.sh (make test does)",
        path.display()
    );
    path
}

/// The callback `fedora-messaging consume` runs: one JSON line per message, in the file
/// `TASKBOT_OUT`, with what the library made of it, halting after `TASKBOT_EXPECT` messages.
const CALLBACK: &str = r#"
import json, os, sys
from fedora_messaging import exceptions

seen = []

def callback(message):
    seen.append({
        "class": type(message).__module__ + "." + type(message).__name__,
        "id": message.id,
        "topic": message.topic,
        "severity": message.severity,
        "priority": message.priority,
        "summary": message.summary,
        "str": str(message),
        "packages": message.packages,
        "usernames": message.usernames,
        "agent_name": message.agent_name,
        "app_name": message.app_name,
        "url": message.url,
        "result_id": getattr(message, "result_id", None),
        "headers": message._headers,
        "filter_headers": message._filter_headers(),
        "body": message.body,
    })
    with open(os.environ["TASKBOT_OUT"], "a") as out:
        out.write(json.dumps(seen[-1], sort_keys=True) + "\n")
    if len(seen) >= int(os.environ["TASKBOT_EXPECT"]):
        raise exceptions.HaltConsumer(exit_code=0, requeue=False)
"#;

/// The library's `api.consume` running that callback (configured by `FEDORA_MESSAGING_CONF`, with
/// the library's logging set up as the command line does).
const API_CONSUME: &str = r#"
import os, runpy, sys
from fedora_messaging import api, config, exceptions
config.conf.setup_logging()
callback = runpy.run_path(os.environ["TASKBOT_CALLBACK"])["callback"]
try:
    api.consume(callback)
except exceptions.HaltConsumer as halt:
    sys.exit(halt.exit_code)
"#;

/// How the messages are consumed: both ways a consumer of Fedora's bus uses the library.
#[derive(Debug, Clone, Copy)]
enum Consume {
    /// `fedora-messaging consume --callback-file`.
    Command,
    /// `fedora_messaging.api.consume(callback)`.
    Api,
}

/// Consume `expect` messages from `queue` (bound to `amq.topic` with `key`) with the real
/// fedora-messaging library, `how`; what the callback saw, and the command's log (its stdout and
/// stderr).
async fn fedora_messaging_consume(
    how: Consume,
    queue: &str,
    key: &str,
    expect: usize,
) -> (Vec<Value>, String) {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("fedora-messaging.toml");
    let amqp_url = taskbot::testing::amqp_url();
    // The queue exists (the test made it before publishing, so nothing was unroutable):
    // declared passively, as Fedora's private vhost requires.
    std::fs::write(
        &conf,
        format!(
            r#"amqp_url = "{amqp_url}"
passive_declares = true

[client_properties]
app = "taskbot reporter test"

[queues."{queue}"]
durable = true
auto_delete = false
exclusive = false
arguments = {{}}

[[bindings]]
queue = "{queue}"
exchange = "amq.topic"
routing_keys = ["{key}"]
"#
        ),
    )
    .unwrap();
    let callback = dir.path().join("callback.py");
    std::fs::write(&callback, CALLBACK).unwrap();
    // Output into files, so that a consumer that never halts still says why.
    let (out_path, err_path) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let seen_path = dir.path().join("seen.jsonl");
    let mut command = match how {
        Consume::Command => {
            let mut c = tokio::process::Command::new(venv().join("bin/fedora-messaging"));
            c.arg("--conf")
                .arg(&conf)
                .arg("consume")
                .arg("--callback-file")
                .arg(format!("{}:callback", callback.display()));
            c
        }
        Consume::Api => {
            let mut c = tokio::process::Command::new(venv().join("bin/python"));
            c.arg("-c")
                .arg(API_CONSUME)
                .env("FEDORA_MESSAGING_CONF", &conf)
                .env("TASKBOT_CALLBACK", &callback);
            c
        }
    };
    let mut child = command
        .env("TASKBOT_EXPECT", expect.to_string())
        .env("TASKBOT_OUT", &seen_path)
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .kill_on_drop(true)
        .spawn()
        .expect("run fedora-messaging consume");
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait()).await;
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    let status = status.unwrap_or_else(|_| {
        panic!(
            "{how:?} did not get {expect} messages within 60 s\nstdout: {stdout}\nstderr: {stderr}"
        )
    });
    let status = status.unwrap();
    assert!(
        status.success(),
        "{how:?}: {status}\nstdout: {stdout}\nstderr: {stderr}"
    );
    let seen = std::fs::read_to_string(&seen_path)
        .unwrap_or_default()
        .lines()
        .map(|line| serde_json::from_str(line).expect(line))
        .collect();
    (seen, format!("{stdout}{stderr}"))
}

#[tokio::test]
async fn fedora_messaging_consume_gets_typed_taskbot_messages_with_their_headers() {
    let mut config = test_config();
    let ns = config.amqp.namespace.clone();
    config.reporter.sinks = Some(vec![Sink::FedoraMessaging]);
    config.reporter.fedora_messaging_topic =
        format!("org.fedoraproject.{ns}.taskbot.{{testcase}}.{{outcome}}");
    config.reporter.fedora_messaging_priority = 2;
    let broker = TestBroker::new(&config).await;
    let key = format!("org.fedoraproject.{ns}.taskbot.#");
    // A queue for each way of consuming, both bound before anything is published.
    let queues = [
        (Consume::Command, broker.tap("amq.topic", &key).await),
        (Consume::Api, broker.tap("amq.topic", &key).await),
    ];
    let reporter = RunningReporter::start(&config);

    let build = job("xchat-0.5-1.fc20");
    let mut failed = result(&build, "dist.rpmlint", Outcome::Failed);
    failed.data.insert("owner".into(), json!("ralph"));
    let mut update = job("FEDORA-2024-3b2f4c");
    update.item_type = "bodhi_update".into();
    let mut passed = result(&update, "dist.depcheck", Outcome::Passed);
    passed.note = None;
    for r in [&failed, &passed] {
        broker
            .publish(
                &broker.topology.results_exchange(),
                &r.routing_key(),
                r.to_json(),
            )
            .await;
    }
    for (how, queue) in &queues {
        let (seen, log) = fedora_messaging_consume(*how, queue, &key, 2).await;
        check_typed(&seen, &log, &ns, &failed, &passed);
    }
    reporter.stop().await;
    broker.cleanup().await;
}

/// What consuming the two results published in
/// [`fedora_messaging_consume_gets_typed_taskbot_messages_with_their_headers`] gave.
fn check_typed(seen: &[Value], log: &str, ns: &str, failed: &TaskResult, passed: &TaskResult) {
    assert!(
        log.contains("Successfully registered AMQP consumer"),
        "the library logs where we look: {log}"
    );
    for complaint in ["not in the schema registry", "ERROR", "WARNING"] {
        assert!(!log.contains(complaint), "{complaint:?} in {log}");
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
    let (f, p) = (&seen[0], &seen[1]);
    for m in seen {
        assert_eq!(m["class"], "taskbot_messages.result.ResultV1");
        assert_eq!(m["app_name"], "taskbot");
        assert_eq!(m["agent_name"], Value::Null);
        assert_eq!(m["priority"], 2);
        let headers = &m["headers"];
        assert_eq!(headers["fedora_messaging_schema"], "taskbot.result.v1");
        assert_eq!(
            headers["fedora_messaging_schema_package"],
            "taskbot_messages"
        );
        assert_eq!(headers["priority"], 2);
        assert_eq!(headers["taskbot_namespace"], ns);
        assert_eq!(headers["taskbot_result_id"], m["result_id"]);
        let id = uuid::Uuid::parse_str(m["id"].as_str().unwrap()).unwrap();
        assert_eq!(id.get_version_num(), 4, "{id}");
        // The filter headers the library itself would set from the class's packages and
        // usernames are exactly those the reporter sent.
        for (name, value) in m["filter_headers"].as_object().unwrap() {
            assert_eq!(&headers[name], value, "{name}");
        }
        let sent: Vec<&String> = headers
            .as_object()
            .unwrap()
            .keys()
            .filter(|k| {
                k.starts_with("fedora_messaging_rpm_") || k.starts_with("fedora_messaging_user_")
            })
            .collect();
        assert_eq!(
            sent.len(),
            m["filter_headers"].as_object().unwrap().len(),
            "{headers}"
        );
    }

    assert_eq!(
        f["topic"],
        format!("org.fedoraproject.{ns}.taskbot.dist.rpmlint.failed")
    );
    assert_eq!(f["result_id"], failed.result_id.to_string());
    assert_eq!(f["severity"], 30, "a failure is a WARNING");
    assert_eq!(
        f["summary"],
        "dist.rpmlint FAILED on xchat-0.5-1.fc20 (x86_64)"
    );
    assert_eq!(f["packages"], json!(["xchat"]));
    assert_eq!(f["usernames"], json!(["ralph"]));
    assert_eq!(
        f["filter_headers"],
        json!({"fedora_messaging_rpm_xchat": true, "fedora_messaging_user_ralph": true})
    );
    assert_eq!(f["url"], failed.log_url.clone().unwrap());
    let long = f["str"].as_str().unwrap();
    for part in [
        "dist.rpmlint FAILED on koji_build xchat-0.5-1.fc20 (x86_64)",
        "Note: 5 errors, 10 warnings",
        &format!("Job: {}", failed.job_id),
        &format!("Result: {}", failed.result_id),
    ] {
        assert!(long.contains(part), "{part:?} in {long}");
    }
    assert_eq!(
        &TaskResult::from_json(&serde_json::to_vec(&f["body"]).unwrap()).unwrap(),
        failed,
        "the body is the result"
    );

    assert_eq!(p["severity"], 20);
    assert_eq!(
        p["summary"],
        "dist.depcheck PASSED on FEDORA-2024-3b2f4c (x86_64)"
    );
    assert_eq!(p["packages"], json!([]), "an update alias names no package");
    assert_eq!(p["usernames"], json!([]));
    assert_eq!(p["filter_headers"], json!({}));
    assert!(!p["str"].as_str().unwrap().contains("Note:"));
    assert_eq!(p["result_id"], passed.result_id.to_string());
}

/// Results of one testcase on one build and arch, one per job (so each has its own id),
/// finished `at` seconds from now.
fn run_of(item: &str, outcome: Outcome, at: i64) -> TaskResult {
    TaskResult {
        finished_at: time(at),
        ..result(&job(item), "dist.rpmlint", outcome)
    }
}

#[tokio::test]
async fn changes_only_publishes_the_first_outcome_and_each_change_not_repeats_or_late_results() {
    let db = TestDb::create().await;
    let mut config = test_config();
    let ns = config.amqp.namespace.clone();
    config.postgres.url = db.url.clone();
    config.reporter.sinks = Some(vec![Sink::FedoraMessaging]);
    config.reporter.fedora_messaging_notify = FedoraMessagingNotify::Changes;
    config.reporter.fedora_messaging_topic = format!("org.fedoraproject.{ns}.taskbot.result");
    let broker = TestBroker::new(&config).await;
    let subscriber = broker
        .tap(
            "amq.topic",
            &format!("org.fedoraproject.{ns}.taskbot.result"),
        )
        .await;
    let reporter = RunningReporter::start_ready(&config, &db).await;

    let item = "xchat-0.5-1.fc20";
    let results = [
        run_of(item, Outcome::Passed, -50), // first: published
        run_of(item, Outcome::Passed, -40), // same: not
        run_of(item, Outcome::Failed, -30), // change: published
        run_of(item, Outcome::Failed, -20), // same: not
        run_of(item, Outcome::Passed, -10), // change: published
        run_of(item, Outcome::Failed, -45), // finished before the latest: old news, not
        TaskResult {
            arch: "aarch64".into(), // another arch has its own history: published
            ..run_of(item, Outcome::Passed, -5)
        },
    ];
    for r in &results {
        broker
            .publish(
                &broker.topology.results_exchange(),
                &r.routing_key(),
                r.to_json(),
            )
            .await;
    }
    let client = db.client().await;
    wait_until("every result decided", Duration::from_secs(20), || async {
        client
            .query_one("SELECT count(*) FROM fedora_messaging_notices", &[])
            .await
            .is_ok_and(|row| row.get::<_, i64>(0) == results.len() as i64)
    })
    .await;
    // One delivery at a time: each published one was confirmed before the next was decided.
    let mut published = Vec::new();
    while let Some(msg) = broker.get(&subscriber, Duration::ZERO).await {
        published.push(TaskResult::from_json(&msg.body).unwrap().result_id);
    }
    let expected: Vec<_> = [0, 2, 4, 6].iter().map(|&i| results[i].result_id).collect();
    assert_eq!(published, expected);
    let latest: Vec<(String, String)> = client
        .query(
            "SELECT arch, outcome FROM fedora_messaging_outcomes ORDER BY arch",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    assert_eq!(
        latest,
        [
            ("aarch64".to_string(), "PASSED".to_string()),
            ("x86_64".to_string(), "PASSED".to_string())
        ],
        "the late FAILED did not become the latest"
    );
    reporter.stop().await;
    broker.cleanup().await;
}

/// The sink on `db`'s (migrated) database, publishing under `mode`.
async fn sink_on(db: &TestDb, mode: FedoraMessagingNotify) -> FedoraMessagingSink {
    let mut pg = test_config().postgres;
    pg.url = db.url.clone();
    let pool = taskbot_reporter::db::connect_pool(&pg).unwrap();
    taskbot::store::migrate(&pool).await.unwrap();
    FedoraMessagingSink {
        exchange: "amq.topic".into(),
        topic: "org.example.taskbot.result".into(),
        schema: "taskbot.result.v1".into(),
        schema_package: "taskbot_messages".into(),
        priority: 0,
        namespace: "test".into(),
        binding: Arc::new(Binding::new(&taskbot::Config::default(), None)),
        changes: Some(ChangeLog { pool, mode }),
        artifacts_url: None,
    }
}

fn delivery(r: &TaskResult) -> Incoming {
    Incoming {
        redelivered: true,
        ..Incoming::new(&r.routing_key(), r.to_json()).with_user_id("guest")
    }
}

#[tokio::test]
async fn a_change_whose_publish_failed_is_published_when_redelivered_though_its_outcome_is_recorded(
) {
    let db = TestDb::create().await;
    let sink = sink_on(&db, FedoraMessagingNotify::Changes).await;
    let item = "bash-5.2-1.fc40";
    let first = run_of(item, Outcome::Passed, -30);
    let change = run_of(item, Outcome::Failed, -20);
    assert_eq!(
        sink.handle(delivery(&first), &Recorder::new()).await,
        Disposition::Done(vec![])
    );
    // The broker refuses the change's message (or the reporter stops) after its outcome was
    // recorded as the latest: the delivery goes back to the queue.
    let refusing = Recorder::new().failing_after(0);
    assert!(matches!(
        sink.handle(delivery(&change), &refusing).await,
        Disposition::Retry(_)
    ));
    assert!(refusing.published().is_empty());
    // Redelivered, it finds FAILED recorded as the latest, its own: still a change.
    for _ in 0..2 {
        let ctx = Recorder::new();
        assert_eq!(
            sink.handle(delivery(&change), &ctx).await,
            Disposition::Done(vec![])
        );
        let published = ctx.published();
        assert_eq!(published.len(), 1, "published again on each redelivery");
        assert_eq!(published[0].body, change.to_json());
    }
    // A repeat of the failure by another job is not.
    let ctx = Recorder::new();
    sink.handle(delivery(&run_of(item, Outcome::Failed, -10)), &ctx)
        .await;
    assert!(ctx.published().is_empty());
    // And a result decided "not published" stays so when redelivered.
    let repeat = run_of(item, Outcome::Failed, -5);
    for _ in 0..2 {
        let ctx = Recorder::new();
        assert_eq!(
            sink.handle(delivery(&repeat), &ctx).await,
            Disposition::Done(vec![])
        );
        assert!(ctx.published().is_empty());
    }
}

#[tokio::test]
async fn each_scenario_has_its_own_latest_outcome() {
    // upgrade-tests runs in three configurations (scenarios) on one update and arch: one
    // configuration failing after another passed is news for that configuration only, and a
    // repeat of a configuration's outcome is no change whatever the others did.
    let db = TestDb::create().await;
    let sink = sink_on(&db, FedoraMessagingNotify::Changes).await;
    let item = "FEDORA-2024-3b2f4c";
    let run = |scenario: &str, outcome: Outcome, at: i64| {
        let mut r = run_of(item, outcome, at);
        r.data.insert("scenario".into(), json!(scenario));
        r
    };
    let runs = [
        (run("n-1-minimal", Outcome::Passed, -60), true),
        (run("n-2-server", Outcome::Failed, -50), true),
        (run("n-1-minimal", Outcome::Passed, -40), false),
        (run("n-2-server", Outcome::Failed, -30), false),
        (run_of(item, Outcome::Passed, -20), true),
    ];
    for (i, (r, expected)) in runs.iter().enumerate() {
        let ctx = Recorder::new();
        assert_eq!(
            sink.handle(delivery(r), &ctx).await,
            Disposition::Done(vec![])
        );
        assert_eq!(ctx.published().len(), usize::from(*expected), "run {i}");
    }
    let client = db.client().await;
    let latest: Vec<(String, String)> = client
        .query(
            "SELECT scenario, outcome FROM fedora_messaging_outcomes ORDER BY scenario",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    let pair = |a: &str, b: &str| (a.to_string(), b.to_string());
    assert_eq!(
        latest,
        [
            pair("", "PASSED"),
            pair("n-1-minimal", "PASSED"),
            pair("n-2-server", "FAILED")
        ]
    );
}

#[tokio::test]
async fn changes_and_failures_publishes_every_failure_and_changes_back_to_passing() {
    let db = TestDb::create().await;
    let sink = sink_on(&db, FedoraMessagingNotify::ChangesAndFailures).await;
    let item = "glibc-2.39-1.fc40";
    let runs = [
        (Outcome::Passed, true),
        (Outcome::Passed, false),
        (Outcome::Failed, true),
        (Outcome::Failed, true),
        (Outcome::Crashed, true),
        (Outcome::Passed, true),
        (Outcome::Info, true),
        (Outcome::Info, false),
    ];
    for (i, (outcome, expected)) in runs.iter().enumerate() {
        let r = run_of(item, *outcome, i as i64 - 60);
        let ctx = Recorder::new();
        assert_eq!(
            sink.handle(delivery(&r), &ctx).await,
            Disposition::Done(vec![])
        );
        assert_eq!(
            ctx.published().len(),
            usize::from(*expected),
            "run {i}: {outcome}"
        );
    }
}

#[tokio::test]
async fn the_reporters_database_role_may_keep_the_change_state() {
    // The roles `taskbot setup-users` makes: the schema migrated as its owner, the sink running
    // as the reporter's role, which may read, insert and update but not create or delete.
    let db = TestDb::create().await;
    let mut config = test_config();
    config.postgres.url = db.url.clone();
    let names = taskbot::store::roles::RoleNames::new(&config.amqp.namespace);
    let admin = db.client().await;
    taskbot::store::roles::create(&admin, &db.name, &names, "r-secret", "a-secret")
        .await
        .unwrap();
    let owner = taskbot::store::roles::acting_as(&config.postgres, &names.owner);
    let owner_pool = taskbot_reporter::db::connect_pool(&owner).unwrap();
    taskbot::store::migrate(&owner_pool).await.unwrap();
    owner_pool.close();
    taskbot::store::roles::grant(&admin, &names).await.unwrap();

    let reporter = taskbot::store::roles::acting_as(&config.postgres, &names.reporter);
    let pool = taskbot_reporter::db::connect_pool(&reporter).unwrap();
    let changes = ChangeLog {
        pool: pool.clone(),
        mode: FedoraMessagingNotify::Changes,
    };
    let item = "zsh-5.9-1.fc40";
    let first = run_of(item, Outcome::Passed, -20);
    let change = run_of(item, Outcome::Failed, -10);
    let decided = async {
        Ok::<_, taskbot::store::StoreError>([
            changes.decide(&first).await?,
            changes.decide(&run_of(item, Outcome::Passed, -15)).await?,
            changes.decide(&change).await?,
            changes.decide(&change).await?,
        ])
    }
    .await;
    pool.close();
    taskbot::store::roles::drop_all(&admin, &names)
        .await
        .unwrap();
    assert_eq!(decided.unwrap(), [true, false, true, true]);
}
