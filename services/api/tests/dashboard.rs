//! The dashboard in a real browser: headless Chromium (Debian's `chromium`) loads `/dashboard`
//! and a job's page from the api running in-process over a test database, with queue figures
//! from the real RabbitMQ's management API for a namespace of this test. The page's numbers are
//! checked against the broker's own (AMQP queue declarations) and the database's, and a
//! screenshot is taken and checked to be a real, non-blank PNG.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use support::{job, RunningApi, TestDb};
use taskbot::amqp::{Outgoing, REASON_HEADER};
use taskbot::messages::{JobState, Outcome};
use taskbot::testing::{test_config, TestBroker};

/// The DOM Chromium builds from `url` (after the page loaded).
fn dump_dom(url: &str) -> String {
    let output = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--dump-dom",
            url,
        ])
        .output()
        .expect("chromium runs (Debian package chromium; scripts/ensure-services.sh installs it)");
    assert!(
        output.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn screenshot(url: &str, path: &std::path::Path) {
    let status = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--window-size=1280,900",
        ])
        .arg(format!("--screenshot={}", path.display()))
        .arg(url)
        .output()
        .unwrap()
        .status;
    assert!(status.success());
}

/// The text of the cell `field` in the row `data-queue="queue"` of a dumped dashboard.
fn cell(dom: &str, queue: &str, field: &str) -> Option<String> {
    let row_start = dom.find(&format!("data-queue=\"{queue}\""))?;
    let row = &dom[row_start..row_start + dom[row_start..].find("</tr>")?];
    let at =
        row.find(&format!("data-field=\"{field}\">"))? + format!("data-field=\"{field}\">").len();
    Some(row[at..at + row[at..].find('<')?].to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_brokers_and_the_databases_numbers_in_chromium() {
    // Queues with known contents in a namespace of this test.
    let mut config = test_config();
    let broker = TestBroker::new(&config).await;
    let t = broker.topology.clone();
    for n in 0..4 {
        broker
            .publish(
                &t.events_exchange(),
                "org.test.x",
                format!("{{\"n\": {n}}}").into_bytes(),
            )
            .await;
    }
    broker
        .publisher
        .publish(
            &Outgoing::new(
                t.dead_letter_exchange(),
                t.provisioner_queue(),
                b"{}".to_vec(),
            )
            .with_header(REASON_HEADER, "broken"),
        )
        .await
        .unwrap();
    let rules_ready = broker.depth(&t.rules_queue()).await;
    let provisioner_dead = broker
        .depth(&t.dead_letter_queue(&t.provisioner_queue()))
        .await;
    assert_eq!((rules_ready, provisioner_dead), (4, 1));

    // Jobs: one done with a result and a log, one running.
    let db = TestDb::create().await;
    let artifacts = tempfile::tempdir().unwrap();
    let done = job("rpmlint", "xchat-0.5-1.fc40", "x86_64", 0);
    let running = job("depcheck", "glibc-2.40-1.fc40", "noarch", 10);
    for (n, state) in [JobState::Queued, JobState::Running, JobState::Done]
        .into_iter()
        .enumerate()
    {
        db.record_status(&support::status(&done, state, 1 + n as i64))
            .await;
    }
    for (n, state) in [JobState::Queued, JobState::Running]
        .into_iter()
        .enumerate()
    {
        db.record_status(&support::status(&running, state, 11 + n as i64))
            .await;
    }
    db.insert_result(&support::result(&done, "dist.rpmlint", Outcome::Failed, 30))
        .await;
    let log_dir = artifacts.path().join(done.job_id.to_string());
    std::fs::create_dir_all(&log_dir).unwrap();
    std::fs::write(
        log_dir.join("task.log"),
        "== cloning\nrpmlint: 2 errors, 1 warnings <bad>\n",
    )
    .unwrap();

    config.postgres.url = db.url.clone();
    config.api.artifacts_dir = Some(artifacts.path().to_path_buf());
    let api = RunningApi::start_with(config.clone()).await;

    // The management API samples every few seconds: load until the page shows the broker's
    // figures (or give up and report what it shows).
    let deadline = Instant::now() + Duration::from_secs(40);
    let dom = loop {
        let dom = dump_dom(&format!("{}/dashboard", api.url));
        let seen = (
            cell(&dom, &t.rules_queue(), "ready"),
            cell(&dom, &t.provisioner_queue(), "dead"),
        );
        if seen
            == (
                Some(rules_ready.to_string()),
                Some(provisioner_dead.to_string()),
            )
        {
            break dom;
        }
        assert!(
            Instant::now() < deadline,
            "dashboard shows {seen:?}, the broker {rules_ready} and {provisioner_dead}:\n{dom}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    assert_eq!(
        cell(&dom, &t.rules_queue(), "consumers").as_deref(),
        Some("0")
    );
    assert!(dom.contains(&format!("data-namespace=\"{}\"", config.amqp.namespace)));
    // Runners per arch, jobs by state and recent jobs, as the database holds them.
    assert!(
        dom.contains("<tr data-arch=\"x86_64\"><td>x86_64</td><td class=\"n\">0</td></tr>"),
        "{dom}"
    );
    for state in ["done", "running"] {
        assert!(
            dom.contains(&format!(
                "<tr data-state=\"{state}\"><td><a href=\"/dashboard?state={state}\">\
                 <span data-state=\"{state}\">{state}</span></a></td><td class=\"n\">1</td></tr>"
            )),
            "{dom}"
        );
    }
    assert!(dom.contains(&format!("data-job=\"{}\"", done.job_id)));
    assert!(dom.contains(&format!("data-job=\"{}\"", running.job_id)));

    // The job page: history, result, and the log (escaped).
    let page = dump_dom(&format!("{}/dashboard/jobs/{}", api.url, done.job_id));
    assert!(
        page.contains("<td id=\"state\"><span data-state=\"done\">done</span></td>"),
        "{page}"
    );
    assert!(
        page.contains(
            "<td>dist.rpmlint</td><td><span class=\"outcome o-failed\" data-outcome=\"FAILED\">\
             FAILED</span></td>"
        ),
        "{page}"
    );
    assert!(
        page.contains("rpmlint: 2 errors, 1 warnings &lt;bad&gt;"),
        "{page}"
    );
    assert!(page.contains("Last 2 of 2 lines"), "{page}");

    // A screenshot: a real PNG of the window's size, not blank.
    let png = artifacts.path().join("dashboard.png");
    screenshot(&format!("{}/dashboard", api.url), &png);
    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    let (width, height) = (
        u32::from_be_bytes(bytes[16..20].try_into().unwrap()),
        u32::from_be_bytes(bytes[20..24].try_into().unwrap()),
    );
    assert_eq!((width, height), (1280, 900));
    assert!(
        bytes.len() > 10_000,
        "a {}-byte screenshot is blank",
        bytes.len()
    );
    // To look at it: TASKBOT_KEEP_SCREENSHOT=/some/file.png cargo test -p api --test dashboard
    if let Some(keep) = std::env::var_os("TASKBOT_KEEP_SCREENSHOT") {
        std::fs::copy(&png, keep).unwrap();
    }

    // An unknown job is a 404.
    let (status, _) = api
        .get(&format!("/dashboard/jobs/{}", uuid::Uuid::new_v4()))
        .await;
    assert_eq!(status, 404);
    api.stop().await;
    broker.cleanup().await;
}
