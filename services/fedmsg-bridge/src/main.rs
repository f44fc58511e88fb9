use std::process::ExitCode;

use clap::Parser;
use taskbot::{service, Config};

/// Subscribes to fedmsg (ZeroMQ) and republishes every bus message as a Taskbot event.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// fedmsg endpoint to subscribe to, e.g. tcp://127.0.0.1:4001; repeat for several. Replaces
    /// `bridge.endpoints`.
    #[arg(long = "endpoint", value_name = "URL")]
    endpoints: Vec<String>,
    /// Address of /healthz, /readyz and /metrics, as HOST:PORT; port 0 picks a free one (overrides
    /// `bridge.ops_listen`).
    #[arg(long, value_name = "HOST:PORT")]
    ops_listen: Option<String>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let overrides: Vec<(&str, String)> = cli
        .ops_listen
        .into_iter()
        .map(|address| ("bridge.ops_listen", address))
        .collect();
    let config = Config::load(&overrides).map(|mut config| {
        // Set after loading: `Config::load` overrides are single strings, this is a list.
        if !cli.endpoints.is_empty() {
            config.bridge.endpoints = cli.endpoints;
        }
        config
    });
    service::main("fedmsg-bridge", config, taskbot_fedmsg_bridge::run).await
}
