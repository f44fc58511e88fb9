//! End to end: the five real binaries, the real RabbitMQ and PostgreSQL, fed through a real
//! ZeroMQ PUB socket as the Fedora bus would.

use std::path::Path;
use std::time::{Duration, Instant};

use chrono::Utc;
use taskbot::messages::{Event, Message};
use taskbot_tests::{free_port, workspace_root, Deployment};

/// The real Koji "build complete" message from the samples (ansible-1.8.3-1.el7).
fn koji_build_complete() -> serde_json::Value {
    let samples =
        std::fs::read_to_string(workspace_root().join("tests/fixtures/fedmsg-real.jsonl"))
            .expect("sample messages");
    samples
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|e| {
            e["topic"]
                .as_str()
                .unwrap()
                .ends_with("buildsys.build.state.change")
                && e["msg"]["new"] == 1
        })
        .expect("a build-complete sample")
}

const RULES: &str = r#"
tasks:
  example: { repo: example, ref: main }
  slow: { repo: slow, ref: main }
  announcer: { repo: announcer, ref: main }
rules:
  - name: example-on-koji-build-complete
    when:
      topic: org.fedoraproject.*.buildsys.build.state.change
      match: { msg.new: 1 }
    do:
      - task: example
        item: "{{ msg.name }}-{{ msg.version }}-{{ msg.release }}"
        item_type: koji_build
        arches: [x86_64]
  - name: slow-on-slowpkg
    when:
      topic: org.taskbot.test.slow
    do:
      - task: slow
        item: "{{ msg.name }}"
        item_type: koji_build
        arches: [x86_64]
  - name: announcer-on-test
    when: { topic: org.taskbot.test.announce }
    do:
      - task: announcer
        item: "{{ msg.name }}"
        item_type: koji_build
        arches: [noarch]
  - name: example-on-announced-build
    when: { topic: taskbot.task.test.built }
    do:
      - task: example
        item: "{{ msg.item }}"
        item_type: koji_build
        arches: [x86_64]
"#;

