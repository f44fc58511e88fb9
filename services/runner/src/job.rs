//! One job's life, from its delivery to its [`Disposition`], each phase announced as a job status:
//! `cloning` → [`prepare`](crate::prepare) → `running` → [`steps`](crate::steps) →
//! [`finish`](crate::finish) → the outcome kept in the [`outbox`](crate::outbox) → `reporting` →
//! results and the final status, which the consume loop publishes (with confirms) before it
//! marks the outbox entry published and acks the delivery. A job whose outcome is in the outbox
//! (pending or published) is not run again: its kept messages are published instead.

use taskbot::amqp::{DeliveryContext, Disposition, Outgoing};
use taskbot::artifacts::TASK_LOG;
use taskbot::messages::{JobRequest, JobState, JobStatus, Machine, ProvisionedJob};

use crate::artifacts::Allowance;
use crate::claim::JobClaim;
use crate::finish;
use crate::outbox::{Outbox, Pending};
use crate::prepare::Prepared;
use crate::report::{self, ResultFactory, Verdict};
use crate::steps::{Ended, StepRunner, TimeLimit};
use crate::workspace::JobDir;
use crate::RunnerHandler;

/// Why a job was abandoned without a verdict: it goes back to the queue.
pub(crate) struct HandBack(pub String);

/// How often a copy of a job waiting for its claim looks again.
const CLAIM_POLL: std::time::Duration = std::time::Duration::from_millis(250);

impl HandBack {
    /// The runner is stopping: another runner (or this one, restarted) runs the job again.
    pub fn shutdown() -> HandBack {
        HandBack("the runner is shutting down; the job goes back to the queue".into())
    }
}

impl RunnerHandler {
    /// Run the job; what the consume loop should do with its delivery.
    pub(crate) async fn run_job(
        &self,
        provisioned: &ProvisionedJob,
        ctx: &dyn DeliveryContext,
    ) -> Disposition {
        let job = &provisioned.job;
        let verdict = match self.verdict_of(provisioned, ctx).await {
            Ok(verdict) => verdict,
            Err(HandBack(reason)) => return Disposition::Retry(reason),
        };
        match verdict.state {
            JobState::Crashed => {
                tracing::warn!(job_id = %job.job_id, reason = %verdict.detail, "job crashed")
            }
            _ => tracing::info!(job_id = %job.job_id, summary = %verdict.detail, "job done"),
        }
        // Made before the outcome, whose final status must be the later one: stores order a
        // job's history by the statuses' own times.
        let reporting = JobStatus::new(job, JobState::Reporting, &self.instance, None);
        let outcome = report::outcome(&self.topology, job, &verdict, &self.instance);
        // Kept before anything of it is published: from here on, losing the broker costs a
        // re-publish when the job comes back, not a re-run. The `reporting` status is kept
        // first, so a job whose outcome comes from the outbox still has its whole history.
        let reporting_message = report::status_message(&self.topology, &reporting);
        let kept: Vec<Outgoing> = std::iter::once(reporting_message)
            .chain(outcome.iter().cloned())
            .collect();
        self.keep_outcome(job.job_id, &kept).await;
        if let Err(HandBack(reason)) = self.publish(ctx, &reporting).await {
            return Disposition::Retry(format!(
                "{reason}; the outcome is kept in the outbox and published when the job comes back"
            ));
        }
        Disposition::Done(outcome)
    }

    /// Claim the job on this host ([`crate::claim`]), waiting while another runner sharing the
    /// work directory handles a copy of it. Handed back when the runner stops meanwhile, or when
    /// the wait would outlive this delivery's consumer timeout. `None`: the claim could not be
    /// made (the work directory's trouble, logged); the job runs unclaimed rather than not at all.
    pub(crate) async fn claim(
        &self,
        provisioned: &ProvisionedJob,
        ctx: &dyn DeliveryContext,
    ) -> Result<Option<JobClaim>, HandBack> {
        let job_id = provisioned.job.job_id;
        let mut shutdown = self.shutdown.clone();
        let mut logged = false;
        loop {
            let work_dir = self.settings.work_dir.clone();
            match tokio::task::spawn_blocking(move || JobClaim::try_take(&work_dir, job_id)).await {
                Ok(Ok(Some(claim))) => return Ok(Some(claim)),
                Ok(Ok(None)) => {}
                Ok(Err(error)) => {
                    tracing::warn!(%job_id, %error, "cannot claim the job in runner.work_dir; running it unclaimed");
                    return Ok(None);
                }
                Err(error) => {
                    tracing::warn!(%job_id, %error, "cannot claim the job; running it unclaimed");
                    return Ok(None);
                }
            }
            if !logged {
                tracing::info!(%job_id, "another runner on this host is handling this job; waiting for it, then publishing its outcome");
                logged = true;
            }
            let elapsed = ctx.received_at().elapsed();
            if crate::budget::time_left(self.settings.consumer_timeout_secs, elapsed)
                .is_some_and(|left| left.is_zero())
            {
                return Err(HandBack(
                    "another runner on this host is still handling this job; it goes back to \
                     the queue before the broker's consumer timeout"
                        .into(),
                ));
            }
            tokio::select! {
                _ = shutdown.wait() => return Err(HandBack::shutdown()),
                _ = tokio::time::sleep(CLAIM_POLL) => {}
            }
        }
    }

