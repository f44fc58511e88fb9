//! Disposable QEMU VMs for jobs that need a machine of their own: the `vm` backend (see
//! docs/provisioning.md).
//!
//! Per job: a copy-on-write overlay of the base disk (`qemu-img create -b`), so the base is never
//! written; direct kernel boot (`-kernel`/`-initrd`); user-mode networking with the guest's SSH
//! port forwarded to a free port on 127.0.0.1; TCG unless KVM is asked for (KVM is not usable on
//! the development machines). QEMU runs daemonized: a VM outlives the provisioner that started
//! it, and a **lease** file records it (job, QEMU's pid, port, overlay, expiry), so a restarted
//! provisioner finds and reaps what it left. A VM is ready when `ssh` with the job's key runs a
//! command in it.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::process::Command;
use uuid::Uuid;

/// What the backend needs to know.
#[derive(Debug, Clone)]
pub struct VmSettings {
    /// Leases, overlays and serial logs live here (`leases/`, `overlays/`, `logs/`).
    pub state_dir: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// Kernel command line.
    pub append: String,
    /// The base disk every VM gets an overlay of (qcow2 or raw).
    pub base_disk: PathBuf,
    pub memory_mb: u32,
    /// VMs at once; more are refused (the caller keeps the job queued).
    pub max_vms: usize,
    /// The private key the guest accepts, and its user.
    pub ssh_key: PathBuf,
    pub ssh_user: String,
    /// How long a VM may take to answer SSH.
    pub boot_timeout: Duration,
    /// How long a lease lasts unless renewed.
    pub lease: Duration,
    pub qemu: String,
    /// `tcg` or `kvm`.
    pub accel: String,
}

/// A running VM, as recorded on disk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lease {
    pub job_id: Uuid,
    pub pid: u32,
    pub ssh_port: u16,
    pub overlay: PathBuf,
    pub serial_log: PathBuf,
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("no VM capacity: {running} of {max} VMs running")]
    Full { running: usize, max: usize },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Failed(String),
}

impl VmSettings {
    fn leases_dir(&self) -> PathBuf {
        self.state_dir.join("leases")
    }

    fn lease_path(&self, job_id: Uuid) -> PathBuf {
        self.leases_dir().join(format!("{job_id}.json"))
    }

    /// QEMU's arguments for one VM (pure, for tests).
    pub fn qemu_args(
        &self,
        overlay: &Path,
        ssh_port: u16,
        serial_log: &Path,
        pidfile: &Path,
    ) -> Vec<String> {
        vec![
            "-accel".into(),
            self.accel.clone(),
            "-m".into(),
            self.memory_mb.to_string(),
            "-smp".into(),
            "1".into(),
            "-display".into(),
            "none".into(),
            "-no-reboot".into(),
            "-kernel".into(),
            self.kernel.display().to_string(),
            "-initrd".into(),
            self.initrd.display().to_string(),
            "-append".into(),
            self.append.clone(),
            "-nic".into(),
            format!("user,model=e1000,hostfwd=tcp:127.0.0.1:{ssh_port}-:22"),
            "-drive".into(),
            format!("file={},if=virtio,format=qcow2", overlay.display()),
            "-serial".into(),
            format!("file:{}", serial_log.display()),
            "-daemonize".into(),
            "-pidfile".into(),
            pidfile.display().to_string(),
        ]
    }

    /// Every lease on disk.
    pub fn leases(&self) -> Vec<Lease> {
        let Ok(entries) = std::fs::read_dir(self.leases_dir()) else {
            return Vec::new();
        };
        entries
            .filter_map(|e| std::fs::read(e.ok()?.path()).ok())
            .filter_map(|bytes| serde_json::from_slice(&bytes).ok())
            .collect()
    }

