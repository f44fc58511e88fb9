//! Why each rule did or did not fire for an event: the dry run behind `taskbot rules test`.
//!
//! Users of the earlier trigger asked for dry runs because a rule that silently never fires is the
//! commonest rules bug. An explanation names the topic pattern that matched (or lists them all),
//! the first `match:` / `where:` condition that failed with the path, operator, expected and
//! actual value, and, for a rule that fires, the very jobs the service would publish.
//!
//! Decisions are never re-implemented here: a condition's failure is only described after
//! [`Condition::holds`] said it failed, and the jobs come from the same [`Rule::apply`] that
//! [`Engine::evaluate`] uses, so the dry run cannot disagree with the service.

use serde::Serialize;
use serde_json::Value;
use taskbot::messages::{Event, JobRequest};

use super::condition::{short_json, Condition, Test};
use super::path::{Path, Scope};
use super::{with_scope, Engine, Evaluation, Rule};

/// What one rule did with one event, and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RuleExplanation {
    pub rule: String,
    /// The topic matched and every `match:` / `where:` condition held: exactly when
    /// [`Engine::evaluate`] applies the rule's actions.
    pub matched: bool,
    /// One line for people: which pattern matched, or the first thing that did not hold.
    pub reason: String,
    /// The rule's `when.topic` patterns, as written.
    pub topic_patterns: Vec<String>,
    /// The first pattern that matched the event's topic; `None`: none did.
    pub matched_topic_pattern: Option<String>,
    /// The first `match:` / `where:` condition that did not hold (when the topic matched).
    pub failed_condition: Option<ConditionFailure>,
    /// The job requests the service would publish for this rule (empty when it did not match).
    pub jobs: Vec<JobRequest>,
    /// Why parts of a matching rule produced no job: a template field missing from the message,
    /// a `for_each` that addresses nothing (the service logs these as warnings).
    pub skipped: Vec<String>,
    /// Actions (or `for_each` elements) left out because their own `where:` did not hold. Not
    /// an error: that is what an action-level `where:` is for.
    pub filtered: Vec<ConditionFailure>,
}

/// A condition that did not hold, in the terms of the rules file.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConditionFailure {
    /// Where the condition is in the rule: `match`, `where`, `where.all[2]`,
    /// `where.any[0].all[1]`, `do[0].where (element 1 of msg.update.builds[*])`.
    pub location: String,
    /// The field path tested; `None` for `any:` (see `alternatives`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// `equals`, `in`, `not_in`, `regex`, `exists`, `gt`, `gte`, `lt`, `lte`, `not` or `any`.
    pub operator: String,
    /// The operator's operand (a set gives its values, `not` the negated condition as text).
    pub expected: Value,
    /// Every value the path addressed (several with `[*]`); empty when the field is missing.
    pub actual: Vec<Value>,
    /// One line for people: `msg.new: expected equals 1, found 0`.
    pub message: String,
    /// For `any:`: why each alternative failed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub alternatives: Vec<ConditionFailure>,
}

impl Engine {
    /// For every rule, in file order: whether it fires for `event` and why (or why not), with
    /// the jobs it produces. The jobs of all explanations, in order, are exactly the jobs of
    /// [`Engine::evaluate`] (up to `created_at`). Pure, like `evaluate`.
    pub fn explain(&self, event: &Event) -> Vec<RuleExplanation> {
        with_scope(event, |scope| {
            self.rules
                .iter()
                .map(|rule| rule.explain(event, scope))
                .collect()
        })
    }
}

