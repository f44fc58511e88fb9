//! The `runner` service: takes provisioned jobs from the run queue of one arch, clones each task's
//! repository, runs it, and publishes its results.
//!
//! A job's life here, each phase announced as a job status on the results exchange:
//! `cloning` → (allowlist check, fetch into the repository's mirror and clone from it, read
//! `taskbot.yaml`, check the item type, arch and environment the task accepts) → `running` →
//! (downloads, `prepare` steps, `run` steps, each step in its own process group with its own log
//! and time limit; then `cleanup` steps whatever happened, and the `artifacts` globs copied) →
//! `reporting` → results and the final `done` or `crashed` status, published with confirms before
//! the input is acked. Whatever goes wrong with the task itself ends as a result (CRASHED,
//! ABORTED, FAILED) so the job never silently disappears; only broker trouble and shutdown hand
//! the job back to the queue.
//!
//! The delivery stays unacked while the task runs (at-least-once), so the task's time is capped
//! below the broker's consumer timeout ([`task_budget`], `runner.consumer_timeout_secs`).
//!
//! The decisions live in pure modules ([`task`], [`results`], [`report`], [`git::repo_allowed`],
//! [`artifacts::glob_matches`]); [`git`], [`execute`] and [`taskbot::download`] hold the I/O.

pub mod artifacts;
pub mod events;
pub mod execute;
pub mod git;
pub mod remote;
pub mod report;
pub mod results;
pub mod settings;
pub mod task;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use taskbot::amqp::{self, ConsumerSpec, DeliveryContext, Disposition, Handler, Incoming};
use taskbot::config::RunnerConfig;
use taskbot::messages::{JobRequest, JobState, JobStatus, Machine, Message, ProvisionedJob};
use taskbot::{Config, Shutdown, Topology};
use uuid::Uuid;

use crate::execute::{RunEnd, TaskCommand, TaskExit};
use crate::remote::Remote;
use crate::report::{ResultFactory, Verdict};
use crate::task::{Escape, NamedStep, Phase, TaskFile, TemplateVars};
use taskbot::download::{self, DownloadSpec, RetryPolicy};

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
    /// For tasks' `downloads`.
    pub http: reqwest::Client,
}

/// `/metrics`: the runner's task slots (`runner.concurrency`) per arch.
pub const SLOTS_METRIC: &str = "taskbot_runner_slots";
/// `/metrics`: the slots running a job now, per arch (the jobs in flight on this runner).
pub const SLOTS_BUSY_METRIC: &str = "taskbot_runner_slots_busy";

