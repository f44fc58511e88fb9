//! `taskbot status` and the api's dashboard on a running pipeline (every service binary, the
//! api, the real broker and database): after jobs ran, what they show must be what the broker
//! says (consumers and depths over AMQP) and what the database holds (jobs by state).

use std::process::Command;
use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::Value;
use taskbot::messages::{Event, Message};
use taskbot_tests::{binary, free_port, workspace_root, Deployment};

const RULES: &str = r#"
tasks:
  example: { repo: example, ref: main }
rules:
  - name: example-on-build
    when:
      topic: org.fedoraproject.prod.buildsys.build.state.change
      match: { msg.new: 1 }
    do:
      - task: example
        item: "{{ msg.name }}-{{ msg.version }}-{{ msg.release }}"
        item_type: koji_build
        arches: [x86_64, noarch]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_dashboard_show_the_running_pipelines_true_state() {
    let example = workspace_root().join("tasks/example");
    let mut d = Deployment::new(RULES, &[("example", example.as_path())], free_port()).await;
    d.start_all();
    let api_port = free_port();
    let api_listen = format!("127.0.0.1:{api_port}");
    d.start_with_env("api", "api", &[], &[("TASKBOT_API__LISTEN", &api_listen)]);
    d.wait_until_consuming(Duration::from_secs(60)).await;

    let t = d.broker.topology.clone();
    for n in 0..3 {
        let event = Event {
            id: format!("2026-status-{}", uuid::Uuid::new_v4()),
            topic: "org.fedoraproject.prod.buildsys.build.state.change".into(),
            source: "test".into(),
            sent_at: None,
            received_at: Utc::now(),
            username: None,
            msg: serde_json::json!({"name": "pkg", "version": format!("1.{n}"), "release": "1.fc40", "new": 1}),
            headers: Default::default(),
        };
        d.broker
            .publish(&t.events_exchange(), &event.topic, event.to_json())
            .await;
    }
    let done = d
        .wait_for_count(
            "select count(*) from jobs where state = 'done'",
            6,
            Duration::from_secs(90),
        )
        .await;
    assert_eq!(done, 6, "{}", d.logs());

    // The broker's own numbers for every stage.
    let stages = [
        ("rules", t.rules_queue()),
        ("provisioner", t.provisioner_queue()),
        ("runner x86_64", t.run_queue("x86_64")),
        ("runner noarch", t.run_queue("noarch")),
        ("reporter postgres.results", t.postgres_results_queue()),
        ("reporter postgres.status", t.postgres_status_queue()),
    ];
    let mut truth = Vec::new();
    for (stage, queue) in &stages {
        truth.push((
            stage.to_string(),
            d.broker.consumers(queue).await as u64,
            d.broker.depth(queue).await as u64,
        ));
    }
    assert!(
        truth.iter().all(|(_, consumers, _)| *consumers == 1),
        "{truth:?}"
    );

    // `taskbot status`, with the management API allowed to catch up (it samples every 5 s).
    let api_url = format!("http://{api_listen}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        let output = Command::new(binary("taskbot"))
            .args(["status", "--json", "--api", &api_url])
            .env("TASKBOT_CONFIG", &d.config_file)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let status: Value = serde_json::from_slice(&output.stdout).unwrap();
        let seen: Vec<(String, u64, u64)> = stages
            .iter()
            .map(|(stage, _)| {
                let s = status["stages"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|s| s["stage"] == *stage)
                    .cloned()
                    .unwrap_or(Value::Null);
                (
                    stage.to_string(),
                    s["queue"]["consumers"].as_u64().unwrap_or(u64::MAX),
                    s["queue"]["ready"].as_u64().unwrap_or(u64::MAX),
                )
            })
            .collect();
        if seen == truth {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "status shows {seen:?}, the broker {truth:?}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    assert_eq!(status["runners"]["x86_64"], 1);
    assert_eq!(status["runners"]["noarch"], 1);
    // Jobs by state, as the database holds them.
    let db = d.db().await;
    let mut states = serde_json::Map::new();
    for row in db
        .query("select state, count(*) from jobs group by state", &[])
        .await
        .unwrap()
    {
        states.insert(row.get::<_, String>(0), Value::from(row.get::<_, i64>(1)));
    }
    assert_eq!(status["jobs"], Value::Object(states), "{status:#}");

    // The dashboard, in Chromium, shows the same consumers and depths.
    let output = Command::new("chromium")
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--dump-dom"])
        .arg(format!("{api_url}/dashboard"))
        .output()
        .expect("chromium (scripts/ensure-services.sh installs it)");
    let dom = String::from_utf8_lossy(&output.stdout);
    for ((_, queue), (_, consumers, ready)) in stages.iter().zip(&truth) {
        let row_at = dom
            .find(&format!("data-queue=\"{queue}\""))
            .unwrap_or_else(|| panic!("no row for {queue}:\n{dom}"));
        let row = &dom[row_at..row_at + dom[row_at..].find("</tr>").unwrap()];
        assert!(
            row.contains(&format!("data-field=\"consumers\">{consumers}<")),
            "{row}"
        );
        assert!(
            row.contains(&format!("data-field=\"ready\">{ready}<")),
            "{row}"
        );
    }
    assert!(
        dom.contains(
            "<tr data-state=\"done\"><td><a href=\"/dashboard?state=done\">\
             <span data-state=\"done\">done</span></a></td><td class=\"n\">6</td></tr>"
        ),
        "{dom}"
    );
    d.shutdown().await;
}
