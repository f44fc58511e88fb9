use std::process::ExitCode;

use clap::Parser;
use taskbot::{shutdown, telemetry, Config, Shutdown};

/// Subscribes to fedmsg (ZeroMQ) and republishes every bus message as a Taskbot event.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// fedmsg endpoint to subscribe to, e.g. tcp://127.0.0.1:4001; repeat for several. Replaces
    /// `bridge.endpoints`.
    #[arg(long = "endpoint", value_name = "URL")]
    endpoints: Vec<String>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut config = match Config::load(&[]) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("fedmsg-bridge: {e}");
            return ExitCode::from(2);
        }
    };
    // Set after loading: `Config::load` overrides are single strings, this is a list.
    if !cli.endpoints.is_empty() {
        config.bridge.endpoints = cli.endpoints;
    }
    telemetry::init(&config.log);
    match taskbot_fedmsg_bridge::run(config, Shutdown::new(shutdown::signal())).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("fedmsg-bridge: {e:#}");
            ExitCode::FAILURE
        }
    }
}
