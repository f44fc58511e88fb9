//! Configuration shared by every service, layered as: built-in defaults → the TOML file named by
//! `TASKBOT_CONFIG` (if set) → `TASKBOT_...` environment variables → command-line overrides.
//!
//! Environment keys nest with a double underscore, because single underscores are part of field
//! names: `TASKBOT_AMQP__URL`, `TASKBOT_RUNNER__ALLOWED_REPOS='["file:///srv/tasks/"]'`.
//!
//! One file serves all services (each reads its own section and the common ones), so an operator
//! keeps one `taskbot.toml` per deployment. Unknown keys are refused: a typo must not silently fall
//! back to a default.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

use crate::identity::{
    Role, Service, OPS_DEFAULT_BRIDGE, OPS_DEFAULT_FEDORA_MESSAGING_BRIDGE,
    OPS_DEFAULT_PROVISIONER, OPS_DEFAULT_REPORTER, OPS_DEFAULT_RULES, OPS_DEFAULT_RUNNER,
};

/// The environment variable naming the config file.
pub const CONFIG_ENV: &str = "TASKBOT_CONFIG";

/// Top-level keys of [`Config`]. Only `TASKBOT_` variables starting with one of these are read as
/// configuration, so unrelated variables sharing the prefix (`TASKBOT_CONFIG`,
/// `TASKBOT_TEST_AMQP_URL`, a script's own `TASKBOT_RUN_ONCE`) neither configure nor break a
/// service. A misspelt key *inside* a section (`TASKBOT_AMQP__URLL`) is still refused.
pub const TOP_LEVEL_KEYS: &[&str] = &[
    "arches",
    "amqp",
    "log",
    "bridge",
    "fedora_messaging_bridge",
    "rules",
    "provisioner",
    "runner",
    "reporter",
    "postgres",
    "api",
];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Architectures this deployment runs tasks for. A job for any other arch is refused with a
    /// CRASHED result instead of waiting forever on a queue no runner reads.
    pub arches: Vec<String>,
    pub amqp: AmqpConfig,
    pub log: LogConfig,
    pub bridge: BridgeConfig,
    pub fedora_messaging_bridge: FedoraMessagingBridgeConfig,
    pub rules: RulesConfig,
    pub provisioner: ProvisionerConfig,
    pub runner: RunnerConfig,
    pub reporter: ReporterConfig,
    pub postgres: PostgresConfig,
    pub api: ApiConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            arches: vec!["x86_64".into(), "aarch64".into(), "noarch".into()],
            amqp: AmqpConfig::default(),
            log: LogConfig::default(),
            bridge: BridgeConfig::default(),
            fedora_messaging_bridge: FedoraMessagingBridgeConfig::default(),
            rules: RulesConfig::default(),
            provisioner: ProvisionerConfig::default(),
            runner: RunnerConfig::default(),
            reporter: ReporterConfig::default(),
            postgres: PostgresConfig::default(),
            api: ApiConfig::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AmqpConfig {
    /// Broker URL.
    pub url: String,
    /// Prefix of every exchange and queue name. Lets several deployments (or parallel tests) share
    /// one broker without seeing each other's messages.
    pub namespace: String,
    /// Unacknowledged deliveries a consumer may hold. Without a limit the client buffers the whole
    /// queue in memory.
    pub prefetch: u16,
    /// Longest wait between reconnection attempts, in seconds (the wait doubles from 0.5 s).
    pub reconnect_max_secs: u64,
    /// RabbitMQ's management HTTP API (its management plugin), with credentials, read by
    /// `taskbot status` for queue depths, consumers and rates. The services never use it.
    pub management_url: String,
    /// The password of the URL's own user, read from this file at start (it replaces any password
    /// in `url` and `management_url`). For a process with no user of its own below: in production
    /// only an administrator running `taskbot setup-users`.
    pub password_file: Option<PathBuf>,
    /// One broker user per service (`[amqp.users.rules]`, keyed by the service's config
    /// section, and `cli` for the `taskbot` command line), each with only the permissions its
    /// service needs (docs/security.md). A service with an entry logs in as that user, with the
    /// password from its `password_file`, instead of the URL's (on `management_url` too); every
    /// service also reads the others' names, to check who published what it consumes (the AMQP
    /// `user_id`). The runners of each arch have a user of their own,
    /// `[amqp.users.runner_<arch>]` (e.g. `runner_x86_64`), which reads only that arch's run
    /// queue; `[amqp.users.runner]` is the user of runners whose arch has none.
    pub users: BTreeMap<String, AmqpUser>,
}

/// An account of one service (or the command line) on the broker or the database.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Account {
    /// The user (role) name, e.g. `taskbot-runner` or `taskbot_reporter`.
    pub name: String,
    /// The file holding its password (one line; a trailing newline is ignored), readable only by
    /// the service's own OS user. Unset: the URL's password, if any.
    pub password_file: Option<PathBuf>,
}

/// A broker user of one service.
pub type AmqpUser = Account;

impl AmqpConfig {
    /// The role whose own user `url` logs in as (`[amqp.users.<key>]` with that name), or `None`
    /// for any other user: an administrator (`guest` in local development), who may declare the
    /// whole topology ([`crate::Topology::declare_for`]).
    pub fn login_role(&self) -> Option<crate::identity::Role> {
        let user = crate::amqp::url_user(&self.url);
        self.users
            .iter()
            .find(|(_, account)| account.name == user)
            .and_then(|(key, _)| crate::identity::Role::from_amqp_key(key))
    }

    /// The broker user the runners of `arch` log in as: their arch's own
    /// (`[amqp.users.runner_<arch>]`), else the shared runner's ([`Self::user_name`]).
    pub fn runner_user_name(&self, arch: &str) -> String {
        match self.users.get(&crate::identity::runner_arch_key(arch)) {
            Some(user) => user.name.clone(),
            None => self.user_name(crate::identity::Service::Runner),
        }
    }

    /// The broker users runners log in as, by arch.
    pub fn runner_users(&self) -> RunnerUsers {
        let by_arch = self
            .users
            .iter()
            .filter_map(|(key, user)| {
                let arch = crate::identity::runner_key_arch(key)?;
                Some((arch.to_string(), user.name.clone()))
            })
            .collect();
        // Without `[amqp.users.runner]`, the URL's user is the runners' only where no arch has a
        // user of its own (local development as guest); else it is this service's own user.
        let runner = crate::identity::Service::Runner;
        let shared = match self.users.contains_key(Role::from(runner).key()) {
            true => Some(self.user_name(runner)),
            false => BTreeMap::is_empty(&by_arch).then(|| self.user_name(runner)),
        };
        RunnerUsers { shared, by_arch }
    }