fn slots_busy(arch: &str) -> taskbot::ops::Gauge {
    taskbot::ops::global()
        .registry
        .gauge(
            SLOTS_BUSY_METRIC,
            "Task slots of the runner running a job now (the jobs in flight).",
            &["arch"],
        )
        .with(&[arch])
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

    async fn run_job(
        &self,
        provisioned: &ProvisionedJob,
        ctx: &dyn DeliveryContext,
    ) -> Disposition {
        let job = &provisioned.job;
        let mut factory =
            ResultFactory::new(job, &self.instance, self.artifacts_location(job.job_id));
        let detail = format!("{} at {}", job.task.repo, job.task.git_ref);
        if let Err(HandBack(reason)) = self
            .publish_status(ctx, job, JobState::Cloning, Some(detail))
            .await
        {
            return Disposition::Retry(reason);
        }
        let verdict = match self.refusal(provisioned) {
            Some(reason) => factory.crashed(&reason, None),
            None => match self
                .fetch_and_run(job, &provisioned.machine, &mut factory, ctx)
                .await
            {
                Ok(verdict) => verdict,
                Err(HandBack(reason)) => return Disposition::Retry(reason),
            },
        };
        if let Err(HandBack(reason)) = self
            .publish_status(ctx, job, JobState::Reporting, None)
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
        machine: &Machine,
        factory: &mut ResultFactory,
        ctx: &dyn DeliveryContext,
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
        let outcome = self
            .run_in(job, machine, clone_dir.path(), factory, ctx)
            .await;
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
        machine: &Machine,
        clone_dir: &Path,
        factory: &mut ResultFactory,
        ctx: &dyn DeliveryContext,
    ) -> Result<Verdict, HandBack> {
        let (url, git_ref, dest, mirrors) = (
            job.task.repo.clone(),
            job.task.git_ref.clone(),
            clone_dir.to_path_buf(),
            self.settings.mirror_dir.clone(),
        );
        let fetched = tokio::task::spawn_blocking(move || {
            let fetched = git::clone_through_mirror(&url, &git_ref, &mirrors, &dest)?;
            Ok::<_, git::FetchError>((fetched, TaskFile::load(&dest)))
        })
        .await;
        let (fetched, task) = match fetched {
            Ok(Ok((fetched, Ok(task)))) => (fetched, task),
            Ok(Ok((_, Err(e)))) => return Ok(factory.crashed(&e.to_string(), None)),
            Ok(Err(e)) => return Ok(factory.crashed(&e.to_string(), None)),
            Err(e) => {
                return Ok(factory.crashed(&format!("runner failure while cloning: {e}"), None))
            }
        };
        if let Some(testcase) = &task.testcase {
            factory.testcase = testcase.clone();
        }
        // A job provisioned on a VM runs there over SSH; any other on this host.
        let remote = match machine {
            Machine::Local => None,
            Machine::Vm {
                host,
                port,
                user,
                key_path,
                host_keys,
            } => {
                let known_hosts =
                    match remote::known_hosts_file(&self.settings.work_dir, host, *port, host_keys)
                    {
                        Ok(file) => file,
                        Err(e) => {
                            let reason = format!("cannot write the VM's known hosts file: {e}");
                            return Ok(factory.crashed(&reason, None));
                        }
                    };
                Some(Remote {
                    host: host.clone(),
                    port: *port,
                    user: user.clone(),
                    key_path: key_path.clone(),
                    known_hosts: known_hosts.map(Arc::new),
                })
            }
        };
        if let Some(reason) = task.refusal(&job.item_type, &job.arch, remote.is_none()) {
            return Ok(factory.crashed(&reason, None));
        }

        let artifacts = self.artifacts_dir(job.job_id);
        if let Err(e) = tokio::fs::create_dir_all(artifacts.join(STEPS_DIR)).await {
            let reason = format!(
                "cannot create the artifacts directory {}: {e}",
                artifacts.display()
            );
            return Ok(factory.crashed(&reason, None));
        }
        let log_path = artifacts.join(LOG_FILE);
        let mut log = match std::fs::File::create(&log_path) {
            Ok(log) => log,
            Err(e) => {
                let reason = format!("cannot create the log {}: {e}", log_path.display());
                return Ok(factory.crashed(&reason, None));
            }
        };
        let results_path = clone_dir.join(task.results_path());
        // In the artifacts, so what a task announced can be looked at afterwards.
        let events_path = artifacts.join(EVENTS_FILE);
        let budget = task_budget(
            task.effective_timeout_secs(self.settings.task_timeout_secs),
            self.settings.consumer_timeout_secs,
            ctx.received_at().elapsed(),
        );
        // The paths the task sees: here, or inside its VM.
        let (task_workdir, task_artifacts) = match &remote {
            None => (clone_dir.to_path_buf(), artifacts.clone()),
            Some(_) => (
                PathBuf::from(remote::REMOTE_WORKDIR),
                PathBuf::from(remote::REMOTE_ARTIFACTS),
            ),
        };
        let mut steps = StepRunner {
            vars: TemplateVars {
                item: job.item.clone(),
                item_type: job.item_type.clone(),
                arch: job.arch.clone(),
                job_id: job.job_id.to_string(),
                workdir: task_workdir.display().to_string(),
                artifacts: format!("{}/", task_artifacts.display()),
                args: job.args.clone(),
            },
            env: execute::task_env(
                job,
                &task_workdir,
                &task_artifacts,
                &task_workdir.join(task.results_path()),
                &task_artifacts.join(EVENTS_FILE),
                &factory.artifacts_location,
            ),
            remote: remote.clone(),
            pushed: false,
            cwd: clone_dir.to_path_buf(),
            artifacts: artifacts.clone(),
            artifacts_location: factory.artifacts_location.clone(),
            counter: 0,
            shutdown: self.shutdown.clone(),
        };
        let _ = writeln!(
            log,
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
        );
        if !task.environment.packages.is_empty() {
            let _ = writeln!(
                log,
                "environment: needs packages {} (not installed by the runner)",
                task.environment.packages.join(" ")
            );
        }
        let detail = format!(
            "commit {}, time limit {}s",
            fetched.commit,
            budget.limit.as_secs()
        );
        self.publish_status(ctx, job, JobState::Running, Some(detail))
            .await?;
        factory.log_url = Some(format!("{}/{LOG_FILE}", factory.artifacts_location));
        tracing::info!(job_id = %job.job_id, task = %task.name, commit = %fetched.commit, item = %job.item, arch = %job.arch, "task started");

        let started = Instant::now();
        let deadline = started + budget.limit;
        let limit_note = |step: &str| {
            let why = if budget.capped {
                " (the job's time is capped below the broker's consumer timeout, runner.consumer_timeout_secs)"
            } else {
                ""
            };
            format!(
                "step {step} timed out: the task's time limit of {}s passed{why}",
                budget.limit.as_secs()
            )
        };
        let ended = self
            .run_phases(&task, &mut steps, &mut log, deadline, &limit_note)
            .await;
        if matches!(ended, Ended::Interrupted) {
            return Err(HandBack(
                "the runner is shutting down; the job goes back to the queue".into(),
            ));
        }
        // Cleanup whatever happened, each step with its own limit (default CLEANUP_TIMEOUT),
        // within what is left before the broker would give up on the delivery.
        let cleanup_end = cleanup_deadline(
            self.settings.consumer_timeout_secs,
            ctx.received_at().elapsed(),
        );
        for step in task.steps(Phase::Cleanup) {
            let limit = Duration::from_secs(step.timeout.unwrap_or(CLEANUP_TIMEOUT_SECS));
            let step_deadline = cleanup_end.map_or(Instant::now() + limit, |end| {
                end.min(Instant::now() + limit)
            });
            let (end, _) = steps.run(&step, &mut log, step_deadline).await;
            if end == RunEnd::Interrupted {
                return Err(HandBack(
                    "the runner is shutting down; the job goes back to the queue".into(),
                ));
            }
        }
        if let Some(remote) = &remote {
            // The task's files, back from its VM, before anything reads them.
            match remote.pull(clone_dir, &artifacts).await {
                Ok(n) => {
                    let _ = writeln!(log, "== copied {n} files back from the VM");
                }
                Err(e) if steps.pushed => {
                    let _ = writeln!(log, "== {e}");
                    drop(log);
                    let tail = execute::log_tail(&log_path, report::LOG_TAIL_LINES);
                    return Ok(factory.crashed(&e, tail.as_deref()));
                }
                // Nothing was copied in (a download failed first): nothing to bring back.
                Err(_) => {}
            }
        }
        let copied = steps.copy_artifacts(&task.artifacts, &mut log).await;
        drop(log);
        tracing::info!(job_id = %job.job_id, ended = ?ended, artifacts = copied, "task ended");

        let tail = || execute::log_tail(&log_path, report::LOG_TAIL_LINES);
        // Events count only from a task whose run steps all ran to their end.
        let mut ran_to_end = false;
        let mut verdict = match ended {
            Ended::Interrupted => {
                return Err(HandBack(
                    "the runner is shutting down; the job goes back to the queue".into(),
                ))
            }
            Ended::Crashed { reason, step_log } => {
                factory.step_log_url = step_log;
                factory.crashed(&reason, tail().as_deref())
            }
            Ended::Aborted { note, step_log } => {
                factory.step_log_url = step_log;
                factory.aborted(&note)
            }
            Ended::Ran { end, step_log } => {
                if !matches!(end, RunEnd::Exited(TaskExit::Code(0))) {
                    factory.step_log_url = step_log;
                }
                let results_file = match end {
                    RunEnd::Exited(_) => read_results(&results_path).await,
                    _ => None,
                };
                ran_to_end = matches!(end, RunEnd::Exited(_));
                factory.finished(&end, results_file, tail)
            }
        };
        if verdict.state == JobState::Done && ran_to_end {
            match read_events(&events_path, job).await {
                Ok(events) => verdict.events = events,
                Err(reason) => {
                    verdict = factory.crashed(
                        &format!("invalid events file {EVENTS_FILE}: {reason}"),
                        tail().as_deref(),
                    );
                }
            }
        }
        Ok(verdict)
    }

    /// Downloads, then `prepare`, then `run`, each bounded by `deadline`.
    async fn run_phases(
        &self,
        task: &TaskFile,
        steps: &mut StepRunner,
        log: &mut std::fs::File,
        deadline: Instant,
        limit_note: &(dyn Fn(&str) -> String + Sync),
    ) -> Ended {
        if let Err(ended) = self
            .download_all(task, steps, log, deadline, limit_note)
            .await
        {
            return ended;
        }
        for step in task.steps(Phase::Prepare) {
            let (end, step_log) = steps.run(&step, log, deadline).await;
            match end {
                RunEnd::Exited(TaskExit::Code(0)) => {}
                RunEnd::Interrupted => return Ended::Interrupted,
                RunEnd::TimedOut(limit) => {
                    return Ended::Aborted {
                        note: timeout_note(&step, limit, deadline, limit_note),
                        step_log: Some(step_log),
                    }
                }
                RunEnd::Exited(exit) => {
                    return Ended::Crashed {
                        reason: format!(
                            "prepare step {} failed: {}",
                            step.name,
                            report::outcome_of_exit(exit).1
                        ),
                        step_log: Some(step_log),
                    }
                }
                RunEnd::FailedToStart(reason) => {
                    return Ended::Crashed {
                        reason: format!("prepare step {} could not start: {reason}", step.name),
                        step_log: Some(step_log),
                    }
                }
            }
        }
        let mut last = Ended::Ran {
            end: RunEnd::Exited(TaskExit::Code(0)),
            step_log: None,
        };
        for step in task.steps(Phase::Run) {
            let (end, step_log) = steps.run(&step, log, deadline).await;
            match end {
                RunEnd::Exited(TaskExit::Code(0)) => {
                    last = Ended::Ran {
                        end,
                        step_log: Some(step_log),
                    }
                }
                RunEnd::Interrupted => return Ended::Interrupted,
                RunEnd::TimedOut(limit) => {
                    return Ended::Aborted {
                        note: timeout_note(&step, limit, deadline, limit_note),
                        step_log: Some(step_log),
                    }
                }
                // A failing step ends the run: its exit code is the task's.
                other => {
                    return Ended::Ran {
                        end: other,
                        step_log: Some(step_log),
                    }
                }
            }
        }
        last
    }

    /// Fetch `downloads` into the clone. Any failure crashes the job naming the URL.
    async fn download_all(
        &self,
        task: &TaskFile,
        steps: &mut StepRunner,
        log: &mut std::fs::File,
        deadline: Instant,
        limit_note: &(dyn Fn(&str) -> String + Sync),
    ) -> Result<(), Ended> {
        let crashed = |reason: String| Ended::Crashed {
            reason,
            step_log: None,
        };
        for (i, d) in task.downloads.iter().enumerate() {
            let url = steps
                .vars
                .render(&d.url, Escape::Url)
                .map_err(|e| crashed(format!("downloads[{i}].url: {e}")))?;
            let dest = match &d.dest {
                Some(dest) => steps
                    .vars
                    .render(dest, Escape::Raw)
                    .map_err(|e| crashed(format!("downloads[{i}].dest: {e}")))?,
                None => download::default_dest(&url).ok_or_else(|| {
                    crashed(format!("downloads[{i}]: {url} names no file; give a dest"))
                })?,
            };
            task::relative_inside(&dest)
                .map_err(|e| crashed(format!("downloads[{i}].dest: {e}")))?;
            let spec = DownloadSpec {
                url: url.clone(),
                sha256: d.sha256.clone(),
                max_bytes: d
                    .max_bytes
                    .unwrap_or(u64::MAX)
                    .min(self.settings.download_max_bytes),
                dest: download::dest_in(&steps.cwd, &dest),
            };
            let policy = RetryPolicy {
                attempts: self.settings.download_attempts,
                first_pause: Duration::from_secs(1),
            };
            let mut shutdown = self.shutdown.clone();
            let result = tokio::select! {
                r = tokio::time::timeout_at(deadline.into(), download::download(&self.http, &spec, policy, log)) => r,
                _ = shutdown.wait() => return Err(Ended::Interrupted),
            };
            match result {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(crashed(format!("download {url} failed: {e}"))),
                Err(_) => {
                    return Err(Ended::Aborted {
                        note: limit_note(&format!("downloads ({url})")),
                        step_log: None,
                    })
                }
            }
        }
        Ok(())
    }

    async fn publish_status(
        &self,
        ctx: &dyn DeliveryContext,
        job: &JobRequest,
        state: JobState,
        detail: Option<String>,
    ) -> Result<(), HandBack> {
        let status = JobStatus::new(job, state, &self.instance, detail);
        ctx.publish(&report::status_message(&self.topology, &status))
            .await
            .map_err(|e| HandBack(format!("cannot publish the {state} status: {e}")))
    }
}

