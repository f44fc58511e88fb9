//! The trust boundary around task code on the local backend.
//!
//! A task is code from someone else's git repository, and its verdicts gate releases, so each step
//! runs as if it were hostile: under bubblewrap (`bwrap`, from the OS packages), as an
//! unprivileged user, in its own user, mount, pid, IPC, UTS and cgroup namespaces. It sees:
//!
//! - the system directories read-only (`/usr`, `/etc`, the `/bin`-style links), with the paths
//!   the operator names in `runner.sandbox_hidden` (config and secret directories) covered by an
//!   empty tmpfs;
//! - its clone and its artifacts directory, writable, at the same paths as on the host (so the
//!   `TASKBOT_*` paths it is given are right inside and out);
//! - a private `/tmp`, `/dev` and a `/proc` that shows only the step's own processes;
//! - an environment made of exactly what the runner passes (never the runner's own, which holds
//!   the broker URL and the config path).
//!
//! It does not see the runner's environment, the processes of the host or of other jobs, their
//! directories, the config file or the keys. Every step is its own pid namespace with bwrap as
//! its init: when the step ends, is killed for its time limit, or the runner dies
//! (`--die-with-parent`), the kernel kills every process left in it, `setsid` and double-forked
//! daemons included.
//!
//! Why bubblewrap rather than our own `unshare` launcher: it is small, audited, packaged by every
//! distribution and used by Flatpak for exactly this (unprivileged namespaces, bind mounts set up
//! before the untrusted code starts, no setuid needed when user namespaces are available). Our
//! own launcher would re-implement its mount set-up in `pre_exec` code, where mistakes are easy
//! to make and hard to see.
//!
//! Without network access (`runner.sandbox_network = false`) the step also gets its own network
//! namespace with only a loopback device. With network (the default: tasks download builds) it
//! shares the host's network; the broker's and database's credentials are what keeps it from
//! publishing or writing (they are in files the task cannot see, docs/security.md).

use std::ffi::OsString;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use crate::secrets::{Delivered, SANDBOX_SECRETS_DIR, SECRETS_ENV};

/// Directories bound read-only into every sandbox when they exist on the host.
const SYSTEM_DIRS: &[&str] = &["/usr", "/etc"];
/// Top-level names that are usually symbolic links into `/usr` on merged-/usr systems; bound as
/// the same links, or read-only, whichever the host has.
const USR_LINKS: &[&str] = &["/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"];
/// The `PATH` a step gets unless the task's environment sets another.
pub const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin";

/// Who a sandboxed step runs as, and what it may reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sandbox {
    /// The unprivileged user and group the step runs as (never 0).
    pub uid: u32,
    pub gid: u32,
    /// Whether the step shares the host's network.
    pub network: bool,
    /// More host directories the step sees read-only (besides `/usr` and `/etc`).
    pub read_only: Vec<PathBuf>,
    /// Paths covered with an empty tmpfs inside the sandbox (config and secrets directories under
    /// `/etc` and the like); those that do not exist are skipped. The step's own directories are
    /// bound after them, so hiding a directory that holds them leaves them reachable.
    pub hidden: Vec<PathBuf>,
    /// The `bwrap` program.
    pub program: PathBuf,
}

/// One step, as the sandbox needs to know it.
#[derive(Debug, Clone)]
pub struct Step<'a> {
    pub script: &'a str,
    /// Where the step starts (the clone).
    pub cwd: &'a Path,
    /// Directories the step may write: the clone and the job's artifacts directory.
    pub writable: &'a [PathBuf],
    /// Files and directories inside those that stay read-only to the step (the runner's logs).
    pub protected: &'a [PathBuf],
    /// The step's whole environment.
    pub env: &'a [(String, String)],
    /// The job's secrets, as bwrap reads them (empty for most jobs).
    pub secrets: &'a SecretFds,
}

