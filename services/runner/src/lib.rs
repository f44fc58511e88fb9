//! The `runner` service: takes provisioned jobs from the run queue of one arch, clones each task's
//! repository, runs it, and publishes its results.
//!
//! A job's life here, each step announced as a job status on the results exchange:
//! `cloning` → (allowlist check, clone, read `taskbot.yaml`) → `running` → (the task runs with a
//! time limit) → `reporting` → results and the final `done` or `crashed` status, published with
//! confirms before the input is acked. Whatever goes wrong with the task itself ends as a result
//! (CRASHED, ABORTED, FAILED) so the job never silently disappears; only broker trouble hands the
//! job back to the queue.
//!
//! The decisions live in pure modules ([`task`], [`results`], [`report`], [`git::repo_allowed`]);
//! [`git`] and [`execute`] hold the I/O.

pub mod events;
pub mod execute;
pub mod git;
pub mod report;
pub mod results;
pub mod task;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use taskbot::amqp::{self, ConsumerSpec, Disposition, Handler, Incoming, Publisher};
use taskbot::config::RunnerConfig;
use taskbot::messages::{JobRequest, JobState, JobStatus, Machine, Message, ProvisionedJob};
use taskbot::{Config, Shutdown, Topology};
use uuid::Uuid;

use crate::execute::{RunEnd, TaskCommand};
use crate::report::{ResultFactory, Verdict};
use crate::task::TaskFile;

/// The log file of every job, in its artifacts directory.
pub const LOG_FILE: &str = "task.log";
/// Where a task writes the events it announces (`$TASKBOT_EVENTS`), in its artifacts directory.
pub const EVENTS_FILE: &str = "events.jsonl";

/// Handles the deliveries of one arch's run queue.
pub struct RunnerHandler {
    pub topology: Topology,
    /// The arch this runner serves.
    pub arch: String,
    /// `runner.*` settings, with `work_dir` and `artifacts_dir` made absolute (tasks get them in
    /// their environment and run in another directory).
    pub settings: RunnerConfig,
    /// `runner/<arch>@<host>`: shown in statuses and results.
    pub instance: String,
    /// Stops a running task so the job can go back to the queue when the runner shuts down.
    pub shutdown: Shutdown,
}

