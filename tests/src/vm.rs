//! A deployment whose provisioner has the VM backend (real QEMU under TCG, the tiny guest of
//! scripts/build-tiny-vm-image.sh), for the tests of tasks in VMs.

use std::path::Path;
use std::time::{Duration, Instant};

use taskbot::config::VmBackendConfig;

use crate::{free_port, Deployment};

/// A deployment (rules, provisioner with the VM backend, one x86_64 runner, reporter, api); with
/// the VMs' state directory, the base disk and its checksum (a test checks it stays unchanged).
pub struct VmWorld {
    pub d: Deployment,
    pub state_dir: std::path::PathBuf,
    pub base: std::path::PathBuf,
    pub base_sum: String,
    /// The task repositories' sources, removed with the world.
    pub _staging: tempfile::TempDir,
}

/// A deployment with these rules and tasks: rules, provisioner with the VM backend (the tiny
/// guest on a blank base disk as the catalogue's image `tiny`, then `adjust`), one x86_64
/// runner, reporter, and the api (its `/artifacts/` is the runners' artifacts URL).
pub async fn world(
    rules: &str,
    tasks: &[(&str, &std::path::Path)],
    staging: tempfile::TempDir,
    adjust: impl FnOnce(&mut VmBackendConfig),
) -> VmWorld {
    let image = taskbot::testing::tiny_vm_image();
    let mut d = Deployment::new(rules, tasks, free_port()).await;
    // The shipped rules name every arch of the shipped configuration.
    d.set_arches(&["x86_64", "aarch64", "noarch"]);
    let base = d.dir.path().join("base.qcow2");
    taskbot::testing::blank_disk(&base, "64M");
    let base_sum = taskbot::testing::sha256_file(&base);
    let state_dir = d.dir.path().join("vms");
    let api = format!("127.0.0.1:{}", free_port());
    let mut vm = taskbot::testing::tiny_vm_backend(
        &image,
        &state_dir,
        vec![taskbot::testing::tiny_vm_image_entry("tiny", &image, &base)],
    );
    vm.allowed_urls = vec![format!("http://{api}/artifacts/")];
    adjust(&mut vm);
    d.configure(|config| {
        // The runner logs into the VMs with its own key setting, the provisioner's key file.
        config.runner.vm_ssh_key = vm.ssh_key.clone();
        config.provisioner.vm = Some(vm);
        config.api.listen = api.clone();
        config.runner.artifacts_url = Some(format!("http://{api}/artifacts"));
        // The installer build-iso packs (the tiny guest's kernel and initramfs), shown read-only
        // to sandboxed tasks as an operator would show /var/lib/taskbot/installer.
        config.runner.sandbox_read_only = vec![image.clone()];
        config
            .runner
            .task_env
            .insert("INSTALLER_DIR".into(), image.display().to_string());
    });
    d.start("api", "api", &[]);
    start_vm_pipeline(&mut d).await;
    VmWorld {
        d,
        state_dir,
        base,
        base_sum,
        _staging: staging,
    }
}

/// Start the pipeline of a deployment whose provisioner has the VM backend (reporter,
/// provisioner, rules, one x86_64 runner) and wait until each consumes its queues (the
/// provisioner's finished-jobs queue too, which destroys the VMs).
pub async fn start_vm_pipeline(d: &mut Deployment) {
    d.start("reporter", "reporter", &[]);
    d.start("provisioner", "provisioner", &[]);
    d.start("rules", "rules", &[]);
    d.start("runner-x86_64", "runner", &["--arch", "x86_64"]);
    let t = d.broker.topology.clone();
    let queues = [
        t.rules_queue(),
        t.provisioner_queue(),
        t.run_queue("x86_64"),
        t.postgres_results_queue(),
        t.postgres_status_queue(),
        t.provisioner_finished_queue(),
    ];
    d.wait_for_consumers(&queues, Duration::from_secs(60)).await;
}

/// Wait until no VM under `state_dir` is left (no lease, no overlay, no QEMU process naming
/// it), or fail with `logs()`.
pub async fn no_vm_left(state_dir: &Path, within: Duration, logs: impl Fn() -> String) {
    let deadline = Instant::now() + within;
    let leases = state_dir.join("leases");
    while std::fs::read_dir(&leases).map(|d| d.count()).unwrap_or(0) > 0 {
        assert!(
            Instant::now() < deadline,
            "a VM was not destroyed\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Overlays, QMP sockets: nothing of a destroyed VM stays.
    let overlays: Vec<_> = std::fs::read_dir(state_dir.join("overlays"))
        .map(|dir| dir.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(overlays.is_empty(), "{overlays:?}");
    let qemu = std::process::Command::new("pgrep")
        .args(["-f", &state_dir.display().to_string()])
        .output()
        .unwrap();
    assert!(qemu.stdout.is_empty(), "QEMU still runs");
}
