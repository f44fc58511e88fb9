//! Secrets for tasks (`[runner.secrets.<name>]`): which jobs may have each, and reading their
//! values.
//!
//! The values live only on the runner's host, in files the operator names; no message ever
//! carries one. A job gets a secret when its task's repository is under one of the secret's
//! `repos` (the repository decides which code runs) and, when those lists are set, its task name
//! and rule are listed. All three come from the job message, which the rules service writes from
//! the operator's rules file and the provisioner forwards: they are as trustworthy as whoever may
//! publish to the run queue. Naming the repository means a forged message can at most run an
//! allowed repository's own code with the secret (at a ref of the forger's choice), never
//! arbitrary code; checking that run messages come from the provisioner's broker user (the
//! AMQP `user_id`) closes the rest.
//!
//! Each value is read again for every job that gets it, so a rotated token is used from the next
//! job on without a restart; the runner checks every file once at start, so a missing or
//! unreadable file is a start error rather than a surprise on the first job.
//!
//! The values are never printed: [`Delivered`]'s `Debug` shows the name only.

use std::path::Path;

use taskbot::config::{RunnerConfig, SandboxMode, TaskSecret};
use taskbot::messages::JobRequest;

/// Largest secret file read: secrets are tokens and keys, not data.
pub const MAX_SECRET_BYTES: u64 = 64 * 1024;
/// Shortest value accepted: a shorter one would be redacted wherever it happens to occur in a
/// log, mangling it, and is too weak to be worth protecting.
pub const MIN_SECRET_BYTES: usize = 8;
/// Where the secret files are inside the sandbox (a private, read-only tmpfs);
/// `$TASKBOT_SECRETS`.
pub const SANDBOX_SECRETS_DIR: &str = "/run/taskbot-secrets";
/// The variable naming [`SANDBOX_SECRETS_DIR`], set for jobs that get a secret.
pub const SECRETS_ENV: &str = "TASKBOT_SECRETS";

/// A secret handed to one job.
#[derive(Clone)]
pub struct Delivered {
    pub name: String,
    /// The file's content, as the task gets it in `$TASKBOT_SECRETS/<name>`.
    pub value: Vec<u8>,
    /// The variable that also holds it (the value without surrounding blank space).
    pub env: Option<String>,
}

impl Delivered {
    /// The value as it is meant (surrounding blank space, such as a final newline, dropped):
    /// what a variable holds and what redaction looks for.
    pub fn trimmed(&self) -> &[u8] {
        self.value.trim_ascii()
    }
}

impl std::fmt::Debug for Delivered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivered")
            .field("name", &self.name)
            .field("env", &self.env)
            .finish_non_exhaustive()
    }
}

/// Whether `job` may receive `secret`.
pub fn allowed(secret: &TaskSecret, job: &JobRequest) -> bool {
    crate::repo_url::allowed(&job.task.repo, &secret.repos)
        && (secret.tasks.is_empty() || secret.tasks.contains(&job.task.name))
        && (secret.rules.is_empty() || secret.rules.contains(&job.rule))
}

/// The secrets `job` gets, read now; `Err` (a CRASHED reason naming the secret and its file,
/// never its value) when one cannot be read.
pub fn for_job(settings: &RunnerConfig, job: &JobRequest) -> Result<Vec<Delivered>, String> {
    settings
        .secrets
        .iter()
        .filter(|(_, secret)| allowed(secret, job))
        .map(|(name, secret)| load(name, secret))
        .collect()
}