/// Why a job was abandoned without a verdict: it goes back to the queue.
struct HandBack(String);

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
        if let Machine::Vm { host, .. } = &provisioned.machine {
            return Some(format!(
                "the job was provisioned on VM {host}, and this runner runs tasks locally only"
            ));
        }
        if !git::repo_allowed(&job.task.repo, &self.settings.allowed_repos) {
            return Some(format!(
                "repository {} is not in runner.allowed_repos",
                job.task.repo
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

    async fn run_job(&self, provisioned: &ProvisionedJob, publisher: &Publisher) -> Disposition {
        let job = &provisioned.job;
        let mut factory =
            ResultFactory::new(job, &self.instance, self.artifacts_location(job.job_id));
        let detail = format!("{} at {}", job.task.repo, job.task.git_ref);
        if let Err(HandBack(reason)) = self
            .publish_status(publisher, job, JobState::Cloning, Some(detail))
            .await
        {
            return Disposition::Retry(reason);
        }
        let verdict = match self.refusal(provisioned) {
            Some(reason) => factory.crashed(&reason, None),
            None => match self.fetch_and_run(job, &mut factory, publisher).await {
                Ok(verdict) => verdict,
                Err(HandBack(reason)) => return Disposition::Retry(reason),
            },
        };
        if let Err(HandBack(reason)) = self
            .publish_status(publisher, job, JobState::Reporting, None)
            .await
        {
            return Disposition::Retry(reason);
        }
        match verdict.state {
            JobState::Crashed => {
                tracing::warn!(job_id = %job.job_id, reason = %verdict.detail, "job crashed")
            }
            _ => tracing::info!(job_id = %job.job_id, summary = %verdict.detail, "job done"),
        }
        report::disposition(&self.topology, job, &verdict, &self.instance)
    }

    /// Clone into a fresh directory, run, and remove the clone whatever happened (artifacts
    /// stay).
    async fn fetch_and_run(
        &self,
        job: &JobRequest,
        factory: &mut ResultFactory,
        publisher: &Publisher,
    ) -> Result<Verdict, HandBack> {
        let work_dir = self.settings.work_dir.clone();
        let prefix = format!("{}-", job.job_id);
        let clone_dir = tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&work_dir)?;
            tempfile::Builder::new()
                .prefix(&prefix)
                .tempdir_in(&work_dir)
        })
        .await;
        let clone_dir = match clone_dir {
            Ok(Ok(dir)) => dir,
            Ok(Err(e)) => {
                let reason = format!(
                    "cannot create a working directory in {}: {e}",
                    self.settings.work_dir.display()
                );
                return Ok(factory.crashed(&reason, None));
            }
            Err(e) => return Ok(factory.crashed(&format!("runner failure: {e}"), None)),
        };
        let outcome = self.run_in(job, clone_dir.path(), factory, publisher).await;
        let path = clone_dir.path().to_path_buf();
        let removed = match tokio::task::spawn_blocking(move || clone_dir.close()).await {
            Ok(result) => result.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(error) = removed {
            // The job's verdict stands; a clone left behind only costs disk space.
            tracing::warn!(job_id = %job.job_id, path = %path.display(), %error, "cannot remove the clone");
        }
        outcome
    }

    async fn run_in(
        &self,
        job: &JobRequest,
        clone_dir: &Path,
        factory: &mut ResultFactory,
        publisher: &Publisher,
    ) -> Result<Verdict, HandBack> {
        let (url, git_ref, dest) = (
            job.task.repo.clone(),
            job.task.git_ref.clone(),
            clone_dir.to_path_buf(),
        );
        let fetched = tokio::task::spawn_blocking(move || {
            let commit = git::clone_at(&url, &git_ref, &dest)?;
            Ok::<_, git::FetchError>((commit, TaskFile::load(&dest)))
        })
        .await;
        let (commit, task) = match fetched {
            Ok(Ok((commit, Ok(task)))) => (commit, task),
            Ok(Ok((_, Err(e)))) => return Ok(factory.crashed(&e.to_string(), None)),
            Ok(Err(e)) => return Ok(factory.crashed(&e.to_string(), None)),
            Err(e) => {
                return Ok(factory.crashed(&format!("runner failure while cloning: {e}"), None))
            }
        };
        if let Some(testcase) = &task.testcase {
            factory.testcase = testcase.clone();
        }

        let artifacts = self.artifacts_dir(job.job_id);
        if let Err(e) = tokio::fs::create_dir_all(&artifacts).await {
            let reason = format!(
                "cannot create the artifacts directory {}: {e}",
                artifacts.display()
            );
            return Ok(factory.crashed(&reason, None));
        }
        let log_path = artifacts.join(LOG_FILE);
        let results_path = clone_dir.join(task.results_path());
        // In the artifacts, so what a task announced can be looked at afterwards.
        let events_path = artifacts.join(EVENTS_FILE);
        let timeout =
            Duration::from_secs(task.effective_timeout_secs(self.settings.task_timeout_secs));
        let command = TaskCommand {
            script: task.run.clone(),
            cwd: clone_dir.to_path_buf(),
            env: execute::task_env(job, clone_dir, &artifacts, &results_path, &events_path),
            log_path: log_path.clone(),
            timeout,
        };
        let detail = format!("commit {commit}, time limit {}s", timeout.as_secs());
        self.publish_status(publisher, job, JobState::Running, Some(detail))
            .await?;
        factory.log_url = Some(format!("{}/{LOG_FILE}", factory.artifacts_location));
        tracing::info!(job_id = %job.job_id, task = %task.name, %commit, item = %job.item, arch = %job.arch, "task started");

        let mut shutdown = self.shutdown.clone();
        let end = execute::run(&command, &mut shutdown).await;
        tracing::info!(job_id = %job.job_id, end = ?end, "task ended");
        if end == RunEnd::Interrupted {
            return Err(HandBack(
                "the runner is shutting down; the job goes back to the queue".into(),
            ));
        }
        let results_file = match end {
            RunEnd::Exited(_) => read_results(&results_path).await,
            _ => None,
        };
        let mut verdict = factory.finished(&end, results_file, || {
            execute::log_tail(&log_path, report::LOG_TAIL_LINES)
        });
        if verdict.state == JobState::Done && matches!(end, RunEnd::Exited(_)) {
            match read_events(&events_path, job).await {
                Ok(events) => verdict.events = events,
                Err(reason) => {
                    let tail = execute::log_tail(&log_path, report::LOG_TAIL_LINES);
                    verdict = factory.crashed(
                        &format!("invalid events file {EVENTS_FILE}: {reason}"),
                        tail.as_deref(),
                    );
                }
            }
        }
        Ok(verdict)
    }

    async fn publish_status(
        &self,
        publisher: &Publisher,
        job: &JobRequest,
        state: JobState,
        detail: Option<String>,
    ) -> Result<(), HandBack> {
        let status = JobStatus::new(job, state, &self.instance, detail);
        publisher
            .publish(&report::status_message(&self.topology, &status))
            .await
            .map_err(|e| HandBack(format!("cannot publish the {state} status: {e}")))
    }
}

