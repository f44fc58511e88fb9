//! Running a prepared task: its downloads, then its `prepare` and `run` steps within the task's
//! time limit, then its `cleanup` steps whatever happened. Each step runs in its own process group
//! ([`execute`]), here or in the job's VM, with its output streamed into the job's log between
//! a line naming the step (`== step 02-setup: ...`) and one saying how it ended.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use taskbot::artifacts::{step_name, EVENTS_FILE, TASK_LOG};
use taskbot::download::{self, DownloadSpec, RetryPolicy};
use taskbot::messages::JobRequest;
use taskbot::Shutdown;

use crate::budget::{cleanup_deadline, Budget};
use crate::execute::{self, Confinement, RunEnd, TaskCommand, TaskExit};
use crate::job::HandBack;
use crate::log::JobLog;
use crate::prepare::Prepared;
use crate::remote::{self, RebootError, Remote};
use crate::secrets::Delivered;
use crate::task::{self, Escape, NamedStep, Phase, TaskFile, TemplateVars};
use crate::{report, RunnerHandler};

/// Default limit of each cleanup step, in seconds.
pub const CLEANUP_TIMEOUT_SECS: u64 = 60;
/// How long a VM may take to come back from a reboot unless its reboot step says otherwise;
/// one that takes longer is FAILED (it did not come back), within the task's own time.
pub const REBOOT_TIMEOUT_SECS: u64 = 600;

/// How the task's phases ended, before results are read.
#[derive(Debug)]
pub(crate) enum Ended {
    /// The run steps ran; the last one's end (the first that failed, or the last that passed).
    Ran(RunEnd),
    /// A download or prepare step failed: the check itself never ran.
    Crashed(String),
    /// Time ran out.
    Aborted(String),
    /// The runner's verdict on the machine: the VM did not come back from a reboot.
    Failed(String),
    /// The VM came back as another machine or without the task's files: CRASHED, and nothing
    /// is copied back from it.
    MachineLost(String),
    /// The runner is shutting down.
    Interrupted,
}

impl Ended {
    /// Whether the job's VM can still be asked for the task's files: not when it did not come
    /// back from a reboot, nor when it came back as another machine.
    pub fn vm_answers(&self) -> bool {
        !matches!(self, Ended::Failed(_) | Ended::MachineLost(_))
    }
}

/// The job's time: when its task must end, and how long its cleanup may take after that.
pub(crate) struct TimeLimit {
    pub budget: Budget,
    /// When the task's downloads, prepare and run steps must have ended.
    pub deadline: Instant,
    /// When the delivery arrived (the broker's consumer timeout counts from then).
    pub received_at: Instant,
    pub consumer_timeout_secs: u64,
}

impl TimeLimit {
    /// The task's time, counted from now.
    pub fn starting_now(budget: Budget, received_at: Instant, consumer_timeout_secs: u64) -> Self {
        TimeLimit {
            budget,
            deadline: Instant::now() + budget.limit,
            received_at,
            consumer_timeout_secs,
        }
    }

    /// The ABORTED note when the task's time ran out during `what`.
    fn note(&self, what: &str) -> String {
        let why = if self.budget.capped {
            " (the job's time is capped below the broker's consumer timeout, runner.consumer_timeout_secs)"
        } else {
            ""
        };
        format!(
            "step {what} timed out: the task's time limit of {}s passed{why}",
            self.budget.limit.as_secs()
        )
    }

    /// The ABORTED note of a step that timed out after `limit`: its own limit, or the task's.
    fn step_note(&self, step: &NamedStep, limit: Duration) -> String {
        match step.timeout {
            // Its own limit was the shorter one.
            Some(own) if Instant::now() + Duration::from_millis(500) < self.deadline => format!(
                "step {} timed out after {}s (its own timeout: {own}s)",
                step.name,
                limit.as_secs()
            ),
            _ => self.note(&step.name),
        }
    }

    /// Until when cleanup steps may run: `None` when the broker has no consumer timeout.
    fn cleanup_until(&self) -> Option<Instant> {
        cleanup_deadline(self.consumer_timeout_secs, self.received_at.elapsed())
    }
}

/// What the end of one `prepare` or `run` step means for the task: `Ok` to go on (with how the
/// task ends if this was its last step), `Err` to stop with this ending.
fn judge(phase: Phase, step: &NamedStep, end: RunEnd, limit: &TimeLimit) -> Result<Ended, Ended> {
    match end {
        RunEnd::Interrupted => Err(Ended::Interrupted),
        RunEnd::TimedOut(after) => Err(Ended::Aborted(limit.step_note(step, after))),
        RunEnd::Exited(TaskExit::Code(0)) => Ok(Ended::Ran(end)),
        RunEnd::Exited(exit) if phase == Phase::Prepare => Err(Ended::Crashed(format!(
            "prepare step {} failed: {}",
            step.name,
            report::outcome_of_exit(exit).1
        ))),
        RunEnd::FailedToStart(reason) if phase == Phase::Prepare => Err(Ended::Crashed(format!(
            "prepare step {} could not start: {reason}",
            step.name
        ))),
        // A failing step ends the run: its exit code is the task's.
        end => Err(Ended::Ran(end)),
    }
}

