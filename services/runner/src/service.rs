//! Starting the runner: its settings checked and made absolute, its directories made, its metrics
//! registered, then the run queue of its arch consumed until shutdown.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use taskbot::amqp::{self, ConsumerSpec};
use taskbot::config::{ConfigError, RunnerConfig, SandboxMode};
use taskbot::{Config, Shutdown, Topology};

use crate::budget::task_budget;
use crate::sandbox::{self, Sandbox};
use crate::workspace;
use crate::{slots_busy, RunnerHandler, SLOTS_METRIC};

/// Run until `shutdown`: consume the run queue of `runner.arch`. A task running at shutdown is
/// killed and its job handed back to the queue.
pub async fn run(config: Config, shutdown: Shutdown) -> anyhow::Result<()> {
    let arch = configured_arch(&config)?.to_string();
    let mut settings = settings(&config.runner).await?;
    // Unset, results link the api's artifacts (`api.public_url`), as the api's own links do.
    settings.artifacts_url = config.artifacts_url();
    remove_stale_job_dirs(&settings.work_dir).await;
    remove_unclaimed(&settings.work_dir).await;
    sweep_outbox(&settings.work_dir).await;
    // Only its own arch: its broker user (`[amqp.users.runner_<arch>]`) may touch no other run
    // queue.
    let topology = Topology::for_config(&config).only_arch(&arch);
    let instance = identity(&arch, &taskbot::host_name(), &configured_instance(&config)?);
    let handler = Arc::new(RunnerHandler {
        topology: topology.clone(),
        arch: arch.clone(),
        instance: instance.clone(),
        settings: settings.clone(),
        shutdown: shutdown.clone(),
        http: http_client()?,
        sandbox: sandbox(&settings).await?.map(Arc::new),
        provisioner_user: config
            .amqp
            .user_name(taskbot::identity::Service::Provisioner),
    });
    let spec = ConsumerSpec {
        queue: topology.run_queue(&arch),
        // The connection's name in RabbitMQ's management UI: which runner of the host it is.
        name: format!("taskbot-{instance}"),
        concurrency: settings.concurrency,
        retry_delay: Duration::from_secs(2),
    };
    tracing::info!(arch = %arch, %instance, queue = %spec.queue, concurrency = settings.concurrency,
        user = %amqp::url_user(&config.amqp.url), provisioner_user = %handler.provisioner_user,
        "runner starting; run messages are honoured only from the provisioner's broker user");
    register_slots(&arch, settings.concurrency);
    // Prefetch = concurrency: a job waiting in the client's buffer behind running ones would be
    // unacked all that time, and RabbitMQ's consumer timeout counts from delivery.
    let mut amqp_config = config.amqp.clone();
    amqp_config.prefetch = u16::try_from(settings.concurrency.max(1)).unwrap_or(u16::MAX);
    amqp::consume(&amqp_config, &topology, spec, handler, shutdown).await;
    Ok(())
}

/// How a runner names itself in job statuses and results (who ran a job, in its history):
/// `runner/<arch>@<host>/<instance>`. The instance tells apart the runners of one host, which
/// otherwise all had the same name.
pub fn identity(arch: &str, host: &str, instance: &str) -> String {
    format!("runner/{arch}@{host}/{instance}")
}

/// This runner's instance name: `runner.instance` (`--instance`), else its process id, which no
/// other live process of the host has and which it keeps for its whole life. A configured name
/// that could not stand in [`identity`] unambiguously is a bad configuration (exit status 2).
pub fn configured_instance(config: &Config) -> Result<String, ConfigError> {
    let Some(name) = config.runner.instance.as_deref() else {
        return Ok(std::process::id().to_string());
    };
    let fits = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if fits {
        Ok(name.to_string())
    } else {
        Err(ConfigError::new(format!(
            "runner.instance (--instance): {name:?} is not an instance name (1 to 64 letters, \
             digits, '-', '_' and '.')"
        )))
    }
}

/// `runner.*` with its directories made absolute (tasks get them in their environment and run in
/// another directory) and created, and warnings about settings that will hurt.
/// The arch whose run queue this runner consumes (`runner.arch`, `--arch`): checked here, not in
/// the shared configuration, since no other service needs it. Unset is a bad configuration (exit
/// status 2, `main` checks it before starting), as a bad value the loader finds is.
pub fn configured_arch(config: &Config) -> Result<&str, ConfigError> {
    let arch = config.runner.arch.as_deref().ok_or_else(|| {
        ConfigError::new("runner.arch: not set (use --arch or TASKBOT_RUNNER__ARCH)")
    })?;
    // It names a queue and a routing key: AMQP's separators and wildcards would bind others.
    if arch.is_empty() || arch.contains(['.', '#', '*', ' ', '/', '@']) {
        return Err(ConfigError::new(format!(
            "runner.arch (--arch): {arch:?} is not an arch name"
        )));
    }
    Ok(arch)
}

