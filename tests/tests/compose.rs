//! `compose.yaml` stays valid: checked with Debian's docker-compose (no Docker engine is needed
//! for `config`), which `make test` installs.

use std::process::Command;

use taskbot_tests::workspace_root;

fn compose(args: &[&str]) -> std::process::Output {
    Command::new("docker-compose")
        .arg("-f")
        .arg(workspace_root().join("compose.yaml"))
        .args(args)
        .output()
        .expect("docker-compose is installed (scripts/ensure-services.sh installs it)")
}

#[test]
fn compose_file_is_valid_and_has_every_service() {
    let check = compose(&["config", "-q"]);
    assert!(
        check.status.success(),
        "docker-compose config refused compose.yaml:\n{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let listed = compose(&["config", "--services"]);
    let services = String::from_utf8_lossy(&listed.stdout);
    let mut services: Vec<&str> = services.lines().collect();
    services.sort();
    assert_eq!(
        services,
        [
            "api",
            "fedmsg-bridge",
            "fedora-messaging-bridge",
            "postgres",
            "provisioner",
            "rabbitmq",
            "reporter",
            "rules",
            "runner-aarch64",
            "runner-noarch",
            "runner-x86_64",
            "setup-users"
        ]
    );
}
