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
use crate::messages::{Event, JobRequest, JobStatus, Message, ProvisionedJob, TaskResult};
use crate::topology::Topology;

/// A message type and the one way it is published.
pub trait Publishable: Message {
    /// This message as published on `topology`.
    fn outgoing(&self, topology: &Topology) -> Outgoing;
}

/// On the events exchange under its topic (what the rules match on).
impl Publishable for Event {
    fn outgoing(&self, topology: &Topology) -> Outgoing {
        Outgoing::new(topology.events_exchange(), &self.topic, self.to_json())
            .with_message_id(&self.id)
    }
}

/// On the jobs exchange under its arch, with the job's priority (the provisioner's queue is a
/// priority queue).
impl Publishable for JobRequest {
    fn outgoing(&self, topology: &Topology) -> Outgoing {
        Outgoing::new(topology.jobs_exchange(), &self.arch, self.to_json())
            .with_message_id(self.job_id.to_string())
            .with_priority(self.priority)
    }
}

/// On the run exchange under its arch (so on that arch's run queue), with the job's priority.
impl Publishable for ProvisionedJob {
    fn outgoing(&self, topology: &Topology) -> Outgoing {
        Outgoing::new(topology.run_exchange(), &self.job.arch, self.to_json())
            .with_message_id(self.job.job_id.to_string())
            .with_priority(self.job.priority)
    }
}

/// On the results exchange under `job.<state>`.
impl Publishable for JobStatus {
    fn outgoing(&self, topology: &Topology) -> Outgoing {
        Outgoing::new(
            topology.results_exchange(),
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
            topology.results_exchange(),
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
        let status_id = status.status_id.to_string();
        assert_eq!(
            route(&out),
            ("tb.results", "job.provisioned", Some(&*status_id), None)
        );
        assert_eq!(JobStatus::from_json(&out.body).unwrap(), status);

        let result = TaskResult::crashed(&job, "runner@host", "boom");
        let out = result.outgoing(&t);
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
