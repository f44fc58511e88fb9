//! Tests of `where` conditions, wildcard paths, sets and `for_each`, through whole rules files:
//! what a QA engineer writes is what is tested.

use serde_json::{json, Value};
use taskbot::messages::Event;

use super::Engine;
use crate::rules_file::RulesError;

fn compile(text: &str) -> Result<Engine, RulesError> {
    super::compile_for_tests(text)
}

fn event(topic: &str, msg: Value) -> Event {
    taskbot::testing::event("2019-0a1b2c3d", topic, msg)
}

/// A file with one rule whose `where:` is `condition` (YAML flow or block at indent 6).
fn with_condition(condition: &str) -> String {
    format!(
        r#"sets:
  critpath_packages: [kernel, glibc, systemd]
  small_numbers: [1, 2, "3"]
tasks:
  t: {{ repo: t }}
rules:
  - name: r
    when:
      topic: "org.#"
      where: {condition}
    do:
      - task: t
        item: "{{{{ topic }}}}"
        item_type: koji_build
        arches: [noarch]
"#
    )
}

/// Whether a rule with this `where:` fires for this message body.
fn fires(condition: &str, msg: Value) -> bool {
    let engine = compile(&with_condition(condition)).unwrap_or_else(|e| panic!("{condition}: {e}"));
    let out = engine.evaluate(&event("org.fedoraproject.prod.x", msg));
    assert!(out.skipped.is_empty(), "{:?}", out.skipped);
    !out.jobs.is_empty()
}

/// The load error for this `where:`.
fn refused(condition: &str) -> RulesError {
    match compile(&with_condition(condition)) {
        Ok(_) => panic!("{condition} was accepted"),
        Err(e) => e,
    }
}

#[test]
fn equals_operator() {
    let c = "{ path: msg.update.request, equals: testing }";
    assert!(fires(c, json!({"update": {"request": "testing"}})));
    assert!(!fires(c, json!({"update": {"request": "stable"}})));
    assert!(!fires(c, json!({"update": {}})));
    // Numbers compare by value, as in match:.
    assert!(fires("{ path: msg.new, equals: 1 }", json!({"new": 1.0})));
    assert!(fires("{ path: msg.new, equals: 1 }", json!({"new": "1"})));
    // equals: null is "present and null", not "no operator".
    assert!(fires(
        "{ path: msg.owner, equals: null }",
        json!({"owner": null})
    ));
    assert!(!fires("{ path: msg.owner, equals: null }", json!({})));
    // Whole objects compare too.
    assert!(fires(
        "{ path: msg.user, equals: { name: ralph } }",
        json!({"user": {"name": "ralph"}})
    ));
    assert!(fires(
        "{ path: topic, equals: org.fedoraproject.prod.x }",
        json!({})
    ));
}

#[test]
fn in_and_not_in_with_lists_and_sets() {
    let c = "{ path: msg.name, in: [kernel, bash] }";
    assert!(fires(c, json!({"name": "bash"})));
    assert!(!fires(c, json!({"name": "zsh"})));
    let c = "{ path: msg.name, in: critpath_packages }";
    assert!(fires(c, json!({"name": "glibc"})));
    assert!(!fires(c, json!({"name": "zsh"})));
    assert!(!fires(c, json!({})));
    let c = "{ path: msg.name, not_in: critpath_packages }";
    assert!(fires(c, json!({"name": "zsh"})));
    assert!(!fires(c, json!({"name": "kernel"})));
    // A leaf test on a field that is not there is false, not_in included; not: turns it around.
    assert!(!fires(c, json!({})));
    assert!(fires(
        "{ not: { path: msg.name, in: critpath_packages } }",
        json!({})
    ));
    // Loose number equality inside sets: 1, 2 and "3" are in small_numbers.
    let c = "{ path: msg.new, in: small_numbers }";
    for yes in [json!(1), json!(2.0), json!("2"), json!(3), json!("3")] {
        assert!(fires(c, json!({ "new": yes })), "{yes}");
    }
    for no in [json!(4), json!("1.5"), json!(true), json!(null), json!([1])] {
        assert!(!fires(c, json!({ "new": no })), "{no}");
    }
    assert!(fires("{ path: msg.ok, in: [true] }", json!({"ok": true})));
}

