//! The dashboard's flows in a real browser: Debian's headless Chromium driven by playwright-core
//! (`tests/browser/dashboard.mjs`, run with the machine's Node.js) against the api running
//! in-process over a test database filled by the reporter's own code. A maintainer searches a
//! package, opens its item, sees its FAILED outcome as red text, opens the job and the log at a
//! line anchor, all with JavaScript off; pages of a hostile item are then opened with JavaScript
//! on, and nothing may run or be injected.
//!
//! Screenshots are kept as test artifacts in `target/tmp/dashboard-screenshots/`; with
//! `TASKBOT_DOCS_SCREENSHOTS=docs/dashboard` (relative to the checkout) they are copied there for
//! docs/dashboard.md.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use support::{job, result, status, RunningApi, TestDb};
use taskbot::messages::{JobState, Outcome};

const ITEM: &str = "xchat-0.5-1.fc40";
const HOSTILE_ITEM: &str =
    "evil-1.0-1.fc40<script>window.__pwned=1</script><img src=x onerror=\"window.__pwned=2\">";
/// The log line the maintainer is sent to, and what it says.
const LINE: usize = 12;
const LINE_TEXT: &str = "E: non-standard-executable-perm /usr/bin/xchat 0777";

fn checkout() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The rpmlint log of the FAILED job: its finding on line [`LINE`], colour codes as a terminal
/// would have them.
fn rpmlint_log() -> String {
    let mut lines: Vec<String> = vec![
        "== cloning https://git.example/taskbot/rpmlint.git (main)".into(),
        "== running step 1: rpmlint".into(),
        "Downloading xchat-0.5-1.fc40.x86_64.rpm".into(),
        "Downloading xchat-0.5-1.fc40.src.rpm".into(),
    ];
    while lines.len() < LINE - 1 {
        lines.push(format!("checking {} ...", lines.len()));
    }
    lines.push(format!("xchat.x86_64: \u{1b}[1;31m{LINE_TEXT}\u{1b}[0m"));
    lines.push("xchat.x86_64: W: no-manual-page-for-binary xchat".into());
    for n in 0..30 {
        lines.push(format!("xchat.x86_64: I: checked file {n}"));
    }
    lines.push("2 packages and 0 specfiles checked; 1 errors, 1 warnings.".into());
    lines.join("\n") + "\n"
}

/// Items and jobs as a maintainer meets them: xchat 0.5 with rpmlint FAILED on x86_64 (an earlier
/// run had PASSED), PASSED on aarch64, depcheck PASSED, upgradepath CRASHED; an older xchat
/// that passed; glibc needing inspection; a kernel job still running; a hostile item.
async fn fill(db: &TestDb, artifacts: &Path) {
    let earlier = job("rpmlint", ITEM, "x86_64", 0);
    let failed = job("rpmlint", ITEM, "x86_64", 100);
    let arm = job("rpmlint", ITEM, "aarch64", 101);
    let depcheck = job("depcheck", ITEM, "noarch", 102);
    let upgrade = job("upgradepath", ITEM, "noarch", 103);
    let older = job("rpmlint", "xchat-0.4-1.fc40", "x86_64", -500);
    let glibc = job("abicheck", "glibc-2.40-1.fc40", "x86_64", 104);
    let kernel = job("kernel-tests", "kernel-6.9.1-1.fc40", "x86_64", 105);
    let hostile = job("rpmlint", HOSTILE_ITEM, "x86_64", 106);
    let done = [
        (
            &earlier,
            "dist.rpmlint",
            Outcome::Passed,
            "0 errors, 1 warnings",
        ),
        (
            &failed,
            "dist.rpmlint",
            Outcome::Failed,
            "1 errors, 1 warnings",
        ),
        (
            &arm,
            "dist.rpmlint",
            Outcome::Passed,
            "0 errors, 1 warnings",
        ),
        (
            &depcheck,
            "dist.depcheck",
            Outcome::Passed,
            "all requirements satisfied",
        ),
        (
            &older,
            "dist.rpmlint",
            Outcome::Passed,
            "0 errors, 0 warnings",
        ),
        (
            &glibc,
            "dist.abicheck",
            Outcome::NeedsInspection,
            "2 symbols removed",
        ),
        (
            &hostile,
            "dist.rpmlint",
            Outcome::Failed,
            "<script>window.__pwned=3</script>",
        ),
    ];
    for (n, (j, testcase, outcome, note)) in done.iter().enumerate() {
        let at = 200 + n as i64 * 10;
        db.record_status(&status(j, JobState::Queued, at)).await;
        db.record_status(&status(j, JobState::Running, at + 1))
            .await;
        let mut r = result(j, testcase, *outcome, at + 5);
        r.note = Some(note.to_string());
        db.insert_result(&r).await;
        db.record_status(&status(j, JobState::Done, at + 6)).await;
    }
    db.record_status(&status(&upgrade, JobState::Queued, 300))
        .await;
    let mut crashed = result(&upgrade, "dist.upgradepath", Outcome::Crashed, 305);
    crashed.note = Some("the task's repository could not be cloned: timed out".into());
    db.insert_result(&crashed).await;
    db.record_status(&status(&upgrade, JobState::Crashed, 306))
        .await;
    db.record_status(&status(&kernel, JobState::Queued, 310))
        .await;
    db.record_status(&status(&kernel, JobState::Running, 311))
        .await;

    let write_log = |j: &taskbot::JobRequest, text: &str| {
        let dir = artifacts.join(j.job_id.to_string());
        std::fs::create_dir_all(dir.join("logs")).unwrap();
        std::fs::write(dir.join("task.log"), text).unwrap();
        std::fs::write(dir.join("logs/rpmlint.txt"), "rpmlint's own output\n").unwrap();
    };
    write_log(&failed, &rpmlint_log());
    write_log(
        &hostile,
        "<script>window.__pwned=4</script>\n</pre><img src=x onerror=\"window.__pwned=5\">\n",
    );
}

