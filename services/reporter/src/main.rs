use std::process::ExitCode;

use clap::Parser;
use taskbot::{shutdown, telemetry, Config, Shutdown};

/// Stores results and job histories in PostgreSQL and forwards results to ResultsDB.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// ResultsDB API root, e.g. http://resultsdb:5001/api/v2.0 (overrides
    /// `reporter.resultsdb_url`).
    #[arg(long)]
    resultsdb_url: Option<String>,
    /// PostgreSQL URL (overrides `postgres.url`).
    #[arg(long)]
    postgres_url: Option<String>,
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
    let config = match Config::load(&overrides) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("reporter: {e}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(&config.log);
    match taskbot_reporter::run(config, Shutdown::new(shutdown::signal())).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("reporter: {e:#}");
            ExitCode::FAILURE
        }
    }
}
