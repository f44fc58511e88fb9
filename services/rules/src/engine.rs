//! Compiled rules and their evaluation: an event in, job requests out. Pure: no I/O, so it is
//! tested without a broker and can be benchmarked on its own.
//!
//! Everything a rule needs is prepared by [`Engine::compile`] (paths split, regexes compiled,
//! sets hashed, templates parsed), so evaluating an event never parses anything and never fails
//! on a message's shape: a path that does not fit the message simply addresses nothing.

mod compile;
mod condition;
mod explain;
mod index;
mod locator;
mod needs;
mod path;
#[cfg(test)]
mod rule_tests;
mod template;
#[cfg(test)]
mod tests;
mod topic;
mod vm;

use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet};

use chrono::Utc;
use serde_json::Value;
use taskbot::limits;
use taskbot::messages::{
    check_schema, DecodeError, Environment, Event, JobRequest, Message, TaskRef,
};

#[cfg(test)]
use crate::rules_file::RulesError;
use condition::Condition;
use index::{Index, Plan};
use path::{Path, Scope};
use template::Template;
use topic::TopicPattern;
use vm::VmTemplates;

pub use explain::{ConditionFailure, RuleExplanation};

/// The element name of a `for_each` without `as:`.
pub const DEFAULT_ELEMENT_NAME: &str = "each";

/// Rules ready to evaluate: compiled by [`Engine::compile`] (`compile.rs`), found for an event by
/// their index (`index.rs`), evaluated here, explained in `explain.rs`.
#[derive(Debug, Clone)]
pub struct Engine {
    rules: Vec<Rule>,
    index: Index,
}

/// The fields of an event message, with its body left as raw JSON: enough to check the message
/// and find the candidate rules without building the body's tree, which most events (whose topic
/// no rule names) never need.
#[derive(serde::Deserialize)]
struct EventView<'a> {
    #[serde(borrow, default)]
    schema: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    id: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    topic: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    source: std::borrow::Cow<'a, str>,
    #[serde(default)]
    sent_at: Option<f64>,
    received_at: chrono::DateTime<chrono::Utc>,
    #[serde(default)]
    username: Option<String>,
    #[serde(borrow)]
    msg: &'a serde_json::value::RawValue,
    #[serde(default)]
    headers: BTreeMap<String, Value>,
}

/// An event message decoded and evaluated.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub event_id: String,
    pub topic: String,
    pub evaluation: Evaluation,
}

#[derive(Debug, Clone)]
struct Rule {
    name: String,
    topics: Vec<TopicPattern>,
    /// `match:` entries (as equality tests) and the `where:` tree; all must hold.
    conditions: Vec<Condition>,
    /// How many of `conditions` come from `match:` (the rest is the `where:` tree), so that
    /// explanations can say which clause failed.
    match_count: usize,
    actions: Vec<Action>,
}

#[derive(Debug, Clone)]
struct Action {
    task: TaskRef,
    for_each: Option<ForEach>,
    /// Checked per element with `for_each`, once otherwise.
    condition: Option<Condition>,
    item: Template,
    item_type: String,
    arches: Vec<String>,
    args: Vec<(String, Template)>,
    priority: u8,
    environment: Environment,
    destructive: bool,
    vm: Option<VmTemplates>,
    testcases: Vec<String>,
    scenario: Option<Template>,
}

/// `for_each: <path with [*]>` and the name (`as:`) its elements get in templates.
#[derive(Debug, Clone)]
struct ForEach {
    path: Path,
    name: String,
}

/// What one event produced, and why rules that matched produced nothing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Evaluation {
    pub jobs: Vec<JobRequest>,
    /// (rule, reason) for rules whose conditions matched but which could not be applied to this
    /// message (a template field missing, a `for_each` that addresses nothing): the rule is
    /// skipped, the message is not lost.
    pub skipped: Vec<(String, String)>,
}

