use std::process::ExitCode;

use clap::Parser;
use taskbot::service::{self, OpsArgs};
use taskbot::{Config, Service};

/// Prepares what each job needs and puts it on the run queue of its arch.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(flatten)]
    ops: OpsArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let overrides: Vec<_> = cli
        .ops
        .override_for(Service::Provisioner)
        .into_iter()
        .collect();
    let config = Config::load(&overrides);
    service::main(Service::Provisioner, config, taskbot_provisioner::run).await
}