    /// The broker user `role` (a service, or the `taskbot` command line) logs in as: its
    /// `[amqp.users.<key>]` name, else the URL's (`guest` when the URL names none). Consumers
    /// compare a message's `user_id` with this.
    pub fn user_name(&self, role: impl Into<Role>) -> String {
        match self.users.get(role.into().key()) {
            Some(user) => user.name.clone(),
            None => crate::amqp::url_user(&self.url),
        }
    }
}

/// The broker users that runners log in as: one per arch that has its own, and the shared one of
/// the runners of every other arch. Who may report on a job depends on the job's arch.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RunnerUsers {
    /// The user of runners whose arch has none of its own: `[amqp.users.runner]`, else the URL's
    /// (`guest` in local development) when no arch has a user of its own; else none.
    pub shared: Option<String>,
    /// Arch to user (`[amqp.users.runner_<arch>]`).
    pub by_arch: BTreeMap<String, String>,
}

impl RunnerUsers {
    /// The user the runners of `arch` log in as, the only one that may report on its jobs.
    pub fn of_arch(&self, arch: &str) -> Option<&str> {
        self.by_arch
            .get(arch)
            .or(self.shared.as_ref())
            .map(String::as_str)
    }

    /// Every runner user, the shared one first, each once.
    pub fn all(&self) -> Vec<&str> {
        let mut users: Vec<&str> = self.shared.iter().map(String::as_str).collect();
        for user in self.by_arch.values() {
            if !users.contains(&user.as_str()) {
                users.push(user);
            }
        }
        users
    }
}

