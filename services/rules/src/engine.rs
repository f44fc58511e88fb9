//! Compiled rules and their evaluation: an event in, job requests out. Pure: no I/O, so it is
//! tested without a broker and can be benchmarked on its own.

use std::collections::{BTreeMap, BTreeSet};

use chrono::Utc;
use serde_json::Value;
use taskbot::messages::{Environment, Event, JobRequest, TaskRef};
use taskbot::topology::MAX_PRIORITY;

use crate::rules_file::{locate, RulesError, RulesFile};

/// Rules ready to evaluate.
#[derive(Debug, Clone)]
pub struct Engine {
    rules: Vec<Rule>,
}

#[derive(Debug, Clone)]
struct Rule {
    name: String,
    topics: Vec<TopicPattern>,
    equals: Vec<(Path, Value)>,
    actions: Vec<Action>,
}

#[derive(Debug, Clone)]
struct Action {
    task: TaskRef,
    item: Template,
    item_type: String,
    arches: Vec<String>,
    args: Vec<(String, Template)>,
    priority: u8,
    environment: Environment,
    destructive: bool,
}

/// What one event produced, and why rules that matched produced nothing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Evaluation {
    pub jobs: Vec<JobRequest>,
    /// (rule, reason) for rules whose conditions matched but which could not be applied to this
    /// message (a template field missing): the rule is skipped, the message is not lost.
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
            let topics = spec
                .when
                .topic
                .to_vec()
                .iter()
                .map(|t| TopicPattern::new(t))
                .collect();
            let equals = spec
                .when
                .equals
                .iter()
                .map(|(p, v)| Ok((Path::parse(p).map_err(&in_rule)?, v.clone())))
                .collect::<Result<Vec<_>, RulesError>>()?;
            let mut actions = Vec::new();
            for a in &spec.actions {
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
                    crate::rules_file::OneOrMany::One(s) if s == "all" => arches.to_vec(),
                    crate::rules_file::OneOrMany::One(set) => file
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
                    crate::rules_file::OneOrMany::Many(list) => list.clone(),
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
                let args = a
                    .args
                    .iter()
                    .map(|(k, v)| Ok((k.clone(), Template::parse(v).map_err(&in_rule)?)))
                    .collect::<Result<Vec<_>, RulesError>>()?;
                actions.push(Action {
                    task: TaskRef {
                        name: a.task.clone(),
                        repo: resolve_repo(&task.repo, task_base_url),
                        git_ref: task.git_ref.clone(),
                    },
                    item: Template::parse(&a.item).map_err(&in_rule)?,
                    item_type: a.item_type.clone(),
                    arches: arch_list,
                    args,
                    priority: a.priority,
                    environment: a.environment,
                    destructive: a.destructive,
                });
            }
            rules.push(Rule {
                name: spec.name.clone(),
                topics,
                equals,
                actions,
            });
        }
        Ok(Engine { rules })
    }

    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }

    /// Every job the event asks for. Job ids are derived, so evaluating the same event twice gives
    /// the same jobs.
    pub fn evaluate(&self, event: &Event) -> Evaluation {
        let context = serde_json::json!({
            "id": event.id,
            "topic": event.topic,
            "msg": event.msg,
        });
        let mut out = Evaluation::default();
        for rule in &self.rules {
            if !rule.topics.iter().any(|t| t.matches(&event.topic)) {
                continue;
            }
            if !rule.equals.iter().all(|(path, want)| {
                path.lookup(&context)
                    .is_some_and(|v| loosely_equal(v, want))
            }) {
                continue;
            }
            for action in &rule.actions {
                match expand(rule, action, event, &context) {
                    Ok(jobs) => out.jobs.extend(jobs),
                    Err(reason) => out.skipped.push((rule.name.clone(), reason)),
                }
            }
        }
        out
    }
}

