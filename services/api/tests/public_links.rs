//! A runner that knows no public URL stores its results' log links as local paths
//! (`<runner.artifacts_dir>/<job id>/task.log`). Where the api's configuration publishes the
//! artifacts (`api.public_url`, or `runner.artifacts_url`), every answer links them there:
//! the results, the latest results, a job's results and a group's `ref_url`.

mod support;

use support::{job, result, status, RunningApi, TestDb};
use taskbot::messages::{JobState, Outcome, TaskResult};

/// A database holding one result whose log is a local path, as such a runner writes it.
async fn one_local_result() -> (TestDb, taskbot::JobRequest) {
    let db = TestDb::create().await;
    let j = job("rpmlint", "xchat-0.5-1.fc40", "x86_64", 0);
    let local = TaskResult {
        log_url: Some(format!("/var/lib/taskbot/artifacts/{}/task.log", j.job_id)),
        ..result(&j, "dist.rpmlint", Outcome::Failed, 1)
    };
    db.insert_result(&local).await;
    db.record_status(&status(&j, JobState::Done, 2)).await;
    (db, j)
}

#[tokio::test]
async fn results_link_logs_at_the_public_url_not_the_runners_path() {
    let (db, j) = one_local_result().await;
    let mut config = taskbot::testing::test_config();
    config.postgres.url = db.url.clone();
    config.api.public_url = Some("https://taskbot.example/".into());
    let api = RunningApi::start_with(config).await;
    let public = format!("https://taskbot.example/artifacts/{}/task.log", j.job_id);
    for path in [
        "/api/v2.0/results".to_string(),
        "/api/v2.0/results/latest".to_string(),
        format!("/api/v1/jobs/{}", j.job_id),
    ] {
        let (status, body) = api.get(&path).await;
        assert_eq!(status, 200, "{path}: {body}");
        let results = body.get("data").unwrap_or(&body["results"]);
        assert_eq!(results[0]["ref_url"], public.as_str(), "{path}: {body:#}");
    }
    api.stop().await;
}

#[tokio::test]
async fn groups_link_logs_where_runner_artifacts_url_publishes_them() {
    let (db, j) = one_local_result().await;
    let mut config = taskbot::testing::test_config();
    config.postgres.url = db.url.clone();
    config.runner.artifacts_url = Some("https://logs.example/taskbot".into());
    let api = RunningApi::start_with(config).await;
    let public = format!("https://logs.example/taskbot/{}/task.log", j.job_id);
    let (_, body) = api.get(&format!("/api/v2.0/groups/{}", j.job_id)).await;
    assert_eq!(body["ref_url"], public.as_str(), "{body:#}");
    let (_, body) = api.get("/api/v2.0/results").await;
    assert_eq!(body["data"][0]["ref_url"], public.as_str(), "{body:#}");
    api.stop().await;

    // Published nowhere: the path is all there is.
    let mut config = taskbot::testing::test_config();
    config.postgres.url = db.url.clone();
    let api = RunningApi::start_with(config).await;
    let (_, body) = api.get("/api/v2.0/results").await;
    let local = format!("/var/lib/taskbot/artifacts/{}/task.log", j.job_id);
    assert_eq!(body["data"][0]["ref_url"], local.as_str(), "{body:#}");
    api.stop().await;
}
