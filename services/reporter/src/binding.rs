//! What binds a result or status to its job, checked by every sink before it stores, posts,
//! writes or republishes anything (docs/security.md, "What binds a result to its job").
//!
//! Two checks, in order:
//!
//! 1. **The sender.** The AMQP `user_id` is the one thing about a message its publisher cannot
//!    choose: RabbitMQ refuses a `user_id` other than the connection's user. Each kind of message
//!    has the services that may send it ([`status_role`], [`result_role`]): a `queued` status the
//!    rules (or the operator's `taskbot submit`), `provisioning`/`provisioned` the provisioner, a
//!    runner's phases and results the runner, a `crashed` status and CRASHED results the
//!    provisioner (for jobs it cannot serve) or the runner, a `done` status and FAILED results
//!    also the provisioner (a job whose own kernel did not boot). The operator's own user (the one
//!    `amqp.url` names, which `taskbot submit` and `taskbot dlq retry` publish as) may send
//!    anything. A message from any other user, or with no `user_id`, is dead-lettered naming it.
//! 2. **The job** (when the PostgreSQL sink is enabled, which keeps the job records): the job
//!    must have been requested (its `queued` status accepted) and, for a runner's messages,
//!    dispatched (its `provisioned` status from the provisioner accepted); the message must agree
//!    with the recorded job (item, type, arch, task, rule, event), and a result's id must be the
//!    one its content derives. A runner's message must come from the broker user of the runners
//!    of the job's recorded arch ([`runner_of_arch`]; without job records, of the arch the
//!    message names): the runners of each arch have their own user, which reads only that arch's
//!    run queue, so no other arch's runner was dispatched the job. A message for a job not (yet) known is handed back to its queue
//!    for `reporter.unknown_job_grace_secs` (its `queued` status may simply not be handled yet:
//!    results and statuses travel on different queues), then dead-lettered with the reason.

use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use taskbot::amqp::Disposition;
use taskbot::config::{Config, RunnerUsers};
use taskbot::identity::Service;
use taskbot::messages::{JobRequest, JobState, JobStatus, Outcome, TaskResult};
use taskbot::store::{self, JobRecord, StoreError};

use crate::store_failure;

/// What to do when the job of `what` cannot be read or recorded: retry while the database is
/// the cause, dead-letter when the message is.
fn failure(what: &str, err: StoreError) -> Disposition {
    match store_failure(&format!("the job of {what}"), &err) {
        Disposition::Retry(_) => {
            Disposition::Retry(format!("cannot check the job of {what}: {err}"))
        }
        other => other,
    }
}

/// The broker users of the services whose messages the reporter consumes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Senders {
    pub rules: String,
    pub provisioner: String,
    /// The runners', by arch: a runner reports only on jobs of its own arch ([`runner_of_arch`]).
    pub runners: RunnerUsers,
    /// The operator's user: the `taskbot` command line's (`[amqp.users.cli]`), which
    /// `taskbot submit` and `taskbot dlq retry` publish as.
    pub operator: String,
}

impl Senders {
    pub fn from_config(config: &Config) -> Senders {
        let amqp = &config.amqp;
        Senders {
            rules: amqp.user_name(Service::Rules),
            provisioner: amqp.user_name(Service::Provisioner),
            runners: amqp.runner_users(),
            operator: amqp.user_name(taskbot::Role::Cli),
        }
    }

    /// The users that may speak for `role` (the runners of any arch, for the runner).
    fn users(&self, role: Role) -> Vec<&str> {
        match role {
            Role::Requester => vec![&self.rules],
            Role::Provisioner => vec![&self.provisioner],
            Role::Runner => self.runners.all(),
            Role::Operator => vec![&self.operator],
        }
    }
}

/// Whom an accepted message speaks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The rules service, asking for a job.
    Requester,
    Provisioner,
    Runner,
    /// The operator (`taskbot submit`, `taskbot dlq retry`).
    Operator,
}

