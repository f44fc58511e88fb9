//! Cloud image spawning and testing with a real distribution: a compose-finished event makes the
//! shipped task cloud-smoke run in a VM of the Debian image of scripts/build-debian-vm-image.sh
//! (systemd, openssh-server, the real cloud-init), through rules, provisioner (VM backend, QEMU
//! under TCG), runner and reporter. cloud-init applies the provisioner's real NoCloud seed; the
//! task checks what it did. One VM boot per case.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use taskbot::config::VmImageConfig;
use taskbot::messages::{Event, Message};
use taskbot_tests::debian_vm::{debian_vm_image, debian_vm_image_entry, image_fact};
use taskbot_tests::{free_port, shipped_task, Deployment};

const RULES: &str = r#"
tasks:
  cloud-smoke: { repo: cloud-smoke }
rules:
  - name: cloud-smoke-on-compose
    when: { topic: org.taskbot.test.compose.finished }
    do:
      - task: cloud-smoke
        item: "{{ msg.compose }}"
        item_type: compose
        arches: [x86_64]
        environment: vm
        vm:
          image: { distro: debian, release: "{{ msg.release }}", flavour: cloud }
"#;

/// The checks cloud-smoke reports in a systemd image with cloud-init.
const CHECKS: [&str; 6] = [
    "cloud-init",
    "hostname",
    "user",
    "disk",
    "network",
    "services",
];

/// How long a Debian VM may take to be ready (SSH, then cloud-init done) under TCG on a loaded
/// machine: 2.5 to 3.5 minutes were measured on the 2-core development machine.
const BOOT_TIMEOUT_SECS: u64 = 480;

/// A deployment (rules, provisioner with the VM backend and `image` as its one catalogue image,
/// one x86_64 runner, reporter) running the shipped cloud-smoke.
struct SmokeWorld {
    d: Deployment,
    state_dir: PathBuf,
    _staging: tempfile::TempDir,
}

async fn smoke_world(image_dir: &Path, image: VmImageConfig) -> SmokeWorld {
    let staging = tempfile::tempdir().unwrap();
    let smoke = shipped_task("cloud-smoke", staging.path());
    let mut d = Deployment::new(RULES, &[("cloud-smoke", smoke.as_path())], free_port()).await;
    let state_dir = d.dir.path().join("vms");
    let mut vm = taskbot::testing::tiny_vm_backend(image_dir, &state_dir, vec![image]);
    vm.memory_mb = 768;
    vm.boot_timeout_secs = BOOT_TIMEOUT_SECS;
    d.configure(|config| {
        config.runner.vm_ssh_key = vm.ssh_key.clone();
        config.runner.task_timeout_secs = 300;
        config.provisioner.vm = Some(vm);
    });
    taskbot_tests::vm::start_vm_pipeline(&mut d).await;
    SmokeWorld {
        d,
        state_dir,
        _staging: staging,
    }
}

/// What one smoke run gave: (outcome, note) by check, its job, and how long the VM took from
/// the `provisioning` status to `provisioned` (boot → SSH and cloud-init ready).
struct Run {
    results: BTreeMap<String, (String, String)>,
    job_id: uuid::Uuid,
    boot_to_ready: chrono::Duration,
}

/// Announce a finished compose of `release` and wait for cloud-smoke's results on it.
async fn smoke(w: &SmokeWorld, compose: &str, release: &str) -> Run {
    let d = &w.d;
    let started = Instant::now();
    let event: Event = taskbot::testing::event(
        &format!("2026-smoke-{}", uuid::Uuid::new_v4()),
        "org.taskbot.test.compose.finished",
        serde_json::json!({ "compose": compose, "release": release }),
    );
    let t = &d.broker.topology;
    d.broker
        .publish(&t.events_exchange(), &event.topic, event.to_json())
        .await;
    let all = format!("select count(*) from results where item = '{compose}'");
    let timeout = Duration::from_secs(BOOT_TIMEOUT_SECS + 300);
    let count = d.wait_for_count(&all, CHECKS.len() as i64, timeout).await;
    assert_eq!(count, CHECKS.len() as i64, "{}", d.logs());
    let db = d.db().await;
    let rows = db
        .query(
            "select testcase, outcome, coalesce(note, ''), job_id from results where item = $1",
            &[&compose],
        )
        .await
        .unwrap();
    let job_id: uuid::Uuid = rows[0].get(3);
    let results: BTreeMap<String, (String, String)> = rows
        .iter()
        .map(|r| {
            let testcase: String = r.get(0);
            let check = testcase.trim_start_matches("dist.cloud-smoke.").to_string();
            (check, (r.get(1), r.get(2)))
        })
        .collect();
    let at = |state: &'static str| {
        let db = &db;
        async move {
            let row = db
                .query_one(
                    "select min(at) from job_events where job_id = $1 and state = $2",
                    &[&job_id, &state],
                )
                .await
                .unwrap();
            row.get::<_, chrono::DateTime<chrono::Utc>>(0)
        }
    };
    let boot_to_ready = at("provisioned").await - at("provisioning").await;
    for (check, (outcome, note)) in &results {
        eprintln!("{compose}: {check} {outcome}: {note}");
    }
    eprintln!(
        "{compose}: boot → ready {:.1} s, event → results {:.1} s",
        boot_to_ready.num_milliseconds() as f64 / 1000.0,
        started.elapsed().as_secs_f64()
    );
    Run {
        results,
        job_id,
        boot_to_ready,
    }
}

