//! The `provisioner` service: takes job requests, prepares the machine each needs, and puts the
//! job on the run queue of its arch.
//!
//! Two backends: `local` (the job runs on the runner's own host: nothing to allocate) and, when
//! `[provisioner.vm]` is configured, disposable QEMU VMs ([`vm`]) for jobs that need a VM or are
//! destructive: a fresh VM per job, destroyed when the job's final status arrives (or, if that
//! never comes, when its lease runs out). Jobs this deployment cannot serve (an arch it has no
//! runners for; a VM or destructive task without the VM backend) get a CRASHED result saying why,
//! rather than waiting forever on a queue no one reads or running somewhere unsafe.

pub mod catalogue;
pub mod cpio;
pub mod kernel;
pub mod vm;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use taskbot::amqp::{
    self, ConsumerSpec, DeliveryContext, Disposition, Handler, Incoming, Outgoing,
};
use taskbot::config::{VmBackendConfig, VmImageConfig};
use taskbot::messages::{
    Environment, JobRequest, JobState, JobStatus, Machine, Message, Outcome, ProvisionedJob,
    RemoteFile, TaskResult, VmRequest,
};
use taskbot::routes::Publishable;
use taskbot::{Config, Service, Shutdown, Topology};
use vm::{BootSpec, Disk, Lease, VmError, VmPool, VmSettings};

pub struct ProvisionerHandler {
    pub topology: Topology,
    pub arches: Vec<String>,
    pub instance: String,
    /// The VM backend, when configured.
    pub vm: Option<VmBackend>,
}

/// Disposable VMs: where and how they run, and the image catalogue.
pub struct VmBackend {
    pub settings: VmSettings,
    /// Where the VMs come from: QEMU with `settings` ([`VmBackend::from_config`]), or a double
    /// a test puts in with [`VmBackend::with_pool`].
    pub pool: Arc<dyn VmPool>,
    pub images: Vec<VmImageConfig>,
    /// The arches the catalogue has images for.
    pub arches: Vec<String>,
    /// URL prefixes a job's ISO may come from.
    pub allowed_urls: Vec<String>,
    pub download_max_bytes: u64,
    pub http: reqwest::Client,
    /// Where jobs that boot their item's kernel get it (`vm.kernel_from_item`).
    pub kernels: kernel::KernelSource,
}

/// Largest blank disk a job may ask for (qcow2 grows as written; this bounds a runaway
/// installer).
const MAX_BLANK_DISK_MB: u64 = 256 * 1024;