impl Rule {
    fn explain(&self, event: &Event, scope: &Scope<'_>) -> RuleExplanation {
        let topic_patterns: Vec<String> = self.topics.iter().map(|t| t.text()).collect();
        let matched_topic_pattern = self
            .topics
            .iter()
            .find(|t| t.matches(&event.topic))
            .map(|t| t.text());
        let mut explanation = RuleExplanation {
            rule: self.name.clone(),
            matched: false,
            reason: String::new(),
            topic_patterns,
            matched_topic_pattern,
            failed_condition: None,
            jobs: Vec::new(),
            skipped: Vec::new(),
            filtered: Vec::new(),
        };
        let Some(pattern) = explanation.matched_topic_pattern.clone() else {
            explanation.reason = format!(
                "topic {} matches none of: {}",
                event.topic,
                explanation.topic_patterns.join(", ")
            );
            return explanation;
        };
        for (index, condition) in self.conditions.iter().enumerate() {
            let at = if index < self.match_count {
                "match"
            } else {
                "where"
            };
            if let Some(failure) = failure(condition, scope, at) {
                explanation.reason = format!(
                    "topic matched {pattern}, but {}: {}",
                    failure.location, failure.message
                );
                explanation.failed_condition = Some(failure);
                return explanation;
            }
        }
        explanation.matched = true;
        explanation.reason = match self.conditions.len() {
            0 => format!("topic matched {pattern}"),
            1 => format!("topic matched {pattern} and the condition held"),
            n => format!("topic matched {pattern} and all {n} conditions held"),
        };
        let mut out = Evaluation::default();
        self.apply(event, scope, &mut out, Some(&mut explanation.filtered));
        explanation.jobs = out.jobs;
        explanation.skipped = out.skipped.into_iter().map(|(_, reason)| reason).collect();
        explanation
    }
}

/// Why `condition` does not hold in `scope`, or `None` when it holds. Whether it holds is
/// decided by [`Condition::holds`] alone; this only describes.
fn failure(condition: &Condition, scope: &Scope<'_>, at: &str) -> Option<ConditionFailure> {
    if condition.holds(scope) {
        None
    } else {
        Some(failure_of(condition, scope, at))
    }
}

/// Describe a condition known not to hold.
pub(super) fn failure_of(condition: &Condition, scope: &Scope<'_>, at: &str) -> ConditionFailure {
    match condition {
        Condition::All(list) => list
            .iter()
            .enumerate()
            .find_map(|(i, c)| failure(c, scope, &format!("{at}.all[{i}]")))
            // Unreachable while `holds` is deterministic; a description must not panic anyway.
            .unwrap_or_else(|| ConditionFailure {
                location: at.to_string(),
                path: None,
                operator: "all".into(),
                expected: Value::Null,
                actual: Vec::new(),
                message: format!("{} did not hold", describe(condition)),
                alternatives: Vec::new(),
            }),
        Condition::Any(list) => any_failure(list, scope, at),
        Condition::Not(inner) => not_failure(inner, scope, at),
        Condition::Exists { path, want } => exists_failure(path, *want, scope, at),
        Condition::Field { path, tests } => field_failure(path, tests, scope, at),
    }
}

/// An `any:` none of whose alternatives held: why each did not.
fn any_failure(list: &[Condition], scope: &Scope<'_>, at: &str) -> ConditionFailure {
    let alternatives: Vec<ConditionFailure> = list
        .iter()
        .enumerate()
        .map(|(i, c)| failure_of(c, scope, &format!("{at}.any[{i}]")))
        .collect();
    let each: Vec<String> = alternatives
        .iter()
        .enumerate()
        .map(|(i, a)| format!("({}) {}", i + 1, a.message))
        .collect();
    ConditionFailure {
        location: at.to_string(),
        path: None,
        operator: "any".into(),
        expected: Value::Null,
        actual: Vec::new(),
        message: format!(
            "none of the {} alternatives of any: held: {}",
            alternatives.len(),
            each.join("; ")
        ),
        alternatives,
    }
}

