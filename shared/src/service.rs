//! What every service's `main` does once its flags are parsed, so each `main.rs` stays a few lines
//! and all services behave alike: a bad configuration exits with status 2 and the list of bad
//! keys; logging is set up from the config; `/healthz`, `/readyz` and `/metrics` are served on the
//! service's `ops_listen` address ([`crate::ops`]); the service runs until SIGTERM or Ctrl-C; a
//! failure (an ops address already in use included) is logged and exits with status 1.

use std::future::Future;
use std::process::ExitCode;

use crate::config::{Config, ConfigError};
use crate::ops;
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
    // Kept until `run` returns; dropping it stops the endpoints.
    let _ops_server = match config.ops_listen(name) {
        Some(address) => match ops::serve(address, ops::global().clone()).await {
            Ok(server) => {
                ops::global()
                    .registry
                    .gauge(
                        "taskbot_service_info",
                        "The service running, and its version (always 1).",
                        &["service", "version"],
                    )
                    .with(&[name, env!("CARGO_PKG_VERSION")])
                    .set(1);
                Some(server)
            }
            Err(e) => {
                tracing::error!("{e:#}");
                eprintln!("{name}: {e:#}");
                return ExitCode::FAILURE;
            }
        },
        None => None,
    };
    match run(config, Shutdown::new(shutdown::signal())).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("{name}: {e:#}");
            ExitCode::FAILURE
        }
    }
}
