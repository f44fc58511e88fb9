//! Getting a job ready to run, before any of its task's code does: the refusal checks, the clone
//! (through the repository's mirror), `taskbot.yaml`, the VM to run in, the artifacts directory
//! with its log, and the task's time budget. Whatever fails here crashes the job (a verdict, not
//! an error): the task itself never ran.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use taskbot::artifacts::TASK_LOG;
use taskbot::messages::{JobRequest, Machine, ProvisionedJob};
use taskbot::yaml_budget::YamlBudget;
use uuid::Uuid;

use crate::budget::{task_budget, Budget};
use crate::git::{self, Fetched};
use crate::log::JobLog;
use crate::redact::Redactor;
use crate::remote::{self, Remote};
use crate::report::{ResultFactory, Verdict};
use crate::secrets::{self, Delivered, SECRETS_ENV};
use crate::task::TaskFile;
use crate::workspace::JobDir;
use crate::RunnerHandler;

/// A job ready for its steps.
pub(crate) struct Prepared {
    pub task: TaskFile,
    /// The commit checked out, and what fetching it cost.
    pub fetched: Fetched,
    /// The VM the task runs in; `None` on this host.
    pub remote: Option<Remote>,
    /// The job's artifacts directory on this host.
    pub artifacts: PathBuf,
    pub log: JobLog,
    pub budget: Budget,
    /// The secrets the job's steps get (none for a VM job: they reach only the sandbox here).
    pub secrets: Arc<[Delivered]>,
    /// Takes the secrets the job may have out of its log, artifacts, results and events.
    pub redactor: Arc<Redactor>,
    /// What the task's own files (its results and events) may hold.
    pub file_budget: YamlBudget,
}

impl RunnerHandler {
    /// Why this runner must not run the job at all, if so. Checked before anything is fetched.
    pub fn refusal(&self, provisioned: &ProvisionedJob) -> Option<String> {
        let job = &provisioned.job;
        if job.arch != self.arch {
            return Some(format!(
                "job for arch {} reached the runner for {}",
                job.arch, self.arch
            ));
        }
        if !git::repo_allowed(&job.task.repo, &self.settings.allowed_repos) {
            return Some(format!(
                "repository {} is not in runner.allowed_repos",
                job.task.repo
            ));
        }
        self.vm_refusal(&provisioned.machine)
    }

    /// Why the VM a run message names is not one this runner may log into: a host outside
    /// `runner.vm_hosts`, or a key other than `runner.vm_ssh_key`. The runner reaches VMs only
    /// with its own configuration, never with paths or hosts a message chose.
    fn vm_refusal(&self, machine: &Machine) -> Option<String> {
        let Machine::Vm { host, key_path, .. } = machine else {
            return None;
        };
        let settings = &self.settings;
        if !settings.vm_hosts.iter().any(|allowed| allowed == host) {
            return Some(format!(
                "the job's VM is on host {host:?}, which is not in runner.vm_hosts {:?}",
                settings.vm_hosts
            ));
        }
        if Path::new(key_path) != settings.vm_ssh_key {
            return Some(format!(
                "the job's VM is reached with key {key_path:?}, not this runner's \
                 runner.vm_ssh_key {:?}",
                settings.vm_ssh_key.display().to_string()
            ));
        }
        None
    }

    /// Where a job's artifacts are kept on this host.
    pub fn artifacts_dir(&self, job_id: Uuid) -> PathBuf {
        self.settings.artifacts_dir.join(job_id.to_string())
    }

    /// How results refer to a job's artifacts: under `artifacts_url` when the operator publishes
    /// the directory, else the local path (still useful to whoever runs the host).
    pub fn artifacts_location(&self, job_id: Uuid) -> String {
        match &self.settings.artifacts_url {
            Some(url) => format!("{}/{job_id}", url.trim_end_matches('/')),
            None => self.artifacts_dir(job_id).display().to_string(),
        }
    }