/// Default limit of each cleanup step, in seconds.
pub const CLEANUP_TIMEOUT_SECS: u64 = 60;
/// Where each step's own log is kept, in the job's artifacts directory.
pub const STEPS_DIR: &str = "steps";

/// How the task's phases ended, before results are read.
#[derive(Debug)]
enum Ended {
    /// The run steps ran; the last one's end (the first that failed, or the last that passed).
    Ran {
        end: RunEnd,
        step_log: Option<String>,
    },
    /// A download or prepare step failed: the check itself never ran.
    Crashed {
        reason: String,
        step_log: Option<String>,
    },
    /// Time ran out.
    Aborted {
        note: String,
        step_log: Option<String>,
    },
    /// The runner is shutting down.
    Interrupted,
}

/// The ABORTED note of a step that timed out: its own limit, or the task's.
fn timeout_note(
    step: &NamedStep,
    limit: Duration,
    deadline: Instant,
    limit_note: &(dyn Fn(&str) -> String + Sync),
) -> String {
    match step.timeout {
        // Its own limit was the shorter one.
        Some(own) if Instant::now() + Duration::from_millis(500) < deadline => format!(
            "step {} timed out after {}s (its own timeout: {own}s)",
            step.name,
            limit.as_secs()
        ),
        _ => limit_note(&step.name),
    }
}