impl Role {
    fn describe(self) -> &'static str {
        match self {
            Role::Requester => "the rules service's",
            Role::Provisioner => "the provisioner's",
            Role::Runner => "the runner's",
            Role::Operator => "the operator's",
        }
    }

    /// How far the job must be for a message of this role to be accepted: a runner reports only
    /// on jobs the provisioner dispatched; anyone else on jobs that were requested.
    fn needs_dispatch(self) -> bool {
        self == Role::Runner
    }
}

/// The first of `roles` (then the operator) whose user published the message, or why none did.
/// Roles are tried least demanding first, so where services share a user (`guest` in local
/// development) a message is held to the weakest rule that fits.
fn role_of(
    senders: &Senders,
    roles: &[Role],
    user: Option<&str>,
    what: &str,
) -> Result<Role, String> {
    let expected = || {
        let mut names: Vec<String> = roles
            .iter()
            .chain(&[Role::Operator])
            .map(|r| format!("{} {}", r.describe(), quoted(&senders.users(*r))))
            .collect();
        names.dedup();
        names.join(" or ")
    };
    let Some(user) = user else {
        return Err(format!(
            "{what} was published without a user_id, so its sender is unknown; it must come \
             from {}",
            expected()
        ));
    };
    roles
        .iter()
        .chain(&[Role::Operator])
        .copied()
        .find(|r| senders.users(*r).contains(&user))
        .ok_or_else(|| {
            format!(
                "{what} was published by broker user {user:?}, which may not send it; it must \
                 come from {}",
                expected()
            )
        })
}

/// `users` quoted, joined with "or".
fn quoted(users: &[&str]) -> String {
    let quoted: Vec<String> = users.iter().map(|u| format!("{u:?}")).collect();
    quoted.join(" or ")
}

/// For a message of a runner (`role`), that its `user` is the user of the runners of `arch`,
/// the arch of its job, as the job was dispatched: the runner of another arch (another broker
/// user) may not report on it.
pub fn runner_of_arch(
    senders: &Senders,
    role: Role,
    user: Option<&str>,
    arch: &str,
    what: &str,
) -> Result<(), String> {
    if role != Role::Runner {
        return Ok(());
    }
    let user = user.unwrap_or_default();
    match senders.runners.of_arch(arch) {
        Some(expected) if user == expected => Ok(()),
        Some(expected) => Err(format!(
            "{what} was published by broker user {user:?}, but its job is for arch {arch}, whose \
             runners log in as {expected:?}: a runner reports only on jobs of its own arch"
        )),
        None => Err(format!(
            "{what} was published by broker user {user:?}, but its job is for arch {arch}, whose \
             runners have no broker user (no [amqp.users.runner_{arch}] or [amqp.users.runner])"
        )),
    }
}

/// Who may publish a status of `state`.
pub fn status_role(
    senders: &Senders,
    status: &JobStatus,
    user: Option<&str>,
) -> Result<Role, String> {
    let roles: &[Role] = match status.state {
        JobState::Queued => &[Role::Requester],
        JobState::Provisioning | JobState::Provisioned => &[Role::Provisioner],
        // The provisioner ends a job itself when it cannot serve it (crashed), or when the
        // job's own kernel did not boot (done, with a FAILED result).
        JobState::Crashed | JobState::Done => &[Role::Provisioner, Role::Runner],
        JobState::Cloning | JobState::Running | JobState::Reporting => &[Role::Runner],
    };
    let what = format!(
        "{} status {} of job {}",
        status.state, status.status_id, status.job_id
    );
    role_of(senders, roles, user, &what)
}