impl VmBackend {
    pub fn from_config(config: &VmBackendConfig) -> VmBackend {
        let settings = VmSettings {
            state_dir: config.state_dir.clone(),
            memory_mb: config.memory_mb,
            max_vms: config.max_vms,
            ssh_key: config.ssh_key.clone(),
            ssh_user: config.ssh_user.clone(),
            boot_timeout: Duration::from_secs(config.boot_timeout_secs),
            lease: Duration::from_secs(config.lease_secs),
            accel: config.accel.clone(),
        };
        // A stalled mirror fails the download (and the job, CRASHED) instead of holding the
        // provisioner, which serves one job at a time.
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(30))
            .read_timeout(Duration::from_secs(120))
            .user_agent(concat!("taskbot-provisioner/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_default();
        VmBackend {
            kernels: kernel::KernelSource {
                http: http.clone(),
                koji_pkgs_url: config.koji_pkgs_url.clone(),
                cache: config.state_dir.join("cache").join("kernels"),
                max_bytes: config.kernel_max_bytes,
            },
            pool: Arc::new(settings.clone()),
            settings,
            images: config.images.clone(),
            arches: catalogue::arches(&config.images),
            allowed_urls: config.allowed_urls.clone(),
            download_max_bytes: config.download_max_bytes,
            http,
        }
    }

    /// The same backend with its VMs from `pool` (for tests: no QEMU).
    pub fn with_pool(self, pool: Arc<dyn VmPool>) -> VmBackend {
        VmBackend { pool, ..self }
    }

    fn cache_dir(&self) -> PathBuf {
        self.settings.state_dir.join("cache")
    }

    /// What the job's VM boots, with every file fetched; or why it cannot have one (the job
    /// ends CRASHED with that). Returns a description for the job's status too.
    pub async fn boot_spec(
        &self,
        arch: &str,
        request: &VmRequest,
    ) -> Result<(BootSpec, String), String> {
        let iso = match &request.iso {
            Some(file) => Some(self.fetch_iso(file).await?),
            None => None,
        };
        match request.blank_disk_mb {
            Some(size_mb) => blank_spec(arch, size_mb, request, iso),
            None => self.image_spec(arch, request, iso).await,
        }
    }

    /// `spec` with the job's own kernel (`vm.kernel_from_item`) in place of the image's: the
    /// kernel RPM of `item` from Koji, booted with the image's initramfs and the RPM's modules
    /// appended to it, and the image's command line.
    pub async fn with_job_kernel(
        &self,
        mut spec: BootSpec,
        what: String,
        item: &str,
        arch: &str,
    ) -> Result<(BootSpec, String), String> {
        let Some((_, Some(image_initrd), append)) = spec.kernel.take() else {
            return Err(format!(
                "{what} has no kernel and initramfs of its own, so it cannot boot the job's \
                 kernel with its userspace (kernel_from_item needs an image with direct kernel boot)"
            ));
        };
        let kernel = self.kernels.fetch(item, arch).await?;
        let with_modules = kernel.clone();
        let initrd = tokio::task::spawn_blocking(move || {
            kernel::initrd_with_modules(&image_initrd, &with_modules)
        })
        .await
        .map_err(|e| e.to_string())??;
        let append = match kernel::early_console(arch) {
            Some(console) => format!("{append} {console}"),
            None => append,
        };
        spec.kernel = Some((kernel.vmlinuz.clone(), Some(initrd), append));
        Ok((
            spec,
            format!("{what} with the kernel of {item} ({})", kernel.release),
        ))
    }

    /// The job's ISO, fetched, if its URL is under an allowed prefix.
    async fn fetch_iso(&self, file: &RemoteFile) -> Result<PathBuf, String> {
        if climbs(&file.url) || !self.allowed_urls.iter().any(|p| file.url.starts_with(p)) {
            return Err(format!(
                "the ISO {} is not under an allowed URL (provisioner.vm.allowed_urls: {})",
                file.url,
                if self.allowed_urls.is_empty() {
                    "none".to_string()
                } else {
                    self.allowed_urls.join(", ")
                }
            ));
        }
        catalogue::fetch_url(
            &self.http,
            &file.url,
            &file.sha256,
            &self.cache_dir(),
            self.download_max_bytes,
        )
        .await
    }

    /// The catalogue image the request asks for, its files fetched.
    async fn image_spec(
        &self,
        arch: &str,
        request: &VmRequest,
        iso: Option<PathBuf>,
    ) -> Result<(BootSpec, String), String> {
        let image = catalogue::select(&self.images, arch, &request.image)?;
        let cache = self.cache_dir();
        let max = self.download_max_bytes;
        let fetch = |file| catalogue::fetch(&self.http, file, &cache, max);
        let disk = fetch(&image.disk).await?;
        let kernel = match &image.kernel {
            Some(kernel) => {
                let initrd = match &image.initrd {
                    Some(initrd) => Some(fetch(initrd).await?),
                    None => None,
                };
                Some((fetch(kernel).await?, initrd, image.append.clone()))
            }
            None => None,
        };
        let spec = BootSpec {
            qemu: image
                .qemu
                .clone()
                .unwrap_or_else(|| format!("qemu-system-{arch}")),
            disk: Disk::Overlay(disk),
            kernel,
            iso,
            cloud_init: image.cloud_init,
            extra_args: image.qemu_args.clone(),
        };
        Ok((spec, format!("image {}", image.name)))
    }
}

/// The last `lines` lines of a console log, printable characters only, at most `max_chars`.
pub fn last_lines(text: &str, lines: usize, max_chars: usize) -> String {
    let clean: Vec<String> = text
        .lines()
        .map(|line| {
            line.chars()
                .filter(|c| !c.is_control() || *c == '\t')
                .collect::<String>()
        })
        .filter(|line| !line.trim().is_empty())
        .collect();
    let tail = clean[clean.len().saturating_sub(lines)..].join("\n");
    let skip = tail.chars().count().saturating_sub(max_chars);
    let tail: String = tail.chars().skip(skip).collect();
    if tail.is_empty() {
        "(the serial console stayed empty)".into()
    } else {
        tail
    }
}

/// Whether a URL has a `..` segment, or a percent-encoded dot, slash or backslash (which a
/// server may decode into one): either could escape an allowed prefix.
fn climbs(url: &str) -> bool {
    url.split(['/', '?', '#']).any(|segment| {
        let segment = segment.to_ascii_lowercase();
        segment == ".." || ["%2e", "%2f", "%5c"].iter().any(|e| segment.contains(e))
    })
}

/// A blank disk of `size_mb` booting the request's ISO (an installation), if the request is
/// one that can be.
fn blank_spec(
    arch: &str,
    size_mb: u64,
    request: &VmRequest,
    iso: Option<PathBuf>,
) -> Result<(BootSpec, String), String> {
    if !request.image.is_any() {
        return Err("a VM is either blank or of an image, not both".into());
    }
    if !(1..=MAX_BLANK_DISK_MB).contains(&size_mb) {
        return Err(format!(
            "blank_disk_mb must be 1 to {MAX_BLANK_DISK_MB}, not {size_mb}"
        ));
    }
    if iso.is_none() {
        return Err("a blank VM needs an ISO to boot from".into());
    }
    // A PC's BIOS boots the ISO; QEMU's aarch64 `virt` machine has no firmware of its own (a
    // blank VM has no image whose qemu_args could bring UEFI's), so it would only time out.
    if arch == "aarch64" {
        return Err(
            "a blank aarch64 VM cannot boot an ISO: the VM backend gives it no UEFI \
                    firmware (only x86_64 blank VMs boot ISOs)"
                .into(),
        );
    }
    let spec = BootSpec {
        qemu: format!("qemu-system-{arch}"),
        disk: Disk::Blank(size_mb),
        kernel: None,
        iso,
        cloud_init: true,
        extra_args: Vec::new(),
    };
    Ok((spec, format!("a blank {size_mb} MiB disk and the ISO")))
}

/// Whether a job must get a machine of its own.
fn needs_vm(job: &JobRequest) -> bool {
    job.destructive || job.environment == Environment::Vm
}

impl ProvisionerHandler {
    /// What to publish for one job request (jobs that need a VM are only decided here when
    /// there is no VM backend; see [`Self::provision_vm`]).
    pub fn decide(&self, incoming: &Incoming) -> Disposition {
        let job = match JobRequest::from_json(&incoming.body) {
            Ok(j) => j,
            Err(err) => return Disposition::DeadLetter(err.to_string()),
        };
        self.decide_job(&job)
    }

    fn decide_job(&self, job: &JobRequest) -> Disposition {
        let job = job.clone();
        if let Some(reason) = self.refusal(&job) {
            tracing::warn!(job_id = %job.job_id, %reason, "job cannot be provisioned");
            return Disposition::Done(self.crashed(&job, &reason));
        }
        // Provisioning on the local host decides the same thing for every copy of the request:
        // its statuses are recorded once however often the request is delivered.
        let provisioning = JobStatus::once(&job, JobState::Provisioning, &self.instance, None);
        let provisioned = ProvisionedJob {
            job: job.clone(),
            machine: Machine::Local,
            provisioner: "local".into(),
            provisioned_at: Utc::now(),
        };
        let queued = JobStatus::once(
            &job,
            JobState::Provisioned,
            &self.instance,
            Some(format!("local, on {}", self.topology.run_queue(&job.arch))),
        );
        tracing::info!(job_id = %job.job_id, arch = %job.arch, "job provisioned (local)");
        Disposition::Done(vec![
            self.status(&provisioning),
            self.run_message(&provisioned),
            self.status(&queued),
        ])
    }

    fn refusal_of_arch(&self, job: &JobRequest) -> Option<String> {
        (!self.arches.contains(&job.arch)).then(|| {
            format!(
                "arch {} is not served by this deployment (arches: {})",
                job.arch,
                self.arches.join(", ")
            )
        })
    }

    /// Why this job cannot be served here (without a VM backend), if it cannot.
    fn refusal(&self, job: &JobRequest) -> Option<String> {
        if let Some(reason) = self.refusal_of_arch(job) {
            return Some(reason);
        }
        if job.destructive {
            return Some(
                "destructive tasks run only in a disposable VM, and this provisioner has no VM backend"
                    .into(),
            );
        }
        if job.environment == Environment::Vm {
            return Some("the task needs a VM, and this provisioner has no VM backend".into());
        }
        None
    }