#[test]
fn regex_operator() {
    let c = r#"{ path: msg.update.release.branch, regex: '^f\d+$' }"#;
    assert!(fires(c, json!({"update": {"release": {"branch": "f40"}}})));
    assert!(!fires(
        c,
        json!({"update": {"release": {"branch": "rawhide"}}})
    ));
    assert!(!fires(c, json!({"update": {"release": {"branch": null}}})));
    // Unanchored unless anchored; numbers are matched as their text.
    assert!(fires(
        "{ path: msg.release, regex: el7 }",
        json!({"release": "1.el7"})
    ));
    assert!(fires(
        "{ path: msg.build_id, regex: '^6123' }",
        json!({"build_id": 612324})
    ));
    assert!(fires(
        "{ path: msg.name, regex: '(?i)^ANSI' }",
        json!({"name": "ansible"})
    ));
    assert!(!fires(
        "{ path: msg.x, regex: '.*' }",
        json!({"x": {"y": 1}})
    ));
}

#[test]
fn exists_operator() {
    let c = "{ path: msg.update.alias, exists: true }";
    assert!(fires(
        c,
        json!({"update": {"alias": "FEDORA-2019-02cd019281"}})
    ));
    assert!(!fires(c, json!({"update": {"title": "foo"}})));
    // Null counts as absent: Koji's owner may be null.
    assert!(!fires(c, json!({"update": {"alias": null}})));
    let c = "{ path: msg.update.alias, exists: false }";
    assert!(fires(c, json!({"update": {"title": "foo"}})));
    assert!(fires(c, json!({"update": 7})));
    assert!(!fires(c, json!({"update": {"alias": "A"}})));
    let c = "{ path: msg.update.builds.*.nvr, exists: true }";
    assert!(fires(
        c,
        json!({"update": {"builds": [{}, {"nvr": "a-1-1"}]}})
    ));
    assert!(!fires(c, json!({"update": {"builds": []}})));
}

#[test]
fn numeric_comparisons() {
    let msg = |karma: Value| json!({ "update": { "karma": karma } });
    assert!(fires("{ path: msg.update.karma, gt: 2 }", msg(json!(3))));
    assert!(!fires("{ path: msg.update.karma, gt: 3 }", msg(json!(3))));
    assert!(fires("{ path: msg.update.karma, gte: 3 }", msg(json!(3))));
    assert!(fires("{ path: msg.update.karma, lt: 0 }", msg(json!(-1))));
    assert!(!fires("{ path: msg.update.karma, lt: 0 }", msg(json!(0))));
    assert!(fires("{ path: msg.update.karma, lte: 0.5 }", msg(json!(0))));
    // Numeric strings count; other types never compare.
    assert!(fires("{ path: msg.update.karma, gt: 2 }", msg(json!("3"))));
    assert!(!fires(
        "{ path: msg.update.karma, gt: 2 }",
        msg(json!("three"))
    ));
    assert!(!fires(
        "{ path: msg.update.karma, gt: -9 }",
        msg(json!(null))
    ));
    assert!(!fires(
        "{ path: msg.update.karma, gt: -9 }",
        msg(json!([5]))
    ));
    // Several operators in one test must hold for the same value: a range.
    let range = "{ path: msg.update.karma, gte: 1, lt: 3 }";
    assert!(fires(range, msg(json!(1))));
    assert!(fires(range, msg(json!(2.5))));
    assert!(!fires(range, msg(json!(3))));
    assert!(!fires(range, msg(json!(0))));
}

