//! The `reporter` service: the end of the pipeline. It feeds every result and job status to
//! independent sinks, each consuming its own queue bound to the results exchange, so a slow or
//! broken store never holds back the others (docs/results.md):
//!
//! - `postgres`: results, each job's current state and its full history (`<ns>.sink.postgres.results`,
//!   `<ns>.sink.postgres.status`);
//! - `resultsdb`: results posted to ResultsDB (`<ns>.sink.resultsdb`);
//! - `jsonl`: results and statuses appended to a rotating JSON-lines file (`<ns>.sink.jsonl`);
//! - `fedora-messaging`: results republished as fedora-messaging messages
//!   (`<ns>.sink.fedora-messaging`), every one or only changes of outcome ([`notify`]).
//!
//! Each sink acknowledges a message only once what it says is committed (row, HTTP 201 and its
//! record, fsynced line, confirmed publish), so nothing is lost while a store is down: the
//! message waits in that sink's queue.

pub mod binding;
pub mod db;
pub mod fedora_messaging;
pub mod jsonl;
pub mod notify;
pub mod postgres;
pub mod resultsdb;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use taskbot::amqp::{self, Backoff, ConsumerSpec, Disposition, Handler};
use taskbot::config::{FedoraMessagingNotify, ReporterConfig};
use taskbot::limits;
use taskbot::messages::{JobStatus, Message, TaskResult};
use taskbot::setup;
use taskbot::store::{self, StoreError};
use taskbot::topology::Sink;
use taskbot::{ops, Config, Shutdown, Topology};

use crate::binding::Binding;
use crate::fedora_messaging::FedoraMessagingSink;
use crate::jsonl::{JsonlSink, JsonlWriter};
use crate::notify::ChangeLog;
use crate::resultsdb::{ResultsDb, ResultsDbSink};

/// Pause before a delivery that failed transiently (database or ResultsDB down) is handed back
/// to its queue and tried again. Short enough that an outage ending is noticed quickly, long
/// enough not to spin.
pub const RETRY_DELAY: Duration = Duration::from_secs(2);

/// Decode a result, refusing what cannot be stored or posted (a value over its limit in
/// [`taskbot::limits`], checked before any sink touches its store). The error is a dead-letter
/// reason.
pub fn decode_result(body: &[u8]) -> Result<TaskResult, String> {
    let result = TaskResult::from_json(body).map_err(|e| e.to_string())?;
    limits::check_result(&result)
        .map_err(|e| format!("result {} cannot be stored: {e}", result.result_id))?;
    if result.testcase.trim().is_empty() {
        return Err(format!(
            "result {} has an empty testcase (ResultsDB requires a name)",
            result.result_id
        ));
    }
    Ok(result)
}

/// Decode a job status, refusing one whose job id disagrees with the job it carries: storing it
/// would file the history under one job and the job's details under another, and one with a value
/// over its limit in [`taskbot::limits`].
pub fn decode_status(body: &[u8]) -> Result<JobStatus, String> {
    let status = JobStatus::from_json(body).map_err(|e| e.to_string())?;
    limits::check_status(&status)
        .map_err(|e| format!("status {} cannot be stored: {e}", status.status_id))?;
    if status.job_id != status.job.job_id {
        return Err(format!(
            "status {} is for job {} but carries job {}",
            status.status_id, status.job_id, status.job.job_id
        ));
    }
    Ok(status)
}

/// What to do with a message whose database write failed: dead-letter it, with the SQLSTATE, when
/// its content is the cause (retrying would loop forever and hold up every message behind it),
/// else retry after [`RETRY_DELAY`]. Nothing is acked before it is committed.
pub fn store_failure(what: &str, err: &StoreError) -> Disposition {
    if err.is_caused_by_data() {
        let code = err
            .sql_state()
            .map(|c| format!(" (SQLSTATE {c})"))
            .unwrap_or_default();
        Disposition::DeadLetter(format!("PostgreSQL refused {what}{code}: {err}"))
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
    let exchange = &config.reporter.fedora_messaging_exchange;
    let publishes = topology.sinks.contains(&Sink::FedoraMessaging);
    let check = |channel: lapin::Channel| async move {
        if !publishes {
            return Ok(());
        }
        let passive = lapin::options::ExchangeDeclareOptions {
            passive: true,
            ..Default::default()
        };
        channel
            .exchange_declare(
                exchange,
                lapin::ExchangeKind::Topic,
                passive,
                Default::default(),
            )
            .await
            .map_err(|err| {
                anyhow::anyhow!(
                    "reporter.fedora_messaging_exchange {exchange:?} cannot be used: {err}"
                )
            })
    };
    let name = "taskbot-reporter-setup";
    setup::declare_with_retry(&config.amqp, topology, name, shutdown, check).await
}

type Consumer<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// Starts the consumers of one run of the reporter: each sink's consume loop on its queue.
struct Consumers<'a> {
    config: &'a Config,
    topology: &'a Topology,
    shutdown: Shutdown,
    /// What every sink checks a message against before taking it.
    binding: Arc<Binding>,
}

