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
pub mod vm;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use taskbot::amqp::{
    self, ConsumerSpec, DeliveryContext, Disposition, Handler, Incoming, Outgoing,
};
use taskbot::config::{VmBackendConfig, VmImageConfig};
use taskbot::messages::{
    Environment, JobRequest, JobState, JobStatus, Machine, Message, ProvisionedJob, TaskResult,
    VmRequest,
};
use taskbot::routes::Publishable;
use taskbot::{Config, Shutdown, Topology};
use vm::{BootSpec, Disk, VmError, VmSettings};

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
    pub images: Vec<VmImageConfig>,
    /// The arches the catalogue has images for.
    pub arches: Vec<String>,
    /// URL prefixes a job's ISO may come from.
    pub allowed_urls: Vec<String>,
    pub download_max_bytes: u64,
    pub http: reqwest::Client,
}

/// Largest blank disk a job may ask for (qcow2 grows as written; this bounds a runaway
/// installer).
const MAX_BLANK_DISK_MB: u64 = 256 * 1024;

impl VmBackend {
    pub fn from_config(config: &VmBackendConfig) -> VmBackend {
        VmBackend {
            settings: VmSettings {
                state_dir: config.state_dir.clone(),
                memory_mb: config.memory_mb,
                max_vms: config.max_vms,
                ssh_key: config.ssh_key.clone(),
                ssh_user: config.ssh_user.clone(),
                boot_timeout: Duration::from_secs(config.boot_timeout_secs),
                lease: Duration::from_secs(config.lease_secs),
                accel: config.accel.clone(),
            },
            images: config.images.clone(),
            arches: catalogue::arches(&config.images),
            allowed_urls: config.allowed_urls.clone(),
            download_max_bytes: config.download_max_bytes,
            // A stalled mirror fails the download (and the job, CRASHED) instead of holding the
            // provisioner, which serves one job at a time.
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(30))
                .read_timeout(Duration::from_secs(120))
                .user_agent(concat!("taskbot-provisioner/", env!("CARGO_PKG_VERSION")))
                .build()
                .unwrap_or_default(),
        }
    }

    fn cache_dir(&self) -> std::path::PathBuf {
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
            Some(file) => {
                // No `..`, and no percent-encoded dot, slash or backslash (which a server may
                // decode into one): a prefix must not be escaped.
                let climbs = file.url.split(['/', '?', '#']).any(|segment| {
                    let segment = segment.to_ascii_lowercase();
                    segment == ".." || ["%2e", "%2f", "%5c"].iter().any(|e| segment.contains(e))
                });
                if climbs || !self.allowed_urls.iter().any(|p| file.url.starts_with(p)) {
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
                let cache = self.cache_dir();
                Some(
                    catalogue::fetch_url(
                        &self.http,
                        &file.url,
                        &file.sha256,
                        &cache,
                        self.download_max_bytes,
                    )
                    .await?,
                )
            }
            None => None,
        };
        if let Some(size_mb) = request.blank_disk_mb {
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
            let spec = BootSpec {
                qemu: format!("qemu-system-{arch}"),
                disk: Disk::Blank(size_mb),
                kernel: None,
                iso,
                cloud_init: true,
                extra_args: Vec::new(),
            };
            return Ok((spec, format!("a blank {size_mb} MiB disk and the ISO")));
        }
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
        let provisioning = JobStatus::new(&job, JobState::Provisioning, &self.instance, None);
        let provisioned = ProvisionedJob {
            job: job.clone(),
            machine: Machine::Local,
            provisioner: "local".into(),
            provisioned_at: Utc::now(),
        };
        let queued = JobStatus::new(
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
        if let Some(reason) = self.refusal_of_arch(job) {
            return Disposition::Done(self.crashed(job, &reason));
        }
        if !vm.arches.contains(&job.arch) {
            let reason = format!(
                "no VM image for arch {} (the image catalogue has: {})",
                job.arch,
                vm.arches.join(", ")
            );
            return Disposition::Done(self.crashed(job, &reason));
        }
        let leases = vm.settings.leases();
        let existing = leases
            .iter()
            .find(|l| l.job_id == job.job_id && vm::alive(l))
            .cloned();
        let lease = match existing {
            Some(lease) => lease,
            None => {
                // At capacity the job waits, retried every few seconds: checked before the
                // `provisioning` status, so a waiting job does not publish one per retry.
                if leases.len() >= vm.settings.max_vms {
                    return Disposition::Retry(format!(
                        "all {} VMs are in use; the job waits",
                        vm.settings.max_vms
                    ));
                }
                let request = job.vm.clone().unwrap_or_default();
                let (spec, what) = match vm.boot_spec(&job.arch, &request).await {
                    Ok(found) => found,
                    Err(reason) => {
                        let reason = format!("cannot provide the VM: {reason}");
                        tracing::warn!(job_id = %job.job_id, %reason, "no VM for the job");
                        return Disposition::Done(self.crashed(job, &reason));
                    }
                };
                let provisioning = JobStatus::new(
                    job,
                    JobState::Provisioning,
                    &self.instance,
                    Some(format!("starting a VM: {what}")),
                );
                if let Err(e) = ctx.publish(&self.status(&provisioning)).await {
                    return Disposition::Retry(format!(
                        "cannot publish the provisioning status: {e}"
                    ));
                }
                match vm.settings.boot(job.job_id, &spec).await {
                    Ok(lease) => lease,
                    Err(VmError::Full { max, .. }) => {
                        return Disposition::Retry(format!(
                            "all {max} VMs are in use; the job waits"
                        ))
                    }
                    Err(e) => {
                        let reason = format!("cannot start a VM for the job: {e}");
                        tracing::warn!(job_id = %job.job_id, %reason, "VM failed");
                        return Disposition::Done(self.crashed(job, &reason));
                    }
                }
            }
        };
        tracing::info!(job_id = %job.job_id, port = lease.ssh_port, pid = lease.pid, "job provisioned (vm)");
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
        Disposition::Done(vec![self.run_message(&provisioned), self.status(&queued)])
    }

    /// The provisioned job on its arch's run queue, with the job's priority.
    fn run_message(&self, provisioned: &ProvisionedJob) -> Outgoing {
        provisioned.outgoing(&self.topology)
    }

    fn status(&self, status: &JobStatus) -> Outgoing {
        status.outgoing(&self.topology)
    }

    /// A CRASHED result and a `crashed` status: the job ends visibly.
    fn crashed(&self, job: &JobRequest, reason: &str) -> Vec<Outgoing> {
        let result = TaskResult::crashed(job, &self.instance, reason);
        let status = JobStatus::new(job, JobState::Crashed, &self.instance, Some(reason.into()));
        vec![result.outgoing(&self.topology), self.status(&status)]
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
}

#[async_trait::async_trait]
impl Handler for FinishedHandler {
    async fn handle(&self, incoming: Incoming, _ctx: &dyn DeliveryContext) -> Disposition {
        let status = match JobStatus::from_json(&incoming.body) {
            Ok(s) => s,
            Err(err) => return Disposition::DeadLetter(err.to_string()),
        };
        if status.state.is_final() {
            let vm = self.vm.clone();
            let job_id = status.job_id;
            let destroyed = tokio::task::spawn_blocking(move || {
                let lease = vm
                    .settings
                    .leases()
                    .into_iter()
                    .find(|l| l.job_id == job_id);
                if let Some(lease) = &lease {
                    vm.settings.destroy(lease);
                }
                lease.is_some()
            })
            .await
            .unwrap_or(false);
            if destroyed {
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
    let reaped = vm.settings.reap(Utc::now());
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
                let vm = vm.clone();
                let reaped = tokio::task::spawn_blocking(move || vm.settings.reap(Utc::now()))
                    .await
                    .unwrap_or_default();
                for job_id in reaped {
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
            Arc::new(FinishedHandler { vm }),
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
        let keys: Vec<_> = out
            .iter()
            .map(|o| (o.exchange.as_str(), o.routing_key.as_str()))
            .collect();
        assert_eq!(
            keys,
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

    #[test]
    fn garbage_is_dead_lettered() {
        match handler().decide(&Incoming::new("x", b"{}".to_vec())) {
            Disposition::DeadLetter(reason) => assert!(reason.contains("schema"), "{reason}"),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn vm_requests_become_boot_specs_or_clear_refusals() {
        use taskbot::messages::{ImageQuery, RemoteFile};
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
        let vm = VmBackend::from_config(&config);
        assert_eq!(vm.arches, ["x86_64"]);

        let (spec, what) = vm.boot_spec("x86_64", &VmRequest::default()).await.unwrap();
        assert_eq!(what, "image tiny");
        assert_eq!(spec.disk, Disk::Overlay(disk.clone()));
        assert_eq!((spec.kernel, spec.iso, spec.cloud_init), (None, None, true));
        assert_eq!(spec.qemu, "qemu-system-x86_64");

        let iso_request = |url: String, sha256: &str| VmRequest {
            blank_disk_mb: Some(256),
            iso: Some(RemoteFile {
                url,
                sha256: sha256.into(),
            }),
            ..VmRequest::default()
        };
        let good = format!("file://{}", iso.display());
        let (spec, what) = vm
            .boot_spec("x86_64", &iso_request(good.clone(), &iso_sum))
            .await
            .unwrap();
        assert_eq!(what, "a blank 256 MiB disk and the ISO");
        assert_eq!((spec.disk, spec.iso), (Disk::Blank(256), Some(iso.clone())));

        let elsewhere = iso_request("file:///etc/shadow".into(), &iso_sum);
        assert!(vm_refusal(&config, elsewhere)
            .await
            .contains("is not under an allowed URL"));
        for climbing in ["/../../etc/shadow", "/%2E%2E/etc/shadow", "/a/..%2fb"] {
            let url = format!("file://{}{climbing}", dir.path().display());
            let refused = vm_refusal(&config, iso_request(url, &iso_sum)).await;
            assert!(refused.contains("is not under an allowed URL"), "{refused}");
        }
        let wrong = iso_request(good.clone(), &"0".repeat(64));
        assert!(vm_refusal(&config, wrong)
            .await
            .contains("SHA-256 mismatch"));
        let mut huge = iso_request(good.clone(), &iso_sum);
        huge.blank_disk_mb = Some(MAX_BLANK_DISK_MB + 1);
        assert!(vm_refusal(&config, huge)
            .await
            .contains("blank_disk_mb must be 1 to"));
        let mut both = iso_request(good, &iso_sum);
        both.image.distro = Some("tiny".into());
        assert!(vm_refusal(&config, both)
            .await
            .contains("either blank or of an image"));
        let no_iso = VmRequest {
            blank_disk_mb: Some(64),
            ..VmRequest::default()
        };
        assert!(vm_refusal(&config, no_iso).await.contains("needs an ISO"));
        let missing = VmRequest {
            image: ImageQuery {
                release: Some("2".into()),
                ..ImageQuery::default()
            },
            ..VmRequest::default()
        };
        assert!(vm_refusal(&config, missing)
            .await
            .starts_with("no x86_64 image in the catalogue matches release=2"));
    }

    async fn vm_refusal(config: &VmBackendConfig, request: VmRequest) -> String {
        VmBackend::from_config(config)
            .boot_spec("x86_64", &request)
            .await
            .unwrap_err()
    }
}