#[test]
fn all_any_not_combine() {
    let c = r#"
        all:
          - { path: msg.update.request, in: [testing, stable] }
          - any:
              - { path: msg.update.critpath, equals: true }
              - { path: msg.update.builds.*.nvr, regex: '^kernel-' }
          - not: { path: msg.agent, equals: bodhi }"#;
    let msg = |request: &str, critpath: bool, nvr: &str, agent: &str| {
        json!({"agent": agent, "update": {"request": request, "critpath": critpath,
                                           "builds": [{"nvr": nvr}]}})
    };
    assert!(fires(c, msg("testing", true, "bash-5-1", "ralph")));
    assert!(fires(c, msg("stable", false, "kernel-6-1", "ralph")));
    assert!(!fires(c, msg("stable", false, "bash-5-1", "ralph")));
    assert!(!fires(c, msg("obsolete", true, "kernel-6-1", "ralph")));
    assert!(!fires(c, msg("testing", true, "kernel-6-1", "bodhi")));
}

#[test]
fn wildcard_test_is_true_if_any_element_matches() {
    let builds = json!({"update": {"builds": [{"nvr": "bash-5.2-1.fc40"},
                                              {"nvr": "kernel-6.8-1.fc40"}]}});
    let c = "{ path: 'msg.update.builds[*].nvr', regex: '^kernel-' }";
    assert!(fires(c, builds.clone()));
    let c = "{ path: msg.update.builds.*.nvr, regex: '^zsh-' }";
    assert!(!fires(c, builds.clone()));
    // not_in on a wildcard: SOME element is not in the list...
    let c = "{ path: msg.update.builds.*.nvr, not_in: [bash-5.2-1.fc40] }";
    assert!(fires(c, builds.clone()));
    // ...while "no element is in the list" is not: + in:.
    let c = "{ not: { path: msg.update.builds.*.nvr, in: [bash-5.2-1.fc40] } }";
    assert!(!fires(c, builds.clone()));
    // Numeric index, both spellings.
    assert!(fires(
        "{ path: msg.update.builds.1.nvr, regex: '^kernel' }",
        builds.clone()
    ));
    assert!(fires(
        "{ path: 'msg.update.builds[0].nvr', equals: bash-5.2-1.fc40 }",
        builds.clone()
    ));
    // Wildcards never fail on odd shapes.
    for odd in [
        json!({"update": {"builds": "x"}}),
        json!({"update": null}),
        json!([]),
    ] {
        assert!(!fires(
            "{ path: msg.update.builds.*.nvr, exists: true }",
            odd
        ));
    }
}

#[test]
fn match_and_where_together() {
    let text = with_condition("{ path: msg.name, in: critpath_packages }").replace(
        "      where:",
        "      match: { msg.new: 1, msg.update.builds.0.nvr: kernel-6-1 }\n      where:",
    );
    let engine = compile(&text).unwrap();
    let fire = |msg: Value| {
        !engine
            .evaluate(&event("org.fedoraproject.prod.x", msg))
            .jobs
            .is_empty()
    };
    let builds = json!([{"nvr": "kernel-6-1"}]);
    assert!(fire(
        json!({"new": 1, "name": "kernel", "update": {"builds": builds}})
    ));
    assert!(!fire(
        json!({"new": 0, "name": "kernel", "update": {"builds": builds}})
    ));
    assert!(!fire(
        json!({"new": 1, "name": "zsh", "update": {"builds": builds}})
    ));
}

/// A Bodhi update request as the bus carries it (reference §1): three builds, one of them in
/// the critical path.
fn bodhi_update_request() -> Event {
    event(
        "org.fedoraproject.prod.bodhi.update.request.testing",
        json!({
            "agent": "ralph",
            "update": {
                "alias": "FEDORA-2019-02cd019281",
                "title": "bash-5.0.2-1.fc30 glibc-2.29-9.fc30 zsh-5.7.1-1.fc30",
                "builds": [
                    {"nvr": "bash-5.0.2-1.fc30", "signed": true},
                    {"nvr": "glibc-2.29-9.fc30", "signed": true},
                    {"nvr": "zsh-5.7.1-1.fc30", "signed": false}
                ],
                "release": {"name": "F30", "version": "30", "branch": "f30",
                            "id_prefix": "FEDORA", "dist_tag": "f30"},
                "request": "testing",
                "status": "pending",
                "critpath": true,
                "user": {"name": "ralph"}
            }
        }),
    )
}

