use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use taskbot::{shutdown, telemetry, Config, Shutdown};

/// Turns bus events into job requests, following the rules file.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// Rules file (overrides `rules.file`).
    #[arg(long)]
    rules: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut overrides = Vec::new();
    if let Some(rules) = cli.rules {
        overrides.push(("rules.file", rules.display().to_string()));
    }
    let config = match Config::load(&overrides) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("rules: {e}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(&config.log);
    match taskbot_rules::run(config, Shutdown::new(shutdown::signal())).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("rules: {e:#}");
            ExitCode::FAILURE
        }
    }
}
