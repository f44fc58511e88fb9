//! Destructive tasks through the whole pipeline in disposable VMs (real QEMU under TCG, the tiny
//! guest of scripts/build-tiny-vm-image.sh): the provisioner boots a VM on an overlay, the runner
//! runs the task in it over SSH (the task wipes the VM's disk), the result comes back with the
//! task's artifacts, and the VM and its overlay are gone once the job ended, the base disk
//! unchanged. Three jobs at a capacity of one VM run one after another, none lost.

use std::process::Command;
use std::time::{Duration, Instant};

use taskbot::config::ImageFile;
use taskbot::messages::{Event, Message};
use taskbot_tests::vm::{world, VmWorld};
use taskbot_tests::{free_port, workspace_root, Deployment};

const RULES: &str = r#"
tasks:
  wipe: { repo: wipe, ref: main }
rules:
  - name: wipe-in-a-vm
    when: { topic: org.taskbot.test.vm }
    do:
      - task: wipe
        item: "{{ msg.item }}"
        item_type: koji_build
        arches: [x86_64]
        environment: vm
        destructive: true
"#;

const TASK: &str = "name: wipe
description: Wipes the start of its machine's disk, then reports where it ran.
environment: { provision: vm, destructive: true }
run: sh ./check.sh
artifacts: [\"notes.txt\"]
";

const CHECK: &str = r#"set -e
uname -r > "$TASKBOT_ARTIFACTS/uname.txt"
echo "ran in $(pwd) as $(id -u)" > notes.txt
dd if=/dev/zero of=/dev/vda bs=1M count=4 2>/dev/null
cat > "$TASKBOT_RESULTS" <<EOF
results:
  - item: $TASKBOT_ITEM
    type: koji_build
    checkname: dist.wipe
    outcome: PASSED
    note: wiped /dev/vda on $(uname -r)
EOF
"#;

async fn vm_world(check: &str, lease_secs: u64) -> VmWorld {
    let staging = tempfile::tempdir().unwrap();
    let task = staging.path().join("wipe");
    std::fs::create_dir_all(&task).unwrap();
    std::fs::write(task.join("taskbot.yaml"), TASK).unwrap();
    std::fs::write(task.join("check.sh"), check).unwrap();
    world(RULES, &[("wipe", task.as_path())], staging, |vm| {
        vm.lease_secs = lease_secs;
    })
    .await
}

/// Publish an event as the bus would.
async fn publish(d: &Deployment, topic: &str, msg: serde_json::Value) {
    let event = event(topic, msg);
    let t = &d.broker.topology;
    d.broker
        .publish(&t.events_exchange(), &event.topic, event.to_json())
        .await;
}

/// (outcome, note, job id) of each result of `item`, by testcase.
/// Wait until the log of the job of `item` shows the task printed `line`.
async fn task_output(d: &Deployment, item: &str, line: &str, timeout: Duration) {
    let db = d.db().await;
    let row = db
        .query_one("select job_id from jobs where item = $1", &[&item])
        .await
        .unwrap();
    let job_id: uuid::Uuid = row.get(0);
    let log = d
        .config
        .runner
        .artifacts_dir
        .join(job_id.to_string())
        .join(taskbot::artifacts::TASK_LOG);
    let deadline = Instant::now() + timeout;
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.lines().any(|l| l == line) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the task never printed {line:?}:\n{text}\n{}",
            d.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn results_of(
    d: &Deployment,
    item: &str,
) -> std::collections::BTreeMap<String, (String, String, uuid::Uuid)> {
    let db = d.db().await;
    db.query(
        "select testcase, outcome, coalesce(note, ''), job_id from results where item = $1",
        &[&item],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3))))
    .collect()
}

fn vm_event(item: &str) -> Event {
    event("org.taskbot.test.vm", serde_json::json!({ "item": item }))
}

fn event(topic: &str, msg: serde_json::Value) -> Event {
    let id = format!("2026-vm-{}", uuid::Uuid::new_v4());
    taskbot::testing::event(&id, topic, msg)
}