/// Who may publish a result: the runner, or the provisioner a CRASHED one (a job it cannot
/// serve) or a FAILED one (a job whose own kernel does not boot, docs/provisioning.md).
pub fn result_role(
    senders: &Senders,
    result: &TaskResult,
    user: Option<&str>,
) -> Result<Role, String> {
    let roles: &[Role] = match result.outcome {
        Outcome::Crashed | Outcome::Failed => &[Role::Provisioner, Role::Runner],
        _ => &[Role::Runner],
    };
    let what = format!("result {} of job {}", result.result_id, result.job_id);
    role_of(senders, roles, user, &what)
}

/// The first field in which `(name, said, recorded)` differ, as a reason.
fn first_difference(what: &str, fields: &[(&str, &str, &str)]) -> Option<String> {
    fields
        .iter()
        .find(|(_, said, recorded)| said != recorded)
        .map(|(name, said, recorded)| {
            format!("{what} says {name} {said:?}, but its job was requested with {recorded:?}")
        })
}

/// Where a status's copy of its job disagrees with the job as requested.
pub fn job_disagreement(record: &JobRecord, job: &JobRequest, what: &str) -> Option<String> {
    first_difference(
        what,
        &[
            ("item", &job.item, &record.item),
            ("item type", &job.item_type, &record.item_type),
            ("arch", &job.arch, &record.arch),
            ("task", &job.task.name, &record.task.name),
            ("task repository", &job.task.repo, &record.task.repo),
            ("task ref", &job.task.git_ref, &record.task.git_ref),
            ("rule", &job.rule, &record.rule),
            ("event", &job.event_id, &record.event_id),
        ],
    )
}

/// Where a result disagrees with its job: the task, rule and event always; the item, type and
/// arch unless `other_items` (the task may report on other items); and its id must be the one
/// derived from its job, testcase, item, type and arch, so it cannot take another result's place.
pub fn result_disagreement(
    record: &JobRecord,
    result: &TaskResult,
    other_items: bool,
) -> Option<String> {
    let what = format!("result {} of job {}", result.result_id, result.job_id);
    let mut fields = vec![
        ("task", result.task.name.as_str(), record.task.name.as_str()),
        ("task repository", &result.task.repo, &record.task.repo),
        ("task ref", &result.task.git_ref, &record.task.git_ref),
        ("rule", &result.rule, &record.rule),
        ("event", &result.event_id, &record.event_id),
    ];
    if !other_items {
        fields.extend([
            ("item", result.item.as_str(), record.item.as_str()),
            ("item type", &result.item_type, &record.item_type),
            ("arch", &result.arch, &record.arch),
        ]);
    }
    if let Some(reason) = first_difference(&what, &fields) {
        return Some(reason);
    }
    let derived = TaskResult::derive_id(
        result.job_id,
        &result.testcase,
        &result.item,
        &result.item_type,
        &result.arch,
    );
    (derived != result.result_id).then(|| {
        format!(
            "{what} has an id that is not the one its job, testcase, item, type and arch derive \
             ({derived})"
        )
    })
}

/// The checks every sink makes, with what they need.
#[derive(Debug, Clone)]
pub struct Binding {
    pub senders: Senders,
    /// The store of job records; `None` when the PostgreSQL sink (which keeps them) is not
    /// enabled: then only the sender is checked.
    pub jobs: Option<Pool>,
    /// `reporter.unknown_job_grace_secs`.
    pub grace: Duration,
    /// When this reporter started: the grace of a message older than that counts from here.
    pub started: DateTime<Utc>,
    /// `reporter.tasks_reporting_other_items`.
    pub other_item_tasks: Vec<String>,
}

impl Binding {
    pub fn new(config: &Config, jobs: Option<Pool>) -> Binding {
        Binding {
            senders: Senders::from_config(config),
            jobs,
            grace: Duration::from_secs(config.reporter.unknown_job_grace_secs),
            started: Utc::now(),
            other_item_tasks: config.reporter.tasks_reporting_other_items.clone(),
        }
    }

