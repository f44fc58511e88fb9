//! Shared by the reporter's integration tests: a database per test, the reporter running
//! in-process, message builders, and (in `fake_resultsdb`) a ResultsDB test double.
// Each test binary uses a different part of this module.
#![allow(dead_code)]

pub mod fake_resultsdb;

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};
use taskbot::messages::{JobRequest, JobState, JobStatus, Message, Outcome, TaskRef, TaskResult};
use taskbot::{Config, Shutdown};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use taskbot::testing::TestDb;

/// The reporter running in-process.
pub struct RunningReporter {
    stop: Option<oneshot::Sender<()>>,
    handle: JoinHandle<anyhow::Result<()>>,
}

impl RunningReporter {
    pub fn start(config: &Config) -> RunningReporter {
        let (stop, stopped) = oneshot::channel::<()>();
        let handle = tokio::spawn(taskbot_reporter::run(
            config.clone(),
            Shutdown::new(async {
                let _ = stopped.await;
            }),
        ));
        RunningReporter {
            stop: Some(stop),
            handle,
        }
    }

    /// Start, and wait until it has migrated `db` (so a test may query the tables).
    pub async fn start_ready(config: &Config, db: &TestDb) -> RunningReporter {
        let reporter = RunningReporter::start(config);
        let client = db.client().await;
        wait_until("the schema migrated", Duration::from_secs(20), || async {
            client
                .query_one("SELECT count(*) FROM taskbot_schema_migrations", &[])
                .await
                .is_ok_and(|row| row.get::<_, i64>(0) == taskbot::store::MIGRATIONS.len() as i64)
        })
        .await;
        reporter
    }

    pub fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }

    /// Request shutdown and wait for `run` to return (deliveries in flight finish first, so
    /// afterwards every message is either acked or back in its queue).
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(30), self.handle)
            .await
            .expect("reporter stops within 30 s of shutdown")
            .expect("reporter task did not panic")
            .expect("run returned Ok");
    }
}

/// Declare the queues of `sinks` (as the reporter does at start), e.g. so a test can publish
/// results before the reporter runs.
pub async fn declare_sinks(
    broker: &taskbot::testing::TestBroker,
    sinks: &[taskbot::topology::Sink],
) {
    broker
        .topology
        .clone()
        .with_sinks(sinks)
        .declare(broker.publisher.channel())
        .await
        .expect("declare sink queues");
}

/// Poll `check` until it is true; panic naming `what` after `timeout`.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A time PostgreSQL stores exactly (it keeps microseconds), `offset_secs` from now.
pub fn time(offset_secs: i64) -> DateTime<Utc> {
    let t = Utc::now() + chrono::Duration::seconds(offset_secs);
    DateTime::from_timestamp_micros(t.timestamp_micros()).expect("valid time")
}

pub fn job(item: &str) -> JobRequest {
    let task = TaskRef {
        name: "rpmlint".into(),
        repo: "https://git.example/taskbot/rpmlint.git".into(),
        git_ref: "main".into(),
    };
    JobRequest {
        rule: "rpmlint-on-builds".into(),
        created_at: time(-60),
        ..taskbot::testing::job_request(task, item, "x86_64")
    }
}

pub fn result(job: &JobRequest, testcase: &str, outcome: Outcome) -> TaskResult {
    let mut data = BTreeMap::new();
    data.insert("errors".to_string(), serde_json::json!(5));
    data.insert("koji:task_id".to_string(), serde_json::json!("1234567"));
    data.insert("checked".to_string(), serde_json::json!(["spec", "rpm"]));
    TaskResult {
        note: Some("5 errors, 10 warnings".into()),
        data,
        finished_at: time(-1),
        ..taskbot::testing::task_result(job, testcase, outcome)
    }
}

pub fn status(job: &JobRequest, state: JobState, at: DateTime<Utc>) -> JobStatus {
    let mut status = JobStatus::new(job, state, "test@host", Some(format!("now {state}")));
    status.at = at;
    status
}

/// Announce `job` as requested and dispatched, as the rules service and the provisioner do: its
/// `queued` and `provisioned` statuses on the results exchange (published as the test broker's
/// user, every service's in the tests). The reporter accepts a runner's results and statuses only
/// for such a job. Returns the two statuses.
pub async fn publish_dispatched(
    broker: &taskbot::testing::TestBroker,
    job: &JobRequest,
) -> [JobStatus; 2] {
    let statuses = [
        status(job, JobState::Queued, time(-50)),
        status(job, JobState::Provisioned, time(-45)),
    ];
    for s in &statuses {
        broker
            .publish(
                &broker.topology.results_exchange(),
                &s.routing_key(),
                s.to_json(),
            )
            .await;
    }
    statuses
}

/// Wait until the running reporter has recorded `job` as dispatched (after
/// [`publish_dispatched`]), for a test whose results must not wait for it.
pub async fn wait_dispatched(db: &TestDb, job: &JobRequest) {
    let client = db.client().await;
    wait_until(
        "the job recorded as dispatched",
        Duration::from_secs(15),
        || async {
            client
                .query_opt(
                    "SELECT 1 FROM job_records WHERE job_id = $1 AND dispatched_by IS NOT NULL",
                    &[&job.job_id],
                )
                .await
                .is_ok_and(|row| row.is_some())
        },
    )
    .await;
}
