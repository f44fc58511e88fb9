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
    /// The TLS listener's port, when started [`PrivateBroker::with_tls`].
    pub tls_port: Option<u16>,
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
            tls_port: None,
            dist_port,
            management_port,
            node: None,
        };
        broker.resume();
        broker
    }

    /// Start a node as Fedora's bus is run: a TLS listener (TLS 1.2+, a client certificate
    /// required, issued by the node's own CA, made here with `openssl`) with SASL EXTERNAL
    /// (`rabbitmq_auth_mechanism_ssl`, the user named by the certificate's common name), beside
    /// the plain listener (`guest`, for the test's own look-ups). `vhost` is made, and every user
    /// of `users` (no password: they log in with their certificate, [`TlsFiles::client`]) may do
    /// anything on it and on `/`.
    pub fn with_tls(vhost: &str, users: &[&str]) -> PrivateBroker {
        let dir = tempfile::tempdir().unwrap();
        let (port, dist_port, tls_port) = (free_port(), free_port(), free_port());
        let certs = dir.path().join("certs");
        make_certificates(&certs, users);
        let c = |f: &str| certs.join(f).display().to_string();
        let definitions = dir.path().join("definitions.json");
        std::fs::write(&definitions, definitions_json(vhost, users)).unwrap();
        let conf = format!(
            "listeners.tcp.default = 127.0.0.1:{port}\n\
             listeners.ssl.default = 127.0.0.1:{tls_port}\n\
             ssl_options.cacertfile = {}\n\
             ssl_options.certfile = {}\n\
             ssl_options.keyfile = {}\n\
             ssl_options.verify = verify_peer\n\
             ssl_options.fail_if_no_peer_cert = true\n\
             ssl_options.versions.1 = tlsv1.3\n\
             ssl_options.versions.2 = tlsv1.2\n\
             auth_mechanisms.1 = EXTERNAL\n\
             auth_mechanisms.2 = PLAIN\n\
             auth_mechanisms.3 = AMQPLAIN\n\
             ssl_cert_login_from = common_name\n\
             load_definitions = {}\n",
            c("ca.pem"),
            c("server.pem"),
            c("server.key"),
            definitions.display()
        );
        std::fs::write(
            dir.path().join("enabled_plugins"),
            "[rabbitmq_auth_mechanism_ssl].\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("rabbitmq.conf"), conf).unwrap();
        let mut broker = PrivateBroker {
            dir,
            port,
            tls_port: Some(tls_port),
            dist_port,
            management_port: None,
            node: None,
        };
        broker.resume();
        broker
    }

    /// The CA, and each user's certificate and key, of a [`PrivateBroker::with_tls`] node.
    pub fn tls_files(&self) -> TlsFiles {
        TlsFiles {
            dir: self.dir.path().join("certs"),
        }
    }

    /// `amqps://localhost:PORT/VHOST` (the name the server's certificate is for), `vhost`
    /// percent-encoded.
    pub fn tls_url(&self, vhost: &str) -> String {
        let port = self.tls_port.expect("started with_tls");
        format!(
            "amqps://localhost:{port}/{}",
            vhost.replace('%', "%25").replace('/', "%2F")
        )
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
        let open = |port: u16| {
            let address = std::net::SocketAddr::from(([127, 0, 0, 1], port));
            std::net::TcpStream::connect_timeout(&address, Duration::from_millis(100)).is_ok()
        };
        open(self.port) && self.tls_port.is_none_or(open)
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

/// The certificate files of a TLS node (PEM).
pub struct TlsFiles {
    dir: std::path::PathBuf,
}

impl TlsFiles {
    /// The CA that issued the server's and the clients' certificates.
    pub fn ca(&self) -> std::path::PathBuf {
        self.dir.join("ca.pem")
    }

    /// `user`'s certificate and key (its common name is `user`).
    pub fn client(&self, user: &str) -> (std::path::PathBuf, std::path::PathBuf) {
        (
            self.dir.join(format!("{user}.pem")),
            self.dir.join(format!("{user}.key")),
        )
    }
}

/// A CA, a server certificate for `localhost` (and 127.0.0.1), and one client certificate per
/// user (CN = the user), all with `openssl`.
fn make_certificates(dir: &Path, users: &[&str]) {
    std::fs::create_dir_all(dir).unwrap();
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl runs");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=taskbot test CA",
    ]);
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName = DNS:localhost, IP:127.0.0.1\nextendedKeyUsage = serverAuth\n",
    )
    .unwrap();
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage = clientAuth\n").unwrap();
    let issue = |name: &str, cn: &str, ext: &str| {
        let (key, csr, pem) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
        );
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            &format!("/CN={cn}"),
        ]);
        openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "2",
            "-extfile",
            ext,
        ]);
    };
    issue("server", "localhost", "server.ext");
    for user in users {
        issue(user, user, "client.ext");
    }
}

/// The node's boot definitions: `guest` (password `guest`, administrator), `vhost`, and the
/// certificate users with every permission on `/` and `vhost`.
fn definitions_json(vhost: &str, users: &[&str]) -> String {
    use sha2::{Digest, Sha256};
    // RabbitMQ's rabbit_password_hashing_sha256: base64(salt ++ sha256(salt ++ password)).
    let salt = [0x90u8, 0x8d, 0xc6, 0x0a];
    let mut hashed = salt.to_vec();
    hashed.extend(
        Sha256::new()
            .chain_update(salt)
            .chain_update(b"guest")
            .finalize(),
    );
    let guest = base64(&hashed);
    let mut all_users = vec![serde_json::json!({
        "name": "guest", "password_hash": guest,
        "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": ["administrator"],
    })];
    let mut permissions = Vec::new();
    for user in std::iter::once(&"guest").chain(users) {
        if *user != "guest" {
            all_users.push(serde_json::json!({
                "name": user, "password_hash": "",
                "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": [],
            }));
        }
        for v in ["/", vhost] {
            permissions.push(serde_json::json!({
                "user": user, "vhost": v, "configure": ".*", "write": ".*", "read": ".*",
            }));
        }
    }
    serde_json::json!({
        "users": all_users,
        "vhosts": [{"name": "/"}, {"name": vhost}],
        "permissions": permissions,
    })
    .to_string()
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
