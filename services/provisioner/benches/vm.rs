//! `make bench`: what a disposable VM costs per job, with real QEMU under TCG and the tiny guest
//! of scripts/build-tiny-vm-image.sh (the test guest; a full distribution image boots slower).
//!
//! For each of `RUNS` VMs, one after another: `boot` (overlay created, QEMU started, waiting until
//! SSH runs a command), one more SSH command (what each step of a task pays), and `destroy`
//! (QEMU killed, overlay and lease removed). The provisioner adds to `boot` one broker round
//! trip (the `provisioning` status) before it, and publishing the provisioned job after.

use std::time::Instant;

use taskbot::messages::VmRequest;
use taskbot::testing::{tiny_vm_backend, tiny_vm_image_entry};
use taskbot_provisioner::VmBackend;

const RUNS: usize = 5;

fn main() {
    let image = taskbot::testing::tiny_vm_image();
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.qcow2");
    taskbot::testing::blank_disk(&base, "64M");
    let backend = VmBackend::from_config(&tiny_vm_backend(
        &image,
        &dir.path().join("state"),
        vec![tiny_vm_image_entry("tiny", &image, &base)],
    ));
    let settings = &backend.settings;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (spec, _) = runtime
        .block_on(backend.boot_spec("x86_64", &VmRequest::default()))
        .expect("the catalogue has the tiny image");
    let (mut boots, mut commands, mut destroys) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..RUNS {
        let started = Instant::now();
        let lease = runtime
            .block_on(settings.boot(uuid::Uuid::new_v4(), &spec))
            .expect("the VM boots");
        boots.push(started.elapsed());
        let started = Instant::now();
        let (code, _) = runtime.block_on(settings.ssh(&lease, "true")).unwrap();
        assert_eq!(code, 0);
        commands.push(started.elapsed());
        let started = Instant::now();
        runtime.block_on(settings.destroy(&lease));
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