const BODHI_RULES: &str = r#"
sets:
  c_packages: [glibc, bash, gcc]
tasks:
  rpmlint: { repo: rpmlint }
  depcheck: { repo: depcheck }
rules:
  - name: per-build-checks-on-update-request
    when:
      topic: org.fedoraproject.*.bodhi.update.request.testing
      where:
        all:
          - { path: msg.update.release.version, gte: 30 }
          - { path: msg.update.builds.*.nvr, exists: true }
    do:
      - task: rpmlint
        for_each: msg.update.builds[*]
        as: build
        item: "{{ build.nvr }}"
        item_type: koji_build
        arches: [x86_64, noarch]
        args: { update: "{{ msg.update.alias }}", release: "{{ msg.update.release.branch }}" }
      - task: depcheck
        for_each: msg.update.builds[*]
        where: { path: build.nvr, regex: '^(glibc|bash|gcc)-' }
        as: build
        item: "{{ build.nvr }}"
        item_type: koji_build
        arches: [x86_64]
      - task: depcheck
        item: "{{ msg.update.alias }}"
        item_type: bodhi_update
        arches: [noarch]
"#;

#[test]
fn for_each_gives_one_job_per_build_of_a_bodhi_update() {
    let engine = compile(BODHI_RULES).unwrap();
    let update = bodhi_update_request();
    let out = engine.evaluate(&update);
    assert!(out.skipped.is_empty(), "{:?}", out.skipped);
    let jobs: Vec<(&str, &str, &str)> = out
        .jobs
        .iter()
        .map(|j| (j.task.name.as_str(), j.item.as_str(), j.arch.as_str()))
        .collect();
    assert_eq!(
        jobs,
        [
            ("rpmlint", "bash-5.0.2-1.fc30", "x86_64"),
            ("rpmlint", "bash-5.0.2-1.fc30", "noarch"),
            ("rpmlint", "glibc-2.29-9.fc30", "x86_64"),
            ("rpmlint", "glibc-2.29-9.fc30", "noarch"),
            ("rpmlint", "zsh-5.7.1-1.fc30", "x86_64"),
            ("rpmlint", "zsh-5.7.1-1.fc30", "noarch"),
            // The per-element where: keeps only the C packages.
            ("depcheck", "bash-5.0.2-1.fc30", "x86_64"),
            ("depcheck", "glibc-2.29-9.fc30", "x86_64"),
            ("depcheck", "FEDORA-2019-02cd019281", "noarch"),
        ]
    );
    let first = &out.jobs[0];
    assert_eq!(first.args["update"], "FEDORA-2019-02cd019281");
    assert_eq!(first.args["release"], "f30");
    assert_eq!(first.item_type, "koji_build");
    // Every job has its own derived id, and the same event gives the same ids again.
    let ids: std::collections::HashSet<_> = out.jobs.iter().map(|j| j.job_id).collect();
    assert_eq!(ids.len(), out.jobs.len());
    let again = engine.evaluate(&update);
    let again_ids: Vec<_> = again.jobs.iter().map(|j| j.job_id).collect();
    let first_ids: Vec<_> = out.jobs.iter().map(|j| j.job_id).collect();
    assert_eq!(again_ids, first_ids);

    // The rule's where: looks at the release: F29 updates get nothing.
    let mut old = bodhi_update_request();
    old.msg["update"]["release"]["version"] = json!("29");
    assert!(engine.evaluate(&old).jobs.is_empty());
}

