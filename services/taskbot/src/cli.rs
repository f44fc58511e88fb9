//! The command line, as clap reads it. Commands are grouped by what they act on
//! (`taskbot rules check`, `taskbot results`), so later groups (`status`, `submit`, `replay`,
//! `dlq`) are new variants of [`Command`] with their own module.

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
    /// List results from the api (newest first): its ResultsDB-compatible `/api/v2.0/results`.
    Results(ResultsArgs),
    /// Show one job from the api: its state history, results and log links.
    Job(JobArgs),
    /// What Greenwave's PassingTestCaseRule would decide for an item, from the api: each
    /// required testcase (per scenario and arch) satisfied, failed, missing, queued or running.
    /// Exit status 0 when all are satisfied, 3 when one failed, 4 when one is still missing,
    /// queued or running.
    Gate(GateArgs),
    /// One screen of the deployment's state: every stage's queue (waiting, being worked on,
    /// consumers, rates, dead letters) from RabbitMQ's management API, runners per arch, and jobs
    /// per state from the api.
    Status(StatusArgs),
    /// `status`, redrawn every few seconds until Ctrl-C.
    Watch(WatchArgs),
    /// Schedule a task for an item by hand (as a rule would, with the rule name `manual`).
    Submit(SubmitArgs),
    /// Feed recorded bus messages into the events exchange, as the bridges would: a file (fedmsg
    /// envelopes or fedora-messaging's serialized messages, as JSON lines or a JSON array, or a
    /// datagrepper page {"raw_messages": [...]}), or a period fetched from datagrepper
    /// (--datagrepper URL --since T --until T) to backfill an outage. Events keep the messages'
    /// ids, so what was already seen schedules nothing twice.
    Replay(ReplayArgs),
    /// Inspect dead letters, put them back where they came from, or delete them.
    Dlq(DlqArgs),
    /// Make (or update) one broker user per service (the runners: one per arch) with only the
    /// permissions it needs, declare the whole topology, make the database roles (the reporter
    /// writes, the api reads) and migrate the schema; passwords are generated into files (mode 0600) and the configuration
    /// naming them is printed. Run with an administrator's login (docs/security.md).
    SetupUsers(SetupUsersArgs),
}

#[derive(Debug, Clone, Args)]
pub struct SetupUsersArgs {
    /// Where the password files are (made with mode 0700; files already there are kept).
    #[arg(long, value_name = "DIR", default_value = "/etc/taskbot/secrets")]
    pub secrets_dir: PathBuf,
    /// Leave PostgreSQL alone (only the broker users).
    #[arg(long)]
    pub no_database: bool,
    /// Remove the namespace's users (and database roles) instead.
    #[arg(long)]
    pub delete: bool,
}

#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(Debug, Clone, Args)]
pub struct WatchArgs {
    /// Seconds between two refreshes.
    #[arg(long, default_value_t = 2)]
    pub interval: u64,
    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(Debug, Clone, Args)]
pub struct SubmitArgs {
    /// The task's name (also the default testcase of its results), e.g. `rpmlint`.
    #[arg(long)]
    pub task: String,
    /// Clone URL of the task's repository (it must be in the runners' `allowed_repos`).
    #[arg(long)]
    pub repo: String,
    /// Branch, tag or commit of the task to run.
    #[arg(long = "ref", default_value = "main")]
    pub git_ref: String,
    /// What to check, e.g. an NVR.
    #[arg(long)]
    pub item: String,
    /// The item's type.
    #[arg(long, default_value = "koji_build")]
    pub item_type: String,
    /// Arches to run on (one job each), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "noarch")]
    pub arch: Vec<String>,
    /// A job argument KEY=VALUE (repeatable); tasks see it as TASKBOT_ARG_KEY.
    #[arg(long)]
    pub arg: Vec<String>,
    /// Priority 0 (default) to 9.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=9))]
    pub priority: u8,
    /// Print the job requests as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Args)]
pub struct ReplayArgs {
    /// The recorded messages: a file, or `-` for stdin (not with --datagrepper).
    #[arg(
        required_unless_present = "datagrepper",
        conflicts_with = "datagrepper"
    )]
    pub file: Option<String>,
    /// Fetch the messages of --since..--until from this datagrepper instead, e.g.
    /// https://apps.fedoraproject.org/datagrepper
    #[arg(long, value_name = "URL", requires_all = ["since", "until"])]
    pub datagrepper: Option<String>,
    /// Start of the period (RFC 3339, e.g. 2026-03-01T10:00:00Z, or UNIX seconds).
    #[arg(long, value_name = "TIME", requires = "datagrepper")]
    pub since: Option<String>,
    /// End of the period.
    #[arg(long, value_name = "TIME", requires = "datagrepper")]
    pub until: Option<String>,
    /// Only this topic (repeatable); default every topic.
    #[arg(long, value_name = "TOPIC", requires = "datagrepper")]
    pub topic: Vec<String>,
}

