use std::process::ExitCode;

use clap::Parser;
use taskbot::service::{self, OpsArgs};
use taskbot::{Config, Service};

/// Feeds results and job statuses to its enabled sinks (`reporter.sinks`): PostgreSQL,
/// ResultsDB, a JSON-lines file, fedora-messaging. See docs/results.md.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// ResultsDB API root, e.g. http://resultsdb:5001/api/v2.0 (overrides
    /// `reporter.resultsdb_url`).
    #[arg(long, value_parser = url_of(&["http", "https"]))]
    resultsdb_url: Option<String>,
    /// PostgreSQL URL (overrides `postgres.url`).
    #[arg(long, value_parser = url_of(&["postgres", "postgresql"]))]
    postgres_url: Option<String>,
    #[command(flatten)]
    ops: OpsArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut overrides = Vec::new();
    if let Some(url) = cli.resultsdb_url {
        overrides.push(("reporter.resultsdb_url", url));
    }
    if let Some(url) = cli.postgres_url {
        overrides.push(("postgres.url", url));
    }
    overrides.extend(cli.ops.override_for(Service::Reporter));
    let config = Config::load(&overrides);
    service::main(Service::Reporter, config, taskbot_reporter::run).await
}

/// A flag's value parser accepting only URLs of `schemes` (`SCHEME://...`): anything else is a
/// usage error (clap's, exit status 2), not a connection failure found once running.
fn url_of(schemes: &'static [&'static str]) -> impl Fn(&str) -> Result<String, String> + Clone {
    move |text: &str| match text.split_once("://") {
        Some((scheme, rest)) if schemes.contains(&scheme) && !rest.is_empty() => {
            Ok(text.to_string())
        }
        _ => Err(format!("not a {}:// URL", schemes.join(":// or "))),
    }
}
