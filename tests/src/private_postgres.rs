//! A PostgreSQL server of one test's own, for tests that restart the database: restarting the
//! machine's shared server would break every test running beside it. The cluster is made with the
//! installed server's `initdb` (Debian's `/usr/lib/postgresql/<version>/bin`) in a temporary
//! directory, run as the `postgres` system user (the server refuses to run as root), listening on
//! 127.0.0.1 on a port of its own with trust authentication, and has a `test` database, as the
//! shared server does. Stopped and removed on drop.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::free_port;

/// A private PostgreSQL cluster; stopped and removed when dropped.
pub struct PrivatePostgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    /// Where clients connect (127.0.0.1).
    pub port: u16,
}

impl PrivatePostgres {
    /// Make a cluster, start it, and create its `test` database.
    pub fn start() -> PrivatePostgres {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let postgres = PrivatePostgres {
            bin: server_bin_dir(),
            port: free_port(),
            dir,
        };
        chown_postgres(postgres.dir.path());
        postgres.as_postgres(
            "initdb",
            &[
                "-D",
                &postgres.data().display().to_string(),
                "-A",
                "trust",
                "-U",
                "postgres",
            ],
        );
        postgres.pg_ctl(&["start", "-w", "-t", "60"]);
        postgres.as_postgres(
            "createdb",
            &["-h", "127.0.0.1", "-p", &postgres.port.to_string(), "test"],
        );
        postgres
    }

    /// `postgres://postgres@127.0.0.1:PORT/test`, as `taskbot::testing::postgres_url` expects.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/test", self.port)
    }

    /// Restart as a crash would: `immediate` mode aborts every connection and the server
    /// recovers from its WAL on the way back up. Returns once it accepts connections again.
    pub fn crash_restart(&self) {
        self.pg_ctl(&["restart", "-m", "immediate", "-w", "-t", "60"]);
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn pg_ctl(&self, args: &[&str]) {
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {} -c max_connections=200",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("server.log").display().to_string();
        let data = self.data().display().to_string();
        let mut all = vec!["-D", &data, "-l", &log, "-o", &options];
        all.extend_from_slice(args);
        self.as_postgres("pg_ctl", &all);
    }

    /// Run one of the server's programs as the `postgres` user; panics with its output and the
    /// server log when it fails.
    fn as_postgres(&self, program: &str, args: &[&str]) {
        let output = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join(program))
            .args(args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run {program} as postgres: {e}"));
        assert!(
            output.status.success(),
            "{program} {args:?} failed: {}{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            self.log()
        );
    }

    /// The server's log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    fn stop(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let data = self.data().display().to_string();
        while Instant::now() < deadline {
            let stopped = Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(self.bin.join("pg_ctl"))
                .args(["-D", &data, "stop", "-m", "immediate", "-w"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if stopped || !self.data().join("postmaster.pid").exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The newest installed server's programs (Debian installs each major version side by side).
fn server_bin_dir() -> PathBuf {
    let root = Path::new("/usr/lib/postgresql");
    let newest = std::fs::read_dir(root)
        .unwrap_or_else(|e| panic!("{}: {e} (is postgresql installed?)", root.display()))
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .max()
        .expect("a PostgreSQL server version under /usr/lib/postgresql");
    root.join(newest.to_string()).join("bin")
}

fn chown_postgres(path: &Path) {
    let status = Command::new("chown")
        .args(["postgres:postgres"])
        .arg(path)
        .status()
        .expect("chown runs");
    assert!(status.success(), "chown postgres {}", path.display());
}
