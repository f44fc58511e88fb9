use std::process::ExitCode;

use clap::Parser;
use taskbot::{service, Config};

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
    let config = Config::load(&overrides).and_then(|config| {
        config.runner_arch()?;
        Ok(config)
    });
    service::main("runner", config, taskbot_runner::run).await
}
