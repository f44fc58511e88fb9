//! `taskbot results` and `taskbot job` as users run them, against the api running in-process over
//! a test database filled by the reporter's own writes.

#[path = "../../api/tests/support/mod.rs"]
mod support;

use std::process::{Command, Output};

use serde_json::Value;
use support::{job, result, status, RunningApi, TestDb};
use taskbot::messages::{JobState, Outcome};

/// `taskbot ARGS` off the async runtime (the api serves on it), with no configuration from the
/// environment of whoever runs the tests.
async fn taskbot(args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let mut command = Command::new(env!("CARGO_BIN_EXE_taskbot"));
        command.args(&args);
        for (key, _) in std::env::vars() {
            if key.starts_with("TASKBOT_") {
                command.env_remove(key);
            }
        }
        command.output().expect("run taskbot")
    })
    .await
    .unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test]
async fn results_and_job_read_the_api() {
    let db = TestDb::create().await;
    let xchat = job("rpmlint", "xchat-0.5-1.fc40", "x86_64", 0);
    let glibc = job("abicheck", "glibc-2.40-1.fc40", "aarch64", 1);
    db.insert_result(&result(&xchat, "dist.rpmlint", Outcome::Passed, 10))
        .await;
    db.insert_result(&result(&xchat, "dist.rpmgrill", Outcome::Failed, 11))
        .await;
    db.insert_result(&result(&glibc, "abi.check", Outcome::Crashed, 12))
        .await;
    db.record_status(&status(&xchat, JobState::Queued, 0)).await;
    db.record_status(&status(&xchat, JobState::Running, 3))
        .await;
    db.record_status(&status(&xchat, JobState::Done, 12)).await;
    let artifacts = tempfile::tempdir().unwrap();
    let api = RunningApi::start(&db.url, artifacts.path()).await;

    let out = taskbot(&["results", "--api", &api.url]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    assert!(lines[0].starts_with("SUBMITTED"), "{text}");
    assert!(
        lines[1].contains("CRASHED") && lines[1].contains("abi.check"),
        "{text}"
    );
    assert!(
        lines[3].starts_with("2025-06-15 15:06:50  PASSED   dist.rpmlint")
            && lines[3].contains(&xchat.job_id.to_string()),
        "{text}"
    );

    let out = taskbot(&[
        "results",
        "--api",
        &api.url,
        "--item",
        "xchat-0.5-1.fc40",
        "--outcome",
        "FAILED",
    ])
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(text.contains("dist.rpmgrill"), "{text}");

    let out = taskbot(&[
        "results",
        "--api",
        &api.url,
        "--testcase",
        "dist.*",
        "--limit",
        "1",
    ])
    .await;
    let text = stdout(&out);
    assert!(
        text.contains("dist.rpmgrill") && text.contains("more match"),
        "{text}"
    );

    let out = taskbot(&[
        "results",
        "--api",
        &api.url,
        "--json",
        "--testcase",
        "abi.check",
    ])
    .await;
    assert!(out.status.success());
    let page: Value = serde_json::from_slice(&out.stdout).expect("--json prints JSON");
    assert_eq!(page["data"][0]["outcome"], "CRASHED");

    // An unknown outcome is a usage error, said before asking the api.
    let out = taskbot(&["results", "--api", &api.url, "--outcome", "GREAT"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("\"GREAT\" is not an outcome") && stderr(&out).contains("PASSED"),
        "{}",
        stderr(&out)
    );
    // What the api refuses is an error with status 1 and the api's message.
    let out = taskbot(&[
        "results",
        "--api",
        &api.url,
        "--testcase",
        &"x".repeat(9000),
    ])
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("the api answered 4"),
        "{}",
        stderr(&out)
    );

    let id = xchat.job_id.to_string();
    let out = taskbot(&["job", &id, "--api", &api.url]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.starts_with(&format!("job      {id}\nstate    done\n")),
        "{text}"
    );
    assert!(
        text.contains("task     rpmlint (https://git.example/taskbot/rpmlint.git@main)"),
        "{text}"
    );
    assert!(
        text.contains(&format!("{}/api/v1/jobs/{id}/artifacts/task.log", api.url)),
        "{text}"
    );
    let history: Vec<&str> = text
        .lines()
        .skip_while(|l| *l != "history:")
        .skip(2)
        .take_while(|l| !l.is_empty())
        .collect();
    assert_eq!(history.len(), 3, "{text}");
    assert!(
        history[0].contains("queued") && history[2].contains("done"),
        "{text}"
    );
    assert!(text.contains("PASSED   dist.rpmlint"), "{text}");

    let out = taskbot(&["job", &id, "--json", "--api", &api.url]).await;
    let detail: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(detail["history"].as_array().unwrap().len(), 3);

    let missing = uuid::Uuid::new_v4().to_string();
    let out = taskbot(&["job", &missing, "--api", &api.url]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(&format!("no job {missing}")),
        "{}",
        stderr(&out)
    );
    api.stop().await;
}

#[tokio::test]
async fn unreachable_api_is_a_clear_error() {
    // Nothing listens on port 1.
    for args in [
        vec!["results", "--api", "http://127.0.0.1:1"],
        vec![
            "job",
            "0e7c1b7e-0000-4000-8000-000000000000",
            "--api",
            "http://127.0.0.1:1/",
        ],
    ] {
        let out = taskbot(&args).await;
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = stderr(&out);
        assert!(
            err.contains("cannot reach the api at http://127.0.0.1:1/api/"),
            "{err}"
        );
        assert!(err.contains("is the api service running?"), "{err}");
        assert!(stdout(&out).is_empty());
    }
}
