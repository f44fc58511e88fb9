//! The reporter's pool on the results store (schema, migrations and writes are
//! [`taskbot::store`]'s).

use std::time::Duration;

use deadpool_postgres::Pool;
use taskbot::config::PostgresConfig;

/// A pool for `config.url`. Connecting is lazy: this fails only on an invalid URL.
pub fn connect_pool(config: &PostgresConfig) -> anyhow::Result<Pool> {
    taskbot::store::connect_pool(
        config,
        &taskbot::store::PoolOptions {
            application_name: "taskbot-reporter",
            read_only: false,
            connect_timeout: Duration::from_secs(10),
            // A handler facing a dead database returns Retry instead of hanging.
            wait_timeout: Duration::from_secs(30),
            create_timeout: Duration::from_secs(15),
            statement_timeout: None,
        },
    )
}

/// A pool of one connection for the readiness check ([`ping`]): never shared with the sinks.
pub fn check_pool(config: &PostgresConfig) -> anyhow::Result<Pool> {
    let config = PostgresConfig {
        pool_size: 1,
        ..config.clone()
    };
    connect_pool(&config)
}

/// `select 1`: whether PostgreSQL answers.
pub async fn ping(pool: &Pool) -> anyhow::Result<()> {
    let client = pool.get().await?;
    client.simple_query("select 1").await?;
    Ok(())
}