fn send(socket: &zmq::Socket, frames: &[&[u8]]) {
    socket.send_multipart(frames, 0).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn koji_build_message_ends_as_a_stored_result() {
    let port = free_port();
    let example = workspace_root().join("tasks/example");
    let mut d = Deployment::new(RULES, &[("example", example.as_path())], port).await;
    let context = zmq::Context::new();
    let bus = context.socket(zmq::PUB).unwrap();
    bus.bind(&format!("tcp://127.0.0.1:{port}")).unwrap();

    d.start_all();
    d.wait_until_consuming(Duration::from_secs(60)).await;

    // ZeroMQ drops what is published before a subscriber has joined: send a harmless message
    // until the bridge shows it has subscribed.
    let t = d.broker.topology.clone();
    let tap = d
        .broker
        .tap(&t.events_exchange(), "org.taskbot.warmup")
        .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let warmup = br#"{"topic": "org.taskbot.warmup", "msg": {}, "msg_id": "warmup"}"#;
        send(&bus, &[b"org.taskbot.warmup", warmup]);
        if d.broker
            .get(&tap, Duration::from_millis(300))
            .await
            .is_some()
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "bridge never subscribed\n{}",
            d.logs()
        );
    }

    // Malformed first: they must change nothing and break nothing.
    bus.send("just-one-frame", 0).unwrap();
    send(
        &bus,
        &[
            b"org.fedoraproject.prod.buildsys.build.state.change",
            b"{not json",
        ],
    );

    let envelope = koji_build_complete();
    let topic = envelope["topic"].as_str().unwrap().to_string();
    send(&bus, &[topic.as_bytes(), envelope.to_string().as_bytes()]);

    let n = d
        .wait_for_count(
            "select count(*) from results where item = 'ansible-1.8.3-1.el7'",
            1,
            Duration::from_secs(120),
        )
        .await;
    assert_eq!(n, 1, "no result stored\n{}", d.logs());
    let db = d.db().await;
    let row = db
        .query_one(
            "select testcase, outcome, arch, item_type, event_id, log_url from results where item = 'ansible-1.8.3-1.el7'",
            &[],
        )
        .await
        .unwrap();
    let (testcase, outcome, arch): (String, String, String) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(testcase, "dist.example");
    assert_eq!(outcome, "PASSED");
    assert_eq!(arch, "x86_64");
    assert_eq!(row.get::<_, String>(3), "koji_build");
    assert_eq!(
        row.get::<_, String>(4),
        envelope["msg_id"].as_str().unwrap()
    );
    let log_url: String = row.get(5);
    assert!(Path::new(&log_url).is_file(), "task log {log_url} exists");

    // The job's whole history, in order. Statuses are handled concurrently and a status that
    // beats its job's `queued` one waits (handed back to its queue) until that is recorded, so
    // the history may complete a moment after the job is done.
    d.wait_for_count(
        "select count(*) from jobs where state = 'done'",
        1,
        Duration::from_secs(30),
    )
    .await;
    d.wait_for_count(
        "select count(*) from job_events e join results r using (job_id) \
         where r.item = 'ansible-1.8.3-1.el7'",
        7,
        Duration::from_secs(30),
    )
    .await;
    let states: Vec<String> = db
        .query(
            "select e.state from job_events e join results r using (job_id) order by e.at",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        states,
        [
            "queued",
            "provisioning",
            "provisioned",
            "cloning",
            "running",
            "reporting",
            "done"
        ],
        "{}",
        d.logs()
    );

    // The malformed messages are in the bridge's dead-letter queue, with their reasons.
    let dlq = t.dead_letter_queue(&t.bridge_source());
    let mut reasons = Vec::new();
    for _ in 0..2 {
        let dead = d
            .broker
            .get(&dlq, Duration::from_secs(5))
            .await
            .expect("malformed message dead-lettered");
        reasons.push(dead.header("x-taskbot-reason").unwrap_or("").to_string());
    }
    assert!(reasons.iter().any(|r| r.contains("frame")), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("JSON")), "{reasons:?}");

    // Every service still runs, and each stops cleanly on SIGTERM.
    for s in &mut d.services {
        assert!(
            s.terminate(Duration::from_secs(15)),
            "{} did not exit cleanly on SIGTERM:\n{}",
            s.name,
            s.log_text()
        );
    }
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runner_killed_mid_job_completes_it_once_after_restart() {
    let tasks = tempfile::tempdir().unwrap();
    let slow = tasks.path().join("slow");
    // The task is sandboxed: it notes each start in its own artifacts directory (kept across the
    // two runs of the job), and its sleep has a command line no other process has.
    let sleep = format!("4.{}", std::process::id());
    std::fs::create_dir_all(&slow).unwrap();
    std::fs::write(
        slow.join("taskbot.yaml"),
        "name: slow\ndescription: Takes its time, so a test can kill its runner.\nrun: sh run.sh\n",
    )
    .unwrap();
    std::fs::write(
        slow.join("run.sh"),
        format!("echo start >> \"${{TASKBOT_ARTIFACTS}}starts.txt\"\nsleep {sleep}\nexit 0\n"),
    )
    .unwrap();

    let mut d = Deployment::new(RULES, &[("slow", slow.as_path())], free_port()).await;
    d.start("reporter", "reporter", &[]);
    d.start("provisioner", "provisioner", &[]);
    d.start("rules", "rules", &[]);
    let runner = d.start("runner-x86_64", "runner", &["--arch", "x86_64"]);
    d.start("runner-noarch", "runner", &["--arch", "noarch"]);
    d.wait_until_consuming(Duration::from_secs(60)).await;

    d.publish_event(
        "org.taskbot.test.slow",
        serde_json::json!({"name": "slowpkg-1-1"}),
    )
    .await;

    // Wait until the task is running, then kill its runner without warning.
    let starts = d
        .wait_for_artifact("starts.txt", Duration::from_secs(60))
        .await;
    d.services[runner].kill_hard();
    // Nothing of the task outlives its runner (the sandbox dies with it).
    let deadline = Instant::now() + Duration::from_secs(5);
    let sleeping = format!("sleep\0{sleep}");
    while taskbot::testing::processes_running(&sleeping) > 0 {
        assert!(
            Instant::now() < deadline,
            "the killed runner's task still runs"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        d.wait_for_count("select count(*) from results", 1, Duration::from_secs(1))
            .await,
        0,
        "no result before the job completed"
    );

    d.start("runner-x86_64-restarted", "runner", &["--arch", "x86_64"]);
    let n = d
        .wait_for_count(
            "select count(*) from results where item = 'slowpkg-1-1'",
            1,
            Duration::from_secs(90),
        )
        .await;
    assert_eq!(n, 1, "job not completed after restart\n{}", d.logs());
    d.wait_for_count(
        "select count(*) from jobs where state = 'done'",
        1,
        Duration::from_secs(20),
    )
    .await;
    // Give any duplicate a chance to show up before counting.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let db = d.db().await;
    let count = |sql: &'static str| {
        let db = &db;
        async move { db.query_one(sql, &[]).await.unwrap().get::<_, i64>(0) }
    };
    assert_eq!(count("select count(*) from results").await, 1);
    assert_eq!(
        count("select count(*) from results where outcome = 'PASSED'").await,
        1
    );
    assert_eq!(
        count("select count(*) from job_events where state = 'done'").await,
        1,
        "completed exactly once"
    );
    // It was started twice: the killed run, and the redelivered one.
    let starts = std::fs::read_to_string(&starts).unwrap().lines().count();
    assert_eq!(starts, 2, "the killed job ran again after the restart");
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_a_task_announces_triggers_the_next_task() {
    let tasks = tempfile::tempdir().unwrap();
    let announcer = tasks.path().join("announcer");
    std::fs::create_dir_all(&announcer).unwrap();
    std::fs::write(
        announcer.join("taskbot.yaml"),
        "name: announcer\ndescription: Announces a build, as the ISO task announces an ISO.\nrun: sh run.sh\n",
    )
    .unwrap();
    std::fs::write(
        announcer.join("run.sh"),
        "printf '%s\\n' '{\"topic\": \"taskbot.task.test.built\", \"msg\": {\"item\": \"chained-1.0-1.fc40\"}}' > \"$TASKBOT_EVENTS\"\n",
    )
    .unwrap();
    let example = workspace_root().join("tasks/example");
    let mut d = Deployment::new(
        RULES,
        &[
            ("announcer", announcer.as_path()),
            ("example", example.as_path()),
        ],
        free_port(),
    )
    .await;
    d.start("reporter", "reporter", &[]);
    d.start("provisioner", "provisioner", &[]);
    d.start("rules", "rules", &[]);
    d.start("runner-x86_64", "runner", &["--arch", "x86_64"]);
    d.start("runner-noarch", "runner", &["--arch", "noarch"]);
    d.wait_until_consuming(Duration::from_secs(60)).await;

    let event = Event {
        id: format!("2026-{}", uuid::Uuid::new_v4()),
        topic: "org.taskbot.test.announce".into(),
        source: "test".into(),
        sent_at: None,
        received_at: Utc::now(),
        username: None,
        msg: serde_json::json!({"name": "announcer-input"}),
        headers: Default::default(),
    };
    let t = d.broker.topology.clone();
    d.broker
        .publish(&t.events_exchange(), &event.topic, event.to_json())
        .await;

    let n = d
        .wait_for_count(
            "select count(*) from results where item = 'chained-1.0-1.fc40'",
            1,
            Duration::from_secs(90),
        )
        .await;
    assert_eq!(
        n,
        1,
        "the announced event did not trigger the next task\n{}",
        d.logs()
    );
    let db = d.db().await;
    let row = db
        .query_one(
            "select r.testcase, r.outcome, j.event_topic, j.event_id from results r join jobs j using (job_id) where r.item = 'chained-1.0-1.fc40'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "dist.example");
    assert_eq!(row.get::<_, String>(1), "PASSED");
    assert_eq!(row.get::<_, String>(2), "taskbot.task.test.built");
    assert!(row.get::<_, String>(3).starts_with("task-"));
    d.shutdown().await;
}