/// A `not:` whose condition held, with the values it found when it tests one field.
fn not_failure(inner: &Condition, scope: &Scope<'_>, at: &str) -> ConditionFailure {
    let (path, actual) = match inner {
        Condition::Field { path, .. } | Condition::Exists { path, .. } => (
            Some(path.text().to_string()),
            path.values(scope).into_iter().cloned().collect(),
        ),
        _ => (None, Vec::new()),
    };
    let found = match &path {
        Some(_) => format!(" (found {})", found(&actual)),
        None => String::new(),
    };
    ConditionFailure {
        location: at.to_string(),
        path,
        operator: "not".into(),
        expected: Value::String(describe(inner)),
        message: format!("expected not ({}), but it held{found}", describe(inner)),
        actual,
        alternatives: Vec::new(),
    }
}

fn exists_failure(path: &Path, want: bool, scope: &Scope<'_>, at: &str) -> ConditionFailure {
    let actual: Vec<Value> = path.values(scope).into_iter().cloned().collect();
    ConditionFailure {
        location: at.to_string(),
        path: Some(path.text().to_string()),
        operator: "exists".into(),
        expected: Value::Bool(want),
        message: format!(
            "{}: expected exists: {want}, found {}",
            path.text(),
            found(&actual)
        ),
        actual,
        alternatives: Vec::new(),
    }
}

/// A field test no value passed, naming the operator the (first) value fails.
fn field_failure(path: &Path, tests: &[Test], scope: &Scope<'_>, at: &str) -> ConditionFailure {
    let actual: Vec<Value> = path.values(scope).into_iter().cloned().collect();
    let failing = actual
        .first()
        .and_then(|v| tests.iter().find(|t| !t.holds(v)))
        .or(tests.first());
    let wanted = tests
        .iter()
        .map(|t| t.describe())
        .collect::<Vec<_>>()
        .join(" and ");
    let message = if actual.len() > 1 {
        format!(
            "{}: no value passes {wanted} (found {})",
            path.text(),
            found(&actual)
        )
    } else {
        format!(
            "{}: expected {wanted}, found {}",
            path.text(),
            found(&actual)
        )
    };
    ConditionFailure {
        location: at.to_string(),
        path: Some(path.text().to_string()),
        operator: failing.map_or("", |t| t.name()).to_string(),
        expected: failing.map_or(Value::Null, |t| t.operand()),
        actual,
        message,
        alternatives: Vec::new(),
    }
}