    /// The job's outcome from the outbox, when an earlier run of it could not have it confirmed
    /// (the broker went away): published instead of running the task again. A bad entry is
    /// logged (it was moved aside) and the job runs.
    pub(crate) async fn kept_outcome(&self, provisioned: &ProvisionedJob) -> Option<Vec<Outgoing>> {
        let job_id = provisioned.job.job_id;
        let outbox = self.outbox();
        let exchanges = vec![
            self.topology.results_exchange(),
            self.topology.events_exchange(),
        ];
        let pending = tokio::task::spawn_blocking(move || outbox.pending(job_id, &exchanges)).await;
        match pending {
            Ok(Pending::Kept(messages)) => {
                tracing::info!(%job_id, messages = messages.len(), "job finished before: publishing its outcome from the outbox, not running it again");
                Some(messages)
            }
            Ok(Pending::None) => None,
            Ok(Pending::Refused { reason, moved_to }) => {
                let moved_to = moved_to.map(|p| p.display().to_string());
                tracing::warn!(%job_id, %reason, moved_to = moved_to.as_deref().unwrap_or("(could not be moved)"), "outbox entry refused; the job runs again");
                None
            }
            Err(error) => {
                tracing::warn!(%job_id, %error, "cannot read the outbox; the job runs again");
                None
            }
        }
    }

    /// Keep `outcome` in the outbox. A failure is logged, not fatal: the outcome can still be
    /// published now, it just would not survive a broker outage.
    async fn keep_outcome(&self, job_id: uuid::Uuid, outcome: &[Outgoing]) {
        let (outbox, outcome) = (self.outbox(), outcome.to_vec());
        match tokio::task::spawn_blocking(move || outbox.keep(job_id, &outcome)).await {
            Ok(Ok(path)) => {
                tracing::debug!(%job_id, path = %path.display(), "outcome kept in the outbox")
            }
            Ok(Err(error)) => {
                tracing::warn!(%job_id, dir = %self.outbox().dir().display(), %error, "cannot keep the outcome in the outbox; a broker outage now would cost a re-run")
            }
            Err(error) => tracing::warn!(%job_id, %error, "cannot keep the outcome in the outbox"),
        }
    }