    /// Clone the task into the job directory's `clone/` and get everything ready for its steps;
    /// `Err` is the CRASHED verdict. `factory` learns the task's own testcase. The time budget
    /// counts from `received_at`, when the delivery arrived.
    pub(crate) async fn prepare(
        &self,
        job: &JobRequest,
        machine: &Machine,
        job_dir: &JobDir,
        factory: &mut ResultFactory,
        received_at: Instant,
    ) -> Result<Prepared, Verdict> {
        let (fetched, task) = self
            .clone_task(job, &job_dir.clone_dir())
            .await
            .map_err(|reason| factory.crashed(&reason, None))?;
        if let Some(testcase) = &task.testcase {
            factory.testcase = testcase.clone();
        }
        if let Some(declared) = task.declared_testcases() {
            factory.testcases = declared;
        }
        let crashed = |reason: String| factory.crashed(&reason, None);
        let remote = self
            .remote_for(machine, job_dir.path())
            .await
            .map_err(crashed)?;
        if let Some(reason) = task.refusal(&job.item_type, &job.arch, remote.is_none()) {
            return Err(crashed(reason));
        }
        let allowed = secrets::for_job(&self.settings, job).map_err(crashed)?;
        let redactor = Arc::new(Redactor::new(&allowed));
        let artifacts = self.artifacts_dir(job.job_id);
        let log = open_artifacts(&artifacts, self.settings.max_log_bytes, redactor.clone())
            .await
            .map_err(crashed)?;
        let budget = task_budget(
            task.effective_timeout_secs(self.settings.task_timeout_secs),
            self.settings.consumer_timeout_secs,
            received_at.elapsed(),
        );
        log_header(&log, job, &task, &fetched, budget);
        let secrets = delivered(&log, allowed, remote.is_some());
        Ok(Prepared {
            task,
            fetched,
            remote,
            artifacts,
            log,
            budget,
            file_budget: self.settings.task_file_budget(),
            secrets,
            redactor,
        })
    }

