use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use taskbot::{service, Config};

/// Turns bus events into job requests, following the rules file.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// Rules file (overrides `rules.file`).
    #[arg(long)]
    rules: Option<PathBuf>,
    /// Address of /healthz, /readyz and /metrics, as HOST:PORT; port 0 picks a free one (overrides
    /// `rules.ops_listen`).
    #[arg(long, value_name = "HOST:PORT")]
    ops_listen: Option<String>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut overrides = Vec::new();
    if let Some(rules) = cli.rules {
        overrides.push(("rules.file", rules.display().to_string()));
    }
    if let Some(address) = cli.ops_listen {
        overrides.push(("rules.ops_listen", address));
    }
    service::main("rules", Config::load(&overrides), taskbot_rules::run).await
}