/// The descriptors through which bwrap gets a step's secrets: a memory file per secret, copied
/// into the sandbox's private `/run/taskbot-secrets/<name>`, and one holding the `--setenv`
/// arguments of those given as variables. Never bwrap's command line, which every user of the
/// host can read in `/proc`, and never a file on disk. They are close-on-exec, so no other
/// process the runner starts inherits them; only the step's bwrap gets them
/// ([`Sandbox::command`]), and bwrap closes them once read.
#[derive(Debug, Default)]
pub struct SecretFds {
    files: Vec<(String, OwnedFd)>,
    env_args: Option<OwnedFd>,
}

impl SecretFds {
    /// The descriptors of `secrets`.
    pub fn new(secrets: &[Delivered]) -> std::io::Result<SecretFds> {
        let mut fds = SecretFds::default();
        let mut env_args = Vec::new();
        for secret in secrets {
            fds.files
                .push((secret.name.clone(), memory_file(&secret.value)?));
            if let Some(env) = &secret.env {
                for arg in [b"--setenv", env.as_bytes(), secret.trimmed()] {
                    env_args.extend_from_slice(arg);
                    env_args.push(0);
                }
            }
        }
        if !env_args.is_empty() {
            fds.env_args = Some(memory_file(&env_args)?);
        }
        Ok(fds)
    }

    fn raw(&self) -> Vec<RawFd> {
        let files = self.files.iter().map(|(_, fd)| fd.as_raw_fd());
        files
            .chain(self.env_args.iter().map(|fd| fd.as_raw_fd()))
            .collect()
    }
}