/// `missing`, `0`, `"bash"`, or `["a", "b"]` for several values.
fn found(values: &[Value]) -> String {
    match values {
        [] => "missing".into(),
        [one] => short_json(one),
        several => format!(
            "[{}]",
            several
                .iter()
                .map(short_json)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// A condition as one line of text, close to how it is written in the rules file.
fn describe(condition: &Condition) -> String {
    let list = |name: &str, items: &[Condition]| {
        format!(
            "{name}: [{}]",
            items.iter().map(describe).collect::<Vec<_>>().join("; ")
        )
    };
    match condition {
        Condition::All(items) => list("all", items),
        Condition::Any(items) => list("any", items),
        Condition::Not(inner) => format!("not ({})", describe(inner)),
        Condition::Exists { path, want } => format!("{} exists: {want}", path.text()),
        Condition::Field { path, tests } => format!(
            "{} {}",
            path.text(),
            tests
                .iter()
                .map(|t| t.describe())
                .collect::<Vec<_>>()
                .join(" and ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use serde_json::json;

    use super::*;

    const RULES: &str = r#"
sets:
  build_arches: [x86_64, aarch64, noarch]
  critpath: [kernel, glibc, systemd]
tasks:
  rpmlint: { repo: rpmlint }
rules:
  - name: koji
    when:
      topic: [org.fedoraproject.*.buildsys.build.state.change, org.example.#]
      match: { msg.new: 1, msg.instance: primary }
    do:
      - task: rpmlint
        item: "{{ msg.name }}-{{ msg.version }}-{{ msg.release }}"
        item_type: koji_build
        arches: build_arches
        args: { owner: "{{ msg.owner }}" }
  - name: critpath
    when:
      topic: org.fedoraproject.*.buildsys.build.state.change
      where:
        all:
          - { path: msg.new, equals: 1 }
          - { path: msg.name, in: critpath }
    do:
      - task: rpmlint
        item: "{{ msg.name }}"
        item_type: koji_build
        arches: [noarch]
        priority: 5
  - name: update
    when:
      topic: org.fedoraproject.*.bodhi.update.request.testing
      where:
        all:
          - { path: msg.update.release.version, gte: 39 }
          - any:
              - { path: msg.update.critpath, equals: true }
              - { path: msg.update.builds.*.nvr, regex: '^(kernel|glibc)-' }
          - not: { path: msg.agent, in: [bodhi, autopush] }
          - { path: msg.update.alias, exists: true }
          - { path: msg.update.title, exists: false }
    do:
      - task: rpmlint
        for_each: msg.update.builds[*]
        as: build
        where: { not: { path: build.nvr, in: [skip-me-1-1] } }
        item: "{{ build.nvr }}"
        item_type: koji_build
        arches: [x86_64]
"#;

    fn engine() -> Engine {
        crate::engine::compile_for_tests(RULES).unwrap()
    }

    fn event(topic: &str, msg: Value) -> Event {
        taskbot::testing::event("2015-6395fb7a", topic, msg)
    }

    const KOJI: &str = "org.fedoraproject.prod.buildsys.build.state.change";
    const BODHI: &str = "org.fedoraproject.prod.bodhi.update.request.testing";

    fn koji(name: &str, new: u64) -> Event {
        event(
            KOJI,
            json!({"name": name, "version": "1.8.3", "release": "1.el7", "new": new,
                   "instance": "primary", "owner": "kevin"}),
        )
    }

    fn update(msg: Value) -> Event {
        event(BODHI, msg)
    }

    fn good_update() -> Value {
        json!({"agent": "alice", "update": {
            "alias": "FEDORA-2024-1", "release": {"version": "40"}, "critpath": false,
            "builds": [{"nvr": "kernel-6.1-1.fc40"}, {"nvr": "skip-me-1-1"}, {"x": 1}]}})
    }

    fn explain_one(e: &Event, rule: &str) -> RuleExplanation {
        engine()
            .explain(e)
            .into_iter()
            .find(|x| x.rule == rule)
            .unwrap()
    }

    /// `created_at` is the clock; everything else must be identical.
    fn without_time(mut jobs: Vec<JobRequest>) -> Vec<JobRequest> {
        let epoch = chrono::DateTime::<Utc>::UNIX_EPOCH;
        for job in &mut jobs {
            job.created_at = epoch;
        }
        jobs
    }

    #[test]
    fn explain_jobs_equal_evaluate_jobs() {
        let engine = engine();
        let events = [
            koji("kernel", 1),
            koji("ansible", 1),
            koji("kernel", 0),
            update(good_update()),
            update(json!({})),
            event("org.example.a.b", json!({"new": 1, "instance": "primary"})),
        ];
        let mut total = 0;
        for e in &events {
            let evaluation = engine.evaluate(e);
            let explanations = engine.explain(e);
            assert_eq!(explanations.len(), engine.rule_count());
            let jobs: Vec<JobRequest> = explanations.iter().flat_map(|x| x.jobs.clone()).collect();
            assert_eq!(
                without_time(jobs),
                without_time(evaluation.jobs.clone()),
                "{e:?}"
            );
            let skipped: Vec<(String, String)> = explanations
                .iter()
                .flat_map(|x| x.skipped.iter().map(|s| (x.rule.clone(), s.clone())))
                .collect();
            assert_eq!(skipped, evaluation.skipped, "{e:?}");
            total += evaluation.jobs.len();
        }
        // The comparison covered real jobs and skips: kernel 3 + 1, ansible 3, the update 1
        // (and a skipped element); org.example.a.b matches `koji` but lacks msg.name: skipped.
        assert_eq!(total, 8);
    }

    #[test]
    fn matching_rule_lists_its_jobs_and_the_pattern() {
        let x = explain_one(&koji("kernel", 1), "koji");
        assert!(x.matched);
        assert_eq!(
            x.matched_topic_pattern.as_deref(),
            Some("org.fedoraproject.*.buildsys.build.state.change")
        );
        assert_eq!(
            x.reason,
            "topic matched org.fedoraproject.*.buildsys.build.state.change and all 2 \
             conditions held"
        );
        let arches: Vec<&str> = x.jobs.iter().map(|j| j.arch.as_str()).collect();
        assert_eq!(arches, ["x86_64", "aarch64", "noarch"]);
        assert_eq!(x.jobs[0].item, "kernel-1.8.3-1.el7");
        assert_eq!(x.jobs[0].args["owner"], "kevin");
        assert!(x.failed_condition.is_none() && x.skipped.is_empty());
    }

    #[test]
    fn topic_mismatch_lists_the_patterns() {
        let x = explain_one(
            &event("org.fedoraproject.prod.buildsys.tag", json!({})),
            "koji",
        );
        assert!(!x.matched);
        assert_eq!(x.matched_topic_pattern, None);
        assert_eq!(
            x.reason,
            "topic org.fedoraproject.prod.buildsys.tag matches none of: \
             org.fedoraproject.*.buildsys.build.state.change, org.example.#"
        );
        assert!(x.failed_condition.is_none() && x.jobs.is_empty());
    }

    #[test]
    fn match_failure_names_path_operator_expected_and_actual() {
        let x = explain_one(&koji("kernel", 0), "koji");
        assert!(!x.matched);
        let f = x.failed_condition.unwrap();
        assert_eq!(f.location, "match");
        assert_eq!(f.path.as_deref(), Some("msg.new"));
        assert_eq!(f.operator, "equals");
        assert_eq!(f.expected, json!(1));
        assert_eq!(f.actual, [json!(0)]);
        assert_eq!(f.message, "msg.new: expected equals 1, found 0");
        assert!(x
            .reason
            .ends_with("but match: msg.new: expected equals 1, found 0"));
    }

    #[test]
    fn missing_field_is_reported_as_missing() {
        let mut e = koji("kernel", 1);
        e.msg.as_object_mut().unwrap().remove("instance");
        let f = explain_one(&e, "koji").failed_condition.unwrap();
        assert_eq!(f.path.as_deref(), Some("msg.instance"));
        assert!(f.actual.is_empty());
        assert_eq!(
            f.message,
            "msg.instance: expected equals \"primary\", found missing"
        );
    }

    #[test]
    fn where_in_set_failure_names_the_set_and_location() {
        let f = explain_one(&koji("ansible", 1), "critpath")
            .failed_condition
            .unwrap();
        assert_eq!(f.location, "where.all[1]");
        assert_eq!(f.operator, "in");
        assert_eq!(f.expected, json!(["kernel", "glibc", "systemd"]));
        assert_eq!(
            f.message,
            "msg.name: expected in set critpath [\"kernel\", \"glibc\", \"systemd\"], \
             found \"ansible\""
        );
    }

    /// One reason per kind of condition, each naming what was expected and what was found.
    #[test]
    fn each_condition_kind_gives_a_readable_reason() {
        let failure = |msg: Value| {
            explain_one(&update(msg), "update")
                .failed_condition
                .expect("must fail")
        };
        // gte on a numeric string.
        let mut m = good_update();
        m["update"]["release"]["version"] = json!("38");
        let f = failure(m);
        assert_eq!(
            (f.location.as_str(), f.operator.as_str()),
            ("where.all[0]", "gte")
        );
        assert_eq!(
            f.message,
            "msg.update.release.version: expected gte 39, found \"38\""
        );

        // any: every alternative explained; regex over a wildcard lists every value.
        let mut m = good_update();
        m["update"]["builds"] = json!([{"nvr": "bash-5-1"}, {"nvr": "zsh-5-1"}]);
        let f = failure(m);
        assert_eq!(
            (f.location.as_str(), f.operator.as_str()),
            ("where.all[1]", "any")
        );
        assert_eq!(f.alternatives.len(), 2);
        assert_eq!(f.alternatives[1].location, "where.all[1].any[1]");
        assert_eq!(f.alternatives[1].operator, "regex");
        assert_eq!(
            f.alternatives[1].actual,
            [json!("bash-5-1"), json!("zsh-5-1")]
        );
        assert_eq!(
            f.message,
            "none of the 2 alternatives of any: held: \
             (1) msg.update.critpath: expected equals true, found false; \
             (2) msg.update.builds.*.nvr: no value passes regex \"^(kernel|glibc)-\" \
             (found [\"bash-5-1\", \"zsh-5-1\"])"
        );

        // not: the negated condition held, with the value that made it hold.
        let mut m = good_update();
        m["agent"] = json!("bodhi");
        let f = failure(m);
        assert_eq!(
            (f.location.as_str(), f.operator.as_str()),
            ("where.all[2]", "not")
        );
        assert_eq!(f.path.as_deref(), Some("msg.agent"));
        assert_eq!(
            f.message,
            "expected not (msg.agent in [\"bodhi\", \"autopush\"]), but it held \
             (found \"bodhi\")"
        );

        // exists: true on a missing field, exists: false on a present one.
        let mut m = good_update();
        m["update"].as_object_mut().unwrap().remove("alias");
        let f = failure(m);
        assert_eq!(f.operator, "exists");
        assert_eq!(f.expected, json!(true));
        assert_eq!(
            f.message,
            "msg.update.alias: expected exists: true, found missing"
        );
        let mut m = good_update();
        m["update"]["title"] = json!("old-style");
        let f = failure(m);
        assert_eq!(f.location, "where.all[4]");
        assert_eq!(
            f.message,
            "msg.update.title: expected exists: false, found \"old-style\""
        );
    }

    #[test]
    fn skipped_template_and_filtered_elements_are_explained() {
        // The third build has no nvr: skipped with a reason; the second is filtered by where.
        let x = explain_one(&update(good_update()), "update");
        assert!(x.matched, "{}", x.reason);
        let items: Vec<&str> = x.jobs.iter().map(|j| j.item.as_str()).collect();
        assert_eq!(items, ["kernel-6.1-1.fc40"]);
        assert_eq!(
            x.skipped,
            ["element 2 of msg.update.builds[*]: field build.nvr is missing from the message"]
        );
        assert_eq!(x.filtered.len(), 1);
        assert_eq!(
            x.filtered[0].location,
            "do[0].where (element 1 of msg.update.builds[*])"
        );
        assert_eq!(
            x.filtered[0].message,
            "expected not (build.nvr in [\"skip-me-1-1\"]), but it held (found \"skip-me-1-1\")"
        );

        // A missing template field in a plain action skips the rule for this message.
        let mut e = koji("kernel", 1);
        e.msg.as_object_mut().unwrap().remove("release");
        let x = explain_one(&e, "koji");
        assert!(x.matched && x.jobs.is_empty());
        assert_eq!(x.skipped, ["field msg.release is missing from the message"]);
    }

    #[test]
    fn explanations_serialise_for_machines() {
        let x = explain_one(&koji("kernel", 0), "koji");
        let v = serde_json::to_value(&x).unwrap();
        assert_eq!(v["matched"], json!(false));
        assert_eq!(v["failed_condition"]["path"], json!("msg.new"));
        assert_eq!(v["failed_condition"]["actual"], json!([0]));
        assert!(v["failed_condition"].get("alternatives").is_none());
    }
}
