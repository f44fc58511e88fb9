//! Names of every exchange and queue, and their declaration.
//!
//! Every service declares the whole topology at start (declarations are idempotent), so services
//! can start in any order and a message published before its consumer first ran is kept, not
//! dropped as unroutable. `docs/architecture.md` draws the same picture.
//!
//! All names start with the configured namespace (default `taskbot`), so several deployments or
//! parallel test runs can share a broker.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, ExchangeKind};

/// Highest job priority; run and provisioner queues are priority queues up to this.
pub const MAX_PRIORITY: u8 = 9;

/// The names of one deployment's exchanges and queues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    pub namespace: String,
    /// Arches with a run queue declared up front.
    pub arches: Vec<String>,
}

impl Topology {
    pub fn new(namespace: &str, arches: &[String]) -> Self {
        Topology {
            namespace: namespace.to_string(),
            arches: arches.to_vec(),
        }
    }

    fn name(&self, suffix: &str) -> String {
        format!("{}.{}", self.namespace, suffix)
    }

    /// Topic exchange of bus events; routing key = the event's topic. Tasks publish here too.
    pub fn events_exchange(&self) -> String {
        self.name("events")
    }
    /// Topic exchange of job requests; routing key = the job's arch.
    pub fn jobs_exchange(&self) -> String {
        self.name("jobs")
    }
    /// Direct exchange of provisioned jobs; routing key = arch.
    pub fn run_exchange(&self) -> String {
        self.name("run")
    }
    /// Topic exchange of results (`result.<OUTCOME>.<testcase>`) and job statuses
    /// (`job.<state>`): what anyone may subscribe to.
    pub fn results_exchange(&self) -> String {
        self.name("results")
    }
    /// Topic exchange of dead letters; routing key = the queue the message was taken from.
    pub fn dead_letter_exchange(&self) -> String {
        self.name("dead")
    }

    /// Events for the rules service.
    pub fn rules_queue(&self) -> String {
        self.name("rules")
    }
    /// Job requests for the provisioner.
    pub fn provisioner_queue(&self) -> String {
        self.name("provisioner")
    }
    /// Provisioned jobs for the runners of one arch.
    pub fn run_queue(&self, arch: &str) -> String {
        self.name(&format!("run.{arch}"))
    }
    /// Results for the reporter.
    pub fn reporter_results_queue(&self) -> String {
        self.name("reporter.results")
    }
    /// Job statuses for the reporter.
    pub fn reporter_status_queue(&self) -> String {
        self.name("reporter.status")
    }
    /// Pseudo-queue name under which the bridge dead-letters malformed bus messages.
    pub fn bridge_source(&self) -> String {
        self.name("fedmsg-bridge")
    }
    /// The dead-letter queue holding what was refused from `source` (a queue name).
    pub fn dead_letter_queue(&self, source: &str) -> String {
        format!("{source}.dead")
    }

    /// Every work queue with its exchange, binding keys and whether it is a priority queue.
    pub fn work_queues(&self) -> Vec<QueueSpec> {
        let mut queues = vec![
            QueueSpec::new(self.rules_queue(), self.events_exchange(), &["#"], false),
            QueueSpec::new(self.provisioner_queue(), self.jobs_exchange(), &["#"], true),
            QueueSpec::new(
                self.reporter_results_queue(),
                self.results_exchange(),
                &["result.#"],
                false,
            ),
            QueueSpec::new(
                self.reporter_status_queue(),
                self.results_exchange(),
                &["job.#"],
                false,
            ),
        ];
        for arch in &self.arches {
            queues.push(self.run_queue_spec(arch));
        }
        queues
    }

    pub fn run_queue_spec(&self, arch: &str) -> QueueSpec {
        QueueSpec::new(self.run_queue(arch), self.run_exchange(), &[arch], true)
    }

    /// Sources with a dead-letter queue: every work queue and the bridge.
    pub fn dead_letter_sources(&self) -> Vec<String> {
        let mut sources: Vec<String> = self.work_queues().into_iter().map(|q| q.name).collect();
        sources.push(self.bridge_source());
        sources
    }

    /// Declare everything. Safe to call from every service at every (re)connection.
    pub async fn declare(&self, channel: &Channel) -> lapin::Result<()> {
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        for (name, kind) in [
            (self.events_exchange(), ExchangeKind::Topic),
            (self.jobs_exchange(), ExchangeKind::Topic),
            (self.run_exchange(), ExchangeKind::Direct),
            (self.results_exchange(), ExchangeKind::Topic),
            (self.dead_letter_exchange(), ExchangeKind::Topic),
        ] {
            channel
                .exchange_declare(&name, kind, durable, FieldTable::default())
                .await?;
        }
        for source in self.dead_letter_sources() {
            let dlq = self.dead_letter_queue(&source);
            declare_queue(channel, &dlq, FieldTable::default()).await?;
            channel
                .queue_bind(
                    &dlq,
                    &self.dead_letter_exchange(),
                    &source,
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
        for queue in self.work_queues() {
            self.declare_work_queue(channel, &queue).await?;
        }
        Ok(())
    }

    /// Declare one work queue, its dead-letter queue and its bindings (used for arches that were
    /// not known at start).
    pub async fn declare_work_queue(
        &self,
        channel: &Channel,
        queue: &QueueSpec,
    ) -> lapin::Result<()> {
        let dlq = self.dead_letter_queue(&queue.name);
        declare_queue(channel, &dlq, FieldTable::default()).await?;
        channel
            .queue_bind(
                &dlq,
                &self.dead_letter_exchange(),
                &queue.name,
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let mut args = FieldTable::default();
        // Messages the broker itself dead-letters (rejected without requeue, expired) land in the
        // queue's own dead-letter queue instead of vanishing.
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(self.dead_letter_exchange().into()),
        );
        args.insert(
            "x-dead-letter-routing-key".into(),
            AMQPValue::LongString(queue.name.clone().into()),
        );
        if queue.priority {
            args.insert(
                "x-max-priority".into(),
                AMQPValue::ShortShortUInt(MAX_PRIORITY),
            );
        }
        declare_queue(channel, &queue.name, args).await?;
        for key in &queue.binding_keys {
            channel
                .queue_bind(
                    &queue.name,
                    &queue.exchange,
                    key,
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
        Ok(())
    }
}

async fn declare_queue(channel: &Channel, name: &str, args: FieldTable) -> lapin::Result<()> {
    channel
        .queue_declare(
            name,
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await
        .map(|_| ())
}

/// A durable work queue and what feeds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSpec {
    pub name: String,
    pub exchange: String,
    pub binding_keys: Vec<String>,
    pub priority: bool,
}

impl QueueSpec {
    fn new(name: String, exchange: String, keys: &[&str], priority: bool) -> Self {
        QueueSpec {
            name,
            exchange,
            binding_keys: keys.iter().map(|k| k.to_string()).collect(),
            priority,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_namespace() {
        let t = Topology::new("tb", &["x86_64".into()]);
        assert_eq!(t.events_exchange(), "tb.events");
        assert_eq!(t.run_queue("x86_64"), "tb.run.x86_64");
        assert_eq!(t.dead_letter_queue(&t.rules_queue()), "tb.rules.dead");
        let names: Vec<_> = t.work_queues().into_iter().map(|q| q.name).collect();
        assert!(names.contains(&"tb.run.x86_64".to_string()));
        assert!(t
            .dead_letter_sources()
            .contains(&"tb.fedmsg-bridge".to_string()));
    }
}
