//! Kernel tests end to end (rule 3 of deploy/rules.yaml, tasks/kernel-tests): a Koji message for
//! a finished kernel build goes through the shipped rules, the provisioner fetches the build's
//! kernel RPM from a Koji-layout server, unpacks it and boots its kernel in a real QEMU VM (TCG)
//! with the tiny guest's userspace and the RPM's modules, the runner runs the shipped task in
//! that VM, and the reporter stores one result per check.
//!
//! The "kernel build" is real: rpmbuild packages the Debian kernel the tiny guest uses (its
//! vmlinuz, and the modules its init loads plus `dummy` and `loop` for the task's checks) as
//! Fedora ships a kernel, `kernel-core-<version>-<release>.x86_64.rpm` with the image at
//! `/lib/modules/<release>/vmlinuz` and no modules.dep (made at installation: here, by the
//! provisioner). The image's own initramfs has no `dummy` module, so `modprobe dummy` working
//! shows the RPM's modules are what the guest got. A second build's vmlinuz has its compressed
//! payload overwritten: that kernel stops in its decompressor, and the job is FAILED with the
//! serial console's lines, which also shows the job's kernel (not the image's) is what boots.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use taskbot_tests::rpms::{require_tools, HttpServer};
use taskbot_tests::{free_port, shipped_task, workspace_root, Deployment};

/// Every check of tasks/kernel-tests (its `testcases:`).
const CHECKS: [&str; 9] = [
    "boot",
    "uname",
    "dmesg",
    "modules",
    "filesystems",
    "network",
    "memory",
    "processes",
    "sysfs-procfs",
];

const BOOT_TIMEOUT_SECS: u64 = 75;

