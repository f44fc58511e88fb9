//! A RabbitMQ node of one test's own, for tests that stop the broker: stopping the machine's
//! shared broker would disturb every test running beside them. The node runs from the installed
//! `rabbitmq-server` with its own name, ports, data and log directories (in a temporary directory
//! removed on drop), the default `guest` user, and no plugins unless a test asks for the
//! management API ([`PrivateBroker::with_management`]: deployments make their broker users
//! through it).

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::free_port;

/// The installed server script (the one in /usr/sbin switches to the rabbitmq user, whose HOME
/// holds the shared node's Erlang cookie).
const SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";

/// A private broker node; killed when dropped.
pub struct PrivateBroker {
    dir: tempfile::TempDir,
    /// Where clients connect (127.0.0.1).
    pub port: u16,
    dist_port: u16,
    /// The management API's port, when its plugin is enabled.
    management_port: Option<u16>,
    node: Option<Child>,
}

impl PrivateBroker {
    /// Start a node and wait until it accepts connections.
    pub fn start() -> PrivateBroker {
        PrivateBroker::launch(false)
    }

    /// Start a node with the management plugin and wait until its API answers too.
    pub fn with_management() -> PrivateBroker {
        PrivateBroker::launch(true)
    }

    fn launch(management: bool) -> PrivateBroker {
        let dir = tempfile::tempdir().unwrap();
        let (port, dist_port) = (free_port(), free_port());
        let management_port = management.then(free_port);
        let mut conf = format!("listeners.tcp.default = 127.0.0.1:{port}\n");
        let mut plugins = "[].\n";
        if let Some(m) = management_port {
            conf.push_str(&format!(
                "management.tcp.port = {m}\nmanagement.tcp.ip = 127.0.0.1\n"
            ));
            plugins = "[rabbitmq_management].\n";
        }
        std::fs::write(dir.path().join("enabled_plugins"), plugins).unwrap();
        std::fs::write(dir.path().join("rabbitmq.conf"), conf).unwrap();
        let mut broker = PrivateBroker {
            dir,
            port,
            dist_port,
            management_port,
            node: None,
        };
        broker.resume();
        broker
    }

    /// `http://guest:guest@127.0.0.1:PORT` of the management API (only
    /// [`PrivateBroker::with_management`] has one).
    pub fn management_url(&self) -> String {
        let port = self.management_port.expect("started with_management");
        format!("http://guest:guest@127.0.0.1:{port}")
    }

    /// `amqp://guest:guest@127.0.0.1:PORT/%2f`.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// Kill the node at once (SIGKILL to its whole process group): its clients see their
    /// connections drop, as in a crash. Its data stays, for [`PrivateBroker::resume`].
    pub fn kill(&mut self) {
        if let Some(mut node) = self.node.take() {
            unsafe {
                libc::killpg(node.id() as i32, libc::SIGKILL);
            }
            let _ = node.wait();
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.accepts() {
            assert!(Instant::now() < deadline, "the killed node still listens");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Start the node again (on the same data) and wait until it accepts connections; returns
    /// the moment it first did, as seen by polling its port every 10 ms.
    pub fn resume(&mut self) -> Instant {
        assert!(self.node.is_none(), "the node is running");
        let log = std::fs::File::create(self.dir.path().join("server.out")).unwrap();
        let d = self.dir.path();
        let node = Command::new(SERVER)
            .current_dir(d)
            .env("HOME", d)
            .env(
                "RABBITMQ_NODENAME",
                format!("taskbot-test-{}@localhost", self.port),
            )
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", d.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", d.join("log"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", d.join("enabled_plugins"))
            .env("RABBITMQ_CONFIG_FILE", d.join("rabbitmq.conf"))
            .env("RABBITMQ_CONF_ENV_FILE", d.join("rabbitmq-env.conf"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("start {SERVER}: {e}"));
        self.node = Some(node);
        let accepting = self.wait_until_accepting(Duration::from_secs(120));
        if self.management_port.is_some() {
            self.wait_for_management(Duration::from_secs(120));
        }
        accepting
    }

    fn wait_for_management(&mut self, timeout: Duration) {
        let overview = format!("{}/api/overview", self.management_url());
        let deadline = Instant::now() + timeout;
        loop {
            let up = Command::new("curl")
                .args(["-sf", "-o", "/dev/null", &overview])
                .status()
                .is_ok_and(|s| s.success());
            if up {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the private broker's management API did not answer within {timeout:?}:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn wait_until_accepting(&mut self, timeout: Duration) -> Instant {
        let deadline = Instant::now() + timeout;
        loop {
            if self.accepts() {
                return Instant::now();
            }
            if let Some(Ok(Some(status))) = self.node.as_mut().map(|n| n.try_wait()) {
                panic!("the private broker exited ({status}):\n{}", self.output());
            }
            assert!(
                Instant::now() < deadline,
                "the private broker did not listen within {timeout:?}:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn accepts(&self) -> bool {
        let address = std::net::SocketAddr::from(([127, 0, 0, 1], self.port));
        std::net::TcpStream::connect_timeout(&address, Duration::from_millis(100)).is_ok()
    }

    /// The server's console output, for failure messages.
    pub fn output(&self) -> String {
        let path: &Path = self.dir.path();
        std::fs::read_to_string(path.join("server.out")).unwrap_or_default()
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        if let Some(node) = self.node.take() {
            unsafe {
                libc::killpg(node.id() as i32, libc::SIGKILL);
            }
            let mut node = node;
            let _ = node.wait();
        }
    }
}
