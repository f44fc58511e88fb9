//! Helpers for integration tests against the real broker (feature `testing`).
//!
//! Each test gets its own namespace, so tests run in parallel against one RabbitMQ without seeing
//! each other's messages, and [`TestBroker::cleanup`] deletes what the test declared.

use std::time::{Duration, Instant};

use lapin::options::{BasicAckOptions, BasicGetOptions, ExchangeDeleteOptions, QueueDeleteOptions};

use crate::amqp::{self, DeliveryContext, Incoming, Outgoing, Publisher};
use crate::config::Config;
use crate::topology::Topology;

/// Broker URL for tests: `TASKBOT_TEST_AMQP_URL` or the local default.
pub fn amqp_url() -> String {
    std::env::var("TASKBOT_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// PostgreSQL URL for tests: `TASKBOT_TEST_POSTGRES_URL` or the local default.
pub fn postgres_url() -> String {
    std::env::var("TASKBOT_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A unique namespace like `test-3f2a9c1b`.
pub fn unique_namespace() -> String {
    format!("test-{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

/// A config pointing at the test broker and database, in a fresh namespace.
pub fn test_config() -> Config {
    let mut config = Config::default();
    config.amqp.url = amqp_url();
    config.amqp.namespace = unique_namespace();
    config.amqp.reconnect_max_secs = 2;
    config.amqp.management_url = management_url();
    config.postgres.url = postgres_url();
    // Any free port for each service's /healthz, /readyz and /metrics, so services (and tests run
    // in parallel) never collide; the harness reads the port from the service's log.
    config.set_all_ops_listen("127.0.0.1:0");
    config
}

pub use crate::ops::http_get;

/// A connection with the namespace's topology declared, for publishing inputs and reading outputs.
pub struct TestBroker {
    pub config: Config,
    pub topology: Topology,
    pub publisher: Publisher,
    conn: lapin::Connection,
}

impl TestBroker {
    pub async fn new(config: &Config) -> TestBroker {
        let conn = amqp::connect(&config.amqp.url, "taskbot-test")
            .await
            .expect("RabbitMQ must be running for integration tests (make test starts it)");
        let topology = Topology::for_config(config);
        let publisher = Publisher::new(&conn, "taskbot-test")
            .await
            .unwrap()
            .with_user_id(amqp::url_user(&config.amqp.url));
        topology.declare(publisher.channel()).await.unwrap();
        TestBroker {
            config: config.clone(),
            topology,
            publisher,
            conn,
        }
    }

    pub async fn publish(&self, exchange: &str, routing_key: &str, body: Vec<u8>) {
        self.publisher
            .publish(&Outgoing::new(exchange, routing_key, body))
            .await
            .expect("test publish confirmed");
    }

    /// Take the next message from `queue`, waiting up to `timeout`.
    pub async fn get(&self, queue: &str, timeout: Duration) -> Option<Incoming> {
        let deadline = Instant::now() + timeout;
        let channel = self.publisher.channel();
        loop {
            if let Some(msg) = channel
                .basic_get(queue, BasicGetOptions::default())
                .await
                .expect("basic_get")
            {
                let _ = msg.delivery.acker.ack(BasicAckOptions::default()).await;
                return Some(amqp::incoming_from(&msg.delivery));
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Messages ready in `queue` (not counting unacked ones).
    pub async fn depth(&self, queue: &str) -> u32 {
        self.inspect(queue)
            .await
            .map(|q| q.message_count())
            .unwrap_or(0)
    }

    /// Consumers of `queue`.
    pub async fn consumers(&self, queue: &str) -> u32 {
        self.inspect(queue)
            .await
            .map(|q| q.consumer_count())
            .unwrap_or(0)
    }

    /// A passive declare on its own channel: a missing queue closes the channel it is asked on.
    async fn inspect(&self, queue: &str) -> Option<lapin::Queue> {
        let channel = self.conn.create_channel().await.ok()?;
        let q = channel
            .queue_declare(
                queue,
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                Default::default(),
            )
            .await
            .ok();
        let _ = channel.close(200, "done").await;
        q
    }

    /// Declare an extra queue bound to `exchange` with `key`, for a test to observe what is
    /// published there. The broker deletes it ten minutes after its last use.
    pub async fn tap(&self, exchange: &str, key: &str) -> String {
        let name = format!(
            "{}.tap.{}",
            self.topology.namespace,
            uuid::Uuid::new_v4().simple()
        );
        let ch = self.publisher.channel();
        let mut args = lapin::types::FieldTable::default();
        args.insert(
            "x-expires".into(),
            lapin::types::AMQPValue::LongUInt(600_000),
        );
        ch.queue_declare(
            &name,
            lapin::options::QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await
        .unwrap();
        ch.queue_bind(&name, exchange, key, Default::default(), Default::default())
            .await
            .unwrap();
        name
    }

    /// Delete every queue and exchange of this namespace.
    pub async fn cleanup(self) {
        let ch = match self.conn.create_channel().await {
            Ok(ch) => ch,
            Err(_) => return,
        };
        let mut queues: Vec<String> = self
            .topology
            .work_queues()
            .into_iter()
            .map(|q| q.name)
            .collect();
        for source in self.topology.dead_letter_sources() {
            queues.push(self.topology.dead_letter_queue(&source));
        }
        // Sink queues exist only where a test ran the reporter (or declared them); deleting a
        // missing queue is harmless.
        for sink in self.topology.sink_queues(&crate::topology::Sink::ALL) {
            queues.push(self.topology.dead_letter_queue(&sink.name));
            queues.push(sink.name);
        }
        for q in queues {
            let _ = ch.queue_delete(&q, QueueDeleteOptions::default()).await;
        }
        for e in [
            self.topology.events_exchange(),
            self.topology.jobs_exchange(),
            self.topology.run_exchange(),
            self.topology.results_exchange(),
            self.topology.dead_letter_exchange(),
        ] {
            let _ = ch
                .exchange_delete(&e, ExchangeDeleteOptions::default())
                .await;
        }
        let _ = self.conn.close(200, "test done").await;
    }
}

/// A job request for tests: `task` on `item` for `arch`, triggered by a fresh event of a Koji
/// build-state topic, with its id derived as the rules service would. Adjust fields with struct
/// update syntax: `JobRequest { priority: 3, ..job_request(...) }`.
pub fn job_request(task: crate::messages::TaskRef, item: &str, arch: &str) -> crate::JobRequest {
    let event_id = format!("test-event-{}", uuid::Uuid::new_v4());
    let args = std::collections::BTreeMap::new();
    crate::JobRequest {
        job_id: crate::JobRequest::derive_id(&event_id, "test-rule", &task, item, arch, &args),
        event_id,
        event_topic: "org.fedoraproject.prod.buildsys.build.state.change".into(),
        rule: "test-rule".into(),
        task,
        item: item.into(),
        item_type: "koji_build".into(),
        arch: arch.into(),
        args,
        priority: 0,
        environment: Default::default(),
        destructive: false,
        vm: None,
        testcases: Vec::new(),
        scenario: None,
        created_at: chrono::Utc::now(),
    }
}

/// A PostgreSQL database of its own for one test, created on the test server
/// ([`postgres_url`]) and dropped when this goes out of scope, even when the test panics.
pub struct TestDb {
    pub name: String,
    pub url: String,
    admin_url: String,
}

/// A client for `url`, its connection driven in the background.
pub async fn connect_postgres(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| {
            panic!("PostgreSQL must be running for integration tests ({url}; make test starts it): {e}")
        });
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// `url` with its database name replaced (query parameters kept).
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let authority_start = base.find("://").map(|i| i + 3).unwrap_or(0);
    let base = match base[authority_start..].find('/') {
        Some(slash) => &base[..authority_start + slash],
        None => base,
    };
    format!("{base}/{name}{query}")
}

impl TestDb {
    pub async fn create() -> TestDb {
        let admin_url = postgres_url();
        let name = format!("taskbot_test_{}", uuid::Uuid::new_v4().simple());
        connect_postgres(&admin_url)
            .await
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create test database");
        TestDb {
            url: with_database(&admin_url, &name),
            name,
            admin_url,
        }
    }

    /// A fresh connection to this test's database.
    pub async fn client(&self) -> tokio_postgres::Client {
        connect_postgres(&self.url).await
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // Drop runs outside async context (and possibly while panicking), so use a thread with
        // its own runtime.
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                if let Ok((client, connection)) =
                    tokio_postgres::connect(&admin_url, tokio_postgres::NoTls).await
                {
                    tokio::spawn(async move {
                        let _ = connection.await;
                    });
                    let _ = client
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await;
                }
            });
        })
        .join();
    }
}

/// `promtool check metrics` (Debian package `prometheus`) on a Prometheus exposition: its parser
/// and its lint (naming, help texts). Panics with promtool's complaint.
pub fn promtool_check(exposition: &str) {
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is installed (scripts/ensure-services.sh installs package prometheus)");
    child
        .stdin
        .take()
        .expect("promtool's stdin")
        .write_all(exposition.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool ends");
    assert!(
        out.status.success(),
        "promtool check metrics refused the exposition:\n{}{}\n--- exposition ---\n{exposition}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The tiny VM guest of `scripts/build-tiny-vm-image.sh` (kernel, initramfs, SSH key), built once
/// per machine under the system temp directory (the script does nothing when it is up to date).
pub fn tiny_vm_image() -> std::path::PathBuf {
    build_tiny_vm_image("taskbot-tiny-vm", "amd64")
}

/// The same guest for aarch64, from Debian's arm64 packages (`build-tiny-vm-image.sh DEST
/// arm64`), for QEMU's emulated `virt` machine; cached beside the x86_64 one.
pub fn tiny_vm_image_aarch64() -> std::path::PathBuf {
    build_tiny_vm_image("taskbot-tiny-vm-aarch64", "arm64")
}

/// Build (or find up to date) the tiny guest of Debian architecture `deb_arch` in `name` and the
/// script's checksum under the system temp directory: checkouts with different scripts (git
/// worktrees) keep their own guest instead of rebuilding each other's.
fn build_tiny_vm_image(name: &str, deb_arch: &str) -> std::path::PathBuf {
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/build-tiny-vm-image.sh");
    let dir = std::env::temp_dir().join(format!("{name}-{}", &sha256_file(&script)[..12]));
    let status = std::process::Command::new("bash")
        .arg(script)
        .arg(&dir)
        .arg(deb_arch)
        .status()
        .expect("bash runs");
    assert!(
        status.success(),
        "building the tiny {deb_arch} VM image failed"
    );
    dir
}

/// A catalogue entry for the tiny guest of [`tiny_vm_image`] (distro `tiny`, release `1`,
/// flavour `base`, x86_64) with `disk` as its disk: direct kernel boot, and its SSH key from the
/// cloud-init seed (the guest accepts no other).
pub fn tiny_vm_image_entry(
    name: &str,
    image: &std::path::Path,
    disk: &std::path::Path,
) -> crate::config::VmImageConfig {
    crate::config::VmImageConfig {
        name: name.into(),
        distro: "tiny".into(),
        release: "1".into(),
        arch: "x86_64".into(),
        flavour: "base".into(),
        built: String::new(),
        disk: crate::config::ImageFile::Path(disk.to_path_buf()),
        kernel: Some(crate::config::ImageFile::Path(image.join("vmlinuz"))),
        initrd: Some(crate::config::ImageFile::Path(image.join("initrd.img"))),
        append: "console=ttyS0 quiet panic=-1".into(),
        cloud_init: true,
        qemu: None,
        qemu_args: Vec::new(),
    }
}

/// [`tiny_vm_image_entry`] for the aarch64 guest of [`tiny_vm_image_aarch64`]: emulated by
/// `qemu-system-aarch64` as a `virt` machine with a Cortex-A57 (under TCG about three times
/// faster to boot than `-cpu max`), its serial console the PL011 (`ttyAMA0`).
pub fn tiny_vm_image_entry_aarch64(
    name: &str,
    image: &std::path::Path,
    disk: &std::path::Path,
) -> crate::config::VmImageConfig {
    crate::config::VmImageConfig {
        arch: "aarch64".into(),
        append: "console=ttyAMA0 quiet panic=-1".into(),
        qemu: Some("qemu-system-aarch64".into()),
        qemu_args: ["-M", "virt", "-cpu", "cortex-a57"]
            .map(Into::into)
            .to_vec(),
        ..tiny_vm_image_entry(name, image, disk)
    }
}

/// A VM backend for tests: these images, the tiny guest's key, 384 MiB, one VM at a time.
pub fn tiny_vm_backend(
    image: &std::path::Path,
    state_dir: &std::path::Path,
    images: Vec<crate::config::VmImageConfig>,
) -> crate::config::VmBackendConfig {
    crate::config::VmBackendConfig {
        images,
        ssh_key: image.join("id_ed25519"),
        state_dir: state_dir.to_path_buf(),
        memory_mb: 384,
        max_vms: 1,
        boot_timeout_secs: 120,
        lease_secs: 600,
        ..crate::config::VmBackendConfig::default()
    }
}

/// An event as the bridge would make it from a bus message (no sender time, no user).
pub fn event(id: &str, topic: &str, msg: serde_json::Value) -> crate::Event {
    crate::Event {
        id: id.into(),
        topic: topic.into(),
        source: "test".into(),
        sent_at: None,
        received_at: chrono::Utc::now(),
        username: None,
        msg,
        headers: Default::default(),
    }
}

/// A blank qcow2 disk of `size` (e.g. `64M`) at `path`, for VMs' base disks.
pub fn blank_disk(path: &std::path::Path, size: &str) {
    let status = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(path)
        .arg(size)
        .status()
        .expect("qemu-img runs (package qemu-utils)");
    assert!(status.success(), "qemu-img create failed");
}

/// The SHA-256 of a file, as `sha256sum` prints it.
pub fn sha256_file(path: &std::path::Path) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum runs");
    String::from_utf8_lossy(&out.stdout)
        .split(' ')
        .next()
        .unwrap_or_default()
        .to_string()
}

/// A [`DeliveryContext`] in memory, for testing handlers without a broker: it keeps what the
/// handler published (in order), says the delivery arrived when the test wants, and can refuse
/// publishes to act out a broker that went away mid-handling.
pub struct Recorder {
    published: std::sync::Mutex<Vec<Outgoing>>,
    received_at: Instant,
    /// Publishes still accepted before every further one fails; `None` for no limit.
    accept: std::sync::Mutex<Option<usize>>,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder::new()
    }
}

impl Recorder {
    /// A delivery received just now, on a broker that confirms every publish.
    pub fn new() -> Recorder {
        Recorder {
            published: Default::default(),
            received_at: Instant::now(),
            accept: Default::default(),
        }
    }

    /// A delivery that arrived `ago` ago (for deadlines counted from delivery).
    pub fn received(ago: Duration) -> Recorder {
        let now = Instant::now();
        Recorder {
            received_at: now.checked_sub(ago).unwrap_or(now),
            ..Recorder::new()
        }
    }

    /// Confirms the first `n` publishes, then refuses every further one (the broker is gone).
    pub fn failing_after(self, n: usize) -> Recorder {
        *self.accept.lock().unwrap() = Some(n);
        self
    }

    /// Everything confirmed so far, in order.
    pub fn published(&self) -> Vec<Outgoing> {
        self.published.lock().unwrap().clone()
    }

    /// The bodies confirmed so far on `exchange`, parsed as JSON.
    pub fn bodies_on(&self, exchange: &str) -> Vec<serde_json::Value> {
        self.published()
            .iter()
            .filter(|m| m.exchange == exchange)
            .map(|m| serde_json::from_slice(&m.body).expect("published bodies are JSON"))
            .collect()
    }
}

#[async_trait::async_trait]
impl DeliveryContext for Recorder {
    async fn publish(&self, msg: &Outgoing) -> Result<(), amqp::PublishError> {
        if let Some(left) = self.accept.lock().unwrap().as_mut() {
            if *left == 0 {
                return Err(amqp::PublishError::Nacked);
            }
            *left -= 1;
        }
        self.published.lock().unwrap().push(msg.clone());
        Ok(())
    }

    fn received_at(&self) -> Instant {
        self.received_at
    }
}

/// Host processes running (zombies not counted) whose command line (arguments joined by NULs)
/// contains `needle`: how a test finds a task's processes, whose pids inside the sandbox mean
/// nothing on the host.
pub fn processes_running(needle: &str) -> usize {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .filter_map(|e| e.ok())
        .filter(|e| {
            let alive = std::fs::read_to_string(e.path().join("stat")).is_ok_and(|stat| {
                stat.rsplit_once(')')
                    .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
            });
            alive
                && std::fs::read(e.path().join("cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains(needle))
        })
        .count()
}

/// The exchange and routing key of each message, in order: what a test asserts about where a
/// handler's messages go.
pub fn routes(messages: &[Outgoing]) -> Vec<(&str, &str)> {
    messages
        .iter()
        .map(|m| (m.exchange.as_str(), m.routing_key.as_str()))
        .collect()
}

/// A result of `job` for `testcase`, its id derived as the runner derives it, from runner
/// `runner@test/<arch>`, its log under `https://taskbot.example/artifacts/`, with no note and no
/// data, finished now. Adjust fields with struct update syntax.
pub fn task_result(
    job: &crate::JobRequest,
    testcase: &str,
    outcome: crate::messages::Outcome,
) -> crate::messages::TaskResult {
    crate::messages::TaskResult {
        result_id: crate::messages::TaskResult::derive_id(
            job.job_id,
            testcase,
            &job.item,
            &job.item_type,
            &job.arch,
        ),
        job_id: job.job_id,
        testcase: testcase.into(),
        outcome,
        item: job.item.clone(),
        item_type: job.item_type.clone(),
        arch: job.arch.clone(),
        note: None,
        log_url: Some(format!("https://taskbot.example/artifacts/{}/", job.job_id)),
        data: Default::default(),
        task: job.task.clone(),
        event_id: job.event_id.clone(),
        rule: job.rule.clone(),
        runner: format!("runner@test/{}", job.arch),
        finished_at: chrono::Utc::now(),
    }
}

impl TestBroker {
    /// Whether `queue` exists (asked on a channel of its own: a passive declare of a missing
    /// queue closes the channel it is asked on).
    pub async fn queue_exists(&self, queue: &str) -> bool {
        self.inspect(queue).await.is_some()
    }
}

/// A RabbitMQ user of its own for one test (`taskbot-test-<random>`, made through the management
/// API with `curl`), allowed to write and read only the queues and exchanges of `namespace`, so
/// a test can publish as a broker user that is none of the deployment's services. Deleted when
/// this goes out of scope, even when the test panics.
pub struct TestBrokerUser {
    pub name: String,
    /// The test broker's URL, logged in as this user.
    pub amqp_url: String,
}

/// The management API's base URL for tests: `TASKBOT_TEST_MANAGEMENT_URL` or the local default.
fn management_url() -> String {
    std::env::var("TASKBOT_TEST_MANAGEMENT_URL")
        .unwrap_or_else(|_| "http://guest:guest@127.0.0.1:15672".into())
}

fn management_call(method: &str, path: &str, body: Option<&str>) -> std::process::Output {
    let mut cmd = std::process::Command::new("curl");
    cmd.args([
        "-s",
        "-f",
        "-X",
        method,
        "-H",
        "content-type: application/json",
    ]);
    if let Some(body) = body {
        cmd.args(["-d", body]);
    }
    cmd.arg(format!("{}/api/{path}", management_url()));
    cmd.output().expect("curl runs")
}

impl TestBrokerUser {
    pub fn create(namespace: &str) -> TestBrokerUser {
        let name = format!(
            "taskbot-test-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        let password = uuid::Uuid::new_v4().simple().to_string();
        let made = management_call(
            "PUT",
            &format!("users/{name}"),
            Some(&format!(r#"{{"password":"{password}","tags":""}}"#)),
        );
        assert!(
            made.status.success(),
            "cannot create broker user {name}: {made:?}"
        );
        let own = format!("^{}\\\\..*", namespace.replace('-', "\\\\-"));
        let allowed = management_call(
            "PUT",
            &format!("permissions/%2F/{name}"),
            Some(&format!(
                r#"{{"configure":"{own}","write":"{own}","read":"{own}"}}"#
            )),
        );
        let user = TestBrokerUser {
            amqp_url: format!("amqp://{name}:{password}@127.0.0.1:5672/%2f"),
            name,
        };
        assert!(
            allowed.status.success(),
            "cannot set permissions: {allowed:?}"
        );
        user
    }

    /// A publisher logged in as this user, stamping its own name as `user_id` (as every Taskbot
    /// publisher does), with the connection it needs kept alive beside it.
    pub async fn publisher(&self) -> (lapin::Connection, Publisher) {
        let conn = amqp::connect(&self.amqp_url, "taskbot-test-intruder")
            .await
            .expect("the test user can log in");
        let publisher = Publisher::new(&conn, "taskbot-test-intruder")
            .await
            .expect("a channel")
            .with_user_id(self.name.clone());
        (conn, publisher)
    }
}

impl Drop for TestBrokerUser {
    fn drop(&mut self) {
        let _ = management_call("DELETE", &format!("users/{}", self.name), None);
    }
}
