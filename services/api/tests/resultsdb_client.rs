//! The ResultsDB-compatible endpoints read by the real ResultsDB Python client (`resultsdb_api`
//! from PyPI), not only by our own code: tests/python/check_resultsdb_client.py runs against the
//! api in-process. `scripts/ensure-services.sh` installs the client; this test installs nothing.

mod support;

use std::path::Path;
use std::process::Command;

use support::{job, result, status, RunningApi, TestDb};
use taskbot::messages::{JobState, Outcome};

#[tokio::test]
async fn resultsdb_python_client_reads_the_api() {
    let probe = Command::new("python3")
        .args(["-c", "import resultsdb_api"])
        .output()
        .expect("python3 must be installed (scripts/ensure-services.sh installs it)");
    assert!(
        probe.status.success(),
        "the resultsdb_api Python client is missing; run scripts/ensure-services.sh \
         (or `pip install resultsdb_api`): {}",
        String::from_utf8_lossy(&probe.stderr)
    );

    let db = TestDb::create().await;
    let xchat = job("rpmlint", "xchat-0.5-1.fc40", "x86_64", 0);
    let glibc = job("abicheck", "glibc-2.40-1.fc40", "x86_64", 1);
    let lint = result(&xchat, "dist.rpmlint", Outcome::Passed, 10);
    db.insert_result(&lint).await;
    db.insert_result(&result(&xchat, "dist.rpmgrill", Outcome::Failed, 11))
        .await;
    db.insert_result(&result(&glibc, "abi.check", Outcome::Failed, 12))
        .await;
    // Greenwave's per-arch view: a FAILED aarch64 result, then a PASSED x86_64 one.
    let gated = "fedup-0.9.2-1.fc21";
    let upgrade_arm = job("upgrade-tests", gated, "aarch64", 2);
    let upgrade_x86 = job("upgrade-tests", gated, "x86_64", 3);
    db.insert_result(&result(&upgrade_arm, "upgrade.check", Outcome::Failed, 13))
        .await;
    db.insert_result(&result(&upgrade_x86, "upgrade.check", Outcome::Passed, 14))
        .await;
    db.record_status(&status(&xchat, JobState::Done, 20)).await;
    let artifacts = tempfile::tempdir().unwrap();
    let api = RunningApi::start(&db.url, artifacts.path()).await;

    let expected = serde_json::json!({
        "item": "xchat-0.5-1.fc40",
        "other_item": "glibc-2.40-1.fc40",
        "item_count": 2,
        "total": 3,
        "failed_dist": ["dist.rpmgrill"],
        "result_id": lint.result_id.to_string(),
        "result_outcome": "PASSED",
        "job_id": xchat.job_id.to_string(),
        "testcases": ["dist.rpmlint", "dist.rpmgrill", "abi.check", "upgrade.check"],
        "gated_item": gated,
        "gated_latest": [["aarch64", "FAILED"], ["x86_64", "PASSED"]],
    });
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/check_resultsdb_client.py");
    let root = format!("{}/api/v2.0", api.url);
    // The client is synchronous; run it off the runtime that serves the api.
    let output = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .arg(script)
            .arg(root)
            .arg(expected.to_string())
            .output()
            .expect("run python3")
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "the ResultsDB client checks failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("checks passed"));
    api.stop().await;
}
