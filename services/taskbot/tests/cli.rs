//! The `taskbot` binary as users run it: arguments in, stdout / stderr / exit status out.
//!
//! Exact assertions use rules files written here (deploy/rules.yaml changes as seed rules are
//! added); the deployed file only has to load and run.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;
use taskbot::messages::Message as _;

const RULES: &str = r#"sets:
  build_arches: [x86_64, aarch64, noarch]
tasks:
  rpmlint: { repo: rpmlint, ref: main }
rules:
  - name: koji-build-complete
    when:
      topic: org.fedoraproject.*.buildsys.build.state.change
      match: { msg.new: 1 }
    do:
      - task: rpmlint
        item: "{{ msg.name }}-{{ msg.version }}-{{ msg.release }}"
        item_type: koji_build
        arches: build_arches
        priority: 3
        args: { owner: "{{ msg.owner }}" }
  - name: critpath-build
    when:
      topic: org.fedoraproject.*.buildsys.build.state.change
      where: { path: msg.name, in: [kernel, glibc] }
    do:
      - task: rpmlint
        item: "{{ msg.name }}"
        item_type: koji_build
        arches: [noarch]
  - name: update-builds
    when: { topic: org.fedoraproject.*.bodhi.update.request.testing }
    do:
      - task: rpmlint
        for_each: msg.update.builds[*]
        as: build
        item: "{{ build.nvr }}"
        item_type: koji_build
        arches: [x86_64]
"#;

/// The Koji "build complete" sample of tests/fixtures/fedmsg-real.jsonl (line 6).
const ANSIBLE_ID: &str = "2015-6395fb7a-e5a7-4b95-858a-ff7b80410e7f";
const ANSIBLE_LINE: usize = 6;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn samples() -> PathBuf {
    workspace().join("tests/fixtures/fedmsg-real.jsonl")
}

fn sample_line(line: usize) -> String {
    std::fs::read_to_string(samples())
        .unwrap()
        .lines()
        .nth(line - 1)
        .unwrap()
        .to_string()
}

/// `taskbot ARGS` in the workspace root, with `stdin` and `env` set, and no configuration from
/// the environment of whoever runs the tests.
fn taskbot_with(args: &[&str], stdin: &str, env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_taskbot"));
    command
        .args(args)
        .current_dir(workspace())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (key, _) in std::env::vars() {
        if key.starts_with("TASKBOT_") {
            command.env_remove(key);
        }
    }
    command.envs(env.iter().copied());
    let mut child = command.spawn().expect("run taskbot");
    // The program may exit (a broken rules file) before reading stdin: a closed pipe is fine.
    let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
    child.wait_with_output().unwrap()
}

