//! Finding the rules an event can fire without trying every rule: by topic (one hash lookup once a
//! topic has been seen) and, within a topic, by an exact requirement on the message (`msg.name`
//! is `kernel`), so that with a thousand per-package rules an event is checked against the few
//! rules for its package. Also what of the message body those rules read ([`Needs`]), the only
//! parts of it that are parsed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use super::condition::{self, Condition};
use super::needs::Needs;
use super::path::{Path, Scope};
use super::{Engine, ForEach, Rule};

/// Distinct topics remembered by [`Engine::candidates`] before the memory is cleared (a bound
/// against a producer inventing topics).
const TOPIC_CACHE_LIMIT: usize = 10_000;

/// The index of a set of rules.
#[derive(Debug, Clone)]
pub struct Index {
    /// Which rules a topic can fire, by topic. The bus carries a few hundred distinct topics, so
    /// after the first event of each, finding the candidate rules is one hash lookup instead of
    /// matching every pattern of every rule. Shared by clones (the rules are the same).
    by_topic: Arc<Mutex<HashMap<String, Arc<Plan>>>>,
    /// For each rule, an exact requirement on the message that can be looked up in a hash table
    /// (`msg.name` is `kernel`, or one of a set of names), when it has one.
    requirements: Vec<Option<Requirement>>,
    /// The paths requirements look at, by slot.
    paths: Vec<Path>,
}

/// A rule's indexed requirement: the slot of its path in `Index::paths`, and the keys (see
/// `condition::index_key`) one of which the message's value there must have.
type Requirement = (usize, Vec<String>);

/// The rules a topic can fire, split into the rules indexed by an exact requirement (grouped by
/// the path they look at) and the rest, which are checked one by one; and the parts of the
/// message body these rules read, the only parts of it that are parsed.
#[derive(Debug, Default)]
pub struct Plan {
    unindexed: Vec<usize>,
    indexed: Vec<(usize, HashMap<String, Vec<usize>>)>,
    pub needs: Needs,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.unindexed.is_empty() && self.indexed.is_empty()
    }
}

impl Index {
    pub fn new(rules: &[Rule]) -> Index {
        let (requirements, paths) = index_requirements(rules);
        Index {
            by_topic: Default::default(),
            requirements,
            paths,
        }
    }
}

impl Engine {
    /// The plan for a topic: which rules its events can fire.
    pub(super) fn candidates(&self, topic: &str) -> Arc<Plan> {
        let mut cache = self
            .index
            .by_topic
            .lock()
            .unwrap_or_else(|p| p.into_inner());
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
            match &self.index.requirements[i] {
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

    /// The rules of `plan` whose indexed requirement (if any) the message in `scope` meets, in
    /// file order: the ones whose conditions are then checked.
    pub(super) fn selected(&self, plan: &Plan, scope: &Scope<'_>) -> Vec<usize> {
        let mut selected = plan.unindexed.clone();
        for (slot, by_key) in &plan.indexed {
            let values = self.index.paths[*slot].values(scope);
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
        selected
    }
}

/// Pick, for each rule, one exact requirement to index it by: among its top-level conditions (its
/// `match:` entries and the direct parts of a `where: all:`), the one on the path that tells the
/// most rules apart. Rules without one are checked one by one.
fn index_requirements(rules: &[Rule]) -> (Vec<Option<Requirement>>, Vec<Path>) {
    // How many distinct keys each path has across all rules: the more, the more selective.
    let mut distinct: HashMap<String, HashSet<String>> = HashMap::new();
    let per_rule: Vec<Vec<(Path, Vec<String>)>> =
        rules.iter().map(top_level_requirements).collect();
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

/// The exact requirements among a rule's top-level conditions, as (path, keys).
fn top_level_requirements(rule: &Rule) -> Vec<(Path, Vec<String>)> {
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