    /// A fresh VM for the job (the same one again for a redelivered request whose VM still
    /// runs), then the job on its arch's run queue with how to reach the VM. At capacity the job
    /// goes back to the queue to wait; a VM that cannot start crashes the job with the reason.
    async fn provision_vm(
        &self,
        job: &JobRequest,
        vm: &VmBackend,
        ctx: &dyn DeliveryContext,
    ) -> Disposition {
        if let Some(reason) = self.refusal_of_vm(job, vm) {
            return Disposition::Done(self.crashed(job, &reason));
        }
        let lease = match self.lease_for(job, vm, ctx).await {
            Ok(lease) => lease,
            Err(instead) => return instead,
        };
        tracing::info!(job_id = %job.job_id, port = lease.ssh_port, pid = lease.pid, "job provisioned (vm)");
        Disposition::Done(self.vm_provisioned(job, vm, &lease))
    }

    /// Why this job cannot have a VM here (its arch is not served, or the catalogue has no
    /// image of it), if it cannot.
    fn refusal_of_vm(&self, job: &JobRequest, vm: &VmBackend) -> Option<String> {
        if let Some(reason) = self.refusal_of_arch(job) {
            return Some(reason);
        }
        (!vm.arches.contains(&job.arch)).then(|| {
            format!(
                "no VM image for arch {} (the image catalogue has: {})",
                job.arch,
                vm.arches.join(", ")
            )
        })
    }

    /// The job's VM: the one an earlier delivery of it started, if it still runs, else a fresh
    /// one. `Err` is what to do with the delivery instead.
    async fn lease_for(
        &self,
        job: &JobRequest,
        vm: &VmBackend,
        ctx: &dyn DeliveryContext,
    ) -> Result<Lease, Disposition> {
        let leases = vm.pool.leases().await;
        if let Some(lease) = leases
            .iter()
            .find(|l| l.job_id == job.job_id && vm.pool.alive(l))
        {
            return Ok(lease.clone());
        }
        // At capacity the job waits, retried every few seconds: checked before the
        // `provisioning` status, so a waiting job does not publish one per retry.
        if leases.len() >= vm.settings.max_vms {
            return Err(Disposition::Retry(format!(
                "all {} VMs are in use; the job waits",
                vm.settings.max_vms
            )));
        }
        self.start_vm(job, vm, ctx).await
    }

    /// Find what the job's VM boots, say so (the `provisioning` status), and boot it.
    async fn start_vm(
        &self,
        job: &JobRequest,
        vm: &VmBackend,
        ctx: &dyn DeliveryContext,
    ) -> Result<Lease, Disposition> {
        let request = job.vm.clone().unwrap_or_default();
        let prepared = match vm.boot_spec(&job.arch, &request).await {
            Ok((spec, what)) if request.kernel_from_item => {
                vm.with_job_kernel(spec, what, &job.item, &job.arch).await
            }
            other => other,
        };
        let (spec, what) = prepared.map_err(|reason| {
            let reason = format!("cannot provide the VM: {reason}");
            tracing::warn!(job_id = %job.job_id, %reason, "no VM for the job");
            Disposition::Done(self.crashed(job, &reason))
        })?;
        let provisioning = JobStatus::new(
            job,
            JobState::Provisioning,
            &self.instance,
            Some(format!("starting a VM: {what}")),
        );
        if let Err(e) = ctx.publish(&self.status(&provisioning)).await {
            return Err(Disposition::Retry(format!(
                "cannot publish the provisioning status: {e}"
            )));
        }
        vm.pool
            .boot(job.job_id, &spec)
            .await
            .map_err(|err| match err {
                VmError::Full { max, .. } => {
                    Disposition::Retry(format!("all {max} VMs are in use; the job waits"))
                }
                VmError::NoAnswer { secs, serial_log } if request.kernel_from_item => {
                    Disposition::Done(self.kernel_did_not_boot(job, secs, &serial_log))
                }
                e => {
                    let reason = format!("cannot start a VM for the job: {e}");
                    tracing::warn!(job_id = %job.job_id, %reason, "VM failed");
                    Disposition::Done(self.crashed(job, &reason))
                }
            })
    }

    /// The job on its arch's run queue with how to reach its VM, and the `provisioned` status.
    fn vm_provisioned(&self, job: &JobRequest, vm: &VmBackend, lease: &Lease) -> Vec<Outgoing> {
        let provisioned = ProvisionedJob {
            job: job.clone(),
            machine: Machine::Vm {
                host: "127.0.0.1".into(),
                port: lease.ssh_port,
                user: vm.settings.ssh_user.clone(),
                key_path: vm.settings.ssh_key.display().to_string(),
                host_keys: lease.host_keys.clone(),
            },
            provisioner: "vm".into(),
            provisioned_at: Utc::now(),
        };
        let queued = JobStatus::new(
            job,
            JobState::Provisioned,
            &self.instance,
            Some(format!(
                "VM on 127.0.0.1:{} (QEMU pid {}), on {}",
                lease.ssh_port,
                lease.pid,
                self.topology.run_queue(&job.arch)
            )),
        );
        vec![self.run_message(&provisioned), self.status(&queued)]
    }

    /// The provisioned job on its arch's run queue, with the job's priority.
    fn run_message(&self, provisioned: &ProvisionedJob) -> Outgoing {
        provisioned.outgoing(&self.topology)
    }

    fn status(&self, status: &JobStatus) -> Outgoing {
        status.outgoing(&self.topology)
    }

    /// The verdict on a kernel (`vm.kernel_from_item`) whose VM never answered: a FAILED result
    /// `dist.<task>.boot` with the serial console's last lines, and a `done` status. (The image
    /// boots with its own kernel, so the job's kernel is what failed.)
    fn kernel_did_not_boot(&self, job: &JobRequest, secs: u64, serial_log: &Path) -> Vec<Outgoing> {
        let console = std::fs::read(serial_log).unwrap_or_default();
        let note = format!(
            "the kernel of {} did not boot: no SSH within {secs}s. The serial console's last \
             lines:\n{}",
            job.item,
            last_lines(&String::from_utf8_lossy(&console), 30, 6000)
        );
        tracing::warn!(job_id = %job.job_id, %note, "the job's kernel did not boot");
        let testcase = format!("dist.{}.boot", job.task.name);
        let result = TaskResult::of_job(job, &self.instance, testcase, Outcome::Failed, &note);
        let status = JobStatus::new(job, JobState::Done, &self.instance, Some(note.clone()));
        vec![result.outgoing(&self.topology), self.status(&status)]
    }

