//! The shipped upgrade-tests task through the shipped rule, in real Debian VMs (the image of
//! scripts/build-debian-vm-image.sh, Debian 12, real systemd and cloud-init, under TCG): a fedup
//! update submitted to testing gets one job per configuration; the n-1-minimal one upgrades its
//! VM with apt from a local APT repository (scripts/build-upgrade-repo.sh: Debian 13's real
//! base-files), is rebooted by the runner, and checks the booted release and its services.
//! An update to release 14, whose repository holds nothing newer, is FAILED after the reboot:
//! the VM still boots Debian 12. The configurations without an image in the catalogue are
//! CRASHED saying so.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use taskbot::config::VmImageConfig;
use taskbot_tests::debian_vm::{debian_vm_image, debian_vm_image_entry};
use taskbot_tests::rpms::HttpServer;
use taskbot_tests::shipped::{fixture_event, send_event};
use taskbot_tests::{free_port, shipped_task, workspace_root, Deployment};

const TESTCASE: &str = "dist.upgrade-tests";

/// The local APT repository: suite trixie (13) with Debian 13's base-files, suite forky (14)
/// with nothing. Cached beside the Debian image.
fn upgrade_repo() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join("taskbot-upgrade-repo");
    let script = workspace_root().join("scripts/build-upgrade-repo.sh");
    for args in [&["trixie"][..], &["forky", "-"][..]] {
        let status = Command::new("bash")
            .arg(&script)
            .arg(&dir)
            .args(args)
            .status()
            .unwrap();
        assert!(status.success(), "{} {args:?} failed", script.display());
    }
    dir
}

/// The shipped rules, the upgrade-tests task, the VM backend with the Debian image as the
/// catalogue's `upgrade-n-1-minimal` (the other two configurations have no image), one x86_64
/// runner whose tasks get the repository, the reporter.
async fn deployment(staging: &Path, repo_url: &str) -> Deployment {
    let image = debian_vm_image();
    let task = shipped_task("upgrade-tests", staging);
    let rules = std::fs::read_to_string(workspace_root().join("deploy/rules.yaml")).unwrap();
    let mut d = Deployment::new(&rules, &[("upgrade-tests", task.as_path())], free_port()).await;
    d.set_arches(&["x86_64", "aarch64", "noarch"]);
    let entry = VmImageConfig {
        flavour: "upgrade-n-1-minimal".into(),
        ..debian_vm_image_entry("debian-12-minimal", &image)
    };
    let mut vm = taskbot::testing::tiny_vm_backend(&image, &d.dir.path().join("vms"), vec![entry]);
    vm.memory_mb = 768;
    vm.max_vms = 2;
    vm.boot_timeout_secs = 600;
    vm.lease_secs = 2400;
    d.configure(|config| {
        config.runner.vm_ssh_key = vm.ssh_key.clone();
        config.provisioner.vm = Some(vm);
        config.runner.task_timeout_secs = 2400;
        for (key, value) in [("UPGRADE_REPO_URL", repo_url), ("UPGRADE_APT_TRUSTED", "1")] {
            config.runner.task_env.insert(key.into(), value.into());
        }
    });
    taskbot_tests::vm::start_vm_pipeline(&mut d).await;
    d
}

/// The seed's fedup update submitted to testing, as an update of `release`.
async fn fedup_update(d: &Deployment, alias: &str, release: &str) {
    let mut event = fixture_event("bodhi-request-testing-fedup.json");
    event.msg["update"]["alias"] = alias.into();
    event.msg["update"]["release"]["version"] = release.into();
    send_event(d, &event).await;
}

/// (scenario, outcome, note) of every final upgrade-tests result of `item`, once `count` are in.
async fn results(d: &Deployment, item: &str, count: i64) -> Vec<(String, String, String)> {
    let sql = format!(
        "select count(*) from results where testcase = '{TESTCASE}' and item = '{item}' \
         and outcome not in ('QUEUED', 'RUNNING')"
    );
    let n = d
        .wait_for_count(&sql, count, Duration::from_secs(1500))
        .await;
    assert_eq!(n, count, "results of {item}\n{}", d.logs());
    d.db()
        .await
        .query(
            "select coalesce(data->>'scenario', ''), outcome, coalesce(note, '') from results \
             where testcase = $1 and item = $2 and outcome not in ('QUEUED', 'RUNNING') order by 1",
            &[&TESTCASE, &item],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_reboots_into_the_new_release_and_one_that_stays_on_the_old_is_failed() {
    let repo = upgrade_repo();
    // The VM reaches the host's loopback at 10.0.2.2 (QEMU's user networking).
    let server = HttpServer::start(&repo);
    let port = server.url.rsplit(':').next().unwrap();
    let staging = tempfile::tempdir().unwrap();
    let d = deployment(staging.path(), &format!("http://10.0.2.2:{port}")).await;
    fedup_update(&d, "FEDORA-2026-up13", "13").await;
    fedup_update(&d, "FEDORA-2026-up14", "14").await;

    let to_13 = results(&d, "FEDORA-2026-up13", 3).await;
    let (scenario, outcome, note) = &to_13[0];
    assert_eq!(scenario, "n-1-minimal");
    assert_eq!(
        (outcome.as_str(), note.as_str()),
        (
            "PASSED",
            "upgraded Debian 12 (bookworm) to Debian 13 (trixie) and rebooted: systemd running, \
             no failed unit, ssh active"
        ),
        "{}",
        d.logs()
    );
    for (scenario, outcome, note) in &to_13[1..] {
        assert_eq!(outcome, "CRASHED", "{scenario}: {note}");
        assert!(
            note.contains(&format!("flavour=upgrade-{scenario}")),
            "{scenario}: {note}"
        );
    }
    let to_14 = results(&d, "FEDORA-2026-up14", 3).await;
    let (scenario, outcome, note) = &to_14[0];
    assert_eq!(scenario, "n-1-minimal");
    assert_eq!(outcome, "FAILED", "{note}\n{}", d.logs());
    assert_eq!(
        note,
        "upgraded Debian 12 (bookworm), but the VM booted Debian 12 (bookworm) after the \
         upgrade, not release 14"
    );
    // The upgrade's log came back, with the release before and after the reboot.
    let job_id: uuid::Uuid = d
        .db()
        .await
        .query_one(
            "select job_id from results where item = 'FEDORA-2026-up13' and outcome = 'PASSED'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let log_path = d
        .config
        .runner
        .artifacts_dir
        .join(job_id.to_string())
        .join("upgrade.log");
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        log.contains("upgrading Debian 12 (bookworm) to release 13"),
        "{log}"
    );
    assert!(
        log.contains("after the reboot: Debian 13 (trixie)"),
        "{log}"
    );
    d.shutdown().await;
}