impl Default for AmqpConfig {
    fn default() -> Self {
        AmqpConfig {
            url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
            namespace: "taskbot".into(),
            prefetch: 10,
            reconnect_max_secs: 30,
            management_url: "http://guest:guest@127.0.0.1:15672".into(),
            password_file: None,
            users: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `text` or `json`; the `LOG_FORMAT` environment variable overrides it.
    pub format: LogFormat,
    /// A tracing filter such as `info` or `info,taskbot_runner=debug`; `RUST_LOG` overrides it.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BridgeConfig {
    /// fedmsg endpoints to subscribe to (ZeroMQ PUB sockets).
    pub endpoints: Vec<String>,
    /// Topic prefixes to subscribe to; the empty string means everything.
    pub topic_prefixes: Vec<String>,
    /// Messages larger than this (both frames together) are refused as malformed.
    pub max_message_bytes: usize,
    /// Messages held while the broker is unreachable; ZeroMQ has no acknowledgements, so past this
    /// the bridge stops reading and ZeroMQ's own high-water mark drops on the publisher side.
    pub buffer: usize,
    /// Address of the bridge's `/healthz`, `/readyz` and `/metrics` (`host:port`; port 0 picks a
    /// free one, logged). Also `--ops-listen`.
    pub ops_listen: String,
}

impl Default for BridgeConfig {
    fn default() -> Self {
        BridgeConfig {
            endpoints: vec!["tcp://127.0.0.1:4001".into()],
            topic_prefixes: vec![String::new()],
            max_message_bytes: 1024 * 1024,
            buffer: 10_000,
            ops_listen: OPS_DEFAULT_BRIDGE.into(),
        }
    }
}

/// The fedora-messaging bridge (`[fedora_messaging_bridge]`): which external broker (Fedora's
/// bus) it consumes, how it logs in there, and from which queue. docs/fedora.md says what to set
/// for Fedora's public and private bus.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FedoraMessagingBridgeConfig {
    /// The external broker: `amqps://HOST[:PORT]/VHOST` (TLS 1.2 or later, the server's name
    /// checked against its certificate) or `amqp://USER:PASSWORD@HOST[:PORT]/VHOST`; the vhost
    /// URL-encoded (`%2Fpublic_pubsub`). With `client_cert`, the login is SASL EXTERNAL (the
    /// broker takes the user from the certificate) unless the URL says otherwise
    /// (`?auth_mechanism=plain`).
    pub url: String,
    /// The password of the URL's user, read from this file at start (it replaces any password in
    /// `url`); for a plain (non-certificate) login.
    pub password_file: Option<PathBuf>,
    /// PEM file of the CA certificates the broker's certificate must chain to. Unset: the
    /// system's CAs.
    pub ca_file: Option<PathBuf>,
    /// PEM files of the client certificate (with its chain) and its private key (PKCS#8 or
    /// RSA), for EXTERNAL logins; both or neither.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// A durable queue of this name (a private vhost's account), consumed across restarts, so
    /// nothing published while the bridge is away is lost. Unset: a fresh UUID-named queue per
    /// connection, exclusive and auto-deleted (what a public vhost allows): whatever is published
    /// while the bridge is disconnected is missed, and the gap is logged with its time span for
    /// a backfill (`taskbot replay --since … --until …`).
    pub queue: Option<String>,
    /// Declare `queue` passively: it must exist already, made (and bound) by the broker's
    /// administrators, as on Fedora's private vhost; the bridge binds nothing.
    pub queue_passive: bool,
    /// The exchange the queue is bound to.
    pub exchange: String,
    /// Topic patterns the queue is bound with (`*` one word, `#` any number), e.g.
    /// `org.fedoraproject.prod.buildsys.#`.
    pub topics: Vec<String>,
    /// Unacknowledged deliveries held at once (Fedora's norm: 25). A delivery is acked only once
    /// Taskbot's broker confirmed its event.
    pub prefetch: u16,
    /// Bodies larger than this are dead-lettered (cut to this size).
    pub max_message_bytes: usize,
    /// Address of the bridge's `/healthz`, `/readyz` and `/metrics` (`host:port`; port 0 picks a
    /// free one, logged). Also `--ops-listen`.
    pub ops_listen: String,
}

impl Default for FedoraMessagingBridgeConfig {
    fn default() -> Self {
        FedoraMessagingBridgeConfig {
            url: "amqps://rabbitmq.fedoraproject.org/%2Fpublic_pubsub".into(),
            password_file: None,
            ca_file: None,
            client_cert: None,
            client_key: None,
            queue: None,
            queue_passive: false,
            exchange: "amq.topic".into(),
            topics: vec!["org.fedoraproject.prod.#".into()],
            prefetch: 25,
            max_message_bytes: 1024 * 1024,
            ops_listen: OPS_DEFAULT_FEDORA_MESSAGING_BRIDGE.into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RulesConfig {
    /// The YAML rules file.
    pub file: PathBuf,
    /// Base URL that task repositories given by a relative path in the rules file are resolved
    /// against, e.g. `file:///srv/taskbot/tasks` or `https://pagure.io/taskbot-tasks`.
    pub task_base_url: Option<String>,
    /// How often the rules file is checked for changes, in milliseconds. A changed file is
    /// reloaded (so is any file on SIGHUP); one that does not load is refused and the rules in
    /// force stay.
    pub reload_interval_ms: u64,
    /// Largest rules file accepted, in bytes: a larger one is refused unread.
    pub max_file_bytes: u64,
    /// Deepest nesting of YAML collections accepted in the rules file; deeper is refused before
    /// parsing (crate::yaml_budget).
    pub max_depth: usize,
    /// Address of the rules service's `/healthz`, `/readyz` and `/metrics` (`host:port`; port 0 picks a
    /// free one, logged). Also `--ops-listen`.
    pub ops_listen: String,
}

impl RulesConfig {
    /// The limits the rules file is checked against before it is parsed.
    pub fn yaml_budget(&self) -> crate::yaml_budget::YamlBudget {
        crate::yaml_budget::YamlBudget {
            max_bytes: self.max_file_bytes,
            max_depth: self.max_depth,
        }
    }
}

impl Default for RulesConfig {
    fn default() -> Self {
        RulesConfig {
            file: PathBuf::from("deploy/rules.yaml"),
            task_base_url: None,
            reload_interval_ms: 2000,
            max_file_bytes: crate::yaml_budget::YamlBudget::DEFAULT.max_bytes,
            max_depth: crate::yaml_budget::YamlBudget::DEFAULT.max_depth,
            ops_listen: OPS_DEFAULT_RULES.into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProvisionerConfig {
    /// Backend for jobs that ask for `local`: the runner's own host.
    pub backend: String,
    /// Address of the provisioner's `/healthz`, `/readyz` and `/metrics` (`host:port`; port 0 picks a
    /// free one, logged). Also `--ops-listen`.
    pub ops_listen: String,
    /// The VM backend, for jobs that need a VM or are destructive (`[provisioner.vm]`). Without
    /// it such jobs end CRASHED, saying so.
    pub vm: Option<VmBackendConfig>,
}

impl Default for ProvisionerConfig {
    fn default() -> Self {
        ProvisionerConfig {
            backend: "local".into(),
            ops_listen: OPS_DEFAULT_PROVISIONER.into(),
            vm: None,
        }
    }
}

/// Disposable QEMU VMs (docs/provisioning.md). The VMs run on the provisioner's host with their
/// SSH port forwarded on 127.0.0.1, so the runners of their jobs run on that host too.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VmBackendConfig {
    /// The image catalogue (`[[provisioner.vm.images]]`): what VM jobs boot. The arches it has
    /// images for are the arches the backend serves.
    pub images: Vec<VmImageConfig>,
    /// The private key the guests accept, and the user to log in as. Its public half goes into
    /// every VM's cloud-init seed.
    pub ssh_key: PathBuf,
    pub ssh_user: String,
    /// Leases, overlays, seeds, serial logs, and downloaded images (`cache/`).
    pub state_dir: PathBuf,
    pub memory_mb: u32,
    /// VMs at once; jobs beyond wait in the queue.
    pub max_vms: usize,
    pub boot_timeout_secs: u64,
    /// How long a VM may live without its job ending; then the reaper destroys it (its runner
    /// died). Longer than the runners' task time limit.
    pub lease_secs: u64,
    /// `tcg`, or `kvm` where KVM works.
    pub accel: String,
    /// URL prefixes a job's ISO (`vm.iso`) may be fetched from, e.g. the artifacts URL of the
    /// runners. Catalogue URLs are the operator's own and always allowed. Empty: no job ISOs.
    pub allowed_urls: Vec<String>,
    /// Largest ISO or image download, in bytes.
    pub download_max_bytes: u64,
    /// Where jobs that boot their item's kernel (`vm.kernel_from_item`) fetch its RPM: Koji's
    /// package layout, `<koji_pkgs_url>/packages/<name>/<version>/<release>/<arch>/`. Only URLs
    /// under it are fetched for them.
    pub koji_pkgs_url: String,
    /// Largest kernel RPM download, and the most its unpacked kernel and modules may take, in
    /// bytes (the modules go into the VM's initramfs, so into its memory).
    pub kernel_max_bytes: u64,
}

impl Default for VmBackendConfig {
    fn default() -> Self {
        VmBackendConfig {
            images: Vec::new(),
            ssh_key: PathBuf::from("/var/lib/taskbot/vm/id_ed25519"),
            ssh_user: "root".into(),
            state_dir: PathBuf::from("/var/lib/taskbot/vm/state"),
            memory_mb: 512,
            max_vms: 2,
            boot_timeout_secs: 180,
            lease_secs: 4200,
            accel: "tcg".into(),
            allowed_urls: Vec::new(),
            download_max_bytes: 8 << 30,
            koji_pkgs_url: "https://kojipkgs.fedoraproject.org".into(),
            kernel_max_bytes: 1 << 30,
        }
    }
}

/// One image of the catalogue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmImageConfig {
    /// Unique; jobs may ask for it by name.
    pub name: String,
    pub distro: String,
    pub release: String,
    pub arch: String,
    /// `cloud`, `server`, `minimal`, ...
    pub flavour: String,
    /// When it was built (any text that sorts by date, e.g. `2026-11-01` or `20261101.n.0`):
    /// among images of one release, the latest is the newest.
    #[serde(default)]
    pub built: String,
    /// The disk every VM of this image gets a copy-on-write overlay of (never written).
    pub disk: ImageFile,
    /// Direct kernel boot: a kernel (and initramfs) booted by QEMU itself. Without, the VM
    /// boots from its disk's boot loader, as cloud images do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<ImageFile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<ImageFile>,
    /// Kernel command line (direct kernel boot only).
    #[serde(default = "default_append")]
    pub append: String,
    /// Give the VM a cloud-init NoCloud seed (user, SSH key, hostname). Images without
    /// cloud-init must already accept `ssh_key`.
    #[serde(default = "yes")]
    pub cloud_init: bool,
    /// The QEMU binary; default `qemu-system-<arch>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qemu: Option<String>,
    /// More QEMU arguments, e.g. `["-M", "virt", "-cpu", "max"]` for an emulated aarch64.
    #[serde(default)]
    pub qemu_args: Vec<String>,
}

fn default_append() -> String {
    "console=ttyS0 quiet panic=-1".into()
}

fn yes() -> bool {
    true
}

/// A file of the catalogue: a local path, or a URL with its SHA-256 (downloaded once, then
/// served from the cache).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ImageFile {
    Path(PathBuf),
    Url { url: String, sha256: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunnerConfig {
    /// The arch whose queue this runner consumes (also settable with `runner --arch`).
    pub arch: Option<String>,
    /// This runner's name among the runners of its host (also settable with `runner
    /// --instance`): it identifies as `runner/<arch>@<host>/<instance>` in job statuses and
    /// results. Unset: its process id, unique on the host while it runs. Give one per runner
    /// when several share a host and should keep their name across restarts.
    pub instance: Option<String>,
    /// Where jobs' fresh working directories are created (and removed afterwards).
    pub work_dir: PathBuf,
    /// Where each job's logs and artifacts are kept, under `<artifacts_dir>/<job id>/`.
    pub artifacts_dir: PathBuf,
    /// Public URL of `artifacts_dir`, used for results' log links; unset, `<api.public_url>/artifacts`
    /// when that is set ([`Config::artifacts_url`]), else results carry the local path.
    pub artifacts_url: Option<String>,
    /// Prefixes of repository URLs the runner may clone. A task's code runs on this host, so
    /// anything else yields a CRASHED result. Empty means nothing is allowed.
    pub allowed_repos: Vec<String>,
    /// Longest a task may run, in seconds; then its whole process group is killed.
    pub task_timeout_secs: u64,
    /// Tasks run at once by this runner. The runner also limits its prefetch to this, so no job
    /// waits unacked in its buffer (where RabbitMQ's consumer timeout would run out).
    pub concurrency: usize,
    /// Bare git mirrors of task repositories, one per URL: a job fetches only what changed, then
    /// clones locally from the mirror.
    pub mirror_dir: PathBuf,
    /// Largest file a task's `downloads` may fetch, in bytes; a task's own `max_bytes` may only
    /// lower it.
    pub download_max_bytes: u64,
    /// Attempts per download when the server is unreachable or answers 5xx (with back-off).
    pub download_attempts: u32,
    /// Most bytes of a job's log (`task.log`) kept. Past it the log keeps its first quarter and
    /// its last bytes, with a note of how much was dropped between them; the task's output is
    /// still read (so the task never stalls on it), only not stored.
    pub max_log_bytes: u64,
    /// Most bytes of files a job may leave in its artifacts directory (its log not counted);
    /// files past it are removed when the job ends, and its results say so.
    pub max_artifact_bytes: u64,
    /// Most files (directories not counted) a job may leave in its artifacts directory, its
    /// log not counted; the rest are removed when the job ends, and its results say so.
    pub max_artifact_files: u64,
    /// Largest file the runner reads from a task (`taskbot.yaml`, the results file, the events
    /// file), in bytes: a larger one is refused unread, and the job CRASHED saying so.
    pub max_task_file_bytes: u64,
    /// Deepest nesting of YAML collections accepted in `taskbot.yaml` and the results file;
    /// deeper is refused before parsing (a parser given deep nesting takes minutes, past the
    /// task's time limit: crate::yaml_budget).
    pub max_task_file_depth: usize,
    /// The broker's `consumer_timeout` in seconds (RabbitMQ's default: 1800; 0 = none). A job's
    /// delivery stays unacked while it runs, so the runner ends a task (ABORTED) before this runs
    /// out rather than lose the job to a closed channel. Raise it in rabbitmq.conf and here for
    /// longer tasks.
    pub consumer_timeout_secs: u64,
    /// Address of the runner's `/healthz`, `/readyz` and `/metrics` (`host:port`; port 0 picks a
    /// free one, logged). Several runners on one host each need their own: `--ops-listen`.
    pub ops_listen: String,
    /// Variables every task gets in its environment, set by the operator: where the build system
    /// and the repositories are (`KOJI_PKGS_URL`, `DEPCHECK_REPO_URLS`), a proxy. Tasks never see
    /// the runner's own environment, so this is the only way to hand them such settings. Names
    /// starting with `TASKBOT_` are refused (those are the job's own).
    pub task_env: std::collections::BTreeMap<String, String>,
    /// How local task steps are confined: `"bwrap"` (bubblewrap: an unprivileged user in its own
    /// namespaces, docs/security.md) or `"none"` (task code runs as the runner's user, with the
    /// runner's files in reach; logged as a warning at every start). The runner refuses to start
    /// when `"bwrap"` cannot work on the host.
    pub sandbox: SandboxMode,
    /// The unprivileged user (name, or `UID[:GID]`) sandboxed steps run as; never root.
    pub sandbox_user: String,
    /// Whether sandboxed steps may use the network (tasks download builds); `false` gives each
    /// step a network namespace of its own with only a loopback device.
    pub sandbox_network: bool,
    /// More host directories sandboxed steps see read-only, besides `/usr` and `/etc` (say `/opt`
    /// where tools are installed there).
    pub sandbox_read_only: Vec<PathBuf>,
    /// Paths covered with an empty directory inside the sandbox: configuration and secrets under
    /// the system directories a step sees (`/usr`, `/etc`). The directory of the config file is
    /// hidden too when it is under one of them.
    pub sandbox_hidden: Vec<PathBuf>,
    /// Secrets handed to the tasks allowed them (`[runner.secrets.<name>]`, docs/security.md):
    /// each read from a file on the runner's host for every job that may have it, delivered
    /// inside the sandbox as `$TASKBOT_SECRETS/<name>` (and as a variable when `env` names one),
    /// and redacted from the job's log, artifacts, results and events. Needs the sandbox.
    pub secrets: BTreeMap<String, TaskSecret>,
    /// The private key the runner logs into its jobs' VMs with. A run message names the key the
    /// provisioner used; the runner refuses a VM job naming another and always uses this one, so
    /// a forged run message cannot make it read a file of its choosing. The same file as the
    /// provisioner's `provisioner.vm.ssh_key` (the runners of VM jobs run on the VMs' host).
    pub vm_ssh_key: PathBuf,
    /// The hosts the runner's VM jobs may be on (the provisioner forwards each VM's SSH port on
    /// 127.0.0.1). A run message naming any other host is refused.
    pub vm_hosts: Vec<String>,
    /// Most reboots one VM job may ask for (reboot steps and `$TASKBOT_REBOOT` together); a task
    /// asking for more is stopped, CRASHED, instead of holding its VM until its time runs out.
    pub vm_max_reboots: u32,
}

/// One secret of [`RunnerConfig::secrets`]: where its value is, and which jobs get it.
///
/// A job gets it when its task's repository is under one of `repos` and, when those lists are
/// set, its task name is in `tasks` and its rule in `rules`. The repository decides which code
/// runs, so it is required; task and rule names are labels that narrow it further.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSecret {
    /// The file holding the value (up to 64 KiB; surrounding blank space, such as the newline
    /// editors add, is not part of a variable's value). Readable by the runner only.
    pub file: PathBuf,
    /// Repository URL prefixes (as in `allowed_repos`) whose tasks may receive the secret.
    pub repos: Vec<String>,
    /// When set, only tasks of these names (`task.name` of the job).
    #[serde(default)]
    pub tasks: Vec<String>,
    /// When set, only jobs of these rules.
    #[serde(default)]
    pub rules: Vec<String>,
    /// Also give the value as this environment variable (not `TASKBOT_*`).
    #[serde(default)]
    pub env: Option<String>,
}

/// See [`RunnerConfig::sandbox`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SandboxMode {
    Bwrap,
    None,
}

impl RunnerConfig {
    /// The limits a task's own files are checked against before they are parsed.
    pub fn task_file_budget(&self) -> crate::yaml_budget::YamlBudget {
        crate::yaml_budget::YamlBudget {
            max_bytes: self.max_task_file_bytes,
            max_depth: self.max_task_file_depth,
        }
    }
}

impl Default for RunnerConfig {
    fn default() -> Self {
        RunnerConfig {
            arch: None,
            instance: None,
            work_dir: std::env::temp_dir().join("taskbot-work"),
            artifacts_dir: PathBuf::from("/var/lib/taskbot/artifacts"),
            artifacts_url: None,
            allowed_repos: Vec::new(),
            task_timeout_secs: 3600,
            concurrency: 1,
            mirror_dir: std::env::temp_dir().join("taskbot-mirrors"),
            download_max_bytes: 1024 * 1024 * 1024,
            download_attempts: 4,
            max_log_bytes: 10 * 1024 * 1024,
            max_artifact_bytes: 1024 * 1024 * 1024,
            max_artifact_files: 10_000,
            max_task_file_bytes: 1024 * 1024,
            max_task_file_depth: crate::yaml_budget::YamlBudget::DEFAULT.max_depth,
            consumer_timeout_secs: 1800,
            ops_listen: OPS_DEFAULT_RUNNER.into(),
            task_env: Default::default(),
            sandbox: SandboxMode::Bwrap,
            sandbox_user: "taskbot-task".into(),
            sandbox_network: true,
            sandbox_read_only: Vec::new(),
            sandbox_hidden: [
                "/etc/taskbot",
                "/etc/rabbitmq",
                "/etc/postgresql",
                "/etc/postgresql-common",
                "/etc/ssh",
                "/etc/ssl/private",
            ]
            .map(PathBuf::from)
            .to_vec(),
            secrets: BTreeMap::new(),
            vm_ssh_key: PathBuf::from("/var/lib/taskbot/vm/id_ed25519"),
            vm_hosts: vec!["127.0.0.1".into()],
            vm_max_reboots: 10,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReporterConfig {
    /// The sinks the reporter feeds, e.g. `["postgres", "resultsdb", "jsonl",
    /// "fedora-messaging"]`. Unset: `postgres`, plus `resultsdb` when `resultsdb_url` is set and
    /// `jsonl` when `jsonl_path` is set (fedora-messaging only when listed). Each sink has its own
    /// queue, declared only while it is enabled (see docs/results.md).
    pub sinks: Option<Vec<Sink>>,
    /// ResultsDB base URL (e.g. `http://resultsdb:5001/api/v2.0`); results are also posted there
    /// when set.
    pub resultsdb_url: Option<String>,
    /// Seconds before a ResultsDB request is abandoned and retried.
    pub resultsdb_timeout_secs: u64,
    /// An extra header sent with every ResultsDB request, as `Name: value` (e.g.
    /// `Authorization: Bearer s3cret`), for a ResultsDB behind an authenticating proxy.
    pub resultsdb_auth_header: Option<String>,
    /// A file holding that header (one line, `Name: value`), read at start: the way to give a
    /// token without writing it into the configuration. Not together with
    /// `resultsdb_auth_header`.
    pub resultsdb_auth_header_file: Option<PathBuf>,
    /// HTTP Basic user for writing to ResultsDB, as Fedora's instance wants (a per-service
    /// account); with `resultsdb_password_file`. Not together with `resultsdb_auth_header(_file)`.
    pub resultsdb_username: Option<String>,
    /// File holding that user's password (one line), read at start; never logged.
    pub resultsdb_password_file: Option<PathBuf>,
    /// Which outcomes the ResultsDB instance accepts and what Taskbot's outcomes are posted as
    /// there: `"upstream"` (default), `"fedora"`, or a table `{accepted = [...], map = {...}}`
    /// (taskbot::outcomes). Checked at start.
    pub resultsdb_outcomes: crate::outcomes::OutcomeProfile,
    /// Longest pause, in seconds, between two attempts to post one result (the pause doubles from
    /// 0.5 s, with jitter).
    pub resultsdb_retry_max_secs: u64,
    /// Results posted to ResultsDB at once; a result waiting to be retried holds one of these.
    pub resultsdb_concurrency: usize,
    /// Link to a job's page, given to ResultsDB as the job group's `ref_url`; `{job_id}` is
    /// replaced (e.g. `https://taskbot.example/jobs/{job_id}`). Unset: the api's dashboard page
    /// of the job when `api.public_url` is set, else the job's log URL (the same link in every
    /// store and in the api: [`Config::job_page_url`]).
    pub job_url_template: Option<String>,
    /// File that results and job statuses are appended to, one JSON object per line.
    pub jsonl_path: Option<PathBuf>,
    /// Size at which the JSON-lines file is rotated (`<path>.1`, `<path>.2`, ...).
    pub jsonl_max_bytes: u64,
    /// Rotated JSON-lines files kept; older ones are deleted.
    pub jsonl_keep: usize,
    /// Exchange the fedora-messaging sink publishes to (on the Taskbot broker).
    pub fedora_messaging_exchange: String,
    /// Topic (routing key) of the fedora-messaging messages; `{testcase}`, `{outcome}`
    /// (lower case), `{arch}` and `{item_type}` are replaced.
    pub fedora_messaging_topic: String,
    /// The `fedora_messaging_schema` header of those messages: the entry-point name of their
    /// message class in the `taskbot-messages` Python package.
    pub fedora_messaging_schema: String,
    /// The `fedora_messaging_schema_package` header: the Python distribution holding that class,
    /// named as fedora-messaging names it (lower case, `_` for `-` and `.`), so a consumer
    /// without it is told what to install.
    pub fedora_messaging_schema_package: String,
    /// AMQP priority of those messages (also sent as the `priority` header, as fedora-messaging
    /// does); honoured only by queues declared with `x-max-priority`.
    pub fedora_messaging_priority: u8,
    /// Which results the fedora-messaging sink publishes: `all`, `changes` (only a result whose
    /// outcome differs from the previous one for its testcase, item, arch and scenario) or
    /// `changes-and-failures` (those plus every failure). The last two keep their state in
    /// PostgreSQL.
    pub fedora_messaging_notify: FedoraMessagingNotify,
    /// Address of the reporter's `/healthz`, `/readyz` and `/metrics` (`host:port`; port 0 picks a
    /// free one, logged). Also `--ops-listen`.
    pub ops_listen: String,
    /// How long, in seconds, a result or status for a job the reporter has not (yet) seen
    /// requested or dispatched is handed back to its queue before it is dead-lettered. Results
    /// and statuses travel on different queues, so a result may be handled before its job's
    /// `queued` status; counted from the message's time, or from the reporter's start when that
    /// is later (a reporter catching up on a backlog gives every message the full grace).
    pub unknown_job_grace_secs: u64,
    /// Tasks (by name, as the rules call them) whose results may be about another item, item
    /// type or arch than their job's (a task checking an update that reports on each of its
    /// builds). Every other task's results must be about its job's own item and arch: a task
    /// cannot give a verdict on a package it was not asked to check.
    pub tasks_reporting_other_items: Vec<String>,
}

impl Default for ReporterConfig {
    fn default() -> Self {
        ReporterConfig {
            sinks: None,
            resultsdb_url: None,
            resultsdb_timeout_secs: 30,
            resultsdb_auth_header: None,
            resultsdb_auth_header_file: None,
            resultsdb_username: None,
            resultsdb_password_file: None,
            resultsdb_outcomes: Default::default(),
            resultsdb_retry_max_secs: 60,
            resultsdb_concurrency: 4,
            job_url_template: None,
            jsonl_path: None,
            jsonl_max_bytes: 100 * 1024 * 1024,
            jsonl_keep: 5,
            fedora_messaging_exchange: "amq.topic".into(),
            fedora_messaging_topic: "org.fedoraproject.prod.taskbot.result.new".into(),
            fedora_messaging_schema: "taskbot.result.v1".into(),
            fedora_messaging_schema_package: "taskbot_messages".into(),
            fedora_messaging_priority: 0,
            fedora_messaging_notify: FedoraMessagingNotify::All,
            ops_listen: OPS_DEFAULT_REPORTER.into(),
            unknown_job_grace_secs: 600,
            tasks_reporting_other_items: Vec::new(),
        }
    }
}

/// Which results the fedora-messaging sink publishes (`reporter.fedora_messaging_notify`).
/// Maintainers of the earlier system asked to hear about a change, not about every passing run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FedoraMessagingNotify {
    /// Every result.
    #[default]
    All,
    /// A result whose outcome differs from the previous one for its testcase, item and arch (the
    /// first one included).
    Changes,
    /// Those, and every result that is not PASSED or INFO.
    ChangesAndFailures,
}

impl FedoraMessagingNotify {
    /// The name used in configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            FedoraMessagingNotify::All => "all",
            FedoraMessagingNotify::Changes => "changes",
            FedoraMessagingNotify::ChangesAndFailures => "changes-and-failures",
        }
    }
}

/// One of the reporter's result sinks (`reporter.sinks`). Each has its own queue(s) on the results
/// exchange (named and declared by the topology), so a slow or broken store never holds back the
/// others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Sink {
    /// Results and job histories in PostgreSQL (two queues: results and statuses).
    Postgres,
    /// Results posted to ResultsDB.
    Resultsdb,
    /// Results and statuses appended to a JSON-lines file.
    Jsonl,
    /// Results republished as fedora-messaging messages.
    FedoraMessaging,
}

impl Sink {
    pub const ALL: [Sink; 4] = [
        Sink::Postgres,
        Sink::Resultsdb,
        Sink::Jsonl,
        Sink::FedoraMessaging,
    ];

    /// The name used in configuration (`reporter.sinks`) and in queue names.
    pub fn as_str(self) -> &'static str {
        match self {
            Sink::Postgres => "postgres",
            Sink::Resultsdb => "resultsdb",
            Sink::Jsonl => "jsonl",
            Sink::FedoraMessaging => "fedora-messaging",
        }
    }
}

impl std::fmt::Display for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PostgresConfig {
    /// libpq-style URL of the results database.
    pub url: String,
    /// Connections kept by the pool.
    pub pool_size: usize,
    /// The password of the URL's own user, read from this file at start (it replaces any
    /// password in `url`): for an administrator running `taskbot setup-users`, or a deployment
    /// without per-service roles.
    pub password_file: Option<PathBuf>,
    /// The database role of the reporter (`[postgres.users.reporter]`, which writes) and of the
    /// api (`[postgres.users.api]`, which only reads): the service logs in as it, with the
    /// password from its `password_file`, instead of the URL's user. `taskbot setup-users` makes
    /// them (docs/security.md).
    pub users: BTreeMap<String, Account>,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        PostgresConfig {
            url: "postgres://postgres@127.0.0.1:5432/test".into(),
            pool_size: 4,
            password_file: None,
            users: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// Address the `api` service listens on (`host:port`).
    pub listen: String,
    /// The URL clients reach the api at (e.g. `https://taskbot.example`), used for the absolute
    /// links in answers (`href`, `next`, `prev`) and as the `taskbot` command's default api.
    /// Without it, links are built from the request's `Host` header.
    pub public_url: Option<String>,
    /// Where the job artifacts served by the api are; without it, `runner.artifacts_dir` (the
    /// usual case: the api runs where the runner keeps them, or on a shared volume).
    pub artifacts_dir: Option<PathBuf>,
    /// Longest a query of the api may run (or wait for a lock), in milliseconds; PostgreSQL
    /// cancels it then and the request answers 504. Callers shape the api's queries, so without
    /// this one request can keep a database backend busy for minutes. 0 counts as 1.
    pub statement_timeout_ms: u64,
    /// Store requests that may wait for a free connection when all `postgres.pool_size` are in
    /// use; beyond that a request is refused at once with 503 instead of queueing without bound.
    pub max_waiting_requests: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: "127.0.0.1:8080".into(),
            public_url: None,
            artifacts_dir: None,
            statement_timeout_ms: 5000,
            max_waiting_requests: 32,
        }
    }
}

/// A configuration that could not be loaded; the message names each bad key and where its value
/// came from.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n{0}")]
pub struct ConfigError(String);

impl ConfigError {
    /// A problem a service finds in its own section after loading (one line per key, `key:
    /// problem`), so it exits as a bad configuration the loader finds does: status 2.
    pub fn new(problems: impl Into<String>) -> ConfigError {
        ConfigError(problems.into())
    }
}

impl Config {
    /// The public link to a job, the `ref_url` of its ResultsDB group: `reporter.job_url_template`
    /// (`{job_id}` replaced), else the api's dashboard page of the job under `api.public_url`;
    /// `None` when neither is set (the group then links to the job's log). The reporter's sink
    /// and the api's ResultsDB view both use this, so the link is the same in every store.
    pub fn job_page_url(&self, job_id: uuid::Uuid) -> Option<String> {
        self.job_page_template()
            .map(|t| t.replace("{job_id}", &job_id.to_string()))
    }

