//! Names of every exchange and queue, and their declaration.
//!
//! The whole topology is declared by `taskbot setup-users` (with an administrator's login), which
//! also makes every service's broker user; a service logged in as its own user then declares only
//! the queues it owns ([`Topology::owned_queues`]) at every (re)connection, since its user may
//! configure nothing else ([`Permissions`]). A process logged in as an administrator (`guest` in
//! local development) declares the whole topology, as every service did before per-service users.
//! Declarations are idempotent, so services start in any order and a message published before its
//! consumer first ran is kept, not dropped as unroutable. `docs/architecture.md` draws the same
//! picture, `docs/security.md` says why.
//!
//! The reporter's sink queues are declared for the sinks the configuration enables
//! ([`Topology::for_config`]); every service reads the same configuration, so every service
//! declares the same sink queues, and a result published before the reporter first ran waits in
//! them. A sink the configuration does not enable has no queue (it would fill forever).
//!
//! All names start with the configured namespace (default `taskbot`), so several deployments or
//! parallel test runs can share a broker.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, ExchangeKind};

mod permissions;

pub use crate::config::Sink;
use crate::config::{Config, ReporterConfig};
use crate::identity::{Role, Service};
pub use permissions::{Permissions, TopicPermission};

/// Highest job priority; run and provisioner queues are priority queues up to this.
pub const MAX_PRIORITY: u8 = 9;

/// The names of one deployment's exchanges and queues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    pub namespace: String,
    /// Arches with a run queue declared up front.
    pub arches: Vec<String>,
    /// Reporter sinks whose queues [`Topology::declare`] declares too (empty except in the
    /// reporter, which sets the sinks it consumes).
    pub sinks: Vec<Sink>,
    /// Whether the provisioner runs VMs, and so listens for jobs' final statuses to destroy
    /// their VMs (its `provisioner.finished` queue).
    pub vm_leases: bool,
    /// The exchange the reporter's fedora-messaging sink publishes to, when that sink is enabled
    /// (it is not Taskbot's to declare, but the reporter's user must be allowed to write to it).
    pub fedora_messaging_exchange: Option<String>,
}

impl Topology {
    /// A bare topology: these names, no sink queues, no VM leases. Tests and tools start from
    /// it; services use [`Topology::for_config`].
    pub fn new(namespace: &str, arches: &[String]) -> Self {
        Topology {
            namespace: namespace.to_string(),
            arches: arches.to_vec(),
            sinks: Vec::new(),
            vm_leases: false,
            fedora_messaging_exchange: None,
        }
    }

    /// The topology of a deployment, the one every service declares: its namespace, arches, the
    /// sinks its reporter feeds ([`sinks_in_use`]) and, with the VM backend, the provisioner's
    /// lease queue. Every service uses this, so the results exchange always has the sinks' queues
    /// bound. A runner keeps only its own arch ([`Topology::only_arch`]).
    ///
    /// The topology reads the configuration, never the other way round: the configuration is
    /// plain data that every module interprets (as the AMQP layer reads `amqp`), and the names
    /// of queues are one such interpretation.
    pub fn for_config(config: &Config) -> Self {
        let mut topology = Topology::new(&config.amqp.namespace, &config.arches)
            .with_sinks(&sinks_in_use(&config.reporter));
        topology.vm_leases = config.provisioner.vm.is_some();
        if topology.sinks.contains(&Sink::FedoraMessaging) {
            topology.fedora_messaging_exchange =
                Some(config.reporter.fedora_messaging_exchange.clone());
        }
        topology
    }

    /// The same topology with `arch` as its only arch: the part the runners of `arch` own. Their
    /// broker user (`[amqp.users.runner_<arch>]`) may declare and consume that arch's run queue
    /// only ([`Topology::permissions`] of this topology), and a runner's own queue must exist even
    /// for an arch missing from `arches`.
    pub fn only_arch(mut self, arch: &str) -> Self {
        self.arches = vec![arch.to_string()];
        self
    }

    /// Final job statuses (`job.done`, `job.crashed`), for the provisioner to destroy the VMs of
    /// jobs that ended (declared only with the VM backend).
    pub fn provisioner_finished_queue(&self) -> String {
        self.name("provisioner.finished")
    }

