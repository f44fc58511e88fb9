//! Disposable QEMU VMs for jobs that need a machine of their own: the `vm` backend (see
//! docs/provisioning.md).
//!
//! Per job: a copy-on-write overlay of the image's disk (`qemu-img create -b`), so the image is
//! never written, or an empty disk for a blank VM; direct kernel boot (`-kernel`/`-initrd`) or
//! the disk's (or an attached ISO's) boot loader; a cloud-init NoCloud seed with the SSH key;
//! user-mode networking with the guest's SSH port forwarded to a free port on 127.0.0.1; TCG
//! unless KVM is asked for (KVM is not usable on the development machines). QEMU runs daemonized: a VM outlives the provisioner that started
//! it, and a **lease** file records it (job, QEMU's pid, port, overlay, expiry), so a restarted
//! provisioner finds and reaps what it left. A VM is ready when `ssh` with the job's key runs a
//! command in it and its cloud-init, if it has one, finished.

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
    /// Leases, overlays, seeds and serial logs live here (`leases/`, `overlays/`, `seeds/`,
    /// `logs/`).
    pub state_dir: PathBuf,
    pub memory_mb: u32,
    /// VMs at once; more are refused (the caller keeps the job queued).
    pub max_vms: usize,
    /// The private key the guest accepts, and its user.
    pub ssh_key: PathBuf,
    pub ssh_user: String,
    /// How long a VM may take to answer SSH.
    pub boot_timeout: Duration,
    /// How long a VM may live once it answers SSH (its job should have ended by then).
    pub lease: Duration,
    /// `tcg` or `kvm`.
    pub accel: String,
}

/// What one VM boots: the image's files, fetched, or a blank disk and an ISO.
#[derive(Debug, Clone, PartialEq)]
pub struct BootSpec {
    /// The QEMU binary, e.g. `qemu-system-x86_64`.
    pub qemu: String,
    pub disk: Disk,
    /// Direct kernel boot: kernel, initramfs, command line.
    pub kernel: Option<(PathBuf, Option<PathBuf>, String)>,
    /// Attached as the CD-ROM; booted from when the VM has no kernel of its own to boot.
    pub iso: Option<PathBuf>,
    /// Give the VM a cloud-init NoCloud seed (user, key, hostname).
    pub cloud_init: bool,
    pub extra_args: Vec<String>,
}

/// The VM's first disk (`/dev/vda` in the guest).
#[derive(Debug, Clone, PartialEq)]
pub enum Disk {
    /// A copy-on-write overlay of this image (qcow2 or raw), which stays untouched.
    Overlay(PathBuf),
    /// An empty disk of this many MiB (the target of an installation).
    Blank(u64),
}

