//! The api in-process against the real PostgreSQL, with rows written by the reporter's own code.

mod support;

use serde_json::Value;
use support::{job, result, status, RunningApi, TestDb};
use taskbot::messages::{JobState, Outcome};

/// Three jobs: rpmlint on xchat for x86_64 (two testcases), rpmlint on xchat for aarch64, and
/// abicheck on glibc; results at increasing times.
struct Fixture {
    db: TestDb,
    api: RunningApi,
    artifacts: tempfile::TempDir,
    xchat_x86: taskbot::JobRequest,
    xchat_arm: taskbot::JobRequest,
    glibc: taskbot::JobRequest,
}

async fn fixture() -> Fixture {
    let db = TestDb::create().await;
    let xchat_x86 = job("rpmlint", "xchat-0.5-1.fc40", "x86_64", 0);
    let xchat_arm = job("rpmlint", "xchat-0.5-1.fc40", "aarch64", 1);
    let glibc = job("abicheck", "glibc-2.40-1.fc40", "x86_64", 2);
    db.insert_result(&result(&xchat_x86, "dist.rpmlint", Outcome::Passed, 10))
        .await;
    db.insert_result(&result(&xchat_x86, "dist.rpmgrill", Outcome::Failed, 11))
        .await;
    db.insert_result(&result(&xchat_arm, "dist.rpmlint", Outcome::Failed, 12))
        .await;
    db.insert_result(&result(&glibc, "abi.check", Outcome::NeedsInspection, 13))
        .await;
    for (j, offset) in [(&xchat_x86, 0), (&xchat_arm, 1), (&glibc, 2)] {
        db.record_status(&status(j, JobState::Queued, offset)).await;
        db.record_status(&status(j, JobState::Running, offset + 5))
            .await;
        db.record_status(&status(j, JobState::Done, offset + 20))
            .await;
    }
    let artifacts = tempfile::tempdir().unwrap();
    let api = RunningApi::start(&db.url, artifacts.path()).await;
    Fixture {
        db,
        api,
        artifacts,
        xchat_x86,
        xchat_arm,
        glibc,
    }
}