/// How a local job's steps are confined: they may write the clone and the artifacts directory,
/// but not the runner's log in it.
fn confinement(
    handler: &RunnerHandler,
    prepared: &Prepared,
    clone_dir: &Path,
) -> Option<Confinement> {
    if prepared.remote.is_some() {
        return None;
    }
    let sandbox = handler.sandbox.clone()?;
    let artifacts = &prepared.artifacts;
    Some(Confinement {
        sandbox,
        writable: vec![clone_dir.to_path_buf(), artifacts.clone()],
        protected: vec![artifacts.join(TASK_LOG)],
    })
}

/// Runs a task's steps one by one: each in its own process group, with its output streamed into
/// the job's `task.log`.
pub(crate) struct StepRunner {
    vars: TemplateVars,
    env: Vec<(String, String)>,
    /// The VM the steps run in, when the job was provisioned on one; `pushed` once the clone
    /// was copied into it (before the first step, after the downloads).
    remote: Option<Remote>,
    pub pushed: bool,
    cwd: PathBuf,
    counter: usize,
    shutdown: Shutdown,
    http: reqwest::Client,
    download_max_bytes: u64,
    download_attempts: u32,
    /// The sandbox of local steps (`None` for a VM job, or with `runner.sandbox = "none"`).
    confinement: Option<Confinement>,
    secrets: Arc<[Delivered]>,
    /// How often the job's VM was rebooted so far (`$TASKBOT_REBOOT_COUNT`), and how often it
    /// may be (`runner.vm_max_reboots`).
    reboots: u32,
    max_reboots: u32,
}

impl StepRunner {
    /// The steps of `prepared`, run in `clone_dir`; `artifacts_location` is how results refer to
    /// the job's artifacts.
    pub fn new(
        handler: &RunnerHandler,
        job: &JobRequest,
        prepared: &Prepared,
        clone_dir: &Path,
        artifacts_location: &str,
    ) -> Self {
        // The paths the task sees: here, or inside its VM.
        let (workdir, artifacts) = match &prepared.remote {
            None => (clone_dir.to_path_buf(), prepared.artifacts.clone()),
            Some(_) => (
                PathBuf::from(remote::REMOTE_WORKDIR),
                PathBuf::from(remote::REMOTE_ARTIFACTS),
            ),
        };
        StepRunner {
            vars: TemplateVars {
                item: job.item.clone(),
                item_type: job.item_type.clone(),
                arch: job.arch.clone(),
                job_id: job.job_id.to_string(),
                workdir: workdir.display().to_string(),
                artifacts: format!("{}/", artifacts.display()),
                args: job.args.clone(),
            },
            env: handler
                .settings
                .task_env
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .chain(execute::task_env(
                    job,
                    &workdir,
                    &artifacts,
                    &workdir.join(prepared.task.results_path()),
                    &artifacts.join(EVENTS_FILE),
                    artifacts_location,
                ))
                .collect(),
            remote: prepared.remote.clone(),
            pushed: false,
            cwd: clone_dir.to_path_buf(),
            counter: 0,
            shutdown: handler.shutdown.clone(),
            http: handler.http.clone(),
            download_max_bytes: handler.settings.download_max_bytes,
            download_attempts: handler.settings.download_attempts,
            confinement: confinement(handler, prepared, clone_dir),
            secrets: prepared.secrets.clone(),
            reboots: 0,
            max_reboots: handler.settings.vm_max_reboots,
        }
    }

    /// The whole task: downloads, `prepare`, `run`, then `cleanup` whatever happened. `Err` when
    /// the runner shuts down meanwhile: the job goes back to the queue.
    pub async fn run_task(
        &mut self,
        task: &TaskFile,
        log: &JobLog,
        limit: &TimeLimit,
    ) -> Result<Ended, HandBack> {
        let ended = self.run_phases(task, log, limit).await;
        if matches!(ended, Ended::Interrupted) {
            return Err(HandBack::shutdown());
        }
        self.run_cleanup(task, log, limit.cleanup_until()).await?;
        Ok(ended)
    }

