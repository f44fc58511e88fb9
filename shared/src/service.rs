//! What every service's `main` does once its flags are parsed, so each `main.rs` stays a few lines
//! and all services behave alike: a bad configuration exits with status 2 and the list of bad
//! keys; logging is set up from the config; the service runs until SIGTERM or Ctrl-C; a failure
//! is logged and exits with status 1.

use std::future::Future;
use std::process::ExitCode;

use crate::config::{Config, ConfigError};
use crate::shutdown::{self, Shutdown};
use crate::telemetry;

pub async fn main<F, Fut>(name: &str, config: Result<Config, ConfigError>, run: F) -> ExitCode
where
    F: FnOnce(Config, Shutdown) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let config = match config {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{name}: {e}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(&config.log);
    match run(config, Shutdown::new(shutdown::signal())).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("{name}: {e:#}");
            ExitCode::FAILURE
        }
    }
}