    /// Mark the job's outbox entry published: all its messages were confirmed.
    pub(crate) async fn forget_outcome(&self, job_id: uuid::Uuid) {
        let outbox = self.outbox();
        match tokio::task::spawn_blocking(move || outbox.mark_published(job_id)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::warn!(%job_id, path = %self.outbox().path(job_id).display(), %error, "cannot mark the outcome published in the outbox; it is published again if the job comes back")
            }
            Err(error) => {
                tracing::warn!(%job_id, %error, "cannot mark the outcome published in the outbox")
            }
        }
    }

    /// The outbox of this runner's `work_dir`.
    fn outbox(&self) -> Outbox {
        Outbox::new(&self.settings.work_dir)
    }

    /// From `cloning` to the verdict: whatever goes wrong with the task itself is a verdict.
    async fn verdict_of(
        &self,
        provisioned: &ProvisionedJob,
        ctx: &dyn DeliveryContext,
    ) -> Result<Verdict, HandBack> {
        let job = &provisioned.job;
        let mut factory =
            ResultFactory::new(job, &self.instance, self.artifacts_location(job.job_id));
        let detail = format!("{} at {}", job.task.repo, job.task.git_ref);
        self.publish_status(ctx, job, JobState::Cloning, Some(detail))
            .await?;
        let verdict = match self.refusal(provisioned) {
            Some(reason) => factory.crashed(&reason, None),
            None => {
                self.fetch_and_run(job, &provisioned.machine, &mut factory, ctx)
                    .await?
            }
        };
        Ok(verdict)
    }

    /// Clone into a fresh, locked job directory ([`JobDir`]), run, and remove the directory
    /// whatever happened (artifacts stay). A runner killed meanwhile leaves it to the next
    /// runner's start.
    async fn fetch_and_run(
        &self,
        job: &JobRequest,
        machine: &Machine,
        factory: &mut ResultFactory,
        ctx: &dyn DeliveryContext,
    ) -> Result<Verdict, HandBack> {
        let work_dir = self.settings.work_dir.clone();
        let prefix = format!("{}-", job.job_id);
        let job_dir = tokio::task::spawn_blocking(move || JobDir::create(&work_dir, &prefix)).await;
        let job_dir = match job_dir {
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
        let outcome = self.run_in(job, machine, &job_dir, factory, ctx).await;
        let path = job_dir.path().to_path_buf();
        let removed = match tokio::task::spawn_blocking(move || job_dir.remove()).await {
            Ok(result) => result.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(error) = removed {
            // The job's verdict stands; a directory left behind only costs disk space (and the
            // next runner's start removes it).
            tracing::warn!(job_id = %job.job_id, path = %path.display(), %error, "cannot remove the job's directory");
        }
        outcome
    }

    /// Prepare, announce `running`, run the steps, and conclude, in `job_dir`.
    async fn run_in(
        &self,
        job: &JobRequest,
        machine: &Machine,
        job_dir: &JobDir,
        factory: &mut ResultFactory,
        ctx: &dyn DeliveryContext,
    ) -> Result<Verdict, HandBack> {
        let clone_dir = &job_dir.clone_dir();
        let prepared = match self
            .prepare(job, machine, job_dir, factory, ctx.received_at())
            .await
        {
            Ok(prepared) => prepared,
            Err(crashed) => return Ok(crashed),
        };
        let mut steps =
            StepRunner::new(self, job, &prepared, clone_dir, &factory.artifacts_location);
        match self
            .run_steps(job, &prepared, &mut steps, factory, ctx)
            .await
        {
            Ok(ended) => {
                let allowance = Allowance::new(
                    self.settings.max_artifact_bytes,
                    self.settings.max_artifact_files,
                );
                let pushed = steps.pushed;
                drop(steps);
                finish::conclude(job, prepared, pushed, ended, clone_dir, allowance, factory).await
            }
            Err(hand_back) => {
                // The artifacts stay for the job's next run to overwrite: not with a secret.
                drop(steps);
                finish::scrub_artifacts(&prepared.artifacts, &prepared.redactor, &prepared.log)
                    .await;
                prepared.log.close().await;
                Err(hand_back)
            }
        }
    }

    /// Announce `running` and run the task's steps within its time limit.
    async fn run_steps(
        &self,
        job: &JobRequest,
        prepared: &Prepared,
        steps: &mut StepRunner,
        factory: &mut ResultFactory,
        ctx: &dyn DeliveryContext,
    ) -> Result<Ended, HandBack> {
        let (commit, budget) = (&prepared.fetched.commit, prepared.budget);
        let detail = format!("commit {commit}, time limit {}s", budget.limit.as_secs());
        // The testcases the task file declares, so the reporter's RUNNING results name them.
        let mut running = JobStatus::new(job, JobState::Running, &self.instance, Some(detail));
        running.testcases = factory.testcases.clone();
        self.publish(ctx, &running).await?;
        factory.log_url = Some(format!("{}/{TASK_LOG}", factory.artifacts_location));
        tracing::info!(job_id = %job.job_id, task = %prepared.task.name, commit = %commit, item = %job.item, arch = %job.arch, "task started");

        let limit = TimeLimit::starting_now(
            budget,
            ctx.received_at(),
            self.settings.consumer_timeout_secs,
        );
        steps.run_task(&prepared.task, &prepared.log, &limit).await
    }

    /// Publish the job's status now, confirmed; a broker that refuses hands the job back.
    async fn publish_status(
        &self,
        ctx: &dyn DeliveryContext,
        job: &JobRequest,
        state: JobState,
        detail: Option<String>,
    ) -> Result<(), HandBack> {
        self.publish(ctx, &JobStatus::new(job, state, &self.instance, detail))
            .await
    }

    /// Publish `status`, confirmed; a broker that refuses hands the job back.
    async fn publish(&self, ctx: &dyn DeliveryContext, status: &JobStatus) -> Result<(), HandBack> {
        ctx.publish(&report::status_message(&self.topology, status))
            .await
            .map_err(|e| {
                let state = status.state;
                HandBack(format!("cannot publish the {state} status: {e}"))
            })
    }
}