    /// Whether a message sent at `sent_at` is still within its grace: counted from its time or
    /// from this reporter's start, whichever is later. A time more than the grace ahead of now
    /// is no clock skew, and gets none: a message cannot buy itself a longer wait.
    pub fn within_grace(&self, sent_at: DateTime<Utc>, now: DateTime<Utc>) -> bool {
        let Ok(grace) = chrono::Duration::from_std(self.grace) else {
            return true;
        };
        if sent_at > now + grace {
            return false;
        }
        now - sent_at.max(self.started) < grace
    }

    /// Hand a message for a job not known (yet) back while within its grace, then refuse it.
    fn not_yet(&self, reason: String, sent_at: DateTime<Utc>) -> Disposition {
        let grace = self.grace.as_secs();
        if self.within_grace(sent_at, Utc::now()) {
            Disposition::Retry(format!("{reason} (yet; waiting up to {grace}s for it)"))
        } else {
            Disposition::DeadLetter(format!("{reason} (within {grace}s)"))
        }
    }

    /// The job's record, when the job is as far as `role` needs; else what to do.
    fn known(
        &self,
        record: Option<JobRecord>,
        role: Role,
        what: &str,
        job_id: uuid::Uuid,
        sent_at: DateTime<Utc>,
    ) -> Result<JobRecord, Disposition> {
        match record {
            None => Err(self.not_yet(
                format!(
                    "{what} is for job {job_id}, which the reporter never saw requested (no \
                     `queued` status from the rules service or the operator)"
                ),
                sent_at,
            )),
            Some(r) if role.needs_dispatch() && r.dispatched_by.is_none() => Err(self.not_yet(
                format!(
                    "{what} is for job {job_id}, which was never dispatched to a runner (no \
                     `provisioned` status from the provisioner)"
                ),
                sent_at,
            )),
            Some(r) => Ok(r),
        }
    }

    async fn client(
        &self,
        pool: &Pool,
        what: &str,
    ) -> Result<deadpool_postgres::Object, Disposition> {
        pool.get()
            .await
            .map_err(|e| failure(what, StoreError::from(e)))
    }

    /// Check a result before a sink takes it: `Err` is what to do with it instead.
    pub async fn admit_result(
        &self,
        user: Option<&str>,
        result: &TaskResult,
    ) -> Result<(), Disposition> {
        let role = result_role(&self.senders, result, user).map_err(Disposition::DeadLetter)?;
        let of_job = format!("result {} of job {}", result.result_id, result.job_id);
        let from_runner_of = |arch: &str| {
            runner_of_arch(&self.senders, role, user, arch, &of_job)
                .map_err(Disposition::DeadLetter)
        };
        let Some(pool) = &self.jobs else {
            // No job records: the arch the result names (any, for a task reporting on others).
            if self.other_item_tasks.contains(&result.task.name) {
                return Ok(());
            }
            return from_runner_of(&result.arch);
        };
        let what = format!("result {}", result.result_id);
        let client = self.client(pool, &what).await?;
        let record = store::job_record(&client, result.job_id)
            .await
            .map_err(|e| failure(&what, e))?;
        let record = self.known(record, role, &what, result.job_id, result.finished_at)?;
        from_runner_of(&record.arch)?;
        let other_items = self.other_item_tasks.contains(&record.task.name);
        match result_disagreement(&record, result, other_items) {
            Some(reason) => Err(Disposition::DeadLetter(reason)),
            None => Ok(()),
        }
    }

