//! Posting results to ResultsDB, against a test double that validates like ResultsDB 2.x, with
//! the real broker and a real PostgreSQL database per test.

mod support;

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::json;
use taskbot::amqp::REASON_HEADER;
use taskbot::messages::{Message, Outcome, TaskResult};
use taskbot::testing::{test_config, TestBroker};
use taskbot::Config;
use uuid::Uuid;

use support::fake_resultsdb::{FakeResultsDb, Fault, FEDORA_OUTCOMES, UPSTREAM_OUTCOMES};
use support::{
    job, publish_dispatched, result, wait_dispatched, wait_until, RunningReporter, TestDb,
};
use taskbot::outcomes::OutcomeProfile;

struct Setup {
    test_db: TestDb,
    config: Config,
    broker: TestBroker,
    client: tokio_postgres::Client,
}

async fn setup(resultsdb: &FakeResultsDb) -> Setup {
    let test_db = TestDb::create().await;
    let mut config = test_config();
    config.postgres.url = test_db.url.clone();
    config.reporter.resultsdb_url = Some(resultsdb.api_url.clone());
    config.reporter.resultsdb_timeout_secs = 1;
    let broker = TestBroker::new(&config).await;
    let client = test_db.client().await;
    Setup {
        test_db,
        config,
        broker,
        client,
    }
}

impl Setup {
    async fn publish(&self, result: &TaskResult) {
        let t = &self.broker.topology;
        self.broker
            .publish(
                &t.results_exchange(),
                &result.routing_key(),
                result.to_json(),
            )
            .await;
    }

    /// `(posted_at, resultsdb_id)` of a result's recorded ResultsDB delivery; `None` if there
    /// is none.
    async fn posted(&self, id: Uuid) -> Option<(DateTime<Utc>, Option<i64>)> {
        self.client
            .query_opt(
                "SELECT posted_at, resultsdb_id FROM resultsdb_deliveries WHERE result_id = $1",
                &[&id],
            )
            .await
            .unwrap()
            .map(|r| (r.get(0), r.get(1)))
    }

    async fn wait_posted(&self, id: Uuid) -> i64 {
        wait_until("the delivery recorded", Duration::from_secs(20), || async {
            self.posted(id).await.is_some()
        })
        .await;
        self.posted(id)
            .await
            .unwrap()
            .1
            .expect("ResultsDB's id recorded")
    }

    async fn stored_in_postgres(&self, id: Uuid) -> bool {
        self.client
            .query_opt("SELECT 1 FROM results WHERE result_id = $1", &[&id])
            .await
            .unwrap()
            .is_some()
    }

    /// Queues of the results consumer are empty (call after the reporter stopped: every delivery
    /// was then acked, not merely in flight).
    async fn assert_drained(&self, dead_letters: u32) {
        let t = &self.broker.topology;
        let queue = t.resultsdb_queue();
        assert_eq!(self.broker.depth(&queue).await, 0);
        assert_eq!(
            self.broker.depth(&t.dead_letter_queue(&queue)).await,
            dead_letters
        );
    }
}

#[tokio::test]
async fn result_is_posted_in_resultsdb_format_once_even_when_delivered_again() {
    let resultsdb = FakeResultsDb::start(FEDORA_OUTCOMES).await;
    let s = setup(&resultsdb).await;
    let reporter = RunningReporter::start_ready(&s.config, &s.test_db).await;
    let job = job("xchat-0.5-1.fc20");
    publish_dispatched(&s.broker, &job).await;
    // Else the first copies would wait for the job, each its own back-off.
    wait_dispatched(&s.test_db, &job).await;
    let res = result(&job, "dist.rpmlint", Outcome::NeedsInspection);

    // Two copies at once (a publisher that retried): handled concurrently, posted once.
    s.publish(&res).await;
    s.publish(&res).await;
    let id = s.wait_posted(res.result_id).await;
    // A redelivery long after it was posted.
    s.publish(&res).await;
    // Stop only once the reporter has taken the copy (stopping lets a delivery in hand finish).
    let queue = s.broker.topology.resultsdb_queue();
    wait_until("the third copy taken", Duration::from_secs(10), || async {
        s.broker.depth(&queue).await == 0
    })
    .await;
    // Taken is not yet handled: give the handler (a lookup, no POST) time to finish.
    tokio::time::sleep(Duration::from_millis(500)).await;
    reporter.stop().await;
    s.assert_drained(0).await;

    let requests = resultsdb.requests();
    assert_eq!(requests.len(), 1, "posted exactly once: {requests:#?}");
    let req = &requests[0];
    assert_eq!(req.method, "POST");
    assert_eq!(req.path, "/api/v2.0/results");
    assert_eq!(req.content_type.as_deref(), Some("application/json"));
    assert_eq!(req.status, 201);
    let log_url = format!("https://taskbot.example/artifacts/{}/", job.job_id);
    assert_eq!(
        req.body,
        json!({
            "testcase": {
                "name": "dist.rpmlint",
                "ref_url": "https://git.example/taskbot/rpmlint.git",
            },
            "outcome": "NEEDS_INSPECTION",
            "note": "5 errors, 10 warnings",
            "ref_url": log_url,
            "groups": [{
                "uuid": job.job_id.to_string(),
                "description": format!(
                    "Taskbot job {}: rpmlint on xchat-0.5-1.fc20 (x86_64)", job.job_id
                ),
                "ref_url": log_url,
            }],
            "data": {
                "item": ["xchat-0.5-1.fc20"],
                "type": ["koji_build"],
                "arch": ["x86_64"],
                "system_architecture": ["x86_64"],
                "errors": "5",
                "koji_task_id": "1234567",
                "checked": ["spec", "rpm"],
            },
            "submit_time": res.finished_at.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(),
        })
    );
    let stored = resultsdb.stored();
    assert_eq!(stored.len(), 1);
    assert_eq!(
        stored[0]["id"].as_i64(),
        Some(id),
        "the returned id is recorded"
    );
    broker_cleanup(s).await;
}

