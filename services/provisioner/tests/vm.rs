//! The VM backend with real QEMU under TCG and a tiny guest built from Debian packages
//! (scripts/build-tiny-vm-image.sh: Debian's kernel, busybox, dropbear): a VM of the catalogue
//! boots on an overlay, answers SSH with the key its cloud-init seed gave it (the guest has no
//! other), took its hostname from the seed, runs a command that wrecks its disk, and is gone
//! afterwards with the base disk unchanged; capacity is enforced; a VM whose lease expired (its
//! runner died) is reaped.

use std::time::{Duration, Instant};

use chrono::Utc;
use taskbot::messages::VmRequest;
use taskbot::testing::{tiny_vm_backend, tiny_vm_image_entry};
use taskbot_provisioner::vm::{alive, VmError};
use taskbot_provisioner::VmBackend;
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_boots_answers_ssh_is_destroyed_and_an_expired_one_is_reaped() {
    let image = taskbot::testing::tiny_vm_image();
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.qcow2");
    taskbot::testing::blank_disk(&base, "64M");
    let base_sum = taskbot::testing::sha256_file(&base);
    let mut backend = VmBackend::from_config(&tiny_vm_backend(
        &image,
        &dir.path().join("state"),
        vec![tiny_vm_image_entry("tiny", &image, &base)],
    ));
    let (spec, what) = backend
        .boot_spec("x86_64", &VmRequest::default())
        .await
        .unwrap();
    assert_eq!(what, "image tiny");
    let settings = &mut backend.settings;

    let started = Instant::now();
    let job = Uuid::new_v4();
    let lease = settings
        .boot(job, &spec)
        .await
        .unwrap_or_else(|e| panic!("boot: {e}"));
    println!(
        "boot to SSH-ready under TCG: {:.1}s",
        started.elapsed().as_secs_f64()
    );
    assert!(alive(&lease));
    assert!(lease.overlay.exists());
    let seed = lease.seed.clone().expect("the image uses cloud-init");
    assert!(seed.exists());
    assert!(
        lease
            .host_keys
            .iter()
            .any(|k| k.starts_with("ssh-ed25519 ")),
        "{:?}",
        lease.host_keys
    );
    let known_hosts = lease.known_hosts.clone().unwrap();

    // A destructive command: it wipes the start of the VM's disk.
    let (code, out) = settings
        .ssh(&lease, "echo hello; hostname; uname -r; dd if=/dev/urandom of=/dev/vda bs=1M count=8 2>/dev/null && sync && echo wiped")
        .await
        .unwrap();
    assert_eq!(code, 0, "{out}");
    let expected = format!("hello\n{}\n", taskbot_provisioner::vm::hostname(job));
    assert!(out.starts_with(&expected), "the seed's hostname: {out}");
    assert!(out.contains("wiped"), "{out}");

    // Capacity 1: a second VM is refused while the first runs (the caller keeps the job queued).
    match settings.boot(Uuid::new_v4(), &spec).await {
        Err(VmError::Full { running: 1, max: 1 }) => {}
        other => panic!("expected the capacity limit, got {other:?}"),
    }

    settings.destroy(&lease).await;
    assert!(!alive(&lease), "QEMU still runs");
    assert!(!lease.overlay.exists(), "the overlay is left");
    assert!(!seed.exists(), "the seed is left");
    assert!(!known_hosts.exists(), "the known hosts file is left");
    assert!(settings.leases().is_empty());
    assert_eq!(
        taskbot::testing::sha256_file(&base),
        base_sum,
        "the base disk changed"
    );

    // A VM whose runner died: its lease runs out and the reaper (as a restarted provisioner
    // runs it) destroys it.
    settings.lease = Duration::from_secs(1);
    let first_keys = lease.host_keys.clone();
    let lease = settings.boot(Uuid::new_v4(), &spec).await.unwrap();
    assert!(alive(&lease));
    // Every VM makes its own host key: a runner pinning one VM's cannot reach another.
    assert!(!lease.host_keys.is_empty());
    assert_ne!(lease.host_keys, first_keys);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(settings.reap(Utc::now()).await, [lease.job_id]);
    assert!(!alive(&lease) && !lease.overlay.exists());
    assert_eq!(taskbot::testing::sha256_file(&base), base_sum);
}
