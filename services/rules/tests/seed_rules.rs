//! The shipped rules (deploy/rules.yaml) against real-shaped bus messages: for each seed rule, a
//! message that must fire it (with the exact jobs it must ask for) and near misses that must not;
//! and the real samples `make run` feeds, which must trigger nothing but the two example rules.
//!
//! The messages are fedmsg envelopes in tests/fixtures/messages/, built from the real samples in
//! tests/fixtures/fedmsg-real.jsonl with the fields each rule looks at changed.

use std::collections::BTreeMap;
use std::path::PathBuf;

use chrono::Utc;
use serde_json::Value;
use taskbot::messages::{Environment, Event};
use taskbot::Config;
use taskbot_rules::{load_rules, Engine, Evaluation};

const TASK_BASE_URL: &str = "file:///srv/tasks";

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The shipped rules, compiled for the arches `make run` and deploy/taskbot.toml use.
fn shipped_rules() -> Engine {
    let mut config = Config {
        arches: vec!["x86_64".into(), "aarch64".into(), "noarch".into()],
        ..Config::default()
    };
    config.rules.task_base_url = Some(TASK_BASE_URL.into());
    load_rules(&repo_root().join("deploy/rules.yaml"), &config)
        .unwrap_or_else(|e| panic!("deploy/rules.yaml does not load: {e}"))
}

/// A fedmsg envelope as the bridge turns it into an event: the bus's msg_id when it has one.
fn event_from_envelope(envelope: &Value, fallback_id: &str) -> Event {
    Event {
        id: envelope["msg_id"]
            .as_str()
            .unwrap_or(fallback_id)
            .to_string(),
        topic: envelope["topic"].as_str().expect("a topic").to_string(),
        source: "fedmsg:test".into(),
        sent_at: envelope["timestamp"].as_f64(),
        received_at: Utc::now(),
        username: envelope["username"].as_str().map(str::to_string),
        msg: envelope["msg"].clone(),
        headers: Default::default(),
    }
}

fn fixture(name: &str) -> Event {
    let path = repo_root().join("tests/fixtures/messages").join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let envelope: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
    event_from_envelope(&envelope, name)
}

/// What matters of a job for these tests (ids and timestamps are tested by the engine's own
/// tests), in a form that sorts and prints well.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Job {
    rule: String,
    task: String,
    item: String,
    item_type: String,
    arch: String,
    args: BTreeMap<String, String>,
    vm: bool,
    destructive: bool,
    /// The rule's `scenario:`, given to every result of the job.
    scenario: Option<String>,
    /// The flavour of the catalogue image the rule asks for (`vm.image.flavour`).
    image_flavour: Option<String>,
}

fn job(rule: &str, task: &str, item: &str, item_type: &str, arch: &str) -> Job {
    Job {
        rule: rule.into(),
        task: task.into(),
        item: item.into(),
        item_type: item_type.into(),
        arch: arch.into(),
        args: BTreeMap::new(),
        vm: false,
        destructive: false,
        scenario: None,
        image_flavour: None,
    }
}

impl Job {
    fn args(mut self, args: &[(&str, &str)]) -> Job {
        self.args = args
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self
    }

    /// `environment: vm`.
    fn in_vm(mut self) -> Job {
        self.vm = true;
        self
    }

    fn destructive(mut self) -> Job {
        self.destructive = true;
        self
    }

    fn image_flavour(mut self, flavour: &str) -> Job {
        self.image_flavour = Some(flavour.into());
        self
    }

    fn scenario(mut self, scenario: &str) -> Job {
        self.scenario = Some(scenario.into());
        self
    }
}

/// Evaluate and check what every job has whatever its rule: the event, the repository under
/// rules.task_base_url, a unique id. Returns the jobs, sorted.
fn evaluate(engine: &Engine, event: &Event) -> Vec<Job> {
    let Evaluation { jobs, skipped } = engine.evaluate(event);
    assert!(
        skipped.is_empty(),
        "rules skipped for {}: {skipped:?}",
        event.id
    );
    let mut ids: Vec<_> = jobs.iter().map(|j| j.job_id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), jobs.len(), "duplicate job ids for {}", event.id);
    let mut out: Vec<Job> = jobs
        .iter()
        .map(|j| {
            assert_eq!(j.event_id, event.id);
            assert_eq!(j.event_topic, event.topic);
            assert_eq!(j.task.repo, format!("{TASK_BASE_URL}/{}", j.task.name));
            assert_eq!(j.task.git_ref, "main");
            Job {
                rule: j.rule.clone(),
                task: j.task.name.clone(),
                item: j.item.clone(),
                item_type: j.item_type.clone(),
                arch: j.arch.clone(),
                args: j.args.clone(),
                vm: j.environment == Environment::Vm,
                destructive: j.destructive,
                scenario: j.scenario.clone(),
                image_flavour: j.vm.as_ref().and_then(|vm| vm.image.flavour.clone()),
            }
        })
        .collect();
    out.sort();
    out
}

