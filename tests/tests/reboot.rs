//! A task that reboots its VM, through the whole pipeline (real QEMU under TCG, the tiny guest
//! with a persistent /var/tmp): a `reboot: true` step and a `$TASKBOT_REBOOT` request both bring
//! the same VM back (new boot id, same host key, the task's files kept) and the task goes on; a
//! VM that is not back within the reboot step's timeout is FAILED; one that comes back with
//! another host key, or a task asking for more reboots than `runner.vm_max_reboots`, is CRASHED.

use std::time::Duration;

use taskbot_tests::vm::{world, VmWorld};

const RULES: &str = r#"
tasks:
  reboots: { repo: reboots, ref: main }
  quick-reboot: { repo: quick-reboot, ref: main }
rules:
  - name: reboots
    when: { topic: org.taskbot.test.reboot }
    do:
      - { task: reboots, item: "{{ msg.item }}", item_type: koji_build, arches: [x86_64],
          environment: vm, destructive: true }
  - name: quick-reboot
    when: { topic: org.taskbot.test.quick-reboot }
    do:
      - { task: quick-reboot, item: "{{ msg.item }}", item_type: koji_build, arches: [x86_64],
          environment: vm, destructive: true }
"#;

/// The task: note the boot id, reboot (the step's own limit `{limit}` seconds), then in `after`
/// ask for one more reboot through `$TASKBOT_REBOOT` and report how many distinct boots it saw.
const TASK: &str = "name: reboots
environment: { provision: vm, destructive: true }
testcase: dist.reboots
run:
  - sh ./before.sh
  - { name: reboot, reboot: true, timeout: {limit} }
  - { name: after, run: sh ./after.sh }
";

const BEFORE: &str = r#"set -e
cat /proc/sys/kernel/random/boot_id > boot-0
case "$TASKBOT_ITEM" in
  # The guest forgets its host key at the next boot (its SSH server keeps the directory it
  # has, moved away) and makes a new one.
  newkey-*) mv /var/tmp/.taskbot-vm-hostkeys /var/tmp/.old-hostkeys
            mkdir /var/tmp/.taskbot-vm-hostkeys ;;
esac
"#;

const AFTER: &str = r#"set -e
cat /proc/sys/kernel/random/boot_id > "boot-$TASKBOT_REBOOT_COUNT"
case "$TASKBOT_ITEM" in
  loop-*) touch "$TASKBOT_REBOOT"; exit 0 ;;
esac
if [ "$TASKBOT_REBOOT_COUNT" = 1 ]; then
  touch "$TASKBOT_REBOOT"
  exit 0
fi
boots=$(sort -u boot-0 boot-1 boot-2 | wc -l)
outcome=FAILED
[ "$boots" = 3 ] && outcome=PASSED
cat > "$TASKBOT_RESULTS" <<EOF
results:
  - item: $TASKBOT_ITEM
    type: koji_build
    outcome: $outcome
    note: "$boots distinct boots, after reboot $TASKBOT_REBOOT_COUNT"
EOF
"#;

async fn reboot_world() -> VmWorld {
    let staging = tempfile::tempdir().unwrap();
    let mut tasks = Vec::new();
    for (name, limit) in [("reboots", "120"), ("quick-reboot", "3")] {
        let dir = staging.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("taskbot.yaml"), TASK.replace("{limit}", limit)).unwrap();
        std::fs::write(dir.join("before.sh"), BEFORE).unwrap();
        std::fs::write(dir.join("after.sh"), AFTER).unwrap();
        tasks.push((name, dir));
    }
    let tasks: Vec<(&str, &std::path::Path)> =
        tasks.iter().map(|(n, d)| (*n, d.as_path())).collect();
    let mut w = world(RULES, &tasks, staging, |vm| {
        // /var/tmp (the task's clone) and the host key on the VM's disk, kept across reboots.
        vm.images[0].append.push_str(" taskbot.persist=/dev/vda");
        vm.max_vms = 2;
    })
    .await;
    let runner = w.d.service_index("runner-x86_64");
    w.d.restart_with_env(runner, &[("TASKBOT_RUNNER__VM_MAX_REBOOTS", "2")]);
    let queue = w.d.broker.topology.run_queue("x86_64");
    w.d.wait_for_consumers(&[queue], Duration::from_secs(60))
        .await;
    w
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_task_reboots_and_goes_on_and_a_vm_that_does_not_come_back_as_itself_is_reported() {
    let w = reboot_world().await;
    let d = &w.d;
    for (topic, item) in [
        ("org.taskbot.test.reboot", "twice-1.0-1.fc40"),
        ("org.taskbot.test.quick-reboot", "slow-1.0-1.fc40"),
        ("org.taskbot.test.reboot", "newkey-1.0-1.fc40"),
        ("org.taskbot.test.reboot", "loop-1.0-1.fc40"),
    ] {
        d.publish_event(topic, serde_json::json!({ "item": item }))
            .await;
    }
    d.wait_for_count(
        "select count(*) from results where outcome <> 'RUNNING'",
        4,
        Duration::from_secs(400),
    )
    .await;
    let results = results(d).await;
    let outcome = |item: &str| results.get(item).cloned().unwrap_or_default();

    let (o, note) = outcome("twice-1.0-1.fc40");
    assert_eq!(
        (o.as_str(), note.as_str()),
        ("PASSED", "3 distinct boots, after reboot 2"),
        "{}",
        d.logs()
    );
    let log = task_log(d, "twice-1.0-1.fc40").await;
    for line in [
        "== step reboot: the VM is back after",
        "== step after asked for a reboot ($TASKBOT_REBOOT)",
        "(reboot 2)",
    ] {
        assert!(log.contains(line), "{line:?} not in\n{log}");
    }

    let (o, note) = outcome("slow-1.0-1.fc40");
    assert_eq!(o, "FAILED", "{note}");
    assert!(
        note.starts_with("step reboot: the VM did not come back from its reboot within"),
        "{note}"
    );

    let (o, note) = outcome("newkey-1.0-1.fc40");
    assert_eq!(o, "CRASHED", "{note}");
    assert!(
        note.starts_with(
            "step reboot: the VM came back with another host key than it had before the reboot \
             (Host key for [127.0.0.1]:"
        ) && note.contains("has changed and you have requested strict checking.)"),
        "{note}"
    );

    let (o, note) = outcome("loop-1.0-1.fc40");
    assert_eq!(o, "CRASHED", "{note}");
    assert!(
        note.contains("step after asked for reboot number 3: a job may reboot its VM 2 times"),
        "{note}"
    );
    taskbot_tests::vm::no_vm_left(&w.state_dir, Duration::from_secs(60), || w.d.logs()).await;
    w.d.shutdown().await;
}

/// (outcome, note) of the final result of each item.
async fn results(
    d: &taskbot_tests::Deployment,
) -> std::collections::BTreeMap<String, (String, String)> {
    d.db()
        .await
        .query(
            "select item, outcome, coalesce(note, '') from results where outcome <> 'RUNNING'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect()
}

async fn task_log(d: &taskbot_tests::Deployment, item: &str) -> String {
    let job_id: uuid::Uuid = d
        .db()
        .await
        .query_one("select job_id from jobs where item = $1", &[&item])
        .await
        .unwrap()
        .get(0);
    let path = d
        .config
        .runner
        .artifacts_dir
        .join(job_id.to_string())
        .join(taskbot::artifacts::TASK_LOG);
    std::fs::read_to_string(path).unwrap()
}
