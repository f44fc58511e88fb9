//! The Debian system image of scripts/build-debian-vm-image.sh (debootstrap, systemd,
//! openssh-server, the real cloud-init) for the tests that need a real distribution in their VMs,
//! beside the tiny busybox guest. Built once per machine: the script does nothing when its cache
//! is up to date (a few minutes the first time, under a lock, so parallel tests build it once).

use std::path::{Path, PathBuf};
use std::process::Command;

use taskbot::config::{ImageFile, VmImageConfig};

use crate::{rpms::require_tools, workspace_root};

/// Where the image is cached: `$TASKBOT_DEBIAN_VM_DIR`, else the script's default
/// `/var/cache/taskbot/debian-vm`.
pub fn debian_vm_dir() -> PathBuf {
    std::env::var_os("TASKBOT_DEBIAN_VM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/taskbot/debian-vm"))
}

/// The image's directory (disk.qcow2, vmlinuz, initrd.img, id_ed25519, ...), built if it is not
/// there or is out of date. Without debootstrap the test fails saying what to run: never a
/// silent skip.
pub fn debian_vm_image() -> PathBuf {
    require_tools(&["debootstrap", "qemu-img", "mkfs.ext4"]);
    let dir = debian_vm_dir();
    let script = workspace_root().join("scripts/build-debian-vm-image.sh");
    let started = std::time::Instant::now();
    let status = Command::new("bash")
        .arg(&script)
        .arg(&dir)
        .status()
        .expect("bash runs");
    assert!(
        status.success(),
        "building the Debian VM image with {} {} failed (its output is above)",
        script.display(),
        dir.display()
    );
    eprintln!(
        "the Debian VM image in {} is ready ({:.1} s)",
        dir.display(),
        started.elapsed().as_secs_f64()
    );
    dir
}

/// A line of one of the image's description files (`kernel`, `version`, `built`).
pub fn image_fact(image: &Path, file: &str) -> String {
    std::fs::read_to_string(image.join(file))
        .unwrap_or_else(|e| panic!("{}: {e}", image.join(file).display()))
        .trim()
        .to_string()
}

/// The catalogue entry of the image in `image` (see [`debian_vm_image`]): distro `debian`, its
/// major version as release (`12`), flavour `cloud`, x86_64, built when the script built it;
/// direct kernel boot of its own kernel and initramfs, root on the first virtio disk, the serial
/// console on ttyS0; the provisioner's cloud-init seed gives it its key and hostname.
pub fn debian_vm_image_entry(name: &str, image: &Path) -> VmImageConfig {
    let version = image_fact(image, "version");
    VmImageConfig {
        name: name.into(),
        distro: "debian".into(),
        release: version.split('.').next().unwrap_or_default().to_string(),
        arch: "x86_64".into(),
        flavour: "cloud".into(),
        built: image_fact(image, "built"),
        disk: ImageFile::Path(image.join("disk.qcow2")),
        kernel: Some(ImageFile::Path(image.join("vmlinuz"))),
        initrd: Some(ImageFile::Path(image.join("initrd.img"))),
        append: "root=/dev/vda rw console=ttyS0".into(),
        cloud_init: true,
        qemu: None,
        qemu_args: Vec::new(),
    }
}
