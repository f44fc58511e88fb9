//! The `rules` service: consumes events, evaluates the rules file, publishes a job request (and a
//! `queued` status) for every task and arch a matching rule asks for.

pub mod engine;
pub mod rules_file;
mod watch;

use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use taskbot::amqp::{
    self, ConsumerSpec, DeliveryContext, Disposition, Handler, Incoming, Outgoing,
};
use taskbot::messages::{JobState, JobStatus};
use taskbot::routes::Publishable;
use taskbot::{Config, Shutdown, Topology};

pub use engine::{Engine, Evaluation};
use rules_file::read_text;
pub use rules_file::{RulesError, RulesFile};
use watch::{watch_rules, RulesWatcher};

/// Read, parse and compile a rules file against the deployment's config.
pub fn load_rules(path: &Path, config: &Config) -> Result<Engine, RulesError> {
    compile_rules(&read_text(path, config.rules.max_file_bytes)?, path, config)
}

/// Parse and compile `text`, the text of the rules file at `path`.
fn compile_rules(text: &str, path: &Path, config: &Config) -> Result<Engine, RulesError> {
    Engine::from_text(
        text,
        &path.display().to_string(),
        &config.arches,
        config.rules.task_base_url.as_deref(),
        &config.rules.yaml_budget(),
    )
}

/// The rules in force. A reload swaps the whole engine, so each message is evaluated against one
/// consistent set of rules, never half an old file and half a new one.
#[derive(Clone)]
pub struct LiveRules(Arc<RwLock<Arc<Engine>>>);

impl LiveRules {
    pub fn new(engine: Engine) -> Self {
        LiveRules(Arc::new(RwLock::new(Arc::new(engine))))
    }

    pub fn current(&self) -> Arc<Engine> {
        // A poisoned lock only means a writer panicked mid-swap of an Arc: the value is whole.
        match self.0.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub fn replace(&self, engine: Engine) {
        let engine = Arc::new(engine);
        match self.0.write() {
            Ok(mut guard) => *guard = engine,
            Err(poisoned) => *poisoned.into_inner() = engine,
        }
    }
}

/// Job ids requested recently, so that an event arriving twice (the bus delivered it from two
/// endpoints, or our ack was lost after the job requests were confirmed) does not request its jobs
/// twice. Bounded: the oldest ids are forgotten first. It lives in memory, so a rules service that
/// crashed between publishing and acking requests the jobs again after its restart; the job ids
/// are the same then, so stores still keep one job and one set of results.
pub struct RecentJobs {
    capacity: usize,
    ids: std::collections::HashSet<uuid::Uuid>,
    order: std::collections::VecDeque<uuid::Uuid>,
}

impl RecentJobs {
    pub fn new(capacity: usize) -> Self {
        RecentJobs {
            capacity: capacity.max(1),
            ids: Default::default(),
            order: Default::default(),
        }
    }

    pub fn contains(&self, id: &uuid::Uuid) -> bool {
        self.ids.contains(id)
    }

    pub fn remember(&mut self, id: uuid::Uuid) {
        if self.ids.insert(id) {
            self.order.push_back(id);
            if self.order.len() > self.capacity {
                if let Some(old) = self.order.pop_front() {
                    self.ids.remove(&old);
                }
            }
        }
    }
}

/// How many recent job ids the rules service remembers.
pub const RECENT_JOBS: usize = 100_000;

/// Handles events: pure apart from logging and the memory of recent jobs.
pub struct RulesHandler {
    pub rules: LiveRules,
    pub topology: Topology,
    pub instance: String,
    recent: std::sync::Mutex<RecentJobs>,
}

impl RulesHandler {
    pub fn new(engine: Engine, topology: Topology, instance: String) -> Self {
        RulesHandler {
            rules: LiveRules::new(engine),
            topology,
            instance,
            recent: std::sync::Mutex::new(RecentJobs::new(RECENT_JOBS)),
        }
    }

