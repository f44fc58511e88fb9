//! `make bench`: how many events per second the rules service can evaluate on one core,
//! including the parsing of each message, with (a) the shipped rules and (b) 1,000 rules.
//!
//! What one event costs here is what the service pays per delivery before publishing: the JSON
//! bytes of a `taskbot.event.v1` message → `Engine::evaluate_message` (decoding, then evaluation,
//! which builds the job requests of the rules that fire). Publishing and acknowledging are the
//! broker's business and not measured.
//!
//! The events are the real fedmsg samples (tests/fixtures/fedmsg-real.jsonl) and the
//! real-shaped messages of tests/fixtures/messages/, turned into `taskbot.event.v1` bytes as the
//! bridge does. The 1,000-rule file is the shipped file plus generated rules that look like what a
//! large deployment writes: per-package Koji rules, per-release Bodhi rules with regexes over
//! builds, package sets, compose and dist-git rules, and rules for topics the samples never carry.
//! Most do not match a given event; some do.
//!
//! A plain `harness = false` program timed with `std::time::Instant`: no benchmarking crate to
//! build. Run it with `make bench` (or `cargo bench -p rules --bench rules`).

use std::fmt::Write as _;
use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;
use taskbot::messages::{Event, Message};
use taskbot::Config;
use taskbot_rules::{load_rules, Engine, RulesFile};

#[path = "../tests/support/samples.rs"]
mod samples;
use samples::{fixture_files, sample_events};

/// How long each measurement runs (after a warm-up of a tenth of it).
const MEASURE_FOR: Duration = Duration::from_secs(3);

/// The size of the large rules file.
const LARGE_RULE_COUNT: usize = 1_000;

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let events = sample_events(&root);
    let bodies: Vec<Vec<u8>> = events.iter().map(|e| e.to_json()).collect();
    let bytes: usize = bodies.iter().map(Vec::len).sum();

    let mut config = Config {
        arches: vec!["x86_64".into(), "aarch64".into(), "noarch".into()],
        ..Config::default()
    };
    config.rules.task_base_url = Some("https://pagure.io/taskbot-tasks".into());
    let shipped_path = root.join("deploy/rules.yaml");
    let shipped = load_rules(&shipped_path, &config)
        .unwrap_or_else(|e| panic!("the shipped rules do not load: {e}"));

    let shipped_text = std::fs::read_to_string(&shipped_path).expect("deploy/rules.yaml");
    let large_text = large_rules_file(&shipped_text, shipped.rule_count());
    let started = Instant::now();
    let file = RulesFile::parse(&large_text, "generated.yaml")
        .unwrap_or_else(|e| panic!("the generated rules do not parse: {e}"));
    let large = Engine::compile(
        &file,
        &large_text,
        "generated.yaml",
        &config.arches,
        config.rules.task_base_url.as_deref(),
    )
    .unwrap_or_else(|e| panic!("the generated rules do not compile: {e}"));
    let compile_time = started.elapsed();
    assert_eq!(large.rule_count(), LARGE_RULE_COUNT);

    println!(
        "rules benchmark: {} events per pass ({} real samples + real-shaped fixtures), \
         {:.0} bytes per event on average; one thread",
        events.len(),
        events.len() - fixture_files(&root).len(),
        bytes as f64 / events.len() as f64
    );
    println!(
        "generated {} rules: parsed and compiled in {:.1} ms",
        large.rule_count(),
        compile_time.as_secs_f64() * 1e3
    );
    println!();
    println!(
        "{:<44} {:>7} {:>14} {:>10} {:>12}",
        "measurement", "rules", "events/s", "ns/event", "jobs/event"
    );
    for (name, engine) in [("shipped rules", &shipped), ("1,000 rules", &large)] {
        let jobs_per_pass: usize = events.iter().map(|e| engine.evaluate(e).jobs.len()).sum();
        let jobs_per_event = jobs_per_pass as f64 / events.len() as f64;
        let full = measure(bodies.len(), || {
            let mut jobs = 0;
            for body in &bodies {
                // What the service does per delivery (RulesHandler::decide, minus the logging
                // and the serialisation of the outgoing messages).
                let decision = engine
                    .evaluate_message(black_box(body))
                    .expect("valid event");
                jobs += decision.evaluation.jobs.len();
            }
            jobs
        });
        report(
            &format!("{name}: parse + evaluate"),
            engine,
            full,
            jobs_per_event,
        );
        let evaluate_only = measure(events.len(), || {
            events
                .iter()
                .map(|e| engine.evaluate(black_box(e)).jobs.len())
                .sum()
        });
        report(
            &format!("{name}: evaluate only"),
            engine,
            evaluate_only,
            jobs_per_event,
        );
    }
    let parse_only = measure(bodies.len(), || {
        bodies
            .iter()
            .map(|b| {
                Event::from_json(black_box(b))
                    .map(|e| e.topic.len())
                    .unwrap_or(0)
            })
            .sum()
    });
    println!(
        "{:<44} {:>7} {:>14.0} {:>10.0}",
        "parse only (Event::from_json)", "-", parse_only.per_second, parse_only.ns_per_event
    );
    // The floor of any parsing that builds a serde_json::Value: one pass over the bytes.
    let value_only = measure(bodies.len(), || {
        bodies
            .iter()
            .map(|b| {
                serde_json::from_slice::<Value>(black_box(b))
                    .map(|v| v.as_object().map_or(0, |o| o.len()))
                    .unwrap_or(0)
            })
            .sum()
    });
    println!(
        "{:<44} {:>7} {:>14.0} {:>10.0}",
        "parse floor (bytes → serde_json::Value)",
        "-",
        value_only.per_second,
        value_only.ns_per_event
    );
    // Other processes compete for the 2 cores of a shared machine: say how busy it was.
    if let Ok(load) = std::fs::read_to_string("/proc/loadavg") {
        println!();
        println!(
            "load average during the run (1, 5, 15 min): {}",
            load.trim()
        );
    }
}

