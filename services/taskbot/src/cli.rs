//! The command line, as clap reads it. Commands are grouped by what they act on
//! (`taskbot rules check`), so later groups (`status`, `submit`, `replay`, `dlq`, `results`,
//! `job`) are new variants of [`Command`] with their own module.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Operate and inspect a Taskbot deployment.
///
/// Configuration is read as the services read it (TASKBOT_CONFIG names a TOML file, TASKBOT_*
/// variables override it); command-line flags override both.
#[derive(Debug, Parser)]
#[command(name = "taskbot", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check a rules file, or try it on bus messages without publishing anything.
    #[command(subcommand)]
    Rules(RulesCommand),
}

#[derive(Debug, Subcommand)]
pub enum RulesCommand {
    /// Load and compile a rules file exactly as the rules service does; print "FILE: N rules OK"
    /// or the error as FILE:LINE:COLUMN: MESSAGE (exit status 1).
    Check(CheckArgs),
    /// Dry run: for each message, show which rules match and why (or why not), and the job
    /// requests the rules service would publish. Nothing is published.
    Test(TestArgs),
}

/// The deployment settings a rules file is compiled against (they default to the configuration).
#[derive(Debug, Clone, Default, Args)]
pub struct DeploymentArgs {
    /// The deployment's arches, comma-separated (overrides `arches`): `arches: all` means these,
    /// and a rule naming any other arch is refused.
    #[arg(long, value_delimiter = ',', value_name = "ARCH,...")]
    pub arches: Option<Vec<String>>,
    /// Base URL of relative task repositories (overrides `rules.task_base_url`).
    #[arg(long, value_name = "URL")]
    pub task_base_url: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct CheckArgs {
    /// The rules file.
    pub file: PathBuf,
    #[command(flatten)]
    pub deployment: DeploymentArgs,
}

#[derive(Debug, Clone, Args)]
pub struct TestArgs {
    /// The rules file.
    pub file: PathBuf,
    /// A file, or `-` for stdin, holding a fedmsg envelope ({"topic", "msg", "msg_id", ...}) or a
    /// Taskbot event ("schema": "taskbot.event.v1"); or several, one per line (JSONL) or as a
    /// JSON array.
    pub message: String,
    /// Print one JSON document instead of text.
    #[arg(long)]
    pub json: bool,
    /// Text output: leave out rules that did not match, and messages no rule matched (the
    /// summary still counts them). The JSON output is always complete.
    #[arg(long)]
    pub only_matching: bool,
    #[command(flatten)]
    pub deployment: DeploymentArgs,
}