    /// Fetch the job's commit into the repository's mirror, clone it from there into
    /// `clone_dir`, and read its `taskbot.yaml`.
    async fn clone_task(
        &self,
        job: &JobRequest,
        clone_dir: &Path,
    ) -> Result<(Fetched, TaskFile), String> {
        if let Some(refusal) =
            git::redirect_refusal(&job.task.repo, &self.settings.allowed_repos).await
        {
            return Err(refusal);
        }
        let (url, git_ref, dest, mirrors) = (
            job.task.repo.clone(),
            job.task.git_ref.clone(),
            clone_dir.to_path_buf(),
            self.settings.mirror_dir.clone(),
        );
        let budget = self.settings.task_file_budget();
        let fetched = tokio::task::spawn_blocking(move || {
            let fetched = git::clone_through_mirror(&url, &git_ref, &mirrors, &dest)?;
            Ok::<_, git::FetchError>((fetched, TaskFile::load(&dest, &budget)))
        })
        .await;
        match fetched {
            Ok(Ok((fetched, Ok(task)))) => Ok((fetched, task)),
            Ok(Ok((_, Err(e)))) => Err(e.to_string()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(format!("runner failure while cloning: {e}")),
        }
    }

    /// A job provisioned on a VM runs there over SSH (`Some`, its known-hosts file in
    /// `job_dir`); any other on this host.
    async fn remote_for(
        &self,
        machine: &Machine,
        job_dir: &Path,
    ) -> Result<Option<Remote>, String> {
        // The key is the runner's own (`vm_refusal` checked the message names the same one).
        let Machine::Vm {
            host,
            port,
            user,
            host_keys,
            ..
        } = machine
        else {
            return Ok(None);
        };
        let written = {
            let (dir, host, port, keys) = (
                job_dir.to_path_buf(),
                host.clone(),
                *port,
                host_keys.clone(),
            );
            tokio::task::spawn_blocking(move || remote::known_hosts_file(&dir, &host, port, &keys))
                .await
        };
        let known_hosts = match written {
            Ok(Ok(file)) => file,
            Ok(Err(e)) => return Err(format!("cannot write the VM's known hosts file: {e}")),
            Err(e) => return Err(format!("runner failure: {e}")),
        };
        Ok(Some(Remote {
            host: host.clone(),
            port: *port,
            user: user.clone(),
            key_path: self.settings.vm_ssh_key.display().to_string(),
            known_hosts: known_hosts.map(Arc::new),
        }))
    }
}

/// Create the job's artifacts directory and open its log, keeping at most `max_log_bytes` of
/// what `redactor` left of everything written to it.
async fn open_artifacts(
    artifacts: &Path,
    max_log_bytes: u64,
    redactor: Arc<Redactor>,
) -> Result<JobLog, String> {
    tokio::fs::create_dir_all(artifacts).await.map_err(|e| {
        format!(
            "cannot create the artifacts directory {}: {e}",
            artifacts.display()
        )
    })?;
    let path = artifacts.join(TASK_LOG);
    JobLog::create(&path, max_log_bytes, redactor)
        .await
        .map_err(|e| format!("cannot create the log {}: {e}", path.display()))
}

/// The secrets a job's steps get, said in its log by name: those it may have, unless it runs in
/// a VM (where the runner's sandbox, which delivers them, is not).
fn delivered(log: &JobLog, allowed: Vec<Delivered>, in_vm: bool) -> Arc<[Delivered]> {
    if allowed.is_empty() {
        return Arc::from([]);
    }
    let names: Vec<String> = allowed
        .iter()
        .map(|s| match &s.env {
            Some(env) => format!("{} (also ${env})", s.name),
            None => s.name.clone(),
        })
        .collect();
    if in_vm {
        log.line(format_args!(
            "secrets not delivered: {}: this job runs in a VM, and secrets reach only sandboxed steps on the runner's host",
            names.join(", ")
        ));
        return Arc::from([]);
    }
    log.line(format_args!(
        "secrets: {} in ${SECRETS_ENV}/",
        names.join(", ")
    ));
    allowed.into()
}

/// What the log says first: which task at which commit, for which job, and for how long.
fn log_header(log: &JobLog, job: &JobRequest, task: &TaskFile, fetched: &Fetched, budget: Budget) {
    log.line(format_args!(
        "task {} ({}) at commit {} ({} objects fetched into the mirror{})\nitem {} ({}), arch {}, job {}\ntime limit {}s{}",
        task.name,
        job.task.repo,
        fetched.commit,
        fetched.received_objects,
        if fetched.new_mirror { ", new mirror" } else { "" },
        job.item,
        job.item_type,
        job.arch,
        job.job_id,
        budget.limit.as_secs(),
        if budget.capped { " (capped below runner.consumer_timeout_secs)" } else { "" },
    ));
    if !task.environment.packages.is_empty() {
        log.line(format_args!(
            "environment: needs packages {} (not installed by the runner)",
            task.environment.packages.join(" ")
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use taskbot::config::RunnerConfig;
    use taskbot::messages::TaskRef;
    use taskbot::{Shutdown, Topology};

    fn handler() -> RunnerHandler {
        RunnerHandler {
            topology: Topology::new("tb", &["x86_64".into()]),
            arch: "x86_64".into(),
            settings: RunnerConfig {
                allowed_repos: vec!["file:///srv/tasks/".into()],
                artifacts_dir: PathBuf::from("/srv/artifacts"),
                ..RunnerConfig::default()
            },
            instance: "runner/x86_64@test".into(),
            shutdown: Shutdown::new(std::future::pending()),
            http: reqwest::Client::new(),
            sandbox: None,
            provisioner_user: "guest".into(),
        }
    }

    fn provisioned(repo: &str, arch: &str, machine: Machine) -> ProvisionedJob {
        let task = TaskRef {
            name: "example".into(),
            repo: repo.into(),
            git_ref: "main".into(),
        };
        ProvisionedJob {
            job: taskbot::testing::job_request(task, "xchat-1-1", arch),
            machine,
            provisioner: "local".into(),
            provisioned_at: Utc::now(),
        }
    }

    #[tokio::test]
    async fn refuses_foreign_repos_and_arches_not_vms() {
        let h = handler();
        assert_eq!(
            h.refusal(&provisioned(
                "file:///srv/tasks/example",
                "x86_64",
                Machine::Local
            )),
            None
        );
        assert_eq!(
            h.refusal(&provisioned(
                "https://evil.example/x",
                "x86_64",
                Machine::Local
            ))
            .as_deref(),
            Some("repository https://evil.example/x is not in runner.allowed_repos")
        );
        assert_eq!(
            h.refusal(&provisioned(
                "file:///srv/tasks/example",
                "aarch64",
                Machine::Local
            ))
            .as_deref(),
            Some("job for arch aarch64 reached the runner for x86_64")
        );
        let vm = |host: &str, key: &str| Machine::Vm {
            host: host.into(),
            port: 22,
            user: "root".into(),
            key_path: key.into(),
            host_keys: Vec::new(),
        };
        let example = |machine| provisioned("file:///srv/tasks/example", "x86_64", machine);
        // A job provisioned on a VM runs there (over SSH), so it is not refused, when the VM is
        // on a host and reached with the key of the runner's own configuration.
        let key = "/var/lib/taskbot/vm/id_ed25519";
        assert_eq!(h.refusal(&example(vm("127.0.0.1", key))), None);
        assert_eq!(
            h.refusal(&example(vm("evil.example", key))).as_deref(),
            Some(
                "the job's VM is on host \"evil.example\", which is not in runner.vm_hosts \
                 [\"127.0.0.1\"]"
            )
        );
        assert_eq!(
            h.refusal(&example(vm("127.0.0.1", "/etc/shadow")))
                .as_deref(),
            Some(
                "the job's VM is reached with key \"/etc/shadow\", not this runner's \
                 runner.vm_ssh_key \"/var/lib/taskbot/vm/id_ed25519\""
            )
        );
    }

    #[tokio::test]
    async fn artifacts_are_located_by_url_when_published() {
        let mut h = handler();
        let id = Uuid::nil();
        assert_eq!(h.artifacts_location(id), format!("/srv/artifacts/{id}"));
        h.settings.artifacts_url = Some("https://taskbot.example/artifacts/".into());
        assert_eq!(
            h.artifacts_location(id),
            format!("https://taskbot.example/artifacts/{id}")
        );
    }
}
