//! A CRASHED note holds the last lines of the job's log: `taskbot results` and `taskbot job`
//! show one line per result (the note's first, cut with `…`), and `--full` the whole note, its
//! lines under the NOTE column. Against the api in-process over a test database.

#[path = "../../api/tests/support/mod.rs"]
mod support;

use std::process::{Command, Output};

use support::{job, result, status, RunningApi, TestDb};
use taskbot::messages::{JobState, Outcome, TaskResult};

async fn taskbot(args: Vec<String>) -> Output {
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

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

#[tokio::test]
async fn crashed_notes_take_one_line_unless_full() {
    let db = TestDb::create().await;
    let crashed = job("rpmlint", "xchat-0.5-1.fc40", "x86_64", 0);
    let passed = job("rpmlint", "glibc-2.40-1.fc40", "x86_64", 1);
    let log: Vec<String> = (1..=20).map(|n| format!("log line {n}")).collect();
    let note = format!(
        "the task was killed by signal 11 (SIGSEGV)\n--- end of task.log ---\n{}",
        log.join("\n")
    );
    db.insert_result(&TaskResult {
        note: Some(note.clone()),
        ..result(&crashed, "dist.rpmlint", Outcome::Crashed, 10)
    })
    .await;
    db.insert_result(&result(&passed, "dist.rpmlint", Outcome::Passed, 11))
        .await;
    db.record_status(&status(&crashed, JobState::Crashed, 10))
        .await;
    let artifacts = tempfile::tempdir().unwrap();
    let api = RunningApi::start(&db.url, artifacts.path()).await;
    let args = |extra: &[&str]| {
        let mut args: Vec<String> = extra.iter().map(|a| a.to_string()).collect();
        args.extend(["--api".to_string(), api.url.clone()]);
        args
    };

    let table = ok(&taskbot(args(&["results"])).await);
    assert_eq!(
        table.lines().count(),
        3,
        "a header and a line per result:\n{table}"
    );
    let row = table.lines().find(|l| l.contains("CRASHED")).unwrap();
    assert!(
        row.ends_with("the task was killed by signal 11 (SIGSEGV) …"),
        "{table}"
    );
    assert!(!table.contains("log line"), "{table}");

    let full = ok(&taskbot(args(&["results", "--full"])).await);
    assert_eq!(full.lines().count(), 3 + 21, "{full}");
    let column = full.lines().next().unwrap().find("NOTE").unwrap();
    for line in &log {
        let at = full.lines().find(|l| l.ends_with(line.as_str())).unwrap();
        assert_eq!(at.find(line.as_str()), Some(column), "{full}");
    }

    let id = crashed.job_id.to_string();
    let shown = ok(&taskbot(args(&["job", &id])).await);
    assert!(!shown.contains("log line"), "{shown}");
    assert!(shown.contains("(SIGSEGV) …"), "{shown}");
    let shown = ok(&taskbot(args(&["job", &id, "--full"])).await);
    assert!(shown.contains("log line 20"), "{shown}");
    api.stop().await;
}
