//! Where each message type is published: its exchange, routing key, AMQP message id and priority,
//! written once per type ([`Publishable::outgoing`]) so that every producer of a type (the rules
//! service and `taskbot submit` both request jobs; the rules service, the provisioner, the runner
//! and the CLI all publish job statuses) sends it the same way. `docs/messages.md` lists the same
//! routes for people who bind their own queues.
//!
//! Every message carries its own id as the AMQP `message_id`, so consumers and people can
//! correlate redeliveries (and the rules service remembers the jobs it requested by it).
//!
//! Kept apart from [`crate::messages`] (plain data and its JSON) and [`crate::topology`] (names and
//! declarations, which the AMQP layer itself uses), so neither depends on the AMQP layer.

use crate::amqp::Outgoing;
use crate::identity::{Role, Service};
use crate::messages::{Event, JobRequest, JobStatus, Message, ProvisionedJob, TaskResult};
use crate::topology::Topology;

/// Every kind of message Taskbot publishes, with its exchange and who publishes it: the table the
/// broker users' write permissions are derived from ([`crate::topology::Permissions`]), so a
/// service that starts publishing something new is refused by the broker until it is listed here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Route {
    /// [`Event`]s: from the buses (the bridges), announced by tasks (the runner), replayed (`taskbot
    /// replay`).
    Event,
    /// [`JobRequest`]s: from the rules, or `taskbot submit`.
    JobRequest,
    /// [`ProvisionedJob`]s, the run messages runners obey: only the provisioner.
    ProvisionedJob,
    /// [`JobStatus`]es: `queued` (the rules, `taskbot submit`), `provisioning`/`provisioned` (the
    /// provisioner), the rest (the runner).
    JobStatus,
    /// [`TaskResult`]s: the runner, and the provisioner's CRASHED results for jobs it cannot serve.
    TaskResult,
    /// Dead letters, from every consumer and the bridges.
    DeadLetter,
    /// Results republished for fedora-messaging (the reporter's sink, when enabled).
    FedoraMessaging,
    /// Dead letters moved back to their queue through the default exchange (`taskbot dlq retry`).
    Requeue,
}

/// The name RabbitMQ gives the default exchange (`""`) in permissions.
pub const DEFAULT_EXCHANGE_PERMISSION_NAME: &str = "amq.default";

impl Route {
    pub const ALL: [Route; 8] = [
        Route::Event,
        Route::JobRequest,
        Route::ProvisionedJob,
        Route::JobStatus,
        Route::TaskResult,
        Route::DeadLetter,
        Route::FedoraMessaging,
        Route::Requeue,
    ];

    /// The exchange these messages go to, as named in permissions (the default exchange is
    /// `amq.default` there); `None` for fedora-messaging when that sink is off.
    pub fn exchange(self, topology: &Topology) -> Option<String> {
        Some(match self {
            Route::Event => topology.events_exchange(),
            Route::JobRequest => topology.jobs_exchange(),
            Route::ProvisionedJob => topology.run_exchange(),
            Route::JobStatus | Route::TaskResult => topology.results_exchange(),
            Route::DeadLetter => topology.dead_letter_exchange(),
            Route::FedoraMessaging => topology.fedora_messaging_exchange.clone()?,
            Route::Requeue => DEFAULT_EXCHANGE_PERMISSION_NAME.to_string(),
        })
    }