/// A close-on-exec memory file holding `data`, read from its start.
fn memory_file(data: &[u8]) -> std::io::Result<OwnedFd> {
    use std::io::{Seek as _, Write as _};
    // SAFETY: the name is a NUL-terminated string; the result is checked before use.
    let fd = unsafe { libc::memfd_create(c"taskbot-secret".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: memfd_create returned a new descriptor that nothing else owns.
    let mut file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    file.write_all(data)?;
    file.rewind()?;
    Ok(file.into())
}

impl Sandbox {
    /// The arguments to `bwrap` that run `step` (everything after the program name). Pure, so
    /// what a task can see is tested without starting anything.
    pub fn args(&self, step: &Step<'_>) -> Vec<OsString> {
        let mut args = Args::default();
        args.flags(&[
            "--unshare-user",
            "--unshare-pid",
            "--unshare-ipc",
            "--unshare-uts",
            "--unshare-cgroup-try",
            "--die-with-parent",
            // A new session: the step cannot push input into a terminal the runner has.
            "--new-session",
            "--cap-drop",
            "ALL",
        ]);
        if !self.network {
            args.flags(&["--unshare-net"]);
        }
        args.pair("--uid", self.uid.to_string());
        args.pair("--gid", self.gid.to_string());
        args.pair("--hostname", "taskbot-job");
        self.system_mounts(&mut args);
        args.flags(&["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]);
        args.flags(&["--tmpfs", "/var/tmp", "--tmpfs", "/run"]);
        // After the private /tmp and friends, which would cover them (an operator's directory
        // may well be under /tmp or /run).
        for dir in &self.read_only {
            if dir.is_dir() {
                args.triple("--ro-bind", dir, dir);
            }
        }
        // Before the step's own directories: a hidden directory may hold them (the config's
        // directory holding the work directory, say), and they must stay reachable.
        for hidden in &self.hidden {
            if hidden.exists() {
                args.pair("--tmpfs", hidden);
            }
        }
        for dir in step.writable {
            args.triple("--bind", dir, dir);
        }
        for path in step.protected {
            if path.exists() {
                args.triple("--ro-bind", path, path);
            }
        }
        secret_files(&mut args, step.secrets);
        args.flags(&["--clearenv"]);
        for (key, default) in [
            ("PATH", DEFAULT_PATH),
            ("HOME", "/tmp"),
            ("LANG", "C.UTF-8"),
        ] {
            if !step.env.iter().any(|(k, _)| k == key) {
                args.triple("--setenv", key, default);
            }
        }
        for (key, value) in step.env {
            args.triple("--setenv", key, value);
        }
        if !step.secrets.files.is_empty() {
            args.triple("--setenv", SECRETS_ENV, SANDBOX_SECRETS_DIR);
        }
        if let Some(fd) = &step.secrets.env_args {
            args.pair("--args", fd.as_raw_fd().to_string());
        }
        args.pair("--chdir", step.cwd);
        args.flags(&["--", "sh", "-c"]);
        args.0.push(step.script.into());
        args.0
    }

    /// The process that runs `step` in the sandbox: `bwrap` as the sandbox user, with an empty
    /// environment of its own (bwrap is the pid namespace's init, and a task can read its init's
    /// `/proc/1/environ`).
    /// Only this bwrap inherits the step's secret descriptors (`step.secrets`, which must stay
    /// open until it is spawned).
    pub fn command(&self, step: &Step<'_>) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(&self.program);
        command
            .args(self.args(step))
            .env_clear()
            .uid(self.uid)
            .gid(self.gid);
        let inherited = step.secrets.raw();
        if !inherited.is_empty() {
            // SAFETY: runs in the forked child before exec, and only calls fcntl(2), which is
            // async-signal-safe; it allocates nothing.
            unsafe {
                command.pre_exec(move || {
                    for &fd in &inherited {
                        if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                            return Err(std::io::Error::last_os_error());
                        }
                    }
                    Ok(())
                });
            }
        }
        command
    }

    /// The host's system directories, read-only.
    fn system_mounts(&self, args: &mut Args) {
        for dir in SYSTEM_DIRS {
            if Path::new(dir).is_dir() {
                args.triple("--ro-bind", dir, dir);
            }
        }
        for link in USR_LINKS {
            let path = Path::new(link);
            match std::fs::read_link(path) {
                Ok(target) => args.triple("--symlink", target, path),
                Err(_) if path.is_dir() => args.triple("--ro-bind", path, path),
                Err(_) => {}
            }
        }
    }

    /// Make everything under `writable` the sandbox user's (without following symbolic links),
    /// so the step can write its clone and artifacts; what the runner must keep (its logs) is
    /// bound read-only instead.
    pub fn give(&self, writable: &[PathBuf]) -> Result<(), String> {
        for dir in writable {
            chown_tree(dir, self.uid, self.gid)
                .map_err(|e| format!("cannot give {} to the sandbox user: {e}", dir.display()))?;
        }
        Ok(())
    }

    /// Check once, at start, that this host can sandbox: `bwrap` runs as the sandbox user, gets
    /// its namespaces, and can bind a directory made in each of `dirs` (the work and artifacts
    /// directories, whose parents the sandbox user must be able to traverse). The error says
    /// what is missing, for the runner to refuse to start.
    pub fn probe(&self, dirs: &[PathBuf]) -> Result<(), String> {
        let mut probes = Vec::new();
        for dir in dirs {
            let probe = tempfile::Builder::new()
                .prefix(".sandbox-probe-")
                .tempdir_in(dir)
                .map_err(|e| format!("cannot make a probe directory in {}: {e}", dir.display()))?;
            probes.push(probe);
        }
        let writable: Vec<PathBuf> = probes.iter().map(|p| p.path().to_path_buf()).collect();
        self.give(&writable)?;
        let script = writable
            .iter()
            .map(|dir| format!("touch '{}/ok' && ", dir.display()))
            .collect::<String>()
            + "test \"$(id -u)\" != 0";
        let cwd = std::env::temp_dir();
        let step = Step {
            script: &script,
            cwd: writable.first().unwrap_or(&cwd),
            writable: &writable,
            protected: &[],
            env: &[],
            secrets: &SecretFds::default(),
        };
        let mut command = std::process::Command::new(&self.program);
        let output = command
            .args(self.args(&step))
            .env_clear()
            .uid(self.uid)
            .gid(self.gid)
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", self.program.display()))?;
        if output.status.success() {
            return Ok(());
        }
        Err(format!(
            "{} cannot make a sandbox as uid {}: {} (status {})",
            self.program.display(),
            self.uid,
            String::from_utf8_lossy(&output.stderr).trim(),
            output.status
        ))
    }
}

use std::os::unix::process::CommandExt as _;

/// `lchown` every entry of the tree at `root`, never following symbolic links.
fn chown_tree(root: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    let meta = std::fs::symlink_metadata(root)?;
    // A file with a second link may be a host file (say, one left by an earlier attempt of the
    // job): giving it away would give the host file. It stays the runner's, and is removed
    // with the artifacts a job may not keep.
    if !meta.is_dir() && std::os::unix::fs::MetadataExt::nlink(&meta) > 1 {
        return Ok(());
    }
    std::os::unix::fs::lchown(root, Some(uid), Some(gid))?;
    if !meta.is_dir() {
        return Ok(());
    }
    for entry in std::fs::read_dir(root)? {
        chown_tree(&entry?.path(), uid, gid)?;
    }
    Ok(())
}

/// The uid and gid of a user name or a numeric `UID[:GID]`, refusing root: a sandbox that runs
/// tasks as root protects nothing.
pub fn resolve_user(user: &str) -> Result<(u32, u32), String> {
    let (uid, gid) = match parse_numeric(user) {
        Some(ids) => ids,
        None => lookup_passwd(user, &std::fs::read_to_string("/etc/passwd").unwrap_or_default())
            .ok_or_else(|| {
                format!(
                    "runner.sandbox_user: no user {user:?} on this host (scripts/ensure-services.sh creates taskbot-task)"
                )
            })?,
    };
    if uid == 0 || gid == 0 {
        return Err(format!(
            "runner.sandbox_user: {user:?} is root (uid {uid}, gid {gid}); tasks must never run as root"
        ));
    }
    Ok((uid, gid))
}

fn parse_numeric(user: &str) -> Option<(u32, u32)> {
    let (uid, gid) = user.split_once(':').unwrap_or((user, user));
    Some((uid.parse().ok()?, gid.parse().ok()?))
}

/// The uid and gid of `name` in the text of `/etc/passwd`.
fn lookup_passwd(name: &str, passwd: &str) -> Option<(u32, u32)> {
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        if fields.next()? != name {
            return None;
        }
        let _password = fields.next()?;
        Some((fields.next()?.parse().ok()?, fields.next()?.parse().ok()?))
    })
}

/// The job's secrets in a private tmpfs, each file read-only, then the directory too.
fn secret_files(args: &mut Args, secrets: &SecretFds) {
    if secrets.files.is_empty() {
        return;
    }
    args.pair("--tmpfs", SANDBOX_SECRETS_DIR);
    for (name, fd) in &secrets.files {
        args.pair("--perms", "0400");
        args.triple(
            "--ro-bind-data",
            fd.as_raw_fd().to_string(),
            format!("{SANDBOX_SECRETS_DIR}/{name}"),
        );
    }
    args.pair("--remount-ro", SANDBOX_SECRETS_DIR);
}

/// Builds an argument list.
#[derive(Default)]
struct Args(Vec<OsString>);

impl Args {
    fn flags(&mut self, flags: &[&str]) {
        self.0.extend(flags.iter().map(OsString::from));
    }

    fn pair(&mut self, flag: &str, value: impl Into<OsString>) {
        self.0.push(flag.into());
        self.0.push(value.into());
    }

    fn triple(
        &mut self,
        flag: &str,
        a: impl AsRef<std::ffi::OsStr>,
        b: impl AsRef<std::ffi::OsStr>,
    ) {
        self.0.push(flag.into());
        self.0.push(a.as_ref().into());
        self.0.push(b.as_ref().into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sandbox(network: bool) -> Sandbox {
        Sandbox {
            uid: 65534,
            gid: 65534,
            network,
            read_only: vec![],
            hidden: vec![PathBuf::from("/etc")],
            program: PathBuf::from("bwrap"),
        }
    }

    fn strings(args: Vec<OsString>) -> Vec<String> {
        args.into_iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    fn follows(args: &[String], flag: &str, value: &str) -> bool {
        args.windows(2).any(|w| w[0] == flag && w[1] == value)
    }

    #[test]
    fn a_step_gets_its_namespaces_user_and_only_its_environment() {
        let writable = [PathBuf::from("/w/clone"), PathBuf::from("/a/job")];
        let env = [("TASKBOT_ITEM".to_string(), "xchat-1-1".to_string())];
        let step = Step {
            script: "echo hi",
            cwd: Path::new("/w/clone"),
            writable: &writable,
            protected: &[],
            env: &env,
            secrets: &SecretFds::default(),
        };
        let args = strings(sandbox(false).args(&step));
        for flag in [
            "--unshare-user",
            "--unshare-pid",
            "--unshare-ipc",
            "--unshare-net",
            "--die-with-parent",
            "--new-session",
            "--clearenv",
        ] {
            assert!(args.iter().any(|a| a == flag), "{flag} missing: {args:?}");
        }
        assert!(follows(&args, "--uid", "65534"), "{args:?}");
        assert!(follows(&args, "--chdir", "/w/clone"), "{args:?}");
        let joined = args.join(" ");
        assert!(joined.contains("--bind /w/clone /w/clone"), "{joined}");
        assert!(joined.contains("--bind /a/job /a/job"), "{joined}");
        assert!(
            joined.contains("--setenv TASKBOT_ITEM xchat-1-1"),
            "{joined}"
        );
        assert!(
            joined.contains(&format!("--setenv PATH {DEFAULT_PATH}")),
            "{joined}"
        );
        assert!(joined.ends_with("-- sh -c echo hi"), "{joined}");
        // The hidden path is covered after the system directories are bound.
        let bind = joined.find("--ro-bind /etc /etc").expect("etc bound");
        let hide = joined.find("--tmpfs /etc").expect("etc hidden");
        assert!(hide > bind, "{joined}");
    }

    #[test]
    fn secrets_reach_bwrap_through_descriptors_never_its_arguments() {
        let secret = Delivered {
            name: "koji-token".into(),
            value: b"s3cr3t-token-value\n".to_vec(),
            env: Some("KOJI_TOKEN".into()),
        };
        let fds = SecretFds::new(&[secret]).unwrap();
        let [file_fd, env_fd] = fds.raw()[..] else {
            panic!("one descriptor for the file, one for the variable")
        };
        let step = Step {
            script: "true",
            cwd: Path::new("/"),
            writable: &[],
            protected: &[],
            env: &[],
            secrets: &fds,
        };
        let args = strings(sandbox(true).args(&step));
        let joined = args.join(" ");
        assert!(!joined.contains("s3cr3t"), "{joined}");
        assert!(
            joined.contains(&format!(
                "--tmpfs {SANDBOX_SECRETS_DIR} --perms 0400 --ro-bind-data {file_fd} {SANDBOX_SECRETS_DIR}/koji-token --remount-ro {SANDBOX_SECRETS_DIR}"
            )),
            "{joined}"
        );
        assert!(joined.contains(&format!("--setenv {SECRETS_ENV} {SANDBOX_SECRETS_DIR}")));
        assert!(follows(&args, "--args", &env_fd.to_string()), "{joined}");
        // After --clearenv, which would drop the variables otherwise.
        assert!(
            joined.find("--clearenv") < joined.find("--args"),
            "{joined}"
        );
        let mut content = String::new();
        use std::io::Read as _;
        let mut file = std::fs::File::from(fds.env_args.unwrap());
        file.read_to_string(&mut content).unwrap();
        assert_eq!(content, "--setenv\0KOJI_TOKEN\0s3cr3t-token-value\0");
    }

    #[test]
    fn network_is_shared_only_when_allowed() {
        let step = Step {
            script: "true",
            cwd: Path::new("/"),
            writable: &[],
            protected: &[],
            env: &[],
            secrets: &SecretFds::default(),
        };
        assert!(!strings(sandbox(true).args(&step)).contains(&"--unshare-net".to_string()));
        assert!(strings(sandbox(false).args(&step)).contains(&"--unshare-net".to_string()));
    }

    #[test]
    fn users_resolve_by_name_or_number_and_root_is_refused() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\ntaskbot-task:x:998:997::/nonexistent:/usr/sbin/nologin\n";
        assert_eq!(lookup_passwd("taskbot-task", passwd), Some((998, 997)));
        assert_eq!(lookup_passwd("nobody", passwd), None);
        assert_eq!(resolve_user("1234:5678"), Ok((1234, 5678)));
        assert_eq!(resolve_user("4321"), Ok((4321, 4321)));
        assert!(resolve_user("0").unwrap_err().contains("root"));
        assert!(resolve_user("root").unwrap_err().contains("root"));
        assert!(resolve_user("no-such-user-here")
            .unwrap_err()
            .contains("no user"));
    }
}

/// Hostile steps, run for real under bwrap as an unprivileged user (the host must be able to
/// sandbox: `make test` installs bubblewrap).
#[cfg(test)]
mod hostile {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;
    use std::time::Duration;

    struct Job {
        _root: tempfile::TempDir,
        clone: PathBuf,
        artifacts: PathBuf,
        other_job: PathBuf,
        /// Seen read-only, like `/etc`.
        system: PathBuf,
        secret_dir: PathBuf,
    }

    /// A clone and an artifacts dir the sandbox user may write, another job's dir beside them, and
    /// a "config directory" the operator hides.
    fn job() -> Job {
        let root = tempfile::tempdir().unwrap();
        std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let [clone, artifacts, other_job, system] =
            ["clone", "artifacts", "other-job", "system"].map(|n| root.path().join(n));
        // Inside a directory the step sees, so only the hiding keeps it out of reach.
        let secret_dir = system.join("etc-taskbot");
        for dir in [&clone, &artifacts, &other_job, &system, &secret_dir] {
            std::fs::create_dir(dir).unwrap();
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        }
        std::fs::write(other_job.join("results.yml"), "other job's").unwrap();
        std::fs::write(secret_dir.join("taskbot.toml"), "password = 'hunter2'").unwrap();
        std::fs::write(system.join("visible.txt"), "visible to the step").unwrap();
        std::fs::set_permissions(
            secret_dir.join("taskbot.toml"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        Job {
            _root: root,
            clone,
            artifacts,
            other_job,
            system,
            secret_dir,
        }
    }

    fn sandbox(job: &Job, network: bool) -> Sandbox {
        Sandbox {
            uid: 65534,
            gid: 65534,
            network,
            read_only: vec![job.system.clone()],
            hidden: vec![job.secret_dir.clone()],
            program: PathBuf::from("bwrap"),
        }
    }

    /// Run `script` in the sandbox; its exit code and output.
    async fn run(job: &Job, network: bool, script: &str) -> (i32, String) {
        let writable = [job.clone.clone(), job.artifacts.clone()];
        let env = [("TASKBOT_ITEM".to_string(), "xchat-1-1".to_string())];
        let step = Step {
            script,
            cwd: &job.clone,
            writable: &writable,
            protected: &[],
            env: &env,
            secrets: &SecretFds::default(),
        };
        let output = sandbox(job, network)
            .command(&step)
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .expect("bwrap runs (make test installs bubblewrap)");
        let text = String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr);
        (output.status.code().unwrap_or(-1), text)
    }

    #[tokio::test]
    async fn runs_unprivileged_and_writes_only_its_own_dirs() {
        let job = job();
        let (code, out) = run(
            &job,
            true,
            "id -u; echo ok > results.yml; \
             touch /usr/forged 2>&1 || echo usr-refused; touch /etc/forged 2>&1 || echo etc-refused",
        )
        .await;
        assert_eq!(code, 0, "{out}");
        assert!(out.starts_with("65534\n"), "{out}");
        assert!(
            out.contains("usr-refused") && out.contains("etc-refused"),
            "{out}"
        );
        assert_eq!(
            std::fs::read_to_string(job.clone.join("results.yml")).unwrap(),
            "ok\n"
        );
        assert!(!Path::new("/usr/forged").exists() && !Path::new("/etc/forged").exists());
    }

    #[tokio::test]
    async fn cannot_see_secrets_other_jobs_or_the_runners_environment() {
        // Set in this test process only: what a runner's environment would hold.
        std::env::set_var("TASKBOT_SANDBOX_TEST_SECRET", "amqp://runner:secret@broker");
        let job = job();
        let script = format!(
            "cat {system}/visible.txt; echo; cat {secret}/taskbot.toml 2>&1; ls {other} 2>&1; cat /proc/1/environ /proc/self/environ | tr '\\0' '\\n'; \
             ls /proc | grep -c '^[0-9]'; ls /root /home 2>&1; echo end",
            secret = job.secret_dir.display(),
            other = job.other_job.display(),
            system = job.system.display(),
        );
        let (_, out) = run(&job, true, &script).await;
        // The directory around the secret is visible, so only the hiding keeps the secret out.
        assert!(out.contains("visible to the step"), "{out}");
        assert!(!out.contains("hunter2"), "hidden config readable: {out}");
        assert!(
            !out.contains("other job's") && out.contains("No such file"),
            "{out}"
        );
        assert!(
            !out.contains("secret@broker"),
            "runner environment leaked: {out}"
        );
        assert!(out.contains("TASKBOT_ITEM=xchat-1-1"), "{out}");
        // Only the step's own processes: bwrap (init), sh, and the pipeline's commands.
        let pids: usize = out
            .lines()
            .find_map(|l| l.trim().parse().ok())
            .expect("a process count");
        assert!(pids <= 6, "sees {pids} processes: {out}");
        assert!(out.trim_end().ends_with("end"), "{out}");
    }

    #[tokio::test]
    async fn no_process_outlives_the_step() {
        let job = job();
        let marker = format!("{}", 90_000 + std::process::id() % 9_000);
        let script = format!(
            "setsid sleep {marker} </dev/null >/dev/null 2>&1 & \
             (sh -c 'sleep {marker} </dev/null >/dev/null 2>&1 &' &) ; sleep 0.2; echo started"
        );
        let (code, out) = run(&job, true, &script).await;
        assert_eq!(code, 0, "{out}");
        // The step's init is gone, so the kernel has killed the rest of its namespace.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let left = taskbot::testing::processes_running(&format!("sleep\0{marker}"));
            if left == 0 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{left} daemons of the step still run"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    #[tokio::test]
    async fn a_killed_runner_takes_its_steps_processes_with_it() {
        let job = job();
        let marker = format!("{}", 80_000 + std::process::id() % 9_000);
        let writable = [job.clone.clone()];
        let script = format!("setsid sleep {marker} & sleep {marker}");
        let step = Step {
            script: &script,
            cwd: &job.clone,
            writable: &writable,
            protected: &[],
            env: &[],
            secrets: &SecretFds::default(),
        };
        let sandbox = sandbox(&job, true);
        // A stand-in for the runner: a process that starts the sandbox and is then SIGKILLed.
        let mut runner = tokio::process::Command::new("sh")
            .arg("-c")
            .arg("\"$@\" & wait")
            .arg("runner")
            .arg(&sandbox.program)
            .args(sandbox.args(&step))
            .env_clear()
            .uid(sandbox.uid)
            .gid(sandbox.gid)
            .spawn()
            .unwrap();
        let started = std::time::Instant::now() + Duration::from_secs(5);
        while taskbot::testing::processes_running(&format!("sleep\0{marker}")) < 2 {
            assert!(
                std::time::Instant::now() < started,
                "the step never started"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        runner.start_kill().unwrap();
        runner.wait().await.unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while taskbot::testing::processes_running(&format!("sleep\0{marker}")) > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the step's processes outlived the runner"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn without_network_the_broker_is_out_of_reach() {
        let job = job();
        let probe = "exec 3<>/dev/tcp/127.0.0.1/5672 && echo connected || echo refused";
        let (_, out) = run(&job, false, &format!("bash -c '{probe}' 2>&1")).await;
        assert!(
            out.contains("refused") && !out.contains("connected"),
            "{out}"
        );
    }
}
