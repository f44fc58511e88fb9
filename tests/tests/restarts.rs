//! The pipeline survives a RabbitMQ restart and a PostgreSQL restart without losing a job.
//!
//! These restart the machine's shared broker and database, which would disturb tests running
//! beside them, so they are ignored by default; `make test` runs them alone, after the others.

use std::process::Command;
use std::time::{Duration, Instant};

use chrono::Utc;
use taskbot::messages::{Event, Message};
use taskbot::testing::TestBroker;
use taskbot_tests::{free_port, workspace_root, Deployment};

const RULES: &str = r#"
tasks:
  example: { repo: example, ref: main }
rules:
  - name: example-on-test-event
    when: { topic: org.taskbot.test.restart }
    do:
      - task: example
        item: "{{ msg.nvr }}"
        item_type: koji_build
        arches: [noarch]
"#;

fn run(cmd: &str, args: &[&str]) {
    let status = Command::new(cmd)
        .args(args)
        .status()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(status.success(), "{cmd} {args:?} failed");
}

async fn publish(broker: &TestBroker, nvr: &str) {
    let event = Event {
        id: format!("restart-{}", uuid::Uuid::new_v4()),
        topic: "org.taskbot.test.restart".into(),
        source: "test".into(),
        sent_at: None,
        received_at: Utc::now(),
        username: None,
        msg: serde_json::json!({ "nvr": nvr }),
        headers: Default::default(),
    };
    broker
        .publish(
            &broker.topology.events_exchange(),
            &event.topic,
            event.to_json(),
        )
        .await;
}

async fn stored(d: &Deployment, nvr: &str, timeout: Duration) -> bool {
    let sql = format!("select count(*) from results where item = '{nvr}'");
    d.wait_for_count(&sql, 1, timeout).await >= 1
}

/// A fresh connection once the broker accepts them again.
async fn reconnect(d: &Deployment) -> TestBroker {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if taskbot::amqp::connect(&d.config.amqp.url, "probe")
            .await
            .is_ok()
        {
            return TestBroker::new(&d.config).await;
        }
        assert!(Instant::now() < deadline, "broker did not come back");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "restarts the shared RabbitMQ and PostgreSQL; make test runs it alone"]
async fn pipeline_survives_broker_and_database_restarts() {
    let example = workspace_root().join("tasks/example");
    let mut d = Deployment::new(RULES, &[("example", example.as_path())], free_port()).await;
    d.start("reporter", "reporter", &[]);
    d.start("provisioner", "provisioner", &[]);
    d.start("rules", "rules", &[]);
    d.start("runner-x86_64", "runner", &["--arch", "x86_64"]);
    d.start("runner-noarch", "runner", &["--arch", "noarch"]);
    d.wait_until_consuming(Duration::from_secs(60)).await;

    publish(&d.broker, "before-1-1").await;
    assert!(
        stored(&d, "before-1-1", Duration::from_secs(60)).await,
        "{}",
        d.logs()
    );

    // RabbitMQ goes away and comes back: every service must reconnect by itself.
    run("rabbitmqctl", &["-q", "stop_app"]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    run("rabbitmqctl", &["-q", "start_app"]);
    d.broker = reconnect(&d).await;
    d.wait_until_consuming(Duration::from_secs(90)).await;
    publish(&d.broker, "after-broker-1-1").await;
    assert!(
        stored(&d, "after-broker-1-1", Duration::from_secs(90)).await,
        "no result after the broker restart\n{}",
        d.logs()
    );

    // PostgreSQL restarts while a result is on its way: the reporter retries until it is stored.
    let version = std::fs::read_dir("/etc/postgresql")
        .ok()
        .and_then(|mut dirs| dirs.next())
        .and_then(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned());
    if let Some(version) = version {
        run(
            "pg_ctlcluster",
            &[
                "--skip-systemctl-redirect",
                "-m",
                "fast",
                &version,
                "main",
                "stop",
            ],
        );
        publish(&d.broker, "during-db-1-1").await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        run(
            "pg_ctlcluster",
            &["--skip-systemctl-redirect", &version, "main", "start"],
        );
        assert!(
            stored(&d, "during-db-1-1", Duration::from_secs(90)).await,
            "result lost across the database restart\n{}",
            d.logs()
        );
    }
    let db = d.db().await;
    let n: i64 = db
        .query_one("select count(*) from results", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 3, "each job stored once");
    d.shutdown().await;
}
