//! The `reporter` service: the end of the pipeline. It feeds every result and job status to
//! independent sinks, each consuming its own queue bound to the results exchange, so a slow or
//! broken store never holds back the others (docs/results.md):
//!
//! - `postgres`: results, each job's current state and its full history (`<ns>.sink.postgres.results`,
//!   `<ns>.sink.postgres.status`);
//! - `resultsdb`: results posted to ResultsDB (`<ns>.sink.resultsdb`);
//! - `jsonl`: results and statuses appended to a rotating JSON-lines file (`<ns>.sink.jsonl`);
//! - `fedora-messaging`: results republished as fedora-messaging messages
//!   (`<ns>.sink.fedora-messaging`).
//!
//! Each sink acknowledges a message only once what it says is committed (row, HTTP 201 and its
//! record, fsynced line, confirmed publish), so nothing is lost while a store is down: the
//! message waits in that sink's queue.

pub mod db;
pub mod fedora_messaging;
pub mod jsonl;
pub mod postgres;
pub mod resultsdb;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use taskbot::amqp::{self, Backoff, ConsumerSpec, Disposition, Handler};
use taskbot::config::ReporterConfig;
use taskbot::messages::{JobStatus, Message, TaskResult};
use taskbot::store::{self, StoreError};
use taskbot::topology::Sink;
use taskbot::{Config, Shutdown, Topology};

use crate::fedora_messaging::FedoraMessagingSink;
use crate::jsonl::{JsonlSink, JsonlWriter};
use crate::resultsdb::{ResultsDb, ResultsDbSink};

/// Pause before a delivery that failed transiently (database or ResultsDB down) is handed back
/// to its queue and tried again. Short enough that an outage ending is noticed quickly, long
/// enough not to spin.
pub const RETRY_DELAY: Duration = Duration::from_secs(2);

/// Decode a result, refusing what cannot be stored or posted. The error is a dead-letter reason.
pub fn decode_result(body: &[u8]) -> Result<TaskResult, String> {
    let result = TaskResult::from_json(body).map_err(|e| e.to_string())?;
    if result.testcase.trim().is_empty() {
        return Err(format!(
            "result {} has an empty testcase (ResultsDB requires a name)",
            result.result_id
        ));
    }
    Ok(result)
}

/// Decode a job status, refusing one whose job id disagrees with the job it carries: storing it
/// would file the history under one job and the job's details under another.
pub fn decode_status(body: &[u8]) -> Result<JobStatus, String> {
    let status = JobStatus::from_json(body).map_err(|e| e.to_string())?;
    if status.job_id != status.job.job_id {
        return Err(format!(
            "status {} is for job {} but carries job {}",
            status.status_id, status.job_id, status.job.job_id
        ));
    }
    Ok(status)
}

/// What to do with a message whose database write failed: dead-letter it when its content is the
/// cause (retrying would loop forever), else retry. Nothing is acked before it is committed.
pub fn store_failure(what: &str, err: &StoreError) -> Disposition {
    if err.is_caused_by_data() {
        Disposition::DeadLetter(format!("PostgreSQL refused {what}: {err}"))
    } else {
        Disposition::Retry(format!("cannot store {what}: {err}"))
    }
}

/// Migrate the schema, waiting (with back-off) for the database to be reachable. Returns
/// `Ok(false)` if shutdown came first, and an error only for failures waiting cannot fix (a
/// migration script PostgreSQL refuses, a schema newer than this reporter).
pub async fn prepare_database(
    pool: &Pool,
    database: &str,
    max_backoff_secs: u64,
    shutdown: &mut Shutdown,
) -> anyhow::Result<bool> {
    let mut backoff = Backoff::new(max_backoff_secs);
    loop {
        if shutdown.is_triggered() {
            return Ok(false);
        }
        match store::migrate(pool).await {
            Ok(applied) => {
                tracing::info!(
                    database,
                    applied,
                    version = store::MIGRATIONS.len(),
                    "database schema up to date"
                );
                return Ok(true);
            }
            Err(err) if err.is_transient() => {
                let wait = backoff.next_delay();
                tracing::warn!(database, error = %err, retry_in_ms = wait.as_millis() as u64,
                    "PostgreSQL is not reachable yet; waiting for it before consuming");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.wait() => return Ok(false),
                }
            }
            Err(err) => {
                anyhow::bail!("cannot prepare the schema of database {database}: {err}")
            }
        }
    }
}

