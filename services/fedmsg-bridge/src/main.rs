use std::process::ExitCode;

use clap::Parser;
use taskbot::service::{self, OpsArgs};
use taskbot::{Config, Service};

/// Subscribes to fedmsg (ZeroMQ) and republishes every bus message as a Taskbot event.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// fedmsg endpoint to subscribe to, e.g. tcp://127.0.0.1:4001; repeat for several. Replaces
    /// `bridge.endpoints`.
    #[arg(long = "endpoint", value_name = "URL")]
    endpoints: Vec<String>,
    #[command(flatten)]
    ops: OpsArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let overrides: Vec<_> = cli.ops.override_for(Service::Bridge).into_iter().collect();
    let config = Config::load(&overrides).map(|mut config| {
        // Set after loading: `Config::load` overrides are single strings, this is a list.
        if !cli.endpoints.is_empty() {
            config.bridge.endpoints = cli.endpoints;
        }
        config
    });
    let config = config.and_then(|config| {
        taskbot_fedmsg_bridge::check_config(&config.bridge)?;
        Ok(config)
    });
    service::main(Service::Bridge, config, taskbot_fedmsg_bridge::run).await
}
