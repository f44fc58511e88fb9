//! Validating and compiling a parsed rules file into an [`Engine`]: names checked, tasks and sets
//! resolved, paths split, regexes compiled, sets hashed, templates parsed, so that evaluating an
//! event never parses anything. Each problem is refused with its position ([`Locator`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use taskbot::messages::TaskRef;
use taskbot::topology::MAX_PRIORITY;

use super::condition::{CompileContext, Condition, Problem, ValueSet};
use super::index::Index;
use super::locator::{Locator, RuleLocator};
use super::path::{Path, EVENT_ROOTS};
use super::template::Template;
use super::topic::TopicPattern;
use super::vm::VmTemplates;
use super::{Action, Engine, ForEach, Rule, DEFAULT_ELEMENT_NAME};
use crate::rules_file::{ActionSpec, OneOrMany, RuleSpec, RulesError, RulesFile};

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
        let compiler = Compiler {
            file,
            // Hashed once, shared by every `in:` / `not_in:` that names them.
            sets: file
                .sets
                .iter()
                .map(|(name, values)| (name.clone(), Arc::new(ValueSet::named(name, values))))
                .collect(),
            arches,
            task_base_url,
            locator: Locator::new(file_name, text),
        };
        let mut names = BTreeSet::new();
        let mut rules = Vec::new();
        for spec in &file.rules {
            let at = compiler.locator.rule(&spec.name, spec.actions.len());
            if !names.insert(spec.name.as_str()) {
                return Err(at.error(format!("duplicate rule name {:?}", spec.name)));
            }
            rules.push(compiler.rule(spec, &at)?);
        }
        let index = Index::new(&rules);
        Ok(Engine { rules, index })
    }

    /// Parse (within `budget`) and compile the text of a rules file named `file_name` (in error
    /// messages).
    pub fn from_text(
        text: &str,
        file_name: &str,
        arches: &[String],
        task_base_url: Option<&str>,
        budget: &taskbot::yaml_budget::YamlBudget,
    ) -> Result<Engine, RulesError> {
        let file = RulesFile::parse_within(text, file_name, budget)?;
        Engine::compile(&file, text, file_name, arches, task_base_url)
    }
}

/// What compiling a rule needs from the rest of the file and from the deployment.
struct Compiler<'a> {
    file: &'a RulesFile,
    sets: BTreeMap<String, Arc<ValueSet>>,
    arches: &'a [String],
    task_base_url: Option<&'a str>,
    locator: Locator<'a>,
}

