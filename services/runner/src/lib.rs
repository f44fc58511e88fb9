//! The `runner` service: takes provisioned jobs from the run queue of one arch, clones each task's
//! repository, runs it, and publishes its results.
//!
//! A job's life here (`job.rs`), each phase announced as a job status on the results exchange:
//! `cloning` → `prepare.rs` (allowlist and arch check, fetch into the repository's mirror and clone
//! from it, read `taskbot.yaml`, check the item type, arch and environment the task accepts, the
//! VM, the artifacts directory and its log (`log.rs`), the time budget) → `running` → `steps.rs`
//! (downloads, `prepare` steps, `run` steps, each step in its own process group, its output
//! drained into the job's log, redacted then capped, with its time limit; then `cleanup` steps
//! whatever happened) → `finish.rs` (the task's files back from its VM, the artifacts directory
//! swept of links and what passes the caps, the `artifacts` globs copied, what is kept redacted,
//! results and events read into a verdict) → `reporting` → results and the final `done` or
//! `crashed` status, published with confirms before the input is acked. The outcome is kept in
//! the runner's [`outbox`] from the verdict until the broker has confirmed it, so a broker outage
//! during a task costs a re-publish when the job comes back, not a re-run. The secrets a job is
//! granted ([`secrets`]) reach its sandboxed steps only and are taken out ([`redact`]) of its
//! log (before its cap), its artifacts and its verdict. Whatever goes wrong with the task
//! itself ends as a result (CRASHED, ABORTED, FAILED) so the job never silently disappears;
//! only broker trouble and shutdown hand the job back to the queue. What a job leaves in its artifacts directory is named in
//! [`taskbot::artifacts`].
//!
//! The delivery stays unacked while the task runs (at-least-once), so the task's time is capped
//! below the broker's consumer timeout ([`budget`], `runner.consumer_timeout_secs`).
//!
//! The decisions live in pure modules ([`task`], [`results`], [`report`], [`budget`],
//! [`git::repo_allowed`], [`artifacts::glob_matches`]); [`git`], [`execute`] and
//! [`taskbot::download`] hold the I/O. The handler publishes only through its
//! [`DeliveryContext`], so the whole job is tested without a broker (`tests/job.rs`).

pub mod artifacts;
pub mod budget;
pub mod claim;
pub mod events;
pub mod execute;
mod finish;
pub mod git;
mod job;
mod log;
pub mod outbox;
mod prepare;
pub mod redact;
pub mod remote;
pub mod repo_url;
pub mod report;
pub mod results;
pub mod sandbox;
pub mod secrets;
mod service;
mod steps;
pub mod task;
mod task_files;
pub mod workspace;

pub use budget::{task_budget, Budget};
pub use service::{configured_arch, configured_instance, identity, run};
pub use steps::CLEANUP_TIMEOUT_SECS;

use taskbot::amqp::{DeliveryContext, Disposition, Handler, Incoming};
use taskbot::config::RunnerConfig;
use taskbot::messages::{Message, ProvisionedJob};
use taskbot::{Shutdown, Topology};

/// Handles the deliveries of one arch's run queue.
pub struct RunnerHandler {
    pub topology: Topology,
    /// The arch this runner serves.
    pub arch: String,
    /// `runner.*` settings, with `work_dir` and `artifacts_dir` made absolute (tasks get them in
    /// their environment and run in another directory).
    pub settings: RunnerConfig,
    /// `runner/<arch>@<host>/<instance>` ([`identity`]): shown in statuses and results.
    pub instance: String,
    /// Stops a running task so the job can go back to the queue when the runner shuts down.
    pub shutdown: Shutdown,
    /// For tasks' `downloads`.
    pub http: reqwest::Client,
    /// What local steps run in; `None` only with `runner.sandbox = "none"`.
    pub sandbox: Option<std::sync::Arc<sandbox::Sandbox>>,
    /// The provisioner's broker user (`amqp.user_name(Service::Provisioner)`): a run message is
    /// honoured only when its AMQP `user_id` is this one. Only the provisioner dispatches jobs;
    /// anything else on the run queue (a message injected by whoever could publish there) is
    /// dead-lettered, and no result is published for it: the job is not the runner's to report.
    pub provisioner_user: String,
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

impl RunnerHandler {
    /// Why a run message published by broker user `user` must not be run, if so.
    pub fn sender_refusal(&self, user: Option<&str>) -> Option<String> {
        let expected = &self.provisioner_user;
        match user {
            Some(user) if user == expected => None,
            Some(user) => Some(format!(
                "run message published by broker user {user:?}; only the provisioner's user \
                 {expected:?} dispatches jobs, so it is not run"
            )),
            None => Some(format!(
                "run message published without a user_id; only the provisioner's user \
                 {expected:?} dispatches jobs, so it is not run"
            )),
        }
    }
}

#[async_trait::async_trait]
impl Handler for RunnerHandler {
    async fn handle(&self, incoming: Incoming, ctx: &dyn DeliveryContext) -> Disposition {
        if let Some(reason) = self.sender_refusal(incoming.user_id.as_deref()) {
            tracing::warn!(%reason, "run message refused");
            return Disposition::DeadLetter(reason);
        }
        match ProvisionedJob::from_json(&incoming.body) {
            Ok(provisioned) => {
                let _busy = slots_busy(&self.arch).track();
                let _claim = match self.claim(&provisioned, ctx).await {
                    Ok(claim) => claim,
                    Err(job::HandBack(reason)) => return Disposition::Retry(reason),
                };
                if let Some(kept) = self.kept_outcome(&provisioned).await {
                    return Disposition::Done(kept);
                }
                self.run_job(&provisioned, ctx).await
            }
            Err(e) => Disposition::DeadLetter(e.to_string()),
        }
    }

    /// Every final message of the job is confirmed: its outcome leaves the outbox.
    async fn confirmed(&self, incoming: &Incoming, _published: &[taskbot::amqp::Outgoing]) {
        if let Ok(provisioned) = ProvisionedJob::from_json(&incoming.body) {
            self.forget_outcome(provisioned.job.job_id).await;
        }
    }
}
