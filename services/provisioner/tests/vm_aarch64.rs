//! The VM backend for another arch than the host's: the tiny guest built from Debian's arm64
//! packages (scripts/build-tiny-vm-image.sh DEST arm64) boots under `qemu-system-aarch64`
//! (TCG, `-M virt`), as the catalogue entry of an aarch64 image asks; it answers SSH with the
//! key its seed gave it, runs an aarch64 kernel, took its hostname from the seed, sees the ISO
//! attached to it as a CD-ROM, and is gone when destroyed. A job of another arch does not get
//! that image.

use std::time::Instant;

use taskbot::messages::VmRequest;
use taskbot::testing::{tiny_vm_backend, tiny_vm_image_aarch64, tiny_vm_image_entry_aarch64};
use taskbot_provisioner::vm::{alive, hostname};
use taskbot_provisioner::VmBackend;
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aarch64_vm_boots_under_emulation_answers_ssh_and_is_destroyed() {
    let image = tiny_vm_image_aarch64();
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.qcow2");
    taskbot::testing::blank_disk(&base, "64M");
    let base_sum = taskbot::testing::sha256_file(&base);
    let backend = VmBackend::from_config(&tiny_vm_backend(
        &image,
        &dir.path().join("state"),
        vec![tiny_vm_image_entry_aarch64("tiny-arm", &image, &base)],
    ));
    let err = backend
        .boot_spec("x86_64", &VmRequest::default())
        .await
        .unwrap_err();
    assert!(err.contains("x86_64 images: none"), "{err}");
    let (mut spec, what) = backend
        .boot_spec("aarch64", &VmRequest::default())
        .await
        .unwrap();
    assert_eq!(what, "image tiny-arm");
    assert_eq!(spec.qemu, "qemu-system-aarch64");
    // An ISO attached beside the image's kernel: on `virt` a SCSI CD-ROM, not a virtio disk.
    let iso = iso_with_marker(dir.path());
    spec.iso = Some(iso);

    let started = Instant::now();
    let job = Uuid::new_v4();
    let lease = backend
        .settings
        .boot(job, &spec)
        .await
        .unwrap_or_else(|e| panic!("boot: {e}"));
    println!(
        "aarch64 boot to SSH-ready under TCG: {:.1}s",
        started.elapsed().as_secs_f64()
    );
    assert!(alive(&lease));
    let (code, out) = backend
        .settings
        .ssh(
            &lease,
            "uname -m; hostname; mkdir -p /run/cd && mount -t iso9660 -o ro /dev/sr0 /run/cd && cat /run/cd/marker",
        )
        .await
        .unwrap();
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        out,
        format!("aarch64\n{}\nattached as a CD-ROM\n", hostname(job)),
        "the arch, the seed's hostname and the CD-ROM's file"
    );

    let seed = lease.seed.clone().expect("the image uses cloud-init");
    backend.settings.destroy(&lease).await;
    assert!(!alive(&lease), "QEMU still runs");
    assert!(!lease.overlay.exists() && !seed.exists());
    assert!(backend.settings.leases().is_empty());
    assert_eq!(taskbot::testing::sha256_file(&base), base_sum);
}

/// An ISO 9660 image holding one file, `marker`, made with xorriso.
fn iso_with_marker(dir: &std::path::Path) -> std::path::PathBuf {
    let content = dir.join("iso-content");
    std::fs::create_dir_all(&content).unwrap();
    std::fs::write(content.join("marker"), "attached as a CD-ROM\n").unwrap();
    let iso = dir.join("attached.iso");
    let status = std::process::Command::new("xorriso")
        .args(["-as", "mkisofs", "-quiet", "-V", "MARKER", "-r", "-o"])
        .arg(&iso)
        .arg(&content)
        .status()
        .expect("xorriso runs");
    assert!(status.success(), "xorriso failed");
    iso
}