fn taskbot(args: &[&str]) -> Output {
    taskbot_with(args, "", &[])
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn status(out: &Output) -> i32 {
    out.status.code().expect("exited")
}

/// A temporary directory holding `rules.yaml` with `text`.
fn rules_file(text: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rules.yaml");
    std::fs::write(&path, text).unwrap();
    (dir, path.display().to_string())
}

#[test]
fn check_accepts_the_deployed_rules_file() {
    let out = taskbot(&["rules", "check", "deploy/rules.yaml"]);
    assert_eq!(status(&out), 0, "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.starts_with("deploy/rules.yaml: ") && text.ends_with(" OK\n"),
        "{text}"
    );
}

#[test]
fn check_counts_the_rules_of_a_good_file() {
    let (_dir, path) = rules_file(RULES);
    let out = taskbot(&["rules", "check", &path]);
    assert_eq!(status(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out), format!("{path}: 3 rules OK\n"));
    assert_eq!(stderr(&out), "");
}

#[test]
fn check_refuses_a_broken_file_with_file_line_and_column() {
    // An unknown task, found after parsing and placed by searching the text.
    let (_dir, path) = rules_file(&RULES.replace(
        "task: rpmlint\n        for_each",
        "task: nope\n        for_each",
    ));
    let out = taskbot(&["rules", "check", &path]);
    assert_eq!(status(&out), 1);
    assert_eq!(stdout(&out), "");
    assert_eq!(
        stderr(&out),
        format!(
            "{path}:29:9: rule \"update-builds\": unknown task \"nope\" (define it under tasks:)\n"
        )
    );

    // A YAML-level error (an unknown key), placed by the parser.
    let (_dir, path) = rules_file(&RULES.replace("priority: 3", "priorty: 3"));
    let out = taskbot(&["rules", "check", &path]);
    assert_eq!(status(&out), 1);
    let err = stderr(&out);
    assert!(err.starts_with(&format!("{path}:15:9: ")), "{err}");
    assert!(err.contains("unknown field `priorty`"), "{err}");

    // A file that is not there.
    let out = taskbot(&["rules", "check", "/nonexistent/rules.yaml"]);
    assert_eq!(status(&out), 1);
    assert!(
        stderr(&out).starts_with("/nonexistent/rules.yaml:0:0: cannot read:"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn arches_come_from_the_configuration_and_the_flag_overrides_it() {
    let (dir, path) = rules_file(&RULES.replace("arches: [noarch]", "arches: [s390x]"));
    let out = taskbot(&["rules", "check", &path]);
    assert_eq!(status(&out), 1);
    assert!(
        stderr(&out).contains("arch \"s390x\" is not one of this deployment's arches"),
        "{}",
        stderr(&out)
    );

    // The configuration file the services read.
    let config = dir.path().join("taskbot.toml");
    std::fs::write(
        &config,
        "arches = [\"x86_64\", \"aarch64\", \"noarch\", \"s390x\"]\n",
    )
    .unwrap();
    let config = config.display().to_string();
    let out = taskbot_with(
        &["rules", "check", &path],
        "",
        &[("TASKBOT_CONFIG", &config)],
    );
    assert_eq!(status(&out), 0, "{}", stderr(&out));

    // The flag wins over the configuration (aarch64 is used by build_arches).
    let out = taskbot_with(
        &["rules", "check", &path, "--arches", "x86_64,noarch,s390x"],
        "",
        &[("TASKBOT_CONFIG", &config)],
    );
    assert_eq!(status(&out), 1);
    assert!(
        stderr(&out).contains("arch \"aarch64\""),
        "{}",
        stderr(&out)
    );
    let out = taskbot(&[
        "rules",
        "check",
        &path,
        "--arches",
        "x86_64,aarch64,noarch,s390x",
    ]);
    assert_eq!(status(&out), 0, "{}", stderr(&out));

    // A broken configuration is a configuration error (status 2), as for the services.
    let out = taskbot_with(
        &["rules", "check", &path],
        "",
        &[("TASKBOT_CONFIG", "/nonexistent/taskbot.toml")],
    );
    assert_eq!(status(&out), 2);
    assert!(
        stderr(&out).contains("invalid configuration"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn test_on_the_real_samples_shows_the_koji_match_and_its_jobs() {
    let (_dir, path) = rules_file(RULES);
    let samples = samples().display().to_string();
    let base = ["--task-base-url", "file:///srv/tasks"];
    let out = taskbot(&[&["rules", "test", &path, &samples][..], &base].concat());
    assert_eq!(status(&out), 0, "{}", stderr(&out));
    let text = stdout(&out);
    let section = text
        .split("\n\n")
        .find(|s| s.starts_with(&format!("message (line {ANSIBLE_LINE}): {ANSIBLE_ID}")))
        .unwrap_or_else(|| panic!("no section for the ansible build:\n{text}"));
    assert!(
        section.contains(
            "  MATCH     koji-build-complete: topic matched \
             org.fedoraproject.*.buildsys.build.state.change and the condition held\n"
        ),
        "{section}"
    );
    assert!(
        section.contains(
            "  no match  critpath-build: topic matched \
             org.fedoraproject.*.buildsys.build.state.change, but where: msg.name: expected \
             in [\"kernel\", \"glibc\"], found \"ansible\"\n"
        ),
        "{section}"
    );
    assert!(
        section.contains(
            "  no match  update-builds: topic org.fedoraproject.prod.buildsys.build.state.change \
             matches none of: org.fedoraproject.*.bodhi.update.request.testing\n"
        ),
        "{section}"
    );
    for arch in ["x86_64", "aarch64", "noarch"] {
        let line = format!(
            ": task rpmlint (file:///srv/tasks/rpmlint@main), item ansible-1.8.3-1.el7 \
             (koji_build), arch {arch}, priority 3\n      args: owner=kevin\n"
        );
        assert!(section.contains(&line), "{arch}: {section}");
    }
    assert!(
        section.ends_with("  => 3 job requests would be published"),
        "{section}"
    );
    assert!(
        text.ends_with("\n70 messages, 2 matched at least one rule, 3 job requests in total\n"),
        "{text}"
    );
    // The other match: a Bodhi message from before updates listed their builds.
    assert!(
        text.contains(
            "  MATCH     update-builds: topic matched \
             org.fedoraproject.*.bodhi.update.request.testing\n    skipped: for_each \
             msg.update.builds[*] addresses nothing in this message\n"
        ),
        "{text}"
    );

    // Only the two messages that matched a rule, and only the rules that matched.
    let out = taskbot(
        &[
            &["rules", "test", &path, &samples, "--only-matching"][..],
            &base,
        ]
        .concat(),
    );
    assert_eq!(status(&out), 0, "{}", stderr(&out));
    let short = stdout(&out);
    let sections: Vec<&str> = short.split("\n\n").collect();
    assert_eq!(sections.len(), 3, "{short}");
    assert!(sections[0].starts_with("message (line 6): "), "{short}");
    assert!(sections[1].starts_with("message (line 21): "), "{short}");
    assert_eq!(short.matches("  MATCH     ").count(), 2, "{short}");
    assert!(!short.contains("no match"), "{short}");
    assert_eq!(
        sections[2],
        "70 messages, 2 matched at least one rule, 3 job requests in total\n"
    );

    // The JSON output has the same jobs, and they are the service's own: same ids as the rules
    // engine gives for the event the bridge makes of this bus message.
    let out = taskbot(&[&["rules", "test", &path, &samples, "--json"][..], &base].concat());
    assert_eq!(status(&out), 0, "{}", stderr(&out));
    let report: Value = serde_json::from_slice(&out.stdout).expect("--json output is JSON");
    assert_eq!(report["rules_file"], Value::String(path.clone()));
    let messages = report["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 70);
    let ansible = messages
        .iter()
        .find(|m| m["event_id"] == ANSIBLE_ID)
        .unwrap();
    assert_eq!(ansible["line"], ANSIBLE_LINE);
    assert_eq!(ansible["rules"][0]["rule"], "koji-build-complete");
    assert_eq!(ansible["rules"][0]["matched"], true);
    assert_eq!(ansible["rules"][1]["failed_condition"]["operator"], "in");
    assert_eq!(
        ansible["rules"][1]["failed_condition"]["actual"][0],
        "ansible"
    );
    let jobs: Vec<taskbot::messages::JobRequest> = ansible["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| taskbot::messages::JobRequest::from_json(j.to_string().as_bytes()).unwrap())
        .collect();
    let arches: Vec<&str> = jobs.iter().map(|j| j.arch.as_str()).collect();
    assert_eq!(arches, ["x86_64", "aarch64", "noarch"]);

    let mut config = taskbot::Config::default();
    config.rules.task_base_url = Some("file:///srv/tasks".into());
    let engine = taskbot_rules::load_rules(Path::new(&path), &config).unwrap();
    let frames = [Vec::new(), sample_line(ANSIBLE_LINE).into_bytes()];
    let event = taskbot_fedmsg_bridge::parse_fedmsg(&frames, 1 << 20, "fedmsg:test").unwrap();
    let service_ids: Vec<_> = engine
        .evaluate(&event)
        .jobs
        .iter()
        .map(|j| j.job_id)
        .collect();
    let cli_ids: Vec<_> = jobs.iter().map(|j| j.job_id).collect();
    assert_eq!(cli_ids, service_ids);
    for job in &jobs {
        assert!(text.contains(&format!("job {}: task rpmlint", job.job_id)));
    }
}

#[test]
fn test_runs_on_the_deployed_rules_file() {
    let samples = samples().display().to_string();
    let out = taskbot(&["rules", "test", "deploy/rules.yaml", &samples, "--json"]);
    assert_eq!(status(&out), 0, "{}", stderr(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["messages"].as_array().unwrap().len(), 70);
}

#[test]
fn test_reads_a_message_from_stdin() {
    let (_dir, path) = rules_file(RULES);
    let out = taskbot_with(
        &["rules", "test", &path, "-"],
        &sample_line(ANSIBLE_LINE),
        &[],
    );
    assert_eq!(status(&out), 0, "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.starts_with(&format!("message: {ANSIBLE_ID}\n")),
        "{text}"
    );
    assert!(text.contains("  MATCH     koji-build-complete: "), "{text}");
    assert!(
        text.ends_with("  => 3 job requests would be published\n"),
        "{text}"
    );

    // A bare Taskbot event, as the bridge publishes it, works too.
    let event = serde_json::json!({
        "schema": "taskbot.event.v1", "id": "ev-1", "source": "test",
        "topic": "org.fedoraproject.stg.bodhi.update.request.testing",
        "received_at": "2024-05-01T12:00:00Z",
        "msg": {"update": {"builds": [{"nvr": "bash-5.2-1.fc40"}, {"nvr": "zsh-5.9-1.fc40"}, {}]}}
    });
    let out = taskbot_with(
        &["rules", "test", &path, "-", "--json"],
        &event.to_string(),
        &[],
    );
    assert_eq!(status(&out), 0, "{}", stderr(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let message = &report["messages"][0];
    assert_eq!(message["event_id"], "ev-1");
    let items: Vec<&str> = message["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["item"].as_str().unwrap())
        .collect();
    assert_eq!(items, ["bash-5.2-1.fc40", "zsh-5.9-1.fc40"]);
    assert_eq!(
        message["rules"][2]["skipped"][0],
        "element 2 of msg.update.builds[*]: field build.nvr is missing from the message"
    );
}

#[test]
fn nothing_matching_is_not_an_error() {
    let (_dir, path) = rules_file(RULES);
    let out = taskbot_with(&["rules", "test", &path, "-"], &sample_line(1), &[]);
    assert_eq!(status(&out), 0, "{}", stderr(&out));
    let text = stdout(&out);
    assert_eq!(text.matches("  no match  ").count(), 3, "{text}");
    assert!(
        text.ends_with("  => 0 job requests would be published\n"),
        "{text}"
    );
}

#[test]
fn invalid_or_unreadable_messages_are_refused() {
    let (dir, path) = rules_file(RULES);
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(
        &bad,
        format!(
            "{}\n{{\"topic\": \"org.x\", \"msg\": \n[1]\n",
            sample_line(ANSIBLE_LINE)
        ),
    )
    .unwrap();
    let bad = bad.display().to_string();
    let out = taskbot(&["rules", "test", &path, &bad]);
    assert_eq!(status(&out), 1);
    assert_eq!(
        stdout(&out),
        "",
        "nothing is explained when part of the input is broken"
    );
    let err = stderr(&out);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 2, "{err}");
    assert!(
        lines[0].starts_with(&format!("{bad}:2: not valid JSON: ")),
        "{err}"
    );
    assert!(
        lines[1].starts_with(&format!("{bad}:3: expected a JSON object")),
        "{err}"
    );

    let out = taskbot_with(
        &["rules", "test", &path, "-"],
        r#"{"topic": "org.x.y"}"#,
        &[],
    );
    assert_eq!(status(&out), 1);
    assert!(
        stderr(&out).contains("<stdin>: not a fedmsg envelope"),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("envelope has no `msg`"),
        "{}",
        stderr(&out)
    );

    let out = taskbot_with(&["rules", "test", &path, "-"], "", &[]);
    assert_eq!(status(&out), 1);
    assert!(
        stderr(&out).contains("the input is empty"),
        "{}",
        stderr(&out)
    );

    let out = taskbot(&["rules", "test", &path, "/nonexistent/message.json"]);
    assert_eq!(status(&out), 1);
    assert!(
        stderr(&out).starts_with("cannot read the message file /nonexistent/message.json: "),
        "{}",
        stderr(&out)
    );
}

#[test]
fn test_refuses_a_broken_rules_file() {
    let (_dir, path) = rules_file(&RULES.replace("match: { msg.new: 1 }", "match: { msg.new: 1"));
    let out = taskbot_with(
        &["rules", "test", &path, "-"],
        &sample_line(ANSIBLE_LINE),
        &[],
    );
    assert_eq!(status(&out), 1);
    assert_eq!(stdout(&out), "");
    assert!(
        stderr(&out).starts_with(&format!("{path}:")),
        "{}",
        stderr(&out)
    );
    let err = stderr(&out);
    let position: Vec<&str> = err
        .trim_start_matches(&format!("{path}:"))
        .splitn(3, ':')
        .collect();
    assert!(
        position[0].parse::<usize>().unwrap() > 0 && position[1].parse::<usize>().unwrap() > 0,
        "{err}"
    );
}