async fn settings(runner: &RunnerConfig) -> anyhow::Result<RunnerConfig> {
    let mut settings = runner.clone();
    for (key, dir) in [
        ("runner.work_dir", &mut settings.work_dir),
        ("runner.artifacts_dir", &mut settings.artifacts_dir),
        ("runner.mirror_dir", &mut settings.mirror_dir),
    ] {
        *dir = std::path::absolute(&*dir).with_context(|| format!("{key}: {}", dir.display()))?;
    }
    // Fail at start, not on the first job, when the directories cannot be made.
    for (key, dir) in [
        ("runner.work_dir", &settings.work_dir),
        ("runner.artifacts_dir", &settings.artifacts_dir),
        ("runner.mirror_dir", &settings.mirror_dir),
    ] {
        tokio::fs::create_dir_all(dir)
            .await
            .with_context(|| format!("{key}: cannot create {}", dir.display()))?;
    }
    if let Some(name) = settings.task_env.keys().find(|k| !valid_env_name(k)) {
        anyhow::bail!("runner.task_env: {name:?} is not a variable a task may be given (letters, digits and _, not starting with a digit or TASKBOT_)");
    }
    crate::secrets::check_config(&settings, valid_env_name).map_err(anyhow::Error::msg)?;
    if !settings.secrets.is_empty() {
        let names: Vec<&String> = settings.secrets.keys().collect();
        tracing::info!(secrets = ?names, "task secrets configured (values re-read for every job that gets one)");
    }
    if settings.max_log_bytes < crate::log::MIN_LOG_BYTES {
        anyhow::bail!(
            "runner.max_log_bytes: {} is below the smallest log kept, {} bytes",
            settings.max_log_bytes,
            crate::log::MIN_LOG_BYTES
        );
    }
    if settings.allowed_repos.is_empty() {
        tracing::warn!(
            "runner.allowed_repos is empty: every job will crash until it lists task repositories"
        );
    }
    let consumer_cap = task_budget(
        settings.task_timeout_secs,
        settings.consumer_timeout_secs,
        Duration::ZERO,
    );
    if consumer_cap.capped {
        tracing::warn!(
            task_timeout_secs = settings.task_timeout_secs,
            consumer_timeout_secs = settings.consumer_timeout_secs,
            effective_secs = consumer_cap.limit.as_secs(),
            "tasks are cut short below the broker's consumer timeout; raise consumer_timeout in rabbitmq.conf and runner.consumer_timeout_secs to let them run longer"
        );
    }
    Ok(settings)
}

/// Remove the job directories that runners killed mid-job left in `work_dir` (their processes
/// died with them: each step's pid namespace goes with its runner), keeping those of live
/// runners sharing the directory ([`workspace::remove_stale`]). Trouble is logged, never fatal:
/// a directory left behind costs only disk space.
async fn remove_stale_job_dirs(work_dir: &std::path::Path) {
    let dir = work_dir.to_path_buf();
    match tokio::task::spawn_blocking(move || workspace::remove_stale(&dir)).await {
        Ok(Ok(swept)) => {
            for path in &swept.removed {
                tracing::info!(path = %path.display(), "removed a killed runner's job directory");
            }
            for (path, error) in &swept.failed {
                tracing::warn!(path = %path.display(), %error, "cannot remove a killed runner's job directory");
            }
            if swept.live > 0 {
                tracing::info!(
                    live = swept.live,
                    "job directories of other live runners in runner.work_dir left alone"
                );
            }
        }
        Ok(Err(error)) => {
            tracing::warn!(work_dir = %work_dir.display(), %error, "cannot look for killed runners' job directories")
        }
        Err(error) => tracing::warn!(%error, "cannot look for killed runners' job directories"),
    }
}

/// Remove the job claims killed runners left ([`crate::claim::remove_unclaimed`]). Trouble is
/// logged, never fatal: a claim file left behind costs a few bytes.
async fn remove_unclaimed(work_dir: &std::path::Path) {
    let dir = work_dir.to_path_buf();
    match tokio::task::spawn_blocking(move || crate::claim::remove_unclaimed(&dir)).await {
        Ok(Ok(0)) => {}
        Ok(Ok(removed)) => tracing::info!(removed, "removed killed runners' job claims"),
        Ok(Err(error)) => {
            tracing::warn!(work_dir = %work_dir.display(), %error, "cannot look for killed runners' job claims")
        }
        Err(error) => tracing::warn!(%error, "cannot look for killed runners' job claims"),
    }
}

/// Say which finished jobs' outcomes wait in the outbox for their jobs to come back, and remove
/// those older than [`outbox::MAX_ENTRY_AGE`] (their job was run on another host, or is gone).
/// Trouble is logged, never fatal.
async fn sweep_outbox(work_dir: &std::path::Path) {
    let outbox = crate::outbox::Outbox::new(work_dir);
    let dir = outbox.dir().to_path_buf();
    match tokio::task::spawn_blocking(move || outbox.sweep(crate::outbox::MAX_ENTRY_AGE)).await {
        Ok(Ok(swept)) => {
            for path in &swept.removed {
                tracing::warn!(path = %path.display(), "removed an outbox entry older than 30 days; its job never came back to a runner of this host");
            }
            for path in &swept.waiting {
                tracing::info!(path = %path.display(), "a finished job's outcome waits in the outbox; it is published when the job is delivered again");
            }
        }
        Ok(Err(error)) => {
            tracing::warn!(dir = %dir.display(), %error, "cannot look through the outbox")
        }
        Err(error) => tracing::warn!(%error, "cannot look through the outbox"),
    }
}