    /// CRASHED results (one per testcase the rule declares) and a `crashed` status: the job
    /// ends visibly.
    fn crashed(&self, job: &JobRequest, reason: &str) -> Vec<Outgoing> {
        let status = JobStatus::new(job, JobState::Crashed, &self.instance, Some(reason.into()));
        TaskResult::crashed_all(job, &self.instance, reason)
            .iter()
            .map(|result| result.outgoing(&self.topology))
            .chain([self.status(&status)])
            .collect()
    }
}

#[async_trait::async_trait]
impl Handler for ProvisionerHandler {
    async fn handle(&self, incoming: Incoming, ctx: &dyn DeliveryContext) -> Disposition {
        let job = match JobRequest::from_json(&incoming.body) {
            Ok(j) => j,
            Err(err) => return Disposition::DeadLetter(err.to_string()),
        };
        match &self.vm {
            Some(vm) if needs_vm(&job) => self.provision_vm(&job, vm, ctx).await,
            _ => self.decide_job(&job),
        }
    }
}

/// Destroys the VM of each job whose final status (`done`, `crashed`) arrives.
pub struct FinishedHandler {
    pub vm: Arc<VmBackend>,
    /// The broker users whose final statuses end a VM's job: the runners' of every arch (the job
    /// ran), the provisioner's own (it gave up on the job) and the operator's. A status from
    /// anyone else could otherwise destroy a running job's VM. (Which arch's runner may end which
    /// job is the reporter's check; a VM job's runner is the one its arch's queue reached.)
    pub senders: Vec<String>,
}

impl FinishedHandler {
    pub fn new(vm: Arc<VmBackend>, config: &Config) -> FinishedHandler {
        let amqp = &config.amqp;
        let mut senders: Vec<String> = amqp
            .runner_users()
            .all()
            .into_iter()
            .map(String::from)
            .collect();
        senders.extend([
            amqp.user_name(Service::Provisioner),
            amqp.user_name(taskbot::Role::Cli),
        ]);
        senders.sort();
        senders.dedup();
        FinishedHandler { vm, senders }
    }

