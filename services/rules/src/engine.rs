//! Compiled rules and their evaluation: an event in, job requests out. Pure: no I/O, so it is
//! tested without a broker and can be benchmarked on its own.
//!
//! Everything a rule needs is prepared by [`Engine::compile`] (paths split, regexes compiled,
//! sets hashed, templates parsed), so evaluating an event never parses anything and never fails
//! on a message's shape: a path that does not fit the message simply addresses nothing.

mod condition;
mod explain;
mod needs;
mod path;
#[cfg(test)]
mod rule_tests;
mod template;

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use chrono::Utc;
use serde_json::Value;
use taskbot::messages::{
    check_schema, DecodeError, Environment, Event, ImageQuery, JobRequest, Message, RemoteFile,
    TaskRef, VmRequest,
};
use taskbot::topology::MAX_PRIORITY;

use crate::rules_file::{find_between, locate, OneOrMany, RulesError, RulesFile, VmSpec};
#[cfg(test)]
use condition::loosely_equal;
use condition::{CompileContext, Condition, Problem, ValueSet};
use needs::Needs;
use path::{Path, Scope, EVENT_ROOTS};
use template::Template;

pub use explain::{ConditionFailure, RuleExplanation};

/// The element name of a `for_each` without `as:`.
pub const DEFAULT_ELEMENT_NAME: &str = "each";

/// Rules ready to evaluate.
#[derive(Debug, Clone)]
pub struct Engine {
    rules: Vec<Rule>,
    /// Which rules a topic can fire, by topic. The bus carries a few hundred distinct topics, so
    /// after the first event of each, finding the candidate rules is one hash lookup instead of
    /// matching every pattern of every rule. Shared by clones (the rules are the same).
    by_topic: Arc<Mutex<HashMap<String, Arc<Plan>>>>,
    /// For each rule, an exact requirement on the message that can be looked up in a hash table
    /// (`msg.name` is `kernel`, or one of a set of names), when it has one: with a thousand
    /// per-package rules, an event is then checked against the few rules for its package, not
    /// against all of them. `(slot in index_paths, keys)`.
    requirements: Vec<Option<Requirement>>,
    index_paths: Vec<Path>,
}

/// A rule's indexed requirement: the slot of its path in `Engine::index_paths`, and the keys
/// (see `condition::index_key`) one of which the message's value there must have.
type Requirement = (usize, Vec<String>);

/// The rules a topic can fire, split into the rules indexed by an exact requirement (grouped by
/// the path they look at) and the rest, which are checked one by one; and the parts of the
/// message body these rules read, the only parts of it that are parsed.
#[derive(Debug, Default)]
struct Plan {
    unindexed: Vec<usize>,
    indexed: Vec<(usize, HashMap<String, Vec<usize>>)>,
    needs: Needs,
}

impl Plan {
    fn is_empty(&self) -> bool {
        self.unindexed.is_empty() && self.indexed.is_empty()
    }
}

/// Distinct topics remembered by [`Engine::candidates`] before the memory is cleared (a bound
/// against a producer inventing topics).
const TOPIC_CACHE_LIMIT: usize = 10_000;

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
}

/// An action's `vm:`, compiled: the templates of what the job's VM request gets.
#[derive(Debug, Clone)]
struct VmTemplates {
    /// (`name`/`distro`/`release`/`flavour`, template).
    image: Vec<(String, Template)>,
    blank_disk_mb: Option<u64>,
    /// URL and SHA-256.
    iso: Option<(Template, Template)>,
}

impl VmTemplates {
    /// Check an action's `vm:` against its `environment` and parse its templates.
    fn compile(
        vm: &VmSpec,
        environment: Environment,
        template: impl Fn(&str, &str) -> Result<Template, Problem>,
    ) -> Result<VmTemplates, Problem> {
        if environment != Environment::Vm {
            return Err(Problem::new("vm: needs environment: vm", &["vm:"]));
        }
        if let Some(key) = vm.image.keys().find(|k| !IMAGE_KEYS.contains(&k.as_str())) {
            return Err(Problem::new(
                format!(
                    "vm.image: unknown key {key:?} (known: {})",
                    IMAGE_KEYS.join(", ")
                ),
                &[&format!("{key}:"), "image:"],
            ));
        }
        if vm.blank_disk_mb.is_some() && !vm.image.is_empty() {
            return Err(Problem::new(
                "vm: a VM is either blank (blank_disk_mb) or of an image, not both",
                &["blank_disk_mb:", "vm:"],
            ));
        }
        if vm.blank_disk_mb.is_some() && vm.iso.is_none() {
            return Err(Problem::new(
                "vm: a blank VM needs an iso to boot from",
                &["blank_disk_mb:", "vm:"],
            ));
        }
        let image = vm
            .image
            .iter()
            .map(|(k, v)| Ok((k.clone(), template(v, k)?)))
            .collect::<Result<Vec<_>, Problem>>()?;
        let iso = match &vm.iso {
            Some(iso) => Some((template(&iso.url, "url")?, template(&iso.sha256, "sha256")?)),
            None => None,
        };
        Ok(VmTemplates {
            image,
            blank_disk_mb: vm.blank_disk_mb,
            iso,
        })
    }

