//! A VM job on every arch through the whole pipeline, as kernel tests are run: one rule with
//! `arches: [x86_64, aarch64]`, `environment: vm`, makes a job per arch; the provisioner boots
//! each in a VM of its arch's catalogue image (x86_64 natively emulated, aarch64 under
//! `qemu-system-aarch64 -M virt`, both TCG, both the tiny guest of
//! scripts/build-tiny-vm-image.sh), the arch's runner runs the task over SSH, and the task checks
//! `uname -m` is the job's arch. A catalogue image labelled aarch64 that really is an x86_64
//! guest makes the same task FAIL, naming the machine it ran on.

use std::time::Duration;

use taskbot_tests::{free_port, Deployment};

const RULES: &str = r#"
tasks:
  whereami: { repo: whereami, ref: main }
rules:
  - name: on-every-arch
    when: { topic: org.taskbot.test.arches }
    do:
      - task: whereami
        item: "{{ msg.item }}"
        item_type: koji_build
        arches: [x86_64, aarch64]
        environment: vm
        destructive: true
  - name: in-a-mislabelled-image
    when: { topic: org.taskbot.test.mislabelled }
    do:
      - task: whereami
        item: "{{ msg.item }}"
        item_type: koji_build
        arches: [aarch64]
        environment: vm
        destructive: true
        vm: { image: { name: mislabelled } }
"#;

const TASK: &str = "name: whereami
description: Checks that its VM is a machine of the job's arch.
environment: { provision: vm, destructive: true }
run: sh ./check.sh
";

const CHECK: &str = r#"set -e
machine=$(uname -m)
if [ "$machine" = "$TASKBOT_ARCH" ]; then outcome=PASSED; else outcome=FAILED; fi
cat > "$TASKBOT_RESULTS" <<EOF
results:
  - item: $TASKBOT_ITEM
    type: koji_build
    checkname: dist.whereami
    outcome: $outcome
    note: the $TASKBOT_ARCH job ran on $machine
EOF
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_jobs_of_every_arch_run_in_a_vm_of_their_arch() {
    let x86 = taskbot::testing::tiny_vm_image();
    let arm = taskbot::testing::tiny_vm_image_aarch64();
    let staging = tempfile::tempdir().unwrap();
    let task = staging.path().join("whereami");
    std::fs::create_dir_all(&task).unwrap();
    std::fs::write(task.join("taskbot.yaml"), TASK).unwrap();
    std::fs::write(task.join("check.sh"), CHECK).unwrap();
    let mut d = Deployment::new(RULES, &[("whereami", task.as_path())], free_port()).await;
    d.set_arches(&["x86_64", "aarch64", "noarch"]);
    let base = d.dir.path().join("base.qcow2");
    taskbot::testing::blank_disk(&base, "64M");
    // The x86_64 guest under an aarch64 label, older than the real aarch64 image (which the
    // first rule's aarch64 job gets as the newest), booted by the PC emulator.
    let mut mislabelled = taskbot::testing::tiny_vm_image_entry("mislabelled", &x86, &base);
    mislabelled.arch = "aarch64".into();
    mislabelled.release = "0".into();
    mislabelled.qemu = Some("qemu-system-x86_64".into());
    let mut vm = taskbot::testing::tiny_vm_backend(
        &x86,
        &d.dir.path().join("vms"),
        vec![
            taskbot::testing::tiny_vm_image_entry("tiny", &x86, &base),
            taskbot::testing::tiny_vm_image_entry_aarch64("tiny-arm", &arm, &base),
            mislabelled,
        ],
    );
    vm.boot_timeout_secs = 180;
    d.configure(|config| {
        config.runner.vm_ssh_key = vm.ssh_key.clone();
        config.provisioner.vm = Some(vm);
    });
    d.start("reporter", "reporter", &[]);
    d.start("provisioner", "provisioner", &[]);
    d.start("rules", "rules", &[]);
    d.start("runner-x86_64", "runner", &["--arch", "x86_64"]);
    d.start("runner-aarch64", "runner", &["--arch", "aarch64"]);
    let t = d.broker.topology.clone();
    let queues = [
        t.rules_queue(),
        t.provisioner_queue(),
        t.run_queue("x86_64"),
        t.run_queue("aarch64"),
        t.postgres_results_queue(),
    ];
    d.wait_for_consumers(&queues, Duration::from_secs(60)).await;

    let started = std::time::Instant::now();
    d.publish_event(
        "org.taskbot.test.arches",
        serde_json::json!({ "item": "kernel-6.1-1.fc41" }),
    )
    .await;
    d.publish_event(
        "org.taskbot.test.mislabelled",
        serde_json::json!({ "item": "kernel-6.2-1.fc41" }),
    )
    .await;
    let sql = "select count(*) from results where testcase = 'dist.whereami'";
    let n = d.wait_for_count(sql, 3, Duration::from_secs(480)).await;
    assert_eq!(n, 3, "{n} of 3 results\n{}", d.logs());
    println!(
        "three VM jobs (x86_64, aarch64, the mislabelled image) at capacity 1: {:.1}s",
        started.elapsed().as_secs_f64()
    );

    let db = d.db().await;
    let rows = db
        .query(
            "select item, arch, outcome, note from results where testcase = 'dist.whereami' \
             order by item, arch",
            &[],
        )
        .await
        .unwrap();
    let got: Vec<(String, String, String, String)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    let row = |item: &str, arch: &str, outcome: &str, machine: &str| {
        let note = format!("the {arch} job ran on {machine}");
        (item.into(), arch.into(), outcome.into(), note)
    };
    assert_eq!(
        got,
        [
            row("kernel-6.1-1.fc41", "aarch64", "PASSED", "aarch64"),
            row("kernel-6.1-1.fc41", "x86_64", "PASSED", "x86_64"),
            row("kernel-6.2-1.fc41", "aarch64", "FAILED", "x86_64"),
        ],
        "{}",
        d.logs()
    );
    d.shutdown().await;
}