#[derive(Debug, Clone, Args)]
pub struct DlqArgs {
    #[command(subcommand)]
    pub command: DlqCommand,
    /// Only this queue's dead letters (`rules`, `run.x86_64`, `fedmsg-bridge`, ... or the full
    /// queue name).
    #[arg(long, global = true)]
    pub queue: Option<String>,
    /// How many messages `show` prints and `retry` moves, per queue.
    #[arg(long, global = true, default_value_t = 10)]
    pub limit: usize,
    /// `purge`: yes, delete them.
    #[arg(long, global = true)]
    pub yes: bool,
    /// Print JSON (`list` and `show`).
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Clone, Subcommand)]
pub enum DlqCommand {
    /// How many dead letters each queue holds.
    List,
    /// The dead letters themselves (left in place): reason, routing key, start of the body.
    Show,
    /// Put dead letters back on the queue that refused them (each removed from the dead-letter
    /// queue only once the broker confirmed it back): after fixing what made them fail.
    Retry,
    /// Delete dead letters for good (needs --yes).
    Purge,
}

/// Where the `api` service is.
#[derive(Debug, Clone, Default, Args)]
pub struct ApiArgs {
    /// Base URL of the api (default: `api.public_url` from the configuration, else
    /// http://127.0.0.1:8080).
    #[arg(long, value_name = "URL")]
    pub api: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct ResultsArgs {
    /// Only results for this item (an NVR, an update alias, ...).
    #[arg(long)]
    pub item: Option<String>,
    /// Only this testcase; `*` is a wildcard (`dist.*`).
    #[arg(long)]
    pub testcase: Option<String>,
    /// Only these outcomes, comma-separated (PASSED, INFO, FAILED, NEEDS_INSPECTION, ABORTED,
    /// CRASHED).
    #[arg(long, value_name = "OUTCOME,...")]
    pub outcome: Option<String>,
    /// How many results to show at most.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub limit: u32,
    /// Print the api's JSON answer instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Show whole notes (a CRASHED note holds the end of the job's log); by default a note is
    /// cut to its first line.
    #[arg(long)]
    pub full: bool,
    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(Debug, Clone, Args)]
pub struct GateArgs {
    /// The item: an NVR (koji_build), an update alias (bodhi_update) or a compose id.
    pub item: String,
    /// The item's type (Greenwave's subject type).
    #[arg(long = "type", value_name = "TYPE", default_value = "koji_build",
          value_parser = ["koji_build", "bodhi_update", "compose"])]
    pub item_type: String,
    /// A testcase that must pass (repeatable), in every scenario and arch it has results for.
    #[arg(long, value_name = "NAME")]
    pub testcase: Vec<String>,
    /// A Greenwave policy file or a dist-git gating.yaml (repeatable): its
    /// `!PassingTestCaseRule`s (with their `scenario`) in the policies for the item's type.
    #[arg(long, value_name = "FILE")]
    pub policy: Vec<PathBuf>,
    /// Only the policies of this decision context (e.g. bodhi_update_push_stable).
    #[arg(long, value_name = "CONTEXT")]
    pub decision_context: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(Debug, Clone, Args)]
pub struct JobArgs {
    /// The job id (a UUID, as shown by `taskbot results` and in results' groups).
    pub id: String,
    /// Print the api's JSON answer instead of text.
    #[arg(long)]
    pub json: bool,
    /// Show whole notes and details; by default each is cut to its first line.
    #[arg(long)]
    pub full: bool,
    #[command(flatten)]
    pub api: ApiArgs,
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
