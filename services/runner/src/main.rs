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
    /// Address of /healthz, /readyz and /metrics, as HOST:PORT; port 0 picks a free one (overrides
    /// `runner.ops_listen`). Each runner on a host needs its own.
    #[arg(long, value_name = "HOST:PORT")]
    ops_listen: Option<String>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let overrides: Vec<(&str, String)> = cli
        .arch
        .map(|arch| ("runner.arch", arch))
        .into_iter()
        .chain(cli.ops_listen.map(|address| ("runner.ops_listen", address)))
        .collect();
    let config = Config::load(&overrides).and_then(|config| {
        config.runner_arch()?;
        Ok(config)
    });
    service::main("runner", config, taskbot_runner::run).await
}
