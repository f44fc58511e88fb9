//! `taskbot.yaml`: what a task repository tells the runner about itself.
//!
//! ```yaml
//! name: example
//! description: Checks that the item is a well-formed NVR.
//! run: sh ./check.sh          # run with `sh -c` in the clone, as an ordinary user would
//! results: results.yml        # where the task writes its ResultYAML (default)
//! timeout: 300                # seconds; capped by the runner's runner.task_timeout_secs
//! testcase: dist.example      # testcase of results that do not name one
//! ```
//!
//! The format is deliberately small and strict (unknown keys are refused): earlier systems changed
//! their task format twice and every change forced task authors to rewrite, so each key added
//! later must be an addition, and a misspelt key must fail loudly instead of being ignored.
//! `tasks/README.md` documents it for task authors.

use std::path::{Component, Path, PathBuf};

use serde::Deserialize;

/// The file name the runner looks for at the root of a task repository.
pub const TASK_FILE: &str = "taskbot.yaml";

/// The results file a task writes when `taskbot.yaml` does not name another.
pub const DEFAULT_RESULTS_FILE: &str = "results.yml";

/// The parsed `taskbot.yaml`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskFile {
    /// Short name of the task, for people and logs. Results do not use it: their default testcase
    /// comes from `testcase`, or from the task name the rules gave the job.
    pub name: String,
    /// What the task checks, for people browsing task repositories.
    #[serde(default)]
    pub description: Option<String>,
    /// The shell command to run (with `sh -c`, in the root of the clone). A string rather than an
    /// argument list so tasks can use pipes and `&&` like in a CI file.
    pub run: String,
    /// Path of the ResultYAML file the task writes, relative to the clone. Default `results.yml`.
    /// When the task writes none, the runner makes one result from the exit code.
    #[serde(default)]
    pub results: Option<String>,
    /// Longest the task may run, in seconds. The runner's `task_timeout_secs` caps it, so a task
    /// cannot hold a runner longer than its operator allows.
    #[serde(default)]
    pub timeout: Option<u64>,
    /// Testcase of the results the runner writes for the task (from the exit code, or CRASHED)
    /// and of ResultYAML entries without `checkname`. Default: the task's name in the rules
    /// (`JobRequest::default_testcase`), the name the runner already knows before it has cloned
    /// anything, so a task's crashes and its verdicts file under one testcase unless it says
    /// otherwise.
    #[serde(default)]
    pub testcase: Option<String>,
}

/// Why `taskbot.yaml` cannot be used; the text goes into a CRASHED result's note.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TaskFileError {
    #[error("the repository has no {TASK_FILE} at its root")]
    Missing,
    /// The YAML parser's message, which carries the line and column where it could tell.
    #[error("invalid {TASK_FILE}: {0}")]
    Invalid(String),
}

impl TaskFile {
    /// Parse and validate the file's text.
    pub fn parse(text: &str) -> Result<TaskFile, TaskFileError> {
        let task: TaskFile =
            serde_norway::from_str(text).map_err(|e| TaskFileError::Invalid(e.to_string()))?;
        task.validate().map_err(TaskFileError::Invalid)?;
        Ok(task)
    }

