//! The `rules` service: consumes events, evaluates the rules file, publishes a job request (and a
//! `queued` status) for every task and arch a matching rule asks for.

pub mod engine;
pub mod rules_file;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use taskbot::amqp::{self, ConsumerSpec, Disposition, Handler, Incoming, Outgoing, Publisher};
use taskbot::messages::{Event, JobState, JobStatus, Message};
use taskbot::{Config, Shutdown, Topology};

pub use engine::{Engine, Evaluation};
pub use rules_file::{RulesError, RulesFile};

/// Read, parse and compile a rules file against the deployment's config.
pub fn load_rules(path: &Path, config: &Config) -> Result<Engine, RulesError> {
    let text = std::fs::read_to_string(path).map_err(|e| RulesError {
        file: path.display().to_string(),
        line: 0,
        column: 0,
        message: format!("cannot read: {e}"),
    })?;
    let name = path.display().to_string();
    let file = RulesFile::parse(&text, &name)?;
    Engine::compile(
        &file,
        &text,
        &name,
        &config.arches,
        config.rules.task_base_url.as_deref(),
    )
}

/// Handles events: pure apart from logging.
pub struct RulesHandler {
    pub engine: Engine,
    pub topology: Topology,
    pub instance: String,
}

impl RulesHandler {
    /// What to publish for one delivery.
    pub fn decide(&self, incoming: &Incoming) -> Disposition {
        let event = match Event::from_json(&incoming.body) {
            Ok(e) => e,
            Err(err) => return Disposition::DeadLetter(err.to_string()),
        };
        let evaluation = self.engine.evaluate(&event);
        for (rule, reason) in &evaluation.skipped {
            tracing::warn!(event_id = %event.id, rule, %reason, "rule skipped for this message");
        }
        let mut out = Vec::new();
        for job in &evaluation.jobs {
            tracing::info!(event_id = %event.id, job_id = %job.job_id, rule = %job.rule,
                task = %job.task.name, item = %job.item, arch = %job.arch, "job requested");
            out.push(
                Outgoing::new(self.topology.jobs_exchange(), &job.arch, job.to_json())
                    .with_message_id(job.job_id.to_string())
                    .with_priority(job.priority),
            );
            let status = JobStatus::new(job, JobState::Queued, &self.instance, None);
            out.push(Outgoing::new(
                self.topology.results_exchange(),
                status.routing_key(),
                status.to_json(),
            ));
        }
        Disposition::Done(out)
    }
}

#[async_trait::async_trait]
impl Handler for RulesHandler {
    async fn handle(&self, incoming: Incoming, _publisher: &Publisher) -> Disposition {
        self.decide(&incoming)
    }
}

/// Run until `shutdown`. Refuses to start with a broken rules file.
pub async fn run(config: Config, shutdown: Shutdown) -> anyhow::Result<()> {
    let engine = load_rules(&config.rules.file, &config)?;
    tracing::info!(file = %config.rules.file.display(), rules = engine.rule_count(), "rules loaded");
    let topology = Topology::new(&config.amqp.namespace, &config.arches);
    let handler = Arc::new(RulesHandler {
        engine,
        topology: topology.clone(),
        instance: taskbot::instance_name("rules"),
    });
    let spec = ConsumerSpec {
        queue: topology.rules_queue(),
        name: "taskbot-rules".into(),
        concurrency: 1,
        retry_delay: Duration::from_secs(2),
    };
    amqp::consume(&config.amqp, &topology, spec, handler, shutdown).await;
    Ok(())
}
