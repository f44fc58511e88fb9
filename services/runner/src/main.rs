use std::process::ExitCode;

use clap::Parser;
use taskbot::service::{self, OpsArgs};
use taskbot::{Config, Service};

/// Runs the provisioned jobs of one arch: clones each task, runs it, publishes its results.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// Arch whose run queue to consume (overrides runner.arch; required unless that is set).
    #[arg(long)]
    arch: Option<String>,
    /// This runner's name among the runners of its host, in `runner/<arch>@<host>/<instance>`
    /// (overrides runner.instance; default: the process id).
    #[arg(long, value_name = "NAME")]
    instance: Option<String>,
    #[command(flatten)]
    ops: OpsArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut overrides: Vec<_> = cli
        .arch
        .map(|arch| ("runner.arch", arch))
        .into_iter()
        .collect();
    overrides.extend(cli.instance.map(|name| ("runner.instance", name)));
    overrides.extend(cli.ops.override_for(Service::Runner));
    let config = Config::load(&overrides).and_then(|config| {
        taskbot_runner::configured_arch(&config)?;
        taskbot_runner::configured_instance(&config)?;
        Ok(config)
    });
    service::main(Service::Runner, config, taskbot_runner::run).await
}