    /// Read `taskbot.yaml` from the root of a clone.
    pub fn load(clone_dir: &Path) -> Result<TaskFile, TaskFileError> {
        match std::fs::read_to_string(clone_dir.join(TASK_FILE)) {
            Ok(text) => TaskFile::parse(&text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(TaskFileError::Missing),
            Err(e) => Err(TaskFileError::Invalid(format!("cannot read it: {e}"))),
        }
    }

    /// Checks serde cannot express. Each message names the key.
    fn validate(&self) -> Result<(), String> {
        if self.name.trim().is_empty() {
            return Err("name: must not be empty".into());
        }
        if self.run.trim().is_empty() {
            return Err("run: must not be empty".into());
        }
        if self.timeout == Some(0) {
            return Err("timeout: must be at least 1 second".into());
        }
        if let Some(testcase) = &self.testcase {
            check_testcase(testcase).map_err(|e| format!("testcase: {e}"))?;
        }
        if let Some(results) = &self.results {
            relative_inside(results).map_err(|e| format!("results: {e}"))?;
        }
        Ok(())
    }

    /// The results file's path relative to the clone.
    pub fn results_path(&self) -> PathBuf {
        // Validated at parse time to stay inside the clone.
        PathBuf::from(self.results.as_deref().unwrap_or(DEFAULT_RESULTS_FILE))
    }

    /// How long the task may run: its own `timeout`, never more than the runner's cap.
    pub fn effective_timeout_secs(&self, runner_cap_secs: u64) -> u64 {
        let cap = runner_cap_secs.max(1);
        self.timeout.map_or(cap, |t| t.min(cap))
    }
}

/// A testcase becomes part of routing keys and ResultsDB names: dotted words, no spaces.
pub fn check_testcase(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
    {
        return Err(format!(
            "{name:?} contains {c:?}; use letters, digits, '.', '-' and '_'"
        ));
    }
    Ok(())
}

/// A path a task names must stay inside the directory it is relative to: the runner reads and
/// links what is there, and must not be pointed at its own files.
pub fn relative_inside(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("must not be empty".into());
    }
    let p = Path::new(path);
    if p.is_absolute() {
        return Err(format!("{path:?} must be a relative path"));
    }
    if p.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(format!("{path:?} must not contain '..'"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_file_gets_defaults() {
        let task = TaskFile::parse("name: example\nrun: ./check.sh\n").unwrap();
        assert_eq!(task.name, "example");
        assert_eq!(task.run, "./check.sh");
        assert_eq!(task.results_path(), PathBuf::from("results.yml"));
        assert_eq!(task.testcase, None);
        assert_eq!(task.effective_timeout_secs(3600), 3600);
    }

    #[test]
    fn full_file_is_read() {
        let task = TaskFile::parse(
            "name: example\ndescription: d\nrun: sh x.sh\nresults: out/r.yml\ntimeout: 30\ntestcase: dist.example\n",
        )
        .unwrap();
        assert_eq!(task.description.as_deref(), Some("d"));
        assert_eq!(task.results_path(), PathBuf::from("out/r.yml"));
        assert_eq!(task.testcase.as_deref(), Some("dist.example"));
        assert_eq!(task.effective_timeout_secs(3600), 30);
    }

    #[test]
    fn runner_cap_bounds_the_task_timeout() {
        let task = TaskFile::parse("name: t\nrun: x\ntimeout: 600\n").unwrap();
        assert_eq!(task.effective_timeout_secs(2), 2);
        assert_eq!(
            task.effective_timeout_secs(0),
            1,
            "a zero cap still means something"
        );
    }

    #[test]
    fn unknown_key_is_refused_with_its_position() {
        let err = TaskFile::parse("name: t\ncomand: x\n").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("unknown field `comand`"), "{text}");
        assert!(text.contains("line 2"), "{text}");
    }

    #[test]
    fn missing_run_is_refused() {
        let text = TaskFile::parse("name: t\n").unwrap_err().to_string();
        assert!(text.contains("missing field `run`"), "{text}");
    }

    #[test]
    fn broken_yaml_is_refused_with_line_and_column() {
        let text = TaskFile::parse("name: t\n  run: x\n")
            .unwrap_err()
            .to_string();
        assert!(text.starts_with("invalid taskbot.yaml:"), "{text}");
        assert!(text.contains("at line 2 column"), "{text}");
    }

    #[test]
    fn values_serde_cannot_check_are_refused_by_key() {
        let cases = [
            ("name: t\nrun: '  '\n", "run: must not be empty"),
            (
                "name: t\nrun: x\ntimeout: 0\n",
                "timeout: must be at least 1",
            ),
            (
                "name: t\nrun: x\nresults: /etc/passwd\n",
                "results: \"/etc/passwd\" must be a relative",
            ),
            (
                "name: t\nrun: x\nresults: ../r.yml\n",
                "results: \"../r.yml\" must not contain '..'",
            ),
            (
                "name: t\nrun: x\ntestcase: my test\n",
                "testcase: \"my test\" contains ' '",
            ),
        ];
        for (text, expected) in cases {
            let err = TaskFile::parse(text).unwrap_err().to_string();
            assert!(err.contains(expected), "{text:?} gave {err}");
        }
    }

    #[test]
    fn missing_file_says_so() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(TaskFile::load(dir.path()), Err(TaskFileError::Missing));
        std::fs::write(dir.path().join(TASK_FILE), "name: t\nrun: true\n").unwrap();
        assert_eq!(TaskFile::load(dir.path()).unwrap().run, "true");
    }
}
