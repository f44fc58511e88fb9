//! Without `--api` and `api.public_url`, the commands that read the api (`status`, `results`)
//! find it where it listens, `api.listen`, not on a fixed port: the api runs in-process on a
//! free port over a test database, `status` against the real broker.

#[path = "../../api/tests/support/mod.rs"]
mod support;

use std::process::{Command, Output};

use serde_json::Value;
use support::{job, result, status, RunningApi, TestDb};
use taskbot::messages::{JobState, Outcome};
use taskbot::testing::{test_config, TestBroker};

/// `taskbot ARGS` off the async runtime (the api serves on it) with only the `env` given of
/// Taskbot's configuration.
async fn taskbot(args: &[&str], env: Vec<(&str, String)>) -> Output {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let env: Vec<(String, String)> = env.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    tokio::task::spawn_blocking(move || {
        let mut command = Command::new(env!("CARGO_BIN_EXE_taskbot"));
        command.args(&args);
        for (key, _) in std::env::vars() {
            if key.starts_with("TASKBOT_") {
                command.env_remove(key);
            }
        }
        command.envs(env).output().expect("run taskbot")
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_results_find_the_api_at_api_listen() {
    let db = TestDb::create().await;
    let xchat = job("rpmlint", "xchat-0.5-1.fc40", "x86_64", 0);
    db.insert_result(&result(&xchat, "dist.rpmlint", Outcome::Passed, 10))
        .await;
    db.record_status(&status(&xchat, JobState::Queued, 0)).await;
    db.record_status(&status(&xchat, JobState::Done, 12)).await;
    let artifacts = tempfile::tempdir().unwrap();
    let api = RunningApi::start(&db.url, artifacts.path()).await;
    let broker = TestBroker::new(&test_config()).await;
    // Where an api listening on every interface is reached from this host: the loopback.
    let listen = format!("0.0.0.0:{}", api.addr.port());
    let env = || {
        vec![
            ("TASKBOT_AMQP__URL", broker.config.amqp.url.clone()),
            (
                "TASKBOT_AMQP__NAMESPACE",
                broker.config.amqp.namespace.clone(),
            ),
            (
                "TASKBOT_AMQP__MANAGEMENT_URL",
                broker.config.amqp.management_url.clone(),
            ),
            ("TASKBOT_API__LISTEN", listen.clone()),
        ]
    };

    let out = taskbot(&["status", "--json"], env()).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["jobs"], serde_json::json!({"done": 1}), "{status:#}");
    assert!(status.get("jobs_error").is_none(), "{status:#}");

    let out = taskbot(&["results"], env()).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("PASSED   dist.rpmlint"), "{text}");
    api.stop().await;
    broker.cleanup().await;
}
