//! `taskbot gate` end to end: the real `api` binary over a real database holding, as the
//! reporter's own writes store them, an item's results and jobs: testcases that passed, one that
//! failed on aarch64 but passed later on x86_64, one with no result, one whose job is queued and
//! one whose job is running in a scenario; and the real `taskbot` binary asking about them.

use std::net::SocketAddr;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use taskbot::messages::{JobRequest, JobState, JobStatus, Outcome, TaskRef, TaskResult};
use taskbot::testing::http_get;
use taskbot_tests::{binary, free_port, to_toml, TestDb};

const ITEM: &str = "xchat-0.5-1.fc40";

fn time(offset_secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_750_000_000 + offset_secs, 0).expect("valid time")
}

fn job(task: &str, arch: &str, created: i64) -> JobRequest {
    let task = TaskRef {
        name: task.into(),
        repo: format!("https://git.example/taskbot/{task}.git"),
        git_ref: "main".into(),
    };
    JobRequest {
        created_at: time(created),
        ..taskbot::testing::job_request(task, ITEM, arch)
    }
}

fn result(job: &JobRequest, testcase: &str, outcome: Outcome, finished: i64) -> TaskResult {
    let mut result = taskbot::testing::task_result(job, testcase, outcome);
    result.finished_at = time(finished);
    if let Some(scenario) = &job.scenario {
        result.data.insert("scenario".into(), json!(scenario));
    }
    result
}

fn status(job: &JobRequest, state: JobState, at: i64) -> JobStatus {
    let mut status = JobStatus::new(job, state, "test@host", None);
    status.at = time(at);
    status
}

/// The store written as the reporter writes it.
async fn fill(db: &TestDb) {
    let pool = taskbot::store::connect_pool(
        &taskbot::config::PostgresConfig {
            url: db.url.clone(),
            pool_size: 1,
            ..Default::default()
        },
        &taskbot::store::PoolOptions {
            application_name: "taskbot-gate-test",
            read_only: false,
            connect_timeout: Duration::from_secs(5),
            wait_timeout: Duration::from_secs(10),
            create_timeout: Duration::from_secs(5),
            statement_timeout: None,
        },
    )
    .unwrap();
    taskbot::store::migrate(&pool).await.unwrap();
    let mut client = pool.get().await.unwrap();

    // rpmlint passed; depcheck failed on aarch64, then passed on x86_64 (later); both done.
    let mut rpmlint = job("rpmlint", "noarch", 0);
    rpmlint.testcases = vec!["dist.rpmlint".into()];
    let dep_arm = job("depcheck", "aarch64", 0);
    let dep_x86 = job("depcheck", "x86_64", 0);
    let finished = [
        (&rpmlint, "dist.rpmlint", Outcome::Passed, 10),
        (&dep_arm, "dist.depcheck", Outcome::Failed, 11),
        (&dep_x86, "dist.depcheck", Outcome::Passed, 20),
    ];
    for (j, testcase, outcome, at) in finished {
        taskbot::store::record_status(&mut client, &status(j, JobState::Queued, 0))
            .await
            .unwrap();
        assert!(
            taskbot::store::insert_result(&client, &result(j, testcase, outcome, at))
                .await
                .unwrap()
        );
        taskbot::store::record_status(&mut client, &status(j, JobState::Done, at + 1))
            .await
            .unwrap();
    }
    // rpmgrill: requested by a rule declaring its testcase, waiting for a runner.
    let mut rpmgrill = job("rpmgrill", "x86_64", 30);
    rpmgrill.testcases = vec!["dist.rpmgrill".into()];
    taskbot::store::record_status(&mut client, &status(&rpmgrill, JobState::Queued, 30))
        .await
        .unwrap();
    taskbot::store::record_status(&mut client, &status(&rpmgrill, JobState::Provisioned, 31))
        .await
        .unwrap();
    // upgrade-tests in one configuration: the rule declares nothing; the task file names its
    // testcase when the job starts.
    let mut upgrade = job("upgrade-tests", "x86_64", 40);
    upgrade.scenario = Some("n-1-minimal".into());
    taskbot::store::record_status(&mut client, &status(&upgrade, JobState::Queued, 40))
        .await
        .unwrap();
    let mut running = status(&upgrade, JobState::Running, 45);
    running.testcases = vec!["dist.upgrade".into()];
    taskbot::store::record_status(&mut client, &running)
        .await
        .unwrap();
}

