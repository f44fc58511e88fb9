//! Helpers for the end-to-end tests: start the real service binaries against the real RabbitMQ
//! and PostgreSQL, each test in its own broker namespace and its own database, and stop and clean
//! up afterwards (also when a test fails).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use taskbot::testing::{test_config, TestBroker};
use taskbot::Config;

pub mod debian_vm;
pub mod private_broker;
pub mod private_postgres;
pub mod rpms;
pub mod shipped;
pub mod vm;
pub use private_broker::PrivateBroker;
pub use private_postgres::PrivatePostgres;

/// The workspace's top directory.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Path of a service binary, building the binaries once per test run if needed (`make test`
/// builds them before, so this is normally instant).
pub fn binary(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--bins", "--quiet"])
            .current_dir(workspace_root())
            .status()
            .expect("run cargo build");
        assert!(status.success(), "cargo build --bins failed");
    });
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    target.join("debug").join(name)
}

/// Make `content` (a folder) into a git repository at `dest` with one commit on `main`.
pub fn make_task_repo(content: &Path, dest: &Path) {
    copy_dir(content, dest);
    git(dest, &["init", "-q", "-b", "main"]);
    git(dest, &["add", "-A"]);
    git(
        dest,
        &[
            "-c",
            "user.name=taskbot",
            "-c",
            "user.email=taskbot@localhost",
            "commit",
            "-qm",
            "task",
        ],
    );
}

/// The content of the shipped task `tasks/<name>`, as `tasks/mkrepos.sh` puts it in its
/// repository (with `tasks/common/` as `common/` when the task uses it), staged under `staging`.
pub fn shipped_task(name: &str, staging: &Path) -> PathBuf {
    let tasks = workspace_root().join("tasks");
    let dest = staging.join(name);
    copy_dir(&tasks.join(name), &dest);
    let uses_common = std::fs::read_dir(&dest).unwrap().any(|entry| {
        let path = entry.unwrap().path();
        path.extension().is_some_and(|e| e == "py")
            && std::fs::read_to_string(&path).is_ok_and(|text| text.contains("tasklib"))
    });
    if uses_common {
        copy_dir(&tasks.join("common"), &dest.join("common"));
    }
    dest
}

