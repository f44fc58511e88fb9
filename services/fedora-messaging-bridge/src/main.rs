use std::process::ExitCode;

use clap::Parser;
use taskbot::service::{self, OpsArgs};
use taskbot::{Config, Service};

/// Consumes Fedora's AMQP bus (fedora-messaging, on an external broker) and republishes every
/// message as a Taskbot event.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(flatten)]
    ops: OpsArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let service = Service::FedoraMessagingBridge;
    let overrides: Vec<_> = cli.ops.override_for(service).into_iter().collect();
    let config = Config::load(&overrides);
    service::main(service, config, taskbot_fedora_messaging_bridge::run).await
}