/// The api binary on a free port, with `db` as its store; killed when dropped.
struct Api {
    child: Child,
    addr: SocketAddr,
    url: String,
    _dir: tempfile::TempDir,
}

impl Api {
    async fn start(db: &TestDb) -> Api {
        let dir = tempfile::tempdir().unwrap();
        let mut config = taskbot::testing::test_config();
        config.postgres.url = db.url.clone();
        let listen = format!("127.0.0.1:{}", free_port());
        config.api.listen = listen.clone();
        let config_file = dir.path().join("taskbot.toml");
        std::fs::write(&config_file, to_toml(&config)).unwrap();
        let log = std::fs::File::create(dir.path().join("api.log")).unwrap();
        let child = Command::new(binary("api"))
            .env("TASKBOT_CONFIG", &config_file)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start api");
        let api = Api {
            child,
            addr: listen.parse().unwrap(),
            url: format!("http://{listen}"),
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !matches!(http_get(api.addr, "/readyz").await, Ok((200, _))) {
            assert!(
                Instant::now() < deadline,
                "the api was not ready within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        api
    }

    /// GET `path`: its JSON answer (200 expected).
    async fn get(&self, path: &str) -> Value {
        let (status, body) = http_get(self.addr, path).await.expect("GET");
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).expect("JSON")
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn taskbot(args: &[&str]) -> Output {
    let mut command = Command::new(binary("taskbot"));
    command.args(args);
    for (key, _) in std::env::vars() {
        if key.starts_with("TASKBOT_") {
            command.env_remove(key);
        }
    }
    command.output().expect("run taskbot")
}

fn gate(api: &Api, args: &[&str]) -> (Option<i32>, String, String) {
    let mut all = vec!["gate", ITEM, "--api", &api.url];
    all.extend_from_slice(args);
    let out = taskbot(&all);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn statuses(doc: &Value) -> Vec<(String, String)> {
    doc["requirements"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["testcase"].as_str().unwrap().to_string(),
                r["status"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[tokio::test]
async fn gate_answers_satisfied_failed_missing_queued_and_running() {
    let db = TestDb::create().await;
    fill(&db).await;
    let api = Api::start(&db).await;

    // Greenwave's own query on Taskbot's api: one latest result per testcase and arch, so the
    // aarch64 failure is not hidden by the later x86_64 pass.
    let latest = api
        .get(&format!(
            "/api/v2.0/results/latest?item={ITEM}&type=koji_build\
             &_distinct_on=scenario,system_architecture,system_variant"
        ))
        .await;
    let mut seen: Vec<(String, String, String)> = latest["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["testcase"]["name"].as_str().unwrap().to_string(),
                r["data"]["system_architecture"][0]
                    .as_str()
                    .unwrap()
                    .to_string(),
                r["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    seen.sort();
    let t = |a: &str, b: &str, c: &str| (a.to_string(), b.to_string(), c.to_string());
    assert_eq!(
        seen,
        [
            t("dist.depcheck", "aarch64", "FAILED"),
            t("dist.depcheck", "x86_64", "PASSED"),
            t("dist.rpmlint", "noarch", "PASSED"),
        ]
    );

    let (code, out, err) = gate(&api, &["--testcase", "dist.rpmlint"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.starts_with(&format!("{ITEM} (koji_build): satisfied (1 satisfied)\n")),
        "{out}"
    );

    let every = [
        "--testcase",
        "dist.rpmlint",
        "--testcase",
        "dist.depcheck",
        "--testcase",
        "dist.abicheck",
        "--testcase",
        "dist.rpmgrill",
        "--testcase",
        "dist.upgrade",
    ];
    let (code, out, err) = gate(&api, &every);
    assert_eq!(code, Some(3), "a failure: exit 3\n{out}{err}");
    assert!(
        out.contains("NOT satisfied (1 satisfied, 1 failed, 1 missing, 1 queued, 1 running)"),
        "{out}"
    );
    let line = |needle: &str| {
        out.lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no line with {needle}:\n{out}"))
            .split_whitespace()
            .collect::<Vec<_>>()
    };
    assert_eq!(
        line("aarch64")[..5],
        ["dist.depcheck", "-", "aarch64", "failed", "FAILED"]
    );
    assert_eq!(
        line("dist.abicheck")[..4],
        ["dist.abicheck", "-", "-", "missing"]
    );
    assert_eq!(
        line("dist.upgrade")[..4],
        ["dist.upgrade", "n-1-minimal", "x86_64", "running"]
    );
    assert_eq!(line("dist.rpmgrill")[3], "queued");

    let mut json_args = every.to_vec();
    json_args.push("--json");
    let (code, out, _) = gate(&api, &json_args);
    assert_eq!(code, Some(3));
    let doc: Value = serde_json::from_str(&out).expect("--json prints JSON");
    assert_eq!(doc["satisfied"], false);
    assert_eq!(
        statuses(&doc),
        pairs(&[
            ("dist.rpmlint", "satisfied"),
            ("dist.depcheck", "failed"),
            ("dist.abicheck", "missing"),
            ("dist.rpmgrill", "queued"),
            ("dist.upgrade", "running"),
        ])
    );
    let depcheck = &doc["requirements"][1]["results"];
    assert_eq!(depcheck.as_array().unwrap().len(), 2, "{depcheck}");
    let upgrade = &doc["requirements"][4]["results"][0];
    assert_eq!(upgrade["scenario"], "n-1-minimal");
    assert!(
        upgrade["ref_url"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{}/api/v1/jobs/", api.url)),
        "{upgrade}"
    );

    // Nothing failed, something is on its way or missing: exit 4.
    let (code, out, _) = gate(
        &api,
        &["--testcase", "dist.rpmlint", "--testcase", "dist.rpmgrill"],
    );
    assert_eq!(code, Some(4), "{out}");

    // A dist-git gating.yaml: the policy for koji builds, its scenario-bound rule, other rule
    // kinds named as ignored; the policy for updates left out.
    let dir = tempfile::tempdir().unwrap();
    let gating = dir.path().join("gating.yaml");
    std::fs::write(
        &gating,
        "--- !Policy
product_versions: [fedora-*]
decision_contexts: [bodhi_update_push_stable]
subject_type: koji_build
rules:
  - !PassingTestCaseRule {test_case_name: dist.rpmlint}
  - !PassingTestCaseRule {test_case_name: dist.upgrade, scenario: n-2-server}
  - !RemoteRule {}
--- !Policy
product_versions: [fedora-*]
decision_contexts: [bodhi_update_push_stable]
subject_type: bodhi_update
rules:
  - !PassingTestCaseRule {test_case_name: dist.upgradepath}
",
    )
    .unwrap();
    let policy = gating.to_str().unwrap();
    let (code, out, err) = gate(&api, &["--policy", policy, "--json"]);
    assert_eq!(code, Some(4), "{out}{err}");
    let doc: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        statuses(&doc),
        pairs(&[("dist.rpmlint", "satisfied"), ("dist.upgrade", "missing")]),
        "the running job is another scenario's"
    );
    assert_eq!(doc["requirements"][1]["scenario"], "n-2-server");
    assert_eq!(doc["ignored_rules"], json!(["!RemoteRule"]));

    // The same item as another type has none of these results.
    let (code, out, _) = gate(
        &api,
        &["--type", "bodhi_update", "--testcase", "dist.rpmlint"],
    );
    assert_eq!(code, Some(4), "{out}");
    assert!(out.contains("1 missing"), "{out}");

    // Usage and input errors keep the common exit statuses.
    let (code, _, err) = gate(&api, &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--testcase NAME or --policy FILE"), "{err}");
    let (code, _, err) = gate(&api, &["--policy", "/nonexistent/gating.yaml"]);
    assert_eq!(code, Some(1), "{err}");
    let (code, _, err) = gate(
        &api,
        &[
            "--policy",
            policy,
            "--decision-context",
            "bodhi_update_push_testing",
        ],
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("no !PassingTestCaseRule"), "{err}");
    drop(api);
}
