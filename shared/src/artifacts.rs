//! The layout of a job's artifacts directory: what the runner leaves in
//! `<runner.artifacts_dir>/<job id>/` (published at `<runner.artifacts_url>/<job id>/` when the
//! operator serves it) and what the api, the dashboard and people look for there.
//!
//! One place for the names, so the runner that writes them and the readers cannot drift apart.
//! `docs/tasks.md` ("Logs and artifacts") describes the layout for task authors. Everything else
//! in the directory is the task's own: what it wrote to `$TASKBOT_ARTIFACTS` and the files its
//! `artifacts` globs matched.

/// The job's combined log: the commit and mirror fetch, download progress, each step's command,
/// output and end, the artifacts kept. Every result's `log_url` links it, and a CRASHED note quotes
/// its last lines.
pub const TASK_LOG: &str = "task.log";

/// The events the task announced (`$TASKBOT_EVENTS`), one JSON object per line. Kept with the
/// artifacts so what a task announced can be looked at afterwards.
pub const EVENTS_FILE: &str = "events.jsonl";

/// The folder of each step's own log (stdout and stderr), named by [`step_log_name`]. A result
/// about a step that failed or timed out links its log as `step_log`.
pub const STEPS_DIR: &str = "steps";

/// The file name, in [`STEPS_DIR`], of the log of the `number`-th step run (counted from 1 across
/// all phases, in the order they ran) named `name`: `02-setup.log`.
pub fn step_log_name(number: usize, name: &str) -> String {
    format!("{number:02}-{name}.log")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_logs_are_numbered_in_running_order() {
        assert_eq!(step_log_name(2, "setup"), "02-setup.log");
        assert_eq!(step_log_name(12, "run-3"), "12-run-3.log");
    }
}
