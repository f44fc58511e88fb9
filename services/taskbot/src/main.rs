//! `taskbot`: the command line for operators and rule writers. Everything lives in the library
//! (`taskbot_cli`) so that it is tested there; this only parses the arguments.

use std::process::ExitCode;

use clap::Parser;
use taskbot_cli::cli::Cli;

fn main() -> ExitCode {
    taskbot_cli::run(Cli::parse())
}