impl Engine {
    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }

    /// Every job the event asks for. Job ids are derived, so evaluating the same event twice gives
    /// the same jobs.
    pub fn evaluate(&self, event: &Event) -> Evaluation {
        let plan = self.candidates(&event.topic);
        self.evaluate_plan(event, &plan)
    }

    fn evaluate_plan(&self, event: &Event, plan: &Plan) -> Evaluation {
        with_scope(event, |scope| {
            let mut out = Evaluation::default();
            for i in self.selected(plan, scope) {
                let rule = &self.rules[i];
                if rule.conditions.iter().all(|c| c.holds(scope)) {
                    rule.apply(event, scope, &mut out, None);
                }
            }
            out
        })
    }

    /// Decode a `taskbot.event.v1` message and evaluate it: what the rules service does with
    /// every delivery. A message is checked whole in one pass (a malformed one is refused
    /// whatever its topic), but of its body only the parts that the rules its topic can fire
    /// read are built, and only when there are such rules.
    pub fn evaluate_message(&self, body: &[u8]) -> Result<Decision, DecodeError> {
        let fields_error = |e: serde_json::Error| DecodeError::Fields {
            schema: Event::SCHEMA,
            reason: e.to_string(),
        };
        let view: EventView = match serde_json::from_slice(body) {
            Ok(view) => view,
            Err(e) => {
                // Not JSON, or another kind of message, is said before any field error, as
                // `Event::from_json` does.
                check_schema(body, Event::SCHEMA)?;
                return Err(fields_error(e));
            }
        };
        if view.schema.as_deref() != Some(Event::SCHEMA) {
            return Err(DecodeError::Schema {
                expected: Event::SCHEMA,
                found: view.schema.map_or_else(|| "(none)".into(), Cow::into_owned),
            });
        }
        if let Some(reason) = taskbot::messages::refuse_event_msg(view.msg.get()) {
            return Err(DecodeError::Fields {
                schema: Event::SCHEMA,
                reason,
            });
        }
        let plan = self.candidates(&view.topic);
        if plan.is_empty() {
            return Ok(Decision {
                event_id: view.id.into_owned(),
                topic: view.topic.into_owned(),
                evaluation: Evaluation::default(),
            });
        }
        let event = Event {
            id: view.id.into_owned(),
            topic: view.topic.into_owned(),
            source: view.source.into_owned(),
            sent_at: view.sent_at,
            received_at: view.received_at,
            username: view.username,
            msg: plan.needs.parse(view.msg.get()).map_err(fields_error)?,
            headers: view.headers,
        };
        let evaluation = self.evaluate_plan(&event, &plan);
        Ok(Decision {
            event_id: event.id,
            topic: event.topic,
            evaluation,
        })
    }
}

