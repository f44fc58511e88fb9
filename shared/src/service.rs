//! What every service's `main` does once its flags are parsed, so each `main.rs` stays a few lines
//! and all services behave alike: a bad configuration (a malformed flag included: clap's own
//! usage errors exit with status 2 too) exits with status 2 and the list of bad keys; the service's secrets are read from their files ([`crate::secrets`]; a missing one exits
//! with status 2 too); logging is set up from the config; `/healthz`, `/readyz` and `/metrics` are served on the
//! service's `ops_listen` address ([`crate::ops`]); the service runs until SIGTERM or Ctrl-C; a
//! failure (an ops address already in use included) is logged and exits with status 1.

use std::future::Future;
use std::process::ExitCode;

use crate::config::{Config, ConfigError};
use crate::identity::Service;
use crate::ops;
use crate::shutdown::{self, Shutdown};
use crate::telemetry;

/// The `--ops-listen` flag of every service with ops endpoints (`#[command(flatten)]` it into the
/// service's flags), so the flag is spelt, documented and applied the same way everywhere.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct OpsArgs {
    /// Address of /healthz, /readyz and /metrics, as HOST:PORT; port 0 picks a free one (overrides
    /// the service's `ops_listen`, e.g. `runner.ops_listen`). Each service (and each runner) on a
    /// host needs its own.
    #[arg(long, value_name = "HOST:PORT")]
    pub ops_listen: Option<String>,
}

impl OpsArgs {
    /// The config override the flag makes for `service` (for [`Config::load`]), if it was given.
    pub fn override_for(&self, service: Service) -> Option<(&'static str, String)> {
        Some((service.ops_listen_key()?, self.ops_listen.clone()?))
    }
}

/// Whether `address` is `HOST:PORT` (`127.0.0.1:9100`, `[::]:0`, `localhost:8080`), what the
/// listening addresses (`ops_listen`, `api.listen`) take; else why not.
pub fn check_listen(address: &str) -> Result<(), String> {
    if address.parse::<std::net::SocketAddr>().is_ok() {
        return Ok(());
    }
    let bad =
        || format!("{address:?} is not HOST:PORT (e.g. 127.0.0.1:9100; port 0 picks a free one)");
    let (host, port) = address.rsplit_once(':').ok_or_else(bad)?;
    let host_ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    if host_ok && port.parse::<u16>().is_ok() {
        Ok(())
    } else {
        Err(bad())
    }
}

/// The listening addresses `service` uses, checked ([`check_listen`]): a malformed one (from a
/// flag, the file or the environment) is a bad configuration, refused before anything starts,
/// not a failure to listen found later.
pub fn check_addresses(service: Service, config: &Config) -> Result<(), ConfigError> {
    let (key, address) = match (service, config.ops_listen(service)) {
        (Service::Api, _) => ("api.listen (--listen)", config.api.listen.as_str()),
        (_, Some(address)) => (service.ops_listen_key().unwrap_or("ops_listen"), address),
        (_, None) => return Ok(()),
    };
    check_listen(address).map_err(|e| {
        let flag = if service == Service::Api {
            ""
        } else {
            " (--ops-listen)"
        };
        ConfigError::new(format!("{key}{flag}: {e}"))
    })
}

/// Run `service`: exit 2 on a bad `config`, serve its ops endpoints, run until a signal.
pub async fn main<F, Fut>(service: Service, config: Result<Config, ConfigError>, run: F) -> ExitCode
where
    F: FnOnce(Config, Shutdown) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let name = service.name();
    let config = match config.and_then(|c| check_addresses(service, &c).map(|()| c)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{name}: {e}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(&config.log);
    let config = match crate::secrets::resolve(config, Some(service.into())) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("{name}: {e}");
            return ExitCode::from(2);
        }
    };
    warn_about_guest(&config);
    // Kept until `run` returns; dropping it stops the endpoints.
    let _ops_server = match config.ops_listen(service) {
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

/// `guest` is RabbitMQ's administrator (which it accepts from localhost only): a task on the
/// broker's host that finds it may do anything. Said at every start, as the sandbox's `none` is.
fn warn_about_guest(config: &Config) {
    let user = crate::amqp::url_user(&config.amqp.url);
    if user == "guest" {
        tracing::warn!(
            user,
            "the broker user guest is for local development only: give every service its own \
             user (taskbot setup-users, docs/security.md)"
        );
    }
}

#[cfg(test)]
// figment's Jail closures return its own (large) error type; that is its API, not ours.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        ops: OpsArgs,
    }

    #[test]
    fn ops_listen_overrides_the_services_own_key() {
        let flags = Flags::try_parse_from(["x", "--ops-listen", "0.0.0.0:9999"]).unwrap();
        assert_eq!(
            flags.ops.override_for(Service::Runner),
            Some(("runner.ops_listen", "0.0.0.0:9999".to_string()))
        );
        assert_eq!(
            flags.ops.override_for(Service::Bridge),
            Some(("bridge.ops_listen", "0.0.0.0:9999".to_string()))
        );
        assert_eq!(
            flags.ops.override_for(Service::Api),
            None,
            "no ops endpoints"
        );
        // In a jail: other tests set TASKBOT_ variables, and a stray one would break `extract`.
        figment::Jail::expect_with(|_| {
            let rules = flags.ops.override_for(Service::Rules).unwrap();
            let config: Config = Config::figment(None, &[rules]).extract()?;
            assert_eq!(config.ops_listen(Service::Rules), Some("0.0.0.0:9999"));
            Ok(())
        });
        let none = Flags::try_parse_from(["x"]).unwrap();
        assert_eq!(none.ops.override_for(Service::Reporter), None);
    }

    #[test]
    fn listening_addresses_must_be_host_and_port() {
        for good in [
            "127.0.0.1:9100",
            "0.0.0.0:0",
            "[::]:8080",
            "localhost:8080",
            "ops-1.example:1",
        ] {
            assert_eq!(check_listen(good), Ok(()), "{good}");
        }
        for bad in [
            "nowhere:x",
            "8080",
            ":8080",
            "localhost",
            "a b:1",
            "http://h:1",
            "h:70000",
        ] {
            assert!(
                check_listen(bad).unwrap_err().contains("is not HOST:PORT"),
                "{bad}"
            );
        }
        let mut config = Config::default();
        config.runner.ops_listen = "nowhere:x".into();
        let err = check_addresses(Service::Runner, &config)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("runner.ops_listen (--ops-listen): \"nowhere:x\""),
            "{err}"
        );
        assert!(check_addresses(Service::Rules, &config).is_ok());
        config.api.listen = "8080".into();
        let err = check_addresses(Service::Api, &config)
            .unwrap_err()
            .to_string();
        assert!(err.contains("api.listen (--listen): \"8080\""), "{err}");
    }
}
