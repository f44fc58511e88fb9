//! The one place PostgreSQL pools are built: the reporter writes through one, the api reads
//! through another. Plain connections only (no TLS): a URL with `sslmode=require` fails to
//! connect.

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;

use crate::config::PostgresConfig;

/// How a service uses its pool.
#[derive(Debug, Clone)]
pub struct PoolOptions {
    /// `application_name` shown in `pg_stat_activity`, unless the URL sets one.
    pub application_name: &'static str,
    /// Every session read-only (`default_transaction_read_only`): for a service that must never
    /// change the store, so a bug in a query fails instead of writing.
    pub read_only: bool,
    /// Connect timeout, unless the URL sets one. Without it a host that drops packets blocks a
    /// caller for minutes (TCP's own timeout).
    pub connect_timeout: Duration,
    /// Longest wait for a free connection, and for a new one to be made: bounded, so a caller
    /// facing a dead database gets an error (retry, 503) instead of hanging.
    pub wait_timeout: Duration,
    pub create_timeout: Duration,
    /// PostgreSQL's `statement_timeout` for every session, if any: a query running longer (or
    /// waiting longer for a lock) is cancelled with SQLSTATE 57014. For a service whose queries
    /// are shaped by its callers (the api), so no request can keep a backend busy for long.
    pub statement_timeout: Option<Duration>,
}

/// A pool for `config.url`. Connecting is lazy: this fails only on an invalid URL.
pub fn connect_pool(config: &PostgresConfig, options: &PoolOptions) -> anyhow::Result<Pool> {
    let mut pg: tokio_postgres::Config = config
        .url
        .parse()
        .map_err(|e| anyhow::anyhow!("postgres.url is not a valid PostgreSQL URL: {e}"))?;
    if pg.get_connect_timeout().is_none() {
        pg.connect_timeout(options.connect_timeout);
    }
    if pg.get_application_name().is_none() {
        pg.application_name(options.application_name);
    }
    let mut settings = Vec::new();
    if options.read_only {
        settings.push("-c default_transaction_read_only=on".to_string());
    }
    if let Some(timeout) = options.statement_timeout {
        // At least 1 ms: 0 would mean "no timeout" to PostgreSQL.
        let ms = timeout.as_millis().max(1);
        settings.push(format!("-c statement_timeout={ms}"));
    }
    if !settings.is_empty() {
        let ours = settings.join(" ");
        let all = match pg.get_options() {
            Some(existing) => format!("{existing} {ours}"),
            None => ours,
        };
        pg.options(&all);
    }
    let manager = Manager::from_config(
        pg,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(config.pool_size.max(1))
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(options.wait_timeout))
        .create_timeout(Some(options.create_timeout))
        .recycle_timeout(Some(Duration::from_secs(5)))
        .build()
        .map_err(|e| anyhow::anyhow!("cannot build the PostgreSQL pool: {e}"))
}

/// Name of the database a URL points at (for logs: the URL itself may hold a password).
pub fn database_name(url: &str) -> String {
    url.parse::<tokio_postgres::Config>()
        .ok()
        .and_then(|c| c.get_dbname().map(str::to_string))
        .unwrap_or_else(|| "(default)".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_name_hides_the_rest_of_the_url() {
        assert_eq!(
            database_name("postgres://user:secret@db.example:5432/results"),
            "results"
        );
        assert_eq!(database_name("not a url"), "(default)");
    }
}