/// Events per second and nanoseconds per event of one measurement.
struct Figures {
    per_second: f64,
    ns_per_event: f64,
}

/// Run `pass` (which handles `per_pass` events and returns something to keep the optimiser from
/// dropping the work) repeatedly for [`MEASURE_FOR`], after a warm-up.
fn measure(per_pass: usize, mut pass: impl FnMut() -> usize) -> Figures {
    let warm_up = Instant::now();
    while warm_up.elapsed() < MEASURE_FOR / 10 {
        black_box(pass());
    }
    let mut events = 0usize;
    let started = Instant::now();
    while started.elapsed() < MEASURE_FOR {
        black_box(pass());
        events += per_pass;
    }
    let elapsed = started.elapsed().as_secs_f64();
    Figures {
        per_second: events as f64 / elapsed,
        ns_per_event: elapsed * 1e9 / events as f64,
    }
}

fn report(name: &str, engine: &Engine, figures: Figures, jobs_per_event: f64) {
    println!(
        "{:<44} {:>7} {:>14.0} {:>10.0} {:>12.2}",
        name,
        engine.rule_count(),
        figures.per_second,
        figures.ns_per_event,
        jobs_per_event
    );
}

/// Real package names: some appear in the samples and fixtures (so rules on them fire), most
/// do not.
const PACKAGES: &[&str] = &[
    "ansible",
    "kernel",
    "openssl",
    "glibc",
    "bash",
    "python-requests",
    "systemd",
    "coreutils",
    "firefox",
    "thunderbird",
    "libreoffice",
    "gnome-shell",
    "mutter",
    "gtk3",
    "gtk4",
    "glib2",
    "NetworkManager",
    "dnf",
    "rpm",
    "libdnf",
    "anaconda",
    "lorax",
    "pungi",
    "koji",
    "bodhi",
    "fedmsg",
    "tzdata",
    "xdg-desktop-portal",
    "pipewire",
    "wireplumber",
    "mesa",
    "llvm",
    "clang",
    "rust",
    "golang",
    "nodejs",
    "python3",
    "perl",
    "ruby",
    "php",
    "java-17-openjdk",
    "podman",
    "buildah",
    "skopeo",
    "containerd",
    "qemu",
    "libvirt",
    "cockpit",
    "httpd",
    "nginx",
    "postgresql",
    "mariadb",
    "redis",
    "sqlite",
    "curl",
    "wget",
    "openssh",
    "sudo",
    "util-linux",
    "xz",
    "zlib",
    "libxml2",
    "tar",
    "gzip",
    "vim",
    "emacs",
    "git",
    "subversion",
    "cmake",
    "meson",
    "ninja-build",
    "gcc",
    "binutils",
    "gdb",
    "valgrind",
    "strace",
    "selinux-policy",
    "firewalld",
    "grub2",
    "shim",
    "dracut",
    "plymouth",
    "fedup",
    "fedup-dracut",
    "eclipse-ptp",
    "plasma-systemsettings",
];