fn testcases(body: &Value) -> Vec<String> {
    body["data"]
        .as_array()
        .expect("data is a list")
        .iter()
        .map(|r| r["testcase"]["name"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn results_have_the_resultsdb_shape_newest_first() {
    let f = fixture().await;
    let (status, body) = f.api.get("/api/v2.0/results").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        testcases(&body),
        ["abi.check", "dist.rpmlint", "dist.rpmgrill", "dist.rpmlint"]
    );
    assert_eq!(body["prev"], Value::Null);
    assert_eq!(body["next"], Value::Null);
    let r = &body["data"][3];
    let expected = result(&f.xchat_x86, "dist.rpmlint", Outcome::Passed, 10);
    // The oldest of four results stored in order: ResultsDB-style integer id 1.
    assert_eq!(r["id"], 1);
    assert_eq!(r["outcome"], "PASSED");
    assert_eq!(r["note"], "dist.rpmlint on xchat-0.5-1.fc40");
    assert_eq!(r["ref_url"], expected.log_url.clone().unwrap());
    assert_eq!(
        r["groups"],
        serde_json::json!([f.xchat_x86.job_id.to_string()])
    );
    assert_eq!(r["submit_time"], "2025-06-15T15:06:50.250000");
    assert_eq!(
        r["testcase"],
        serde_json::json!({
            "name": "dist.rpmlint",
            "ref_url": "https://git.example/taskbot/rpmlint.git",
            "href": format!("{}/api/v2.0/testcases/dist.rpmlint", f.api.url),
        })
    );
    assert_eq!(
        r["data"],
        serde_json::json!({
            "item": ["xchat-0.5-1.fc40"],
            "type": ["koji_build"],
            "arch": ["x86_64"],
            "system_architecture": ["x86_64"],
            "errors": ["10"],
            "koji_task_id": ["1010"],
            "checked": ["spec", "rpm"],
        })
    );
    assert_eq!(r["href"], format!("{}/api/v2.0/results/1", f.api.url));
    // The href leads to the same result.
    let (status, one) = support::get_json(r["href"].as_str().unwrap()).await;
    assert_eq!(status, 200);
    assert_eq!(&one, r);
    f.api.stop().await;
}

#[tokio::test]
async fn filters_combine_like_resultsdb() {
    let f = fixture().await;
    let cases: &[(&str, &[&str])] = &[
        ("outcome=FAILED", &["dist.rpmlint", "dist.rpmgrill"]),
        (
            "outcome=passed,needs_inspection",
            &["abi.check", "dist.rpmlint"],
        ),
        (
            "testcases=dist.rpmgrill,abi.check",
            &["abi.check", "dist.rpmgrill"],
        ),
        (
            "testcases:like=dist.*",
            &["dist.rpmlint", "dist.rpmgrill", "dist.rpmlint"],
        ),
        ("item=glibc-2.40-1.fc40", &["abi.check"]),
        ("item:like=xchat-*&arch=aarch64", &["dist.rpmlint"]),
        ("arch=x86_64&outcome=FAILED", &["dist.rpmgrill"]),
        ("type=koji_build&testcases=abi.check", &["abi.check"]),
        // A task's own key, stored as `koji:task_id`, filtered as ResultsDB has it.
        ("koji_task_id=1011,1013", &["abi.check", "dist.rpmgrill"]),
        ("checked=rpm&testcases=abi.check", &["abi.check"]),
        (
            "errors:like=1*&outcome=FAILED&arch=aarch64",
            &["dist.rpmlint"],
        ),
        ("item=nothing-1-1", &[]),
        (
            "since=2025-06-15T15:06:52,2025-06-15T15:06:54",
            &["abi.check", "dist.rpmlint"],
        ),
        ("since=2025-06-15T17:06:53%2B02:00", &["abi.check"]),
        (
            "_sort=asc:submit_time&arch=x86_64",
            &["dist.rpmlint", "dist.rpmgrill", "abi.check"],
        ),
    ];
    for (query, expected) in cases {
        let (status, body) = f.api.get(&format!("/api/v2.0/results?{query}")).await;
        assert_eq!(status, 200, "{query}: {body}");
        assert_eq!(testcases(&body), *expected, "{query}");
    }
    let (status, body) = f
        .api
        .get(&format!("/api/v2.0/results?groups={}", f.glibc.job_id))
        .await;
    assert_eq!(status, 200);
    assert_eq!(testcases(&body), ["abi.check"]);

    let (status, body) = f.api.get("/api/v2.0/results?outcome=GREAT").await;
    assert_eq!(status, 400);
    assert!(
        body["message"].as_str().unwrap().contains("GREAT"),
        "{body}"
    );
    let (status, body) = f.api.get("/api/v2.0/results?since=yesterday").await;
    assert_eq!(status, 400);
    assert_eq!(body["message"], "'since' parameter not in ISO8601 format");
    let (status, _) = f.api.get("/api/v2.0/results?limit=lots").await;
    assert_eq!(status, 400);
    f.api.stop().await;
}

#[tokio::test]
async fn pages_link_to_each_other_with_absolute_urls() {
    let f = fixture().await;
    let (status, first) = f.api.get("/api/v2.0/results?limit=3&arch:like=*").await;
    assert_eq!(status, 200);
    assert_eq!(testcases(&first).len(), 3);
    assert_eq!(first["prev"], Value::Null);
    let next = first["next"].as_str().expect("a next page").to_string();
    assert_eq!(
        next,
        format!("{}/api/v2.0/results?limit=3&arch:like=*&page=1", f.api.url)
    );
    let (status, second) = support::get_json(&next).await;
    assert_eq!(status, 200);
    assert_eq!(testcases(&second), ["dist.rpmlint"]);
    assert_eq!(second["next"], Value::Null);
    let prev = second["prev"].as_str().expect("a previous page");
    let (_, again) = support::get_json(prev).await;
    assert_eq!(again["data"], first["data"]);
    // Past the end: an empty page that still links back.
    let (status, past) = f.api.get("/api/v2.0/results?limit=3&page=7").await;
    assert_eq!(status, 200);
    assert_eq!(past["data"], serde_json::json!([]));
    assert!(past["prev"].as_str().unwrap().ends_with("page=6"));
    f.api.stop().await;
}

#[tokio::test]
async fn public_url_is_used_for_links() {
    let db = TestDb::create().await;
    let j = job("rpmlint", "xchat-0.5-1.fc40", "x86_64", 0);
    db.insert_result(&result(&j, "dist.rpmlint", Outcome::Passed, 1))
        .await;
    db.insert_result(&result(&j, "dist.other", Outcome::Passed, 2))
        .await;
    let mut config = taskbot::testing::test_config();
    config.postgres.url = db.url.clone();
    config.api.public_url = Some("https://taskbot.example/".into());
    let api = RunningApi::start_with(config).await;
    let (_, body) = api.get("/api/v2.0/results?limit=1").await;
    assert_eq!(
        body["next"],
        "https://taskbot.example/api/v2.0/results?limit=1&page=1"
    );
    assert!(body["data"][0]["href"]
        .as_str()
        .unwrap()
        .starts_with("https://taskbot.example/api/v2.0/results/"));
    api.stop().await;
}

#[tokio::test]
async fn latest_is_the_newest_result_per_testcase() {
    let f = fixture().await;
    let (status, body) = f.api.get("/api/v2.0/results/latest").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body.get("next"), None, "latest is not paged");
    assert_eq!(
        testcases(&body),
        ["abi.check", "dist.rpmlint", "dist.rpmgrill"]
    );
    // The newest dist.rpmlint is the aarch64 one.
    assert_eq!(
        body["data"][1]["data"]["arch"],
        serde_json::json!(["aarch64"])
    );
    // Filters apply before choosing the newest.
    let (_, body) = f
        .api
        .get("/api/v2.0/results/latest?item=xchat-0.5-1.fc40&arch=x86_64")
        .await;
    assert_eq!(testcases(&body), ["dist.rpmgrill", "dist.rpmlint"]);
    assert_eq!(body["data"][1]["outcome"], "PASSED");
    // One per testcase and arch.
    let (_, body) = f
        .api
        .get("/api/v2.0/results/latest?testcases=dist.rpmlint&_distinct_on=arch")
        .await;
    assert_eq!(testcases(&body), ["dist.rpmlint", "dist.rpmlint"]);
    let (_, body) = f
        .api
        .get("/api/v2.0/results/latest?testcases=dist.rpmlint&_distinct_on=koji_task_id")
        .await;
    assert_eq!(testcases(&body).len(), 2, "{body}");
    f.api.stop().await;
}

#[tokio::test]
async fn single_resources_and_not_found() {
    let f = fixture().await;
    let id = result(&f.glibc, "abi.check", Outcome::NeedsInspection, 13).result_id;
    let (status, body) = f.api.get(&format!("/api/v2.0/results/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(body["outcome"], "NEEDS_INSPECTION");
    for path in [
        format!("/api/v2.0/results/{}", uuid::Uuid::new_v4()),
        "/api/v2.0/results/12".to_string(),
        "/api/v2.0/testcases/dist.nothing".to_string(),
        format!("/api/v2.0/groups/{}", uuid::Uuid::new_v4()),
        "/api/v2.0/groups/not-a-uuid".to_string(),
        format!("/api/v1/jobs/{}", uuid::Uuid::new_v4()),
        "/api/v1/jobs/xyz".to_string(),
        "/api/v3/nothing".to_string(),
    ] {
        let (status, body) = f.api.get(&path).await;
        assert_eq!(status, 404, "{path}");
        assert!(body["message"].is_string(), "{path}: {body}");
    }

    let (status, body) = f.api.get("/api/v2.0/testcases").await;
    assert_eq!(status, 200);
    assert_eq!(
        body["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["abi.check", "dist.rpmgrill", "dist.rpmlint"]
    );
    let (_, body) = f
        .api
        .get("/api/v2.0/testcases?name:like=dist.*&limit=1")
        .await;
    assert_eq!(body["data"][0]["name"], "dist.rpmgrill");
    assert!(body["next"].as_str().unwrap().contains("page=1"));
    let (status, body) = f.api.get("/api/v2.0/testcases/abi.check").await;
    assert_eq!(status, 200);
    assert_eq!(body["ref_url"], "https://git.example/taskbot/abicheck.git");

    let (status, body) = f.api.get("/api/v2.0/groups").await;
    assert_eq!(status, 200);
    assert_eq!(body["data"].as_array().unwrap().len(), 3);
    let (status, group) = f
        .api
        .get(&format!("/api/v2.0/groups/{}", f.xchat_x86.job_id))
        .await;
    assert_eq!(status, 200);
    assert_eq!(group["results_count"], 2);
    assert_eq!(
        group["description"],
        format!(
            "Taskbot job {}: rpmlint on xchat-0.5-1.fc40 (x86_64)",
            f.xchat_x86.job_id
        )
    );
    let (_, results) = support::get_json(group["results"].as_str().unwrap()).await;
    assert_eq!(results["data"].as_array().unwrap().len(), 2);
    let (_, body) = f
        .api
        .get("/api/v2.0/groups?description:like=*abicheck on glibc*")
        .await;
    assert_eq!(body["data"][0]["uuid"], f.glibc.job_id.to_string());
    f.api.stop().await;
}

#[tokio::test]
async fn jobs_list_filters_and_detail_has_history_results_and_logs() {
    let f = fixture().await;
    let (status, body) = f.api.get("/api/v1/jobs").await;
    assert_eq!(status, 200, "{body}");
    let ids: Vec<&str> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            f.glibc.job_id.to_string(),
            f.xchat_arm.job_id.to_string(),
            f.xchat_x86.job_id.to_string()
        ]
    );
    for (query, expected) in [
        ("task=rpmlint", 2),
        ("task=rpmlint&arch=aarch64", 1),
        ("item=glibc-2.40-1.fc40,xchat-0.5-1.fc40", 3),
        ("state=done", 3),
        ("state=running", 0),
        ("since=2025-06-15T15:06:41", 2),
        ("limit=1&page=2", 1),
    ] {
        let (status, body) = f.api.get(&format!("/api/v1/jobs?{query}")).await;
        assert_eq!(status, 200, "{query}");
        assert_eq!(body["data"].as_array().unwrap().len(), expected, "{query}");
    }
    // What `taskbot status` shows as jobs by state: the three jobs are done.
    let (status, body) = f.api.get("/api/v1/job-states").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, serde_json::json!({"states": {"done": 3}}));
    let (_, body) = f.api.get("/api/v1/jobs?limit=2").await;
    assert!(body["next"]
        .as_str()
        .unwrap()
        .ends_with("/api/v1/jobs?limit=2&page=1"));

    let (status, j) = f
        .api
        .get(&format!("/api/v1/jobs/{}", f.xchat_x86.job_id))
        .await;
    assert_eq!(status, 200, "{j}");
    assert_eq!(j["state"], "done");
    assert_eq!(j["task"]["name"], "rpmlint");
    assert_eq!(j["event"]["id"], f.xchat_x86.event_id);
    let states: Vec<&str> = j["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["queued", "running", "done"]);
    assert_eq!(j["history"][1]["detail"], "now running");
    assert_eq!(j["results"].as_array().unwrap().len(), 2);
    assert_eq!(j["results"][0]["testcase"]["name"], "dist.rpmlint");
    assert_eq!(j["runner"], "runner@test/x86_64");
    assert_eq!(
        j["logs"]["task_log"],
        format!(
            "{}/api/v1/jobs/{}/artifacts/task.log",
            f.api.url, f.xchat_x86.job_id
        )
    );
    f.api.stop().await;
}

/// Greenwave's query (`reference`: `/results/latest?item=<NVR>&type=koji_build&testcases=...
/// &_distinct_on=scenario,system_architecture,system_variant`) over results on three arches and
/// in two scenarios: one latest result per testcase, arch and scenario.
#[tokio::test]
async fn greenwaves_latest_query_keeps_one_result_per_arch_and_scenario() {
    let db = TestDb::create().await;
    let item = "fedup-0.9.2-1.fc21";
    let run = |arch: &str, scenario: Option<&str>, outcome: Outcome, at: i64| {
        let mut j = job("upgrade-tests", item, arch, at);
        j.scenario = scenario.map(str::to_string);
        let mut r = result(&j, "dist.upgrade", outcome, at);
        if let Some(s) = scenario {
            r.data.insert("scenario".into(), serde_json::json!(s));
        }
        r
    };
    let results = [
        // aarch64 failed, then x86_64 passed later: the failure must stay visible.
        run("aarch64", None, Outcome::Failed, 10),
        run("x86_64", None, Outcome::Failed, 11),
        run("x86_64", None, Outcome::Passed, 12),
        run("s390x", None, Outcome::Passed, 13),
        // Two configurations on x86_64, the older one failing, each its own latest.
        run("x86_64", Some("n-1-minimal"), Outcome::Failed, 14),
        run("x86_64", Some("n-2-server"), Outcome::Passed, 15),
        run("x86_64", Some("n-1-minimal"), Outcome::Passed, 16),
        run("x86_64", Some("n-2-server"), Outcome::Failed, 17),
    ];
    for r in &results {
        db.insert_result(r).await;
    }
    let api = RunningApi::start(&db.url, tempfile::tempdir().unwrap().path()).await;
    let query = format!(
        "/api/v2.0/results/latest?item={item}&type=koji_build&testcases=dist.upgrade\
         &_distinct_on=scenario,system_architecture,system_variant"
    );
    let (status, body) = api.get(&query).await;
    assert_eq!(status, 200, "{body}");
    let mut seen: Vec<(String, String, String)> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let first = |key: &str| r["data"][key][0].as_str().unwrap_or("-").to_string();
            (
                first("system_architecture"),
                first("scenario"),
                r["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    seen.sort();
    let t = |a: &str, s: &str, o: &str| (a.to_string(), s.to_string(), o.to_string());
    assert_eq!(
        seen,
        [
            t("aarch64", "-", "FAILED"),
            t("s390x", "-", "PASSED"),
            t("x86_64", "-", "PASSED"),
            t("x86_64", "n-1-minimal", "PASSED"),
            t("x86_64", "n-2-server", "FAILED"),
        ]
    );
    // Without `_distinct_on`, ResultsDB (and this api) keeps only the newest per testcase.
    let (_, body) = api
        .get(&format!(
            "/api/v2.0/results/latest?item={item}&testcases=dist.upgrade"
        ))
        .await;
    assert_eq!(body["data"].as_array().unwrap().len(), 1, "{body}");
    assert_eq!(body["data"][0]["outcome"], "FAILED");
    api.stop().await;
}

/// Jobs carry the testcases they are declared to report (the rule's, then the task file's once
/// the job runs) and their scenario; `testcase=` finds them.
#[tokio::test]
async fn jobs_have_their_declared_testcases_and_scenario() {
    let db = TestDb::create().await;
    let mut upgrade = job("upgrade-tests", "FEDORA-2024-1", "x86_64", 0);
    upgrade.testcases = vec!["dist.upgrade".into()];
    upgrade.scenario = Some("n-1-minimal".into());
    db.record_status(&status(&upgrade, JobState::Queued, 0))
        .await;
    let mut running = status(&upgrade, JobState::Running, 5);
    running.testcases = vec!["dist.upgrade.logs".into(), "dist.upgrade".into()];
    db.record_status(&running).await;
    // A redelivered running status adds nothing twice.
    db.record_status(&running).await;
    let plain = job("rpmlint", "FEDORA-2024-1", "x86_64", 1);
    db.record_status(&status(&plain, JobState::Queued, 1)).await;
    let api = RunningApi::start(&db.url, tempfile::tempdir().unwrap().path()).await;
    let (status, j) = api.get(&format!("/api/v1/jobs/{}", upgrade.job_id)).await;
    assert_eq!(status, 200, "{j}");
    assert_eq!(
        j["testcases"],
        serde_json::json!(["dist.upgrade", "dist.upgrade.logs"])
    );
    assert_eq!(j["scenario"], "n-1-minimal");
    for (query, expected) in [
        ("testcase=dist.upgrade.logs", vec![upgrade.job_id]),
        ("testcase=dist.nothing,dist.upgrade", vec![upgrade.job_id]),
        ("testcase=dist.rpmlint", vec![]),
        ("item=FEDORA-2024-1", vec![plain.job_id, upgrade.job_id]),
    ] {
        let (status, body) = api.get(&format!("/api/v1/jobs?{query}")).await;
        assert_eq!(status, 200, "{query}: {body}");
        let ids: Vec<String> = body["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["id"].as_str().unwrap().to_string())
            .collect();
        let expected: Vec<String> = expected.iter().map(|id| id.to_string()).collect();
        assert_eq!(ids, expected, "{query}");
    }
    let (_, body) = api.get("/api/v1/jobs?testcase=dist.rpmlint&item=x").await;
    assert_eq!(body["data"], serde_json::json!([]));
    let (_, body) = api.get(&format!("/api/v1/jobs/{}", plain.job_id)).await;
    assert_eq!(body["testcases"], serde_json::json!([]));
    assert_eq!(body["scenario"], Value::Null);
    api.stop().await;
}

/// A raw HTTP/1.1 GET, so the path reaches the server exactly as written (HTTP clients
/// normalise `..` away before sending).
async fn raw_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut bytes = Vec::new();
    stream.read_to_end(&mut bytes).await.unwrap();
    let response = String::from_utf8_lossy(&bytes).into_owned();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test]
async fn artifacts_are_served_and_traversal_is_refused() {
    let f = fixture().await;
    let id = f.xchat_x86.job_id;
    let job_dir = f.artifacts.path().join(id.to_string());
    std::fs::create_dir_all(job_dir.join("logs")).unwrap();
    std::fs::write(job_dir.join("task.log"), "task started\nall good\n").unwrap();
    std::fs::write(job_dir.join("logs/rpmlint.log"), "0 errors").unwrap();
    // Another job's files, and a file outside every job.
    let other = f.artifacts.path().join(f.glibc.job_id.to_string());
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("task.log"), "other job").unwrap();
    std::fs::write(f.artifacts.path().join("secret.txt"), "secret").unwrap();
    std::os::unix::fs::symlink(
        f.artifacts.path().join("secret.txt"),
        job_dir.join("escape"),
    )
    .unwrap();
    std::os::unix::fs::symlink("/etc", job_dir.join("etc")).unwrap();
    // A hard link to a host file, and a link within the job's own files: neither is served.
    std::fs::hard_link(
        f.artifacts.path().join("secret.txt"),
        job_dir.join("hard.txt"),
    )
    .unwrap();
    std::os::unix::fs::symlink("logs/rpmlint.log", job_dir.join("latest.log")).unwrap();

    let response = reqwest::get(format!("{}/api/v1/jobs/{id}/artifacts/task.log", f.api.url))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "text/plain; charset=utf-8"
    );
    assert_eq!(response.text().await.unwrap(), "task started\nall good\n");
    let (status, body) = raw_get(
        f.api.addr,
        &format!("/api/v1/jobs/{id}/artifacts/logs/rpmlint.log"),
    )
    .await;
    assert_eq!((status, body.as_str()), (200, "0 errors"));
    // The short prefix `runner.artifacts_url` can point at serves the same files.
    let (status, body) = raw_get(f.api.addr, &format!("/artifacts/{id}/logs/rpmlint.log")).await;
    assert_eq!((status, body.as_str()), (200, "0 errors"));

    let (status, listing) = f.api.get(&format!("/api/v1/jobs/{id}/artifacts/")).await;
    assert_eq!(status, 200);
    let names: Vec<&str> = listing["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["logs", "task.log"], "links are not listed");
    let (status, sub) = f
        .api
        .get(&format!("/api/v1/jobs/{id}/artifacts/logs"))
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        sub["entries"][0]["href"],
        format!("{}/api/v1/jobs/{id}/artifacts/logs/rpmlint.log", f.api.url)
    );

    for path in [
        format!("/api/v1/jobs/{id}/artifacts/../secret.txt"),
        format!("/api/v1/jobs/{id}/artifacts/logs/../../secret.txt"),
        format!("/api/v1/jobs/{id}/artifacts/%2e%2e/secret.txt"),
        format!(
            "/api/v1/jobs/{id}/artifacts/..%2f{}/task.log",
            f.glibc.job_id
        ),
        format!("/api/v1/jobs/{id}/artifacts/%2Fetc%2Fpasswd"),
        format!("/api/v1/jobs/{id}/artifacts//etc/passwd"),
        format!("/api/v1/jobs/{id}/artifacts/escape"),
        format!("/api/v1/jobs/{id}/artifacts/etc/passwd"),
        format!("/api/v1/jobs/{id}/artifacts/hard.txt"),
        format!("/api/v1/jobs/{id}/artifacts/latest.log"),
        format!("/artifacts/{id}/../secret.txt"),
        format!("/artifacts/{id}/escape"),
        "/api/v1/jobs/..%2f..%2f..%2fetc/artifacts/passwd".to_string(),
    ] {
        let (status, body) = raw_get(f.api.addr, &path).await;
        assert!(
            status == 403 || status == 404 || status == 400,
            "{path}: {status} {body}"
        );
        assert!(!body.contains("secret"), "{path} leaked: {body}");
        assert!(!body.contains("root:"), "{path} leaked: {body}");
        assert!(!body.contains("other job"), "{path} leaked: {body}");
    }
    // The ones that reach the resolver are refused as such, not merely not found.
    for refused in ["escape", "etc/passwd", "hard.txt", "latest.log"] {
        let (status, _) = raw_get(
            f.api.addr,
            &format!("/api/v1/jobs/{id}/artifacts/{refused}"),
        )
        .await;
        assert_eq!(status, 403, "{refused}");
    }
    let (status, _) = raw_get(
        f.api.addr,
        &format!("/api/v1/jobs/{id}/artifacts/%2e%2e/secret.txt"),
    )
    .await;
    assert_eq!(status, 403);
    let (status, _) = raw_get(
        f.api.addr,
        &format!("/api/v1/jobs/{id}/artifacts/nothing.log"),
    )
    .await;
    assert_eq!(status, 404);
    f.api.stop().await;
}

#[tokio::test]
async fn health_readiness_and_store_not_ready() {
    // A database the reporter has not migrated yet.
    let db = TestDb::create_empty().await;
    let artifacts = tempfile::tempdir().unwrap();
    let api = RunningApi::start(&db.url, artifacts.path()).await;
    assert_eq!(api.get("/healthz").await.0, 200);
    let (status, body) = api.get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body["message"]
        .as_str()
        .unwrap()
        .contains("store not ready"));
    let (status, body) = api.get("/api/v2.0/results").await;
    assert_eq!(status, 503);
    assert_eq!(
        body["message"],
        "store not ready: the reporter has not created the tables yet"
    );
    assert_eq!(api.get("/api/v1/jobs").await.0, 503);
    // The database answers, so ResultsDB's health check is fine.
    assert_eq!(api.get("/api/v2.0/healthcheck").await.0, 200);

    // Once the reporter has migrated, the same api is ready, without a restart.
    taskbot::store::migrate(&db.writer_pool()).await.unwrap();
    assert_eq!(api.get("/readyz").await.0, 200);
    let (status, body) = api.get("/api/v2.0/results").await;
    assert_eq!(status, 200);
    assert_eq!(body["data"], serde_json::json!([]));
    api.stop().await;

    // No database at all: up, but not ready.
    let api = RunningApi::start("postgres://postgres@127.0.0.1:1/none", artifacts.path()).await;
    assert_eq!(api.get("/healthz").await.0, 200);
    let (status, body) = api.get("/readyz").await;
    assert_eq!(status, 503);
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("database unavailable"),
        "{body}"
    );
    assert_eq!(api.get("/api/v2.0/healthcheck").await.0, 503);
    assert_eq!(api.get("/api/v2.0/results").await.0, 503);
    api.stop().await;
}