    /// Why a status from `user_id` cannot end a job, if it cannot.
    fn refusal(&self, user_id: Option<&str>) -> Option<String> {
        match user_id {
            Some(user) if self.senders.iter().any(|s| s == user) => None,
            Some(user) => Some(format!(
                "a final status from broker user {user:?} cannot end a VM's job (accepted: {:?})",
                self.senders
            )),
            None => Some("a final status without a user_id cannot end a VM's job".into()),
        }
    }
}

#[async_trait::async_trait]
impl Handler for FinishedHandler {
    async fn handle(&self, incoming: Incoming, _ctx: &dyn DeliveryContext) -> Disposition {
        let status = match JobStatus::from_json(&incoming.body) {
            Ok(s) => s,
            Err(err) => return Disposition::DeadLetter(err.to_string()),
        };
        if status.state.is_final() {
            if let Some(reason) = self.refusal(incoming.user_id.as_deref()) {
                return Disposition::DeadLetter(reason);
            }
            let job_id = status.job_id;
            let lease = self
                .vm
                .pool
                .leases()
                .await
                .into_iter()
                .find(|l| l.job_id == job_id);
            if let Some(lease) = lease {
                self.vm.pool.destroy(&lease).await;
                tracing::info!(%job_id, state = %status.state, "job ended; its VM is destroyed");
            }
        }
        Disposition::Done(Vec::new())
    }
}

/// Run until `shutdown`.
pub async fn run(config: Config, shutdown: Shutdown) -> anyhow::Result<()> {
    if config.provisioner.backend != "local" {
        anyhow::bail!(
            "provisioner.backend: unknown backend {:?} (available: local)",
            config.provisioner.backend
        );
    }
    if let Some(vm) = &config.provisioner.vm {
        catalogue::validate(&vm.images).map_err(anyhow::Error::msg)?;
    }
    let topology = Topology::for_config(&config);
    let vm = config
        .provisioner
        .vm
        .as_ref()
        .map(|c| Arc::new(VmBackend::from_config(c)));
    let handler = Arc::new(ProvisionerHandler {
        topology: topology.clone(),
        arches: config.arches.clone(),
        instance: taskbot::instance_name("provisioner"),
        vm: config.provisioner.vm.as_ref().map(VmBackend::from_config),
    });
    // One job at a time: VM boots are serialized, so the capacity check cannot race.
    let spec = ConsumerSpec {
        queue: topology.provisioner_queue(),
        name: "taskbot-provisioner".into(),
        concurrency: 1,
        retry_delay: Duration::from_secs(2),
    };
    let Some(vm) = vm else {
        amqp::consume(&config.amqp, &topology, spec, handler, shutdown).await;
        return Ok(());
    };
    // What an earlier run left: VMs of jobs that ended meanwhile, or whose lease ran out.
    let reaped = vm::reap(vm.pool.as_ref(), Utc::now()).await;
    tracing::info!(
        reaped = reaped.len(),
        max_vms = vm.settings.max_vms,
        "VM backend ready"
    );
    // Often enough that a VM outlives its lease by at most a quarter of it (and 30 s).
    let reap_every = (vm.settings.lease / 4).clamp(Duration::from_secs(1), Duration::from_secs(30));
    let reaper = {
        let vm = vm.clone();
        let mut shutdown = shutdown.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(reap_every) => {}
                    _ = shutdown.wait() => break,
                }
                for job_id in vm::reap(vm.pool.as_ref(), Utc::now()).await {
                    tracing::warn!(%job_id, "VM reaped: its lease ran out or its QEMU is gone");
                }
            }
        })
    };
    let finished = ConsumerSpec {
        queue: topology.provisioner_finished_queue(),
        name: "taskbot-provisioner-vms".into(),
        concurrency: 1,
        retry_delay: Duration::from_secs(2),
    };
    tokio::join!(
        amqp::consume(&config.amqp, &topology, spec, handler, shutdown.clone()),
        amqp::consume(
            &config.amqp,
            &topology,
            finished,
            Arc::new(FinishedHandler::new(vm, &config)),
            shutdown
        ),
    );
    reaper.abort();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use taskbot::messages::{Outcome, TaskRef};
    use taskbot::testing::Recorder;

    fn handler() -> ProvisionerHandler {
        ProvisionerHandler {
            topology: Topology::new("tb", &["x86_64".into()]),
            arches: vec!["x86_64".into()],
            instance: "provisioner@test".into(),
            vm: None,
        }
    }

    fn job(arch: &str) -> JobRequest {
        let task = TaskRef {
            name: "example".into(),
            repo: "file:///srv/example".into(),
            git_ref: "main".into(),
        };
        JobRequest {
            priority: 3,
            ..taskbot::testing::job_request(task, "foo-1-1", arch)
        }
    }

    fn outputs(d: Disposition) -> Vec<Outgoing> {
        match d {
            Disposition::Done(o) => o,
            other => panic!("expected Done, got {other:?}"),
        }
    }

    #[test]
    fn local_job_goes_to_its_arch_queue_with_statuses() {
        let j = job("x86_64");
        let out = outputs(handler().decide(&Incoming::new("x86_64", j.to_json())));
        assert_eq!(
            taskbot::testing::routes(&out),
            [
                ("tb.results", "job.provisioning"),
                ("tb.run", "x86_64"),
                ("tb.results", "job.provisioned")
            ]
        );
        let p = ProvisionedJob::from_json(&out[1].body).unwrap();
        assert_eq!(p.job, j);
        assert_eq!(p.machine, Machine::Local);
        assert_eq!(out[1].priority, Some(3));
    }

    /// A provisioner killed between its publish and its ack gets the request again: the copies
    /// of the statuses are the same messages, so the job's history shows each step once.
    #[test]
    fn a_redelivered_local_job_gives_the_same_statuses() {
        let j = job("x86_64");
        let first = outputs(handler().decide(&Incoming::new("x86_64", j.to_json())));
        let again = outputs(handler().decide(&Incoming::new("x86_64", j.to_json())));
        for index in [0, 2] {
            assert_eq!(first[index].message_id, again[index].message_id);
            let (a, b) = (
                JobStatus::from_json(&first[index].body).unwrap(),
                JobStatus::from_json(&again[index].body).unwrap(),
            );
            assert_eq!(a.status_id, b.status_id);
        }
        assert_ne!(first[0].message_id, first[2].message_id);
        let other = outputs(handler().decide(&Incoming::new("x86_64", job("x86_64").to_json())));
        assert_ne!(other[0].message_id, first[0].message_id, "another job's");
    }

    #[test]
    fn unknown_arch_crashes_the_job_visibly() {
        let out = outputs(handler().decide(&Incoming::new("s390x", job("s390x").to_json())));
        let result = TaskResult::from_json(&out[0].body).unwrap();
        assert_eq!(result.outcome, Outcome::Crashed);
        assert!(result.note.unwrap().contains("arch s390x is not served"));
        assert_eq!(out[1].routing_key, "job.crashed");
    }

    #[test]
    fn destructive_or_vm_jobs_are_refused_without_a_vm_backend() {
        let mut j = job("x86_64");
        j.destructive = true;
        let out = outputs(handler().decide(&Incoming::new("x86_64", j.to_json())));
        let result = TaskResult::from_json(&out[0].body).unwrap();
        assert!(result.note.unwrap().contains("destructive"));
        let mut j = job("x86_64");
        j.environment = Environment::Vm;
        let out = outputs(handler().decide(&Incoming::new("x86_64", j.to_json())));
        assert_eq!(out[0].routing_key, "result.CRASHED.example");
    }

    /// The queues order priorities 0–9 only: a job asking for more is refused with the reason,
    /// not provisioned as if it had the highest.
    #[test]
    fn a_priority_above_the_highest_is_dead_lettered() {
        let mut body: serde_json::Value = serde_json::from_slice(&job("x86_64").to_json()).unwrap();
        for (priority, accepted) in [(9, true), (10, false), (200, false), (300, false)] {
            body["priority"] = priority.into();
            let incoming = Incoming::new("x", serde_json::to_vec(&body).unwrap());
            match handler().decide(&incoming) {
                Disposition::DeadLetter(reason) if !accepted => assert!(
                    reason.contains(&format!("priority {priority} is above the highest, 9")),
                    "{reason}"
                ),
                Disposition::Done(_) if accepted => {}
                other => panic!("priority {priority}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_console_log_is_quoted_by_its_last_printable_lines_within_a_limit() {
        let log = "\u{1b}[0mearly\r\n\nDecompressing Linux...\r\n\r\nXZ-compressed data is corrupt\r\n -- System halted";
        assert_eq!(
            last_lines(log, 2, 100),
            "XZ-compressed data is corrupt\n -- System halted"
        );
        assert_eq!(last_lines(log, 10, 16), " -- System halted"[1..]);
        assert_eq!(last_lines("", 10, 100), "(the serial console stayed empty)");
    }

    #[test]
    fn garbage_is_dead_lettered() {
        match handler().decide(&Incoming::new("x", b"{}".to_vec())) {
            Disposition::DeadLetter(reason) => assert!(reason.contains("schema"), "{reason}"),
            other => panic!("{other:?}"),
        }
    }

    /// A catalogue of one image (a disk only) and an ISO, both under the one allowed URL.
    struct BootFixture {
        dir: tempfile::TempDir,
        disk: PathBuf,
        iso: PathBuf,
        iso_sum: String,
        config: VmBackendConfig,
    }

    fn boot_fixture() -> BootFixture {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("tiny.qcow2");
        std::fs::write(&disk, b"disk").unwrap();
        let iso = dir.path().join("install.iso");
        std::fs::write(&iso, b"iso").unwrap();
        let iso_sum = taskbot::download::sha256_file(&iso).unwrap();
        let image = dir.path();
        let mut config = taskbot::testing::tiny_vm_backend(
            image,
            &dir.path().join("state"),
            vec![taskbot::testing::tiny_vm_image_entry("tiny", image, &disk)],
        );
        config.images[0].kernel = None;
        config.images[0].initrd = None;
        config.allowed_urls = vec![format!("file://{}/", dir.path().display())];
        BootFixture {
            dir,
            disk,
            iso,
            iso_sum,
            config,
        }
    }

    fn iso_request(url: String, sha256: &str) -> VmRequest {
        VmRequest {
            blank_disk_mb: Some(256),
            iso: Some(taskbot::messages::RemoteFile {
                url,
                sha256: sha256.into(),
            }),
            ..VmRequest::default()
        }
    }

    #[tokio::test]
    async fn an_image_request_boots_an_overlay_and_a_blank_one_the_iso() {
        let f = boot_fixture();
        let vm = VmBackend::from_config(&f.config);
        assert_eq!(vm.arches, ["x86_64"]);

        let (spec, what) = vm.boot_spec("x86_64", &VmRequest::default()).await.unwrap();
        assert_eq!(what, "image tiny");
        assert_eq!(spec.disk, Disk::Overlay(f.disk.clone()));
        assert_eq!((spec.kernel, spec.iso, spec.cloud_init), (None, None, true));
        assert_eq!(spec.qemu, "qemu-system-x86_64");

        let good = format!("file://{}", f.iso.display());
        let (spec, what) = vm
            .boot_spec("x86_64", &iso_request(good, &f.iso_sum))
            .await
            .unwrap();
        assert_eq!(what, "a blank 256 MiB disk and the ISO");
        assert_eq!(
            (spec.disk, spec.iso),
            (Disk::Blank(256), Some(f.iso.clone()))
        );
    }

    #[tokio::test]
    async fn an_iso_from_outside_the_allowed_urls_or_with_another_checksum_is_refused() {
        let f = boot_fixture();
        let elsewhere = iso_request("file:///etc/shadow".into(), &f.iso_sum);
        assert!(vm_refusal(&f.config, elsewhere)
            .await
            .contains("is not under an allowed URL"));
        for climbing in ["/../../etc/shadow", "/%2E%2E/etc/shadow", "/a/..%2fb"] {
            let url = format!("file://{}{climbing}", f.dir.path().display());
            let refused = vm_refusal(&f.config, iso_request(url, &f.iso_sum)).await;
            assert!(refused.contains("is not under an allowed URL"), "{refused}");
        }
        let good = format!("file://{}", f.iso.display());
        let wrong = iso_request(good, &"0".repeat(64));
        assert!(vm_refusal(&f.config, wrong)
            .await
            .contains("SHA-256 mismatch"));
    }

    #[tokio::test]
    async fn inconsistent_or_unmatched_vm_requests_are_refused_clearly() {
        use taskbot::messages::ImageQuery;
        let f = boot_fixture();
        let good = format!("file://{}", f.iso.display());
        let mut huge = iso_request(good.clone(), &f.iso_sum);
        huge.blank_disk_mb = Some(MAX_BLANK_DISK_MB + 1);
        assert!(vm_refusal(&f.config, huge)
            .await
            .contains("blank_disk_mb must be 1 to"));
        let mut both = iso_request(good.clone(), &f.iso_sum);
        both.image.distro = Some("tiny".into());
        assert!(vm_refusal(&f.config, both)
            .await
            .contains("either blank or of an image"));
        let no_iso = VmRequest {
            blank_disk_mb: Some(64),
            ..VmRequest::default()
        };
        assert!(vm_refusal(&f.config, no_iso).await.contains("needs an ISO"));
        let arm = VmBackend::from_config(&f.config)
            .boot_spec("aarch64", &iso_request(good.clone(), &f.iso_sum))
            .await
            .unwrap_err();
        assert!(arm.contains("no UEFI firmware"), "{arm}");
        let missing = VmRequest {
            image: ImageQuery {
                release: Some("2".into()),
                ..ImageQuery::default()
            },
            ..VmRequest::default()
        };
        assert!(vm_refusal(&f.config, missing)
            .await
            .starts_with("no x86_64 image in the catalogue matches release=2"));
    }

    async fn vm_refusal(config: &VmBackendConfig, request: VmRequest) -> String {
        VmBackend::from_config(config)
            .boot_spec("x86_64", &request)
            .await
            .unwrap_err()
    }

    /// VMs in memory, for the VM path's decisions without QEMU: a boot succeeds at once (or
    /// fails as told) and every boot and destroy is recorded.
    #[derive(Default)]
    struct FakePool {
        /// Each lease and whether its VM runs.
        leases: std::sync::Mutex<Vec<(Lease, bool)>>,
        booted: std::sync::Mutex<Vec<(uuid::Uuid, BootSpec)>>,
        destroyed: std::sync::Mutex<Vec<uuid::Uuid>>,
        /// Fail every boot with this.
        boot_error: Option<fn() -> VmError>,
    }

    impl FakePool {
        fn with(leases: Vec<(Lease, bool)>) -> FakePool {
            FakePool {
                leases: std::sync::Mutex::new(leases),
                ..FakePool::default()
            }
        }

        fn booted(&self) -> Vec<(uuid::Uuid, BootSpec)> {
            self.booted.lock().unwrap().clone()
        }

        fn job_ids(&self) -> Vec<uuid::Uuid> {
            let leases = self.leases.lock().unwrap();
            leases.iter().map(|(l, _)| l.job_id).collect()
        }
    }

    #[async_trait::async_trait]
    impl VmPool for FakePool {
        async fn leases(&self) -> Vec<Lease> {
            let leases = self.leases.lock().unwrap();
            leases.iter().map(|(l, _)| l.clone()).collect()
        }

        fn alive(&self, lease: &Lease) -> bool {
            let leases = self.leases.lock().unwrap();
            leases.iter().any(|(l, alive)| l == lease && *alive)
        }

        async fn boot(&self, job_id: uuid::Uuid, spec: &BootSpec) -> Result<Lease, VmError> {
            self.booted.lock().unwrap().push((job_id, spec.clone()));
            if let Some(error) = self.boot_error {
                return Err(error());
            }
            let lease = lease(job_id, 2200 + self.booted().len() as u16);
            self.leases.lock().unwrap().push((lease.clone(), true));
            Ok(lease)
        }

        async fn destroy(&self, lease: &Lease) {
            self.destroyed.lock().unwrap().push(lease.job_id);
            self.leases.lock().unwrap().retain(|(l, _)| l != lease);
        }
    }

    fn lease(job_id: uuid::Uuid, ssh_port: u16) -> Lease {
        Lease {
            job_id,
            pid: 4000 + u32::from(ssh_port),
            ssh_port,
            overlay: format!("/state/overlays/{job_id}.qcow2").into(),
            seed: None,
            known_hosts: None,
            host_keys: vec![format!("ssh-ed25519 AAAAkey-of-{ssh_port}")],
            serial_log: format!("/state/logs/{job_id}.serial.log").into(),
            qmp: None,
            expires_at: Utc::now() + chrono::Duration::minutes(10),
        }
    }

    /// A handler with a VM backend whose catalogue has one x86_64 image (`tiny`, a disk in a
    /// temporary directory) and whose VMs come from `pool`: one at a time, user `tester`.
    struct VmSetup {
        handler: ProvisionerHandler,
        pool: Arc<FakePool>,
        disk: PathBuf,
        _dir: tempfile::TempDir,
    }

    fn vm_setup(pool: FakePool) -> VmSetup {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("tiny.qcow2");
        std::fs::write(&disk, b"disk").unwrap();
        let mut config = taskbot::testing::tiny_vm_backend(
            dir.path(),
            &dir.path().join("state"),
            vec![taskbot::testing::tiny_vm_image_entry(
                "tiny",
                dir.path(),
                &disk,
            )],
        );
        config.images[0].kernel = None;
        config.images[0].initrd = None;
        config.ssh_user = "tester".into();
        config.ssh_key = "/keys/id_ed25519".into();
        let pool = Arc::new(pool);
        let arches = vec!["x86_64".to_string(), "aarch64".to_string()];
        let handler = ProvisionerHandler {
            topology: Topology::new("tb", &arches),
            arches,
            vm: Some(VmBackend::from_config(&config).with_pool(pool.clone())),
            ..handler()
        };
        VmSetup {
            handler,
            pool,
            disk,
            _dir: dir,
        }
    }

    fn vm_job(arch: &str) -> JobRequest {
        JobRequest {
            environment: Environment::Vm,
            ..job(arch)
        }
    }

    async fn handle(handler: &ProvisionerHandler, job: &JobRequest, ctx: &Recorder) -> Disposition {
        handler
            .handle(Incoming::new(&job.arch, job.to_json()), ctx)
            .await
    }

    fn retry_reason(d: Disposition) -> String {
        match d {
            Disposition::Retry(reason) => reason,
            other => panic!("expected Retry, got {other:?}"),
        }
    }

    /// The note of the CRASHED result, checked to be the `crashed` status's detail too.
    fn crash_reason(out: &[Outgoing]) -> String {
        assert_eq!(
            taskbot::testing::routes(out),
            [
                ("tb.results", "result.CRASHED.example"),
                ("tb.results", "job.crashed")
            ]
        );
        let result = TaskResult::from_json(&out[0].body).unwrap();
        assert_eq!(result.outcome, Outcome::Crashed);
        let status = JobStatus::from_json(&out[1].body).unwrap();
        assert_eq!(status.detail, result.note);
        result.note.unwrap()
    }

    fn detail(message: &Outgoing) -> String {
        JobStatus::from_json(&message.body).unwrap().detail.unwrap()
    }

    #[tokio::test]
    async fn a_vm_job_is_queued_with_how_to_reach_its_fresh_vm_after_one_provisioning_status() {
        let s = vm_setup(FakePool::default());
        let j = vm_job("x86_64");
        let ctx = Recorder::new();
        let out = outputs(handle(&s.handler, &j, &ctx).await);

        let booted = s.pool.booted();
        assert_eq!(booted.len(), 1);
        assert_eq!(booted[0].0, j.job_id);
        assert_eq!(booted[0].1.disk, Disk::Overlay(s.disk.clone()));
        let published = ctx.published();
        assert_eq!(
            taskbot::testing::routes(&published),
            [("tb.results", "job.provisioning")]
        );
        assert_eq!(detail(&published[0]), "starting a VM: image tiny");

        assert_eq!(
            taskbot::testing::routes(&out),
            [("tb.run", "x86_64"), ("tb.results", "job.provisioned")]
        );
        let provisioned = ProvisionedJob::from_json(&out[0].body).unwrap();
        assert_eq!(provisioned.job, j);
        assert_eq!(provisioned.provisioner, "vm");
        assert_eq!(
            provisioned.machine,
            Machine::Vm {
                host: "127.0.0.1".into(),
                port: 2201,
                user: "tester".into(),
                key_path: "/keys/id_ed25519".into(),
                host_keys: vec!["ssh-ed25519 AAAAkey-of-2201".into()],
            }
        );
        assert_eq!(out[0].priority, Some(3));
        assert_eq!(out[0].message_id, Some(j.job_id.to_string()));
        assert_eq!(
            detail(&out[1]),
            "VM on 127.0.0.1:2201 (QEMU pid 6201), on tb.run.x86_64"
        );
    }

    #[tokio::test]
    async fn a_redelivered_job_whose_vm_runs_gets_it_again_without_a_new_boot_or_status() {
        let j = vm_job("x86_64");
        let s = vm_setup(FakePool::with(vec![(lease(j.job_id, 2345), true)]));
        let ctx = Recorder::new();
        let out = outputs(handle(&s.handler, &j, &ctx).await);
        let provisioned = ProvisionedJob::from_json(&out[0].body).unwrap();
        assert!(
            matches!(provisioned.machine, Machine::Vm { port: 2345, .. }),
            "{:?}",
            provisioned.machine
        );
        assert!(s.pool.booted().is_empty());
        assert!(ctx.published().is_empty());
    }

    #[tokio::test]
    async fn at_capacity_a_job_waits_without_a_status_per_retry_and_starts_once_a_vm_is_free() {
        let other = lease(uuid::Uuid::from_u128(99), 2999);
        let s = vm_setup(FakePool::with(vec![(other.clone(), true)]));
        let j = vm_job("x86_64");
        // One recorder over all deliveries: what the job published in all.
        let ctx = Recorder::new();
        for _ in 0..3 {
            let reason = retry_reason(handle(&s.handler, &j, &ctx).await);
            assert_eq!(reason, "all 1 VMs are in use; the job waits");
        }
        assert!(ctx.published().is_empty(), "{:?}", ctx.published());
        assert!(s.pool.booted().is_empty());

        s.pool.destroy(&other).await;
        outputs(handle(&s.handler, &j, &ctx).await);
        assert_eq!(
            taskbot::testing::routes(&ctx.published()),
            [("tb.results", "job.provisioning")]
        );
        assert_eq!(s.pool.job_ids(), [j.job_id]);
    }

    #[tokio::test]
    async fn a_vm_that_cannot_start_crashes_the_job_with_the_reason() {
        let s = vm_setup(FakePool {
            boot_error: Some(|| {
                VmError::Failed("the VM did not answer SSH within 120s (serial log kept: x)".into())
            }),
            ..FakePool::default()
        });
        let ctx = Recorder::new();
        let out = outputs(handle(&s.handler, &vm_job("x86_64"), &ctx).await);
        assert_eq!(
            crash_reason(&out),
            "cannot start a VM for the job: the VM did not answer SSH within 120s (serial log kept: x)"
        );
        assert_eq!(ctx.published().len(), 1, "the provisioning status");

        // Capacity taken between the check and the boot: the job waits instead.
        let s = vm_setup(FakePool {
            boot_error: Some(|| VmError::Full { running: 1, max: 1 }),
            ..FakePool::default()
        });
        let reason = retry_reason(handle(&s.handler, &vm_job("x86_64"), &Recorder::new()).await);
        assert_eq!(reason, "all 1 VMs are in use; the job waits");
    }

    #[tokio::test]
    async fn a_vm_nothing_in_the_catalogue_matches_crashes_the_job_naming_the_query_and_the_catalogue(
    ) {
        use taskbot::messages::ImageQuery;
        let s = vm_setup(FakePool::default());
        let j = JobRequest {
            vm: Some(VmRequest {
                image: ImageQuery {
                    distro: Some("fedora".into()),
                    release: Some("41".into()),
                    ..ImageQuery::default()
                },
                ..VmRequest::default()
            }),
            ..vm_job("x86_64")
        };
        let ctx = Recorder::new();
        let out = outputs(handle(&s.handler, &j, &ctx).await);
        assert_eq!(
            crash_reason(&out),
            "cannot provide the VM: no x86_64 image in the catalogue matches distro=fedora \
             release=41 (the catalogue's x86_64 images: tiny (tiny 1 base))"
        );
        // An arch the deployment serves but the catalogue has no image of.
        let out = outputs(handle(&s.handler, &vm_job("aarch64"), &ctx).await);
        assert_eq!(
            crash_reason(&out),
            "no VM image for arch aarch64 (the image catalogue has: x86_64)"
        );
        assert!(ctx.published().is_empty());
        assert!(s.pool.booted().is_empty());
    }

    #[tokio::test]
    async fn a_provisioning_status_the_broker_refuses_sends_the_job_back_without_starting_a_vm() {
        let s = vm_setup(FakePool::default());
        let ctx = Recorder::new().failing_after(0);
        let reason = retry_reason(handle(&s.handler, &vm_job("x86_64"), &ctx).await);
        assert!(
            reason.starts_with("cannot publish the provisioning status: "),
            "{reason}"
        );
        assert!(s.pool.booted().is_empty());
        assert!(s.pool.job_ids().is_empty(), "no VM left behind");
    }

    #[tokio::test]
    async fn local_jobs_never_touch_the_vm_backend() {
        let s = vm_setup(FakePool::default());
        let out = outputs(handle(&s.handler, &job("x86_64"), &Recorder::new()).await);
        assert_eq!(out.len(), 3);
        assert_eq!(
            ProvisionedJob::from_json(&out[1].body).unwrap().machine,
            Machine::Local
        );
        assert!(s.pool.booted().is_empty());
    }

    /// A final status from a runner ends its job's VM, the VMs of other jobs stay; a final status
    /// from any other broker user (or none) is dead-lettered and destroys nothing.
    #[tokio::test]
    async fn a_final_status_destroys_the_jobs_vm_and_others_leave_it() {
        let j = vm_job("x86_64");
        let s = vm_setup(FakePool::with(vec![
            (lease(j.job_id, 2001), true),
            (lease(uuid::Uuid::from_u128(5), 2002), true),
        ]));
        let mut config = Config::default();
        for arch in ["x86_64", "aarch64"] {
            let runner = taskbot::config::AmqpUser {
                name: format!("tb-runner-{arch}"),
                password_file: None,
            };
            config.amqp.users.insert(format!("runner_{arch}"), runner);
        }
        let finished = FinishedHandler::new(Arc::new(s.handler.vm.unwrap()), &config);
        assert_eq!(
            finished.senders,
            ["guest", "tb-runner-aarch64", "tb-runner-x86_64"],
            "the runners of every arch, the provisioner and the operator (guest here)"
        );
        assert!(
            finished.refusal(Some("tb-runner")).is_some(),
            "no shared runner user"
        );
        let status = |state| JobStatus::new(&j, state, "runner@test", None);
        let deliver = |state, user: Option<&str>| {
            let incoming = Incoming::new("job.x", status(state).to_json());
            match user {
                Some(user) => incoming.with_user_id(user),
                None => incoming,
            }
        };
        for user in [Some("tb-task"), None] {
            let d = finished
                .handle(deliver(JobState::Done, user), &Recorder::new())
                .await;
            assert!(matches!(d, Disposition::DeadLetter(ref why) if why.contains("cannot end")));
        }
        assert_eq!(
            s.pool.job_ids().len(),
            2,
            "a forged final status ends no VM"
        );
        for state in [JobState::Running, JobState::Done] {
            let d = finished
                .handle(deliver(state, Some("tb-runner-x86_64")), &Recorder::new())
                .await;
            assert_eq!(d, Disposition::Done(Vec::new()));
            if state == JobState::Running {
                assert_eq!(s.pool.job_ids().len(), 2, "a running job keeps its VM");
            }
        }
        assert_eq!(*s.pool.destroyed.lock().unwrap(), [j.job_id]);
        assert_eq!(s.pool.job_ids(), [uuid::Uuid::from_u128(5)]);
    }

    #[tokio::test]
    async fn the_reaper_destroys_vms_whose_lease_ran_out_or_that_stopped() {
        let (expired, stopped, running) = (
            uuid::Uuid::from_u128(1),
            uuid::Uuid::from_u128(2),
            uuid::Uuid::from_u128(3),
        );
        let mut old = lease(expired, 1);
        old.expires_at = Utc::now() - chrono::Duration::seconds(1);
        let pool = FakePool::with(vec![
            (old, true),
            (lease(stopped, 2), false),
            (lease(running, 3), true),
        ]);
        assert_eq!(vm::reap(&pool, Utc::now()).await, [expired, stopped]);
        assert_eq!(pool.job_ids(), [running]);
    }
}
