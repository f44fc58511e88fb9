//! The results store in PostgreSQL (feature `postgres`): its schema and migrations
//! ([`schema`]), the writes made to it ([`write`]), and the pools services reach it through
//! ([`pool`]). The reporter writes the store, the api reads it: this module is the contract
//! between them.

pub mod jobs;
pub mod pool;
pub mod roles;
pub mod schema;
pub mod write;

use deadpool_postgres::PoolError;

pub use jobs::{job_record, record_dispatched, record_requested, JobRecord};
pub use pool::{connect_pool, database_name, PoolOptions};
pub use schema::{migrate, MIGRATIONS};
pub use write::{
    insert_result, lock_delivery, record_delivery, record_status, status_supersedes, Delivery,
    StatusWrite,
};

/// A database operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No connection could be had: the database is down, unreachable, or refuses us.
    #[error("cannot get a database connection: {}", crate::error_chain(.0))]
    Pool(#[from] PoolError),
    #[error("database error: {}", crate::error_chain(.0))]
    Query(#[from] tokio_postgres::Error),
    /// A stored row this version cannot read back (edited by hand, or by a newer version).
    #[error("unreadable row: {0}")]
    Corrupt(String),
    /// This role may not do it (a migration run as the reporter's role): waiting does not help.
    #[error("not permitted: {0}")]
    NotPermitted(String),
}

impl StoreError {
    /// Whether the message being handled is the cause, so retrying can never succeed: PostgreSQL's
    /// class 22 "data exception" (e.g. a NUL character, which `text` and `jsonb` cannot hold), or
    /// a row we cannot read. Everything else (connection lost, server restarting, lock timeouts,
    /// even bugs in our SQL) is worth retrying: a stuck queue is visible and loses nothing.
    pub fn is_caused_by_data(&self) -> bool {
        match self {
            StoreError::Query(err) => sql_state(err).is_some_and(|code| code.starts_with("22")),
            StoreError::Corrupt(_) => true,
            StoreError::Pool(_) | StoreError::NotPermitted(_) => false,
        }
    }

    /// Whether waiting may help: no connection, or a server-side condition that passes (class 08
    /// connection exception, 53 insufficient resources, 57 operator intervention such as a
    /// restart, 40 transaction rollback), or an I/O error with no SQLSTATE at all.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Pool(_) => true,
            StoreError::Query(err) => match sql_state(err) {
                None => true,
                Some(code) => ["08", "40", "53", "57"]
                    .iter()
                    .any(|class| code.starts_with(class)),
            },
            StoreError::Corrupt(_) | StoreError::NotPermitted(_) => false,
        }
    }
}

fn sql_state(err: &tokio_postgres::Error) -> Option<&str> {
    err.code().map(|c| c.code())
}