#[tokio::test]
async fn openapi_is_served_and_every_route_answers() {
    let f = fixture().await;
    let (status, doc) = f.api.get("/openapi.json").await;
    assert_eq!(status, 200);
    assert!(doc["paths"].as_object().unwrap().len() >= taskbot_api::ROUTES.len());
    let id = f.xchat_x86.job_id;
    std::fs::create_dir_all(f.artifacts.path().join(id.to_string())).unwrap();
    std::fs::write(f.artifacts.path().join(format!("{id}/task.log")), "x").unwrap();
    let result_id = result(&f.xchat_x86, "dist.rpmlint", Outcome::Passed, 10).result_id;
    for route in taskbot_api::ROUTES {
        let path = route
            .replace("/results/{id}", &format!("/results/{result_id}"))
            .replace("{id}", &id.to_string())
            .replace("{name}", "dist.rpmlint")
            .replace("{uuid}", &id.to_string())
            .replace("{*path}", "task.log")
            .replace("/badge/items/{*item}", "/badge/items/xchat-0.5-1.fc40.svg")
            .replace("{*item}", "xchat-0.5-1.fc40")
            .replace("{*testcase}", "dist.rpmlint.svg");
        let (status, _) = raw_get(f.api.addr, &path).await;
        // `/` redirects to the dashboard.
        let expected = if path == "/" { 303 } else { 200 };
        assert_eq!(status, expected, "{path}");
    }
    let _ = &f.db;
    f.api.stop().await;
}

