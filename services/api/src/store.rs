//! The PostgreSQL side: read-only pools per request class, the errors handlers answer with, and a small builder for
//! the filtered queries the endpoints make.

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use deadpool_postgres::{Pool, PoolError};
use taskbot::config::PostgresConfig;
use taskbot::error_chain;
use taskbot::store::schema::READ_TABLES;
use taskbot::Config;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_postgres::types::ToSql;

/// The api's two request classes, each with connections of its own, so one class cannot starve
/// the other:
///
/// - store queries (every `/api/...` and dashboard read): `postgres.pool_size` connections, each
///   query cancelled after `api.statement_timeout_ms`, and at most `api.max_waiting_requests`
///   requests waiting for a connection (more are refused with 503 at once);
/// - health checks (`/readyz`, `/api/v2.0/healthcheck`): a small pool of their own answering
///   from a catalogue lookup that takes no table lock, so slow or blocked store queries cannot
///   make the api look dead.
pub struct Store {
    queries: Pool,
    health: Pool,
    /// One permit per store request being answered or waiting for a connection.
    permits: Arc<Semaphore>,
}

/// Connections the health checks keep: enough for a probe or two at once.
const HEALTH_POOL_SIZE: usize = 2;
/// Health checks are a catalogue lookup: anything slower means the database is in trouble.
const HEALTH_STATEMENT_TIMEOUT: Duration = Duration::from_secs(2);

impl Store {
    /// Both pools for `config.postgres.url`; connecting is lazy, so this fails only on an
    /// invalid URL. Every session is read-only: the api must never change the store.
    pub fn connect(config: &Config) -> anyhow::Result<Store> {
        let queries = connect_pool(
            &config.postgres,
            Duration::from_millis(config.api.statement_timeout_ms),
            Duration::from_secs(10),
        )?;
        let health_config = PostgresConfig {
            pool_size: HEALTH_POOL_SIZE,
            ..config.postgres.clone()
        };
        let health = connect_pool(
            &health_config,
            HEALTH_STATEMENT_TIMEOUT,
            Duration::from_secs(2),
        )?;
        let permits = config.postgres.pool_size.max(1) + config.api.max_waiting_requests;
        Ok(Store {
            queries,
            health,
            permits: Arc::new(Semaphore::new(permits)),
        })
    }

    /// A connection for a store query, or 503 at once when as many requests as allowed are
    /// already answered or waiting.
    pub async fn client(&self) -> Result<StoreClient, ApiError> {
        let permit = self.permits.clone().try_acquire_owned().map_err(|_| {
            tracing::warn!("api busy: every store connection is in use and the queue is full");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "api busy: too many requests are waiting for the database, retry later",
            )
        })?;
        let client = self.queries.get().await?;
        Ok(StoreClient {
            client,
            _permit: permit,
        })
    }

    /// Ok when the database answers and holds every table the api reads, asked through the
    /// health pool.
    pub async fn check_ready(&self) -> Result<(), ApiError> {
        check_ready(&self.health).await
    }

    /// Ok when the database answers `SELECT 1`, through the health pool.
    pub async fn check_alive(&self) -> Result<(), ApiError> {
        let client = self.health.get().await?;
        client.query_one("SELECT 1", &[]).await?;
        Ok(())
    }
}

/// A store connection, holding its request's place (see [`Store::client`]) until dropped.
pub struct StoreClient {
    client: deadpool_postgres::Object,
    _permit: OwnedSemaphorePermit,
}

impl std::ops::Deref for StoreClient {
    type Target = deadpool_postgres::Object;

    fn deref(&self) -> &Self::Target {
        &self.client
    }
}

/// A read-only pool for `config.url` whose sessions cancel statements after `statement_timeout`.
fn connect_pool(
    config: &PostgresConfig,
    statement_timeout: Duration,
    wait_timeout: Duration,
) -> anyhow::Result<Pool> {
    taskbot::store::connect_pool(
        config,
        &taskbot::store::PoolOptions {
            application_name: "taskbot-api",
            read_only: true,
            connect_timeout: Duration::from_secs(5),
            // A request facing a dead database gets a 503 quickly, not a hang.
            wait_timeout,
            create_timeout: Duration::from_secs(5),
            statement_timeout: Some(statement_timeout),
        },
    )
}