    /// Every template, for the fields of the message they need.
    fn templates(&self) -> impl Iterator<Item = &Template> {
        let iso = self.iso.iter().flat_map(|(url, sum)| [url, sum]);
        self.image.iter().map(|(_, t)| t).chain(iso)
    }

    fn render(&self, scope: &Scope<'_>) -> Result<VmRequest, String> {
        let mut image = ImageQuery::default();
        for (key, template) in &self.image {
            let value = Some(template.render(scope)?);
            match key.as_str() {
                "name" => image.name = value,
                "distro" => image.distro = value,
                "release" => image.release = value,
                _ => image.flavour = value,
            }
        }
        let iso = match &self.iso {
            Some((url, sha256)) => Some(RemoteFile {
                url: url.render(scope)?,
                sha256: sha256.render(scope)?,
            }),
            None => None,
        };
        Ok(VmRequest {
            image,
            blank_disk_mb: self.blank_disk_mb,
            iso,
        })
    }
}

/// The keys of `vm.image`.
const IMAGE_KEYS: [&str; 4] = ["name", "distro", "release", "flavour"];

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
    /// Validate and compile. `text` is the file's text (for placing errors found after parsing),
    /// `arches` the deployment's arches (for `all` and for checking listed arches).
    pub fn compile(
        file: &RulesFile,
        text: &str,
        file_name: &str,
        arches: &[String],
        task_base_url: Option<&str>,
    ) -> Result<Engine, RulesError> {
        let error = |needle: &str, message: String| {
            let (line, column) = locate(text, needle);
            RulesError {
                file: file_name.to_string(),
                line,
                column,
                message,
            }
        };
        // Hashed once, shared by every `in:` / `not_in:` that names them.
        let sets: BTreeMap<String, Arc<ValueSet>> = file
            .sets
            .iter()
            .map(|(name, values)| (name.clone(), Arc::new(ValueSet::named(name, values))))
            .collect();
        let mut names = BTreeSet::new();
        let mut rules = Vec::new();
        for spec in &file.rules {
            if !names.insert(spec.name.clone()) {
                return Err(error(
                    &format!("name: {}", spec.name),
                    format!("duplicate rule name {:?}", spec.name),
                ));
            }
            let in_rule = |m: String| error(&format!("name: {}", spec.name), m);
            // serde cannot place errors found after parsing; they are searched for as text, from
            // the rule's first line on, and within the action they belong to. Only when there is
            // an error: searching the text for every rule would make loading a large file slow.
            let rule_line = || {
                find_between(
                    text,
                    1,
                    usize::MAX,
                    &[
                        &format!("name: {}", spec.name),
                        &format!("name: \"{}\"", spec.name),
                        &format!("name: '{}'", spec.name),
                    ],
                )
                .map_or(1, |(line, _)| line)
            };
            // Each action has exactly one `task:` key: its line marks where the action is.
            let task_lines = |rule_line: usize| -> Vec<usize> {
                text.lines()
                    .enumerate()
                    .skip(rule_line.saturating_sub(1))
                    .filter(|(_, line)| line.contains("task:"))
                    .map(|(i, _)| i + 1)
                    .take(spec.actions.len())
                    .collect()
            };
            let place_within = |problem: Problem, spans: &[(usize, usize)]| {
                let needles: Vec<&str> = problem.needles.iter().map(String::as_str).collect();
                let (line, column) = spans
                    .iter()
                    .find_map(|(from, to)| find_between(text, *from, *to, &needles))
                    .unwrap_or((spans[0].0, 1));
                RulesError {
                    file: file_name.to_string(),
                    line,
                    column,
                    message: format!("rule {:?}: {}", spec.name, problem.message),
                }
            };
            let place = |problem: Problem| place_within(problem, &[(rule_line(), usize::MAX)]);
            let topics = spec
                .when
                .topic
                .to_vec()
                .iter()
                .map(|t| TopicPattern::new(t))
                .collect();
            let mut conditions = spec
                .when
                .equals
                .iter()
                .map(|(p, v)| {
                    Ok(Condition::equals(
                        Path::parse(p).map_err(&in_rule)?,
                        v.clone(),
                    ))
                })
                .collect::<Result<Vec<_>, RulesError>>()?;
            if let Some(tree) = &spec.when.condition {
                let context = CompileContext {
                    sets: &sets,
                    roots: &EVENT_ROOTS,
                };
                conditions.push(context.compile(tree).map_err(place)?);
            }
            let mut actions = Vec::new();
            for (index, a) in spec.actions.iter().enumerate() {
                // The action's own lines (from its `task:` to the next one's), then the lines
                // before its `task:` (keys written before it), then the whole rule.
                let spans = || {
                    let rule_line = rule_line();
                    let task_lines = task_lines(rule_line);
                    let own_start = task_lines.get(index).copied().unwrap_or(rule_line);
                    let own_end = task_lines.get(index + 1).copied().unwrap_or(usize::MAX);
                    let before = match index {
                        0 => rule_line,
                        _ => task_lines.get(index - 1).map_or(rule_line, |l| l + 1),
                    };
                    [
                        (own_start, own_end),
                        (before, own_start),
                        (rule_line, usize::MAX),
                    ]
                };
                let place = |problem: Problem| place_within(problem, &spans());
                let task = file.tasks.get(&a.task).ok_or_else(|| {
                    error(
                        &format!("task: {}", a.task),
                        format!(
                            "rule {:?}: unknown task {:?} (define it under tasks:)",
                            spec.name, a.task
                        ),
                    )
                })?;
                let arch_list = match &a.arches {
                    OneOrMany::One(s) if s == "all" => arches.to_vec(),
                    OneOrMany::One(set) => file
                        .sets
                        .get(set)
                        .ok_or_else(|| {
                            in_rule(format!(
                                "rule {:?}: arches names unknown set {set:?}",
                                spec.name
                            ))
                        })?
                        .iter()
                        .map(|v| {
                            v.as_str()
                                .map(str::to_string)
                                .unwrap_or_else(|| v.to_string())
                        })
                        .collect(),
                    OneOrMany::Many(list) => list.clone(),
                };
                for arch in &arch_list {
                    if !arches.contains(arch) {
                        return Err(in_rule(format!(
                            "rule {:?}: arch {arch:?} is not one of this deployment's arches {arches:?}",
                            spec.name
                        )));
                    }
                }
                if a.priority > MAX_PRIORITY {
                    return Err(in_rule(format!(
                        "rule {:?}: priority {} is above the maximum {MAX_PRIORITY}",
                        spec.name, a.priority
                    )));
                }
                let for_each = compile_for_each(a.for_each.as_deref(), a.element_name.as_deref())
                    .map_err(place)?;
                let element_name = for_each.as_ref().map(|fe| fe.name.clone());
                let mut roots = EVENT_ROOTS.to_vec();
                if let Some(name) = &element_name {
                    roots.push(name);
                }
                let condition = match &a.condition {
                    Some(tree) => {
                        let context = CompileContext {
                            sets: &sets,
                            roots: &roots,
                        };
                        Some(context.compile(tree).map_err(place)?)
                    }
                    None => None,
                };
                let template = |text: &str, key: &str| {
                    Template::parse(text, &roots)
                        .map_err(|e| place(Problem::new(e, &[text, &format!("{key}:")])))
                };
                let args = a
                    .args
                    .iter()
                    .map(|(k, v)| Ok((k.clone(), template(v, k)?)))
                    .collect::<Result<Vec<_>, RulesError>>()?;
                let vm = match &a.vm {
                    Some(vm) => Some(
                        VmTemplates::compile(vm, a.environment, |text, key| {
                            Template::parse(text, &roots)
                                .map_err(|e| Problem::new(e, &[text, &format!("{key}:")]))
                        })
                        .map_err(place)?,
                    ),
                    None => None,
                };
                actions.push(Action {
                    task: TaskRef {
                        name: a.task.clone(),
                        repo: resolve_repo(&task.repo, task_base_url),
                        git_ref: task.git_ref.clone(),
                    },
                    for_each,
                    condition,
                    item: template(&a.item, "item")?,
                    item_type: a.item_type.clone(),
                    arches: arch_list,
                    args,
                    priority: a.priority,
                    environment: a.environment,
                    destructive: a.destructive,
                    vm,
                });
            }
            rules.push(Rule {
                name: spec.name.clone(),
                topics,
                match_count: spec.when.equals.len(),
                conditions,
                actions,
            });
        }
        let (requirements, index_paths) = index_requirements(&rules);
        Ok(Engine {
            rules,
            by_topic: Default::default(),
            requirements,
            index_paths,
        })
    }

    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }

    /// The plan for a topic: which rules its events can fire.
    fn candidates(&self, topic: &str) -> Arc<Plan> {
        let mut cache = self.by_topic.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(found) = cache.get(topic) {
            return found.clone();
        }
        let segments: Vec<&str> = topic.split('.').collect();
        let mut plan = Plan::default();
        let mut groups: BTreeMap<usize, HashMap<String, Vec<usize>>> = BTreeMap::new();
        for (i, rule) in self.rules.iter().enumerate() {
            if !rule.topics.iter().any(|t| t.matches_segments(&segments)) {
                continue;
            }
            rule.add_needs(&mut plan.needs);
            match &self.requirements[i] {
                Some((slot, keys)) => {
                    let group = groups.entry(*slot).or_default();
                    for key in keys {
                        group.entry(key.clone()).or_default().push(i);
                    }
                }
                None => plan.unindexed.push(i),
            }
        }
        plan.indexed = groups.into_iter().collect();
        plan.needs.finish();
        let plan = Arc::new(plan);
        if cache.len() >= TOPIC_CACHE_LIMIT {
            cache.clear();
        }
        cache.insert(topic.to_string(), plan.clone());
        plan
    }

    /// Every job the event asks for. Job ids are derived, so evaluating the same event twice gives
    /// the same jobs.
    pub fn evaluate(&self, event: &Event) -> Evaluation {
        let plan = self.candidates(&event.topic);
        self.evaluate_plan(event, &plan)
    }

    fn evaluate_plan(&self, event: &Event, plan: &Plan) -> Evaluation {
        with_scope(event, |scope| {
            let mut selected = plan.unindexed.clone();
            for (slot, by_key) in &plan.indexed {
                let values = self.index_paths[*slot].values(scope);
                if let Some(rules) = values
                    .first()
                    .and_then(|v| condition::index_key(v))
                    .and_then(|key| by_key.get(&key))
                {
                    selected.extend_from_slice(rules);
                }
            }
            if !plan.indexed.is_empty() {
                // File order, as without the index; a rule listed under several keys once.
                selected.sort_unstable();
                selected.dedup();
            }
            let mut out = Evaluation::default();
            for i in selected {
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
        };
        let evaluation = self.evaluate_plan(&event, &plan);
        Ok(Decision {
            event_id: event.id,
            topic: event.topic,
            evaluation,
        })
    }
}

/// Pick, for each rule, one exact requirement to index it by: among its top-level conditions (its
/// `match:` entries and the direct parts of a `where: all:`), the one on the path that tells the
/// most rules apart. Rules without one are checked one by one.
fn index_requirements(rules: &[Rule]) -> (Vec<Option<Requirement>>, Vec<Path>) {
    let top_level = |rule: &Rule| -> Vec<(Path, Vec<String>)> {
        let mut found = Vec::new();
        for c in &rule.conditions {
            let parts: Vec<&Condition> = match c {
                Condition::All(list) => list.iter().collect(),
                other => vec![other],
            };
            for part in parts {
                if let Some((path, keys)) = part.required_values() {
                    found.push((path.clone(), keys));
                }
            }
        }
        found
    };
    // How many distinct keys each path has across all rules: the more, the more selective.
    let mut distinct: HashMap<String, HashSet<String>> = HashMap::new();
    let per_rule: Vec<Vec<(Path, Vec<String>)>> = rules.iter().map(top_level).collect();
    for (path, keys) in per_rule.iter().flatten() {
        distinct
            .entry(path.text().to_string())
            .or_default()
            .extend(keys.iter().cloned());
    }
    let mut paths: Vec<Path> = Vec::new();
    let requirements = per_rule
        .into_iter()
        .map(|candidates| {
            let (path, keys) = candidates.into_iter().max_by_key(|(path, keys)| {
                (distinct[path.text()].len(), usize::MAX - keys.len())
            })?;
            let slot = match paths.iter().position(|p| p.text() == path.text()) {
                Some(slot) => slot,
                None => {
                    paths.push(path);
                    paths.len() - 1
                }
            };
            Some((slot, keys))
        })
        .collect();
    (requirements, paths)
}

/// Call `f` with the scope paths are evaluated in for `event`. Only the two strings are copied;
/// the message body is borrowed, not cloned.
fn with_scope<R>(event: &Event, f: impl FnOnce(&Scope<'_>) -> R) -> R {
    let id = Value::String(event.id.clone());
    let topic = Value::String(event.topic.clone());
    f(&Scope {
        id: &id,
        topic: &topic,
        msg: &event.msg,
        element: None,
    })
}

impl Rule {
    /// Add the parts of the message body this rule reads (in its conditions, `for_each`,
    /// action conditions and templates) to `needs`.
    fn add_needs(&self, needs: &mut Needs) {
        let mut paths = Vec::new();
        for condition in &self.conditions {
            condition.paths(&mut paths);
        }
        for path in paths {
            add_body_path(needs, path, None);
        }
        for action in &self.actions {
            let for_each = action.for_each.as_ref();
            if let Some(for_each) = for_each {
                add_body_path(needs, &for_each.path, None);
            }
            let mut paths: Vec<&Path> = action.item.paths().collect();
            if let Some(condition) = &action.condition {
                condition.paths(&mut paths);
            }
            for (_, template) in &action.args {
                paths.extend(template.paths());
            }
            if let Some(vm) = &action.vm {
                for template in vm.templates() {
                    paths.extend(template.paths());
                }
            }
            for path in paths {
                add_body_path(needs, path, for_each);
            }
        }
    }

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

/// Add a path to `needs` when it reads the message body: one under `msg`, or one under a
/// `for_each` element name, which reads below the elements of its `for_each` path.
fn add_body_path(needs: &mut Needs, path: &Path, for_each: Option<&ForEach>) {
    match for_each {
        Some(for_each) if path.root() == for_each.name && for_each.path.root() == "msg" => {
            let mut segments = for_each.path.segments().to_vec();
            segments.extend_from_slice(path.segments());
            needs.add(&segments);
        }
        _ if path.root() == "msg" => needs.add(path.segments()),
        // `topic` and `id` are not in the body (nor the elements of a `for_each` over them).
        _ => {}
    }
}

/// Check `for_each:` / `as:` at load.
fn compile_for_each(
    path_text: Option<&str>,
    name: Option<&str>,
) -> Result<Option<ForEach>, Problem> {
    let Some(path_text) = path_text else {
        return match name {
            Some(name) => Err(Problem::new(
                format!("as: {name} needs a for_each: to name the elements of"),
                &[&format!("as: {name}"), "as:"],
            )),
            None => Ok(None),
        };
    };
    let specific = format!("for_each: {}", path_text.trim());
    let at_path = [specific.as_str(), path_text.trim(), "for_each:"];
    let path = Path::parse(path_text).map_err(|e| Problem::new(e, &at_path))?;
    path.check_root(&EVENT_ROOTS)
        .map_err(|e| Problem::new(e, &at_path))?;
    if !path.has_wildcard() {
        return Err(Problem::new(
            format!(
                "for_each: {} must contain [*] to say which list to go through, \
                 like msg.update.builds[*]",
                path.text()
            ),
            &at_path,
        ));
    }
    let name = name.unwrap_or(DEFAULT_ELEMENT_NAME).trim();
    let simple = Path::parse(name).is_ok_and(|p| p.text() == p.root());
    if !simple || EVENT_ROOTS.contains(&name) {
        return Err(Problem::new(
            format!(
                "as: {name:?} must be a plain name (letters, digits, _ or -) \
                 other than {}",
                EVENT_ROOTS.join(", ")
            ),
            &[&format!("as: {name}"), "as:"],
        ));
    }
    Ok(Some(ForEach {
        path,
        name: name.to_string(),
    }))
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
        let now = Utc::now();
        Ok(self
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
                created_at: now,
            })
            .collect())
    }
}