#[tokio::test]
async fn results_have_integer_ids_and_are_found_by_uuid_too() {
    let f = fixture().await;
    let uuid = result(&f.glibc, "abi.check", Outcome::NeedsInspection, 13).result_id;
    // The reporter's schema gives every result an integer id, as ResultsDB clients expect.
    let (client, connection) = tokio_postgres::connect(&f.db.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let number: i64 = client
        .query_one("SELECT id FROM results WHERE result_id = $1", &[&uuid])
        .await
        .unwrap()
        .get(0);

    let (_, page) = f.api.get("/api/v2.0/results").await;
    assert!(
        page["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["id"].is_i64()),
        "{page}"
    );
    let (status, by_number) = f.api.get(&format!("/api/v2.0/results/{number}")).await;
    assert_eq!(status, 200, "{by_number}");
    assert_eq!(by_number["id"], number);
    assert_eq!(by_number["testcase"]["name"], "abi.check");
    assert_eq!(
        by_number["href"],
        format!("{}/api/v2.0/results/{number}", f.api.url)
    );
    // The UUID still finds it.
    let (_, by_uuid) = f.api.get(&format!("/api/v2.0/results/{uuid}")).await;
    assert_eq!(by_uuid, by_number);
    assert_eq!(f.api.get("/api/v2.0/results/999999").await.0, 404);
    f.api.stop().await;
}