    /// Where job artifacts are published, the base of results' `ref_url` (log links):
    /// `runner.artifacts_url`, else `<api.public_url>/artifacts` (the api serves the artifacts
    /// directory there), else `None` (results then carry the runner host's local path). Without
    /// a trailing slash. The runner's links and the api's `logs.published` both use this, so
    /// they agree.
    pub fn artifacts_url(&self) -> Option<String> {
        let explicit = self.runner.artifacts_url.as_deref();
        let from_api = || {
            self.api
                .public_url
                .as_deref()
                .map(|base| format!("{}/artifacts", base.trim_end_matches('/')))
        };
        explicit
            .map(|url| url.trim_end_matches('/').to_string())
            .or_else(from_api)
    }

    /// [`Config::job_page_url`] as a template with `{job_id}`.
    pub fn job_page_template(&self) -> Option<String> {
        if let Some(template) = &self.reporter.job_url_template {
            return Some(template.clone());
        }
        self.api
            .public_url
            .as_deref()
            .map(|base| format!("{}/dashboard/jobs/{{job_id}}", base.trim_end_matches('/')))
    }

    /// Load from the process environment (`TASKBOT_CONFIG`, `TASKBOT_*`), with `overrides` (from
    /// the command line) on top.
    pub fn load(overrides: &[(&str, String)]) -> Result<Config, ConfigError> {
        let file = std::env::var_os(CONFIG_ENV).map(PathBuf::from);
        Self::figment(file.as_deref(), overrides)
            .extract()
            .map_err(describe)
    }