/// How long a task may take, and whether the broker's consumer timeout made it shorter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub limit: Duration,
    pub capped: bool,
}

/// Part of the consumer timeout kept for cleanup and publishing results: a quarter, at most 60 s.
fn consumer_margin(consumer: Duration) -> Duration {
    (consumer / 4).min(Duration::from_secs(60))
}

/// The task's time: its own limit, but never so long that its delivery (unacked while it runs,
/// received `elapsed` ago) would outlive RabbitMQ's consumer timeout, which closes the channel
/// and takes the job away. `consumer_timeout_secs` 0 means the broker has none.
pub fn task_budget(task_secs: u64, consumer_timeout_secs: u64, elapsed: Duration) -> Budget {
    let limit = Duration::from_secs(task_secs.max(1));
    if consumer_timeout_secs == 0 {
        return Budget {
            limit,
            capped: false,
        };
    }
    let consumer = Duration::from_secs(consumer_timeout_secs);
    let left = consumer
        .saturating_sub(consumer_margin(consumer))
        .saturating_sub(elapsed);
    if left < limit {
        Budget {
            limit: left,
            capped: true,
        }
    } else {
        Budget {
            limit,
            capped: false,
        }
    }
}

/// Until when cleanup steps may run: half the margin before the consumer timeout, leaving the
/// other half for publishing. `None` when the broker has no consumer timeout.
fn cleanup_deadline(consumer_timeout_secs: u64, elapsed: Duration) -> Option<Instant> {
    if consumer_timeout_secs == 0 {
        return None;
    }
    let consumer = Duration::from_secs(consumer_timeout_secs);
    let left = consumer
        .saturating_sub(consumer_margin(consumer) / 2)
        .saturating_sub(elapsed);
    Some(Instant::now() + left)
}