impl<'a> Consumers<'a> {
    /// The consume loop of `sink` on `queue`, `concurrency` deliveries at a time.
    fn start(
        &self,
        queue: String,
        sink: &str,
        concurrency: usize,
        retry_delay: Duration,
        handler: Arc<dyn Handler>,
    ) -> Consumer<'a> {
        let spec = ConsumerSpec {
            queue,
            name: format!("taskbot-reporter-{sink}"),
            concurrency,
            retry_delay,
        };
        Box::pin(amqp::consume(
            &self.config.amqp,
            self.topology,
            spec,
            handler,
            self.shutdown.clone(),
        ))
    }

    /// The sinks that need no database, started at once: the JSON-lines file (when `jsonl` is
    /// open) and fedora-messaging (when enabled and publishing every result).
    fn without_db(&self, jsonl: Option<JsonlWriter>) -> Vec<Consumer<'a>> {
        let t = self.topology;
        let mut consumers = Vec::new();
        if let Some(writer) = jsonl {
            let sink = Arc::new(JsonlSink::new(writer, self.binding.clone()));
            consumers.push(self.start(t.jsonl_queue(), "jsonl", 1, RETRY_DELAY, sink));
        }
        if t.sinks.contains(&Sink::FedoraMessaging) && !fedora_messaging_needs_db(self.config) {
            consumers.push(self.fedora_messaging(None));
        }
        consumers
    }

    /// The fedora-messaging sink's consume loop, tracking changes of outcome in `changes` (when
    /// it publishes only those).
    fn fedora_messaging(&self, changes: Option<ChangeLog>) -> Consumer<'a> {
        let rc = &self.config.reporter;
        let sink = Arc::new(FedoraMessagingSink {
            exchange: rc.fedora_messaging_exchange.clone(),
            topic: rc.fedora_messaging_topic.clone(),
            schema: rc.fedora_messaging_schema.clone(),
            schema_package: rc.fedora_messaging_schema_package.clone(),
            priority: rc.fedora_messaging_priority,
            namespace: self.config.amqp.namespace.clone(),
            binding: self.binding.clone(),
            changes,
            artifacts_url: self.config.artifacts_url(),
        });
        let queue = self.topology.fedora_messaging_queue();
        self.start(queue, "fedora-messaging", 1, RETRY_DELAY, sink)
    }

    /// The sinks that need the database (once it is prepared): PostgreSQL (when enabled),
    /// ResultsDB (when `resultsdb` is configured) and fedora-messaging (when it publishes only
    /// changes).
    fn with_db(&self, stores: &Stores, resultsdb: Option<ResultsDbTarget>) -> Vec<Consumer<'a>> {
        let (t, config) = (self.topology, self.config);
        let mut consumers = Vec::new();
        if t.sinks.contains(&Sink::FedoraMessaging) && fedora_messaging_needs_db(config) {
            consumers.push(self.fedora_messaging(Some(ChangeLog {
                pool: stores.fedora_messaging_pool.clone(),
                mode: config.reporter.fedora_messaging_notify,
            })));
        }
        if t.sinks.contains(&Sink::Postgres) {
            // Results and statuses share the pool; each handler holds one connection at a time,
            // so half the pool each keeps them from waiting on each other.
            let concurrency = (config.postgres.pool_size / 2).max(1);
            let pool = stores.pool.clone();
            consumers.push(self.start(
                t.postgres_results_queue(),
                "postgres-results",
                concurrency,
                RETRY_DELAY,
                Arc::new(postgres::ResultsHandler {
                    pool: pool.clone(),
                    binding: self.binding.clone(),
                }),
            ));
            consumers.push(self.start(
                t.postgres_status_queue(),
                "postgres-status",
                concurrency,
                RETRY_DELAY,
                Arc::new(postgres::StatusHandler {
                    pool,
                    binding: self.binding.clone(),
                }),
            ));
        }
        if let Some((rdb, outcomes)) = resultsdb {
            let rc = &config.reporter;
            let sink = ResultsDbSink::new(
                stores.resultsdb_pool.clone(),
                rdb,
                config.job_page_template(),
                outcomes.clone(),
                rc.resultsdb_retry_max_secs,
                self.shutdown.clone(),
                self.binding.clone(),
            )
            .with_artifacts_url(config.artifacts_url());
            // The handler waits each result's own back-off before handing it back, so the
            // consume loop adds no pause of its own.
            let concurrency = rc.resultsdb_concurrency.max(1);
            let queue = t.resultsdb_queue();
            consumers.push(self.start(
                queue,
                "resultsdb",
                concurrency,
                Duration::ZERO,
                Arc::new(sink),
            ));
        }
        consumers
    }
}

