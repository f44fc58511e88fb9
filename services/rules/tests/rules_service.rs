//! The rules service against the real broker: events in, job requests and statuses out, bad
//! messages dead-lettered with their reason.

use std::time::Duration;

use chrono::Utc;
use taskbot::messages::{Event, JobRequest, JobStatus, Message};
use taskbot::testing::{test_config, TestBroker};
use taskbot::Shutdown;

/// The engine unit tests' example rule, for arches of the test deployment's runner queues and a
/// task repository named like a clone URL.
fn example_rules() -> String {
    include_str!("fixtures/koji-example-rules.yaml")
        .replace("primary: [x86_64, aarch64]", "primary: [x86_64, noarch]")
        .replace("repo: example,", "repo: example.git,")
}

#[tokio::test]
async fn event_becomes_job_requests_and_garbage_is_dead_lettered() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.yaml");
    std::fs::write(&rules, example_rules()).unwrap();
    let mut config = test_config();
    config.rules.file = rules;
    config.rules.task_base_url = Some("file:///srv/tasks".into());
    let broker = TestBroker::new(&config).await;
    let t = broker.topology.clone();
    let statuses = broker.tap(&t.results_exchange(), "job.#").await;

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let service = tokio::spawn(taskbot_rules::run(
        config.clone(),
        Shutdown::new(async {
            let _ = stopped.await;
        }),
    ));

    broker
        .publish(
            &t.events_exchange(),
            "org.fedoraproject.prod.x",
            b"{not json".to_vec(),
        )
        .await;
    let event = Event {
        id: "2015-6395fb7a-e5a7-4b95-858a-ff7b80410e7f".into(),
        topic: "org.fedoraproject.prod.buildsys.build.state.change".into(),
        source: "test".into(),
        sent_at: Some(1424216566.0),
        received_at: Utc::now(),
        username: None,
        msg: serde_json::json!({"name": "ansible", "version": "1.8.3", "release": "1.el7",
                                "new": 1, "old": 0, "build_id": 612324}),
        headers: Default::default(),
    };
    broker
        .publish(&t.events_exchange(), &event.topic, event.to_json())
        .await;

    let mut jobs = Vec::new();
    for _ in 0..2 {
        let msg = broker
            .get(&t.provisioner_queue(), Duration::from_secs(10))
            .await
            .expect("a job request");
        jobs.push(JobRequest::from_json(&msg.body).unwrap());
    }
    jobs.sort_by(|a, b| a.arch.cmp(&b.arch));
    assert_eq!(jobs[0].arch, "noarch");
    assert_eq!(jobs[1].arch, "x86_64");
    assert!(jobs.iter().all(|j| j.item == "ansible-1.8.3-1.el7"
        && j.event_id == event.id
        && j.task.repo == "file:///srv/tasks/example.git"));

    let queued = broker.get(&statuses, Duration::from_secs(5)).await.unwrap();
    let queued = JobStatus::from_json(&queued.body).unwrap();
    assert_eq!(queued.state.as_str(), "queued");

    let dead = broker
        .get(
            &t.dead_letter_queue(&t.rules_queue()),
            Duration::from_secs(5),
        )
        .await
        .expect("the malformed event is dead-lettered");
    assert_eq!(dead.body, b"{not json");
    assert!(dead
        .header("x-taskbot-reason")
        .unwrap()
        .contains("not valid JSON"));

    // Nothing else: the malformed message produced no job.
    assert!(broker
        .get(&t.provisioner_queue(), Duration::from_millis(300))
        .await
        .is_none());
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), service)
        .await
        .expect("rules stops on shutdown")
        .unwrap()
        .unwrap();
    broker.cleanup().await;
}

#[tokio::test]
async fn broken_rules_file_refuses_to_start_with_position() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.yaml");
    std::fs::write(
        &rules,
        "rules:\n  - name: x\n    when: {topic: a}\n    do: oops\n",
    )
    .unwrap();
    let mut config = test_config();
    config.rules.file = rules.clone();
    let err = taskbot_rules::run(config, Shutdown::new(std::future::pending()))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.starts_with(&format!("{}:4:", rules.display())), "{err}");
}

fn reload_rules(task: &str) -> String {
    format!(
        r#"
tasks:
  {task}: {{ repo: {task}, ref: main }}
rules:
  - name: on-reload-test
    when: {{ topic: org.taskbot.test.reload }}
    do:
      - task: {task}
        item: "{{{{ msg.n }}}}"
        item_type: koji_build
        arches: [x86_64]
"#
    )
}

/// Publish a test event and return the task name of the job it produced.
async fn task_for(broker: &TestBroker, n: u32) -> String {
    let t = &broker.topology;
    let event = taskbot::testing::event(
        &format!("reload-{n}-{}", uuid::Uuid::new_v4()),
        "org.taskbot.test.reload",
        serde_json::json!({ "n": n }),
    );
    broker
        .publish(&t.events_exchange(), &event.topic, event.to_json())
        .await;
    let msg = broker
        .get(&t.provisioner_queue(), Duration::from_secs(10))
        .await
        .expect("a job request");
    let job = JobRequest::from_json(&msg.body).unwrap();
    assert_eq!(job.item, n.to_string());
    job.task.name
}