    /// Check a status before a sink takes it, recording the job's request (`queued`) and dispatch
    /// (`provisioned`) when `record` (the PostgreSQL sink, the one that keeps job records).
    pub async fn admit_status(
        &self,
        user: Option<&str>,
        status: &JobStatus,
        record: bool,
    ) -> Result<(), Disposition> {
        let role = status_role(&self.senders, status, user).map_err(Disposition::DeadLetter)?;
        let what = format!("{} status {}", status.state, status.status_id);
        let from_runner_of = |arch: &str| {
            let of_job = format!("{what} of job {}", status.job_id);
            runner_of_arch(&self.senders, role, user, arch, &of_job)
                .map_err(Disposition::DeadLetter)
        };
        let Some(pool) = &self.jobs else {
            // No job records: the arch the status's copy of its job names.
            return from_runner_of(&status.job.arch);
        };
        let failed = |e: StoreError| failure(&what, e);
        let client = self.client(pool, &what).await?;
        let user = user.unwrap_or_default();
        let stored = if status.state == JobState::Queued && record {
            let requested = JobRecord::requested(&status.job, user);
            Some(
                store::record_requested(&client, &requested)
                    .await
                    .map_err(failed)?,
            )
        } else if status.state == JobState::Queued {
            // Another sink: the request is the PostgreSQL sink's to record; its sender is right.
            return Ok(());
        } else {
            store::job_record(&client, status.job_id)
                .await
                .map_err(failed)?
        };
        let stored = self.known(stored, role, &what, status.job_id, status.at)?;
        from_runner_of(&stored.arch)?;
        if let Some(reason) = job_disagreement(&stored, &status.job, &what) {
            return Err(Disposition::DeadLetter(reason));
        }
        if status.state == JobState::Provisioned && record {
            store::record_dispatched(&client, status.job_id, user, status.at)
                .await
                .map_err(failed)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use taskbot::messages::TaskRef;

    fn senders() -> Senders {
        Senders {
            rules: "tb-rules".into(),
            provisioner: "tb-provisioner".into(),
            runners: RunnerUsers {
                shared: Some("tb-runner".into()),
                by_arch: Default::default(),
            },
            operator: "tb-operator".into(),
        }
    }

    /// [`senders`] with a user for the runners of each of x86_64 and aarch64.
    fn senders_by_arch() -> Senders {
        let mut s = senders();
        for arch in ["x86_64", "aarch64"] {
            s.runners
                .by_arch
                .insert(arch.into(), format!("tb-runner-{arch}"));
        }
        s
    }

    fn job() -> JobRequest {
        let task = TaskRef {
            name: "rpmlint".into(),
            repo: "https://git.example/rpmlint.git".into(),
            git_ref: "main".into(),
        };
        taskbot::testing::job_request(task, "xchat-0.5-1.fc20", "x86_64")
    }

    fn result(job: &JobRequest, outcome: Outcome) -> TaskResult {
        let mut r = TaskResult::crashed(job, "runner", "n");
        r.outcome = outcome;
        r
    }

    #[test]
    fn each_status_comes_from_its_service_or_the_operator() {
        let (s, job) = (senders(), job());
        let status = |state| JobStatus::new(&job, state, "x", None);
        let cases = [
            (JobState::Queued, "tb-rules", Role::Requester),
            (JobState::Provisioning, "tb-provisioner", Role::Provisioner),
            (JobState::Provisioned, "tb-provisioner", Role::Provisioner),
            (JobState::Running, "tb-runner", Role::Runner),
            (JobState::Done, "tb-runner", Role::Runner),
            (JobState::Crashed, "tb-runner", Role::Runner),
            (JobState::Crashed, "tb-provisioner", Role::Provisioner),
            (JobState::Done, "tb-provisioner", Role::Provisioner),
            (JobState::Done, "tb-operator", Role::Operator),
        ];
        for (state, user, role) in cases {
            assert_eq!(
                status_role(&s, &status(state), Some(user)),
                Ok(role),
                "{state}"
            );
        }
        let err = status_role(&s, &status(JobState::Done), Some("tb-rules")).unwrap_err();
        assert!(
            err.contains("broker user \"tb-rules\", which may not send it"),
            "{err}"
        );
        assert!(
            err.contains("the runner's \"tb-runner\" or the operator's \"tb-operator\""),
            "{err}"
        );
        let err = status_role(&s, &status(JobState::Provisioned), Some("tb-runner")).unwrap_err();
        assert!(
            err.contains("the provisioner's \"tb-provisioner\""),
            "{err}"
        );
        let err = status_role(&s, &status(JobState::Queued), None).unwrap_err();
        assert!(err.contains("without a user_id"), "{err}");
    }

    #[test]
    fn results_come_from_the_runner_and_crashed_or_failed_ones_also_from_the_provisioner() {
        let (s, job) = (senders(), job());
        let passed = result(&job, Outcome::Passed);
        let crashed = result(&job, Outcome::Crashed);
        // A kernel that did not boot: the provisioner's verdict.
        assert_eq!(
            result_role(&s, &result(&job, Outcome::Failed), Some("tb-provisioner")),
            Ok(Role::Provisioner)
        );
        assert_eq!(
            result_role(&s, &passed, Some("tb-runner")),
            Ok(Role::Runner)
        );
        assert_eq!(
            result_role(&s, &crashed, Some("tb-provisioner")),
            Ok(Role::Provisioner)
        );
        assert_eq!(
            result_role(&s, &crashed, Some("tb-runner")),
            Ok(Role::Runner)
        );
        let err = result_role(&s, &passed, Some("tb-provisioner")).unwrap_err();
        assert!(err.contains("broker user \"tb-provisioner\""), "{err}");
        assert!(result_role(&s, &passed, Some("guest")).is_err());
        assert!(result_role(&s, &passed, None).is_err());
    }

    #[test]
    fn a_runner_reports_only_on_jobs_of_its_own_arch() {
        let (s, job) = (senders_by_arch(), job());
        let passed = result(&job, Outcome::Passed);
        for user in ["tb-runner-x86_64", "tb-runner-aarch64"] {
            assert_eq!(
                result_role(&s, &passed, Some(user)),
                Ok(Role::Runner),
                "{user}"
            );
        }
        let x86 = Some("tb-runner-x86_64");
        assert_eq!(runner_of_arch(&s, Role::Runner, x86, "x86_64", "r"), Ok(()));
        let aarch64 = Some("tb-runner-aarch64");
        let err = runner_of_arch(&s, Role::Runner, aarch64, "x86_64", "result r").unwrap_err();
        assert_eq!(
            err,
            "result r was published by broker user \"tb-runner-aarch64\", but its job is for \
             arch x86_64, whose runners log in as \"tb-runner-x86_64\": a runner reports only on \
             jobs of its own arch"
        );
        // An arch without a user of its own is the shared runner user's, and only its.
        let shared = Some("tb-runner");
        assert_eq!(
            runner_of_arch(&s, Role::Runner, shared, "noarch", "r"),
            Ok(())
        );
        assert!(runner_of_arch(&s, Role::Runner, x86, "noarch", "r").is_err());
        assert!(runner_of_arch(&s, Role::Runner, shared, "x86_64", "r").is_err());
        let mut no_shared = s.clone();
        no_shared.runners.shared = None;
        let err = runner_of_arch(&no_shared, Role::Runner, shared, "noarch", "r").unwrap_err();
        assert!(err.contains("no [amqp.users.runner_noarch]"), "{err}");
        // Only a runner's messages are held to an arch.
        let provisioner = Some("tb-provisioner");
        assert_eq!(
            runner_of_arch(&s, Role::Provisioner, provisioner, "x86_64", "r"),
            Ok(())
        );
        let err = result_role(&s, &passed, Some("tb-rules")).unwrap_err();
        assert!(
            err.contains(
                "the runner's \"tb-runner\" or \"tb-runner-aarch64\" or \"tb-runner-x86_64\""
            ),
            "{err}"
        );
    }

    #[test]
    fn where_services_share_a_user_the_least_demanding_role_fits() {
        let s = Senders {
            rules: "guest".into(),
            provisioner: "guest".into(),
            runners: RunnerUsers {
                shared: Some("guest".into()),
                by_arch: Default::default(),
            },
            operator: "guest".into(),
        };
        let crashed = result(&job(), Outcome::Crashed);
        assert_eq!(
            result_role(&s, &crashed, Some("guest")),
            Ok(Role::Provisioner)
        );
    }

    #[test]
    fn a_result_must_agree_with_its_job_and_its_own_id() {
        let job = job();
        let record = JobRecord::requested(&job, "tb-rules");
        let ok = result(&job, Outcome::Passed);
        assert_eq!(result_disagreement(&record, &ok, false), None);

        let retarget = |f: &dyn Fn(&mut TaskResult)| {
            let mut r = ok.clone();
            f(&mut r);
            r.result_id =
                TaskResult::derive_id(r.job_id, &r.testcase, &r.item, &r.item_type, &r.arch);
            r
        };
        let other_item = retarget(&|r| r.item = "glibc-9.99-1.fc99".into());
        let err = result_disagreement(&record, &other_item, false).unwrap();
        assert!(
            err.contains("says item \"glibc-9.99-1.fc99\", but its job was requested with \"xchat-0.5-1.fc20\""),
            "{err}"
        );
        assert_eq!(
            result_disagreement(&record, &other_item, true),
            None,
            "a task allowed to report on other items"
        );
        let other_arch = retarget(&|r| r.arch = "aarch64".into());
        assert!(result_disagreement(&record, &other_arch, false)
            .unwrap()
            .contains("arch"));
        let other_task = retarget(&|r| r.task.repo = "https://evil.example/t.git".into());
        let err = result_disagreement(&record, &other_task, true).unwrap();
        assert!(err.contains("task repository"), "{err}");
        let other_rule = retarget(&|r| r.rule = "another".into());
        assert!(result_disagreement(&record, &other_rule, true)
            .unwrap()
            .contains("rule"));

        let mut stolen_id = ok.clone();
        stolen_id.testcase = "dist.other".into();
        let err = result_disagreement(&record, &stolen_id, false).unwrap();
        assert!(err.contains("has an id that is not the one"), "{err}");
    }

    #[test]
    fn a_status_must_carry_its_job_as_requested() {
        let job = job();
        let record = JobRecord::requested(&job, "tb-rules");
        assert_eq!(job_disagreement(&record, &job, "s"), None);
        let mut other = job.clone();
        other.item = "glibc-9.99-1.fc99".into();
        let err = job_disagreement(&record, &other, "done status x").unwrap();
        assert!(
            err.starts_with("done status x says item \"glibc-9.99-1.fc99\""),
            "{err}"
        );
        let mut other = job.clone();
        other.event_id = "e2".into();
        assert!(job_disagreement(&record, &other, "s")
            .unwrap()
            .contains("event"));
    }

    #[test]
    fn the_grace_counts_from_the_message_or_the_start_whichever_is_later() {
        let now = Utc::now();
        let binding = Binding {
            senders: senders(),
            jobs: None,
            grace: Duration::from_secs(60),
            started: now - chrono::Duration::seconds(30),
            other_item_tasks: Vec::new(),
        };
        assert!(binding.within_grace(now - chrono::Duration::seconds(10), now));
        // Sent long before this reporter started: its grace starts at the start.
        assert!(binding.within_grace(now - chrono::Duration::hours(5), now));
        let later = now + chrono::Duration::seconds(31);
        assert!(!binding.within_grace(now - chrono::Duration::hours(5), later));
        // A clock a little ahead waits its grace from its own time; one far ahead gets none.
        let ahead = now + chrono::Duration::seconds(20);
        assert!(binding.within_grace(ahead, now + chrono::Duration::seconds(79)));
        assert!(!binding.within_grace(ahead, now + chrono::Duration::seconds(80)));
        assert!(!binding.within_grace(now + chrono::Duration::days(1), now));
    }
}