    /// The layered figment, separated from extraction so tests can inspect it.
    pub fn figment(file: Option<&Path>, overrides: &[(&str, String)]) -> Figment {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            // `Toml::file` silently ignores a missing file; an operator who names one means it.
            figment = figment.merge(Toml::file_exact(file));
        }
        figment = figment.merge(
            Env::prefixed("TASKBOT_")
                .filter(|key| {
                    let first = key.as_str().split("__").next().unwrap_or_default();
                    TOP_LEVEL_KEYS.iter().any(|k| k.eq_ignore_ascii_case(first))
                })
                .split("__"),
        );
        for (key, value) in overrides {
            figment = figment.merge(Serialized::default(key, value));
        }
        figment
    }

    /// Where `service` serves `/healthz`, `/readyz` and `/metrics` ([`Service::ops_listen_key`]);
    /// `None` for a service without them (the api has its own).
    pub fn ops_listen(&self, service: Service) -> Option<&str> {
        Some(match service {
            Service::Bridge => &self.bridge.ops_listen,
            Service::FedoraMessagingBridge => &self.fedora_messaging_bridge.ops_listen,
            Service::Rules => &self.rules.ops_listen,
            Service::Provisioner => &self.provisioner.ops_listen,
            Service::Runner => &self.runner.ops_listen,
            Service::Reporter => &self.reporter.ops_listen,
            Service::Api => return None,
        })
    }