/// Topics the samples carry and topics they never do (copr, koschei, …): a realistic rules file
/// has rules for both.
const OTHER_TOPICS: &[&str] = &[
    "org.fedoraproject.*.copr.build.end",
    "org.fedoraproject.*.koschei.package.state.change",
    "org.fedoraproject.*.fas.user.create",
    "org.fedoraproject.*.wiki.article.edit",
    "org.fedoraproject.*.mdapi.repo.update",
    "org.fedoraproject.*.greenwave.decision.update",
    "org.fedoraproject.*.ci.koji-build.test.complete",
    "org.centos.*.ci.pipeline.allpackages-build.complete",
    "io.pagure.*.pagure.pull-request.#",
    "org.fedoraproject.*.pagure.#",
];

/// The shipped file with generated sets added and generated rules appended, `total` rules in
/// all.
fn large_rules_file(shipped: &str, shipped_rules: usize) -> String {
    let mut sets = String::new();
    // Sets of 200 names (a team's packages, a SIG's), each holding one or two real names of
    // the list above among package names no sample carries.
    for s in 0..20 {
        let mut members: Vec<String> = (0..198).map(|k| format!("pkg-{s}-{k}")).collect();
        members.push(PACKAGES[(s * 7) % PACKAGES.len()].to_string());
        members.push(PACKAGES[(s * 11 + 5) % PACKAGES.len()].to_string());
        writeln!(sets, "  generated_set_{s}: [{}]", members.join(", ")).unwrap();
    }
    let mut rules = String::new();
    for n in 0..LARGE_RULE_COUNT - shipped_rules {
        let package = PACKAGES[n % PACKAGES.len()];
        let release = 20 + n % 22;
        let name = format!("generated-{n}");
        let rule = match n % 10 {
            // Per-package Koji rules: fire when that package's build completes.
            0 | 1 => format!(
                "  - name: {name}\n    when:\n      topic: org.fedoraproject.*.buildsys.build.state.change\n      match: {{ msg.new: 1, msg.name: {package} }}\n    do:\n      - task: rpmlint\n        item: \"{{{{ msg.name }}}}-{{{{ msg.version }}}}-{{{{ msg.release }}}}\"\n        item_type: koji_build\n        arches: [noarch]\n"
            ),
            // Package sets, with a negated owner test.
            2 => format!(
                "  - name: {name}\n    when:\n      topic: org.fedoraproject.*.buildsys.build.state.change\n      match: {{ msg.instance: primary }}\n      where:\n        all:\n          - {{ path: msg.new, in: [1, 3] }}\n          - {{ path: msg.name, in: generated_set_{} }}\n          - not: {{ path: msg.owner, in: [releng, bodhi] }}\n    do:\n      - task: static-analysis\n        item: \"{{{{ msg.name }}}}-{{{{ msg.version }}}}-{{{{ msg.release }}}}\"\n        item_type: koji_build\n        arches: build_arches\n",
                n % 20
            ),
            // Per-release Bodhi rules with a regex over the builds and one job per build.
            3 | 4 => format!(
                "  - name: {name}\n    when:\n      topic: org.fedoraproject.*.bodhi.update.request.{}\n      where:\n        all:\n          - {{ path: msg.update.release.version, gte: {release} }}\n          - {{ path: msg.update.builds.*.nvr, regex: '^({package}|{})-[0-9]' }}\n    do:\n      - task: depcheck\n        for_each: msg.update.builds[*]\n        as: build\n        where: {{ path: build.nvr, regex: '^{package}-' }}\n        item: \"{{{{ build.nvr }}}}\"\n        item_type: koji_build\n        arches: [x86_64, aarch64]\n",
                if n % 2 == 0 { "testing" } else { "stable" },
                PACKAGES[(n + 13) % PACKAGES.len()]
            ),
            // Koji tags into a release's candidate tag.
            5 => format!(
                "  - name: {name}\n    when:\n      topic: org.fedoraproject.*.buildsys.tag\n      match: {{ msg.tag: f{release}-updates-candidate }}\n    do:\n      - task: example\n        item: \"{{{{ msg.name }}}}-{{{{ msg.version }}}}-{{{{ msg.release }}}}\"\n        item_type: koji_build\n        arches: [noarch]\n"
            ),
            // Composes that finished, by compose name.
            6 => format!(
                "  - name: {name}\n    when:\n      topic: org.fedoraproject.*.pungi.compose.status.change\n      where:\n        all:\n          - {{ path: msg.status, in: [FINISHED, FINISHED_INCOMPLETE] }}\n          - {{ path: msg.compose_id, regex: '^Fedora-{release}-' }}\n    do:\n      - task: example\n        item: \"{{{{ msg.compose_id }}}}\"\n        item_type: compose\n        arches: all\n"
            ),
            // dist-git pushes to one package's branch.
            7 => format!(
                "  - name: {name}\n    when:\n      topic: org.fedoraproject.*.git.receive\n      match: {{ msg.commit.namespace: rpms, msg.commit.repo: {package} }}\n      where: {{ path: msg.commit.branch, in: [rawhide, master, f{release}] }}\n    do:\n      - task: example\n        item: \"{{{{ msg.commit.repo }}}}#{{{{ msg.commit.rev }}}}\"\n        item_type: dist_git_commit\n        arches: [noarch]\n"
            ),
            // Topics the samples never carry.
            8 => format!(
                "  - name: {name}\n    when:\n      topic: {}\n      where:\n        any:\n          - {{ path: msg.owner, equals: {package} }}\n          - {{ path: msg.name, regex: '^{package}$' }}\n    do:\n      - task: example\n        item: \"{{{{ msg.name }}}}\"\n        item_type: other\n        arches: [noarch]\n",
                OTHER_TOPICS[n % OTHER_TOPICS.len()]
            ),
            // Updates pushed to testing, critical path or not, by agent.
            _ => format!(
                "  - name: {name}\n    when:\n      topic: [org.fedoraproject.*.bodhi.update.complete.testing, org.fedoraproject.*.bodhi.update.complete.stable]\n      where:\n        all:\n          - {{ path: msg.update.alias, exists: true }}\n          - any:\n              - {{ path: msg.update.critpath, equals: true }}\n              - {{ path: msg.update.builds.*.nvr, regex: '^{package}-' }}\n          - not: {{ path: msg.agent, in: [autopush, {package}] }}\n    do:\n      - task: upgradepath\n        item: \"{{{{ msg.update.alias }}}}\"\n        item_type: bodhi_update\n        arches: [noarch]\n        priority: {}\n",
                (n / 10) % 10
            ),
        };
        rules.push_str(&rule);
    }
    let with_sets = shipped.replacen("sets:\n", &format!("sets:\n{sets}"), 1);
    assert_ne!(with_sets, shipped, "the shipped file has no sets: section");
    format!("{with_sets}\n{rules}")
}