    /// Downloads, then `prepare`, then `run`, each bounded by the task's deadline.
    async fn run_phases(&mut self, task: &TaskFile, log: &JobLog, limit: &TimeLimit) -> Ended {
        if let Err(ended) = self.download_all(task, log, limit).await {
            return ended;
        }
        let mut last = Ended::Ran(RunEnd::Exited(TaskExit::Code(0)));
        for phase in [Phase::Prepare, Phase::Run] {
            for step in task.steps(phase) {
                match self.run_until_no_reboot(phase, &step, log, limit).await {
                    Ok(passed) if phase == Phase::Run => last = passed,
                    Ok(_) => {}
                    Err(ended) => return ended,
                }
            }
        }
        last
    }

    /// One `prepare` or `run` step, judged. A reboot step reboots the VM; a step that asked for
    /// a reboot (`$TASKBOT_REBOOT`) and passed runs again once the VM is back, as tmt-reboot
    /// does, with `$TASKBOT_REBOOT_COUNT` one higher.
    async fn run_until_no_reboot(
        &mut self,
        phase: Phase,
        step: &NamedStep,
        log: &JobLog,
        limit: &TimeLimit,
    ) -> Result<Ended, Ended> {
        if step.reboot {
            self.reboot(step, log, limit).await?;
            return Ok(Ended::Ran(RunEnd::Exited(TaskExit::Code(0))));
        }
        loop {
            let end = self.run(step, log, limit.deadline).await;
            let passed = judge(phase, step, end, limit)?;
            let asked = match &self.remote {
                Some(remote) => remote
                    .take_reboot_request()
                    .await
                    .map_err(|e| Ended::Crashed(format!("after step {}: {e}", step.name)))?,
                None => false,
            };
            if !asked {
                return Ok(passed);
            }
            log.line(format_args!(
                "== step {} asked for a reboot ($TASKBOT_REBOOT)",
                step.name
            ));
            self.reboot(step, log, limit).await?;
        }
    }

    /// Reboot the job's VM and wait for it, within the step's own timeout and the task's time.
    async fn reboot(
        &mut self,
        step: &NamedStep,
        log: &JobLog,
        limit: &TimeLimit,
    ) -> Result<(), Ended> {
        let Some(remote) = self.remote.clone() else {
            // Refused when the task file was read; a local job never gets here.
            return Err(Ended::Crashed(format!(
                "step {}: only a VM can be rebooted",
                step.name
            )));
        };
        if self.reboots >= self.max_reboots {
            return Err(Ended::Crashed(format!(
                "step {} asked for reboot number {}: a job may reboot its VM {} times \
                 (runner.vm_max_reboots)",
                step.name,
                self.reboots + 1,
                self.max_reboots
            )));
        }
        // A reboot step's own timeout bounds the wait; a requested reboot gets the default.
        let own = step.timeout.filter(|_| step.reboot);
        let wait_until = Instant::now() + Duration::from_secs(own.unwrap_or(REBOOT_TIMEOUT_SECS));
        let deadline = wait_until.min(limit.deadline);
        log.line(format_args!("== step {}: rebooting the VM", step.name));
        let rebooted = tokio::select! {
            r = remote.reboot(deadline) => r,
            _ = self.shutdown.wait() => return Err(Ended::Interrupted),
        };
        self.reboots += 1;
        match rebooted {
            Ok(took) => {
                log.line(format_args!(
                    "== step {}: the VM is back after {:.1}s (reboot {})",
                    step.name,
                    took.as_secs_f64(),
                    self.reboots
                ));
                Ok(())
            }
            // The task's time ran out first: no verdict on the machine.
            Err(RebootError::NotBack(why)) if limit.deadline < wait_until => {
                log.line(format_args!("== step {}: {why}", step.name));
                Err(Ended::Aborted(limit.note(&step.name)))
            }
            Err(RebootError::NotBack(why)) => {
                log.line(format_args!("== step {}: {why}", step.name));
                Err(Ended::Failed(format!("step {}: {why}", step.name)))
            }
            Err(RebootError::Broken(why)) => {
                log.line(format_args!("== step {}: {why}", step.name));
                Err(Ended::MachineLost(format!("step {}: {why}", step.name)))
            }
        }
    }

    /// Each cleanup step with its own limit (default [`CLEANUP_TIMEOUT_SECS`]), within what is
    /// left before the broker would give up on the delivery (`until`).
    async fn run_cleanup(
        &mut self,
        task: &TaskFile,
        log: &JobLog,
        until: Option<Instant>,
    ) -> Result<(), HandBack> {
        // Validation keeps reboot steps out of cleanup.
        for step in task.steps(Phase::Cleanup) {
            let limit = Duration::from_secs(step.timeout.unwrap_or(CLEANUP_TIMEOUT_SECS));
            let step_deadline = until.map_or(Instant::now() + limit, |end| {
                end.min(Instant::now() + limit)
            });
            let end = self.run(&step, log, step_deadline).await;
            if end == RunEnd::Interrupted {
                return Err(HandBack::shutdown());
            }
        }
        Ok(())
    }