/// Call `f` with the scope paths are evaluated in for `event`. Only the two strings and the
/// (few, short) headers are copied; the message body is borrowed, not cloned.
fn with_scope<R>(event: &Event, f: impl FnOnce(&Scope<'_>) -> R) -> R {
    let id = Value::String(event.id.clone());
    let topic = Value::String(event.topic.clone());
    let headers = Value::Object(
        event
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    );
    f(&Scope {
        id: &id,
        topic: &topic,
        msg: &event.msg,
        headers: &headers,
        element: None,
    })
}

impl Rule {
    /// Add the jobs of every action of a rule that fires (or why they could not be made) to
    /// `out`. Both [`Engine::evaluate`] and [`Engine::explain`] come here, so a dry run cannot
    /// disagree with the service. `filtered` collects, for explanations only, the action-level
    /// `where:` conditions that did not hold.
    fn apply(
        &self,
        event: &Event,
        scope: &Scope<'_>,
        out: &mut Evaluation,
        mut filtered: Option<&mut Vec<ConditionFailure>>,
    ) {
        for (index, action) in self.actions.iter().enumerate() {
            action.expand(
                index,
                &self.name,
                event,
                scope,
                out,
                filtered.as_deref_mut(),
            );
        }
    }
}

impl Action {
    /// Add this action's jobs for the event to `out` (or the reason it could not be applied).
    /// `index` is the action's position in the rule's `do:`, for explanations; `filtered`, when
    /// given, collects why the action's `where:` did not hold.
    fn expand(
        &self,
        index: usize,
        rule: &str,
        event: &Event,
        scope: &Scope<'_>,
        out: &mut Evaluation,
        mut filtered: Option<&mut Vec<ConditionFailure>>,
    ) {
        let Some(for_each) = &self.for_each else {
            if let Some(condition) = &self.condition {
                if !condition.holds(scope) {
                    if let Some(filtered) = filtered {
                        let at = format!("do[{index}].where");
                        filtered.push(explain::failure_of(condition, scope, &at));
                    }
                    return;
                }
            }
            match self.jobs(rule, event, scope) {
                Ok(jobs) => out.jobs.extend(jobs),
                Err(reason) => out.skipped.push((rule.to_string(), reason)),
            }
            return;
        };
        let mut elements = Vec::new();
        for_each.path.any(scope, &mut |element| {
            elements.push(element);
            false
        });
        if elements.is_empty() {
            out.skipped.push((
                rule.to_string(),
                format!(
                    "for_each {} addresses nothing in this message",
                    for_each.path.text()
                ),
            ));
            return;
        }
        // Two elements that render the same item and args (the same build listed twice, or
        // templates that do not use the element) are one job, not two with the same id.
        let mut seen = HashSet::new();
        for (element_index, element) in elements.into_iter().enumerate() {
            let scope = scope.with_element(&for_each.name, element);
            if let Some(condition) = &self.condition {
                if !condition.holds(&scope) {
                    if let Some(filtered) = filtered.as_deref_mut() {
                        let at = format!(
                            "do[{index}].where (element {element_index} of {})",
                            for_each.path.text()
                        );
                        filtered.push(explain::failure_of(condition, &scope, &at));
                    }
                    continue;
                }
            }
            match self.jobs(rule, event, &scope) {
                Ok(jobs) => out
                    .jobs
                    .extend(jobs.into_iter().filter(|job| seen.insert(job.job_id))),
                Err(reason) => out.skipped.push((
                    rule.to_string(),
                    format!(
                        "element {element_index} of {}: {reason}",
                        for_each.path.text()
                    ),
                )),
            }
        }
    }

    /// One job per arch, with the templates rendered in `scope`.
    fn jobs(
        &self,
        rule: &str,
        event: &Event,
        scope: &Scope<'_>,
    ) -> Result<Vec<JobRequest>, String> {
        let item = self.item.render(scope)?;
        let mut args = BTreeMap::new();
        for (k, t) in &self.args {
            args.insert(k.clone(), t.render(scope)?);
        }
        let vm = match &self.vm {
            Some(vm) => Some(vm.render(scope)?),
            None => None,
        };
        let scenario = match &self.scenario {
            Some(t) => Some(t.render(scope)?).filter(|s| !s.is_empty()),
            None => None,
        };
        let now = Utc::now();
        let jobs: Vec<JobRequest> = self
            .arches
            .iter()
            .map(|arch| JobRequest {
                job_id: JobRequest::derive_id(&event.id, rule, &self.task, &item, arch, &args),
                event_id: event.id.clone(),
                event_topic: event.topic.clone(),
                rule: rule.to_string(),
                task: self.task.clone(),
                item: item.clone(),
                item_type: self.item_type.clone(),
                arch: arch.clone(),
                args: args.clone(),
                priority: self.priority,
                environment: self.environment,
                destructive: self.destructive,
                vm: vm.clone(),
                testcases: self.testcases.clone(),
                scenario: scenario.clone(),
                created_at: now,
            })
            .collect();
        // A job with a value no store can hold (an item rendered from a hostile event, an event
        // id too long) would be refused by every stage after this one: it is not requested, and
        // the rule is skipped for this event with the reason; the event's other jobs still are.
        for job in &jobs {
            limits::check_job(job).map_err(|e| format!("no job requested: {e}"))?;
        }
        Ok(jobs)
    }
}

/// The engine the unit tests compile `text` into: the deployment's arches are x86_64, aarch64
/// and noarch, relative task repositories are under file:///srv/tasks.
#[cfg(test)]
fn compile_for_tests(text: &str) -> Result<Engine, RulesError> {
    let arches = ["x86_64".to_string(), "aarch64".into(), "noarch".into()];
    Engine::from_text(
        text,
        "rules.yaml",
        &arches,
        Some("file:///srv/tasks"),
        &taskbot::yaml_budget::YamlBudget::DEFAULT,
    )
}
