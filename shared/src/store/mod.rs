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

/// The SQLSTATE classes of errors that the values written cause, so that writing the same message
/// again can never succeed: 22 data exception (a NUL character, which `text` and `jsonb` cannot
/// hold; a malformed value), 23 integrity constraint violation (a row that contradicts one already
/// stored), 54 program limit exceeded (a value too big for its index: `index row size 3480
/// exceeds btree maximum 2704`). Transient conflicts (serialization failure 40001, deadlock
/// 40P01) are class 40 and are retried.
///
/// Class 42 (syntax error or access rule violation: a revoked grant, a dropped table) is not
/// here: our statements are fixed, so it is never one message's fault. Dead-lettering would move
/// every message to the dead-letter queue until an operator fixed the database; retrying keeps
/// them in order where they are and resumes by itself once it is fixed.
pub const POISON_CLASSES: &[&str] = &["22", "23", "54"];

/// Whether an error with SQLSTATE `code` is caused by the message being written
/// ([`POISON_CLASSES`]).
pub fn sqlstate_is_poison(code: &str) -> bool {
    POISON_CLASSES.iter().any(|class| code.starts_with(class))
}

impl StoreError {
    /// Whether the message being handled is the cause, so retrying can never succeed: an error of
    /// one of the [`POISON_CLASSES`], or a row we cannot read. Everything else (connection lost,
    /// server restarting or out of resources, lock timeouts, a misconfigured database) is worth
    /// retrying: the message waits, and a stuck queue is visible and loses nothing.
    pub fn is_caused_by_data(&self) -> bool {
        match self {
            StoreError::Query(err) => sql_state(err).is_some_and(sqlstate_is_poison),
            StoreError::Corrupt(_) => true,
            StoreError::Pool(_) | StoreError::NotPermitted(_) => false,
        }
    }

    /// The SQLSTATE PostgreSQL answered with, when it did.
    pub fn sql_state(&self) -> Option<&str> {
        match self {
            StoreError::Query(err) => sql_state(err),
            _ => None,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_constraint_and_limit_classes_are_poison_the_rest_is_retried() {
        for code in ["22021", "22P05", "22001", "23505", "23503", "54000"] {
            assert!(sqlstate_is_poison(code), "{code}");
        }
        // Connection, resources, operator intervention, rollbacks, configuration: not the
        // message's fault.
        for code in [
            "08006", "53300", "57P01", "40001", "40P01", "42501", "42P01", "XX000",
        ] {
            assert!(!sqlstate_is_poison(code), "{code}");
        }
    }
}
