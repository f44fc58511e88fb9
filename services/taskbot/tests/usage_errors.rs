//! Usage errors exit with status 2 (docs/cli.md), whether clap finds them or a command does (an
//! unknown arch, queue or outcome, `--arg` without `=`, a time that is none): the message on
//! stderr, nothing on stdout, and nothing sent anywhere. The broker and the api given are
//! unreachable, so a command that went on instead of refusing fails with status 1 (and the
//! default broker of whoever runs the tests is never touched).

use std::process::{Command, Output};

fn taskbot(args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_taskbot"));
    command.args(args);
    for (key, _) in std::env::vars() {
        if key.starts_with("TASKBOT_") {
            command.env_remove(key);
        }
    }
    command
        .env("TASKBOT_AMQP__URL", "amqp://guest:guest@127.0.0.1:1/%2f")
        .env(
            "TASKBOT_AMQP__MANAGEMENT_URL",
            "http://guest:guest@127.0.0.1:1",
        )
        .env("TASKBOT_ARCHES", "[x86_64, noarch]")
        .output()
        .expect("run taskbot")
}

/// `args` is refused with status 2, an error saying `expected` and no output.
fn refused(args: &[&str], expected: &str) {
    let out = taskbot(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
    assert!(stderr.contains(expected), "{args:?}: {stderr}");
    assert!(out.stdout.is_empty(), "{args:?}");
}

const SUBMIT: &[&str] = &[
    "submit",
    "--task",
    "t",
    "--repo",
    "file:///srv/t",
    "--item",
    "i",
];

fn submit(extra: &[&str]) -> Vec<String> {
    SUBMIT.iter().chain(extra).map(|s| s.to_string()).collect()
}

#[test]
fn submit_refuses_an_arch_the_deployment_does_not_run() {
    let args = submit(&["--arch", "x86_64,s390x"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    refused(&args, "\"s390x\" is not an arch of this deployment");
    refused(&args, "x86_64, noarch");
}

#[test]
fn commands_refuse_bad_arguments_with_status_2() {
    let arg = submit(&["--arg", "novalue"]);
    let arg: Vec<&str> = arg.iter().map(String::as_str).collect();
    refused(&arg, "is not KEY=VALUE");
    refused(&["dlq", "purge", "--queue", "rules"], "--yes");
    refused(&["dlq", "retry", "--queue", "bridge"], "fedmsg-bridge");
    let replay = ["replay", "--datagrepper", "http://127.0.0.1:1"];
    let times = |since: &'static str, until: &'static str| {
        let mut args = replay.to_vec();
        args.extend(["--since", since, "--until", until]);
        args
    };
    refused(
        &times("yesterday", "1772355600"),
        "--since: \"yesterday\" is not a time",
    );
    refused(
        &times("1772359200", "1772355600"),
        "--since is after --until",
    );
    let api = ["--api", "http://127.0.0.1:1"];
    refused(
        &[&["results", "--outcome", "FAILED,GREAT"][..], &api].concat(),
        "GREAT",
    );
    refused(
        &[&["job", "not-a-job"][..], &api].concat(),
        "is not a job id",
    );
    refused(
        &["results", "--api", "127.0.0.1:8080"],
        "is not an http:// or https:// URL",
    );
    refused(
        &["status", "--api", "ftp://h"],
        "is not an http:// or https:// URL",
    );
}

#[test]
fn clap_usage_errors_are_status_2_too() {
    refused(&["bogus"], "unrecognized subcommand");
    refused(&["submit", "--task", "t"], "--repo");
    refused(&["results", "--limit", "0"], "--limit");
    refused(&["gate", "xchat-1-1.fc40"], "--testcase");
}