/// The sinks `config` enables: `reporter.sinks` when set, else PostgreSQL plus ResultsDB when
/// `resultsdb_url` is set and the JSON-lines file when `jsonl_path` is set. Refuses a listed sink
/// that lacks what it needs, so a typo fails the start instead of a queue filling up.
pub fn enabled_sinks(config: &ReporterConfig) -> anyhow::Result<Vec<Sink>> {
    let sinks = taskbot::topology::sinks_in_use(config);
    if sinks.contains(&Sink::Resultsdb) && config.resultsdb_url.is_none() {
        anyhow::bail!("reporter.sinks lists resultsdb but reporter.resultsdb_url is not set");
    }
    if sinks.contains(&Sink::Jsonl) && config.jsonl_path.is_none() {
        anyhow::bail!("reporter.sinks lists jsonl but reporter.jsonl_path is not set");
    }
    if sinks.is_empty() {
        anyhow::bail!("reporter.sinks is empty: the reporter would have nothing to do");
    }
    Ok(sinks)
}

/// Declare the enabled sinks' queues (with the rest of the topology) as soon as the broker is
/// reachable, before waiting for anything else, so results published meanwhile wait in them.
/// Also checks that the fedora-messaging exchange exists: publishing to a missing exchange would
/// close the publishing channel and stall the sink. Returns `Ok(false)` if shutdown came first.
async fn declare_queues(
    config: &Config,
    topology: &Topology,
    shutdown: &mut Shutdown,
) -> anyhow::Result<bool> {
    let mut backoff = Backoff::new(config.amqp.reconnect_max_secs);
    loop {
        let Some(conn) =
            amqp::connect_with_retry(&config.amqp, "taskbot-reporter-setup", shutdown).await
        else {
            return Ok(false);
        };
        let declared = async {
            let channel = conn.create_channel().await?;
            topology.declare(&channel).await?;
            Ok::<_, lapin::Error>(())
        }
        .await;
        if topology.sinks.contains(&Sink::FedoraMessaging) && declared.is_ok() {
            let exchange = &config.reporter.fedora_messaging_exchange;
            let found = async {
                let channel = conn.create_channel().await?;
                channel
                    .exchange_declare(
                        exchange,
                        lapin::ExchangeKind::Topic,
                        lapin::options::ExchangeDeclareOptions {
                            passive: true,
                            ..Default::default()
                        },
                        Default::default(),
                    )
                    .await
            }
            .await;
            if let Err(err) = found {
                let _ = conn.close(200, "done").await;
                anyhow::bail!(
                    "reporter.fedora_messaging_exchange {exchange:?} cannot be used: {err}"
                );
            }
        }
        let _ = conn.close(200, "declared").await;
        match declared {
            Ok(()) => return Ok(true),
            Err(err) => {
                let wait = backoff.next_delay();
                tracing::warn!(error = %err, retry_in_ms = wait.as_millis() as u64, "cannot declare the sink queues");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.wait() => return Ok(false),
                }
            }
        }
    }
}

type Consumer<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// How one sink consumes its queue.
fn spec(queue: String, sink: &str, concurrency: usize, retry_delay: Duration) -> ConsumerSpec {
    ConsumerSpec {
        queue,
        name: format!("taskbot-reporter-{sink}"),
        concurrency,
        retry_delay,
    }
}

fn consumer<'a>(
    config: &'a Config,
    topology: &'a Topology,
    spec: ConsumerSpec,
    handler: Arc<dyn Handler>,
    shutdown: &Shutdown,
) -> Consumer<'a> {
    Box::pin(amqp::consume(
        &config.amqp,
        topology,
        spec,
        handler,
        shutdown.clone(),
    ))
}