fn git(dir: &Path, args: &[&str]) {
    let status = Command::new("git")
        .args(args)
        .current_dir(dir)
        .status()
        .expect("git runs");
    assert!(status.success(), "git {args:?} failed in {}", dir.display());
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub use taskbot::testing::TestDb;

/// One running service binary; killed when dropped.
pub struct Service {
    pub name: String,
    child: Child,
    pub log: PathBuf,
    /// How it was started, for [`Deployment::restart`].
    binary_name: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl Service {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: the process gets no chance to clean up (a crash, an OOM kill).
    pub fn kill_hard(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait up to `timeout` for a clean exit; returns whether it exited by itself
    /// with success.
    pub fn terminate(&mut self, timeout: Duration) -> bool {
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill_hard();
        false
    }

    /// Its exit status, once it has exited.
    pub fn try_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Where the service serves /healthz, /readyz and /metrics: the address it logs at start
    /// (tests configure port 0, see `taskbot::testing::test_config`). Waits up to `timeout`.
    pub fn ops_address(&self, timeout: Duration) -> std::net::SocketAddr {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(address) = logged_ops_address(&self.log_text()) {
                return address;
            }
            if Instant::now() > deadline {
                panic!(
                    "{} logged no ops address within {timeout:?}:\n{}",
                    self.name,
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The address in the `ops endpoints on http://HOST:PORT/` line a service logs at start.
pub fn logged_ops_address(log: &str) -> Option<std::net::SocketAddr> {
    const MARK: &str = "ops endpoints on http://";
    log.lines().find_map(|line| {
        let rest = &line[line.find(MARK)? + MARK.len()..];
        rest[..rest.find('/')?].parse().ok()
    })
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            unsafe {
                libc::kill(self.child.id() as i32, libc::SIGTERM);
            }
            std::thread::sleep(Duration::from_millis(200));
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The broker users and database roles of one test's namespace, made by the same code as
/// `taskbot setup-users` ([`taskbot::accounts`]) and removed when this is dropped (after the
/// test's database: a role owning objects in it cannot be dropped before).
pub struct TestAccounts {
    admin: Config,
}

impl TestAccounts {
    /// Make (or update, when `admin` changed) the accounts of `admin`'s namespace, with their
    /// password files in `secrets_dir`; returns them as the configuration names them. The guard
    /// that removes them is [`TestAccounts::guard`].
    pub fn set_up(admin: &Config, secrets_dir: &Path) -> taskbot::accounts::Accounts {
        let (config, dir) = (admin.clone(), secrets_dir.to_path_buf());
        on_own_runtime(move || async move { taskbot::accounts::set_up(&config, &dir, true).await })
            .unwrap_or_else(|e| panic!("cannot make the test's accounts: {e}"))
    }

    /// What removes the accounts of `admin`'s namespace when dropped.
    pub fn guard(admin: &Config) -> TestAccounts {
        let mut admin = admin.clone();
        // Dropped once the test's database is gone: reach the server through the admin database.
        admin.postgres.url = taskbot::testing::postgres_url();
        TestAccounts { admin }
    }
}

impl Drop for TestAccounts {
    fn drop(&mut self) {
        let admin = self.admin.clone();
        let removed =
            on_own_runtime(move || async move { taskbot::accounts::tear_down(&admin, true).await });
        if let Err(e) = removed {
            eprintln!("could not remove the test's accounts: {e}");
        }
    }
}

/// Run `make()`'s future to its end on a runtime of its own, in a thread of its own: callable
/// from sync code, from inside a test's runtime, and from `Drop` while panicking.
fn on_own_runtime<F, Fut, T>(make: F) -> T
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T>,
    T: Send + 'static,
{
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
            .block_on(make())
    })
    .join()
    .expect("the accounts thread")
}

/// A whole local deployment for one test: config file, task repositories, database, namespace,
/// and one broker user per service (the runners: one per arch, so the pipeline tests exercise the
/// reporter's check of a runner's arch) and database roles for the reporter and the api, as
/// `taskbot setup-users` makes them: the services log in as those, never as `guest`, which only
/// the test itself (`broker`) and the setup use.
pub struct Deployment {
    pub config: Config,
    pub dir: tempfile::TempDir,
    pub config_file: PathBuf,
    pub database: Option<TestDb>,
    pub broker: TestBroker,
    pub services: Vec<Service>,
    /// The administrator's configuration (`guest`, the database's superuser): `config` without
    /// the per-service accounts.
    pub admin: Config,
    /// Declared after `database`, so dropped after it.
    accounts: Option<TestAccounts>,
}

impl Deployment {
    /// Prepare (but do not start) a deployment. `rules` is the rules file's text; task
    /// repositories are made from every folder of `tasks`, under `<tmp>/tasks/<name>`, and the
    /// rules' relative repositories resolve there.
    pub async fn new(rules: &str, tasks: &[(&str, &Path)], zmq_port: u16) -> Deployment {
        let dir = tempfile::tempdir().unwrap();
        // The runner's sandbox user must reach the work and artifacts directories below.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let tasks_dir = dir.path().join("tasks");
        for (name, content) in tasks {
            make_task_repo(content, &tasks_dir.join(name));
        }
        let rules_file = dir.path().join("rules.yaml");
        std::fs::write(&rules_file, rules).unwrap();
        let database = TestDb::create().await;

        let mut config = test_config();
        config.arches = vec!["x86_64".into(), "noarch".into()];
        config.bridge.endpoints = vec![format!("tcp://127.0.0.1:{zmq_port}")];
        config.rules.file = rules_file;
        config.rules.task_base_url = Some(format!("file://{}", tasks_dir.display()));
        config.runner.work_dir = dir.path().join("work");
        config.runner.artifacts_dir = dir.path().join("artifacts");
        config.runner.allowed_repos = vec![format!("file://{}/", tasks_dir.display())];
        config.runner.task_timeout_secs = 120;
        config.postgres.url = database.url.clone();
        config.log.level = "info".into();

        let config_file = dir.path().join("taskbot.toml");
        let broker = TestBroker::new(&config).await;
        std::fs::create_dir_all(dir.path().join("logs")).unwrap();
        let mut deployment = Deployment {
            admin: config.clone(),
            config,
            dir,
            config_file,
            database: Some(database),
            broker,
            services: Vec::new(),
            accounts: None,
        };
        deployment.configure(|_| {});
        deployment
    }

    /// Where the accounts' password files are.
    pub fn secrets_dir(&self) -> PathBuf {
        self.dir.path().join("secrets")
    }

    /// Use these arches (the config file is rewritten; call before starting services).
    pub fn set_arches(&mut self, arches: &[&str]) {
        self.configure(|config| config.arches = arches.iter().map(|a| a.to_string()).collect());
    }

    /// Change the configuration (the config file is rewritten, and the accounts' permissions
    /// follow the new topology; call before starting services).
    pub fn configure(&mut self, change: impl FnOnce(&mut Config)) {
        change(&mut self.admin);
        if self.accounts.is_none() {
            self.accounts = Some(TestAccounts::guard(&self.admin));
        }
        let made = TestAccounts::set_up(&self.admin, &self.secrets_dir());
        self.config = self.admin.clone();
        made.apply(&mut self.config);
        std::fs::write(&self.config_file, to_toml(&self.config)).unwrap();
    }

    /// Start a service binary with this deployment's config; returns its index.
    pub fn start(&mut self, name: &str, binary_name: &str, args: &[&str]) -> usize {
        self.start_with_env(name, binary_name, args, &[])
    }

    /// [`Deployment::start`] with extra environment variables (e.g. one `TASKBOT_...` override
    /// for this service only).
    pub fn start_with_env(
        &mut self,
        name: &str,
        binary_name: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> usize {
        let service = self.spawn(
            name,
            binary_name,
            args.iter().map(|a| a.to_string()).collect(),
            env.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        self.services.push(service);
        self.services.len() - 1
    }

    fn spawn(
        &self,
        name: &str,
        binary_name: &str,
        args: Vec<String>,
        env: Vec<(String, String)>,
    ) -> Service {
        let logs = self.dir.path().join("logs");
        let log = (0..)
            .map(|n| logs.join(format!("{name}-{n}.log")))
            .find(|path| !path.exists())
            .unwrap();
        let out = std::fs::File::create(&log).unwrap();
        let err = out.try_clone().unwrap();
        let child = Command::new(binary(binary_name))
            .args(&args)
            .env("TASKBOT_CONFIG", &self.config_file)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("start {binary_name}: {e}"));
        Service {
            name: name.to_string(),
            child,
            log,
            binary_name: binary_name.to_string(),
            args,
            env,
        }
    }

    /// Kill service `index` with SIGKILL (a crash) and start it again as it was started, with a
    /// new log file beside the old one.
    pub fn restart(&mut self, index: usize) {
        self.services[index].kill_hard();
        let old = &self.services[index];
        let (name, binary_name) = (old.name.clone(), old.binary_name.clone());
        let fresh = self.spawn(&name, &binary_name, old.args.clone(), old.env.clone());
        self.services[index] = fresh;
    }

    /// [`Deployment::restart`] with these environment variables added (a `TASKBOT_...` override
    /// for this service only).
    pub fn restart_with_env(&mut self, index: usize, env: &[(&str, &str)]) {
        self.services[index]
            .env
            .extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        self.restart(index);
    }

    /// The index of the service started under `name`.
    pub fn service_index(&self, name: &str) -> usize {
        self.services
            .iter()
            .position(|s| s.name == name)
            .unwrap_or_else(|| panic!("no service {name}"))
    }

    /// Start the five services (one runner per arch).
    pub fn start_all(&mut self) {
        self.start("reporter", "reporter", &[]);
        self.start("provisioner", "provisioner", &[]);
        for arch in self.config.arches.clone() {
            self.start(&format!("runner-{arch}"), "runner", &["--arch", &arch]);
        }
        self.start("rules", "rules", &[]);
        self.start("fedmsg-bridge", "fedmsg-bridge", &[]);
    }

    /// Publish a test event on `topic` with `msg` (as a bus bridge would), under a fresh id.
    pub async fn publish_event(&self, topic: &str, msg: serde_json::Value) {
        let event = taskbot::messages::Event {
            id: format!("test-{}", uuid::Uuid::new_v4()),
            topic: topic.into(),
            source: "test".into(),
            sent_at: None,
            received_at: chrono::Utc::now(),
            username: None,
            msg,
            headers: Default::default(),
        };
        let t = self.broker.topology.clone();
        let body = taskbot::messages::Message::to_json(&event);
        self.broker.publish(&t.events_exchange(), topic, body).await;
    }

    /// The first job artifacts directory holding `file` (a task writes it when it starts), once
    /// there is one; panics with the services' logs after `timeout`.
    pub async fn wait_for_artifact(&self, file: &str, timeout: Duration) -> PathBuf {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let found = std::fs::read_dir(&self.config.runner.artifacts_dir)
                .into_iter()
                .flatten()
                .filter_map(|e| e.ok())
                .map(|e| e.path().join(file))
                .find(|p| p.exists());
            if let Some(path) = found {
                return path;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no job wrote {file}\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Wait until every work queue has a consumer: the services are connected and consuming.
    pub async fn wait_until_consuming(&self, timeout: Duration) {
        // The pipeline's queues, and the PostgreSQL sink's, which the reporter consumes.
        let topology = &self.broker.topology;
        let queues: Vec<String> = topology
            .work_queues()
            .into_iter()
            .chain(topology.sink_queues(&[taskbot::topology::Sink::Postgres]))
            .map(|q| q.name)
            .collect();
        self.wait_for_consumers(&queues, timeout).await;
    }

    /// Wait until each of `queues` has a consumer (for tests that start only some services).
    pub async fn wait_for_consumers(&self, queues: &[String], timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let mut missing = Vec::new();
            for q in queues {
                if self.broker.consumers(q).await == 0 {
                    missing.push(q.clone());
                }
            }
            if missing.is_empty() {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "services not consuming {missing:?} after {timeout:?}\n{}",
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Every service's log, for failure messages.
    pub fn logs(&self) -> String {
        self.services
            .iter()
            .map(|s| format!("--- {} ---\n{}", s.name, s.log_text()))
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub async fn db(&self) -> tokio_postgres::Client {
        self.database.as_ref().unwrap().client().await
    }

    /// Poll `sql` (returning one bigint) until it is at least `want`.
    pub async fn wait_for_count(&self, sql: &str, want: i64, timeout: Duration) -> i64 {
        let client = self.db().await;
        let deadline = Instant::now() + timeout;
        loop {
            let n: i64 = match client.query_one(sql, &[]).await {
                Ok(row) => row.get(0),
                Err(_) => 0, // the table may not exist until the reporter migrated
            };
            if n >= want || Instant::now() > deadline {
                return n;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Stop every service and remove the namespace and database.
    pub async fn shutdown(mut self) {
        for s in &mut self.services {
            s.terminate(Duration::from_secs(10));
        }
        // Dropping the database handle drops the database; then its roles can go.
        self.database.take();
        self.accounts.take();
        self.broker.cleanup().await;
    }
}

/// The config as the TOML file the binaries read.
pub fn to_toml(config: &Config) -> String {
    let value = serde_json::to_value(config).unwrap();
    let mut out = String::new();
    let obj = value.as_object().unwrap();
    for (k, v) in obj {
        if !v.is_object() {
            out.push_str(&format!("{k} = {}\n", toml_value(v)));
        }
    }
    for (section, v) in obj {
        if let Some(fields) = v.as_object() {
            out.push_str(&format!("[{section}]\n"));
            for (k, v) in fields {
                if !v.is_null() && !v.is_object() {
                    out.push_str(&format!("{k} = {}\n", toml_value(v)));
                }
            }
            // Nested tables (`[provisioner.vm]`) after the section's own keys.
            for (k, v) in fields {
                if let Some(nested) = v.as_object() {
                    out.push_str(&format!("[{section}.{k}]\n"));
                    for (k, v) in nested {
                        if !v.is_null() {
                            out.push_str(&format!("{k} = {}\n", toml_value(v)));
                        }
                    }
                }
            }
        }
    }
    out
}

fn toml_value(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Array(items) => format!(
            "[{}]",
            items.iter().map(toml_value).collect::<Vec<_>>().join(", ")
        ),
        // Inline tables (the image catalogue's entries, their `disk = { url, sha256 }`).
        serde_json::Value::Object(fields) => format!(
            "{{ {} }}",
            fields
                .iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| format!("{k} = {}", toml_value(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        // JSON strings, numbers and booleans are valid TOML as written.
        other => other.to_string(),
    }
}