/// The jobs of one rule.
fn of_rule(jobs: &[Job], rule: &str) -> Vec<Job> {
    jobs.iter().filter(|j| j.rule == rule).cloned().collect()
}

/// The rules that asked for jobs.
fn rules_fired(jobs: &[Job]) -> Vec<&str> {
    let mut rules: Vec<&str> = jobs.iter().map(|j| j.rule.as_str()).collect();
    rules.dedup();
    rules
}

const EXAMPLE_KOJI: &str = "example-on-koji-build-complete";
const EXAMPLE_BODHI: &str = "example-on-bodhi-update-in-testing";
const RPMLINT: &str = "rpmlint-on-update-request-testing";
const DEPCHECK_UPGRADEPATH: &str = "depcheck-upgradepath-on-update-request-stable";
const KERNEL_TESTS: &str = "kernel-tests-on-kernel-build-complete";
const BUILD_ISO: &str = "build-iso-on-anaconda-update-in-testing";
const INSTALL_TESTS: &str = "install-tests-on-iso-built";
const UPGRADE_TESTS: &str = "upgrade-tests-on-fedup-update-request-testing";
const STATIC_ANALYSIS: &str = "static-analysis-on-koji-build-complete";
const ABICHECK: &str = "abicheck-on-koji-build-complete";

#[test]
fn the_shipped_file_loads_with_every_rule() {
    let engine = shipped_rules();
    // Two examples and nine seed rules.
    assert_eq!(engine.rule_count(), 11);
}

#[test]
fn rpmlint_runs_once_per_build_of_an_update_submitted_to_testing() {
    let engine = shipped_rules();
    let jobs = evaluate(&engine, &fixture("bodhi-request-testing-two-builds.json"));
    assert_eq!(rules_fired(&jobs), [RPMLINT]);
    assert_eq!(
        jobs,
        [
            job(
                RPMLINT,
                "rpmlint",
                "pipewire-0.2.6-1.fc30",
                "koji_build",
                "noarch"
            ),
            job(
                RPMLINT,
                "rpmlint",
                "xdg-desktop-portal-1.4.2-1.fc30",
                "koji_build",
                "noarch"
            ),
        ]
    );
}

#[test]
fn rpmlint_ignores_other_requests_and_updates_without_builds() {
    let engine = shipped_rules();
    // The same update submitted to stable is depcheck's, not rpmlint's.
    let jobs = evaluate(&engine, &fixture("bodhi-request-stable.json"));
    assert!(of_rule(&jobs, RPMLINT).is_empty(), "{jobs:?}");
    // An old Bodhi message listing no builds: quietly nothing (not a skipped rule: evaluate()
    // checks that nothing was skipped).
    let mut old = fixture("bodhi-request-testing-two-builds.json");
    old.msg["update"].as_object_mut().unwrap().remove("builds");
    assert_eq!(evaluate(&engine, &old), []);
}

#[test]
fn an_update_submitted_to_stable_gets_depcheck_per_build_and_upgradepath_once() {
    let engine = shipped_rules();
    let jobs = evaluate(&engine, &fixture("bodhi-request-stable.json"));
    assert_eq!(rules_fired(&jobs), [DEPCHECK_UPGRADEPATH]);
    let depcheck =
        |nvr: &str, arch: &str| job(DEPCHECK_UPGRADEPATH, "depcheck", nvr, "koji_build", arch);
    assert_eq!(
        jobs,
        [
            depcheck("pipewire-0.2.6-1.fc30", "aarch64"),
            depcheck("pipewire-0.2.6-1.fc30", "x86_64"),
            depcheck("xdg-desktop-portal-1.4.2-1.fc30", "aarch64"),
            depcheck("xdg-desktop-portal-1.4.2-1.fc30", "x86_64"),
            // The release and every build of the update, space-separated (`| join`).
            job(
                DEPCHECK_UPGRADEPATH,
                "upgradepath",
                "FEDORA-2019-46910daf41",
                "bodhi_update",
                "noarch"
            )
            .args(&[
                ("release", "30"),
                (
                    "builds",
                    "xdg-desktop-portal-1.4.2-1.fc30 pipewire-0.2.6-1.fc30"
                ),
            ]),
        ]
    );
}