    fn recent(&self) -> std::sync::MutexGuard<'_, RecentJobs> {
        self.recent.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Remember the jobs requested by `published` (the job requests `decide` made, carrying
    /// their job ids as AMQP message ids), once the broker confirmed them.
    pub fn remember(&self, published: &[Outgoing]) {
        let jobs_exchange = self.topology.jobs_exchange();
        let mut recent = self.recent();
        for msg in published.iter().filter(|m| m.exchange == jobs_exchange) {
            if let Some(id) = msg.message_id.as_deref().and_then(|id| id.parse().ok()) {
                recent.remember(id);
            }
        }
    }

    /// What to publish for one delivery.
    pub fn decide(&self, incoming: &Incoming) -> Disposition {
        let decision = match self.rules.current().evaluate_message(&incoming.body) {
            Ok(d) => d,
            Err(err) => return Disposition::DeadLetter(err.to_string()),
        };
        let (event_id, evaluation) = (&decision.event_id, &decision.evaluation);
        for (rule, reason) in &evaluation.skipped {
            tracing::warn!(%event_id, rule, %reason, "rule skipped for this message");
        }
        let mut out = Vec::new();
        let recent = self.recent();
        for job in &evaluation.jobs {
            if recent.contains(&job.job_id) {
                tracing::info!(%event_id, job_id = %job.job_id, "job already requested; not again");
                continue;
            }
            tracing::info!(%event_id, job_id = %job.job_id, rule = %job.rule,
                task = %job.task.name, item = %job.item, arch = %job.arch, "job requested");
            // The `queued` status first: the reporter records the job from it, and the
            // provisioner's statuses for the job would otherwise wait for it. The same message
            // for every copy of the event this service no longer remembers (it restarted, or
            // another rules service took it): the history shows the job queued once.
            let status = JobStatus::once(job, JobState::Queued, &self.instance, None);
            out.push(status.outgoing(&self.topology));
            out.push(job.outgoing(&self.topology));
        }
        Disposition::Done(out)
    }
}

#[async_trait::async_trait]
impl Handler for RulesHandler {
    async fn handle(&self, incoming: Incoming, _ctx: &dyn DeliveryContext) -> Disposition {
        self.decide(&incoming)
    }

    async fn confirmed(&self, _incoming: &Incoming, published: &[Outgoing]) {
        self.remember(published);
    }
}

/// Run until `shutdown`. Refuses to start with a broken rules file.
pub async fn run(config: Config, shutdown: Shutdown) -> anyhow::Result<()> {
    let loading = config.clone();
    let (watcher, engine) =
        tokio::task::spawn_blocking(move || RulesWatcher::load(loading)).await??;
    tracing::info!(file = %config.rules.file.display(), rules = engine.rule_count(), "rules loaded");
    let topology = Topology::for_config(&config);
    let handler = Arc::new(RulesHandler::new(
        engine,
        topology.clone(),
        taskbot::instance_name("rules"),
    ));
    let watcher = tokio::spawn(watch_rules(
        watcher,
        handler.rules.clone(),
        shutdown.clone(),
    ));
    let spec = ConsumerSpec {
        queue: topology.rules_queue(),
        name: "taskbot-rules".into(),
        concurrency: 1,
        retry_delay: Duration::from_secs(2),
    };
    amqp::consume(&config.amqp, &topology, spec, handler, shutdown).await;
    watcher.abort();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_jobs_forget_the_oldest_first() {
        let mut recent = RecentJobs::new(2);
        let ids: Vec<uuid::Uuid> = (1..=3).map(uuid::Uuid::from_u128).collect();
        recent.remember(ids[0]);
        recent.remember(ids[1]);
        recent.remember(ids[1]);
        assert!(recent.contains(&ids[0]) && recent.contains(&ids[1]));
        recent.remember(ids[2]);
        assert!(!recent.contains(&ids[0]));
        assert!(recent.contains(&ids[1]) && recent.contains(&ids[2]));
    }
}