#[test]
fn for_each_skips_only_the_element_it_cannot_render() {
    let engine = compile(BODHI_RULES).unwrap();
    let mut update = bodhi_update_request();
    update.msg["update"]["builds"][1] = json!({"id": 5});
    let out = engine.evaluate(&update);
    let rpmlint: Vec<&str> = out
        .jobs
        .iter()
        .filter(|j| j.task.name == "rpmlint")
        .map(|j| j.item.as_str())
        .collect();
    assert_eq!(
        rpmlint,
        [
            "bash-5.0.2-1.fc30",
            "bash-5.0.2-1.fc30",
            "zsh-5.7.1-1.fc30",
            "zsh-5.7.1-1.fc30"
        ]
    );
    assert_eq!(
        out.skipped,
        vec![(
            "per-build-checks-on-update-request".to_string(),
            "element 1 of msg.update.builds[*]: field build.nvr is missing from the message"
                .to_string()
        )]
    );
}

#[test]
fn for_each_without_elements_is_skipped_with_a_reason() {
    let text = r#"
tasks:
  t: { repo: t }
rules:
  - name: per-build
    when: { topic: "org.#" }
    do:
      - { task: t, for_each: "msg.update.builds[*]", item: "{{ each.nvr }}",
          item_type: koji_build, arches: [noarch] }
"#;
    let engine = compile(text).unwrap();
    // An older Bodhi message (as in the fixtures): no builds list at all.
    let out = engine.evaluate(&event(
        "org.fedoraproject.prod.bodhi.update.complete.testing",
        json!({"update": {"status": "testing", "title": "fedmsg-0.2.7-2.el6"}}),
    ));
    assert!(out.jobs.is_empty());
    assert_eq!(
        out.skipped,
        vec![(
            "per-build".to_string(),
            "for_each msg.update.builds[*] addresses nothing in this message".to_string()
        )]
    );
    // The default element name is `each`; the same build listed twice is one job.
    let out = engine.evaluate(&event(
        "org.x",
        json!({"update": {"builds": [{"nvr": "a-1-1"}, {"nvr": "a-1-1"}, {"nvr": "b-1-1"}]}}),
    ));
    let items: Vec<&str> = out.jobs.iter().map(|j| j.item.as_str()).collect();
    assert_eq!(items, ["a-1-1", "b-1-1"]);
}

/// The real envelopes of tests/fixtures/fedmsg-real.jsonl, as events.
fn fixture_events() -> Vec<Event> {
    include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/fedmsg-real.jsonl"
    ))
    .lines()
    .filter(|l| !l.trim().is_empty())
    .enumerate()
    .map(|(i, line)| {
        let envelope: Value = serde_json::from_str(line).unwrap();
        let mut e = event(envelope["topic"].as_str().unwrap(), envelope["msg"].clone());
        e.id = envelope["msg_id"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| format!("fixture-{i}"));
        e
    })
    .collect()
}

#[test]
fn koji_build_messages_from_the_fixtures() {
    let text = r#"
sets:
  critpath_packages: [ansible, kernel]
tasks:
  rpmlint: { repo: rpmlint }
rules:
  - name: rpmlint-on-critpath-koji-build
    when:
      topic: org.fedoraproject.*.buildsys.build.state.change
      match: { msg.new: 1 }
      where:
        all:
          - { path: msg.instance, equals: primary }
          - { path: msg.name, in: critpath_packages }
          - { path: msg.release, regex: '\.(el|fc)\d+$' }
          - { path: msg.build_id, gt: 0 }
    do:
      - task: rpmlint
        item: "{{ msg.name }}-{{ msg.version }}-{{ msg.release }}"
        item_type: koji_build
        arches: [x86_64]
"#;
    let engine = compile(text).unwrap();
    let events = fixture_events();
    let koji: Vec<&Event> = events
        .iter()
        .filter(|e| e.topic.ends_with("buildsys.build.state.change"))
        .collect();
    assert_eq!(koji.len(), 3, "fixture file changed");
    let jobs: Vec<(String, String)> = events
        .iter()
        .flat_map(|e| engine.evaluate(e).jobs)
        .map(|j| (j.event_id, j.item))
        .collect();
    // Only ansible-1.8.3-1.el7 reached COMPLETE (new: 1) and is in the set.
    assert_eq!(
        jobs,
        [(
            "2015-6395fb7a-e5a7-4b95-858a-ff7b80410e7f".to_string(),
            "ansible-1.8.3-1.el7".to_string()
        )]
    );
}

