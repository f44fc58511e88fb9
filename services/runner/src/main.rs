use std::process::ExitCode;

use clap::Parser;
use taskbot::{shutdown, telemetry, Config, Shutdown};

/// Runs the provisioned jobs of one arch: clones each task, runs it, publishes its results.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// Arch whose run queue to consume (overrides runner.arch; required unless that is set).
    #[arg(long)]
    arch: Option<String>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let overrides: Vec<(&str, String)> = cli
        .arch
        .into_iter()
        .map(|arch| ("runner.arch", arch))
        .collect();
    let config = match Config::load(&overrides) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("runner: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = config.runner_arch() {
        eprintln!("runner: {e}");
        return ExitCode::from(2);
    }
    telemetry::init(&config.log);
    match taskbot_runner::run(config, Shutdown::new(shutdown::signal())).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("runner: {e:#}");
            ExitCode::FAILURE
        }
    }
}
