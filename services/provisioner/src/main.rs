use std::process::ExitCode;

use clap::Parser;
use taskbot::{shutdown, telemetry, Config, Shutdown};

/// Prepares what each job needs and puts it on the run queue of its arch.
#[derive(Parser)]
#[command(version)]
struct Cli {}

#[tokio::main]
async fn main() -> ExitCode {
    Cli::parse();
    let config = match Config::load(&[]) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("provisioner: {e}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(&config.log);
    match taskbot_provisioner::run(config, Shutdown::new(shutdown::signal())).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("provisioner: {e:#}");
            ExitCode::FAILURE
        }
    }
}