/// The artifact `name` of the run's job.
fn artifact(w: &SmokeWorld, run: &Run, name: &str) -> String {
    let path =
        w.d.config
            .runner
            .artifacts_dir
            .join(run.job_id.to_string())
            .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Wait until the world's VM is destroyed (no lease, no QEMU), or fail.
async fn no_vm_left(w: &SmokeWorld) {
    taskbot_tests::vm::no_vm_left(&w.state_dir, Duration::from_secs(60), || w.d.logs()).await;
}

/// The passing case: the Debian image's cloud-init applied the seed (the job's hostname, root's
/// key, password logins off) and had finished before the job started (the provisioner waits for
/// it: the task notes when it found cloud-init still running); its disk, network and services
/// are up; the task ran on the image's own kernel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_debian_image_passes_the_smoke_tests_with_its_real_cloud_init_applying_the_seed() {
    let image = debian_vm_image();
    let entry = debian_vm_image_entry("debian", &image);
    let release = entry.release.clone();
    let w = smoke_world(&image, entry).await;
    let compose = format!("Debian-{release}-20261201.0");
    let run = smoke(&w, &compose, &release).await;
    for check in CHECKS {
        let (outcome, note) = &run.results[check];
        assert_eq!(outcome, "PASSED", "{check}: {note}\n{:?}", run.results);
    }
    let note = |check: &str| run.results[check].1.as_str();
    assert_eq!(
        note("cloud-init"),
        "status done, datasource DataSourceNoCloud [seed=/dev/vdb][dsmode=net]"
    );
    let host = format!("taskbot-{}", &run.job_id.simple().to_string()[..8]);
    assert_eq!(note("hostname"), format!("hostname {host}, from the seed"));
    assert_eq!(
        note("user"),
        "root has the seed's 1 key(s) in /root/.ssh/authorized_keys; password logins off"
    );
    assert!(
        note("disk").starts_with("/ on /dev/vda (ext4, rw), /dev/vda: "),
        "{}",
        note("disk")
    );
    assert!(
        note("network").starts_with("10.0.2.15/24 on "),
        "{}",
        note("network")
    );
    assert_eq!(note("services"), "systemd: running, no failed unit");
    // The image's own kernel and command line booted.
    let kernel = image_fact(&image, "kernel");
    assert!(
        artifact(&w, &run, "uname.txt").contains(&format!(" {kernel} ")),
        "not {kernel}"
    );
    assert!(artifact(&w, &run, "cmdline.txt").contains("root=/dev/vda"));
    assert!(run.boot_to_ready > chrono::Duration::zero());
    no_vm_left(&w).await;
    w.d.shutdown().await;
}

/// The failing case: the same image registered with a kernel command line that gives cloud-init
/// Debian's default locale, en_US.UTF-8 (cloud-init's `cc: ... end_cc`), which this minimal
/// system has not generated and Debian's locale-gen does not generate on request: cloud-init's
/// locale module fails, as it did in the image before its build script set C.UTF-8. The task
/// reports cloud-init's own error; the seed was still applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_whose_cloud_init_fails_fails_the_smoke_test_naming_cloud_init_s_error() {
    let image = debian_vm_image();
    let mut entry = debian_vm_image_entry("debian-en-us", &image);
    entry.append = format!("{} cc: locale: en_US.UTF-8 end_cc", entry.append);
    let release = entry.release.clone();
    let w = smoke_world(&image, entry).await;
    let compose = format!("Debian-{release}-20261202.0");
    let run = smoke(&w, &compose, &release).await;
    let (outcome, note) = &run.results["cloud-init"];
    assert_eq!(outcome, "FAILED", "{note}");
    assert!(
        note.starts_with("status error; datasource DataSourceNoCloud [seed=/dev/vdb]"),
        "{note}"
    );
    assert!(
        note.contains("('locale', ProcessExecutionError(")
            && note.contains("update-locale")
            && note.contains("LANG=en_US.UTF-8"),
        "{note}"
    );
    let (outcome, note) = &run.results["services"];
    assert_eq!(outcome, "FAILED", "{note}");
    assert_eq!(
        note,
        "systemd: degraded; failed units: cloud-config.service"
    );
    for check in ["hostname", "user", "disk", "network"] {
        let (outcome, note) = &run.results[check];
        assert_eq!(outcome, "PASSED", "{check}: {note}");
    }
    no_vm_left(&w).await;
    w.d.shutdown().await;
}