fn expand(
    rule: &Rule,
    action: &Action,
    event: &Event,
    context: &Value,
) -> Result<Vec<JobRequest>, String> {
    let item = action.item.render(context)?;
    let mut args = BTreeMap::new();
    for (k, t) in &action.args {
        args.insert(k.clone(), t.render(context)?);
    }
    let now = Utc::now();
    Ok(action
        .arches
        .iter()
        .map(|arch| JobRequest {
            job_id: JobRequest::derive_id(&event.id, &rule.name, &action.task, &item, arch, &args),
            event_id: event.id.clone(),
            event_topic: event.topic.clone(),
            rule: rule.name.clone(),
            task: action.task.clone(),
            item: item.clone(),
            item_type: action.item_type.clone(),
            arch: arch.clone(),
            args: args.clone(),
            priority: action.priority,
            environment: action.environment,
            destructive: action.destructive,
            created_at: now,
        })
        .collect())
}

/// YAML `1` and JSON `1.0`, or `"1"` and `1`, should not make a rule silently never fire.
fn loosely_equal(actual: &Value, want: &Value) -> bool {
    match (actual, want) {
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        (Value::String(a), Value::Number(b)) | (Value::Number(b), Value::String(a)) => {
            a.parse::<f64>().ok() == b.as_f64()
        }
        _ => actual == want,
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

    fn matches(&self, topic: &str) -> bool {
        let topic: Vec<&str> = topic.split('.').collect();
        match_segments(&self.segments, &topic)
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

/// A path into the event: `msg.update.builds.0.nvr`.
#[derive(Debug, Clone, PartialEq)]
struct Path(Vec<String>);

impl Path {
    fn parse(text: &str) -> Result<Path, String> {
        let parts: Vec<String> = text.trim().split('.').map(str::to_string).collect();
        let valid = |p: &String| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        };
        if !parts.iter().all(valid) {
            return Err(format!(
                "invalid field path {text:?} (expected names separated by dots, like msg.name)"
            ));
        }
        Ok(Path(parts))
    }

    fn lookup<'a>(&self, root: &'a Value) -> Option<&'a Value> {
        self.0.iter().try_fold(root, |v, key| match v {
            Value::Object(map) => map.get(key),
            Value::Array(list) => key.parse::<usize>().ok().and_then(|i| list.get(i)),
            _ => None,
        })
    }
}

/// Text with `{{ path }}` placeholders.
#[derive(Debug, Clone)]
struct Template(Vec<Piece>);

#[derive(Debug, Clone)]
enum Piece {
    Text(String),
    Field(Path, String),
}

impl Template {
    fn parse(text: &str) -> Result<Template, String> {
        let mut pieces = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find("{{") {
            if start > 0 {
                pieces.push(Piece::Text(rest[..start].to_string()));
            }
            let after = &rest[start + 2..];
            let end = after
                .find("}}")
                .ok_or_else(|| format!("template {text:?}: '{{{{' without '}}}}'"))?;
            let inner = after[..end].trim();
            let path = Path::parse(inner).map_err(|e| format!("template {text:?}: {e}"))?;
            pieces.push(Piece::Field(path, inner.to_string()));
            rest = &after[end + 2..];
        }
        if !rest.is_empty() {
            pieces.push(Piece::Text(rest.to_string()));
        }
        Ok(Template(pieces))
    }

    fn render(&self, context: &Value) -> Result<String, String> {
        let mut out = String::new();
        for piece in &self.0 {
            match piece {
                Piece::Text(t) => out.push_str(t),
                Piece::Field(path, name) => match path.lookup(context) {
                    Some(Value::String(s)) => out.push_str(s),
                    Some(Value::Number(n)) => out.push_str(&n.to_string()),
                    Some(Value::Bool(b)) => out.push_str(&b.to_string()),
                    Some(Value::Null) | None => {
                        return Err(format!("field {name} is missing from the message"))
                    }
                    Some(_) => return Err(format!("field {name} is not a single value")),
                },
            }
        }
        Ok(out)
    }
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
        Event {
            id: "2015-6395fb7a".into(),
            topic: "org.fedoraproject.prod.buildsys.build.state.change".into(),
            source: "test".into(),
            sent_at: None,
            received_at: Utc::now(),
            username: None,
            msg: serde_json::json!({"name": "ansible", "version": "1.8.3", "release": "1.el7",
                                     "new": new, "old": 0, "instance": "primary"}),
        }
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