/// Run until `shutdown`: declare the enabled sinks' queues, start the sinks that need no
/// database at once, prepare the database (when a sink needs it) and start the others.
pub async fn run(config: Config, mut shutdown: Shutdown) -> anyhow::Result<()> {
    let sinks = enabled_sinks(&config.reporter)?;
    let enabled = |sink| sinks.contains(&sink);
    let names: Vec<&str> = sinks.iter().map(|s| s.as_str()).collect();
    tracing::info!(sinks = ?names, "reporter sinks enabled");
    let rc = &config.reporter;
    // Check everything that can be wrong in the configuration before waiting for anything.
    let resultsdb = match (&rc.resultsdb_url, enabled(Sink::Resultsdb)) {
        (Some(url), true) => {
            let rdb = ResultsDb::new(
                url,
                Duration::from_secs(rc.resultsdb_timeout_secs.max(1)),
                rc.resultsdb_auth_header.as_deref(),
            )?;
            tracing::info!(url = %rdb.results_url(), "results will be posted to ResultsDB");
            Some(rdb)
        }
        _ => None,
    };
    let jsonl = match (&rc.jsonl_path, enabled(Sink::Jsonl)) {
        (Some(path), true) => Some(
            JsonlWriter::open(path, rc.jsonl_max_bytes, rc.jsonl_keep).map_err(|e| {
                anyhow::anyhow!("cannot open reporter.jsonl_path {}: {e}", path.display())
            })?,
        ),
        _ => None,
    };
    let needs_db = enabled(Sink::Postgres) || enabled(Sink::Resultsdb);
    // The ResultsDB sink has a pool of its own: while ResultsDB hangs, its handlers hold
    // connections, and those must not be the ones the PostgreSQL sink needs.
    let pool = db::connect_pool(&config.postgres)?;
    let mut resultsdb_pg = config.postgres.clone();
    resultsdb_pg.pool_size = rc.resultsdb_concurrency.max(1);
    let resultsdb_pool = db::connect_pool(&resultsdb_pg)?;
    let database = store::database_name(&config.postgres.url);

    let topology = Topology::for_config(&config);
    if !declare_queues(&config, &topology, &mut shutdown).await? {
        tracing::info!("shutdown requested before the sink queues were declared");
        return Ok(());
    }

    let mut without_db: Vec<Consumer> = Vec::new();
    if let Some(writer) = jsonl {
        without_db.push(consumer(
            &config,
            &topology,
            spec(topology.jsonl_queue(), "jsonl", 1, RETRY_DELAY),
            Arc::new(JsonlSink::new(writer)),
            &shutdown,
        ));
    }
    if enabled(Sink::FedoraMessaging) {
        without_db.push(consumer(
            &config,
            &topology,
            spec(
                topology.fedora_messaging_queue(),
                "fedora-messaging",
                1,
                RETRY_DELAY,
            ),
            Arc::new(FedoraMessagingSink {
                exchange: rc.fedora_messaging_exchange.clone(),
                topic: rc.fedora_messaging_topic.clone(),
                schema: rc.fedora_messaging_schema.clone(),
            }),
            &shutdown,
        ));
    }
    let without_db = futures::future::join_all(without_db);

    let mut db_shutdown = shutdown.clone();
    let (config_ref, topology_ref) = (&config, &topology);
    let with_db = async move {
        if !needs_db {
            return Ok(());
        }
        let migrate_pool = if enabled(Sink::Postgres) {
            &pool
        } else {
            &resultsdb_pool
        };
        if !prepare_database(
            migrate_pool,
            &database,
            config_ref.amqp.reconnect_max_secs,
            &mut db_shutdown,
        )
        .await?
        {
            tracing::info!("shutdown requested before the database was ready");
            return Ok(());
        }
        let mut consumers: Vec<Consumer> = Vec::new();
        if enabled(Sink::Postgres) {
            // Results and statuses share the pool; each handler holds one connection at a time,
            // so half the pool each keeps them from waiting on each other.
            let concurrency = (config_ref.postgres.pool_size / 2).max(1);
            consumers.push(consumer(
                config_ref,
                topology_ref,
                spec(
                    topology_ref.postgres_results_queue(),
                    "postgres-results",
                    concurrency,
                    RETRY_DELAY,
                ),
                Arc::new(postgres::ResultsHandler { pool: pool.clone() }),
                &db_shutdown,
            ));
            consumers.push(consumer(
                config_ref,
                topology_ref,
                spec(
                    topology_ref.postgres_status_queue(),
                    "postgres-status",
                    concurrency,
                    RETRY_DELAY,
                ),
                Arc::new(postgres::StatusHandler { pool: pool.clone() }),
                &db_shutdown,
            ));
        }
        if let Some(rdb) = resultsdb {
            // The handler waits each result's own back-off before handing it back, so the
            // consume loop adds no pause of its own.
            consumers.push(consumer(
                config_ref,
                topology_ref,
                spec(
                    topology_ref.resultsdb_queue(),
                    "resultsdb",
                    config_ref.reporter.resultsdb_concurrency.max(1),
                    Duration::ZERO,
                ),
                Arc::new(ResultsDbSink::new(
                    resultsdb_pool.clone(),
                    rdb,
                    config_ref.reporter.job_url_template.clone(),
                    config_ref.reporter.resultsdb_retry_max_secs,
                    db_shutdown.clone(),
                )),
                &db_shutdown,
            ));
        }
        futures::future::join_all(consumers).await;
        pool.close();
        resultsdb_pool.close();
        Ok::<_, anyhow::Error>(())
    };
    // A database that can never be prepared ends the reporter (the sinks without a database stop
    // with it; their deliveries in hand are not acked and come back).
    let mut without_db = std::pin::pin!(without_db);
    let mut with_db = std::pin::pin!(with_db);
    tokio::select! {
        result = &mut with_db => {
            result?;
            without_db.await;
        }
        _ = &mut without_db => {
            with_db.await?;
        }
    }
    tracing::info!("reporter stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use taskbot::messages::{JobRequest, JobState, TaskRef};

    fn job() -> JobRequest {
        let task = TaskRef {
            name: "rpmlint".into(),
            repo: "https://git.example/rpmlint.git".into(),
            git_ref: "main".into(),
        };
        taskbot::testing::job_request(task, "x-1-1", "x86_64")
    }

    #[test]
    fn malformed_results_are_refused_with_a_reason() {
        let err = decode_result(b"{not json").unwrap_err();
        assert!(err.contains("not valid JSON"), "{err}");
        let status = JobStatus::new(&job(), JobState::Running, "s", None);
        let err = decode_result(&status.to_json()).unwrap_err();
        assert!(err.contains("expected schema taskbot.result.v1"), "{err}");
        let mut result = TaskResult::crashed(&job(), "runner", "boom");
        result.testcase = "  ".into();
        let err = decode_result(&result.to_json()).unwrap_err();
        assert!(err.contains("empty testcase"), "{err}");
        result.testcase = "dist.rpmlint".into();
        assert_eq!(decode_result(&result.to_json()).unwrap(), result);
    }

    #[test]
    fn status_must_agree_with_its_job() {
        let mut status = JobStatus::new(&job(), JobState::Running, "s", None);
        assert_eq!(decode_status(&status.to_json()).unwrap(), status);
        status.job_id = uuid::Uuid::new_v4();
        let err = decode_status(&status.to_json()).unwrap_err();
        assert!(err.contains("carries job"), "{err}");
        assert!(decode_status(b"[]").is_err());
    }

    #[test]
    fn default_sinks_follow_what_is_configured() {
        let mut rc = ReporterConfig::default();
        assert_eq!(enabled_sinks(&rc).unwrap(), [Sink::Postgres]);
        rc.resultsdb_url = Some("http://rdb/api/v2.0".into());
        rc.jsonl_path = Some("/tmp/r.jsonl".into());
        assert_eq!(
            enabled_sinks(&rc).unwrap(),
            [Sink::Postgres, Sink::Resultsdb, Sink::Jsonl]
        );
        rc.sinks = Some(vec![Sink::FedoraMessaging, Sink::Jsonl, Sink::Jsonl]);
        assert_eq!(
            enabled_sinks(&rc).unwrap(),
            [Sink::Jsonl, Sink::FedoraMessaging],
            "an explicit list is exactly the sinks"
        );
    }

    #[test]
    fn a_listed_sink_without_its_settings_is_refused() {
        let mut rc = ReporterConfig {
            sinks: Some(vec![Sink::Resultsdb]),
            ..Default::default()
        };
        let err = enabled_sinks(&rc).unwrap_err().to_string();
        assert!(err.contains("resultsdb_url is not set"), "{err}");
        rc.sinks = Some(vec![Sink::Jsonl]);
        let err = enabled_sinks(&rc).unwrap_err().to_string();
        assert!(err.contains("jsonl_path is not set"), "{err}");
        rc.sinks = Some(vec![]);
        assert!(enabled_sinks(&rc).is_err());
    }
}