    /// Start a VM for `job_id` and wait until SSH answers; its lease is recorded first, so a VM
    /// that never answers is still reaped.
    pub async fn boot(&self, job_id: Uuid) -> Result<Lease, VmError> {
        let running = self.leases().len();
        if running >= self.max_vms {
            return Err(VmError::Full {
                running,
                max: self.max_vms,
            });
        }
        for dir in ["leases", "overlays", "logs"] {
            std::fs::create_dir_all(self.state_dir.join(dir))?;
        }
        let overlay = self
            .state_dir
            .join("overlays")
            .join(format!("{job_id}.qcow2"));
        let serial_log = self
            .state_dir
            .join("logs")
            .join(format!("{job_id}.serial.log"));
        let pidfile = self
            .state_dir
            .join("overlays")
            .join(format!("{job_id}.pid"));
        let format = if self.base_disk.extension().is_some_and(|e| e == "qcow2") {
            "qcow2"
        } else {
            "raw"
        };
        run(Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", format, "-b"])
            .arg(&self.base_disk)
            .arg(&overlay))
        .await?;
        let ssh_port = free_port()?;
        if let Err(err) = run(Command::new(&self.qemu).args(self.qemu_args(
            &overlay,
            ssh_port,
            &serial_log,
            &pidfile,
        )))
        .await
        {
            let _ = std::fs::remove_file(&overlay);
            return Err(err);
        }
        let pid: u32 = std::fs::read_to_string(&pidfile)?
            .trim()
            .parse()
            .map_err(|_| VmError::Failed("QEMU wrote no pid".into()))?;
        let _ = std::fs::remove_file(&pidfile);
        let lease = Lease {
            job_id,
            pid,
            ssh_port,
            overlay,
            serial_log,
            expires_at: Utc::now() + self.lease,
        };
        std::fs::write(
            self.lease_path(job_id),
            serde_json::to_vec(&lease).expect("leases serialise"),
        )?;
        let deadline = Instant::now() + self.boot_timeout;
        loop {
            if self.ssh(&lease, "true").await.is_ok_and(|out| out.0 == 0) {
                return Ok(lease);
            }
            if Instant::now() >= deadline || !alive(&lease) {
                self.destroy(&lease);
                return Err(VmError::Failed(format!(
                    "the VM did not answer SSH within {}s (serial log kept: {})",
                    self.boot_timeout.as_secs(),
                    lease.serial_log.display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Run `command` in the VM over SSH; (exit code, stdout).
    pub async fn ssh(&self, lease: &Lease, command: &str) -> Result<(i32, String), VmError> {
        let output = Command::new("ssh")
            .args(["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no"])
            .args(["-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"])
            .args(["-o", "ConnectTimeout=5", "-i"])
            .arg(&self.ssh_key)
            .args(["-p", &lease.ssh_port.to_string()])
            .arg(format!("{}@127.0.0.1", self.ssh_user))
            .arg(command)
            .stdin(Stdio::null())
            .output()
            .await?;
        Ok((
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stdout).into_owned(),
        ))
    }

    /// Stop the VM (if its QEMU still runs) and remove its overlay and lease. The base disk is
    /// untouched. The serial log stays, for the job's record.
    pub fn destroy(&self, lease: &Lease) {
        if alive(lease) {
            // SAFETY: kill(2) on a pid checked (just above) to be this VM's QEMU.
            unsafe { libc::kill(lease.pid as i32, libc::SIGKILL) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while alive(lease) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = std::fs::remove_file(&lease.overlay);
        let _ = std::fs::remove_file(self.lease_path(lease.job_id));
    }

    /// Destroy every VM whose lease expired (its runner died, say) or whose QEMU is gone;
    /// returns their jobs. Run at start and periodically.
    pub fn reap(&self, now: DateTime<Utc>) -> Vec<Uuid> {
        let mut reaped = Vec::new();
        for lease in self.leases() {
            if lease.expires_at <= now || !alive(&lease) {
                self.destroy(&lease);
                reaped.push(lease.job_id);
            }
        }
        reaped
    }
}

/// Whether the lease's QEMU still runs: the pid exists and is a QEMU with this VM's overlay (a
/// pid reused by another process is not ours to kill).
pub fn alive(lease: &Lease) -> bool {
    std::fs::read(format!("/proc/{}/cmdline", lease.pid)).is_ok_and(|cmdline| {
        let overlay = lease.overlay.display().to_string();
        String::from_utf8_lossy(&cmdline).contains(&overlay)
    })
}

async fn run(command: &mut Command) -> Result<(), VmError> {
    let output = command.stdin(Stdio::null()).output().await?;
    if output.status.success() {
        Ok(())
    } else {
        Err(VmError::Failed(format!(
            "{:?} failed: {}",
            command.as_std().get_program(),
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}

/// A free TCP port on 127.0.0.1 (for the forwarded SSH port).
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(dir: &Path) -> VmSettings {
        VmSettings {
            state_dir: dir.to_path_buf(),
            kernel: "/img/vmlinuz".into(),
            initrd: "/img/initrd.img".into(),
            append: "console=ttyS0".into(),
            base_disk: "/img/base.qcow2".into(),
            memory_mb: 256,
            max_vms: 1,
            ssh_key: "/img/id".into(),
            ssh_user: "root".into(),
            boot_timeout: Duration::from_secs(1),
            lease: Duration::from_secs(60),
            qemu: "qemu-system-x86_64".into(),
            accel: "tcg".into(),
        }
    }

    #[test]
    fn qemu_boots_the_kernel_on_an_overlay_with_ssh_forwarded_to_localhost() {
        let s = settings(Path::new("/state"));
        let args = s.qemu_args(
            Path::new("/state/overlays/j.qcow2"),
            2222,
            Path::new("/state/logs/j.log"),
            Path::new("/state/j.pid"),
        );
        let text = args.join(" ");
        assert!(text.starts_with("-accel tcg -m 256"), "{text}");
        assert!(
            text.contains("-kernel /img/vmlinuz -initrd /img/initrd.img"),
            "{text}"
        );
        assert!(text.contains("hostfwd=tcp:127.0.0.1:2222-:22"), "{text}");
        assert!(
            text.contains("-drive file=/state/overlays/j.qcow2,if=virtio,format=qcow2"),
            "{text}"
        );
        assert!(
            !text.contains("base.qcow2"),
            "the base is never given to QEMU: {text}"
        );
        assert!(text.contains("-daemonize -pidfile /state/j.pid"), "{text}");
    }

    #[test]
    fn leases_of_dead_vms_are_reaped_and_unreadable_ones_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let s = settings(dir.path());
        std::fs::create_dir_all(dir.path().join("leases")).unwrap();
        let overlay = dir.path().join("gone.qcow2");
        std::fs::write(&overlay, b"x").unwrap();
        let lease = Lease {
            job_id: Uuid::from_u128(1),
            // Our own pid: alive, but not a QEMU with this overlay, so not ours to kill.
            pid: std::process::id(),
            ssh_port: 1,
            overlay: overlay.clone(),
            serial_log: dir.path().join("log"),
            expires_at: Utc::now() + chrono::Duration::hours(1),
        };
        assert!(!alive(&lease));
        std::fs::write(
            s.lease_path(lease.job_id),
            serde_json::to_vec(&lease).unwrap(),
        )
        .unwrap();
        std::fs::write(dir.path().join("leases/broken.json"), b"{").unwrap();
        assert_eq!(s.leases(), std::slice::from_ref(&lease));
        assert_eq!(s.reap(Utc::now()), [lease.job_id]);
        assert!(!overlay.exists() && s.leases().is_empty());
    }
}
