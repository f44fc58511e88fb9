use std::process::ExitCode;

use clap::Parser;
use taskbot::{service, Config};

/// Prepares what each job needs and puts it on the run queue of its arch.
#[derive(Parser)]
#[command(version)]
struct Cli {}

#[tokio::main]
async fn main() -> ExitCode {
    Cli::parse();
    service::main("provisioner", Config::load(&[]), taskbot_provisioner::run).await
}