/// Read one secret and check its value can be delivered as configured.
pub fn load(name: &str, secret: &TaskSecret) -> Result<Delivered, String> {
    let value = read_capped(&secret.file).map_err(|e| {
        format!(
            "runner.secrets.{name}.file: cannot read {}: {e}",
            secret.file.display()
        )
    })?;
    let delivered = Delivered {
        name: name.to_string(),
        value,
        env: secret.env.clone(),
    };
    let problem = if delivered.trimmed().len() < MIN_SECRET_BYTES {
        Some(format!(
            "the value is shorter than {MIN_SECRET_BYTES} bytes, too short to redact safely"
        ))
    } else if delivered.env.is_some() && delivered.trimmed().contains(&0) {
        Some("the value holds a NUL byte, which no environment variable can".into())
    } else {
        None
    };
    match problem {
        Some(problem) => Err(format!(
            "runner.secrets.{name}.file: {}: {problem}",
            secret.file.display()
        )),
        None => Ok(delivered),
    }
}

fn read_capped(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read as _;
    let file = std::fs::File::open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let mut value = Vec::new();
    file.take(MAX_SECRET_BYTES + 1).read_to_end(&mut value)?;
    if value.len() as u64 > MAX_SECRET_BYTES {
        return Err(std::io::Error::other(format!(
            "larger than {MAX_SECRET_BYTES} bytes"
        )));
    }
    Ok(value)
}

/// Check `runner.secrets` at start: names, variables, who may have each, the sandbox they need,
/// and that every file reads. `env_ok` is the runner's rule for variable names.
pub fn check_config(settings: &RunnerConfig, env_ok: fn(&str) -> bool) -> Result<(), String> {
    if !settings.secrets.is_empty() && settings.sandbox == SandboxMode::None {
        return Err(
            "runner.secrets needs the sandbox: with runner.sandbox = \"none\" every task runs as the runner's user and could read any job's secret (and the files they come from); remove runner.secrets or use runner.sandbox = \"bwrap\"".into(),
        );
    }
    let mut env_names = std::collections::BTreeMap::new();
    for (name, secret) in &settings.secrets {
        let key = format!("runner.secrets.{name}");
        if !valid_name(name) {
            return Err(format!("{key}: {name:?} is not a secret name (letters, digits, '.', '_' and '-', starting with a letter or digit, at most 64 characters)"));
        }
        if secret.repos.is_empty() {
            return Err(format!("{key}.repos: name the task repositories that may have the secret (the repository decides which code runs)"));
        }
        if let Some(prefix) = secret
            .repos
            .iter()
            .find(|p| crate::repo_url::normalize(p).is_err())
        {
            return Err(format!("{key}.repos: {prefix:?} is not a repository URL"));
        }
        if let Some(env) = &secret.env {
            if !env_ok(env) {
                return Err(format!("{key}.env: {env:?} is not a variable a task may be given (letters, digits and _, not starting with a digit or TASKBOT_)"));
            }
            if let Some(other) = env_names.insert(env.clone(), name.clone()) {
                return Err(format!(
                    "{key}.env: {env} is already the variable of runner.secrets.{other}"
                ));
            }
        }
        load(name, secret)?;
    }
    Ok(())
}