/// Runs a task's steps one by one: each in its own process group, with its output in
/// `steps/NN-name.log` and then appended to the combined `task.log`.
struct StepRunner {
    vars: TemplateVars,
    env: Vec<(String, String)>,
    /// The VM the steps run in, when the job was provisioned on one; `pushed` once the clone
    /// was copied into it (before the first step, after the downloads).
    remote: Option<Remote>,
    pushed: bool,
    cwd: PathBuf,
    artifacts: PathBuf,
    artifacts_location: String,
    counter: usize,
    shutdown: Shutdown,
}

impl StepRunner {
    /// Run one step until it ends, its own timeout or `deadline`. Returns how it ended and the
    /// location (URL or path) of its log.
    async fn run(
        &mut self,
        step: &NamedStep,
        log: &mut std::fs::File,
        deadline: Instant,
    ) -> (RunEnd, String) {
        self.counter += 1;
        let file_name = format!("{:02}-{}.log", self.counter, step.name);
        let step_log = self.artifacts.join(STEPS_DIR).join(&file_name);
        let location = format!("{}/{STEPS_DIR}/{file_name}", self.artifacts_location);
        let remaining = deadline.saturating_duration_since(Instant::now());
        let timeout = step
            .timeout
            .map_or(remaining, |own| Duration::from_secs(own).min(remaining));
        let _ = writeln!(log, "== step {file_name}: {}", step.run);
        let end = match self.vars.render(&step.run, Escape::Shell) {
            Err(e) => RunEnd::FailedToStart(e),
            Ok(_) if timeout.is_zero() => RunEnd::TimedOut(timeout),
            Ok(script) => {
                let script = match &self.remote {
                    None => script,
                    Some(remote) => {
                        if !self.pushed {
                            if let Err(e) = remote.push(&self.cwd).await {
                                let end = RunEnd::FailedToStart(e);
                                let _ =
                                    writeln!(log, "== step {file_name}: {}", describe_end(&end));
                                return (end, location);
                            }
                            self.pushed = true;
                        }
                        remote.step_command(&script, &self.env)
                    }
                };
                let command = TaskCommand {
                    script,
                    cwd: self.cwd.clone(),
                    env: self.env.clone(),
                    log_path: step_log.clone(),
                    timeout,
                };
                let started = Instant::now();
                let end = execute::run(&command, &mut self.shutdown).await;
                // The step's own log, then the combined one.
                if let Ok(mut own) = std::fs::File::open(&step_log) {
                    let _ = std::io::copy(&mut own, log);
                }
                let _ = writeln!(
                    log,
                    "== step {file_name}: {} after {:.1}s",
                    describe_end(&end),
                    started.elapsed().as_secs_f64()
                );
                return (end, location);
            }
        };
        let _ = writeln!(log, "== step {file_name}: {}", describe_end(&end));
        (end, location)
    }

