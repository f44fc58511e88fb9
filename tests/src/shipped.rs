//! A deployment of the shipped rules (deploy/rules.yaml) and the shipped tasks (tasks/), fed the
//! real-shaped messages of tests/fixtures/messages, for the end-to-end tests of the tasks.

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::Utc;
use taskbot::messages::{Event, Message};

use crate::{free_port, shipped_task, workspace_root, Deployment};

/// A real-shaped message of tests/fixtures/messages as the bridge turns it into an event (with
/// a fresh id, so that runs of the test never share job ids).
pub fn fixture_event(name: &str) -> Event {
    let text = std::fs::read_to_string(workspace_root().join("tests/fixtures/messages").join(name))
        .unwrap();
    let envelope: serde_json::Value = serde_json::from_str(&text).unwrap();
    Event {
        id: format!("2026-{}", uuid::Uuid::new_v4()),
        topic: envelope["topic"].as_str().unwrap().to_string(),
        source: "test".into(),
        sent_at: None,
        received_at: Utc::now(),
        username: None,
        msg: envelope["msg"].clone(),
        headers: Default::default(),
    }
}

/// Publish `event` on the deployment's events exchange, as a bridge would.
pub async fn send_event(d: &Deployment, event: &Event) {
    d.broker
        .publish(
            &d.broker.topology.events_exchange(),
            &event.topic,
            event.to_json(),
        )
        .await;
}

/// Publish a fixture's event on the deployment's events exchange, as the bridge would.
pub async fn send_fixture(d: &Deployment, name: &str) {
    send_event(d, &fixture_event(name)).await;
}

/// Every shipped task (each folder of tasks/ with a taskbot.yaml), staged under `staging`.
fn shipped_tasks(staging: &Path) -> Vec<(String, PathBuf)> {
    let mut names: Vec<String> = std::fs::read_dir(workspace_root().join("tasks"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.join("taskbot.yaml").exists())
        .map(|path| path.file_name().unwrap().to_str().unwrap().to_string())
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|name| {
            let content = shipped_task(&name, staging);
            (name, content)
        })
        .collect()
}

/// A deployment with the shipped rules and the shipped tasks, the runners of `runner_arches`
/// giving their tasks `env` (where Koji and the repositories are); started and consuming.
pub async fn deployment(
    staging: &Path,
    runner_arches: &[&str],
    env: &[(&str, &str)],
) -> Deployment {
    let tasks = shipped_tasks(staging);
    let tasks: Vec<(&str, &Path)> = tasks
        .iter()
        .map(|(n, p)| (n.as_str(), p.as_path()))
        .collect();
    let rules = std::fs::read_to_string(workspace_root().join("deploy/rules.yaml")).unwrap();
    let mut d = Deployment::new(&rules, &tasks, free_port()).await;
    d.set_arches(&["x86_64", "aarch64", "noarch"]);
    // Tasks never see the runner's environment: the operator hands them these settings.
    d.configure(|config| {
        config.runner.task_env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    });
    d.start("reporter", "reporter", &[]);
    d.start("provisioner", "provisioner", &[]);
    d.start("rules", "rules", &[]);
    for arch in runner_arches {
        d.start(&format!("runner-{arch}"), "runner", &["--arch", arch]);
    }
    let t = d.broker.topology.clone();
    let mut queues = vec![
        t.rules_queue(),
        t.provisioner_queue(),
        t.postgres_results_queue(),
        t.postgres_status_queue(),
    ];
    queues.extend(runner_arches.iter().map(|arch| t.run_queue(arch)));
    d.wait_for_consumers(&queues, Duration::from_secs(60)).await;
    d
}

/// The (outcome, note, arch) of the results of `testcase` for `item`, once `count` are stored.
pub async fn results(
    d: &Deployment,
    testcase: &str,
    item: &str,
    count: i64,
) -> Vec<(String, String, String)> {
    let n = d
        .wait_for_count(
            &format!(
                "select count(*) from results where testcase = '{testcase}' and item = '{item}'"
            ),
            count,
            Duration::from_secs(120),
        )
        .await;
    assert_eq!(n, count, "results of {testcase} for {item}\n{}", d.logs());
    d.db()
        .await
        .query(
            "select outcome, coalesce(note, ''), arch from results where testcase = $1 and item = $2 order by arch",
            &[&testcase, &item],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .collect()
}

/// The content of the first artifact called `name` under the deployment's artifacts.
pub fn find_artifact(d: &Deployment, name: &str) -> String {
    for entry in std::fs::read_dir(&d.config.runner.artifacts_dir).unwrap() {
        let path = entry.unwrap().path().join(name);
        if let Ok(text) = std::fs::read_to_string(&path) {
            return text;
        }
    }
    panic!("no artifact {name}");
}

/// The artifact `name` of the job that stored the result of `testcase` for `item` (wait for the
/// result with [`results`] first).
pub async fn job_artifact(d: &Deployment, testcase: &str, item: &str, name: &str) -> String {
    let row = d
        .db()
        .await
        .query_one(
            "select job_id::text from results where testcase = $1 and item = $2 limit 1",
            &[&testcase, &item],
        )
        .await
        .unwrap();
    let job_id: String = row.get(0);
    let path = d.config.runner.artifacts_dir.join(job_id).join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("artifact {}: {e}", path.display()))
}