    /// Fetch `downloads` into the clone. Any failure crashes the job naming the URL.
    async fn download_all(
        &self,
        task: &TaskFile,
        log: &JobLog,
        limit: &TimeLimit,
    ) -> Result<(), Ended> {
        let policy = RetryPolicy {
            attempts: self.download_attempts,
            first_pause: Duration::from_secs(1),
        };
        for (i, d) in task.downloads.iter().enumerate() {
            let spec = self.download_spec(i, d).map_err(Ended::Crashed)?;
            let url = &spec.url;
            let (mut shutdown, mut progress) = (self.shutdown.clone(), log.writer());
            let download = download::download(&self.http, &spec, policy, &mut progress);
            let result = tokio::select! {
                r = tokio::time::timeout_at(limit.deadline.into(), download) => r,
                _ = shutdown.wait() => return Err(Ended::Interrupted),
            };
            match result {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(Ended::Crashed(format!("download {url} failed: {e}"))),
                Err(_) => return Err(Ended::Aborted(limit.note(&format!("downloads ({url})")))),
            }
        }
        Ok(())
    }

    /// The `i`-th entry of `downloads`, its templates rendered and its destination checked.
    fn download_spec(&self, i: usize, d: &task::Download) -> Result<DownloadSpec, String> {
        let url = self
            .vars
            .render(&d.url, Escape::Url)
            .map_err(|e| format!("downloads[{i}].url: {e}"))?;
        let dest = match &d.dest {
            Some(dest) => self
                .vars
                .render(dest, Escape::Raw)
                .map_err(|e| format!("downloads[{i}].dest: {e}"))?,
            None => download::default_dest(&url)
                .ok_or_else(|| format!("downloads[{i}]: {url} names no file; give a dest"))?,
        };
        task::relative_inside(&dest).map_err(|e| format!("downloads[{i}].dest: {e}"))?;
        Ok(DownloadSpec {
            url,
            sha256: d.sha256.clone(),
            max_bytes: d.max_bytes.unwrap_or(u64::MAX).min(self.download_max_bytes),
            dest: download::dest_in(&self.cwd, &dest),
        })
    }

    /// Run one step until it ends, its own timeout or `deadline`; how it ended.
    async fn run(&mut self, step: &NamedStep, log: &JobLog, deadline: Instant) -> RunEnd {
        self.counter += 1;
        let numbered = step_name(self.counter, &step.name);
        let remaining = deadline.saturating_duration_since(Instant::now());
        let timeout = step
            .timeout
            .map_or(remaining, |own| Duration::from_secs(own).min(remaining));
        log.line(format_args!("== step {numbered}: {}", step.run));
        let script = match self.script(step, timeout).await {
            Ok(script) => script,
            Err(end) => {
                log.line(format_args!("== step {numbered}: {}", describe_end(&end)));
                return end;
            }
        };
        let command = TaskCommand {
            script,
            cwd: self.cwd.clone(),
            env: self.env.clone(),
            output: log.output(),
            timeout,
            confinement: self.confinement.clone(),
            secrets: self.secrets.clone(),
        };
        let started = Instant::now();
        let end = execute::run(&command, &mut self.shutdown).await;
        log.line(format_args!(
            "== step {numbered}: {} after {:.1}s",
            describe_end(&end),
            started.elapsed().as_secs_f64()
        ));
        end
    }

    /// The shell command of a step as it runs: rendered, and for a VM wrapped in `ssh` (the clone
    /// copied in before the first step). `Err`: how the step ended without starting.
    async fn script(&mut self, step: &NamedStep, timeout: Duration) -> Result<String, RunEnd> {
        let script = self
            .vars
            .render(&step.run, Escape::Shell)
            .map_err(RunEnd::FailedToStart)?;
        if timeout.is_zero() {
            return Err(RunEnd::TimedOut(timeout));
        }
        let Some(remote) = &self.remote else {
            return Ok(script);
        };
        if !self.pushed {
            remote
                .push(&self.cwd)
                .await
                .map_err(RunEnd::FailedToStart)?;
            self.pushed = true;
        }
        let mut env = self.env.clone();
        env.push(("TASKBOT_REBOOT".into(), remote::REBOOT_REQUEST.into()));
        env.push(("TASKBOT_REBOOT_COUNT".into(), self.reboots.to_string()));
        Ok(remote.step_command(&script, &env))
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