#[test]
fn no_message_shape_breaks_evaluation() {
    // Wildcards and operators everywhere, against every real message and some odd bodies.
    let text = r##"
sets:
  s: [1, "a", null, true]
tasks:
  t: { repo: t }
rules:
  - name: everything
    when:
      topic: "#"
      where:
        any:
          - { path: "msg[*][*][*].name", in: s }
          - { path: msg.*.builds.*.nvr, regex: '-' }
          - { path: msg.update.builds.0.nvr, not_in: s }
          - { path: "msg[*].*", gte: 1, lte: 1000000 }
          - not: { path: msg.*.*.*.*, exists: true }
    do:
      - { task: t, for_each: "msg[*]", as: value, item: "{{ topic }}",
          item_type: x, arches: [noarch] }
      - { task: t, for_each: "msg.update.builds[*]", as: build, item: "{{ build.nvr }}",
          item_type: x, arches: [noarch] }
"##;
    let engine = compile(text).unwrap();
    let mut events = fixture_events();
    for odd in [
        json!(null),
        json!(3),
        json!("s"),
        json!([[[]]]),
        json!({"update": []}),
    ] {
        events.push(event("org.x", odd));
    }
    let mut produced = 0;
    for e in &events {
        produced += engine.evaluate(e).jobs.len();
    }
    assert!(produced > 0);
}

#[test]
fn unknown_set_is_refused_with_position() {
    let err = refused("{ path: msg.name, in: nosuchset }");
    assert_eq!(
        (err.file.as_str(), err.line, err.column),
        ("rules.yaml", 10, 32),
        "{err}"
    );
    assert!(err.message.contains("unknown set \"nosuchset\""), "{err}");
    let err = refused("{ path: msg.name, not_in: nosuchset }");
    assert_eq!((err.line, err.column), (10, 32), "{err}");
    assert!(err.message.contains("not_in: names unknown set"), "{err}");
}

#[test]
fn bad_regex_is_refused_with_position() {
    let err = refused("{ path: msg.name, regex: 'ab(c' }");
    assert_eq!((err.line, err.column), (10, 40), "{err}");
    assert!(err.message.contains("invalid regex \"ab(c\""), "{err}");
    assert!(err.message.contains("unclosed group"), "{err}");
}

#[test]
fn bad_paths_are_refused_with_position() {
    let err = refused("{ path: 'msg.update.builds[x].nvr', equals: 1 }");
    assert_eq!((err.line, err.column), (10, 23), "{err}");
    assert!(err.message.contains("invalid field path"), "{err}");
    let err = refused("{ path: build.nvr, equals: 1 }");
    assert_eq!((err.line, err.column), (10, 22), "{err}");
    assert!(
        err.message
            .contains("must start with one of msg, topic, id"),
        "{err}"
    );
}

#[test]
fn wrong_types_are_refused_with_position() {
    let err = refused("{ path: msg.karma, gt: three }");
    assert_eq!(err.line, 10, "{err}");
    assert!(err.message.contains("invalid type"), "{err}");
    let err = refused("{ path: msg.karma, exists: maybe }");
    assert_eq!(err.line, 10, "{err}");
    assert!(err.message.contains("invalid type"), "{err}");
    let err = refused("{ path: msg.karma, in: { a: 1 } }");
    assert_eq!(err.line, 10, "{err}");
    assert!(
        err.message
            .contains("invalid type: map, expected the name of a set or a list of values"),
        "{err}"
    );
    let err = refused("{ path: msg.karma, not_in: 5 }");
    assert!(err.message.contains("invalid type: integer `5`"), "{err}");
    let err = refused("{ path: msg.karma, regex: [a] }");
    assert_eq!(err.line, 10, "{err}");
    let err = refused("{ path: msg.karma, equal: 1 }");
    assert_eq!(err.line, 10, "{err}");
    assert!(err.message.contains("unknown field `equal`"), "{err}");
    let err = refused("{ all: { path: msg.a, equals: 1 } }");
    assert_eq!(err.line, 10, "{err}");
}