#[test]
fn an_update_without_alias_gets_depcheck_but_no_upgradepath() {
    let engine = shipped_rules();
    let jobs = evaluate(&engine, &fixture("bodhi-request-stable-no-alias.json"));
    let tasks: Vec<(&str, &str, &str)> = jobs
        .iter()
        .map(|j| (j.task.as_str(), j.item.as_str(), j.arch.as_str()))
        .collect();
    assert_eq!(
        tasks,
        [
            ("depcheck", "tzdata-2014i-1.fc19", "aarch64"),
            ("depcheck", "tzdata-2014i-1.fc19", "x86_64"),
        ]
    );
    // Withdrawn from stable (unpush): nothing.
    let mut unpush = fixture("bodhi-request-stable.json");
    unpush.topic = "org.fedoraproject.prod.bodhi.update.request.unpush".into();
    assert_eq!(evaluate(&engine, &unpush), []);
}

#[test]
fn a_kernel_build_gets_destructive_kernel_tests_on_every_arch() {
    let engine = shipped_rules();
    // Each boots the build's own kernel (vm.kernel_from_item).
    let requested = engine
        .evaluate(&fixture("koji-build-complete-kernel.json"))
        .jobs;
    let kernel_vms: Vec<bool> = requested
        .iter()
        .filter(|j| j.rule == KERNEL_TESTS)
        .map(|j| j.vm.as_ref().is_some_and(|vm| vm.kernel_from_item))
        .collect();
    assert!(
        !kernel_vms.is_empty() && kernel_vms.iter().all(|k| *k),
        "{kernel_vms:?}"
    );
    let jobs = evaluate(&engine, &fixture("koji-build-complete-kernel.json"));
    // The example rule and the static analysis fire on every completed primary build too.
    assert_eq!(
        rules_fired(&jobs),
        [EXAMPLE_KOJI, KERNEL_TESTS, STATIC_ANALYSIS]
    );
    let kernel = |arch: &str| {
        job(
            KERNEL_TESTS,
            "kernel-tests",
            "kernel-5.1.5-300.fc30",
            "koji_build",
            arch,
        )
        .in_vm()
        .destructive()
        .image_flavour("base")
    };
    // `arches: all` is the deployment's real arches: never noarch, which is no machine.
    assert_eq!(
        of_rule(&jobs, KERNEL_TESTS),
        [kernel("aarch64"), kernel("x86_64")]
    );
}

#[test]
fn kernel_tests_wait_for_a_complete_primary_build() {
    let engine = shipped_rules();
    // Koji state 0 (BUILDING): nothing at all.
    assert_eq!(
        evaluate(&engine, &fixture("koji-build-building-kernel.json")),
        []
    );
    // Complete, but on a secondary-arch hub: only the example rule, which does not look at the
    // instance.
    let jobs = evaluate(
        &engine,
        &fixture("koji-build-complete-kernel-secondary.json"),
    );
    assert_eq!(rules_fired(&jobs), [EXAMPLE_KOJI]);
    // Another package: no kernel tests.
    let jobs = evaluate(
        &engine,
        &fixture("koji-build-complete-python-requests.json"),
    );
    assert!(of_rule(&jobs, KERNEL_TESTS).is_empty(), "{jobs:?}");
}

#[test]
fn an_anaconda_update_in_testing_gets_an_iso_built_from_the_anaconda_build_only() {
    let engine = shipped_rules();
    let jobs = evaluate(&engine, &fixture("bodhi-complete-testing-anaconda.json"));
    assert_eq!(rules_fired(&jobs), [BUILD_ISO, EXAMPLE_BODHI]);
    // One job, for anaconda, not for python-blivet which is in the same update.
    assert_eq!(
        of_rule(&jobs, BUILD_ISO),
        [job(
            BUILD_ISO,
            "build-iso",
            "anaconda-30.25.6-1.fc30",
            "koji_build",
            "x86_64"
        )]
    );
}

