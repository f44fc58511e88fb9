//! `make bench`: what a disposable VM costs per job, with real QEMU under TCG and the tiny guest
//! of scripts/build-tiny-vm-image.sh (the test guest; a full distribution image boots slower).
//!
//! For each of `RUNS` VMs, one after another: `boot` (overlay created, QEMU started, waiting until
//! SSH runs a command), one more SSH command (what each step of a task pays), and `destroy`
//! (QEMU killed, overlay and lease removed). The provisioner adds to `boot` one broker round
//! trip (the `provisioning` status) before it, and publishing the provisioned job after.

use std::time::{Duration, Instant};

use taskbot_provisioner::vm::VmSettings;

const RUNS: usize = 5;

fn main() {
    let image = taskbot::testing::tiny_vm_image();
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.qcow2");
    taskbot::testing::blank_disk(&base, "64M");
    let settings = VmSettings {
        state_dir: dir.path().join("state"),
        kernel: image.join("vmlinuz"),
        initrd: image.join("initrd.img"),
        append: "console=ttyS0 quiet panic=-1".into(),
        base_disk: base,
        memory_mb: 384,
        max_vms: 1,
        ssh_key: image.join("id_ed25519"),
        ssh_user: "root".into(),
        boot_timeout: Duration::from_secs(180),
        lease: Duration::from_secs(600),
        qemu: "qemu-system-x86_64".into(),
        accel: "tcg".into(),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (mut boots, mut commands, mut destroys) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..RUNS {
        let started = Instant::now();
        let lease = runtime
            .block_on(settings.boot(uuid::Uuid::new_v4()))
            .expect("the VM boots");
        boots.push(started.elapsed());
        let started = Instant::now();
        let (code, _) = runtime.block_on(settings.ssh(&lease, "true")).unwrap();
        assert_eq!(code, 0);
        commands.push(started.elapsed());
        let started = Instant::now();
        settings.destroy(&lease);
        destroys.push(started.elapsed());
    }
    println!("VM benchmark: tiny guest, TCG, 384 MiB, {RUNS} VMs one after another");
    println!(
        "{:<40} {:>10} {:>10} {:>10}",
        "step", "median", "min", "max"
    );
    for (name, times) in [
        ("boot → SSH-ready", &mut boots),
        ("one SSH command (per task step)", &mut commands),
        ("destroy", &mut destroys),
    ] {
        times.sort();
        println!(
            "{:<40} {:>9.2}s {:>9.2}s {:>9.2}s",
            name,
            times[times.len() / 2].as_secs_f64(),
            times[0].as_secs_f64(),
            times[times.len() - 1].as_secs_f64()
        );
    }
    if let Ok(load) = std::fs::read_to_string("/proc/loadavg") {
        println!(
            "load average during the run (1, 5, 15 min): {}",
            load.trim()
        );
    }
}