/// A secret's name is a file name inside the sandbox: no path, nothing hidden, nothing odd.
fn valid_name(name: &str) -> bool {
    name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use taskbot::messages::TaskRef;

    fn secret(file: PathBuf) -> TaskSecret {
        TaskSecret {
            file,
            repos: vec!["https://pagure.io/taskbot-tasks/".into()],
            tasks: vec![],
            rules: vec![],
            env: None,
        }
    }

    fn job(name: &str, repo: &str, rule: &str) -> JobRequest {
        let task = TaskRef {
            name: name.into(),
            repo: repo.into(),
            git_ref: "main".into(),
        };
        JobRequest {
            rule: rule.into(),
            ..taskbot::testing::job_request(task, "xchat-1-1", "x86_64")
        }
    }

    fn env_ok(name: &str) -> bool {
        !name.starts_with("TASKBOT_") && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    }

    #[test]
    fn the_repository_decides_and_tasks_and_rules_narrow() {
        let mut s = secret(PathBuf::from("/nonexistent"));
        let ours = "https://pagure.io/taskbot-tasks/abicheck";
        assert!(allowed(&s, &job("dist.abicheck", ours, "any")));
        // Encoded dot segments do not climb out of the prefix.
        let climbing = "https://pagure.io/taskbot-tasks/%2e%2e/evil";
        assert!(!allowed(&s, &job("dist.abicheck", climbing, "any")));
        assert!(!allowed(
            &s,
            &job(
                "dist.abicheck",
                "https://evil.example/taskbot-tasks/x",
                "any"
            )
        ));
        s.tasks = vec!["dist.abicheck".into()];
        s.rules = vec!["abicheck-on-builds".into()];
        assert!(allowed(
            &s,
            &job("dist.abicheck", ours, "abicheck-on-builds")
        ));
        assert!(!allowed(
            &s,
            &job("dist.rpmlint", ours, "abicheck-on-builds")
        ));
        assert!(!allowed(&s, &job("dist.abicheck", ours, "other-rule")));
    }

    #[test]
    fn config_errors_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "s3cr3t-token-value\n").unwrap();
        let check = |name: &str, edit: &dyn Fn(&mut RunnerConfig, &mut TaskSecret)| {
            let mut settings = RunnerConfig::default();
            let mut s = secret(file.clone());
            edit(&mut settings, &mut s);
            settings.secrets.insert(name.into(), s);
            check_config(&settings, env_ok)
        };
        assert_eq!(check("koji-token", &|_, _| {}), Ok(()));
        let err = |name: &str, edit: &dyn Fn(&mut RunnerConfig, &mut TaskSecret)| {
            check(name, edit).unwrap_err()
        };
        for bad in ["../x", ".hidden", "a/b", "", "a b"] {
            assert!(
                err(bad, &|_, _| {}).contains("is not a secret name"),
                "{bad}"
            );
        }
        assert!(err("k", &|c, _| c.sandbox = SandboxMode::None).contains("needs the sandbox"));
        assert!(err("k", &|_, s| s.repos.clear()).starts_with("runner.secrets.k.repos:"));
        assert!(err("k", &|_, s| s.repos = vec!["host:path".into()])
            .contains("is not a repository URL"));
        assert!(
            err("k", &|_, s| s.env = Some("TASKBOT_X".into())).starts_with("runner.secrets.k.env:")
        );
        let missing = err("k", &|_, s| s.file = PathBuf::from("/nonexistent/token"));
        assert!(
            missing.starts_with("runner.secrets.k.file: cannot read /nonexistent/token:"),
            "{missing}"
        );
        let short = dir.path().join("short");
        std::fs::write(&short, "abc\n").unwrap();
        assert!(err("k", &|_, s| s.file = short.clone()).contains("too short"));
        let nul = dir.path().join("nul");
        std::fs::write(&nul, b"abcdefgh\0ijk").unwrap();
        assert!(err("k", &|_, s| {
            s.file = nul.clone();
            s.env = Some("TOKEN".into());
        })
        .contains("NUL"));
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'x'; MAX_SECRET_BYTES as usize + 1]).unwrap();
        assert!(err("k", &|_, s| s.file = big.clone()).contains("larger than"));
        assert!(err("k", &|_, s| s.file = dir.path().to_path_buf()).contains("not a regular file"));
        // Two secrets cannot share a variable.
        let mut settings = RunnerConfig::default();
        for name in ["a", "b"] {
            let mut s = secret(file.clone());
            s.env = Some("TOKEN".into());
            settings.secrets.insert(name.into(), s);
        }
        assert!(check_config(&settings, env_ok)
            .unwrap_err()
            .contains("already the variable of runner.secrets.a"));
    }

    #[test]
    fn values_are_never_printed() {
        let d = Delivered {
            name: "koji-token".into(),
            value: b"s3cr3t-token-value\n".to_vec(),
            env: Some("KOJI_TOKEN".into()),
        };
        assert_eq!(d.trimmed(), b"s3cr3t-token-value");
        let shown = format!("{d:?}");
        assert!(
            shown.contains("koji-token") && !shown.contains("s3cr3t"),
            "{shown}"
        );
    }
}
