//! Shared by the api's integration tests: a database of its own per test (migrated and filled by
//! the store's own migrations and writes, [`taskbot::store`], which the reporter uses), the api
//! running in-process on a free port, and row builders.
// Each test binary uses a different part of this module.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};
use taskbot::messages::{JobRequest, JobState, JobStatus, Outcome, TaskRef, TaskResult};
use taskbot::{Config, Shutdown};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A database of its own for one test (see [`taskbot::testing::TestDb`]), with the store's
/// schema and writes at hand.
pub struct TestDb {
    pub url: String,
    inner: taskbot::testing::TestDb,
}

impl TestDb {
    /// An empty database (no tables: the reporter has not run).
    pub async fn create_empty() -> TestDb {
        let inner = taskbot::testing::TestDb::create().await;
        TestDb {
            url: inner.url.clone(),
            inner,
        }
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// A database with the store's schema, as the reporter migrates it.
    pub async fn create() -> TestDb {
        let db = TestDb::create_empty().await;
        let pool = db.writer_pool();
        taskbot::store::migrate(&pool)
            .await
            .expect("store migrations");
        db
    }

    /// A read-write pool (the api's own sessions are read-only).
    pub fn writer_pool(&self) -> deadpool_postgres::Pool {
        taskbot::store::connect_pool(
            &taskbot::config::PostgresConfig {
                url: self.url.clone(),
                pool_size: 2,
                ..Default::default()
            },
            &taskbot::store::PoolOptions {
                application_name: "taskbot-api-test",
                read_only: false,
                connect_timeout: Duration::from_secs(5),
                wait_timeout: Duration::from_secs(10),
                create_timeout: Duration::from_secs(5),
                statement_timeout: None,
            },
        )
        .expect("pool")
    }

    /// Store a result as the reporter does.
    pub async fn insert_result(&self, result: &TaskResult) {
        let pool = self.writer_pool();
        let client = pool.get().await.unwrap();
        assert!(taskbot::store::insert_result(&client, result)
            .await
            .unwrap());
    }

    /// Store a job status as the reporter does.
    pub async fn record_status(&self, status: &JobStatus) {
        let pool = self.writer_pool();
        let mut client = pool.get().await.unwrap();
        taskbot::store::record_status(&mut client, status)
            .await
            .unwrap();
    }
}

/// The api running in-process on a free port.
pub struct RunningApi {
    pub addr: SocketAddr,
    pub url: String,
    stop: Option<oneshot::Sender<()>>,
    handle: JoinHandle<anyhow::Result<()>>,
}

impl RunningApi {
    pub async fn start(postgres_url: &str, artifacts_dir: &Path) -> RunningApi {
        let mut config = taskbot::testing::test_config();
        config.postgres.url = postgres_url.to_string();
        config.api.artifacts_dir = Some(artifacts_dir.to_path_buf());
        RunningApi::start_with(config).await
    }

    pub async fn start_with(config: Config) -> RunningApi {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let handle = tokio::spawn(taskbot_api::serve(
            config,
            listener,
            Shutdown::new(async {
                let _ = stopped.await;
            }),
        ));
        RunningApi {
            addr,
            url: format!("http://{addr}"),
            stop: Some(stop),
            handle,
        }
    }

    /// GET `path` (with query); the status and the body as JSON (Null when it is not JSON).
    pub async fn get(&self, path: &str) -> (u16, serde_json::Value) {
        get_json(&format!("{}{path}", self.url)).await
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(10), self.handle)
            .await
            .expect("api stops within 10 s")
            .expect("api task did not panic")
            .expect("serve returned Ok");
    }
}

pub async fn get_json(url: &str) -> (u16, serde_json::Value) {
    let response = reqwest::get(url).await.expect("request");
    let status = response.status().as_u16();
    let body = response.bytes().await.unwrap();
    (
        status,
        serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
    )
}

/// A time PostgreSQL stores exactly (microseconds), `offset_secs` from a fixed moment, so tests
/// can order results and know their `submit_time` text.
pub fn time(offset_secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_750_000_000 + offset_secs, 250_000_000).expect("valid time")
}

pub fn job(task: &str, item: &str, arch: &str, created_offset: i64) -> JobRequest {
    let task = TaskRef {
        name: task.into(),
        repo: format!("https://git.example/taskbot/{task}.git"),
        git_ref: "main".into(),
    };
    JobRequest {
        rule: "builds".into(),
        created_at: time(created_offset),
        ..taskbot::testing::job_request(task, item, arch)
    }
}

pub fn result(job: &JobRequest, testcase: &str, outcome: Outcome, finished: i64) -> TaskResult {
    let mut data = BTreeMap::new();
    data.insert("errors".to_string(), serde_json::json!(finished));
    data.insert(
        "koji:task_id".to_string(),
        serde_json::json!(format!("{}", 1000 + finished)),
    );
    data.insert("checked".to_string(), serde_json::json!(["spec", "rpm"]));
    TaskResult {
        note: Some(format!("{testcase} on {}", job.item)),
        data,
        finished_at: time(finished),
        ..taskbot::testing::task_result(job, testcase, outcome)
    }
}

pub fn status(job: &JobRequest, state: JobState, at: i64) -> JobStatus {
    let mut status = JobStatus::new(job, state, "test@host", Some(format!("now {state}")));
    status.at = time(at);
    status
}
