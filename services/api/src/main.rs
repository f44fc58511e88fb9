//! The `api` service: serves the results store over HTTP until SIGTERM or Ctrl-C.

use std::process::ExitCode;

use clap::Parser;
use taskbot::{Config, Service};

/// Serve Taskbot's results, jobs and artifacts over HTTP (ResultsDB v2.0-compatible reads under
/// /api/v2.0, jobs under /api/v1).
#[derive(Debug, Parser)]
#[command(name = "api", version)]
struct Cli {
    /// Address to listen on (overrides `api.listen`).
    #[arg(long, value_name = "HOST:PORT")]
    listen: Option<String>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut overrides = Vec::new();
    if let Some(listen) = cli.listen {
        overrides.push(("api.listen", listen));
    }
    taskbot::service::main(Service::Api, Config::load(&overrides), taskbot_api::run).await
}