    /// Set every service's ops address (tests use `127.0.0.1:0`, so services never collide).
    pub fn set_all_ops_listen(&mut self, address: &str) {
        for field in [
            &mut self.bridge.ops_listen,
            &mut self.fedora_messaging_bridge.ops_listen,
            &mut self.rules.ops_listen,
            &mut self.provisioner.ops_listen,
            &mut self.runner.ops_listen,
            &mut self.reporter.ops_listen,
        ] {
            *field = address.to_string();
        }
    }
}

/// One line per error: key, problem, source.
fn describe(err: figment::Error) -> ConfigError {
    let mut out = String::new();
    for e in err {
        let key = if e.path.is_empty() {
            "(top level)".to_string()
        } else {
            e.path.join(".")
        };
        let source = match &e.metadata {
            Some(meta) if meta.name.contains("environment") => {
                format!(
                    "environment variable TASKBOT_{}",
                    e.path.join("__").to_uppercase()
                )
            }
            Some(meta) => match &meta.source {
                Some(src) => format!("{} ({src})", meta.name),
                None => meta.name.to_string(),
            },
            None => "unknown source".into(),
        };
        let _ = writeln!(out, "  {key}: {} [from {source}]", e.kind);
    }
    ConfigError(out.trim_end().to_string())
}