#[test]
fn packages_named_like_anaconda_do_not_build_isos() {
    let engine = shipped_rules();
    let jobs = evaluate(
        &engine,
        &fixture("bodhi-complete-testing-anaconda-user-help.json"),
    );
    assert_eq!(rules_fired(&jobs), [EXAMPLE_BODHI]);
    // The anaconda update only submitted to testing (not yet pushed): no ISO yet.
    let mut submitted = fixture("bodhi-complete-testing-anaconda.json");
    submitted.topic = "org.fedoraproject.prod.bodhi.update.request.testing".into();
    let jobs = evaluate(&engine, &submitted);
    assert!(of_rule(&jobs, BUILD_ISO).is_empty(), "{jobs:?}");
}

#[test]
fn an_iso_built_by_a_task_gets_destructive_install_tests() {
    let engine = shipped_rules();
    let jobs = evaluate(&engine, &fixture("taskbot-iso-built.json"));
    assert_eq!(
        jobs,
        [job(
            INSTALL_TESTS,
            "install-tests",
            "anaconda-30.25.6-1.fc30",
            "koji_build",
            "x86_64"
        )
        .args(&[("built_by_job", "5d0f1a2b-3c4d-5e6f-8a9b-0c1d2e3f4a5b")])
        .in_vm()
        .destructive()]
    );
}

#[test]
fn isos_of_other_arches_other_task_events_and_other_tasks_are_not_installed() {
    let engine = shipped_rules();
    assert_eq!(
        evaluate(&engine, &fixture("taskbot-iso-built-aarch64.json")),
        []
    );
    let mut other = fixture("taskbot-iso-built.json");
    other.topic = "taskbot.task.iso.failed".into();
    assert_eq!(evaluate(&engine, &other), []);
    // Another task announcing an ISO (the runner's stamp names the publishing job's task) gets
    // nothing; one that writes another item into its event gets its own item installed.
    let mut forged = fixture("taskbot-iso-built.json");
    forged.msg["taskbot"]["task"] = "rpmlint".into();
    assert_eq!(evaluate(&engine, &forged), []);
    let mut other_item = fixture("taskbot-iso-built.json");
    other_item.msg["item"] = "glibc-2.40-1.fc41".into();
    other_item.msg["job_id"] = "00000000-0000-0000-0000-000000000000".into();
    let jobs = evaluate(&engine, &other_item);
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert_eq!(jobs[0].item, "anaconda-30.25.6-1.fc30");
    assert_eq!(
        jobs[0].args["built_by_job"],
        "5d0f1a2b-3c4d-5e6f-8a9b-0c1d2e3f4a5b"
    );
}

#[test]
fn a_fedup_update_gets_upgrade_tests_in_three_configurations() {
    let engine = shipped_rules();
    let jobs = evaluate(&engine, &fixture("bodhi-request-testing-fedup.json"));
    // rpmlint lints both builds as for any update submitted to testing.
    assert_eq!(rules_fired(&jobs), [RPMLINT, UPGRADE_TESTS]);
    let upgrade = |config: &str| {
        job(
            UPGRADE_TESTS,
            "upgrade-tests",
            "FEDORA-2015-2f6c7508b7",
            "bodhi_update",
            "x86_64",
        )
        .args(&[
            ("config", config),
            ("release", "21"),
            ("builds", "fedup-0.9.2-1.fc21 fedup-dracut-0.9.2-1.fc21"),
        ])
        .in_vm()
        .destructive()
        .scenario(config)
        .image_flavour(&format!("upgrade-{config}"))
    };
    // One job per configuration although the update holds two fedup builds.
    assert_eq!(
        of_rule(&jobs, UPGRADE_TESTS),
        [
            upgrade("n-1-minimal"),
            upgrade("n-1-workstation"),
            upgrade("n-2-server")
        ]
    );
    // Only fedup-dracut in the update is enough.
    let mut dracut_only = fixture("bodhi-request-testing-fedup.json");
    dracut_only.msg["update"]["builds"]
        .as_array_mut()
        .unwrap()
        .remove(0);
    let jobs = evaluate(&engine, &dracut_only);
    assert_eq!(of_rule(&jobs, UPGRADE_TESTS).len(), 3, "{jobs:?}");
}