/// Whether the fedora-messaging sink keeps state in PostgreSQL: when it publishes only changes.
fn fedora_messaging_needs_db(config: &Config) -> bool {
    config.reporter.fedora_messaging_notify != FedoraMessagingNotify::All
}

/// The reporter's database pools. The ResultsDB sink has a pool of its own: while ResultsDB
/// hangs, its handlers hold connections, and those must not be the ones the PostgreSQL sink needs.
struct Stores {
    pool: Pool,
    resultsdb_pool: Pool,
    /// The binding's checks of job records, from every sink: a pool of their own, so they never
    /// wait for the connections a sink's writes hold.
    jobs_pool: Pool,
    /// The fedora-messaging sink's record of outcomes (one delivery at a time: one connection).
    fedora_messaging_pool: Pool,
    /// The database's name, for logs (its URL may hold a password).
    database: String,
}

impl Stores {
    fn connect(config: &Config) -> anyhow::Result<Stores> {
        let mut resultsdb_pg = config.postgres.clone();
        resultsdb_pg.pool_size = config.reporter.resultsdb_concurrency.max(1);
        let mut fedora_messaging_pg = config.postgres.clone();
        fedora_messaging_pg.pool_size = 1;
        Ok(Stores {
            fedora_messaging_pool: db::connect_pool(&fedora_messaging_pg)?,
            pool: db::connect_pool(&config.postgres)?,
            resultsdb_pool: db::connect_pool(&resultsdb_pg)?,
            jobs_pool: db::connect_pool(&config.postgres)?,
            database: store::database_name(&config.postgres.url),
        })
    }

    fn close(&self) {
        self.pool.close();
        self.resultsdb_pool.close();
        self.jobs_pool.close();
        self.fedora_messaging_pool.close();
    }
}

/// The ResultsDB client when that sink is enabled, and the JSON-lines file opened when that one
/// is: what can be wrong in the configuration, checked before waiting for anything.
/// The ResultsDB client and what each outcome is posted as there.
type ResultsDbTarget = (ResultsDb, taskbot::outcomes::OutcomeMap);

fn open_sinks(config: &Config) -> anyhow::Result<(Option<ResultsDbTarget>, Option<JsonlWriter>)> {
    let (rc, sinks) = (&config.reporter, enabled_sinks(&config.reporter)?);
    let names: Vec<&str> = sinks.iter().map(|s| s.as_str()).collect();
    tracing::info!(sinks = ?names, "reporter sinks enabled");
    let resultsdb = match (&rc.resultsdb_url, sinks.contains(&Sink::Resultsdb)) {
        (Some(url), true) => {
            let timeout = Duration::from_secs(rc.resultsdb_timeout_secs.max(1));
            let rdb = ResultsDb::new(url, timeout, rc.resultsdb_auth_header.as_deref())?;
            let outcomes = rc
                .resultsdb_outcomes
                .resolve()
                .map_err(anyhow::Error::msg)?;
            // The credentials are never logged; only whether there are any.
            tracing::info!(url = %rdb.results_url(), outcomes = %outcomes.name,
                authenticated = rc.resultsdb_auth_header.is_some(),
                "results will be posted to ResultsDB");
            Some((rdb, outcomes))
        }
        _ => None,
    };
    let jsonl = match (&rc.jsonl_path, sinks.contains(&Sink::Jsonl)) {
        (Some(path), true) => Some(
            JsonlWriter::open(path, rc.jsonl_max_bytes, rc.jsonl_keep).map_err(|e| {
                anyhow::anyhow!("cannot open reporter.jsonl_path {}: {e}", path.display())
            })?,
        ),
        _ => None,
    };
    Ok((resultsdb, jsonl))
}