pub use taskbot::store::database_name;

/// An error answer: the status and `{"message": ...}`, the shape ResultsDB uses (its Python
/// client reads `message` from every failed answer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(serde_json::json!({"message": self.message})),
        )
            .into_response()
    }
}

impl From<PoolError> for ApiError {
    fn from(err: PoolError) -> ApiError {
        tracing::warn!(error = %error_chain(&err), "database unavailable");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("database unavailable: {}", error_chain(&err)),
        )
    }
}

impl From<tokio_postgres::Error> for ApiError {
    fn from(err: tokio_postgres::Error) -> ApiError {
        let code = err.code().map(|c| c.code().to_string());
        match code.as_deref() {
            // undefined_table: the reporter has not migrated this database yet.
            Some("42P01") => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store not ready: the reporter has not created the tables yet",
            ),
            // query_canceled: the statement ran (or waited for a lock) past the timeout.
            Some("57014") => {
                tracing::warn!(error = %error_chain(&err), "query cancelled by the statement timeout");
                ApiError::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    "query timeout: the database did not answer within the api's statement \
                     timeout (api.statement_timeout_ms); narrow the filters or retry later",
                )
            }
            // Data exceptions: the request's values (the only data in the api's queries) are
            // not valid for the database, e.g. a character PostgreSQL cannot store.
            Some(c) if c.starts_with("22") => ApiError::bad_request(format!(
                "invalid value in the request: {}",
                db_message(&err)
            )),
            // Connection trouble, server shutting down, too many connections: it may pass.
            Some(c) if c.starts_with("08") || c.starts_with("57") || c.starts_with("53") => {
                tracing::warn!(error = %error_chain(&err), "database unavailable");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("database unavailable: {}", error_chain(&err)),
                )
            }
            None if err.is_closed() => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("database unavailable: {}", error_chain(&err)),
            ),
            _ => {
                tracing::error!(error = %error_chain(&err), "query failed");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "database error")
            }
        }
    }
}

/// The database's own message of `err` (without the connection details of its chain).
fn db_message(err: &tokio_postgres::Error) -> String {
    err.as_db_error()
        .map_or_else(|| err.to_string(), |e| e.message().to_string())
}

/// Ok when the database answers and holds every table the api reads. `to_regclass` takes no
/// lock, so a table locked by a writer (or a migration) does not block it.
async fn check_ready(pool: &Pool) -> Result<(), ApiError> {
    let client = pool.get().await?;
    let names: Vec<String> = READ_TABLES.iter().map(|t| t.to_string()).collect();
    let row = client
        .query_one(
            "SELECT count(*) FROM unnest($1::text[]) AS t(name) WHERE to_regclass(t.name) IS NOT NULL",
            &[&names],
        )
        .await?;
    let present: i64 = row.try_get(0)?;
    if present as usize == READ_TABLES.len() {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store not ready: the reporter has not created the tables yet",
        ))
    }
}

/// A parameter of a dynamically built query.
pub type Param = Box<dyn ToSql + Sync + Send>;

/// The `WHERE` conditions of a query and their parameters, numbered as they are added.
#[derive(Default)]
pub struct Conditions {
    pub clauses: Vec<String>,
    pub params: Vec<Param>,
}

impl Conditions {
    /// Add a parameter; returns its placeholder (`$3`).
    pub fn param(&mut self, value: impl ToSql + Sync + Send + 'static) -> String {
        self.params.push(Box::new(value));
        format!("${}", self.params.len())
    }

    pub fn push(&mut self, clause: String) {
        self.clauses.push(clause);
    }

    /// `WHERE a AND b`, or nothing.
    pub fn where_sql(&self) -> String {
        if self.clauses.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", self.clauses.join(" AND "))
        }
    }

    pub fn refs(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.params
            .iter()
            .map(|p| p.as_ref() as &(dyn ToSql + Sync))
            .collect()
    }
}