#[test]
fn updates_without_fedup_get_no_upgrade_tests() {
    let engine = shipped_rules();
    let jobs = evaluate(
        &engine,
        &fixture("bodhi-request-testing-system-upgrade.json"),
    );
    assert_eq!(rules_fired(&jobs), [RPMLINT]);
    let jobs = evaluate(&engine, &fixture("bodhi-request-testing-two-builds.json"));
    assert!(of_rule(&jobs, UPGRADE_TESTS).is_empty(), "{jobs:?}");
}

/// No list of C packages: every completed primary build gets one noarch static-analysis job,
/// and the task decides from the source RPM whether there is C to analyse.
#[test]
fn every_completed_primary_build_gets_a_static_analysis() {
    let engine = shipped_rules();
    for (name, nvr) in [
        ("koji-build-complete-openssl.json", "openssl-1.1.1c-2.fc30"),
        (
            "koji-build-complete-python-requests.json",
            "python-requests-2.21.0-3.fc30",
        ),
    ] {
        let jobs = evaluate(&engine, &fixture(name));
        assert_eq!(
            rules_fired(&jobs),
            [ABICHECK, EXAMPLE_KOJI, STATIC_ANALYSIS],
            "{name}"
        );
        assert_eq!(
            of_rule(&jobs, STATIC_ANALYSIS),
            [job(
                STATIC_ANALYSIS,
                "static-analysis",
                nvr,
                "koji_build",
                "noarch"
            )]
        );
    }
}

#[test]
fn every_complete_primary_build_but_the_kernel_gets_an_abicheck_on_the_primary_arches() {
    let engine = shipped_rules();
    let abicheck = |nvr: &str, arch: &str| job(ABICHECK, "abicheck", nvr, "koji_build", arch);
    let jobs = evaluate(
        &engine,
        &fixture("koji-build-complete-python-requests.json"),
    );
    assert_eq!(
        of_rule(&jobs, ABICHECK),
        [
            abicheck("python-requests-2.21.0-3.fc30", "aarch64"),
            abicheck("python-requests-2.21.0-3.fc30", "x86_64"),
        ]
    );
    // The kernel, a secondary hub's build, a build still building: none.
    for name in [
        "koji-build-complete-kernel.json",
        "koji-build-complete-kernel-secondary.json",
        "koji-build-building-kernel.json",
    ] {
        let jobs = evaluate(&engine, &fixture(name));
        assert!(of_rule(&jobs, ABICHECK).is_empty(), "{name}: {jobs:?}");
    }
}

#[test]
fn unfinished_and_secondary_builds_get_no_static_analysis() {
    let engine = shipped_rules();
    let mut failed = fixture("koji-build-complete-openssl.json");
    failed.msg["new"] = 3.into(); // FAILED
    assert_eq!(evaluate(&engine, &failed), []);
    let building = evaluate(&engine, &fixture("koji-build-building-kernel.json"));
    assert!(
        of_rule(&building, STATIC_ANALYSIS).is_empty(),
        "{building:?}"
    );
    let secondary = evaluate(
        &engine,
        &fixture("koji-build-complete-kernel-secondary.json"),
    );
    assert!(
        of_rule(&secondary, STATIC_ANALYSIS).is_empty(),
        "{secondary:?}"
    );
}

/// The real samples ask for 6 jobs: the example rule's (3 arches of the ansible build; the
/// fedmsg update pushed to testing names no builds), and the static analysis and ABI checks of
/// the ansible build, which look at every completed primary build (the tasks tell that ansible,
/// a noarch package, has no C sources and no libraries). No other seed rule may add to them.
#[test]
fn the_real_samples_trigger_only_the_example_rules_and_the_build_checks() {
    let engine = shipped_rules();
    let path = repo_root().join("tests/fixtures/fedmsg-real.jsonl");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut jobs = Vec::new();
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let envelope: Value = serde_json::from_str(line).unwrap();
        jobs.extend(evaluate(
            &engine,
            &event_from_envelope(&envelope, &format!("sample-{n}")),
        ));
    }
    let summary: Vec<(&str, &str, &str)> = jobs
        .iter()
        .map(|j| (j.rule.as_str(), j.item.as_str(), j.arch.as_str()))
        .collect();
    assert_eq!(
        summary,
        [
            (ABICHECK, "ansible-1.8.3-1.el7", "aarch64"),
            (ABICHECK, "ansible-1.8.3-1.el7", "x86_64"),
            (EXAMPLE_KOJI, "ansible-1.8.3-1.el7", "aarch64"),
            (EXAMPLE_KOJI, "ansible-1.8.3-1.el7", "noarch"),
            (EXAMPLE_KOJI, "ansible-1.8.3-1.el7", "x86_64"),
            (STATIC_ANALYSIS, "ansible-1.8.3-1.el7", "noarch"),
        ]
    );
}

