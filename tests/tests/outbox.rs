//! A broker restart during a task costs a re-publish, not a re-run: the runner keeps the
//! finished job's outcome in its outbox and publishes it when the job comes back (issue 14).
//!
//! The broker restarted is a RabbitMQ node of the test's own ([`PrivateBroker`]), never the
//! machine's shared one; this file has one test, as it points the test harness at that node
//! through the environment.

use std::time::Duration;

use taskbot::testing::TestBroker;
use taskbot_tests::{free_port, Deployment, PrivateBroker};

const RULES: &str = r#"
tasks:
  slow: { repo: slow, ref: main }
rules:
  - name: slow-on-test-event
    when: { topic: org.taskbot.test.outbox }
    do:
      - task: slow
        item: "{{ msg.nvr }}"
        item_type: koji_build
        arches: [x86_64]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_finished_while_the_broker_restarted_runs_once_and_is_stored_once() {
    let mut broker = PrivateBroker::with_management();
    // Read by `taskbot::testing::test_config`, which `Deployment` uses; set before any other
    // thread of this test binary runs.
    std::env::set_var("TASKBOT_TEST_AMQP_URL", broker.url());
    std::env::set_var("TASKBOT_TEST_MANAGEMENT_URL", broker.management_url());

    let tasks = tempfile::tempdir().unwrap();
    let slow = tasks.path().join("slow");
    std::fs::create_dir_all(&slow).unwrap();
    std::fs::write(
        slow.join("taskbot.yaml"),
        "name: slow\ndescription: Outlives a broker restart.\nrun: sh run.sh\n",
    )
    .unwrap();
    std::fs::write(
        slow.join("run.sh"),
        "echo start >> \"${TASKBOT_ARTIFACTS}starts.txt\"\nsleep 10\nexit 0\n",
    )
    .unwrap();
    let mut d = Deployment::new(RULES, &[("slow", slow.as_path())], free_port()).await;
    d.start("reporter", "reporter", &[]);
    d.start("provisioner", "provisioner", &[]);
    d.start("rules", "rules", &[]);
    d.start("runner-x86_64", "runner", &["--arch", "x86_64"]);
    d.start("runner-noarch", "runner", &["--arch", "noarch"]);
    d.wait_until_consuming(Duration::from_secs(60)).await;

    d.publish_event(
        "org.taskbot.test.outbox",
        serde_json::json!({ "nvr": "outboxpkg-1-1" }),
    )
    .await;
    let starts = d
        .wait_for_artifact("starts.txt", Duration::from_secs(60))
        .await;
    // The broker dies (SIGKILL) while the task runs, and comes back on the same data.
    broker.kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    broker.resume();
    d.broker = TestBroker::new(&d.config).await;

    let n = d
        .wait_for_count(
            "select count(*) from results where item = 'outboxpkg-1-1'",
            1,
            Duration::from_secs(120),
        )
        .await;
    assert_eq!(n, 1, "no result after the broker restart\n{}", d.logs());
    d.wait_for_count(
        "select count(*) from jobs where state = 'done'",
        1,
        Duration::from_secs(30),
    )
    .await;
    // Give a second run (or a duplicate) the time to show up before counting.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let db = d.db().await;
    let results: i64 = db
        .query_one("select count(*) from results", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(results, 1, "stored once");
    let starts = std::fs::read_to_string(&starts).unwrap().lines().count();
    assert_eq!(starts, 1, "the finished task ran again\n{}", d.logs());
    assert!(
        d.logs().contains("publishing its outcome from the outbox"),
        "{}",
        d.logs()
    );
    let outbox = d.config.runner.work_dir.join("outbox");
    let entries: Vec<String> = std::fs::read_dir(&outbox)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    // Confirmed: kept only as published (a later copy of the run message is answered from it).
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert!(entries[0].ends_with(".published.json"), "{entries:?}");
    d.shutdown().await;
}