/// Run the driver on `spec`; its report.
async fn drive(spec: &Value) -> (bool, Value) {
    let browser_dir = checkout().join("tests/browser");
    assert!(
        browser_dir.join("node_modules/playwright-core").is_dir(),
        "playwright-core is not installed in {}: run scripts/ensure-services.sh (or `npm ci` there)",
        browser_dir.display()
    );
    let spec_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(spec_file.path(), spec.to_string()).unwrap();
    let run = tokio::process::Command::new("node")
        .arg(browser_dir.join("dashboard.mjs"))
        .arg(spec_file.path())
        .current_dir(&browser_dir)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(180), run)
        .await
        .expect("the browser flows finish within 180 s")
        .expect("node runs (the machine's Node.js)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.stderr.is_empty() {
        eprintln!(
            "driver's stderr: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let report: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|_| {
        panic!(
            "no report from the driver: {stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (output.status.success(), report)
}

/// A real, non-blank PNG of the viewport's size.
fn assert_screenshot(path: &Path) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(
        &bytes[..8],
        b"\x89PNG\r\n\x1a\n",
        "{} is not a PNG",
        path.display()
    );
    let width = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
    let height = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
    assert_eq!((width, height), (1280, 800), "{}", path.display());
    assert!(bytes.len() > 10_000, "{} is blank", path.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_maintainer_finds_a_failure_and_its_log_line_in_chromium() {
    let db = TestDb::create().await;
    let artifacts = tempfile::tempdir().unwrap();
    fill(&db, artifacts.path()).await;
    let api = RunningApi::start(&db.url, artifacts.path()).await;
    let screenshots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard-screenshots");
    let _ = std::fs::remove_dir_all(&screenshots);
    let spec = serde_json::json!({
        "base": api.url,
        "prefix": "xchat",
        "item": ITEM,
        "testcase": "dist.rpmlint",
        "arch": "x86_64",
        "passed_testcase": "dist.depcheck",
        "line": LINE,
        "line_text": LINE_TEXT,
        "hostile_item": HOSTILE_ITEM,
        "hostile_prefix": "evil-",
        "screenshots": screenshots,
    });
    let (ok, report) = drive(&spec).await;
    let checks = report["checks"].as_array().unwrap();
    for c in checks {
        println!(
            "{} {}",
            if c["ok"] == true { "ok  " } else { "FAIL" },
            c["name"]
        );
    }
    assert!(ok, "the browser flows failed: {}", report["failure"]);
    assert!(checks.len() >= 25, "only {} checks ran", checks.len());
    assert!(checks.iter().all(|c| c["ok"] == true));
    for name in ["front", "search", "item", "job", "log", "hostile-item"] {
        assert_screenshot(&screenshots.join(format!("{name}.png")));
    }
    if let Some(docs) = std::env::var_os("TASKBOT_DOCS_SCREENSHOTS") {
        let docs = checkout().join(docs);
        std::fs::create_dir_all(&docs).unwrap();
        for name in ["front", "search", "item", "job", "log"] {
            let file = format!("{name}.png");
            std::fs::copy(screenshots.join(&file), docs.join(&file)).unwrap();
        }
    }
    api.stop().await;
}

/// The failing case: the same driver on a dashboard whose FAILED result is not there (the item
/// only passed) must fail, naming the check, so a green run means the checks really looked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_driver_fails_when_the_failure_is_not_shown() {
    let db = TestDb::create().await;
    let artifacts = tempfile::tempdir().unwrap();
    let passed = job("rpmlint", ITEM, "x86_64", 0);
    db.record_status(&status(&passed, JobState::Queued, 1))
        .await;
    db.insert_result(&result(&passed, "dist.rpmlint", Outcome::Passed, 5))
        .await;
    db.record_status(&status(&passed, JobState::Done, 6)).await;
    let api = RunningApi::start(&db.url, artifacts.path()).await;
    let screenshots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard-screenshots-failing");
    let spec = serde_json::json!({
        "base": api.url, "prefix": "xchat", "item": ITEM, "testcase": "dist.rpmlint",
        "arch": "x86_64", "passed_testcase": "dist.depcheck", "line": LINE, "line_text": LINE_TEXT,
        "hostile_item": HOSTILE_ITEM, "hostile_prefix": "evil-", "screenshots": screenshots,
    });
    let (ok, report) = drive(&spec).await;
    assert!(
        !ok,
        "the driver passed on a dashboard without the failure: {report}"
    );
    let failure = report["failure"].as_str().unwrap();
    assert!(
        failure.contains("the FAILED outcome reads FAILED: PASSED"),
        "{failure}"
    );
    api.stop().await;
}