/// The sandbox local steps run in, checked on this host before any job is taken; `None` (with a
/// warning, at every start) only when the operator set `runner.sandbox = "none"`.
async fn sandbox(settings: &RunnerConfig) -> anyhow::Result<Option<Sandbox>> {
    if settings.sandbox == SandboxMode::None {
        tracing::warn!(
            "runner.sandbox = \"none\": task code runs unconfined as the runner's user and can read what it can read (config, keys, other jobs)"
        );
        return Ok(None);
    }
    let (uid, gid) = sandbox::resolve_user(&settings.sandbox_user).map_err(anyhow::Error::msg)?;
    let mut hidden = settings.sandbox_hidden.clone();
    if let Some(dir) = config_dir() {
        hidden.push(dir);
    }
    let sandbox = Sandbox {
        uid,
        gid,
        network: settings.sandbox_network,
        read_only: settings.sandbox_read_only.clone(),
        hidden,
        program: PathBuf::from("bwrap"),
    };
    let dirs = [settings.work_dir.clone(), settings.artifacts_dir.clone()];
    let probed = sandbox.clone();
    tokio::task::spawn_blocking(move || probed.probe(&dirs))
        .await?
        .map_err(|e| {
            anyhow::anyhow!(
                "runner.sandbox = \"bwrap\" cannot work here: {e}. Install bubblewrap, create the user (scripts/ensure-services.sh does both), make runner.work_dir and runner.artifacts_dir reachable by it, or set runner.sandbox = \"none\" to run tasks unconfined"
            )
        })?;
    tracing::info!(
        uid,
        gid,
        network = settings.sandbox_network,
        "task steps run sandboxed (bubblewrap)"
    );
    Ok(Some(sandbox))
}

/// The directory of the config file (`TASKBOT_CONFIG`), to hide from tasks wherever it is.
fn config_dir() -> Option<PathBuf> {
    let file = std::env::var_os(taskbot::config::CONFIG_ENV)?;
    std::path::absolute(PathBuf::from(file))
        .ok()?
        .parent()
        .map(PathBuf::from)
}

/// A shell variable name that is not one of the job's own `TASKBOT_*`.
fn valid_env_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with("TASKBOT_")
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// For tasks' `downloads`.
fn http_client() -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(30))
        .user_agent(concat!("taskbot-runner/", env!("CARGO_PKG_VERSION")))
        .build()
        .context("cannot set up the HTTP client for downloads")
}

/// The slot gauges, exposed from the start (busy as 0 before the first job).
fn register_slots(arch: &str, concurrency: usize) {
    taskbot::ops::global()
        .registry
        .gauge(
            SLOTS_METRIC,
            "Task slots of the runner (runner.concurrency).",
            &["arch"],
        )
        .with(&[arch])
        .set(i64::try_from(concurrency.max(1)).unwrap_or(i64::MAX));
    slots_busy(arch);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runners_of_one_host_have_names_of_their_own() {
        let mut config = Config::default();
        let pid = configured_instance(&config).unwrap();
        assert_eq!(pid, std::process::id().to_string());
        assert_eq!(
            identity("x86_64", "vm", &pid),
            format!("runner/x86_64@vm/{pid}")
        );
        config.runner.instance = Some("slot-2".into());
        assert_eq!(configured_instance(&config).unwrap(), "slot-2");
        for bad in ["", "a/b", "a b", "r@h", &"x".repeat(65)] {
            config.runner.instance = Some(bad.to_string());
            let err = configured_instance(&config).unwrap_err().to_string();
            assert!(err.contains("runner.instance (--instance)"), "{bad}: {err}");
        }
    }

    #[test]
    fn the_arch_is_required() {
        let mut config = Config::default();
        let err = configured_arch(&config).unwrap_err().to_string();
        assert_eq!(
            err,
            "invalid configuration:\nrunner.arch: not set (use --arch or TASKBOT_RUNNER__ARCH)"
        );
        config.runner.arch = Some("aarch64".into());
        assert_eq!(configured_arch(&config).unwrap(), "aarch64");
    }

    #[test]
    fn task_env_names_are_shell_names_and_never_the_jobs_own() {
        for good in ["KOJI_PKGS_URL", "http_proxy", "_X1"] {
            assert!(valid_env_name(good), "{good}");
        }
        for bad in ["", "TASKBOT_ITEM", "1X", "A-B", "A B", "A=B"] {
            assert!(!valid_env_name(bad), "{bad}");
        }
    }
}