    /// Who publishes these messages.
    pub fn publishers(self) -> &'static [Role] {
        use Service::*;
        match self {
            Route::Event => &[
                Role::Service(Bridge),
                Role::Service(FedoraMessagingBridge),
                Role::Service(Runner),
                Role::Cli,
            ],
            Route::JobRequest => &[Role::Service(Rules), Role::Cli],
            Route::ProvisionedJob => &[Role::Service(Provisioner)],
            Route::JobStatus => &[
                Role::Service(Rules),
                Role::Service(Provisioner),
                Role::Service(Runner),
                Role::Cli,
            ],
            Route::TaskResult => &[Role::Service(Provisioner), Role::Service(Runner)],
            Route::DeadLetter => &[
                Role::Service(Bridge),
                Role::Service(FedoraMessagingBridge),
                Role::Service(Rules),
                Role::Service(Provisioner),
                Role::Service(Runner),
                Role::Service(Reporter),
            ],
            Route::FedoraMessaging => &[Role::Service(Reporter)],
            Route::Requeue => &[Role::Cli],
        }
    }

    /// The start every routing key of these messages has, where two routes share an exchange:
    /// statuses and results both go to the results exchange, and the broker tells them apart by
    /// this (topic permissions, [`crate::topology::Permissions::topics`]).
    pub fn key_prefix(self) -> Option<&'static str> {
        match self {
            Route::JobStatus => Some("job."),
            Route::TaskResult => Some("result."),
            _ => None,
        }
    }

    /// The routes `role` publishes.
    pub fn published_by(role: Role) -> Vec<Route> {
        Route::ALL
            .into_iter()
            .filter(|r| r.publishers().contains(&role))
            .collect()
    }
}

/// The exchange of a route every topology has.
fn exchange_of(route: Route, topology: &Topology) -> String {
    route
        .exchange(topology)
        .expect("only fedora-messaging may be absent")
}

/// A message type and the one way it is published.
pub trait Publishable: Message {
    /// This message as published on `topology`.
    fn outgoing(&self, topology: &Topology) -> Outgoing;
}

/// On the events exchange under its topic (what the rules match on).
impl Publishable for Event {
    fn outgoing(&self, topology: &Topology) -> Outgoing {
        Outgoing::new(
            exchange_of(Route::Event, topology),
            &self.topic,
            self.to_json(),
        )
        .with_message_id(&self.id)
    }
}

/// On the jobs exchange under its arch, with the job's priority (the provisioner's queue is a
/// priority queue).
impl Publishable for JobRequest {
    fn outgoing(&self, topology: &Topology) -> Outgoing {
        Outgoing::new(
            exchange_of(Route::JobRequest, topology),
            &self.arch,
            self.to_json(),
        )
        .with_message_id(self.job_id.to_string())
        .with_priority(self.priority)
    }
}

/// On the run exchange under its arch (so on that arch's run queue), with the job's priority.
impl Publishable for ProvisionedJob {
    fn outgoing(&self, topology: &Topology) -> Outgoing {
        Outgoing::new(
            exchange_of(Route::ProvisionedJob, topology),
            &self.job.arch,
            self.to_json(),
        )
        .with_message_id(self.job.job_id.to_string())
        .with_priority(self.job.priority)
    }
}

/// On the results exchange under `job.<state>`.
impl Publishable for JobStatus {
    fn outgoing(&self, topology: &Topology) -> Outgoing {
        Outgoing::new(
            exchange_of(Route::JobStatus, topology),
            self.routing_key(),
            self.to_json(),
        )
        .with_message_id(self.status_id.to_string())
    }
}

