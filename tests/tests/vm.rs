//! Destructive tasks through the whole pipeline in disposable VMs (real QEMU under TCG, the tiny
//! guest of scripts/build-tiny-vm-image.sh): the provisioner boots a VM on an overlay, the runner
//! runs the task in it over SSH (the task wipes the VM's disk), the result comes back with the
//! task's artifacts, and the VM and its overlay are gone once the job ended, the base disk
//! unchanged. Three jobs at a capacity of one VM run one after another, none lost.

use std::process::Command;
use std::time::{Duration, Instant};

use chrono::Utc;
use taskbot::config::VmBackendConfig;
use taskbot::messages::{Event, Message};
use taskbot_tests::{free_port, Deployment};

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

/// A deployment (rules, provisioner with the VM backend, one x86_64 runner, reporter) whose task
/// `wipe` runs `check` in a VM; with the state directory, the base disk and its checksum.
struct VmWorld {
    d: Deployment,
    state_dir: std::path::PathBuf,
    base: std::path::PathBuf,
    base_sum: String,
    _staging: tempfile::TempDir,
}

async fn vm_world(check: &str, lease_secs: u64) -> VmWorld {
    let image = taskbot::testing::tiny_vm_image();
    let staging = tempfile::tempdir().unwrap();
    let task = staging.path().join("wipe");
    std::fs::create_dir_all(&task).unwrap();
    std::fs::write(task.join("taskbot.yaml"), TASK).unwrap();
    std::fs::write(task.join("check.sh"), check).unwrap();

    let mut d = Deployment::new(RULES, &[("wipe", task.as_path())], free_port()).await;
    let base = d.dir.path().join("base.qcow2");
    taskbot::testing::blank_disk(&base, "64M");
    let base_sum = taskbot::testing::sha256_file(&base);
    let state_dir = d.dir.path().join("vms");
    d.configure(|config| {
        config.provisioner.vm = Some(VmBackendConfig {
            kernel: image.join("vmlinuz"),
            initrd: image.join("initrd.img"),
            base_disk: base.clone(),
            ssh_key: image.join("id_ed25519"),
            state_dir: state_dir.clone(),
            memory_mb: 384,
            max_vms: 1,
            boot_timeout_secs: 120,
            lease_secs,
            ..VmBackendConfig::default()
        });
    });
    d.start("reporter", "reporter", &[]);
    d.start("provisioner", "provisioner", &[]);
    d.start("rules", "rules", &[]);
    d.start("runner-x86_64", "runner", &["--arch", "x86_64"]);
    let t = d.broker.topology.clone();
    let queues = vec![
        t.rules_queue(),
        t.provisioner_queue(),
        t.run_queue("x86_64"),
        t.postgres_results_queue(),
        t.postgres_status_queue(),
        t.provisioner_finished_queue(),
    ];
    d.wait_for_consumers(&queues, Duration::from_secs(60)).await;
    VmWorld {
        d,
        state_dir,
        base,
        base_sum,
        _staging: staging,
    }
}

fn vm_event(item: &str) -> Event {
    Event {
        id: format!("2026-vm-{}", uuid::Uuid::new_v4()),
        topic: "org.taskbot.test.vm".into(),
        source: "test".into(),
        sent_at: None,
        received_at: Utc::now(),
        username: None,
        msg: serde_json::json!({ "item": item }),
    }
}

/// Wait until no VM of the world is left (no lease, no QEMU, no overlay), or fail.
async fn no_vm_left(w: &VmWorld, within: Duration) {
    let deadline = Instant::now() + within;
    let leases = w.state_dir.join("leases");
    while std::fs::read_dir(&leases).map(|d| d.count()).unwrap_or(0) > 0 {
        assert!(
            Instant::now() < deadline,
            "the VM was not destroyed\n{}",
            w.d.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let overlays: Vec<_> = std::fs::read_dir(w.state_dir.join("overlays"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(overlays.is_empty(), "{overlays:?}");
    let qemu = Command::new("pgrep")
        .args(["-f", &w.state_dir.display().to_string()])
        .output()
        .unwrap();
    assert!(qemu.stdout.is_empty(), "QEMU still runs");
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
        .starts_with("ran in /tmp/taskbot/job as 0"));
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