#[test]
fn malformed_conditions_are_refused_with_position() {
    let err = refused("{ path: msg.name }");
    assert_eq!((err.line, err.column), (10, 22), "{err}");
    assert!(err.message.contains("has no operator"), "{err}");
    let err = refused("{ equals: 1 }");
    assert_eq!((err.line, err.column), (10, 16), "{err}");
    assert!(err.message.contains("needs path:"), "{err}");
    let err = refused("{ all: [], any: [] }");
    assert_eq!((err.line, err.column), (10, 16), "{err}");
    assert!(err.message.contains("exactly one of"), "{err}");
    let err = refused("{ not: { path: msg.a, exists: true }, path: msg.b, equals: 1 }");
    assert!(err.message.contains("exactly one of"), "{err}");
    let err = refused("{ any: [] }");
    assert_eq!((err.line, err.column), (10, 16), "{err}");
    assert!(err.message.contains("any: needs at least one"), "{err}");
    let err = refused("{ path: msg.a, exists: true, equals: 1 }");
    assert!(err.message.contains("exists cannot be combined"), "{err}");
    // Nested errors are found too.
    let err = refused("{ all: [ { any: [ { not: { path: msg.a, regex: '[' } } ] } ] }");
    assert!(err.message.contains("invalid regex"), "{err}");
    assert_eq!(err.line, 10, "{err}");
}

/// The Bodhi rules file with one action line replaced.
fn bodhi_with(old: &str, new: &str) -> RulesError {
    assert!(BODHI_RULES.contains(old), "{old}");
    match compile(&BODHI_RULES.replacen(old, new, 1)) {
        Ok(_) => panic!("{new} was accepted"),
        Err(e) => e,
    }
}

#[test]
fn bad_for_each_is_refused_with_position() {
    let err = bodhi_with(
        "for_each: msg.update.builds[*]",
        "for_each: msg.update.builds",
    );
    assert_eq!((err.line, err.column), (17, 9), "{err}");
    assert!(err.message.contains("must contain [*]"), "{err}");
    let err = bodhi_with(
        "for_each: msg.update.builds[*]",
        "for_each: msg.update.builds[*",
    );
    assert_eq!((err.line, err.column), (17, 9), "{err}");
    assert!(err.message.contains("invalid field path"), "{err}");
    let err = bodhi_with(
        "for_each: msg.update.builds[*]",
        "for_each: update.builds[*]",
    );
    assert!(err.message.contains("must start with one of"), "{err}");
    let err = bodhi_with("as: build", "as: msg");
    assert_eq!((err.line, err.column), (18, 9), "{err}");
    assert!(err.message.contains("must be a plain name"), "{err}");
    let err = bodhi_with("as: build", "as: a.b");
    assert!(err.message.contains("must be a plain name"), "{err}");
    // as: without for_each.
    let err = bodhi_with(
        "        item: \"{{ msg.update.alias }}\"",
        "        as: x\n        item: \"{{ msg.update.alias }}\"",
    );
    assert_eq!((err.line, err.column), (31, 9), "{err}");
    assert!(err.message.contains("needs a for_each"), "{err}");
}