fn resolve_repo(repo: &str, base: Option<&str>) -> String {
    if repo.contains("://") || repo.starts_with('/') {
        return repo.to_string();
    }
    match base {
        Some(base) => format!("{}/{}", base.trim_end_matches('/'), repo),
        None => repo.to_string(),
    }
}

/// A topic pattern: segments separated by dots; `*` inside a segment matches any characters of
/// that segment, a segment `#` matches any number of segments (as in AMQP).
#[derive(Debug, Clone)]
struct TopicPattern {
    segments: Vec<String>,
}

impl TopicPattern {
    fn new(pattern: &str) -> Self {
        TopicPattern {
            segments: pattern.split('.').map(str::to_string).collect(),
        }
    }

    /// The pattern as written.
    fn text(&self) -> String {
        self.segments.join(".")
    }

    fn matches(&self, topic: &str) -> bool {
        let topic: Vec<&str> = topic.split('.').collect();
        self.matches_segments(&topic)
    }

    /// Match a topic already split at its dots.
    fn matches_segments(&self, topic: &[&str]) -> bool {
        match_segments(&self.segments, topic)
    }
}

fn match_segments(pattern: &[String], topic: &[&str]) -> bool {
    match pattern.split_first() {
        None => topic.is_empty(),
        Some((first, rest)) if first == "#" => {
            (0..=topic.len()).any(|skip| match_segments(rest, &topic[skip..]))
        }
        Some((first, rest)) => match topic.split_first() {
            Some((t, trest)) => glob(first, t) && match_segments(rest, trest),
            None => false,
        },
    }
}

