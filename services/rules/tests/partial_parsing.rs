//! The service parses only the parts of a message body its rules read (see `engine/needs.rs`).
//! These tests check that this never changes a decision: for every real sample and real-shaped
//! fixture, with the shipped rules and with rules that read the body in every way a path can
//! (wildcards over lists and objects, positions, `for_each` elements, whole objects, nulls,
//! `exists`, numbers), decoding the message bytes as the service does gives exactly the jobs and
//! skip reasons that evaluating the fully parsed event gives.

use std::collections::BTreeSet;
use std::path::PathBuf;

use taskbot::messages::{Event, Message};
use taskbot::Config;
use taskbot_rules::{load_rules, Engine, Evaluation, RulesFile};

mod support {
    pub mod samples;
}
use support::samples;

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn config() -> Config {
    let mut config = Config {
        arches: vec!["x86_64".into(), "aarch64".into(), "noarch".into()],
        ..Config::default()
    };
    config.rules.task_base_url = Some("file:///srv/tasks".into());
    config
}

/// The 70 real samples and the fixtures, as the bridge turns them into events.
fn all_events() -> Vec<Event> {
    let events = samples::sample_events(&repo_root());
    assert!(events.len() >= 80, "{} events", events.len());
    events
}

/// Creation times differ between two evaluations; everything else must not.
fn without_times(mut evaluation: Evaluation) -> Evaluation {
    for job in &mut evaluation.jobs {
        job.created_at = chrono::DateTime::UNIX_EPOCH;
    }
    evaluation
}

/// Compare both ways of evaluating every event; return how many jobs and skips they made, so
/// the caller can check the rules were exercised at all.
fn compare(engine: &Engine, events: &[Event]) -> (usize, usize, BTreeSet<String>) {
    let (mut jobs, mut skipped) = (0, 0);
    let mut rules = BTreeSet::new();
    for event in events {
        let whole = without_times(engine.evaluate(event));
        let decision = engine
            .evaluate_message(&event.to_json())
            .unwrap_or_else(|e| panic!("{}: {e}", event.id));
        assert_eq!(decision.event_id, event.id);
        assert_eq!(decision.topic, event.topic);
        assert_eq!(
            without_times(decision.evaluation),
            whole,
            "event {} ({}) decided differently when parsed partially",
            event.id,
            event.topic
        );
        jobs += whole.jobs.len();
        skipped += whole.skipped.len();
        rules.extend(whole.jobs.iter().map(|j| j.rule.clone()));
        rules.extend(whole.skipped.iter().map(|(rule, _)| rule.clone()));
    }
    (jobs, skipped, rules)
}

#[test]
fn the_shipped_rules_decide_the_same_on_partially_parsed_bodies() {
    let engine = load_rules(&repo_root().join("deploy/rules.yaml"), &config()).unwrap();
    let (jobs, _, _) = compare(&engine, &all_events());
    assert!(
        jobs >= 20,
        "only {jobs} jobs: the comparison exercised little"
    );
}

/// Rules on every topic (`#`) that read bodies in every way a path can.
const EVERY_KIND_OF_PATH: &str = r##"
tasks:
  t: { repo: t }
rules:
  - name: builds-by-element
    when: { topic: "#", where: { path: "msg.update.builds[*].nvr", regex: "-" } }
    do:
      - { task: t, for_each: "msg.update.builds[*]", as: b, where: { path: b.nvr, regex: "^[a-k]" },
          item: "{{ b.nvr }}", item_type: koji_build, arches: [noarch], args: { alias: "{{ msg.update.alias }}" } }
  - name: whole-element-is-not-an-item
    when: { topic: "#", where: { path: msg.update.builds.0, exists: true } }
    do: [{ task: t, for_each: "msg.update.builds[*]", item: "{{ each }}", item_type: x, arches: [noarch] }]
  - name: first-build-by-position
    when: { topic: "#", where: { path: "msg.update.builds[0].nvr", exists: true } }
    do: [{ task: t, item: "{{ msg.update.builds.0.nvr }}/{{ msg.update.builds.1.nvr }}", item_type: x, arches: [noarch] }]
  - name: joined-list
    when: { topic: "#", where: { path: msg.update.alias, exists: true } }
    do: [{ task: t, item: "{{ msg.update.alias }}", item_type: x, arches: [noarch], args: { builds: "{{ msg.update.builds[*].nvr | join }}" } }]
  - name: whole-object-template
    when: { topic: "#", where: { path: msg.owner, exists: true } }
    do: [{ task: t, item: "{{ msg.owner }}", item_type: x, arches: [x86_64, aarch64] }]
  - name: absent-fields
    when: { topic: "#", where: { not: { path: msg.name, exists: true } } }
    do: [{ task: t, item: "{{ topic }}:{{ id }}", item_type: x, arches: [noarch] }]
  - name: nulls
    when: { topic: "#", where: { any: [ { path: msg.update.request, equals: null }, { path: msg.attribute, equals: null } ] } }
    do: [{ task: t, item: "{{ id }}", item_type: x, arches: [noarch] }]
  - name: numbers
    when: { topic: "#", match: { msg.new: 1 }, where: { path: msg.build_id, gt: 0 } }
    do: [{ task: t, item: "{{ msg.name }}-{{ msg.version }}-{{ msg.release }}", item_type: koji_build, arches: [noarch], args: { id: "{{ msg.build_id }}" } }]
  - name: object-wildcard
    when: { topic: "#", where: { path: "msg.commit.stats.files.*.additions", gte: 1 } }
    do: [{ task: t, item: "{{ msg.commit.repo }}#{{ msg.commit.rev }}", item_type: dist_git_commit, arches: [noarch] }]
  - name: anything-nested
    when: { topic: "#", where: { path: "msg.*.*.name", exists: true } }
    do: [{ task: t, item: "{{ msg.agent }}", item_type: x, arches: [noarch] }]
"##;

#[test]
fn every_kind_of_path_decides_the_same_on_partially_parsed_bodies() {
    let (engine, count) = compile(EVERY_KIND_OF_PATH);
    let (jobs, skipped, rules) = compare(&engine, &all_events());
    assert!(jobs >= 50, "only {jobs} jobs");
    assert!(skipped >= 5, "only {skipped} skips");
    // Every rule did something on some event, so every kind of path was compared.
    assert_eq!(rules.len(), count, "rules that fired: {rules:?}");
}

/// A rule that reads the whole body (kept apart: it makes every other path's parts kept too).
#[test]
fn a_rule_reading_the_whole_body_decides_the_same() {
    let (engine, _) = compile(&format!(
        "{}{}",
        EVERY_KIND_OF_PATH,
        r#"
  - name: whole-body
    when: { topic: "org.fedoraproject.*.bodhi.#", where: { path: msg, exists: true } }
    do: [{ task: t, item: "{{ msg.agent }}", item_type: x, arches: [noarch] }]
"#
    ));
    let (_, _, rules) = compare(&engine, &all_events());
    assert!(rules.contains("whole-body"), "{rules:?}");
}

fn compile(text: &str) -> (Engine, usize) {
    let file = RulesFile::parse(text, "paths.yaml").unwrap();
    let config = config();
    let engine = Engine::compile(
        &file,
        text,
        "paths.yaml",
        &config.arches,
        config.rules.task_base_url.as_deref(),
    )
    .unwrap();
    (engine, file.rules.len())
}