#[tokio::test]
async fn unavailable_resultsdb_is_retried_and_the_result_posted_once() {
    let resultsdb = FakeResultsDb::start(FEDORA_OUTCOMES).await;
    // First a server that hangs past the reporter's 1 s timeout, then one answering 503.
    resultsdb.fail_next(Fault::Hang(Duration::from_secs(5)));
    resultsdb.fail_next(Fault::Status(503));
    let s = setup(&resultsdb).await;
    let reporter = RunningReporter::start_ready(&s.config, &s.test_db).await;
    let job = job("ansible-1.8.3-1.el7");
    publish_dispatched(&s.broker, &job).await;
    let res = result(&job, "dist.rpmlint", Outcome::Passed);
    s.publish(&res).await;
    let id = s.wait_posted(res.result_id).await;
    reporter.stop().await;
    s.assert_drained(0).await;

    let statuses: Vec<u16> = resultsdb.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [0, 503, 201], "hung, unavailable, then accepted");
    let stored = resultsdb.stored();
    assert_eq!(stored.len(), 1, "stored exactly once");
    assert_eq!(stored[0]["id"].as_i64(), Some(id));
    assert_eq!(stored[0]["outcome"], "PASSED");
    broker_cleanup(s).await;
}

#[tokio::test]
async fn refused_result_is_dead_lettered_with_the_servers_message_and_kept_in_postgres() {
    // A profile that does not fit the instance (fedora's, against upstream's four outcomes):
    // CRASHED is refused with HTTP 400 and ResultsDB's validation report.
    let resultsdb = FakeResultsDb::start(UPSTREAM_OUTCOMES).await;
    let mut s = setup(&resultsdb).await;
    s.config.reporter.resultsdb_outcomes = OutcomeProfile::Named("fedora".into());
    let reporter = RunningReporter::start_ready(&s.config, &s.test_db).await;
    let job = job("xchat-0.5-1.fc20");
    publish_dispatched(&s.broker, &job).await;
    let res = result(&job, "dist.abicheck", Outcome::Crashed);
    s.publish(&res).await;

    let t = &s.broker.topology;
    let dead = s
        .broker
        .get(
            &t.dead_letter_queue(&t.resultsdb_queue()),
            Duration::from_secs(20),
        )
        .await
        .expect("the refused result dead-lettered");
    assert_eq!(dead.body, res.to_json(), "the original message is kept");
    let reason = dead.header(REASON_HEADER).expect("reason header");
    assert!(
        reason.contains("HTTP 400): {\"validation_error\"")
            && reason.contains("must be one of: PASSED, INFO, FAILED, NEEDS_INSPECTION"),
        "{reason}"
    );
    assert!(
        reason.contains("only the ResultsDB copy is missing"),
        "{reason}"
    );
    assert_eq!(s.posted(res.result_id).await, None, "no delivery recorded");
    wait_until(
        "the PostgreSQL sink stored it all the same",
        Duration::from_secs(10),
        || async { s.stored_in_postgres(res.result_id).await },
    )
    .await;
    reporter.stop().await;
    s.assert_drained(0).await;
    assert_eq!(resultsdb.requests().len(), 1, "not retried");
    assert!(resultsdb.stored().is_empty());
    broker_cleanup(s).await;
}

async fn broker_cleanup(s: Setup) {
    let Setup {
        test_db, broker, ..
    } = s;
    broker.cleanup().await;
    drop(test_db);
}