/// Prepare the database, then run the sinks that need it until shutdown. `Ok` at once when no
/// enabled sink needs it.
async fn run_with_db(
    consumers: &Consumers<'_>,
    stores: Stores,
    resultsdb: Option<ResultsDbTarget>,
    mut shutdown: Shutdown,
) -> anyhow::Result<()> {
    let sinks = &consumers.topology.sinks;
    let fedora_messaging =
        sinks.contains(&Sink::FedoraMessaging) && fedora_messaging_needs_db(consumers.config);
    if !sinks.contains(&Sink::Postgres) && resultsdb.is_none() && !fedora_messaging {
        return Ok(());
    }
    let migrate_pool = if sinks.contains(&Sink::Postgres) {
        &stores.pool
    } else {
        &stores.resultsdb_pool
    };
    let max_backoff = consumers.config.amqp.reconnect_max_secs;
    if !prepare_database(migrate_pool, &stores.database, max_backoff, &mut shutdown).await? {
        tracing::info!("shutdown requested before the database was ready");
        return Ok(());
    }
    let database = ops::global().readiness.dependency("PostgreSQL");
    database.set(true);
    let check_pool = db::check_pool(&consumers.config.postgres)?;
    let watch = watch_database(check_pool, database, shutdown.clone());
    let consume = futures::future::join_all(consumers.with_db(&stores, resultsdb));
    futures::future::join(consume, watch).await;
    stores.close();
    Ok(())
}

/// How often the reporter checks that PostgreSQL answers, for `/readyz`.
const DATABASE_CHECK_EVERY: Duration = Duration::from_secs(2);

/// Keep the reporter's `PostgreSQL` readiness current until shutdown: a `select 1` every
/// [`DATABASE_CHECK_EVERY`], within as long, on a connection of its own (the sinks' may all be
/// busy, and waiting for one would make a slow sink look like an unreachable database).
async fn watch_database(pool: Pool, ready: ops::ReadyFlag, mut shutdown: Shutdown) {
    while !shutdown.is_triggered() {
        let answered = tokio::time::timeout(DATABASE_CHECK_EVERY, db::ping(&pool)).await;
        let up = matches!(answered, Ok(Ok(())));
        if up != ready.get() {
            match up {
                true => tracing::info!("PostgreSQL answers again; ready"),
                false => tracing::warn!(?answered, "PostgreSQL does not answer; not ready"),
            }
        }
        ready.set(up);
        tokio::select! {
            _ = tokio::time::sleep(DATABASE_CHECK_EVERY) => {}
            _ = shutdown.wait() => {}
        }
    }
}

/// The binding of results to their jobs. Its job records are kept by the PostgreSQL sink; without
/// it only each message's sender can be checked, which every start says.
fn binding(config: &Config, topology: &Topology, stores: &Stores) -> Binding {
    let keeps_jobs = topology.sinks.contains(&Sink::Postgres);
    let binding = Binding::new(config, keeps_jobs.then(|| stores.jobs_pool.clone()));
    let senders = &binding.senders;
    tracing::info!(rules = %senders.rules, provisioner = %senders.provisioner,
        runners = ?senders.runners.all(), operator = %senders.operator,
        "results and statuses are accepted only from these broker users");
    if !keeps_jobs {
        tracing::warn!(
            "the postgres sink is not enabled, so no job records are kept: results are checked              by sender only, not against the job they claim (docs/security.md)"
        );
    }
    binding
}

/// Run until `shutdown`: declare the enabled sinks' queues, start the sinks that need no
/// database at once, prepare the database (when a sink needs it) and start the others.
pub async fn run(config: Config, mut shutdown: Shutdown) -> anyhow::Result<()> {
    // Check everything that can be wrong in the configuration before waiting for anything.
    let (resultsdb, jsonl) = open_sinks(&config)?;
    let stores = Stores::connect(&config)?;
    let topology = Topology::for_config(&config);
    if !declare_queues(&config, &topology, &mut shutdown).await? {
        tracing::info!("shutdown requested before the sink queues were declared");
        return Ok(());
    }
    let consumers = Consumers {
        config: &config,
        topology: &topology,
        shutdown: shutdown.clone(),
        binding: Arc::new(binding(&config, &topology, &stores)),
    };
    let without_db = futures::future::join_all(consumers.without_db(jsonl));
    let with_db = run_with_db(&consumers, stores, resultsdb, shutdown);
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