#[test]
fn bad_templates_and_element_conditions_are_refused_with_position() {
    // The element name only exists where its for_each is.
    let err = bodhi_with(
        "item: \"{{ msg.update.alias }}\"",
        "item: \"{{ build.nvr }}\"",
    );
    assert_eq!((err.line, err.column), (31, 16), "{err}");
    assert!(
        err.message
            .contains("must start with one of msg, topic, id"),
        "{err}"
    );
    // A template yields one value; [*] there is refused with a pointer to for_each.
    let err = bodhi_with(
        "release: \"{{ msg.update.release.branch }}\"",
        "release: \"{{ msg.update.builds[*].nvr }}\"",
    );
    assert_eq!((err.line, err.column), (22, 61), "{err}");
    assert!(err.message.contains("use for_each:"), "{err}");
    let err = bodhi_with(
        "where: { path: build.nvr, regex: '^(glibc|bash|gcc)-' }",
        "where: { path: build.nvr, in: c_packagez }",
    );
    assert_eq!((err.line, err.column), (25, 35), "{err}");
    assert!(err.message.contains("unknown set \"c_packagez\""), "{err}");
}

/// The rules of BODHI_RULES' last action with `args` (whose values are templates) put in.
fn update_job_args(args: &str) -> Result<Engine, RulesError> {
    let last = "        item: \"{{ msg.update.alias }}\"\n        item_type: bodhi_update\n";
    assert!(BODHI_RULES.contains(last));
    compile(&BODHI_RULES.replacen(last, &format!("{last}        args: {args}\n"), 1))
}

#[test]
fn join_gives_one_job_every_value_of_a_list_separated_by_spaces() {
    let engine =
        update_job_args("{ builds: \"{{ msg.update.builds[*].nvr | join }}\", n: \"{{msg.update.builds.*.nvr|join}}\" }")
            .unwrap();
    let out = engine.evaluate(&bodhi_update_request());
    let job = out
        .jobs
        .iter()
        .find(|j| j.item == "FEDORA-2019-02cd019281")
        .unwrap();
    let all = "bash-5.0.2-1.fc30 glibc-2.29-9.fc30 zsh-5.7.1-1.fc30";
    assert_eq!(job.args["builds"], all);
    assert_eq!(job.args["n"], all);
    // A single field joins to itself; a list of nothing is a missing field, which skips the rule.
    let engine = update_job_args("{ v: \"{{ msg.update.release.version | join }}\" }").unwrap();
    let out = engine.evaluate(&bodhi_update_request());
    assert_eq!(out.jobs.last().unwrap().args["v"], "30");
    let engine = update_job_args("{ b: \"{{ msg.update.bugs[*].id | join }}\" }").unwrap();
    let out = engine.evaluate(&bodhi_update_request());
    assert_eq!(
        out.skipped,
        [(
            "per-build-checks-on-update-request".to_string(),
            "field msg.update.bugs[*].id is missing from the message".to_string()
        )]
    );
    // Values that are not strings, numbers or booleans cannot be joined.
    let engine = update_job_args("{ b: \"{{ msg.update.builds[*] | join }}\" }").unwrap();
    let out = engine.evaluate(&bodhi_update_request());
    assert!(
        out.skipped[0].1.contains("is not a single value"),
        "{:?}",
        out.skipped
    );
    // join is the only filter.
    let err = update_job_args("{ b: \"{{ msg.update.builds[*].nvr | sort }}\" }").unwrap_err();
    assert!(err.message.contains("unknown filter \"sort\""), "{err}");
}

#[test]
fn the_shipped_rules_file_still_loads_and_fires() {
    let text = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/rules.yaml"
    ));
    let engine = compile(text).unwrap();
    let items: Vec<String> = fixture_events()
        .iter()
        .flat_map(|e| engine.evaluate(e).jobs)
        .map(|j| format!("{} {}", j.item, j.arch))
        .collect();
    assert!(
        items.contains(&"ansible-1.8.3-1.el7 x86_64".to_string()),
        "{items:?}"
    );
    // The old Bodhi message of the samples names no builds (only a title): the example rule
    // checks an update's builds, never its title, so it gets no job.
    assert!(
        !items.iter().any(|i| i.starts_with("fedmsg-0.2.7-2.el6")),
        "{items:?}"
    );
}
