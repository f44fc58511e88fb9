use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use taskbot::service::{self, OpsArgs};
use taskbot::{Config, Service};

/// Turns bus events into job requests, following the rules file.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// Rules file (overrides `rules.file`).
    #[arg(long)]
    rules: Option<PathBuf>,
    #[command(flatten)]
    ops: OpsArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut overrides = Vec::new();
    if let Some(rules) = cli.rules {
        overrides.push(("rules.file", rules.display().to_string()));
    }
    overrides.extend(cli.ops.override_for(Service::Rules));
    service::main(Service::Rules, Config::load(&overrides), taskbot_rules::run).await
}