impl Compiler<'_> {
    fn rule(&self, spec: &RuleSpec, at: &RuleLocator<'_>) -> Result<Rule, RulesError> {
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
                    Path::parse(p).map_err(|e| at.error(e))?,
                    v.clone(),
                ))
            })
            .collect::<Result<Vec<_>, RulesError>>()?;
        if let Some(tree) = &spec.when.condition {
            let context = CompileContext {
                sets: &self.sets,
                roots: &EVENT_ROOTS,
            };
            conditions.push(context.compile(tree).map_err(|p| at.place(p))?);
        }
        let actions = spec
            .actions
            .iter()
            .enumerate()
            .map(|(index, action)| self.action(&spec.name, action, at, index))
            .collect::<Result<Vec<_>, RulesError>>()?;
        Ok(Rule {
            name: spec.name.clone(),
            topics,
            match_count: spec.when.equals.len(),
            conditions,
            actions,
        })
    }

    /// Action number `index` of the rule `rule`.
    fn action(
        &self,
        rule: &str,
        spec: &ActionSpec,
        at: &RuleLocator<'_>,
        index: usize,
    ) -> Result<Action, RulesError> {
        let place = |problem: Problem| at.place_in_action(index, problem);
        let task = self.file.tasks.get(&spec.task).ok_or_else(|| {
            self.locator.first(
                &format!("task: {}", spec.task),
                format!(
                    "rule {rule:?}: unknown task {:?} (define it under tasks:)",
                    spec.task
                ),
            )
        })?;
        let arches = self.arches(rule, &spec.arches, at)?;
        if spec.priority > MAX_PRIORITY {
            return Err(at.error(format!(
                "rule {rule:?}: priority {} is above the maximum {MAX_PRIORITY}",
                spec.priority
            )));
        }
        let for_each = compile_for_each(spec.for_each.as_deref(), spec.element_name.as_deref())
            .map_err(place)?;
        let mut roots = EVENT_ROOTS.to_vec();
        if let Some(for_each) = &for_each {
            roots.push(&for_each.name);
        }
        let condition = match &spec.condition {
            Some(tree) => {
                let context = CompileContext {
                    sets: &self.sets,
                    roots: &roots,
                };
                Some(context.compile(tree).map_err(place)?)
            }
            None => None,
        };
        let parse = |text: &str, key: &str| template(text, key, &roots);
        let args = spec
            .args
            .iter()
            .map(|(k, v)| Ok((k.clone(), parse(v, k).map_err(place)?)))
            .collect::<Result<Vec<_>, RulesError>>()?;
        let vm = match &spec.vm {
            Some(vm) => Some(VmTemplates::compile(vm, spec.environment, parse).map_err(place)?),
            None => None,
        };
        let scenario = match &spec.scenario {
            Some(text) => Some(parse(text, "scenario").map_err(place)?),
            None => None,
        };
        Ok(Action {
            task: TaskRef {
                name: spec.task.clone(),
                repo: resolve_repo(&task.repo, self.task_base_url),
                git_ref: task.git_ref.clone(),
            },
            item: parse(&spec.item, "item").map_err(place)?,
            for_each,
            condition,
            item_type: spec.item_type.clone(),
            arches,
            args,
            priority: spec.priority,
            environment: spec.environment,
            destructive: spec.destructive,
            vm,
            testcases: testcases(rule, &spec.testcases, at)?,
            scenario,
        })
    }

    /// An action's `arches:` (`all`, the name of a set, or a list), checked against the
    /// deployment's arches. `all` means the real arches only: `noarch` is a build's label for
    /// arch-independent packages, not a machine, and a job that must run "everywhere" (a kernel
    /// test) means every machine arch.
    fn arches(
        &self,
        rule: &str,
        written: &OneOrMany,
        at: &RuleLocator<'_>,
    ) -> Result<Vec<String>, RulesError> {
        let arches = match written {
            OneOrMany::One(s) if s == "all" => self
                .arches
                .iter()
                .filter(|arch| arch.as_str() != "noarch")
                .cloned()
                .collect(),
            OneOrMany::One(set) => self
                .file
                .sets
                .get(set)
                .ok_or_else(|| {
                    at.error(format!("rule {rule:?}: arches names unknown set {set:?}"))
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
        if let Some(arch) = arches.iter().find(|a| !self.arches.contains(a)) {
            return Err(at.error(format!(
                "rule {rule:?}: arch {arch:?} is not one of this deployment's arches {:?}",
                self.arches
            )));
        }
        Ok(arches)
    }
}

/// Parse one of an action's templates, with what to look for to place its errors: the
/// template's text, then its key.
fn template(text: &str, key: &str, roots: &[&str]) -> Result<Template, Problem> {
    Template::parse(text, roots).map_err(|e| Problem::new(e, &[text, &format!("{key}:")]))
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

/// A task's repository: a URL or an absolute path as written, anything else relative to
/// `rules.task_base_url`.
fn resolve_repo(repo: &str, base: Option<&str>) -> String {
    if repo.contains("://") || repo.starts_with('/') {
        return repo.to_string();
    }
    match base {
        Some(base) => format!("{}/{}", base.trim_end_matches('/'), repo),
        None => repo.to_string(),
    }
}

/// An action's `testcases:`, checked: names ResultsDB accepts (non-empty, no surrounding blanks),
/// each once.
fn testcases(
    rule: &str,
    names: &[String],
    at: &RuleLocator<'_>,
) -> Result<Vec<String>, RulesError> {
    let mut seen = std::collections::BTreeSet::new();
    for name in names {
        if name.trim().is_empty() || name.trim() != name {
            return Err(at.error(format!(
                "rule {rule:?}: testcases: {name:?} is not a testcase name (empty or with \
                 surrounding blanks)"
            )));
        }
        if !seen.insert(name) {
            return Err(at.error(format!(
                "rule {rule:?}: testcases: {name:?} is listed twice"
            )));
        }
    }
    Ok(names.to_vec())
}