fn run(command: &mut Command) -> String {
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{command:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The Debian kernel package of the tiny guest, extracted and indexed under `dir`; its release.
fn extracted_kernel(image: &Path, dir: &Path) -> String {
    run(Command::new("dpkg-deb")
        .arg("-x")
        .arg(image.join("kernel.deb"))
        .arg(dir));
    let release = std::fs::read_dir(dir.join("lib/modules"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .file_name()
        .to_string_lossy()
        .into_owned();
    run(Command::new("depmod").arg("-b").arg(dir).arg(&release));
    release
}

/// The modules the tiny guest's init loads (its initramfs's `lib/modules/order`), by name.
fn guest_modules(image: &Path) -> Vec<String> {
    let listing = run(Command::new("sh").arg("-c").arg(format!(
        "zcat '{}' | cpio -i --quiet --to-stdout lib/modules/order",
        image.join("initrd.img").display()
    )));
    listing
        .lines()
        .map(|m| m.trim_end_matches(".ko").to_string())
        .collect()
}

/// A Fedora-style kernel tree of `release` under `root`: `lib/modules/<release>/` with the
/// vmlinuz, the kernel's module lists, and `modules` with what they depend on (from the
/// extracted kernel's modules.dep).
fn kernel_tree(kernel: &Path, release: &str, modules: &[String], root: &Path) {
    let from = kernel.join("lib/modules").join(release);
    let to = root.join("lib/modules").join(release);
    std::fs::create_dir_all(&to).unwrap();
    std::fs::copy(
        kernel.join(format!("boot/vmlinuz-{release}")),
        to.join("vmlinuz"),
    )
    .unwrap();
    for list in [
        "modules.builtin",
        "modules.order",
        "modules.builtin.modinfo",
    ] {
        std::fs::copy(from.join(list), to.join(list)).unwrap();
    }
    let deps = std::fs::read_to_string(from.join("modules.dep")).unwrap();
    let mut wanted: Vec<&str> = Vec::new();
    for line in deps.lines() {
        let (module, needs) = line.split_once(':').unwrap();
        let name = module.rsplit('/').next().unwrap().trim_end_matches(".ko");
        if modules.iter().any(|m| m == name) {
            wanted.push(module);
            wanted.extend(needs.split_whitespace());
        }
    }
    for module in wanted {
        let dest = to.join(module);
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(from.join(module), dest).unwrap();
    }
}

/// `kernel-core-<version>-<release>.x86_64.rpm` holding `tree` as it is, built with rpmbuild
/// under `top` (no stripping or other post-processing: the modules stay as Debian built them).
fn kernel_rpm(top: &Path, tree: &Path, version: &str, release: &str, uname: &str) -> PathBuf {
    let spec = format!(
        "%global debug_package %{{nil}}\n%global __os_install_post %{{nil}}\n\
         %global _build_id_links none\n\
         Name: kernel\nVersion: {version}\nRelease: {release}\nSummary: The Linux kernel\n\
         License: GPL-2.0-only\nAutoReqProv: no\n\
         %description\nThe Linux kernel (a test build).\n\
         %package core\nSummary: The Linux kernel\n\
         %description core\nThe kernel and its core modules.\n\
         %install\nmkdir -p %{{buildroot}}/lib\ncp -a {}/lib/modules %{{buildroot}}/lib/\n\
         %files core\n/lib/modules/{uname}\n",
        tree.display()
    );
    std::fs::create_dir_all(top).unwrap();
    let spec_path = top.join("kernel.spec");
    std::fs::write(&spec_path, spec).unwrap();
    run(Command::new("rpmbuild")
        .arg("--define")
        .arg(format!("_topdir {}", top.display()))
        .args(["--target", "x86_64", "-bb"])
        .arg(&spec_path));
    top.join(format!(
        "RPMS/x86_64/kernel-core-{version}-{release}.x86_64.rpm"
    ))
}

/// Put a kernel build's RPM where Koji would.
fn publish_build(koji: &Path, version: &str, release: &str, rpm: &Path) {
    let dir = koji.join(format!("packages/kernel/{version}/{release}/x86_64"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(rpm, dir.join(rpm.file_name().unwrap())).unwrap();
}

/// Overwrite 64 KiB in the middle of a bzImage: its header still loads, its compressed kernel
/// does not decompress.
fn corrupt(vmlinuz: &Path) {
    let mut bytes = std::fs::read(vmlinuz).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle..middle + 65536].fill(0xaa);
    std::fs::write(vmlinuz, bytes).unwrap();
}

/// The shipped rules and tasks, the provisioner's VM backend (the tiny guest as the catalogue's
/// only image, on a blank disk) fetching kernels from `koji`, one x86_64 runner, the reporter.
async fn deployment(staging: &Path, koji: &str) -> Deployment {
    let image = taskbot::testing::tiny_vm_image();
    let tasks: Vec<(String, PathBuf)> = ["example", "kernel-tests"]
        .iter()
        .map(|name| (name.to_string(), shipped_task(name, staging)))
        .collect();
    let tasks: Vec<(&str, &Path)> = tasks
        .iter()
        .map(|(n, p)| (n.as_str(), p.as_path()))
        .collect();
    let rules = std::fs::read_to_string(workspace_root().join("deploy/rules.yaml")).unwrap();
    let mut d = Deployment::new(&rules, &tasks, free_port()).await;
    d.set_arches(&["x86_64", "aarch64", "noarch"]);
    let base = d.dir.path().join("base.qcow2");
    taskbot::testing::blank_disk(&base, "64M");
    let mut vm = taskbot::testing::tiny_vm_backend(
        &image,
        &d.dir.path().join("vms"),
        vec![taskbot::testing::tiny_vm_image_entry("tiny", &image, &base)],
    );
    vm.koji_pkgs_url = koji.to_string();
    vm.boot_timeout_secs = BOOT_TIMEOUT_SECS;
    d.configure(|config| {
        config.runner.vm_ssh_key = vm.ssh_key.clone();
        config.provisioner.vm = Some(vm);
    });
    taskbot_tests::vm::start_vm_pipeline(&mut d).await;
    d
}

/// Koji's message that a kernel build completed (the shape of the shipped fixture).
async fn kernel_build_completed(d: &Deployment, version: &str, release: &str) {
    let text = std::fs::read_to_string(
        workspace_root().join("tests/fixtures/messages/koji-build-complete-kernel.json"),
    )
    .unwrap();
    let envelope: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut msg = envelope["msg"].clone();
    msg["version"] = version.into();
    msg["release"] = release.into();
    let id = format!("2026-kernel-{}", uuid::Uuid::new_v4());
    let event = taskbot::testing::event(&id, envelope["topic"].as_str().unwrap(), msg);
    taskbot_tests::shipped::send_event(d, &event).await;
}

/// The final x86_64 kernel-tests results of `item` by check (`dist.kernel-tests.<check>`), once
/// `count` are stored: (outcome, note).
async fn kernel_results(
    d: &Deployment,
    item: &str,
    count: i64,
) -> std::collections::BTreeMap<String, (String, String)> {
    let select = format!(
        "from results where item = '{item}' and arch = 'x86_64' \
         and testcase like 'dist.kernel-tests.%' and outcome not in ('QUEUED', 'RUNNING')"
    );
    let stored = d
        .wait_for_count(
            &format!("select count(*) {select}"),
            count,
            Duration::from_secs(300),
        )
        .await;
    assert_eq!(stored, count, "results of {item}\n{}", d.logs());
    d.db()
        .await
        .query(
            &format!("select testcase, outcome, coalesce(note, '') {select}"),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| {
            let testcase: String = row.get(0);
            let check = testcase
                .trim_start_matches("dist.kernel-tests.")
                .to_string();
            (check, (row.get(1), row.get(2)))
        })
        .collect()
}

/// The detail of the job's `provisioning` status (what the VM boots).
async fn provisioning_detail(d: &Deployment, item: &str) -> String {
    d.db()
        .await
        .query_one(
            "select coalesce(e.detail, '') from job_events e join jobs j using (job_id) \
             where j.item = $1 and j.arch = 'x86_64' and j.task_name = 'kernel-tests' \
             and e.state = 'provisioning' and e.detail like 'starting a VM%'",
            &[&item],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kernel_build_boots_in_a_vm_and_passes_the_suite_and_one_that_does_not_boot_fails() {
    require_tools(&[
        "rpmbuild",
        "rpm2cpio",
        "depmod",
        "dpkg-deb",
        "qemu-system-x86_64",
    ]);
    let image = taskbot::testing::tiny_vm_image();
    let work = tempfile::tempdir().unwrap();
    let kernel = work.path().join("deb");
    let uname = extracted_kernel(&image, &kernel);
    // Debian's 6.1.0-57-amd64 as the build kernel-6.1.0-57: version 6.1.0, release 57.
    let mut parts = uname.splitn(3, '-');
    let (version, release) = (parts.next().unwrap(), parts.next().unwrap());
    let nvr = format!("kernel-{version}-{release}");
    let mut modules = guest_modules(&image);
    assert!(!modules.iter().any(|m| m == "dummy"), "{modules:?}");
    modules.extend(["dummy".to_string(), "loop".to_string()]);
    let tree = work.path().join("tree");
    kernel_tree(&kernel, &uname, &modules, &tree);
    std::fs::remove_dir_all(&kernel).unwrap();
    let koji = work.path().join("koji");
    let good = kernel_rpm(&work.path().join("good"), &tree, version, release, &uname);
    publish_build(&koji, version, release, &good);
    // The same kernel, its image corrupted, as another build.
    let broken_release = format!("{release}.broken");
    corrupt(&tree.join("lib/modules").join(&uname).join("vmlinuz"));
    let broken = kernel_rpm(
        &work.path().join("broken"),
        &tree,
        version,
        &broken_release,
        &uname,
    );
    publish_build(&koji, version, &broken_release, &broken);
    let koji_server = HttpServer::start(&koji);

    let staging = tempfile::tempdir().unwrap();
    let d = deployment(staging.path(), &koji_server.url).await;
    kernel_build_completed(&d, version, release).await;
    let results = kernel_results(&d, &nvr, CHECKS.len() as i64).await;
    for check in CHECKS {
        let (outcome, note) = &results[check];
        assert_eq!(outcome, "PASSED", "{check}: {note}\n{}", d.logs());
    }
    assert_eq!(
        results["uname"].1,
        format!(
            "running {uname}, the kernel of {nvr} (its flavour suffix -amd64; Fedora would \
             name it {version}-{release}.x86_64)"
        )
    );
    let modules_note = &results["modules"].1;
    assert!(
        modules_note.contains(&format!(
            "modprobe dummy loaded kernel/drivers/net/dummy.ko from /lib/modules/{uname}"
        )),
        "{modules_note}"
    );
    assert!(
        results["filesystems"].1.starts_with("tmpfs and ext4"),
        "{results:?}"
    );
    assert_eq!(
        provisioning_detail(&d, &nvr).await,
        format!("starting a VM: image tiny with the kernel of {nvr} ({uname})")
    );

    let broken_nvr = format!("kernel-{version}-{broken_release}");
    kernel_build_completed(&d, version, &broken_release).await;
    let results = kernel_results(&d, &broken_nvr, 1).await;
    let (outcome, note) = &results["boot"];
    assert_eq!(outcome, "FAILED", "{note}\n{}", d.logs());
    assert!(
        note.starts_with(&format!(
            "the kernel of {broken_nvr} did not boot: no SSH within {BOOT_TIMEOUT_SECS}s. \
             The serial console's last lines:"
        )),
        "{note}"
    );
    // The decompressor's last words, through the early console the provisioner asks for.
    assert!(note.contains("-- System halted"), "{note}");
    let state: String = d
        .db()
        .await
        .query_one(
            "select state from jobs where item = $1 and arch = 'x86_64' and task_name = 'kernel-tests'",
            &[&broken_nvr],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(state, "done", "a verdict on the build, not a crash");
    d.shutdown().await;
}
