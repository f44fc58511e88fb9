//! Tests of compiling and evaluating whole rules files.

use super::condition::loosely_equal;
use super::*;
use taskbot::messages::{ImageQuery, RemoteFile, VmRequest};

/// One rule, also used by the service tests: a job per primary arch for every completed build.
const RULES: &str = include_str!("../../tests/fixtures/koji-example-rules.yaml");

fn engine(text: &str) -> Result<Engine, RulesError> {
    compile_for_tests(text)
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
  - name: kernel-on-build
    when: { topic: taskbot.kernel.built }
    do:
      - task: smoke
        item: "{{ msg.nvr }}"
        item_type: koji_build
        arches: [x86_64]
        environment: vm
        vm: { kernel_from_item: true }
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
            kernel_from_item: false,
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
    assert!(!jobs[0].vm.as_ref().unwrap().kernel_from_item);
    let body = event_bytes(
        "taskbot.kernel.built",
        serde_json::json!({"nvr": "kernel-6.11.5-300.fc41"}),
    );
    let jobs = e.evaluate_message(&body).unwrap().evaluation.jobs;
    assert_eq!(
        jobs[0].vm,
        Some(VmRequest {
            kernel_from_item: true,
            ..VmRequest::default()
        })
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
        (
            "          blank_disk_mb: 512\n",
            "          blank_disk_mb: 512\n          kernel_from_item: true\n",
            "kernel_from_item boots an image's userspace",
            16,
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
    let glob = |pattern: &str, text: &str| TopicPattern::new(pattern).matches(text);
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

#[test]
fn a_job_with_a_value_no_store_can_hold_is_not_requested_and_the_rule_says_why() {
    let e = engine(RULES).unwrap();
    // A package name of 300 KB: the job would be refused by every stage after the rules.
    let mut ev = koji_event(1);
    ev.msg["name"] = "a".repeat(300_000).into();
    let out = e.evaluate(&ev);
    assert!(out.jobs.is_empty(), "{:?}", out.jobs.len());
    assert_eq!(out.skipped.len(), 1, "{:?}", out.skipped);
    let (rule, reason) = &out.skipped[0];
    assert_eq!(rule, "example-on-koji-build");
    assert!(
        reason.starts_with("no job requested: item is 300012 bytes, over the limit of 1024 bytes"),
        "{reason}"
    );
    let mut ev = koji_event(1);
    ev.msg["name"] = "nul\u{0}name".into();
    let reason = &e.evaluate(&ev).skipped[0].1;
    assert!(reason.contains("item contains a NUL character"), "{reason}");
    let mut ev = koji_event(1);
    ev.id = "i".repeat(taskbot::limits::MAX_NAME_BYTES + 1);
    let reason = &e.evaluate(&ev).skipped[0].1;
    assert!(reason.contains("event_id is 4097 bytes"), "{reason}");
    // An item at the limit is still a job.
    let mut ev = koji_event(1);
    let at_limit = taskbot::limits::MAX_ITEM_BYTES - "-1.8.3-1.el7".len();
    ev.msg["name"] = "a".repeat(at_limit).into();
    assert_eq!(e.evaluate(&ev).jobs.len(), 2);
}

/// An injected event whose `msg` is not an object is refused with the reason, whether or not a
/// rule names its topic (the rules service dead-letters what `evaluate_message` refuses).
#[test]
fn an_event_whose_msg_is_not_an_object_is_refused() {
    let e = engine(RULES).unwrap();
    for topic in [
        "org.fedoraproject.prod.buildsys.build.state.change",
        "org.fedoraproject.prod.pagure.issue.new",
    ] {
        for (msg, kind) in [
            (serde_json::json!([1, 2]), "array"),
            (serde_json::json!("text"), "string"),
            (serde_json::json!(null), "null"),
        ] {
            let mut event = koji_event(1);
            event.topic = topic.into();
            event.msg = msg;
            let err = e.evaluate_message(&event.to_json()).unwrap_err();
            let want = format!("`msg` is a JSON {kind}, not an object");
            assert!(err.to_string().contains(&want), "{topic}: {err}");
            let err = Event::from_json(&event.to_json()).unwrap_err();
            assert!(err.to_string().contains(&want), "Event::from_json: {err}");
        }
    }
}

#[test]
fn an_actions_testcases_and_scenario_reach_its_jobs() {
    let text = "tasks:\n  upgrade: { repo: file:///srv/tasks/upgrade }\nrules:\n  - name: r\n    when: { topic: org.fedoraproject.prod.buildsys.build.state.change }\n    do:\n      - task: upgrade\n        item: \"{{ msg.name }}\"\n        item_type: koji_build\n        arches: [x86_64]\n        testcases: [dist.upgrade, dist.upgrade.rollback]\n        scenario: \"{{ msg.instance }}-minimal\"\n";
    let out = engine(text).unwrap().evaluate(&koji_event(1));
    assert_eq!(out.jobs.len(), 1);
    assert_eq!(
        out.jobs[0].testcases,
        ["dist.upgrade", "dist.upgrade.rollback"]
    );
    assert_eq!(out.jobs[0].scenario.as_deref(), Some("primary-minimal"));
    let twice = text.replace("dist.upgrade.rollback", "dist.upgrade");
    let err = engine(&twice).unwrap_err().to_string();
    assert!(err.contains("listed twice"), "{err}");
}