#[cfg(test)]
// figment's Jail closures return its own (large) error type; that is its API, not ours.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;
    use figment::Jail;

    #[test]
    fn artifacts_are_published_under_the_api_unless_runner_artifacts_url_says() {
        let mut config = Config::default();
        assert_eq!(config.artifacts_url(), None);
        config.api.public_url = Some("https://taskbot.example.org/".into());
        assert_eq!(
            config.artifacts_url().as_deref(),
            Some("https://taskbot.example.org/artifacts")
        );
        config.runner.artifacts_url = Some("https://cdn.example/taskbot/".into());
        assert_eq!(
            config.artifacts_url().as_deref(),
            Some("https://cdn.example/taskbot")
        );
    }

    #[test]
    fn defaults_then_file_then_env_then_overrides() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "t.toml",
                "[amqp]\nprefetch = 3\nnamespace = \"file\"\n[runner]\nconcurrency = 2\n",
            )?;
            jail.set_env("TASKBOT_AMQP__NAMESPACE", "env");
            jail.set_env("TASKBOT_RUNNER__ALLOWED_REPOS", "[\"file:///srv/\"]");
            jail.set_env("TASKBOT_CONFIG", "t.toml");
            let cfg: Config = Config::figment(
                Some(Path::new("t.toml")),
                &[("runner.arch", "aarch64".into())],
            )
            .extract()?;
            assert_eq!(cfg.amqp.prefetch, 3, "file beats defaults");
            assert_eq!(cfg.amqp.namespace, "env", "env beats file");
            assert_eq!(cfg.runner.concurrency, 2);
            assert_eq!(cfg.runner.allowed_repos, vec!["file:///srv/".to_string()]);
            assert_eq!(cfg.runner.arch.as_deref(), Some("aarch64"));
            assert_eq!(cfg.postgres, PostgresConfig::default());
            Ok(())
        });
    }

    #[test]
    fn a_runner_arch_user_is_set_from_a_file_or_the_environment() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "t.toml",
                "[amqp.users.runner_x86_64]\nname = \"tb-runner-x86_64\"\n",
            )?;
            jail.set_env(
                "TASKBOT_AMQP__USERS__RUNNER_AARCH64__NAME",
                "tb-runner-aarch64",
            );
            let cfg: Config = Config::figment(Some(Path::new("t.toml")), &[]).extract()?;
            let runners = cfg.amqp.runner_users();
            assert_eq!(runners.of_arch("x86_64"), Some("tb-runner-x86_64"));
            assert_eq!(runners.of_arch("aarch64"), Some("tb-runner-aarch64"));
            assert_eq!(runners.of_arch("noarch"), None, "no shared runner user");
            Ok(())
        });
    }

    #[test]
    fn task_secrets_read_with_their_optional_keys() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "t.toml",
                r#"