/// On the results exchange under `result.<OUTCOME>.<testcase>`.
impl Publishable for TaskResult {
    fn outgoing(&self, topology: &Topology) -> Outgoing {
        Outgoing::new(
            exchange_of(Route::TaskResult, topology),
            self.routing_key(),
            self.to_json(),
        )
        .with_message_id(self.result_id.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::{JobState, Machine, TaskRef};

    fn job() -> JobRequest {
        let task = TaskRef {
            name: "dist.rpmlint".into(),
            repo: "https://git.example/rpmlint.git".into(),
            git_ref: "main".into(),
        };
        let args = Default::default();
        JobRequest {
            job_id: JobRequest::derive_id("e1", "builds", &task, "x-1-1", "aarch64", &args),
            event_id: "e1".into(),
            event_topic: "org.fedoraproject.prod.buildsys.build.state.change".into(),
            rule: "builds".into(),
            task,
            item: "x-1-1".into(),
            item_type: "koji_build".into(),
            arch: "aarch64".into(),
            args,
            priority: 7,
            environment: Default::default(),
            destructive: false,
            vm: None,
            testcases: Vec::new(),
            scenario: None,
            created_at: chrono::Utc::now(),
        }
    }

    /// Exchange, routing key, message id, priority: what distinguishes one route from another.
    fn route(out: &Outgoing) -> (&str, &str, Option<&str>, Option<u8>) {
        (
            &out.exchange,
            &out.routing_key,
            out.message_id.as_deref(),
            out.priority,
        )
    }

    #[test]
    fn only_the_provisioner_publishes_run_messages_and_the_runner_no_jobs() {
        let runner = Route::published_by(Role::Service(Service::Runner));
        assert!(!runner.contains(&Route::ProvisionedJob), "{runner:?}");
        assert!(!runner.contains(&Route::JobRequest), "{runner:?}");
        assert!(runner.contains(&Route::TaskResult) && runner.contains(&Route::JobStatus));
        assert_eq!(
            Route::ProvisionedJob.publishers(),
            [Role::Service(Service::Provisioner)]
        );
        assert!(Route::published_by(Role::Service(Service::Api)).is_empty());
        let t = Topology::new("tb", &[]);
        assert_eq!(Route::FedoraMessaging.exchange(&t), None);
        assert_eq!(Route::Requeue.exchange(&t).as_deref(), Some("amq.default"));
    }

    #[test]
    fn every_message_type_has_its_exchange_key_and_id() {
        let t = Topology::new("tb", &[]);
        let job = job();
        let job_id = job.job_id.to_string();
        let out = job.outgoing(&t);
        assert_eq!(route(&out), ("tb.jobs", "aarch64", Some(&*job_id), Some(7)));
        assert_eq!(JobRequest::from_json(&out.body).unwrap(), job);

        let provisioned = ProvisionedJob {
            job: job.clone(),
            machine: Machine::Local,
            provisioner: "provisioner@host".into(),
            provisioned_at: chrono::Utc::now(),
        };
        let out = provisioned.outgoing(&t);
        assert_eq!(route(&out), ("tb.run", "aarch64", Some(&*job_id), Some(7)));
        assert_eq!(ProvisionedJob::from_json(&out.body).unwrap(), provisioned);

        let status = JobStatus::new(&job, JobState::Provisioned, "provisioner@host", None);
        let out = status.outgoing(&t);
        assert!(out
            .routing_key
            .starts_with(Route::JobStatus.key_prefix().unwrap()));
        let status_id = status.status_id.to_string();
        assert_eq!(
            route(&out),
            ("tb.results", "job.provisioned", Some(&*status_id), None)
        );
        assert_eq!(JobStatus::from_json(&out.body).unwrap(), status);

        let result = TaskResult::crashed(&job, "runner@host", "boom");
        let out = result.outgoing(&t);
        assert!(out
            .routing_key
            .starts_with(Route::TaskResult.key_prefix().unwrap()));
        let result_id = result.result_id.to_string();
        assert_eq!(
            route(&out),
            (
                "tb.results",
                "result.CRASHED.dist.rpmlint",
                Some(&*result_id),
                None
            )
        );
        assert_eq!(TaskResult::from_json(&out.body).unwrap(), result);

        let event = Event {
            id: "2026-abc".into(),
            topic: "org.fedoraproject.prod.bodhi.update.request.testing".into(),
            source: "task:1".into(),
            sent_at: None,
            received_at: chrono::Utc::now(),
            username: None,
            msg: serde_json::json!({"update": "x"}),
            headers: Default::default(),
        };
        let out = event.outgoing(&t);
        assert_eq!(
            route(&out),
            (
                "tb.events",
                "org.fedoraproject.prod.bodhi.update.request.testing",
                Some("2026-abc"),
                None
            )
        );
        assert_eq!(Event::from_json(&out.body).unwrap(), event);
    }
}
