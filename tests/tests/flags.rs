//! The flags and configuration checks every service binary shares, through the real binaries:
//! `--ops-listen` reaches each service's own `ops_listen` key, and a configuration a service
//! refuses at start exits with status 2 and names the key. Neither needs a broker: both fail
//! before a service connects.

use std::io::Read as _;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use taskbot::Service;
use taskbot_tests::binary;

/// Run `service` with `args` until it exits: its status and stderr. One that is still running
/// after 20 s (it got past its checks and started) is killed, and the test fails.
fn run(service: Service, args: &[&str]) -> (ExitStatus, String) {
    let mut child = Command::new(binary(service.name()))
        .args(args)
        .env_remove("TASKBOT_CONFIG")
        .env_remove("TASKBOT_RUNNER__ARCH")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the service");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{service} {args:?} did not exit: it started instead of refusing");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    let _ = child.stderr.take().unwrap().read_to_string(&mut stderr);
    (status, stderr)
}

#[test]
fn ops_listen_flag_sets_each_services_ops_address() {
    for service in Service::ALL {
        if service.ops_listen_key().is_none() {
            continue;
        }
        // Well-formed, but not an address of this host (TEST-NET-1): it cannot be listened on.
        let mut args = vec!["--ops-listen", "192.0.2.1:1"];
        if service == Service::Runner {
            args.extend(["--arch", "x86_64"]);
        }
        let (status, text) = run(service, &args);
        assert_eq!(status.code(), Some(1), "{service}: {text}");
        assert!(
            text.contains(&format!("{service}: cannot listen on 192.0.2.1:1")),
            "{service}: {text}"
        );
    }
}

/// A malformed flag is a usage error: status 2 with the flag and the value named, before the
/// service does anything (clap's own usage errors are status 2 as well).
#[test]
fn malformed_flags_are_usage_errors() {
    for service in Service::ALL {
        let mut args = vec!["--ops-listen", "nowhere:x"];
        if service == Service::Api {
            args = vec!["--listen", "8080"];
        }
        if service == Service::Runner {
            args.extend(["--arch", "x86_64"]);
        }
        let (status, text) = run(service, &args);
        assert_eq!(status.code(), Some(2), "{service} {args:?}: {text}");
        assert!(text.contains("is not HOST:PORT"), "{service}: {text}");
        let (status, text) = run(service, &["--no-such-flag"]);
        assert_eq!(status.code(), Some(2), "{service}: {text}");
    }
    for (service, args, expected) in [
        (
            Service::Runner,
            &["--arch", "x86 64"][..],
            "runner.arch (--arch): \"x86 64\"",
        ),
        (Service::Runner, &["--arch", "run.*"], "is not an arch name"),
        (
            Service::Bridge,
            &["--endpoint", "hub.example:9940"],
            "is not a ZeroMQ endpoint",
        ),
        (
            Service::Reporter,
            &["--resultsdb-url", "rdb:5001"],
            "--resultsdb-url",
        ),
        (
            Service::Reporter,
            &["--postgres-url", "localhost"],
            "--postgres-url",
        ),
    ] {
        let (status, text) = run(service, args);
        assert_eq!(status.code(), Some(2), "{service} {args:?}: {text}");
        assert!(text.contains(expected), "{service} {args:?}: {text}");
    }
}

#[test]
fn a_runner_without_an_arch_is_a_bad_configuration() {
    let (status, text) = run(Service::Runner, &[]);
    assert_eq!(status.code(), Some(2), "{text}");
    assert!(
        text.contains("runner: invalid configuration:\nrunner.arch: not set"),
        "{text}"
    );
}

/// A service's log written to a file (as `make run`, systemd or a container keeps it) is plain
/// text: no terminal colour codes, whatever the terminal the service was started from.
#[test]
fn logs_written_to_a_file_carry_no_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("provisioner.log");
    let log = std::fs::File::create(&path).unwrap();
    let status = Command::new(binary(Service::Provisioner.name()))
        .args(["--ops-listen", "192.0.2.1:1"])
        .env_remove("TASKBOT_CONFIG")
        .env_remove("NO_COLOR")
        .env("TERM", "xterm-256color")
        .env("LOG_FORMAT", "text")
        .stdout(Stdio::null())
        .stderr(log)
        .status()
        .expect("run the provisioner");
    assert_eq!(status.code(), Some(1));
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("ERROR"), "it logged: {text}");
    assert!(!text.contains('\u{1b}'), "colour codes in {text:?}");
}