    /// The same topology, also declaring the queues of `sinks`.
    pub fn with_sinks(mut self, sinks: &[Sink]) -> Self {
        self.sinks = sinks.to_vec();
        self
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
    /// Results for the PostgreSQL sink.
    pub fn postgres_results_queue(&self) -> String {
        self.name("sink.postgres.results")
    }
    /// Job statuses for the PostgreSQL sink.
    pub fn postgres_status_queue(&self) -> String {
        self.name("sink.postgres.status")
    }
    /// Results for the ResultsDB sink.
    pub fn resultsdb_queue(&self) -> String {
        self.name("sink.resultsdb")
    }
    /// Results and statuses for the JSON-lines sink.
    pub fn jsonl_queue(&self) -> String {
        self.name("sink.jsonl")
    }
    /// Results for the fedora-messaging sink.
    pub fn fedora_messaging_queue(&self) -> String {
        self.name("sink.fedora-messaging")
    }
    /// Pseudo-queue name under which the bridge dead-letters malformed bus messages.
    pub fn bridge_source(&self) -> String {
        self.name("fedmsg-bridge")
    }
    /// Pseudo-queue name under which the fedora-messaging bridge dead-letters the deliveries
    /// that cannot be events.
    pub fn fedora_messaging_bridge_source(&self) -> String {
        self.name("fedora-messaging-bridge")
    }
    /// The dead-letter queue holding what was refused from `source` (a queue name).
    pub fn dead_letter_queue(&self, source: &str) -> String {
        format!("{source}.dead")
    }

    /// Every always-consumed work queue with its exchange, binding keys and whether it is a
    /// priority queue. The reporter's sink queues are not among them (see [`Self::sink_queues`]):
    /// which of them exist depends on the reporter's configuration.
    pub fn work_queues(&self) -> Vec<QueueSpec> {
        let mut queues = vec![
            // One rules service consumes at a time (the others stand by): the one that takes
            // every event remembers the jobs it requested, so an event delivered twice (by two
            // bridges, or republished) requests its jobs once.
            QueueSpec::new(self.rules_queue(), self.events_exchange(), &["#"], false)
                .single_active(),
            QueueSpec::new(self.provisioner_queue(), self.jobs_exchange(), &["#"], true),
        ];
        for arch in &self.arches {
            queues.push(self.run_queue_spec(arch));
        }
        if self.vm_leases {
            queues.push(QueueSpec::new(
                self.provisioner_finished_queue(),
                self.results_exchange(),
                &["job.done", "job.crashed"],
                false,
            ));
        }
        queues
    }

    /// The queues of `sinks` on the results exchange, in the order given.
    pub fn sink_queues(&self, sinks: &[Sink]) -> Vec<QueueSpec> {
        let results = self.results_exchange();
        let mut queues = Vec::new();
        for sink in sinks {
            match sink {
                Sink::Postgres => {
                    queues.push(QueueSpec::new(
                        self.postgres_results_queue(),
                        results.clone(),
                        &["result.#"],
                        false,
                    ));
                    queues.push(QueueSpec::new(
                        self.postgres_status_queue(),
                        results.clone(),
                        &["job.#"],
                        false,
                    ));
                }
                // `queued` and `running` statuses become QUEUED and RUNNING results there.
                Sink::Resultsdb => queues.push(QueueSpec::new(
                    self.resultsdb_queue(),
                    results.clone(),
                    &["result.#", "job.queued", "job.running"],
                    false,
                )),
                Sink::Jsonl => queues.push(QueueSpec::new(
                    self.jsonl_queue(),
                    results.clone(),
                    &["result.#", "job.#"],
                    false,
                )),
                Sink::FedoraMessaging => queues.push(QueueSpec::new(
                    self.fedora_messaging_queue(),
                    results.clone(),
                    &["result.#"],
                    false,
                )),
            }
        }
        queues
    }

    pub fn run_queue_spec(&self, arch: &str) -> QueueSpec {
        QueueSpec::new(self.run_queue(arch), self.run_exchange(), &[arch], true)
    }

    /// Sources with a dead-letter queue: every work queue and the bridges.
    pub fn dead_letter_sources(&self) -> Vec<String> {
        let mut sources: Vec<String> = self.work_queues().into_iter().map(|q| q.name).collect();
        sources.push(self.bridge_source());
        sources.push(self.fedora_messaging_bridge_source());
        sources
    }

    /// The pseudo-queue a bridge dead-letters under, for the bridges (which own no queue).
    fn pseudo_source(&self, role: Role) -> Option<String> {
        match role {
            Role::Service(Service::Bridge) => Some(self.bridge_source()),
            Role::Service(Service::FedoraMessagingBridge) => {
                Some(self.fedora_messaging_bridge_source())
            }
            _ => None,
        }
    }

    /// The queues `role` owns: it declares them at every (re)connection (with their dead-letter
    /// queues and bindings) and consumes them. A runner owns the run queue of every arch of its
    /// topology: a runner's topology, and its user's, has only its own arch
    /// ([`Topology::only_arch`]).
    pub fn owned_queues(&self, role: Role) -> Vec<QueueSpec> {
        let Role::Service(service) = role else {
            return Vec::new();
        };
        match service {
            Service::Rules => self.work_queues_named(&[self.rules_queue()]),
            Service::Provisioner => self
                .work_queues_named(&[self.provisioner_queue(), self.provisioner_finished_queue()]),
            Service::Runner => self.arches.iter().map(|a| self.run_queue_spec(a)).collect(),
            Service::Reporter => self.sink_queues(&self.sinks),
            Service::Bridge | Service::FedoraMessagingBridge | Service::Api => Vec::new(),
        }
    }

    /// The work queues of this topology among `names`.
    fn work_queues_named(&self, names: &[String]) -> Vec<QueueSpec> {
        self.work_queues()
            .into_iter()
            .filter(|q| names.contains(&q.name))
            .collect()
    }

    /// The sources whose dead-letter queue `role` declares: those of its own queues, and for the
    /// bridge its pseudo-queue.
    pub fn owned_dead_letter_sources(&self, role: Role) -> Vec<String> {
        let mut sources: Vec<String> = self
            .owned_queues(role)
            .into_iter()
            .map(|q| q.name)
            .collect();
        sources.extend(self.pseudo_source(role));
        sources
    }

    /// Declare what `login` may declare: with a service's own user ([`AmqpConfig::login_role`]
    /// says which), its own queues ([`Self::owned_queues`]); with an administrator's login
    /// (`None`), everything ([`Self::declare`]).
    ///
    /// [`AmqpConfig::login_role`]: crate::config::AmqpConfig::login_role
    pub async fn declare_for(&self, login: Option<Role>, channel: &Channel) -> lapin::Result<()> {
        let Some(role) = login else {
            return self.declare(channel).await;
        };
        for queue in self.owned_queues(role) {
            self.declare_work_queue(channel, &queue).await?;
        }
        if let Some(source) = self.pseudo_source(role) {
            self.declare_dead_letter_queue(channel, &source).await?;
        }
        Ok(())
    }

    /// Declare everything: exchanges, work, sink and dead-letter queues, bindings. What
    /// `taskbot setup-users` does, and every process logged in as an administrator at every
    /// (re)connection.
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
            self.declare_dead_letter_queue(channel, &source).await?;
        }
        for queue in self.work_queues() {
            self.declare_work_queue(channel, &queue).await?;
        }
        for queue in self.sink_queues(&self.sinks) {
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
        self.declare_dead_letter_queue(channel, &queue.name).await?;
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
        if queue.single_active {
            args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
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

impl Topology {
    /// Declare the dead-letter queue of `source` and bind it to the dead-letter exchange.
    async fn declare_dead_letter_queue(
        &self,
        channel: &Channel,
        source: &str,
    ) -> lapin::Result<()> {
        let dlq = self.dead_letter_queue(source);
        declare_queue(channel, &dlq, FieldTable::default()).await?;
        channel
            .queue_bind(
                &dlq,
                &self.dead_letter_exchange(),
                source,
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
    }
}

/// The sinks a reporter configuration feeds: `sinks` when set, else PostgreSQL, plus ResultsDB
/// when `resultsdb_url` is set and the JSON-lines file when `jsonl_path` is set. Every service
/// declares these sinks' queues (they all read the same configuration), so a result or status
/// published before the reporter first ran is kept, not returned as unroutable. The reporter
/// also checks that each listed sink has what it needs.
pub fn sinks_in_use(reporter: &ReporterConfig) -> Vec<Sink> {
    let mut sinks = match &reporter.sinks {
        Some(listed) => listed.clone(),
        None => {
            let mut sinks = vec![Sink::Postgres];
            if reporter.resultsdb_url.is_some() {
                sinks.push(Sink::Resultsdb);
            }
            if reporter.jsonl_path.is_some() {
                sinks.push(Sink::Jsonl);
            }
            sinks
        }
    };
    sinks.sort();
    sinks.dedup();
    sinks
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
    /// Declared `x-single-active-consumer`: of all the queue's consumers, the broker delivers to
    /// one at a time, and to the next when it goes.
    pub single_active: bool,
}

impl QueueSpec {
    fn new(name: String, exchange: String, keys: &[&str], priority: bool) -> Self {
        QueueSpec {
            name,
            exchange,
            binding_keys: keys.iter().map(|k| k.to_string()).collect(),
            priority,
            single_active: false,
        }
    }

    fn single_active(self) -> Self {
        QueueSpec {
            single_active: true,
            ..self
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

    #[test]
    fn a_deployment_topology_follows_its_config_and_a_runner_keeps_its_arch() {
        let mut config = Config::default();
        config.amqp.namespace = "tb".into();
        config.arches = vec!["x86_64".into()];
        config.reporter.jsonl_path = Some("/tmp/r.jsonl".into());
        let t = Topology::for_config(&config);
        assert_eq!(t.namespace, "tb");
        assert_eq!(t.sinks, [Sink::Postgres, Sink::Jsonl]);
        assert!(!t.vm_leases);
        let runner = t.clone().only_arch("s390x");
        assert_eq!(runner.arches, ["s390x"], "even one missing from arches");
        let owned: Vec<_> = runner
            .owned_queues(Service::Runner.into())
            .into_iter()
            .map(|q| q.name)
            .collect();
        assert_eq!(owned, ["tb.run.s390x"]);
        assert_eq!(runner.sinks, t.sinks);
        assert_eq!(t.fedora_messaging_exchange, None, "that sink is off");
        config.provisioner.vm = Some(Default::default());
        let with_vms = Topology::for_config(&config);
        assert!(with_vms.vm_leases);
        let names: Vec<_> = with_vms.work_queues().into_iter().map(|q| q.name).collect();
        assert!(
            names.contains(&"tb.provisioner.finished".to_string()),
            "{names:?}"
        );
    }

    #[test]
    fn each_service_owns_only_the_queues_it_consumes() {
        let mut t =
            Topology::new("tb", &["x86_64".into(), "noarch".into()]).with_sinks(&[Sink::Postgres]);
        t.vm_leases = true;
        let owned = |s: Service| -> Vec<String> {
            t.owned_queues(s.into())
                .into_iter()
                .map(|q| q.name)
                .collect()
        };
        assert_eq!(owned(Service::Rules), ["tb.rules"]);
        assert_eq!(
            owned(Service::Provisioner),
            ["tb.provisioner", "tb.provisioner.finished"]
        );
        assert_eq!(owned(Service::Runner), ["tb.run.x86_64", "tb.run.noarch"]);
        assert_eq!(
            owned(Service::Reporter),
            ["tb.sink.postgres.results", "tb.sink.postgres.status"]
        );
        assert!(owned(Service::Bridge).is_empty() && owned(Service::Api).is_empty());
        assert!(owned(Service::FedoraMessagingBridge).is_empty());
        assert_eq!(
            t.owned_dead_letter_sources(Service::FedoraMessagingBridge.into()),
            ["tb.fedora-messaging-bridge"]
        );
        assert!(t.owned_queues(Role::Cli).is_empty());
        assert_eq!(
            t.owned_dead_letter_sources(Service::Bridge.into()),
            ["tb.fedmsg-bridge"]
        );
        // Together they are every queue of the topology: nothing is left for nobody to declare.
        let mut all: Vec<String> = Role::ALL
            .into_iter()
            .flat_map(|r| t.owned_dead_letter_sources(r))
            .collect();
        let mut expected = t.dead_letter_sources();
        expected.extend(t.sink_queues(&t.sinks).into_iter().map(|q| q.name));
        all.sort();
        expected.sort();
        assert_eq!(all, expected);
    }

    #[test]
    fn sink_queues_are_separate_from_work_queues() {
        let t = Topology::new("tb", &[]);
        let work: Vec<_> = t.work_queues().into_iter().map(|q| q.name).collect();
        assert!(work.iter().all(|q| !q.contains(".sink.")), "{work:?}");
        let sinks: Vec<_> = t
            .sink_queues(&Sink::ALL)
            .into_iter()
            .map(|q| (q.name, q.binding_keys))
            .collect();
        let keys = |k: &[&str]| k.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            sinks,
            [
                ("tb.sink.postgres.results".to_string(), keys(&["result.#"])),
                ("tb.sink.postgres.status".to_string(), keys(&["job.#"])),
                (
                    "tb.sink.resultsdb".to_string(),
                    keys(&["result.#", "job.queued", "job.running"])
                ),
                ("tb.sink.jsonl".to_string(), keys(&["result.#", "job.#"])),
                ("tb.sink.fedora-messaging".to_string(), keys(&["result.#"])),
            ]
        );
        assert!(t.sink_queues(&[]).is_empty());
        assert_eq!(
            serde_json::from_str::<Vec<Sink>>(r#"["postgres","fedora-messaging"]"#).unwrap(),
            [Sink::Postgres, Sink::FedoraMessaging]
        );
    }
}
