//! The `taskbot` command line. One module per command group (`rules_cmd` for `taskbot rules …`,
//! `api_cmd` for `taskbot results` and `taskbot job`, which read the api service; `gate` for
//! `taskbot gate`, which answers from the api what Greenwave would decide; `ops_cmd` for
//! `status`, `watch`, `submit`, `replay` and `dlq`, which work on the broker);
//! [`cli`] holds the clap definitions of all of them, and [`run`] dispatches.
//!
//! Conventions every command follows, so scripts can rely on them: results go to stdout (with
//! `--json` where a machine reads them), errors to stderr; exit status 0 on success, 1 when the
//! input (a rules file, a message) is broken or unreadable, 2 for a bad configuration or bad
//! command-line usage (as the services do).

pub mod api_cmd;
pub mod cli;
pub mod datagrepper;
pub mod gate;
pub mod message_input;
pub mod ops_cmd;
pub mod rules_cmd;

use std::io::Write as _;
use std::process::ExitCode;

use cli::{Cli, Command, RulesCommand};

/// Why a command failed: the text for stderr and the exit status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub status: u8,
    /// One or more lines, printed as they are (a rules error keeps its `file:line:column:` start
    /// so that editors can jump to it).
    pub message: String,
}

impl Failure {
    /// Broken or unreadable input: exit status 1.
    pub fn input(message: impl Into<String>) -> Failure {
        Failure {
            status: 1,
            message: message.into(),
        }
    }

    /// Bad configuration: exit status 2.
    pub fn config(message: impl Into<String>) -> Failure {
        Failure {
            status: 2,
            message: message.into(),
        }
    }

    /// Bad usage (an argument clap cannot check: an unknown queue or arch, `--arg` without `=`):
    /// exit status 2, as clap's own usage errors.
    pub fn usage(message: impl Into<String>) -> Failure {
        Failure {
            status: 2,
            message: message.into(),
        }
    }
}

/// Run a parsed command line; prints its output and returns the exit status.
pub fn run(cli: Cli) -> ExitCode {
    // `gate` prints its answer whatever it is; its exit status says what the answer was.
    if let Command::Gate(args) = &cli.command {
        return match gate::gate(args) {
            Ok(report) => {
                let _ = std::io::stdout().lock().write_all(report.output.as_bytes());
                ExitCode::from(report.status)
            }
            Err(failure) => {
                eprintln!("{}", failure.message);
                ExitCode::from(failure.status)
            }
        };
    }
    let result = match cli.command {
        Command::Gate(_) => unreachable!("answered above"),
        Command::Rules(RulesCommand::Check(args)) => rules_cmd::check(&args),
        Command::Rules(RulesCommand::Test(args)) => rules_cmd::test(&args),
        Command::Results(args) => api_cmd::results(&args),
        Command::Job(args) => api_cmd::job(&args),
        Command::Status(args) => ops_cmd::status(&args),
        Command::Watch(args) => ops_cmd::watch(&args),
        Command::Submit(args) => ops_cmd::submit(&args),
        Command::Replay(args) => ops_cmd::replay(&args),
        Command::Dlq(args) => ops_cmd::dlq(&args),
        Command::SetupUsers(args) => ops_cmd::setup_users(&args),
    };
    match result {
        Ok(output) => {
            // A closed pipe (`taskbot rules test ... | head`) is not worth a panic or an error.
            let _ = std::io::stdout().lock().write_all(output.as_bytes());
            ExitCode::SUCCESS
        }
        Err(failure) => {
            eprintln!("{}", failure.message);
            ExitCode::from(failure.status)
        }
    }
}