/// A running VM, as recorded on disk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lease {
    pub job_id: Uuid,
    pub pid: u32,
    pub ssh_port: u16,
    pub overlay: PathBuf,
    /// The cloud-init seed, removed with the VM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<PathBuf>,
    /// Where `ssh` records the VM's host key at its first connection, removed with the VM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub known_hosts: Option<PathBuf>,
    /// The host keys the VM presented when it came up (`ssh-ed25519 AAAA...`), for the runner
    /// to accept no other.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host_keys: Vec<String>,
    pub serial_log: PathBuf,
    /// QEMU's control socket (QMP), removed with the VM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qmp: Option<PathBuf>,
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("no VM capacity: {running} of {max} VMs running")]
    Full { running: usize, max: usize },
    /// The VM started but never answered SSH (a kernel that does not boot, say); it is
    /// destroyed, its serial log kept.
    #[error("the VM did not answer SSH, or its cloud-init did not finish, within {secs}s (serial log kept: {})", serial_log.display())]
    NoAnswer { secs: u64, serial_log: PathBuf },
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
    pub fn qemu_args(&self, spec: &BootSpec, files: &VmFiles, ssh_port: u16) -> Vec<String> {
        let mut args: Vec<String> = vec![
            "-accel".into(),
            self.accel.clone(),
            "-m".into(),
            self.memory_mb.to_string(),
            "-smp".into(),
            "1".into(),
            "-display".into(),
            "none".into(),
            // A guest that reboots while it boots (a kernel that panics, with `panic=-1`) ends
            // its QEMU at once, so the failed boot is seen without waiting out the boot timeout;
            // once it answers SSH, reboots reset it instead (`allow_reboots`), for tasks that
            // reboot their VM.
            "-no-reboot".into(),
            "-qmp".into(),
            format!("unix:{},server=on,wait=off", files.qmp.display()),
        ];
        args.extend(default_machine(spec));
        if let Some((kernel, initrd, append)) = &spec.kernel {
            args.extend(["-kernel".into(), kernel.display().to_string()]);
            if let Some(initrd) = initrd {
                args.extend(["-initrd".into(), initrd.display().to_string()]);
            }
            args.extend(["-append".into(), append.clone()]);
        }
        args.extend([
            "-nic".into(),
            format!("user,model=e1000,hostfwd=tcp:127.0.0.1:{ssh_port}-:22"),
            "-drive".into(),
            format!("file={},if=virtio,format=qcow2", files.overlay.display()),
        ]);
        if let Some(seed) = &files.seed {
            args.extend([
                "-drive".into(),
                format!("file={},if=virtio,format=raw,readonly=on", seed.display()),
            ]);
        }
        if let Some(iso) = &spec.iso {
            args.extend(cdrom(spec, iso));
        }
        args.extend(spec.extra_args.iter().cloned());
        args.extend([
            "-serial".into(),
            format!("file:{}", files.serial_log.display()),
            "-daemonize".into(),
            "-pidfile".into(),
            files.pidfile.display().to_string(),
        ]);
        args
    }

    /// Where one job's VM keeps its files.
    pub fn files(&self, job_id: Uuid, seed: bool) -> VmFiles {
        VmFiles {
            overlay: self
                .state_dir
                .join("overlays")
                .join(format!("{job_id}.qcow2")),
            seed: seed.then(|| self.state_dir.join("seeds").join(format!("{job_id}.iso"))),
            serial_log: self
                .state_dir
                .join("logs")
                .join(format!("{job_id}.serial.log")),
            pidfile: self
                .state_dir
                .join("overlays")
                .join(format!("{job_id}.pid")),
            qmp: self
                .state_dir
                .join("overlays")
                .join(format!("{job_id}.qmp")),
        }
    }

    /// Every lease on disk (blocking: reads the leases directory; see [`Self::current_leases`]).
    pub fn leases(&self) -> Vec<Lease> {
        let Ok(entries) = std::fs::read_dir(self.leases_dir()) else {
            return Vec::new();
        };
        entries
            .filter_map(|e| std::fs::read(e.ok()?.path()).ok())
            .filter_map(|bytes| serde_json::from_slice(&bytes).ok())
            .collect()
    }

    /// [`Self::leases`] off the async threads.
    pub async fn current_leases(&self) -> Vec<Lease> {
        let settings = self.clone();
        tokio::task::spawn_blocking(move || settings.leases())
            .await
            .unwrap_or_default()
    }

    /// Start a VM for `job_id` and wait until SSH answers; its lease is recorded first, so a VM
    /// that never answers is still reaped.
    pub async fn boot(&self, job_id: Uuid, spec: &BootSpec) -> Result<Lease, VmError> {
        let running = self.current_leases().await.len();
        if running >= self.max_vms {
            return Err(VmError::Full {
                running,
                max: self.max_vms,
            });
        }
        for dir in ["leases", "overlays", "seeds", "hostkeys", "logs"] {
            tokio::fs::create_dir_all(self.state_dir.join(dir)).await?;
        }
        let files = self.files(job_id, spec.cloud_init);
        run(&mut create_disk(&spec.disk, &files.overlay)).await?;
        let ssh_port = free_port()?;
        if let Err(err) = self.start_qemu(job_id, spec, &files, ssh_port).await {
            remove_files([Some(&files.overlay), files.seed.as_ref()]).await;
            return Err(err);
        }
        let pid: u32 = tokio::fs::read_to_string(&files.pidfile)
            .await?
            .trim()
            .parse()
            .map_err(|_| VmError::Failed("QEMU wrote no pid".into()))?;
        let _ = tokio::fs::remove_file(&files.pidfile).await;
        let lease = Lease {
            job_id,
            pid,
            ssh_port,
            overlay: files.overlay,
            seed: files.seed,
            known_hosts: Some(self.state_dir.join("hostkeys").join(job_id.to_string())),
            host_keys: Vec::new(),
            serial_log: files.serial_log,
            qmp: Some(files.qmp),
            // Long enough to boot; counted again from when the VM answers.
            expires_at: Utc::now() + self.boot_timeout + self.lease,
        };
        self.record(&lease).await?;
        self.wait_for_ssh(lease).await
    }

    /// Write the seed (if the VM gets one) and start QEMU daemonized, its SSH on `ssh_port`.
    async fn start_qemu(
        &self,
        job_id: Uuid,
        spec: &BootSpec,
        files: &VmFiles,
        ssh_port: u16,
    ) -> Result<(), VmError> {
        if let Some(seed) = &files.seed {
            self.write_seed(job_id, seed).await?;
        }
        run(Command::new(&spec.qemu).args(self.qemu_args(spec, files, ssh_port))).await
    }

    /// Wait until the VM runs a command over SSH, then record its host keys and start its lease;
    /// a VM that does not answer in time (or whose QEMU died) is destroyed.
    async fn wait_for_ssh(&self, mut lease: Lease) -> Result<Lease, VmError> {
        let deadline = Instant::now() + self.boot_timeout;
        loop {
            // The banner first: an `ssh` started before the guest's network is up waits out its
            // whole connect timeout (QEMU accepts the connection at once), which cost ~5 s per
            // boot; the banner probe gives up after a second and is tried again.
            if ssh_banner(lease.ssh_port).await
                && self.ssh(&lease, "true").await.is_ok_and(|out| out.0 == 0)
                && self.cloud_init_finished(&lease, deadline).await
            {
                lease.host_keys = match &lease.known_hosts {
                    Some(path) => tokio::fs::read_to_string(path)
                        .await
                        .map(|text| host_keys(&text))
                        .unwrap_or_default(),
                    None => Vec::new(),
                };
                if let Some(qmp) = &lease.qmp {
                    if let Err(e) = allow_reboots(qmp).await {
                        self.destroy(&lease).await;
                        return Err(VmError::Failed(format!(
                            "cannot let the VM reboot through QEMU's QMP socket: {e}"
                        )));
                    }
                }
                lease.expires_at = Utc::now() + self.lease;
                self.record(&lease).await?;
                return Ok(lease);
            }
            if Instant::now() >= deadline || !alive(&lease) {
                self.destroy(&lease).await;
                return Err(VmError::NoAnswer {
                    secs: self.boot_timeout.as_secs(),
                    serial_log: lease.serial_log,
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Whether the guest's cloud-init, if it has one, finished (well or not) before `deadline`.
    /// A real cloud-init lets sshd start halfway through (after its `init` stage made the host
    /// keys and put the seed's keys in place); its `config` and `final` stages (users' passwords,
    /// runcmd, packages, scripts) run on while SSH answers, so a job started then would find its
    /// machine half-configured. Its verdict is for the job's task to check (tasks/cloud-smoke):
    /// a VM whose cloud-init ended in an error is still ready. Asked again when SSH fails
    /// (cloud-init restarts sshd).
    async fn cloud_init_finished(&self, lease: &Lease, deadline: Instant) -> bool {
        let left = deadline.saturating_duration_since(Instant::now());
        let wait = self.ssh(lease, CLOUD_INIT_WAIT);
        matches!(tokio::time::timeout(left, wait).await, Ok(Ok((0, _))))
    }

    /// The cloud-init NoCloud seed: an ISO 9660 volume labelled `cidata` with `meta-data`
    /// (instance id, hostname) and `user-data` (the login user and the public half of
    /// `ssh_key`), built with xorriso.
    async fn write_seed(&self, job_id: Uuid, seed: &Path) -> Result<(), VmError> {
        let public = Command::new("ssh-keygen")
            .arg("-y")
            .arg("-f")
            .arg(&self.ssh_key)
            .stdin(Stdio::null())
            .output()
            .await?;
        if !public.status.success() {
            return Err(VmError::Failed(format!(
                "cannot read the public key of {}: {}",
                self.ssh_key.display(),
                String::from_utf8_lossy(&public.stderr).trim()
            )));
        }
        let public_key = String::from_utf8_lossy(&public.stdout).trim().to_string();
        let dir = seed.with_extension("d");
        tokio::fs::create_dir_all(&dir).await?;
        let (meta_data, user_data) = seed_files(job_id, &self.ssh_user, &public_key);
        tokio::fs::write(dir.join("meta-data"), meta_data).await?;
        tokio::fs::write(dir.join("user-data"), user_data).await?;
        let made = run(Command::new("xorriso")
            .args(["-as", "mkisofs", "-quiet", "-V", "cidata", "-J", "-r", "-o"])
            .arg(seed)
            .arg(&dir))
        .await;
        let _ = tokio::fs::remove_dir_all(&dir).await;
        made
    }

    async fn record(&self, lease: &Lease) -> std::io::Result<()> {
        tokio::fs::write(
            self.lease_path(lease.job_id),
            serde_json::to_vec(lease).expect("leases serialise"),
        )
        .await
    }

    /// Run `command` in the VM over SSH; (exit code, stdout). The VM's host key is recorded at
    /// the first connection and required at every later one.
    pub async fn ssh(&self, lease: &Lease, command: &str) -> Result<(i32, String), VmError> {
        let known_hosts = match &lease.known_hosts {
            Some(path) => format!("UserKnownHostsFile={}", path.display()),
            None => "UserKnownHostsFile=/dev/null".into(),
        };
        let output = Command::new("ssh")
            .args([
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=accept-new",
            ])
            .args(["-o", &known_hosts, "-o", "HashKnownHosts=no"])
            .args(["-o", "LogLevel=ERROR", "-o", "ConnectTimeout=5", "-i"])
            .arg(&self.ssh_key)
            .args(["-p", &lease.ssh_port.to_string()])
            .arg(format!("{}@127.0.0.1", self.ssh_user))
            .arg(command)
            .stdin(Stdio::null())
            // A wait given up on (cloud_init_finished) leaves no ssh behind.
            .kill_on_drop(true)
            .output()
            .await?;
        Ok((
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stdout).into_owned(),
        ))
    }

    /// Stop the VM (if its QEMU still runs) and remove its overlay and lease. The base disk is
    /// untouched. The serial log stays, for the job's record.
    pub async fn destroy(&self, lease: &Lease) {
        if alive(lease) {
            // SAFETY: kill(2) on a pid checked (just above) to be this VM's QEMU.
            unsafe { libc::kill(lease.pid as i32, libc::SIGKILL) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while alive(lease) && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let lease_file = self.lease_path(lease.job_id);
        remove_files([
            Some(&lease.overlay),
            lease.seed.as_ref(),
            lease.known_hosts.as_ref(),
            lease.qmp.as_ref(),
            Some(&lease_file),
        ])
        .await;
    }

    /// Destroy every VM whose lease expired (its runner died, say) or whose QEMU is gone;
    /// returns their jobs. Run at start and periodically.
    pub async fn reap(&self, now: DateTime<Utc>) -> Vec<Uuid> {
        reap(self, now).await
    }
}

/// What the provisioner does with VMs besides choosing what they boot. [`VmSettings`] is the
/// real one (QEMU); tests put a double in its place, so the decisions around a VM (capacity, a
/// redelivered job, a boot that fails, a status the broker refuses) are tested without QEMU.
#[async_trait::async_trait]
pub trait VmPool: Send + Sync {
    /// Every VM recorded, running or not yet reaped (each counts against `max_vms`).
    async fn leases(&self) -> Vec<Lease>;
    /// Whether the lease's VM still runs.
    fn alive(&self, lease: &Lease) -> bool;
    /// Start a VM for the job and wait until it answers SSH.
    async fn boot(&self, job_id: Uuid, spec: &BootSpec) -> Result<Lease, VmError>;
    /// Stop the VM and remove what it used.
    async fn destroy(&self, lease: &Lease);
}

#[async_trait::async_trait]
impl VmPool for VmSettings {
    async fn leases(&self) -> Vec<Lease> {
        self.current_leases().await
    }

    fn alive(&self, lease: &Lease) -> bool {
        alive(lease)
    }

    async fn boot(&self, job_id: Uuid, spec: &BootSpec) -> Result<Lease, VmError> {
        VmSettings::boot(self, job_id, spec).await
    }

    async fn destroy(&self, lease: &Lease) {
        VmSettings::destroy(self, lease).await
    }
}

/// Destroy every VM of `pool` whose lease expired by `now` or that no longer runs; returns
/// their jobs.
pub async fn reap(pool: &dyn VmPool, now: DateTime<Utc>) -> Vec<Uuid> {
    let mut reaped = Vec::new();
    for lease in pool.leases().await {
        if lease.expires_at <= now || !pool.alive(&lease) {
            pool.destroy(&lease).await;
            reaped.push(lease.job_id);
        }
    }
    reaped
}

/// Whether `qemu` emulates a PC (`qemu-system-x86_64`, `qemu-system-i386`): its default machine
/// has an IDE CD-ROM and a BIOS that boots from it; other machines (aarch64's `virt`) have neither.
fn is_pc(qemu: &str) -> bool {
    qemu.ends_with("x86_64") || qemu.ends_with("i386")
}

/// The machine and CPU of an aarch64 VM whose image names none (a blank VM, say):
/// `qemu-system-aarch64` has no default machine, and `virt`'s default CPU is 32-bit. Cortex-A57
/// rather than `max`: under TCG `max` emulates pointer authentication, which made the tiny
/// guest's boot three times slower (about 22 s against 7 s).
fn default_machine(spec: &BootSpec) -> Vec<String> {
    if !spec.qemu.ends_with("aarch64") {
        return Vec::new();
    }
    let given = |names: &[&str]| spec.extra_args.iter().any(|a| names.contains(&a.as_str()));
    let mut args = Vec::new();
    if !given(&["-M", "-machine"]) {
        args.extend(["-M".into(), "virt".into()]);
    }
    if !given(&["-cpu"]) {
        args.extend(["-cpu".into(), "cortex-a57".into()]);
    }
    args
}

/// QEMU's arguments attaching `iso` as a CD-ROM: the PC's IDE one, booted from when the VM has
/// no kernel of its own; elsewhere a SCSI CD-ROM on a virtio-scsi controller (`media=cdrom`
/// alone gives `virt` a read-only virtio disk, not a CD-ROM), which the machine's firmware, if
/// the image brings one in its `qemu_args`, may boot: `-boot` is the PC BIOS's.
fn cdrom(spec: &BootSpec, iso: &Path) -> Vec<String> {
    let mut args = Vec::new();
    if is_pc(&spec.qemu) {
        args.extend([
            "-drive".into(),
            format!("file={},media=cdrom,readonly=on", iso.display()),
        ]);
        if spec.kernel.is_none() {
            args.extend(["-boot".into(), "order=dc".into()]);
        }
    } else {
        args.extend([
            "-device".into(),
            "virtio-scsi-pci,id=cdrom-bus".into(),
            "-drive".into(),
            format!(
                "file={},if=none,id=cdrom,media=cdrom,readonly=on",
                iso.display()
            ),
            "-device".into(),
            "scsi-cd,bus=cdrom-bus.0,drive=cdrom".into(),
        ]);
    }
    args
}

/// The `qemu-img` command that makes a VM's first disk at `overlay`: a copy-on-write overlay of
/// the image's disk (qcow2 or raw) or an empty disk.
fn create_disk(disk: &Disk, overlay: &Path) -> Command {
    let mut create = Command::new("qemu-img");
    create.args(["create", "-q", "-f", "qcow2"]);
    match disk {
        Disk::Overlay(base) => {
            let format = if base.extension().is_some_and(|e| e == "qcow2") {
                "qcow2"
            } else {
                "raw"
            };
            create.args(["-F", format, "-b"]).arg(base).arg(overlay);
        }
        Disk::Blank(size_mb) => {
            create.arg(overlay).arg(format!("{size_mb}M"));
        }
    }
    create
}

/// Remove these files, those that exist (a VM's files are removed whatever state it got to).
async fn remove_files<const N: usize>(files: [Option<&PathBuf>; N]) {
    for file in files.into_iter().flatten() {
        let _ = tokio::fs::remove_file(file).await;
    }
}

/// The keys of a known-hosts file (`type key` of each line, whatever names the host).
pub fn host_keys(known_hosts: &str) -> Vec<String> {
    known_hosts
        .lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .filter_map(|line| {
            let mut fields = line.split_whitespace().skip(1);
            Some(format!("{} {}", fields.next()?, fields.next()?))
        })
        .collect()
}

/// Where one VM's files are.
#[derive(Debug, Clone, PartialEq)]
pub struct VmFiles {
    pub overlay: PathBuf,
    pub seed: Option<PathBuf>,
    pub serial_log: PathBuf,
    pub pidfile: PathBuf,
    /// QEMU's control socket.
    pub qmp: PathBuf,
}

/// The hostname a job's VM gets from its seed: `taskbot-` and the job id's first 8 digits.
pub fn hostname(job_id: Uuid) -> String {
    format!("taskbot-{}", &job_id.simple().to_string()[..8])
}

/// `meta-data` and `user-data` of a job's NoCloud seed (pure, for tests). cloud-init puts the
/// key in the user's `authorized_keys`; for root it needs `disable_root: false`.
pub fn seed_files(job_id: Uuid, user: &str, public_key: &str) -> (String, String) {
    let host = hostname(job_id);
    let meta_data = format!("instance-id: taskbot-{job_id}\nlocal-hostname: {host}\n");
    let mut user_data =
        format!("#cloud-config\nhostname: {host}\nssh_pwauth: false\ndisable_root: false\n");
    if user == "root" {
        user_data.push_str(&format!("ssh_authorized_keys:\n  - {public_key}\n"));
    } else {
        user_data.push_str(&format!(
            "users:\n  - name: {user}\n    sudo: \"ALL=(ALL) NOPASSWD:ALL\"\n    lock_passwd: true\n    ssh_authorized_keys:\n      - {public_key}\n"
        ));
    }
    (meta_data, user_data)
}

/// Waits for the guest's cloud-init, where it has one, and succeeds whatever cloud-init's verdict
/// (`cloud-init status --wait` exits 1 on an error). 0 also for guests without cloud-init.
const CLOUD_INIT_WAIT: &str =
    "command -v cloud-init >/dev/null 2>&1 || exit 0; cloud-init status --wait >/dev/null 2>&1; exit 0";

/// Whether the lease's QEMU still runs: the pid exists and is a QEMU with this VM's overlay (a
/// pid reused by another process is not ours to kill). A read of `/proc` (kernel memory, never
/// a disk), so async code may call it.
pub fn alive(lease: &Lease) -> bool {
    std::fs::read(format!("/proc/{}/cmdline", lease.pid)).is_ok_and(|cmdline| {
        let overlay = lease.overlay.display().to_string();
        String::from_utf8_lossy(&cmdline).contains(&overlay)
    })
}

/// Tell the VM's QEMU, through its QMP socket, to reset the VM when the guest reboots instead
/// of exiting (`-no-reboot`, wanted only while the VM boots): QMP's `set-action`.
async fn allow_reboots(socket: &Path) -> Result<(), String> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let talk = async {
        let stream = tokio::net::UnixStream::connect(socket)
            .await
            .map_err(|e| format!("{}: {e}", socket.display()))?;
        let (read, mut write) = stream.into_split();
        let mut lines = BufReader::new(read).lines();
        // The greeting, then one answer per command (events may come between: skipped).
        lines.next_line().await.map_err(|e| e.to_string())?;
        for command in [
            r#"{"execute":"qmp_capabilities"}"#,
            r#"{"execute":"set-action","arguments":{"reboot":"reset"}}"#,
        ] {
            write
                .write_all(format!("{command}\n").as_bytes())
                .await
                .map_err(|e| e.to_string())?;
            loop {
                let line = lines.next_line().await.map_err(|e| e.to_string())?;
                let line = line.ok_or("QEMU closed the socket")?;
                if line.contains("\"return\"") {
                    break;
                }
                if line.contains("\"error\"") {
                    return Err(format!("{command}: {line}"));
                }
            }
        }
        Ok(())
    };
    tokio::time::timeout(Duration::from_secs(10), talk)
        .await
        .map_err(|_| "QEMU did not answer within 10s".to_string())?
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

/// Whether an SSH server answers on 127.0.0.1:`port` with its banner within a second.
async fn ssh_banner(port: u16) -> bool {
    use tokio::io::AsyncReadExt;
    let second = Duration::from_secs(1);
    let Ok(Ok(mut stream)) =
        tokio::time::timeout(second, tokio::net::TcpStream::connect(("127.0.0.1", port))).await
    else {
        return false;
    };
    let mut banner = [0u8; 4];
    matches!(
        tokio::time::timeout(second, stream.read_exact(&mut banner)).await,
        Ok(Ok(_))
    ) && &banner == b"SSH-"
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
            memory_mb: 256,
            max_vms: 1,
            ssh_key: "/img/id".into(),
            ssh_user: "root".into(),
            boot_timeout: Duration::from_secs(1),
            lease: Duration::from_secs(60),
            accel: "tcg".into(),
        }
    }

    fn image_spec() -> BootSpec {
        BootSpec {
            qemu: "qemu-system-x86_64".into(),
            disk: Disk::Overlay("/img/base.qcow2".into()),
            kernel: Some((
                "/img/vmlinuz".into(),
                Some("/img/initrd.img".into()),
                "console=ttyS0".into(),
            )),
            iso: None,
            cloud_init: true,
            extra_args: vec!["-cpu".into(), "max".into()],
        }
    }

    #[test]
    fn qemu_boots_the_kernel_on_an_overlay_with_a_seed_and_ssh_forwarded_to_localhost() {
        let s = settings(Path::new("/state"));
        let job = Uuid::from_u128(7);
        let files = s.files(job, true);
        let text = s.qemu_args(&image_spec(), &files, 2222).join(" ");
        assert!(text.starts_with("-accel tcg -m 256"), "{text}");
        assert!(
            text.contains("-kernel /img/vmlinuz -initrd /img/initrd.img -append console=ttyS0"),
            "{text}"
        );
        assert!(text.contains("hostfwd=tcp:127.0.0.1:2222-:22"), "{text}");
        assert!(
            text.contains(&format!(
                "-drive file=/state/overlays/{job}.qcow2,if=virtio,format=qcow2 \
                 -drive file=/state/seeds/{job}.iso,if=virtio,format=raw,readonly=on"
            )),
            "the overlay is vda, the seed vdb: {text}"
        );
        assert!(
            !text.contains("base.qcow2"),
            "the base is never given to QEMU: {text}"
        );
        assert!(!text.contains("cdrom") && !text.contains("-boot"), "{text}");
        assert!(text.contains("-cpu max -serial"), "{text}");
        assert!(
            text.ends_with(&format!("-daemonize -pidfile /state/overlays/{job}.pid")),
            "{text}"
        );
    }

    #[test]
    fn a_blank_vm_boots_from_its_iso_and_an_image_without_cloud_init_gets_no_seed() {
        let s = settings(Path::new("/state"));
        let job = Uuid::from_u128(8);
        let blank = BootSpec {
            disk: Disk::Blank(256),
            kernel: None,
            iso: Some("/cache/install.iso".into()),
            extra_args: Vec::new(),
            ..image_spec()
        };
        let text = s.qemu_args(&blank, &s.files(job, true), 1).join(" ");
        assert!(
            text.contains("-drive file=/cache/install.iso,media=cdrom,readonly=on -boot order=dc"),
            "{text}"
        );
        assert!(!text.contains("-kernel"), "{text}");
        let no_seed = BootSpec {
            cloud_init: false,
            ..image_spec()
        };
        let files = s.files(job, no_seed.cloud_init);
        assert_eq!(files.seed, None);
        let text = s.qemu_args(&no_seed, &files, 1).join(" ");
        assert!(!text.contains("seeds"), "{text}");
    }

    #[test]
    fn an_aarch64_vm_gets_a_virt_machine_unless_its_image_names_one_and_a_scsi_cd_rom() {
        let s = settings(Path::new("/state"));
        let files = s.files(Uuid::from_u128(9), true);
        let arm = BootSpec {
            qemu: "qemu-system-aarch64".into(),
            iso: Some("/cache/extra.iso".into()),
            extra_args: Vec::new(),
            ..image_spec()
        };
        let text = s.qemu_args(&arm, &files, 1).join(" ");
        assert!(
            text.contains("-no-reboot -qmp unix:")
                && text.contains(",server=on,wait=off -M virt -cpu cortex-a57 -kernel"),
            "{text}"
        );
        assert!(
            text.contains(
                "-device virtio-scsi-pci,id=cdrom-bus \
                 -drive file=/cache/extra.iso,if=none,id=cdrom,media=cdrom,readonly=on \
                 -device scsi-cd,bus=cdrom-bus.0,drive=cdrom"
            ),
            "{text}"
        );
        assert!(!text.contains("-boot"), "the PC BIOS's: {text}");
        // The image's own machine and CPU win.
        let own = BootSpec {
            extra_args: ["-machine", "virt,gic-version=3", "-cpu", "max"]
                .map(Into::into)
                .to_vec(),
            ..arm
        };
        let text = s.qemu_args(&own, &files, 1).join(" ");
        assert!(
            !text.contains("cortex-a57") && !text.contains("-M virt"),
            "{text}"
        );
        assert!(
            text.contains("-machine virt,gic-version=3 -cpu max"),
            "{text}"
        );
        // The PC gets neither.
        let text = s.qemu_args(&image_spec(), &files, 1).join(" ");
        assert!(!text.contains("-M ") && !text.contains("cortex"), "{text}");
    }

    #[test]
    fn host_keys_are_read_from_known_hosts_lines_plain_or_hashed() {
        let text = "[127.0.0.1]:2222 ssh-ed25519 AAAAkey1\n# comment\n\
                    |1|salt=|hash= ecdsa-sha2-nistp256 AAAAkey2 comment\nbroken\n";
        assert_eq!(
            host_keys(text),
            ["ssh-ed25519 AAAAkey1", "ecdsa-sha2-nistp256 AAAAkey2"]
        );
    }

    #[test]
    fn seeds_carry_the_key_for_root_or_a_sudo_user() {
        let job = Uuid::parse_str("0123456789abcdef0123456789abcdef").unwrap();
        assert_eq!(hostname(job), "taskbot-01234567");
        let (meta, user) = seed_files(job, "root", "ssh-ed25519 AAAA k");
        assert_eq!(
            meta,
            format!("instance-id: taskbot-{job}\nlocal-hostname: taskbot-01234567\n")
        );
        assert!(
            user.starts_with("#cloud-config\nhostname: taskbot-01234567\n"),
            "{user}"
        );
        assert!(
            user.contains("disable_root: false\nssh_authorized_keys:\n  - ssh-ed25519 AAAA k\n"),
            "{user}"
        );
        let (_, user) = seed_files(job, "fedora", "ssh-ed25519 AAAA k");
        assert!(user.contains("users:\n  - name: fedora\n"), "{user}");
        assert!(user.contains("      - ssh-ed25519 AAAA k\n"), "{user}");
        assert!(!user.contains("\nssh_authorized_keys"), "{user}");
    }

    #[tokio::test]
    async fn leases_of_dead_vms_are_reaped_and_unreadable_ones_ignored() {
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
            seed: None,
            known_hosts: None,
            host_keys: Vec::new(),
            serial_log: dir.path().join("log"),
            qmp: None,
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
        assert_eq!(s.reap(Utc::now()).await, [lease.job_id]);
        assert!(!overlay.exists() && s.leases().is_empty());
    }
}