/// `*` matches any run of characters.
fn glob(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || !text[first.len()..].ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for part in &parts[1..parts.len() - 1] {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: &str = r#"
sets:
  primary: [x86_64, aarch64]
tasks:
  example: { repo: example, ref: main }
rules:
  - name: example-on-koji-build
    when:
      topic: org.fedoraproject.*.buildsys.build.state.change
      match: { msg.new: 1 }
    do:
      - task: example
        item: "{{ msg.name }}-{{ msg.version }}-{{ msg.release }}"
        item_type: koji_build
        arches: primary
"#;

    fn arches() -> Vec<String> {
        vec!["x86_64".into(), "aarch64".into(), "noarch".into()]
    }

    fn engine(text: &str) -> Result<Engine, RulesError> {
        let file = RulesFile::parse(text, "rules.yaml")?;
        Engine::compile(
            &file,
            text,
            "rules.yaml",
            &arches(),
            Some("file:///srv/tasks"),
        )
    }

    fn koji_event(new: u64) -> Event {
        taskbot::testing::event(
            "2015-6395fb7a",
            "org.fedoraproject.prod.buildsys.build.state.change",
            serde_json::json!({"name": "ansible", "version": "1.8.3", "release": "1.el7",
                               "new": new, "old": 0, "instance": "primary"}),
        )
    }

    #[test]
    fn koji_build_complete_gives_one_job_per_arch() {
        let e = engine(RULES).unwrap();
        let out = e.evaluate(&koji_event(1));
        assert!(out.skipped.is_empty());
        let arches: Vec<_> = out.jobs.iter().map(|j| j.arch.as_str()).collect();
        assert_eq!(arches, ["x86_64", "aarch64"]);
        let job = &out.jobs[0];
        assert_eq!(job.item, "ansible-1.8.3-1.el7");
        assert_eq!(job.item_type, "koji_build");
        assert_eq!(job.task.repo, "file:///srv/tasks/example");
        assert_eq!(job.rule, "example-on-koji-build");
        assert_ne!(out.jobs[0].job_id, out.jobs[1].job_id);
        // Same event again: same ids.
        let again = e.evaluate(&koji_event(1));
        assert_eq!(again.jobs[0].job_id, job.job_id);
    }

    #[test]
    fn non_matching_state_or_topic_gives_nothing() {
        let e = engine(RULES).unwrap();
        assert!(e.evaluate(&koji_event(0)).jobs.is_empty());
        let mut other = koji_event(1);
        other.topic = "org.fedoraproject.prod.buildsys.tag".into();
        assert!(e.evaluate(&other).jobs.is_empty());
    }

    #[test]
    fn missing_template_field_skips_the_rule_with_a_reason() {
        let e = engine(RULES).unwrap();
        let mut ev = koji_event(1);
        ev.msg.as_object_mut().unwrap().remove("release");
        let out = e.evaluate(&ev);
        assert!(out.jobs.is_empty());
        assert_eq!(
            out.skipped,
            vec![(
                "example-on-koji-build".to_string(),
                "field msg.release is missing from the message".to_string()
            )]
        );
    }

    const VM_RULES: &str = r#"
tasks:
  install: { repo: install }
  smoke: { repo: smoke }
rules:
  - name: install-on-iso
    when: { topic: taskbot.task.iso.built }
    do:
      - task: install
        item: "{{ msg.item }}"
        item_type: iso
        arches: [x86_64]
        environment: vm
        vm:
          blank_disk_mb: 512
          iso: { url: "{{ msg.iso.url }}", sha256: "{{ msg.iso.sha256 }}" }
  - name: smoke-on-compose
    when: { topic: taskbot.compose.finished }
    do:
      - task: smoke
        item: "{{ msg.compose }}"
        item_type: compose
        arches: [x86_64]
        environment: vm
        vm:
          image: { distro: fedora, release: "{{ msg.release }}", flavour: cloud }
"#;

    fn event_bytes(topic: &str, msg: serde_json::Value) -> Vec<u8> {
        taskbot::testing::event("vm-1", topic, msg).to_json()
    }

    /// Through `evaluate_message`, which parses only the fields the rules need: the fields
    /// only `vm:` uses must be among them.
    #[test]
    fn vm_requests_are_rendered_from_the_message() {
        let e = engine(VM_RULES).unwrap();
        let sum = "ab".repeat(32);
        let body = event_bytes(
            "taskbot.task.iso.built",
            serde_json::json!({"item": "anaconda-40.1-1.fc40", "other": [1, 2],
                               "iso": {"url": "http://a/x.iso", "sha256": sum}}),
        );
        let jobs = e.evaluate_message(&body).unwrap().evaluation.jobs;
        assert_eq!(jobs.len(), 1);
        assert_eq!(jobs[0].environment, Environment::Vm);
        assert_eq!(
            jobs[0].vm,
            Some(VmRequest {
                image: ImageQuery::default(),
                blank_disk_mb: Some(512),
                iso: Some(RemoteFile {
                    url: "http://a/x.iso".into(),
                    sha256: sum.clone()
                }),
            })
        );
        let body = event_bytes(
            "taskbot.compose.finished",
            serde_json::json!({"compose": "Fedora-41-20261127.0", "release": "41"}),
        );
        let jobs = e.evaluate_message(&body).unwrap().evaluation.jobs;
        let image = &jobs[0].vm.as_ref().unwrap().image;
        assert_eq!(
            (
                image.distro.as_deref(),
                image.release.as_deref(),
                image.flavour.as_deref()
            ),
            (Some("fedora"), Some("41"), Some("cloud"))
        );
        assert_eq!(
            (
                image.name.as_ref(),
                jobs[0].vm.as_ref().unwrap().iso.as_ref()
            ),
            (None, None)
        );
        // A message without the ISO's checksum: the rule is skipped, saying why.
        let body = event_bytes(
            "taskbot.task.iso.built",
            serde_json::json!({"item": "a", "iso": {"url": "http://a/x.iso"}}),
        );
        let out = e.evaluate_message(&body).unwrap().evaluation;
        assert!(out.jobs.is_empty());
        assert!(
            out.skipped[0].1.contains("msg.iso.sha256"),
            "{:?}",
            out.skipped
        );
    }

    #[test]
    fn inconsistent_vm_specs_are_refused_with_position() {
        for (from, to, message, line) in [
            (
                "        environment: vm\n        vm:\n          blank",
                "        vm:\n          blank",
                "vm: needs environment: vm",
                13,
            ),
            (
                "flavour: cloud",
                "flavor: cloud",
                "vm.image: unknown key \"flavor\"",
                26,
            ),
            (
                "          iso: { url",
                "          image: { name: x }\n          iso: { url",
                "either blank (blank_disk_mb) or of an image",
                15,
            ),
            (
                "          iso: { url: \"{{ msg.iso.url }}\", sha256: \"{{ msg.iso.sha256 }}\" }\n",
                "",
                "a blank VM needs an iso",
                15,
            ),
        ] {
            let text = VM_RULES.replace(from, to);
            assert_ne!(text, VM_RULES, "{from}");
            let err = engine(&text).unwrap_err();
            assert!(err.message.contains(message), "{err}");
            assert_eq!(err.line, line, "{err}");
        }
    }

    #[test]
    fn broken_files_are_refused_with_position() {
        let err = engine("rules:\n  - name: x\n    when: {topic: a}\n    do: [{task: t, item: i, item_type: k, arches: all, bogus: 1}]\n").unwrap_err();
        assert_eq!(err.file, "rules.yaml");
        assert_eq!(err.line, 4, "{err}");
        assert!(err.message.contains("unknown field `bogus`"), "{err}");

        let err = engine(&RULES.replace("task: example", "task: nope")).unwrap_err();
        assert!(err.message.contains("unknown task \"nope\""), "{err}");
        assert_eq!(err.line, 12, "{err}");

        let err = engine(&RULES.replace("arches: primary", "arches: [s390x]")).unwrap_err();
        assert!(err.message.contains("s390x"), "{err}");

        let err = engine(&RULES.replace("{{ msg.name }}", "{{ msg.name")).unwrap_err();
        assert!(err.message.contains("invalid field path"), "{err}");
        let err = engine(&RULES.replace("{{ msg.release }}", "{{ msg.release")).unwrap_err();
        assert!(err.message.contains("without"), "{err}");

        let err = engine("rules: [").unwrap_err();
        assert!(err.line >= 1, "{err}");
    }

    #[test]
    fn evaluate_message_agrees_with_evaluate_and_still_checks_every_message() {
        let e = engine(RULES).unwrap();
        let event = koji_event(1);
        let decision = e.evaluate_message(&event.to_json()).unwrap();
        assert_eq!(decision.event_id, event.id);
        let ids = |jobs: &[JobRequest]| jobs.iter().map(|j| j.job_id).collect::<Vec<_>>();
        assert_eq!(
            ids(&decision.evaluation.jobs),
            ids(&e.evaluate(&event).jobs)
        );
        assert_eq!(decision.evaluation.jobs.len(), 2);

        // No rule names this topic: nothing to do, but the message is still checked whole.
        let mut other = koji_event(1);
        other.topic = "org.fedoraproject.prod.pagure.issue.new".into();
        let decision = e.evaluate_message(&other.to_json()).unwrap();
        assert!(decision.evaluation.jobs.is_empty());
        let mut broken: serde_json::Value = serde_json::from_slice(&other.to_json()).unwrap();
        broken.as_object_mut().unwrap().remove("received_at");
        let err = e
            .evaluate_message(&serde_json::to_vec(&broken).unwrap())
            .unwrap_err();
        assert!(err.to_string().contains("received_at"), "{err}");
        assert!(matches!(
            e.evaluate_message(b"[1, 2]"),
            Err(DecodeError::Json(_))
        ));
        // The topic cache gives the same answer the second time.
        assert_eq!(
            ids(&e
                .evaluate_message(&event.to_json())
                .unwrap()
                .evaluation
                .jobs),
            ids(&e.evaluate(&event).jobs)
        );
    }

    #[test]
    fn the_index_never_loses_a_match_explain_finds() {
        let text = r#"
sets:
  names: [foo, bar]
  mixed: [foo, "1"]
tasks:
  t: { repo: t }
rules:
  - { name: by-name, when: { topic: "a.#", match: { msg.name: foo } }, do: [{ task: t, item: x, item_type: k, arches: [noarch] }] }
  - { name: by-flag, when: { topic: "a.#", match: { msg.flag: true } }, do: [{ task: t, item: x, item_type: k, arches: [noarch] }] }
  - { name: by-number, when: { topic: "a.#", match: { msg.name: 1 } }, do: [{ task: t, item: x, item_type: k, arches: [noarch] }] }
  - { name: by-numeric-string, when: { topic: "a.#", match: { msg.name: "1.0" } }, do: [{ task: t, item: x, item_type: k, arches: [noarch] }] }
  - name: by-set
    when: { topic: "a.#", where: { all: [ { path: msg.name, in: names }, { path: msg.n, gte: 2 } ] } }
    do: [{ task: t, item: x, item_type: k, arches: [noarch] }]
  - name: by-mixed-set
    when: { topic: "a.#", where: { path: msg.name, in: mixed } }
    do: [{ task: t, item: x, item_type: k, arches: [noarch] }]
  - { name: by-other-topic, when: { topic: b, match: { msg.name: foo } }, do: [{ task: t, item: x, item_type: k, arches: [noarch] }] }
"#;
        let e = engine(text).unwrap();
        let bodies = [
            serde_json::json!({"name": "foo", "n": 3}),
            serde_json::json!({"name": "bar", "n": 1, "flag": true}),
            serde_json::json!({"name": "1"}),
            serde_json::json!({"name": 1}),
            serde_json::json!({"name": 1.0, "flag": "true"}),
            serde_json::json!({"name": ["foo"]}),
            serde_json::json!({"other": "foo"}),
        ];
        let mut fired = Vec::new();
        for (i, msg) in bodies.into_iter().enumerate() {
            let mut ev = koji_event(1);
            ev.topic = "a.x".into();
            ev.msg = msg;
            let by_index: Vec<String> = e
                .evaluate(&ev)
                .jobs
                .iter()
                .map(|j| j.rule.clone())
                .collect();
            let one_by_one: Vec<String> = e
                .explain(&ev)
                .into_iter()
                .flat_map(|r| r.jobs.into_iter().map(|j| j.rule))
                .collect();
            assert_eq!(by_index, one_by_one, "message {i}");
            fired.push(by_index);
        }
        assert_eq!(fired[0], ["by-name", "by-set", "by-mixed-set"]);
        assert_eq!(fired[1], ["by-flag"]);
        // Strings compare as strings: "1" is not "1.0", but each equals the number 1.
        assert_eq!(fired[2], ["by-number", "by-mixed-set"]);
        assert_eq!(fired[3], ["by-number", "by-numeric-string", "by-mixed-set"]);
        assert!(fired[5].is_empty() && fired[6].is_empty());
    }

    #[test]
    fn topic_patterns() {
        let p = TopicPattern::new("org.fedoraproject.*.buildsys.#");
        assert!(p.matches("org.fedoraproject.prod.buildsys.build.state.change"));
        assert!(p.matches("org.fedoraproject.stg.buildsys"));
        assert!(!p.matches("org.fedoraproject.prod.bodhi.update"));
        assert!(TopicPattern::new("org.*.prod.bodhi.update.request.*")
            .matches("org.fedoraproject.prod.bodhi.update.request.testing"));
        assert!(TopicPattern::new("*.fedoraproject.prod.x").matches("org.fedoraproject.prod.x"));
        assert!(!TopicPattern::new("org.fedoraproject.*.x").matches("org.fedoraproject.a.b.x"));
        assert!(glob("stg*", "stg2") && glob("*-rc", "f40-rc") && !glob("a*b", "ac"));
    }

    #[test]
    fn numbers_compare_by_value() {
        assert!(loosely_equal(
            &serde_json::json!(1),
            &serde_json::json!(1.0)
        ));
        assert!(loosely_equal(
            &serde_json::json!("1"),
            &serde_json::json!(1)
        ));
        assert!(!loosely_equal(&serde_json::json!(2), &serde_json::json!(1)));
    }
}