/// The events the task announced; none when it wrote no events file.
async fn read_events(path: &Path, job: &JobRequest) -> Result<Vec<taskbot::Event>, String> {
    match tokio::fs::read(path).await {
        Ok(bytes) => match String::from_utf8(bytes) {
            Ok(text) => events::parse(&text, job),
            Err(_) => Err("the file is not UTF-8 text".into()),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// The parsed results file, or `None` when the task wrote none.
async fn read_results(path: &Path) -> Option<Result<Vec<results::ReportedResult>, String>> {
    match tokio::fs::read(path).await {
        Ok(bytes) => Some(match String::from_utf8(bytes) {
            Ok(text) => results::parse(&text),
            Err(_) => Err("the file is not UTF-8 text".into()),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => Some(Err(format!("cannot read {}: {e}", path.display()))),
    }
}

#[async_trait::async_trait]
impl Handler for RunnerHandler {
    async fn handle(&self, incoming: Incoming, publisher: &Publisher) -> Disposition {
        match ProvisionedJob::from_json(&incoming.body) {
            Ok(provisioned) => self.run_job(&provisioned, publisher).await,
            Err(e) => Disposition::DeadLetter(e.to_string()),
        }
    }
}

/// Run until `shutdown`: consume the run queue of `runner.arch`. A task running at shutdown is
/// killed and its job handed back to the queue.
pub async fn run(config: Config, shutdown: Shutdown) -> anyhow::Result<()> {
    let arch = config.runner_arch()?.to_string();
    if arch.is_empty() || arch.contains(['.', '#', '*', ' ']) {
        anyhow::bail!("runner.arch: {arch:?} is not an arch name");
    }
    let mut settings = config.runner.clone();
    settings.work_dir = std::path::absolute(&settings.work_dir)
        .with_context(|| format!("runner.work_dir: {}", settings.work_dir.display()))?;
    settings.artifacts_dir = std::path::absolute(&settings.artifacts_dir)
        .with_context(|| format!("runner.artifacts_dir: {}", settings.artifacts_dir.display()))?;
    // Fail at start, not on the first job, when the directories cannot be made.
    for (key, dir) in [
        ("runner.work_dir", &settings.work_dir),
        ("runner.artifacts_dir", &settings.artifacts_dir),
    ] {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("{key}: cannot create {}", dir.display()))?;
    }
    if settings.allowed_repos.is_empty() {
        tracing::warn!(
            "runner.allowed_repos is empty: every job will crash until it lists task repositories"
        );
    }
    // The runner's own queue must exist even for an arch missing from `arches`.
    let mut arches = config.arches.clone();
    if !arches.contains(&arch) {
        arches.push(arch.clone());
    }
    let topology = Topology::new(&config.amqp.namespace, &arches);
    let handler = Arc::new(RunnerHandler {
        topology: topology.clone(),
        arch: arch.clone(),
        instance: taskbot::instance_name(&format!("runner/{arch}")),
        settings: settings.clone(),
        shutdown: shutdown.clone(),
    });
    let spec = ConsumerSpec {
        queue: topology.run_queue(&arch),
        name: format!("taskbot-runner-{arch}"),
        concurrency: settings.concurrency,
        retry_delay: Duration::from_secs(2),
    };
    tracing::info!(arch = %arch, queue = %spec.queue, concurrency = settings.concurrency, "runner starting");
    amqp::consume(&config.amqp, &topology, spec, handler, shutdown).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use taskbot::messages::TaskRef;

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
        }
    }

    fn provisioned(repo: &str, arch: &str, machine: Machine) -> ProvisionedJob {
        let task = TaskRef {
            name: "example".into(),
            repo: repo.into(),
            git_ref: "main".into(),
        };
        ProvisionedJob {
            job: JobRequest {
                job_id: Uuid::nil(),
                event_id: "e".into(),
                event_topic: "t".into(),
                rule: "r".into(),
                task,
                item: "xchat-1-1".into(),
                item_type: "koji_build".into(),
                arch: arch.into(),
                args: Default::default(),
                priority: 0,
                environment: Default::default(),
                destructive: false,
                created_at: Utc::now(),
            },
            machine,
            provisioner: "local".into(),
            provisioned_at: Utc::now(),
        }
    }

    #[tokio::test]
    async fn refuses_foreign_repos_arches_and_vms() {
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
        let vm = Machine::Vm {
            host: "vm1".into(),
            port: 22,
            user: "root".into(),
            key_path: "/k".into(),
        };
        assert!(h
            .refusal(&provisioned("file:///srv/tasks/example", "x86_64", vm))
            .unwrap()
            .contains("VM vm1"));
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

    #[tokio::test]
    async fn results_file_absent_unreadable_or_invalid() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("results.yml");
        assert_eq!(read_results(&path).await, None);
        std::fs::write(&path, [0xff, 0xfe]).unwrap();
        assert_eq!(
            read_results(&path).await,
            Some(Err("the file is not UTF-8 text".into()))
        );
        std::fs::write(&path, "results:\n  - {item: a, type: t}\n").unwrap();
        assert_eq!(read_results(&path).await.unwrap().unwrap().len(), 1);
    }
}
