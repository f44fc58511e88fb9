use std::process::ExitCode;

use clap::Parser;
use taskbot::{service, Config};

/// Prepares what each job needs and puts it on the run queue of its arch.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// Address of /healthz, /readyz and /metrics, as HOST:PORT; port 0 picks a free one (overrides
    /// `provisioner.ops_listen`).
    #[arg(long, value_name = "HOST:PORT")]
    ops_listen: Option<String>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let overrides: Vec<(&str, String)> = cli
        .ops_listen
        .into_iter()
        .map(|address| ("provisioner.ops_listen", address))
        .collect();
    service::main(
        "provisioner",
        Config::load(&overrides),
        taskbot_provisioner::run,
    )
    .await
}
