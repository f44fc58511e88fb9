//! What gating sees in a Fedora-style ResultsDB (the double, with Fedora's outcomes and HTTP
//! Basic writes): QUEUED and RUNNING results for each declared testcase while a job waits and
//! runs, superseded by the final ones (a crash; a timeout, whose ABORTED Fedora refuses and the
//! `fedora` profile posts as CRASHED); Greenwave's `latest` query with several arches and
//! scenarios; and credentials that never reach the logs.

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use taskbot::messages::{JobRequest, JobState, Message, Outcome, TaskResult};
use taskbot::outcomes::OutcomeProfile;
use taskbot::testing::{test_config, TestBroker};

use support::fake_resultsdb::{FakeResultsDb, FEDORA_OUTCOMES};
use support::{job, publish_dispatched, result, status, time, wait_until, RunningReporter, TestDb};

const PASSWORD: &str = "pw-never-in-logs-7f3a";

/// Everything logged in this test binary.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture_logs() -> Logs {
    let logs = Logs::default();
    let writer = logs.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .init();
    logs
}

fn declared(item: &str) -> JobRequest {
    let mut j = job(item);
    j.testcases = vec!["dist.a".into(), "dist.b".into()];
    j
}

/// The newest result per testcase of `item`, as Greenwave asks for them.
fn greenwave_latest(resultsdb: &FakeResultsDb, item: &str) -> Vec<(String, String)> {
    let (status, answer) = support::fake_resultsdb::query(
        resultsdb,
        &format!(
            "/api/v2.0/results/latest?item={item}&type=koji_build&testcases=dist.a,dist.b\
             &_distinct_on=scenario,system_architecture,system_variant"
        ),
    );
    assert_eq!(status, 200, "{answer}");
    let mut out: Vec<(String, String)> = answer["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["testcase"]["name"].as_str().unwrap().to_string(),
                r["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn interim_results_are_superseded_by_the_final_ones_and_credentials_stay_secret() {
    let logs = capture_logs();
    let resultsdb = FakeResultsDb::start(FEDORA_OUTCOMES).await;
    let expected_auth = format!(
        "Basic {}",
        taskbot::text::base64(format!("taskbot:{PASSWORD}").as_bytes())
    );
    resultsdb.require_authorization(&expected_auth);
    let test_db = TestDb::create().await;
    let secrets = tempfile::tempdir().unwrap();
    let password_file = secrets.path().join("resultsdb");
    std::fs::write(&password_file, format!("{PASSWORD}\n")).unwrap();
    let mut config = test_config();
    config.postgres.url = test_db.url.clone();
    config.reporter.resultsdb_url = Some(resultsdb.api_url.clone());
    config.reporter.resultsdb_timeout_secs = 2;
    config.reporter.resultsdb_outcomes = OutcomeProfile::Named("fedora".into());
    config.reporter.resultsdb_username = Some("taskbot".into());
    config.reporter.resultsdb_password_file = Some(password_file);
    let config = taskbot::secrets::resolve(
        config,
        Some(taskbot::Role::Service(taskbot::Service::Reporter)),
    )
    .unwrap();
    let broker = TestBroker::new(&config).await;
    let reporter = RunningReporter::start_ready(&config, &test_db).await;
    let exchange = broker.topology.results_exchange();

    // Two jobs declaring two testcases each: one will crash, one will time out.
    let crashing = declared("crash-1-1.fc40");
    let timing_out = declared("slow-1-1.fc40");
    for j in [&crashing, &timing_out] {
        publish_dispatched(&broker, j).await;
    }
    wait_until("QUEUED posted", Duration::from_secs(20), || async {
        resultsdb.stored().len() == 4
    })
    .await;
    assert_eq!(
        greenwave_latest(&resultsdb, &crashing.item),
        [
            ("dist.a".into(), "QUEUED".into()),
            ("dist.b".into(), "QUEUED".into())
        ]
    );
    for j in [&crashing, &timing_out] {
        let running = status(j, JobState::Running, time(-30));
        broker
            .publish(&exchange, &running.routing_key(), running.to_json())
            .await;
    }
    wait_until("RUNNING posted", Duration::from_secs(20), || async {
        resultsdb.stored().len() == 8
    })
    .await;
    assert_eq!(
        greenwave_latest(&resultsdb, &timing_out.item),
        [
            ("dist.a".into(), "RUNNING".into()),
            ("dist.b".into(), "RUNNING".into())
        ]
    );

    // What the runner publishes for a crash and for a timeout: a verdict per declared testcase.
    let mut finals = Vec::new();
    for (j, outcome, note) in [
        (
            &crashing,
            Outcome::Crashed,
            "the task was killed by signal 11 (SIGSEGV)",
        ),
        (&timing_out, Outcome::Aborted, "timed out after 300s"),
    ] {
        for testcase in &j.testcases {
            let mut r = result(j, testcase, outcome);
            r.note = Some(note.into());
            r.data.clear();
            finals.push(r);
        }
    }
    for r in &finals {
        broker
            .publish(&exchange, &r.routing_key(), r.to_json())
            .await;
    }
    wait_until(
        "the final results posted",
        Duration::from_secs(20),
        || async { resultsdb.stored().len() == 12 },
    )
    .await;
    for j in [&crashing, &timing_out] {
        assert_eq!(
            greenwave_latest(&resultsdb, &j.item),
            [
                ("dist.a".into(), "CRASHED".into()),
                ("dist.b".into(), "CRASHED".into())
            ],
            "the final results supersede QUEUED and RUNNING ({})",
            j.item
        );
    }
    let aborted: Vec<Value> = resultsdb
        .stored()
        .into_iter()
        .filter(|r| r["data"]["item"] == json!([timing_out.item]) && r["outcome"] == "CRASHED")
        .collect();
    assert_eq!(aborted.len(), 2);
    for r in &aborted {
        assert_eq!(r["note"], "ABORTED: timed out after 300s");
        assert_eq!(r["data"]["taskbot_outcome"], json!(["ABORTED"]));
    }
    reporter.stop().await;

    let requests = resultsdb.requests();
    assert!(requests
        .iter()
        .filter(|r| r.method == "POST")
        .all(|r| r.authorization.as_deref() == Some(expected_auth.as_str()) && r.status == 201));
    assert!(
        broker
            .get(
                &broker
                    .topology
                    .dead_letter_queue(&broker.topology.resultsdb_queue()),
                Duration::from_millis(200)
            )
            .await
            .is_none(),
        "nothing dead-lettered"
    );
    let logged = String::from_utf8_lossy(&logs.0.lock().unwrap()).to_string();
    assert!(
        logged.contains("results will be posted to ResultsDB"),
        "logs captured"
    );
    assert!(!logged.contains(PASSWORD), "the password was logged");
    assert!(
        !logged.contains(expected_auth.trim_start_matches("Basic ")),
        "the encoded credentials were logged"
    );
    broker.cleanup().await;
    drop(test_db);
}

/// Greenwave keeps one latest result per testcase, scenario and arch: a FAILED aarch64 result is
/// not hidden by a later PASSED x86_64 one, nor one scenario by another.
#[tokio::test]
async fn greenwaves_latest_query_gives_one_result_per_arch_and_scenario() {
    let resultsdb = FakeResultsDb::start(FEDORA_OUTCOMES).await;
    let profile = OutcomeProfile::Named("fedora".into()).resolve().unwrap();
    let mut posted = 0;
    for (arch, scenario, outcome, age) in [
        ("aarch64", "fedup-minimal", Outcome::Failed, -40),
        ("x86_64", "fedup-minimal", Outcome::Failed, -30),
        ("x86_64", "fedup-minimal", Outcome::Passed, -20),
        ("x86_64", "fedup-workstation", Outcome::Passed, -25),
        ("aarch64", "fedup-workstation", Outcome::Running, -10),
    ] {
        let mut j = job("fedup-0.9-1.fc40");
        j.arch = arch.into();
        j.scenario = Some(scenario.into());
        let mut r: TaskResult = result(&j, "dist.upgrade", outcome);
        r.arch = arch.into();
        r.data.insert("scenario".into(), scenario.into());
        r.finished_at = time(age);
        let body = taskbot_reporter::resultsdb::payload(&r, None, &profile).unwrap();
        resultsdb.insert(body);
        posted += 1;
    }
    assert_eq!(resultsdb.stored().len(), posted);
    let (status, answer) = support::fake_resultsdb::query(
        &resultsdb,
        "/api/v2.0/results/latest?item=fedup-0.9-1.fc40&type=koji_build&testcases=dist.upgrade\
         &_distinct_on=scenario,system_architecture,system_variant",
    );
    assert_eq!(status, 200);
    let mut got: Vec<(String, String, String)> = answer["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["data"]["system_architecture"][0]
                    .as_str()
                    .unwrap()
                    .to_string(),
                r["data"]["scenario"][0].as_str().unwrap().to_string(),
                r["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    got.sort();
    let expect = |a: &str, s: &str, o: &str| (a.to_string(), s.to_string(), o.to_string());
    assert_eq!(
        got,
        [
            expect("aarch64", "fedup-minimal", "FAILED"),
            expect("aarch64", "fedup-workstation", "RUNNING"),
            expect("x86_64", "fedup-minimal", "PASSED"),
            expect("x86_64", "fedup-workstation", "PASSED"),
        ]
    );
    // Without `_distinct_on` the arches collapse: one result for the testcase.
    let (_, collapsed) = support::fake_resultsdb::query(
        &resultsdb,
        "/api/v2.0/results/latest?item=fedup-0.9-1.fc40&testcases=dist.upgrade",
    );
    assert_eq!(collapsed["data"].as_array().unwrap().len(), 1);
    // As upstream: `_distinct_on` needs another filter.
    let (status, answer) = support::fake_resultsdb::query(
        &resultsdb,
        "/api/v2.0/results/latest?_distinct_on=scenario",
    );
    assert_eq!(status, 400, "{answer}");
}