    /// Copy the files matching `globs` (relative to the clone) into the artifacts directory,
    /// keeping their relative paths. Only regular files (a symlink could point anywhere on the
    /// host), never over a file already there (the runner's own logs).
    async fn copy_artifacts(&self, globs: &[String], log: &mut std::fs::File) -> usize {
        if globs.is_empty() {
            return 0;
        }
        let (root, dest, globs) = (self.cwd.clone(), self.artifacts.clone(), globs.to_vec());
        let copied =
            tokio::task::spawn_blocking(move || artifacts::copy_matching(&root, &dest, &globs))
                .await
                .unwrap_or_else(|e| vec![Err(format!("runner failure: {e}"))]);
        let mut count = 0;
        for line in copied {
            match line {
                Ok(path) => {
                    count += 1;
                    let _ = writeln!(log, "artifact kept: {path}");
                }
                Err(e) => {
                    let _ = writeln!(log, "artifact not kept: {e}");
                }
            }
        }
        count
    }
}

fn describe_end(end: &RunEnd) -> String {
    match end {
        RunEnd::Exited(exit) => report::outcome_of_exit(*exit).1,
        RunEnd::TimedOut(limit) => format!("timed out after {}s", limit.as_secs()),
        RunEnd::FailedToStart(reason) => format!("could not start: {reason}"),
        RunEnd::Interrupted => "interrupted: the runner is shutting down".into(),
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
    async fn handle(&self, incoming: Incoming, ctx: &dyn DeliveryContext) -> Disposition {
        match ProvisionedJob::from_json(&incoming.body) {
            Ok(provisioned) => {
                let _busy = slots_busy(&self.arch).track();
                self.run_job(&provisioned, ctx).await
            }
            Err(e) => Disposition::DeadLetter(e.to_string()),
        }
    }
}

/// Run until `shutdown`: consume the run queue of `runner.arch`. A task running at shutdown is
/// killed and its job handed back to the queue.
pub async fn run(config: Config, shutdown: Shutdown) -> anyhow::Result<()> {
    let arch = crate::settings::arch(&config)?.to_string();
    if arch.is_empty() || arch.contains(['.', '#', '*', ' ']) {
        anyhow::bail!("runner.arch: {arch:?} is not an arch name");
    }
    let mut settings = config.runner.clone();
    settings.work_dir = std::path::absolute(&settings.work_dir)
        .with_context(|| format!("runner.work_dir: {}", settings.work_dir.display()))?;
    settings.artifacts_dir = std::path::absolute(&settings.artifacts_dir)
        .with_context(|| format!("runner.artifacts_dir: {}", settings.artifacts_dir.display()))?;
    settings.mirror_dir = std::path::absolute(&settings.mirror_dir)
        .with_context(|| format!("runner.mirror_dir: {}", settings.mirror_dir.display()))?;
    // Fail at start, not on the first job, when the directories cannot be made.
    for (key, dir) in [
        ("runner.work_dir", &settings.work_dir),
        ("runner.artifacts_dir", &settings.artifacts_dir),
        ("runner.mirror_dir", &settings.mirror_dir),
    ] {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("{key}: cannot create {}", dir.display()))?;
    }
    if settings.allowed_repos.is_empty() {
        tracing::warn!(
            "runner.allowed_repos is empty: every job will crash until it lists task repositories"
        );
    }
    let topology = Topology::for_config(&config).with_arch(&arch);
    let consumer_cap = task_budget(
        settings.task_timeout_secs,
        settings.consumer_timeout_secs,
        Duration::ZERO,
    );
    if consumer_cap.capped {
        tracing::warn!(
            task_timeout_secs = settings.task_timeout_secs,
            consumer_timeout_secs = settings.consumer_timeout_secs,
            effective_secs = consumer_cap.limit.as_secs(),
            "tasks are cut short below the broker's consumer timeout; raise consumer_timeout in rabbitmq.conf and runner.consumer_timeout_secs to let them run longer"
        );
    }
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(30))
        .user_agent(concat!("taskbot-runner/", env!("CARGO_PKG_VERSION")))
        .build()
        .context("cannot set up the HTTP client for downloads")?;
    let handler = Arc::new(RunnerHandler {
        topology: topology.clone(),
        arch: arch.clone(),
        instance: taskbot::instance_name(&format!("runner/{arch}")),
        settings: settings.clone(),
        shutdown: shutdown.clone(),
        http,
    });
    let spec = ConsumerSpec {
        queue: topology.run_queue(&arch),
        name: format!("taskbot-runner-{arch}"),
        concurrency: settings.concurrency,
        retry_delay: Duration::from_secs(2),
    };
    tracing::info!(arch = %arch, queue = %spec.queue, concurrency = settings.concurrency, "runner starting");
    taskbot::ops::global()
        .registry
        .gauge(
            SLOTS_METRIC,
            "Task slots of the runner (runner.concurrency).",
            &["arch"],
        )
        .with(&[&arch])
        .set(i64::try_from(settings.concurrency.max(1)).unwrap_or(i64::MAX));
    // Exposed (as 0) before the first job.
    slots_busy(&arch);
    // Prefetch = concurrency: a job waiting in the client's buffer behind running ones would be
    // unacked all that time, and RabbitMQ's consumer timeout counts from delivery.
    let mut amqp_config = config.amqp.clone();
    amqp_config.prefetch = u16::try_from(settings.concurrency.max(1)).unwrap_or(u16::MAX);
    amqp::consume(&amqp_config, &topology, spec, handler, shutdown).await;
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
            http: reqwest::Client::new(),
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
                vm: None,
                created_at: Utc::now(),
            },
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
        let vm = Machine::Vm {
            host: "vm1".into(),
            port: 22,
            user: "root".into(),
            key_path: "/k".into(),
            host_keys: Vec::new(),
        };
        // A job provisioned on a VM runs there (over SSH), so it is not refused.
        assert_eq!(
            h.refusal(&provisioned("file:///srv/tasks/example", "x86_64", vm)),
            None
        );
    }

    #[test]
    fn task_time_is_capped_below_the_consumer_timeout() {
        let secs = Duration::from_secs;
        assert_eq!(
            task_budget(600, 1800, secs(10)),
            Budget {
                limit: secs(600),
                capped: false
            }
        );
        // 1800 s minus the 60 s margin minus the 100 s already spent cloning.
        assert_eq!(
            task_budget(3600, 1800, secs(100)),
            Budget {
                limit: secs(1640),
                capped: true
            }
        );
        // Short timeouts keep a quarter as margin.
        assert_eq!(
            task_budget(30, 8, Duration::ZERO),
            Budget {
                limit: secs(6),
                capped: true
            }
        );
        assert_eq!(
            task_budget(3600, 0, secs(5000)),
            Budget {
                limit: secs(3600),
                capped: false
            },
            "0: the broker has no consumer timeout"
        );
        assert_eq!(task_budget(30, 8, secs(20)).limit, Duration::ZERO);
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