/// A rules service running in this test on a rules file of its own.
struct Running {
    /// Holds the rules file.
    _dir: tempfile::TempDir,
    rules: std::path::PathBuf,
    broker: TestBroker,
    stop: tokio::sync::oneshot::Sender<()>,
    service: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// Start the service on a rules file with `text`, checked for changes every
/// `reload_interval_ms` (`None`: the default).
async fn start_on(text: &str, reload_interval_ms: Option<u64>) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.yaml");
    std::fs::write(&rules, text).unwrap();
    let mut config = test_config();
    config.rules.file = rules.clone();
    if let Some(interval) = reload_interval_ms {
        config.rules.reload_interval_ms = interval;
    }
    let broker = TestBroker::new(&config).await;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let service = tokio::spawn(taskbot_rules::run(
        config,
        Shutdown::new(async {
            let _ = stopped.await;
        }),
    ));
    Running {
        _dir: dir,
        rules,
        broker,
        stop,
        service,
    }
}

impl Running {
    /// Stop the service; it must end cleanly.
    async fn stop(self) {
        self.stop.send(()).unwrap();
        self.service.await.unwrap().unwrap();
        self.broker.cleanup().await;
    }
}

#[tokio::test]
async fn changed_rules_file_is_reloaded_and_a_broken_one_refused() {
    let running = start_on(&reload_rules("first"), Some(100)).await;
    let (broker, rules) = (&running.broker, &running.rules);

    assert_eq!(task_for(broker, 1).await, "first");

    // A broken file is refused: the rules in force stay.
    std::fs::write(rules, "rules: [\n").unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(task_for(broker, 2).await, "first");

    // A good file replaces them.
    std::fs::write(rules, reload_rules("second")).unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(task_for(broker, 3).await, "second");

    running.stop().await;
}

#[tokio::test]
async fn sighup_reloads_the_rules_file() {
    // Never by polling within this test: only the signal can reload.
    let running = start_on(&reload_rules("first"), Some(3_600_000)).await;
    let (broker, rules) = (&running.broker, &running.rules);

    // A job proves the service (and its signal handler) is up.
    assert_eq!(task_for(broker, 1).await, "first");
    std::fs::write(rules, reload_rules("second")).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        task_for(broker, 2).await,
        "first",
        "no reload without the signal"
    );

    unsafe {
        libc::kill(libc::getpid(), libc::SIGHUP);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(task_for(broker, 3).await, "second");

    running.stop().await;
}

/// The Koji "build completed" event of ansible-1.8.3-1.el7, as the bridge makes it.
fn ansible_built() -> taskbot::Event {
    taskbot::testing::event(
        "2015-6395fb7a-e5a7-4b95-858a-ff7b80410e7f",
        "org.fedoraproject.prod.buildsys.build.state.change",
        serde_json::json!({"name": "ansible", "version": "1.8.3", "release": "1.el7", "new": 1}),
    )
}

/// The arches of the job requests on the provisioner's queue, sorted, once it stays empty 2 s.
async fn requested_arches(broker: &TestBroker) -> Vec<String> {
    let queue = broker.topology.provisioner_queue();
    let mut arches = Vec::new();
    while let Some(msg) = broker.get(&queue, Duration::from_secs(2)).await {
        arches.push(JobRequest::from_json(&msg.body).unwrap().arch);
    }
    arches.sort();
    arches
}

#[tokio::test]
async fn the_same_event_twice_requests_its_jobs_once() {
    let running = start_on(&example_rules(), None).await;
    let broker = &running.broker;
    let t = broker.topology.clone();

    let event = ansible_built();
    for _ in 0..2 {
        broker
            .publish(&t.events_exchange(), &event.topic, event.to_json())
            .await;
    }
    let arches = requested_arches(broker).await;
    assert_eq!(arches, ["noarch", "x86_64"], "one job per arch, not two");

    running.stop().await;
}

/// Two rules services on one queue (a standby beside the active one, or two started by
/// mistake): the same event delivered twice still requests its jobs once, because only one of
/// them consumes at a time (the queue is single-active-consumer) and it remembers what it asked.
#[tokio::test]
async fn two_rules_services_request_a_repeated_events_jobs_once() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.yaml");
    std::fs::write(&rules, example_rules()).unwrap();
    let mut config = test_config();
    config.rules.file = rules;
    let broker = TestBroker::new(&config).await;
    let t = broker.topology.clone();
    let mut services = Vec::new();
    for _ in 0..2 {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let service = tokio::spawn(taskbot_rules::run(
            config.clone(),
            Shutdown::new(async {
                let _ = stopped.await;
            }),
        ));
        services.push((stop, service));
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while broker.consumers(&t.rules_queue()).await < 2 {
        assert!(std::time::Instant::now() < deadline, "both consume");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let event = ansible_built();
    for _ in 0..4 {
        broker
            .publish(&t.events_exchange(), &event.topic, event.to_json())
            .await;
    }
    let arches = requested_arches(&broker).await;
    assert_eq!(
        arches,
        ["noarch", "x86_64"],
        "one job per arch, not one per service"
    );

    for (stop, service) in services {
        stop.send(()).unwrap();
        service.await.unwrap().unwrap();
    }
    broker.cleanup().await;
}