[runner.secrets.koji-token]
file = "/etc/taskbot/secrets/koji-token"
repos = ["https://pagure.io/taskbot-tasks/"]
tasks = ["dist.abicheck"]
env = "KOJI_TOKEN"
[runner.secrets.plain]
file = "/etc/taskbot/secrets/plain"
repos = ["file:///srv/tasks/"]
"#,
            )?;
            let cfg: Config = Config::figment(Some(Path::new("t.toml")), &[]).extract()?;
            let koji = &cfg.runner.secrets["koji-token"];
            assert_eq!(koji.file, Path::new("/etc/taskbot/secrets/koji-token"));
            assert_eq!(koji.tasks, ["dist.abicheck"]);
            assert_eq!(koji.env.as_deref(), Some("KOJI_TOKEN"));
            let plain = &cfg.runner.secrets["plain"];
            assert!(plain.tasks.is_empty() && plain.rules.is_empty() && plain.env.is_none());
            jail.create_file(
                "bad.toml",
                "[runner.secrets.x]
file = \"/f\"
repos = []
value = \"inline\"
",
            )?;
            let err = Config::figment(Some(Path::new("bad.toml")), &[])
                .extract::<Config>()
                .unwrap_err();
            assert!(err.to_string().contains("value"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn the_image_catalogue_reads_paths_and_urls() {
        Jail::expect_with(|jail| {
            let sum = "ab".repeat(32);
            jail.create_file(
                "t.toml",
                &format!(
                    r#"
[provisioner.vm]
max_vms = 3
[[provisioner.vm.images]]
name = "tiny"
distro = "tiny"
release = "1"
arch = "x86_64"
flavour = "base"
disk = "/img/tiny.qcow2"
kernel = "/img/vmlinuz"
[[provisioner.vm.images]]
name = "f41"
distro = "fedora"
release = "41"
arch = "aarch64"
flavour = "cloud"
built = "2026-11-01"
disk = {{ url = "https://example.org/f41.qcow2", sha256 = "{sum}" }}
qemu_args = ["-M", "virt"]
"#
                ),
            )?;
            let cfg: Config = Config::figment(Some(Path::new("t.toml")), &[]).extract()?;
            let vm = cfg.provisioner.vm.expect("[provisioner.vm] read");
            assert_eq!(vm.max_vms, 3);
            assert_eq!(vm.images[1].arch, "aarch64");
            assert_eq!(vm.images[0].disk, ImageFile::Path("/img/tiny.qcow2".into()));
            assert!(vm.images[0].cloud_init, "cloud-init seeds by default");
            assert_eq!(vm.images[0].append, "console=ttyS0 quiet panic=-1");
            assert_eq!(
                vm.images[1].disk,
                ImageFile::Url {
                    url: "https://example.org/f41.qcow2".into(),
                    sha256: sum.clone()
                }
            );
            Ok(())
        });
    }

    #[test]
    fn every_service_has_its_own_default_ops_port_and_a_settable_key() {
        // In a jail: other tests set TASKBOT_ variables, and a stray one would break `extract`.
        Jail::expect_with(|_| {
            let defaults = Config::default();
            let mut ports = Vec::new();
            let with_ops: Vec<Service> = Service::ALL
                .into_iter()
                .filter(|s| s.ops_listen_key().is_some())
                .collect();
            for &service in &with_ops {
                let key = service.ops_listen_key().unwrap();
                let address = defaults
                    .ops_listen(service)
                    .expect("a service with ops endpoints");
                assert_eq!(Some(address), service.default_ops_listen(), "{service}");
                let addr: std::net::SocketAddr = address.parse().expect("a host:port");
                ports.push(addr.port());
                let cfg: Config =
                    Config::figment(None, &[(key, "0.0.0.0:1234".into())]).extract()?;
                assert_eq!(cfg.ops_listen(service), Some("0.0.0.0:1234"), "{key}");
            }
            ports.sort();
            ports.dedup();
            assert_eq!(ports.len(), with_ops.len(), "ports collide: {ports:?}");
            assert_eq!(with_ops.len(), 6);
            assert_eq!(defaults.ops_listen(Service::Api), None);
            let mut all = Config::default();
            all.set_all_ops_listen("127.0.0.1:0");
            for &service in &with_ops {
                assert_eq!(all.ops_listen(service), Some("127.0.0.1:0"));
            }
            Ok(())
        });
    }

    #[test]
    fn every_service_has_a_section() {
        for service in Service::ALL {
            assert!(
                TOP_LEVEL_KEYS.contains(&service.section()),
                "{service}: no section {}",
                service.section()
            );
        }
    }

    #[test]
    fn top_level_keys_are_the_config_sections() {
        let value = serde_json::to_value(Config::default()).unwrap();
        let mut keys: Vec<&str> = value
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        let mut listed = TOP_LEVEL_KEYS.to_vec();
        keys.sort();
        listed.sort();
        assert_eq!(keys, listed);
    }

    #[test]
    fn unrelated_prefixed_variables_are_ignored_but_typos_in_a_section_are_not() {
        Jail::expect_with(|jail| {
            jail.set_env("TASKBOT_RUN_ONCE", "1");
            jail.set_env("TASKBOT_TEST_AMQP_URL", "amqp://elsewhere");
            jail.set_env("TASKBOT_CONFIG", "whatever.toml");
            let cfg: Config = Config::figment(None, &[]).extract()?;
            assert_eq!(cfg, Config::default());
            jail.set_env("TASKBOT_AMQP__URLL", "amqp://typo");
            assert!(Config::figment(None, &[]).extract::<Config>().is_err());
            Ok(())
        });
    }

    #[test]
    fn bad_value_names_key_and_source() {
        Jail::expect_with(|jail| {
            jail.set_env("TASKBOT_AMQP__PREFETCH", "lots");
            let err = describe(Config::figment(None, &[]).extract::<Config>().unwrap_err());
            let text = err.to_string();
            assert!(text.contains("amqp.prefetch"), "{text}");
            assert!(text.contains("TASKBOT_AMQP__PREFETCH"), "{text}");
            Ok(())
        });
    }

    #[test]
    fn unknown_key_in_file_is_refused_with_file_name() {
        Jail::expect_with(|jail| {
            jail.create_file("t.toml", "[amqp]\nprefech = 3\n")?;
            let err = describe(
                Config::figment(Some(Path::new("t.toml")), &[])
                    .extract::<Config>()
                    .unwrap_err(),
            );
            let text = err.to_string();
            assert!(text.contains("unknown field"), "{text}");
            assert!(text.contains("prefech"), "{text}");
            assert!(text.contains("t.toml"), "{text}");
            Ok(())
        });
    }

    #[test]
    fn missing_named_file_is_an_error() {
        Jail::expect_with(|_| {
            let err = Config::figment(Some(Path::new("nope.toml")), &[])
                .extract::<Config>()
                .unwrap_err();
            assert!(err.to_string().contains("nope.toml"), "{err}");
            Ok(())
        });
    }
}
