//! The PostgreSQL side: a read-only pool, the errors handlers answer with, and a small builder for
//! the filtered queries the endpoints make.

use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use deadpool_postgres::{Pool, PoolError};
use taskbot::config::PostgresConfig;
use taskbot::error_chain;
use taskbot::store::schema::READ_TABLES;
use tokio_postgres::types::ToSql;

/// A pool for `config.url`; connecting is lazy, so this fails only on an invalid URL.
///
/// Every session is read-only: the api must never change the store.
pub fn connect_pool(config: &PostgresConfig) -> anyhow::Result<Pool> {
    taskbot::store::connect_pool(
        config,
        &taskbot::store::PoolOptions {
            application_name: "taskbot-api",
            read_only: true,
            connect_timeout: Duration::from_secs(5),
            // A request facing a dead database gets a 503 quickly, not a hang.
            wait_timeout: Duration::from_secs(10),
            create_timeout: Duration::from_secs(5),
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

/// Ok when the database answers and holds every table the api reads.
pub async fn check_ready(pool: &Pool) -> Result<(), ApiError> {
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