/// A message of tests/fixtures/fedora-messaging/ (fedora-messaging's serialized form, written by
/// the real library with the Koji and Bodhi schema packages' classes) as the fedora-messaging
/// bridge turns it into an event.
fn fedora_messaging_fixture(name: &str) -> Event {
    let path = repo_root()
        .join("tests/fixtures/fedora-messaging")
        .join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let message: Value = serde_json::from_str(&text).unwrap();
    taskbot::fedora_messaging::from_serialized(message.as_object().unwrap(), "test")
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn the_shipped_rules_fire_on_todays_fedora_messaging_bus() {
    let engine = shipped_rules();
    let koji = fedora_messaging_fixture("koji-build-state-change-bash.json");
    assert_eq!(
        koji.headers["fedora_messaging_schema"],
        "koji_fedoramessaging.build.BuildStateChangeV1"
    );
    let nvr = "bash-5.2.32-1.fc41";
    let mut want = vec![
        job(
            "example-on-koji-build-complete",
            "example",
            nvr,
            "koji_build",
            "x86_64",
        ),
        job(
            "example-on-koji-build-complete",
            "example",
            nvr,
            "koji_build",
            "aarch64",
        ),
        job(
            "example-on-koji-build-complete",
            "example",
            nvr,
            "koji_build",
            "noarch",
        ),
        job(
            STATIC_ANALYSIS,
            "static-analysis",
            nvr,
            "koji_build",
            "noarch",
        ),
        job(ABICHECK, "abicheck", nvr, "koji_build", "x86_64"),
        job(ABICHECK, "abicheck", nvr, "koji_build", "aarch64"),
    ];
    want.sort();
    assert_eq!(evaluate(&engine, &koji), want);

    let testing = fedora_messaging_fixture("bodhi-update-request-testing.json");
    let rule = "rpmlint-on-update-request-testing";
    assert_eq!(
        evaluate(&engine, &testing),
        [
            job(
                rule,
                "rpmlint",
                "python-requests-2.32.3-1.fc41",
                "koji_build",
                "noarch"
            ),
            job(
                rule,
                "rpmlint",
                "python-urllib3-2.2.3-1.fc41",
                "koji_build",
                "noarch"
            ),
        ]
    );

    let stable = fedora_messaging_fixture("bodhi-update-request-stable.json");
    let rule = "depcheck-upgradepath-on-update-request-stable";
    assert_eq!(
        evaluate(&engine, &stable),
        [
            job(rule, "depcheck", nvr, "koji_build", "aarch64"),
            job(rule, "depcheck", nvr, "koji_build", "x86_64"),
            job(
                rule,
                "upgradepath",
                "FEDORA-2026-6f7a8b9c0d",
                "bodhi_update",
                "noarch"
            )
            .args(&[("release", "41"), ("builds", nvr)]),
        ]
    );

    // Fedora's CI trigger: a re-run asked for re-lints the update's builds, from
    // `artifact.builds[]`; the same message for a new update (`re-trigger: false`) does not,
    // since its request to testing already did.
    let retrigger = fedora_messaging_fixture("bodhi-update-ready-for-testing-retrigger.json");
    assert_eq!(
        retrigger.topic,
        "org.fedoraproject.prod.bodhi.update.status.testing.koji-build-group.build.complete"
    );
    assert_eq!(
        evaluate(&engine, &retrigger),
        [job(
            "rpmlint-on-update-retrigger",
            "rpmlint",
            "xz-5.6.3-1.fc41",
            "koji_build",
            "noarch"
        )]
    );
    let new = fedora_messaging_fixture("bodhi-update-ready-for-testing-new.json");
    assert_eq!(evaluate(&engine, &new), []);
}
