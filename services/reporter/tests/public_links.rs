//! A runner that knows no public URL links its results' logs by their local path. Where the
//! reporter's configuration publishes the artifacts (`runner.artifacts_url`, or
//! `api.public_url`), ResultsDB gets the public link instead, for the result and its group:
//! the real broker, a real database and a ResultsDB test double.

mod support;

use std::time::Duration;

use taskbot::messages::{Message, Outcome, TaskResult};
use taskbot::testing::{test_config, TestBroker};

use support::fake_resultsdb::{FakeResultsDb, FEDORA_OUTCOMES};
use support::{
    job, publish_dispatched, result, wait_dispatched, wait_until, RunningReporter, TestDb,
};

#[tokio::test]
async fn resultsdb_gets_the_public_link_of_a_log_its_runner_linked_by_path() {
    let resultsdb = FakeResultsDb::start(FEDORA_OUTCOMES).await;
    let db = TestDb::create().await;
    let mut config = test_config();
    config.postgres.url = db.url.clone();
    config.reporter.resultsdb_url = Some(resultsdb.api_url.clone());
    config.reporter.resultsdb_timeout_secs = 1;
    config.runner.artifacts_url = Some("https://logs.example/taskbot/".into());
    let broker = TestBroker::new(&config).await;
    let reporter = RunningReporter::start_ready(&config, &db).await;
    let job = job("xchat-0.5-1.fc20");
    publish_dispatched(&broker, &job).await;
    wait_dispatched(&db, &job).await;
    let local = TaskResult {
        log_url: Some(format!(
            "/var/lib/taskbot/artifacts/{}/task.log",
            job.job_id
        )),
        ..result(&job, "dist.rpmlint", Outcome::Failed)
    };
    let t = &broker.topology;
    broker
        .publish(&t.results_exchange(), &local.routing_key(), local.to_json())
        .await;
    wait_until("posted to ResultsDB", Duration::from_secs(20), || async {
        !resultsdb.requests().is_empty()
    })
    .await;
    reporter.stop().await;

    let public = format!("https://logs.example/taskbot/{}/task.log", job.job_id);
    let body = &resultsdb.requests()[0].body;
    assert_eq!(body["ref_url"], public.as_str(), "{body:#}");
    assert_eq!(body["groups"][0]["ref_url"], public.as_str(), "{body:#}");
    // The store keeps what the runner said; the api links it publicly when it answers.
    let stored: Option<String> = db
        .client()
        .await
        .query_one("SELECT log_url FROM results", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, local.log_url);
    broker.cleanup().await;
}
