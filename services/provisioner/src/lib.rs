//! The `provisioner` service: takes job requests, prepares the machine each needs, and puts the
//! job on the run queue of its arch.
//!
//! Only the `local` backend exists so far: the job runs on the runner's own host, so there is
//! nothing to allocate. Jobs this deployment cannot serve (an arch it has no runners for, a VM or a
//! destructive task) get a CRASHED result saying why, rather than waiting forever on a queue no one
//! reads or running somewhere unsafe.

pub mod vm;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use taskbot::amqp::{self, ConsumerSpec, Disposition, Handler, Incoming, Outgoing, Publisher};
use taskbot::messages::{
    Environment, JobRequest, JobState, JobStatus, Machine, Message, ProvisionedJob, TaskResult,
};
use taskbot::{Config, Shutdown, Topology};

pub struct ProvisionerHandler {
    pub topology: Topology,
    pub arches: Vec<String>,
    pub instance: String,
}

impl ProvisionerHandler {
    /// What to publish for one job request.
    pub fn decide(&self, incoming: &Incoming) -> Disposition {
        let job = match JobRequest::from_json(&incoming.body) {
            Ok(j) => j,
            Err(err) => return Disposition::DeadLetter(err.to_string()),
        };
        if let Some(reason) = self.refusal(&job) {
            tracing::warn!(job_id = %job.job_id, %reason, "job cannot be provisioned");
            return Disposition::Done(self.crashed(&job, &reason));
        }
        let provisioning = JobStatus::new(&job, JobState::Provisioning, &self.instance, None);
        let provisioned = ProvisionedJob {
            job: job.clone(),
            machine: Machine::Local,
            provisioner: "local".into(),
            provisioned_at: Utc::now(),
        };
        let queued = JobStatus::new(
            &job,
            JobState::Provisioned,
            &self.instance,
            Some(format!("local, on {}", self.topology.run_queue(&job.arch))),
        );
        tracing::info!(job_id = %job.job_id, arch = %job.arch, "job provisioned (local)");
        Disposition::Done(vec![
            self.status(&provisioning),
            Outgoing::new(
                self.topology.run_exchange(),
                &job.arch,
                provisioned.to_json(),
            )
            .with_message_id(job.job_id.to_string())
            .with_priority(job.priority),
            self.status(&queued),
        ])
    }

    /// Why this job cannot be served here, if it cannot.
    fn refusal(&self, job: &JobRequest) -> Option<String> {
        if !self.arches.contains(&job.arch) {
            return Some(format!(
                "arch {} is not served by this deployment (arches: {})",
                job.arch,
                self.arches.join(", ")
            ));
        }
        if job.destructive {
            return Some(
                "destructive tasks run only in a disposable VM, and this provisioner has no VM backend"
                    .into(),
            );
        }
        if job.environment == Environment::Vm {
            return Some("the task needs a VM, and this provisioner has no VM backend".into());
        }
        None
    }

    fn status(&self, status: &JobStatus) -> Outgoing {
        Outgoing::new(
            self.topology.results_exchange(),
            status.routing_key(),
            status.to_json(),
        )
    }

    /// A CRASHED result and a `crashed` status: the job ends visibly.
    fn crashed(&self, job: &JobRequest, reason: &str) -> Vec<Outgoing> {
        let result = TaskResult::crashed(job, &self.instance, reason);
        let status = JobStatus::new(job, JobState::Crashed, &self.instance, Some(reason.into()));
        vec![
            Outgoing::new(
                self.topology.results_exchange(),
                result.routing_key(),
                result.to_json(),
            )
            .with_message_id(result.result_id.to_string()),
            self.status(&status),
        ]
    }
}

#[async_trait::async_trait]
impl Handler for ProvisionerHandler {
    async fn handle(&self, incoming: Incoming, _publisher: &Publisher) -> Disposition {
        self.decide(&incoming)
    }
}

/// Run until `shutdown`.
pub async fn run(config: Config, shutdown: Shutdown) -> anyhow::Result<()> {
    if config.provisioner.backend != "local" {
        anyhow::bail!(
            "provisioner.backend: unknown backend {:?} (available: local)",
            config.provisioner.backend
        );
    }
    let topology = Topology::for_config(&config);
    let handler = Arc::new(ProvisionerHandler {
        topology: topology.clone(),
        arches: config.arches.clone(),
        instance: taskbot::instance_name("provisioner"),
    });
    let spec = ConsumerSpec {
        queue: topology.provisioner_queue(),
        name: "taskbot-provisioner".into(),
        concurrency: 1,
        retry_delay: Duration::from_secs(2),
    };
    amqp::consume(&config.amqp, &topology, spec, handler, shutdown).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use taskbot::messages::{Outcome, TaskRef};

    fn handler() -> ProvisionerHandler {
        ProvisionerHandler {
            topology: Topology::new("tb", &["x86_64".into()]),
            arches: vec!["x86_64".into()],
            instance: "provisioner@test".into(),
        }
    }

    fn job(arch: &str) -> JobRequest {
        let task = TaskRef {
            name: "example".into(),
            repo: "file:///srv/example".into(),
            git_ref: "main".into(),
        };
        JobRequest {
            priority: 3,
            ..taskbot::testing::job_request(task, "foo-1-1", arch)
        }
    }

    fn outputs(d: Disposition) -> Vec<Outgoing> {
        match d {
            Disposition::Done(o) => o,
            other => panic!("expected Done, got {other:?}"),
        }
    }

    #[test]
    fn local_job_goes_to_its_arch_queue_with_statuses() {
        let j = job("x86_64");
        let out = outputs(handler().decide(&Incoming::new("x86_64", j.to_json())));
        let keys: Vec<_> = out
            .iter()
            .map(|o| (o.exchange.as_str(), o.routing_key.as_str()))
            .collect();
        assert_eq!(
            keys,
            [
                ("tb.results", "job.provisioning"),
                ("tb.run", "x86_64"),
                ("tb.results", "job.provisioned")
            ]
        );
        let p = ProvisionedJob::from_json(&out[1].body).unwrap();
        assert_eq!(p.job, j);
        assert_eq!(p.machine, Machine::Local);
        assert_eq!(out[1].priority, Some(3));
    }

    #[test]
    fn unknown_arch_crashes_the_job_visibly() {
        let out = outputs(handler().decide(&Incoming::new("s390x", job("s390x").to_json())));
        let result = TaskResult::from_json(&out[0].body).unwrap();
        assert_eq!(result.outcome, Outcome::Crashed);
        assert!(result.note.unwrap().contains("arch s390x is not served"));
        assert_eq!(out[1].routing_key, "job.crashed");
    }

    #[test]
    fn destructive_or_vm_jobs_are_refused_without_a_vm_backend() {
        let mut j = job("x86_64");
        j.destructive = true;
        let out = outputs(handler().decide(&Incoming::new("x86_64", j.to_json())));
        let result = TaskResult::from_json(&out[0].body).unwrap();
        assert!(result.note.unwrap().contains("destructive"));
        let mut j = job("x86_64");
        j.environment = Environment::Vm;
        let out = outputs(handler().decide(&Incoming::new("x86_64", j.to_json())));
        assert_eq!(out[0].routing_key, "result.CRASHED.example");
    }

    #[test]
    fn garbage_is_dead_lettered() {
        match handler().decide(&Incoming::new("x", b"{}".to_vec())) {
            Disposition::DeadLetter(reason) => assert!(reason.contains("schema"), "{reason}"),
            other => panic!("{other:?}"),
        }
    }
}