/// Wait until no VM of the world is left (no lease, no QEMU, no overlay), or fail.
async fn no_vm_left(w: &VmWorld, within: Duration) {
    taskbot_tests::vm::no_vm_left(&w.state_dir, within, || w.d.logs()).await;
    assert_eq!(
        taskbot::testing::sha256_file(&w.base),
        w.base_sum,
        "the base disk changed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destructive_tasks_run_in_their_own_vms_one_at_a_time_which_are_destroyed_afterwards() {
    let guest_kernel =
        std::fs::read_to_string(taskbot::testing::tiny_vm_image().join("kernel")).unwrap();
    let w = vm_world(CHECK, 600).await;
    let d = &w.d;
    let state_dir = &w.state_dir;
    let t = d.broker.topology.clone();
    for n in 1..=3 {
        let event = vm_event(&format!("wipe-{n}.0-1.fc40"));
        d.broker
            .publish(&t.events_exchange(), &event.topic, event.to_json())
            .await;
    }
    // Never more than the one VM allowed, while the three jobs go through.
    let leases = state_dir.join("leases");
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut most_vms = 0;
    loop {
        let vms = std::fs::read_dir(&leases).map(|d| d.count()).unwrap_or(0);
        most_vms = most_vms.max(vms);
        let db = d.db().await;
        let done: i64 = db
            .query_one("select count(*) from results where item like 'wipe-%'", &[])
            .await
            .unwrap()
            .get(0);
        if done == 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{done} of 3 results\n{}",
            d.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(most_vms, 1, "capacity 1 was not respected");
    let db = d.db().await;
    let passed: i64 = db
        .query_one(
            "select count(*) from results where item like 'wipe-%' and outcome = 'PASSED'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(passed, 3, "{}", d.logs());
    // The second and third waited for the VM in use.
    assert!(d.logs().contains("all 1 VMs are in use"), "{}", d.logs());
    let db = d.db().await;
    let row = db
        .query_one(
            "select outcome, note, job_id from results where item = 'wipe-2.0-1.fc40'",
            &[],
        )
        .await
        .unwrap();
    let (outcome, note, job_id): (String, String, uuid::Uuid) =
        (row.get(0), row.get(1), row.get(2));
    let guest_version = guest_kernel.trim().trim_start_matches("linux-image-");
    assert_eq!(outcome, "PASSED", "{note}\n{}", d.logs());
    assert_eq!(note, format!("wiped /dev/vda on {guest_version}"));
    // The task's artifacts came back from the VM.
    let artifacts = d.config.runner.artifacts_dir.join(job_id.to_string());
    assert_eq!(
        std::fs::read_to_string(artifacts.join("uname.txt"))
            .unwrap()
            .trim(),
        guest_version
    );
    assert!(std::fs::read_to_string(artifacts.join("notes.txt"))
        .unwrap()
        .starts_with("ran in /var/tmp/taskbot/job as 0"));
    let states: Vec<String> = db
        .query(
            "select state from job_events where job_id = $1 order by at",
            &[&job_id],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(states.contains(&"provisioned".to_string()), "{states:?}");
    // The second job waited for the VM in use, yet announced its provisioning once.
    assert_eq!(
        states.iter().filter(|s| *s == "provisioning").count(),
        1,
        "{states:?}"
    );
    assert_eq!(
        states.last().map(String::as_str),
        Some("done"),
        "{states:?}"
    );

    // Once the jobs ended, their VMs are destroyed: no lease, no overlay, no QEMU; the base
    // intact.
    no_vm_left(&w, Duration::from_secs(30)).await;
    w.d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_vm_of_a_runner_killed_mid_task_is_reaped_when_its_lease_runs_out() {
    // A task that would run for ten minutes; the lease is 20 s.
    let mut w = vm_world("echo started; sleep 600\n", 20).await;
    let t = w.d.broker.topology.clone();
    let event = vm_event("sleepy-1.0-1.fc40");
    w.d.broker
        .publish(&t.events_exchange(), &event.topic, event.to_json())
        .await;
    let running =
        w.d.wait_for_count(
            "select count(*) from jobs where item = 'sleepy-1.0-1.fc40' and state = 'running'",
            1,
            Duration::from_secs(120),
        )
        .await;
    assert_eq!(running, 1, "{}", w.d.logs());
    assert_eq!(
        std::fs::read_dir(w.state_dir.join("leases"))
            .unwrap()
            .count(),
        1
    );
    // The runner dies mid-task: no final status will ever come for this job.
    let runner =
        w.d.services
            .iter_mut()
            .find(|s| s.name == "runner-x86_64")
            .unwrap();
    runner.kill_hard();
    // The reaper destroys the VM once its lease ran out (20 s after boot, checked every 5 s).
    no_vm_left(&w, Duration::from_secs(60)).await;
    assert!(w.d.logs().contains("VM reaped"), "{}", w.d.logs());
    w.d.shutdown().await;
}

/// A runner killed mid-task hands its job back (unacked); the runner that gets it next finds the
/// job's VM used and ends the job CRASHED rather than run it twice in one VM; the final status
/// destroys the VM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_redelivered_onto_its_used_vm_is_crashed_and_the_vm_destroyed() {
    let mut w = vm_world("echo started; sleep 600\n", 600).await;
    let item = "twice-1.0-1.fc40";
    publish(
        &w.d,
        "org.taskbot.test.vm",
        serde_json::json!({ "item": item }),
    )
    .await;
    let running = format!("select count(*) from jobs where item = '{item}' and state = 'running'");
    let count =
        w.d.wait_for_count(&running, 1, Duration::from_secs(120))
            .await;
    assert_eq!(count, 1, "{}", w.d.logs());
    // Killed only once the task runs in the VM (the VM is claimed when the clone is copied in,
    // after the `running` status): a runner killed before that leaves the VM unused.
    task_output(&w.d, item, "started", Duration::from_secs(60)).await;
    let runner =
        w.d.services
            .iter_mut()
            .find(|s| s.name == "runner-x86_64")
            .unwrap();
    runner.kill_hard();
    w.d.start("runner-x86_64-again", "runner", &["--arch", "x86_64"]);
    let crashed = format!("select count(*) from results where item = '{item}'");
    let count =
        w.d.wait_for_count(&crashed, 1, Duration::from_secs(120))
            .await;
    assert_eq!(count, 1, "{}", w.d.logs());
    let results = results_of(&w.d, item).await;
    let (outcome, note, _) = results.values().next().unwrap();
    assert_eq!(outcome, "CRASHED", "{note}");
    assert!(
        note.contains("already used by an earlier attempt of this job"),
        "{note}"
    );
    no_vm_left(&w, Duration::from_secs(30)).await;
    w.d.shutdown().await;
}

/// "Test ISO built → installation tests", through the shipped rules (deploy/rules.yaml): Bodhi
/// pushes an anaconda update to testing; the shipped task build-iso packs the operator's
/// installer (the tiny guest, `INSTALLER_DIR`) into a bootable ISO and announces it; the rules
/// schedule install-tests on it; the provisioner fetches the ISO from the api, boots it in a
/// blank VM with an empty disk; the installer writes a system to the disk, and install-tests,
/// run in that VM, finds the build there and runs the installed system's own programs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_iso_built_by_a_task_is_installed_into_a_blank_vm_and_the_installation_checked() {
    let staging = tempfile::tempdir().unwrap();
    let build_iso = taskbot_tests::shipped_task("build-iso", staging.path());
    let install_tests = taskbot_tests::shipped_task("install-tests", staging.path());
    let shipped = std::fs::read_to_string(workspace_root().join("deploy/rules.yaml")).unwrap();
    let w = world(
        &shipped,
        &[
            ("build-iso", build_iso.as_path()),
            ("install-tests", install_tests.as_path()),
        ],
        staging,
        |_| {},
    )
    .await;
    let d = &w.d;
    let item = "anaconda-30.25.6-1.fc30";
    let fixture: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            workspace_root().join("tests/fixtures/messages/bodhi-complete-testing-anaconda.json"),
        )
        .unwrap(),
    )
    .unwrap();
    publish(
        d,
        fixture["topic"].as_str().unwrap(),
        fixture["msg"].clone(),
    )
    .await;
    // (The example check every build of an update gets waits on the noarch queue: no runner.)
    let both = format!(
        "select count(*) from results where item = '{item}' \
         and testcase in ('dist.build-iso', 'dist.install-tests')"
    );
    assert_eq!(
        d.wait_for_count(&both, 2, Duration::from_secs(300)).await,
        2,
        "{}",
        d.logs()
    );
    let results = results_of(d, item).await;
    let (outcome, note, iso_job) = &results["dist.build-iso"];
    assert_eq!(outcome, "PASSED", "{note}\n{}", d.logs());
    let iso = d
        .config
        .runner
        .artifacts_dir
        .join(iso_job.to_string())
        .join("install.iso");
    let iso_sum = taskbot::testing::sha256_file(&iso);
    assert!(note.ends_with(&iso_sum), "{note}");
    let (outcome, note, install_job) = &results["dist.install-tests"];
    assert_eq!(outcome, "PASSED", "{note}\n{}", d.logs());
    assert_eq!(
        note,
        &format!("{item} installed to /dev/vda: Taskbot tiny guest runs")
    );
    let release = d
        .config
        .runner
        .artifacts_dir
        .join(install_job.to_string())
        .join("taskbot-release");
    assert!(std::fs::read_to_string(release)
        .unwrap()
        .starts_with(&format!("item={item}\n")));
    // The provisioner fetched the ISO over HTTP into its cache, checked against its SHA-256.
    let cached: Vec<String> = std::fs::read_dir(w.state_dir.join("cache"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(cached, [format!("{iso_sum}-install.iso")]);
    let db = d.db().await;
    let provisioning: String = db
        .query_one(
            "select coalesce(detail, '') from job_events where job_id = $1 and state = 'provisioning'",
            &[install_job],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        provisioning,
        "starting a VM: a blank 4096 MiB disk and the ISO"
    );
    // The failing case: a build-iso job of another build announces an ISO that installs this
    // one (the event as the runner publishes it, stamped with that job), and install-tests finds
    // the installed build is not its item. (An event without the runner's stamp triggers
    // nothing: services/rules/tests/seed_rules.rs.)
    no_vm_left(&w, Duration::from_secs(60)).await;
    let other = "anaconda-31.0-1.fc31";
    let iso_url = format!(
        "{}/{iso_job}/install.iso",
        d.config.runner.artifacts_url.as_deref().unwrap()
    );
    publish(
        d,
        "taskbot.task.iso.built",
        serde_json::json!({
            "item": other, "arch": "x86_64", "job_id": iso_job.to_string(),
            "iso": { "url": iso_url, "sha256": iso_sum },
            "taskbot": {
                "task": "build-iso", "job_id": iso_job.to_string(), "item": other,
                "item_type": "koji_build", "arch": "x86_64",
            },
        }),
    )
    .await;
    let failed = format!("select count(*) from results where item = '{other}'");
    assert_eq!(
        d.wait_for_count(&failed, 1, Duration::from_secs(300)).await,
        1,
        "{}",
        d.logs()
    );
    let (outcome, note, _) = &results_of(d, other).await["dist.install-tests"];
    assert_eq!(outcome, "FAILED", "{note}");
    assert_eq!(note, &format!("/dev/vda holds {item}, not {other}"));
    no_vm_left(&w, Duration::from_secs(30)).await;
    w.d.shutdown().await;
}

const SMOKE_RULES: &str = r#"
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
          image: { distro: tiny, release: "{{ msg.release }}", flavour: base }
"#;

/// Cloud image spawning and testing: a compose-finished event makes the shipped task
/// cloud-smoke run in a VM of the newest matching catalogue image (of three: an older build, the
/// newest, served over HTTP by URL and SHA-256, and another flavour), which took its hostname
/// and key from its cloud-init seed; each smoke check is a result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compose_gets_smoke_tests_in_a_vm_of_the_newest_matching_catalogue_image() {
    let staging = tempfile::tempdir().unwrap();
    let smoke = taskbot_tests::shipped_task("cloud-smoke", staging.path());
    // The newest image's disk, served over HTTP from its own directory.
    let served = tempfile::tempdir().unwrap();
    let disk = served.path().join("tiny-new.qcow2");
    taskbot::testing::blank_disk(&disk, "32M");
    let disk_sum = taskbot::testing::sha256_file(&disk);
    let port = free_port();
    let server = Command::new("python3")
        .args([
            "-m",
            "http.server",
            "--bind",
            "127.0.0.1",
            &port.to_string(),
        ])
        .current_dir(served.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let _server = KillOnDrop(server);
    let w = world(
        SMOKE_RULES,
        &[("cloud-smoke", smoke.as_path())],
        staging,
        |vm| {
            let base = vm.images[0].clone();
            let entry = |name: &str, built: &str, flavour: &str| {
                let mut entry = base.clone();
                entry.name = name.into();
                entry.built = built.into();
                entry.flavour = flavour.into();
                entry.append = format!("{} taskbot.image={name}", base.append);
                entry
            };
            let mut newest = entry("tiny-new", "2026-11-20", "base");
            newest.disk = ImageFile::Url {
                url: format!("http://127.0.0.1:{port}/tiny-new.qcow2"),
                sha256: disk_sum.clone(),
            };
            vm.images = vec![
                entry("tiny-old", "2026-01-10", "base"),
                newest,
                entry("tiny-server", "2026-11-25", "server"),
            ];
        },
    )
    .await;
    let d = &w.d;
    let compose = "Tiny-1-20261127.0";
    publish(
        d,
        "org.taskbot.test.compose.finished",
        serde_json::json!({ "compose": compose, "release": "1" }),
    )
    .await;
    let all = format!("select count(*) from results where item = '{compose}'");
    // The tiny guest has neither cloud-init nor systemd: no cloud-init or services check.
    let count = d.wait_for_count(&all, 4, Duration::from_secs(240)).await;
    assert_eq!(count, 4, "{}", d.logs());
    let results = results_of(d, compose).await;
    for check in ["hostname", "user", "disk", "network"] {
        let (outcome, note, _) = &results[&format!("dist.cloud-smoke.{check}")];
        assert_eq!(outcome, "PASSED", "{check}: {note}\n{}", d.logs());
    }
    let (_, note, job_id) = &results["dist.cloud-smoke.hostname"];
    assert_eq!(
        note,
        &format!(
            "hostname taskbot-{}, from the seed",
            &job_id.simple().to_string()[..8]
        )
    );
    assert_eq!(
        results["dist.cloud-smoke.user"].1,
        "root has the seed's 1 key(s) in /root/.ssh/authorized_keys"
    );
    assert!(
        results["dist.cloud-smoke.disk"].1.ends_with(": 32 MiB"),
        "{results:?}"
    );
    // It ran in the newest matching image: the one whose disk was downloaded.
    let cmdline = std::fs::read_to_string(
        d.config
            .runner
            .artifacts_dir
            .join(job_id.to_string())
            .join("cmdline.txt"),
    )
    .unwrap();
    assert!(cmdline.contains("taskbot.image=tiny-new"), "{cmdline}");
    assert!(w
        .state_dir
        .join("cache")
        .join(format!("{disk_sum}-tiny-new.qcow2"))
        .is_file());
    no_vm_left(&w, Duration::from_secs(30)).await;
    w.d.shutdown().await;
}

/// A child process stopped when the test ends, also when it fails.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
