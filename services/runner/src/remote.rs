//! Running a task inside the VM its job was provisioned on (`Machine::Vm`), over SSH.
//!
//! The clone (with its downloads) is copied into the VM before the first step; each step runs as
//! a local `ssh` process whose remote command is the step, so step output, time limits and kills
//! work exactly as for local steps (killing the local `ssh` ends the session; the VM itself is
//! destroyed when the job ends). Afterwards the task's working directory and artifacts directory
//! are copied back, regular files only (a task in a VM is not trusted to plant links on the
//! runner's host), and the results, events and artifact globs are read from the copies as for a
//! local run.
//!
//! A task may reboot its VM between steps ([`Remote::reboot`]): the runner asks the guest to
//! reboot, waits until it answers again with a new boot id, and checks that it is the same
//! machine (the host key pinned at the first connection) with the task's directory still there.
//! The clone therefore lives under `/var/tmp`, which survives reboots where `/tmp` may not.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::process::Command;

/// Where a task runs inside its VM: its clone, and its artifacts directory, under a root whose
/// existence says the VM has been used.
/// Made when an image lacks it (the tiny guest keeps nothing there).
const REMOTE_PARENT: &str = "/var/tmp";
pub const REMOTE_ROOT: &str = "/var/tmp/taskbot";
pub const REMOTE_WORKDIR: &str = "/var/tmp/taskbot/job";
pub const REMOTE_ARTIFACTS: &str = "/var/tmp/taskbot/artifacts";
/// The file a step creates to ask for a reboot after it (`$TASKBOT_REBOOT`, as tmt-reboot).
pub const REBOOT_REQUEST: &str = "/var/tmp/taskbot/reboot-requested";
/// What the VM says when it was used before.
const USED_MARK: &str = "taskbot-vm-already-used";

/// How to reach the VM.
#[derive(Debug, Clone)]
pub struct Remote {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub key_path: String,
    /// The VM's host keys as a known-hosts file (removed when the last clone is dropped): with
    /// it, `ssh` talks only to that VM. Without (an unpinned provisioner), any host key is
    /// accepted.
    pub known_hosts: Option<Arc<tempfile::NamedTempFile>>,
}

/// A known-hosts file under `dir` naming `host_keys` for `[host]:port`, or `None` when there
/// are no keys to pin.
pub fn known_hosts_file(
    dir: &Path,
    host: &str,
    port: u16,
    host_keys: &[String],
) -> std::io::Result<Option<tempfile::NamedTempFile>> {
    if host_keys.is_empty() {
        return Ok(None);
    }
    std::fs::create_dir_all(dir)?;
    let mut file = tempfile::Builder::new()
        .prefix("known-hosts-")
        .tempfile_in(dir)?;
    for key in host_keys {
        std::io::Write::write_all(&mut file, format!("[{host}]:{port} {key}\n").as_bytes())?;
    }
    Ok(Some(file))
}

/// `'text'` for sh.
fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "'\\''"))
}

impl Remote {
    /// The `ssh` command line (without the remote command).
    pub fn ssh(&self) -> String {
        let host_keys = match &self.known_hosts {
            Some(file) => format!(
                "-o StrictHostKeyChecking=yes -o UserKnownHostsFile={}",
                quote(&file.path().display().to_string())
            ),
            None => "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null".into(),
        };
        format!(
            "ssh -o BatchMode=yes {host_keys} -o LogLevel=ERROR -o ConnectTimeout=10 \
             -o ServerAliveInterval=15 -i {} -p {} {}",
            quote(&self.key_path),
            self.port,
            quote(&format!("{}@{}", self.user, self.host))
        )
    }

    /// The local shell command that runs `script` in the VM, in the task's working directory,
    /// with the task's environment.
    pub fn step_command(&self, script: &str, env: &[(String, String)]) -> String {
        let mut remote = format!("cd {} && exec env", quote(REMOTE_WORKDIR));
        for (key, value) in env {
            remote.push(' ');
            remote.push_str(&quote(&format!("{key}={value}")));
        }
        remote.push_str(" sh -c ");
        remote.push_str(&quote(script));
        format!("{} {}", self.ssh(), quote(&remote))
    }

    /// Copy the clone into the VM, claiming it: the first attempt of a job creates
    /// [`REMOTE_ROOT`]; a later one (the job redelivered after its runner stopped mid-task) finds
    /// it and refuses, because a VM job never runs twice in one VM (a destructive task may have
    /// left it broken). The job then ends CRASHED and its VM is destroyed.
    pub async fn push(&self, clone: &Path) -> Result<(), String> {
        let remote = format!(
            "mkdir -p {parent} && {{ mkdir {root} 2>/dev/null || {{ echo {USED_MARK} >&2; exit 1; }}; }} && \
             mkdir -p {w} {a} && tar -C {w} -xf -",
            parent = quote(REMOTE_PARENT),
            root = quote(REMOTE_ROOT),
            w = quote(REMOTE_WORKDIR),
            a = quote(REMOTE_ARTIFACTS)
        );
        let command = format!(
            "tar -C {} -cf - . | {} {}",
            quote(&clone.display().to_string()),
            self.ssh(),
            quote(&remote)
        );
        sh(&command).await.map_err(|e| {
            if e.contains(USED_MARK) {
                "the job's VM was already used by an earlier attempt of this job (its runner \
                 stopped mid-task); a VM job never runs twice in one VM: submit it again"
                    .to_string()
            } else {
                format!("cannot copy the task into its VM: {e}")
            }
        })
    }

    /// Copy the task's working directory back over the clone, and its artifacts into
    /// `artifacts` (never over a file already there: the runner's own log). Regular files only.
    pub async fn pull(&self, clone: &Path, artifacts: &Path) -> Result<usize, String> {
        let staging = tokio::task::spawn_blocking(tempfile::tempdir)
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        let pulled = self.pull_through(staging.path(), clone, artifacts).await;
        // Removing the staged copies is a whole tree too.
        let _ = tokio::task::spawn_blocking(move || drop(staging)).await;
        pulled
    }

    /// [`Remote::pull`], the files staged under `staging` first.
    async fn pull_through(
        &self,
        staging: &Path,
        clone: &Path,
        artifacts: &Path,
    ) -> Result<usize, String> {
        let mut copied = 0;
        for (remote_dir, name, dest, overwrite) in [
            (REMOTE_WORKDIR, "job", clone, true),
            (REMOTE_ARTIFACTS, "artifacts", artifacts, false),
        ] {
            let local = staging.join(name);
            tokio::fs::create_dir_all(&local)
                .await
                .map_err(|e| e.to_string())?;
            let command = format!(
                "{} {} | tar -C {} --no-same-owner --no-same-permissions -xf -",
                self.ssh(),
                quote(&format!("tar -C {} -cf - .", quote(remote_dir))),
                quote(&local.display().to_string())
            );
            sh(&command)
                .await
                .map_err(|e| format!("cannot copy {remote_dir} back from the VM: {e}"))?;
            // A whole tree of files: not on the runtime's threads.
            let dest = dest.to_path_buf();
            copied +=
                tokio::task::spawn_blocking(move || copy_regular_files(&local, &dest, overwrite))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| e.to_string())?;
        }
        Ok(copied)
    }
}

/// How long one query of a VM (its boot id, a request file) may take; a VM that is rebooting
/// answers none, and the next query is tried.
const QUERY_TIMEOUT: Duration = Duration::from_secs(15);
/// Between queries while a VM reboots.
const REBOOT_POLL: Duration = Duration::from_secs(2);
/// Reboots the guest whatever its init: systemd's orderly reboot (queued, so the SSH session
/// ends cleanly), else an immediate one in the background (an init without reboot support, as
/// the tiny guest's). Through sudo for a user that is not root.
const REBOOT_COMMAND: &str = "s=; [ \"$(id -u)\" = 0 ] || s='sudo -n'; sync; \
     if [ -d /run/systemd/system ]; then $s systemctl reboot --no-block; \
     else ($s sh -c 'sleep 1; reboot -f') </dev/null >/dev/null 2>&1 & fi";

/// Why a reboot did not bring the task's machine back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RebootError {
    /// The VM did not answer again in time: a verdict on the system the task left (an upgrade
    /// that breaks boot, say).
    NotBack(String),
    /// It answered as another machine, lost the task's files, or could not be asked to reboot.
    Broken(String),
}

impl Remote {
    /// Run `command` in the VM, bounded by [`QUERY_TIMEOUT`]: its exit code, stdout and stderr.
    async fn query(&self, command: &str) -> Result<(i32, String, String), String> {
        let mut child = Command::new("sh");
        child
            .arg("-c")
            .arg(format!("{} {}", self.ssh(), quote(command)))
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let output = tokio::time::timeout(QUERY_TIMEOUT, child.output())
            .await
            .map_err(|_| format!("no answer within {}s", QUERY_TIMEOUT.as_secs()))?
            .map_err(|e| e.to_string())?;
        Ok((
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stdout).trim().to_string(),
            String::from_utf8_lossy(&output.stderr).trim().to_string(),
        ))
    }

    /// The guest kernel's boot id, new at every boot.
    async fn boot_id(&self) -> Result<String, String> {
        match self.query("cat /proc/sys/kernel/random/boot_id").await? {
            (0, id, _) if !id.is_empty() => Ok(id),
            (_, _, stderr) => Err(stderr),
        }
    }

    /// Whether the last step asked for a reboot (created [`REBOOT_REQUEST`]); the request is
    /// taken (removed) by asking. `Err` when the VM no longer answers as itself.
    pub async fn take_reboot_request(&self) -> Result<bool, String> {
        let remove = format!("rm {} 2>/dev/null", quote(REBOOT_REQUEST));
        match self.query(&remove).await {
            Ok((0, _, _)) => Ok(true),
            Ok((255, _, stderr)) => Err(match changed_host_key(&stderr) {
                Some(line) => format!("the VM now answers with another host key ({line})"),
                None => format!("cannot reach the VM: {stderr}"),
            }),
            Ok(_) => Ok(false),
            Err(e) => Err(format!("cannot reach the VM: {e}")),
        }
    }

    /// Reboot the VM and wait, until `deadline`, for it to answer with a new boot id; then check
    /// it kept the task's working directory. How long it took.
    pub async fn reboot(&self, deadline: Instant) -> Result<Duration, RebootError> {
        let started = Instant::now();
        let before = self
            .boot_id()
            .await
            .map_err(|e| RebootError::Broken(format!("cannot read the VM's boot id: {e}")))?;
        // The session may end with the guest's SSH server (status 255): the wait below tells.
        let _ = self.query(REBOOT_COMMAND).await;
        loop {
            if Instant::now() + REBOOT_POLL > deadline {
                return Err(RebootError::NotBack(format!(
                    "the VM did not come back from its reboot within {}s",
                    started.elapsed().as_secs()
                )));
            }
            tokio::time::sleep(REBOOT_POLL).await;
            match self.boot_id().await {
                Ok(id) if id != before => break,
                Ok(_) => {}
                Err(e) => {
                    if let Some(line) = changed_host_key(&e) {
                        return Err(RebootError::Broken(format!(
                            "the VM came back with another host key than it had before the \
                             reboot ({line})"
                        )));
                    }
                }
            }
        }
        let workdir = format!("test -d {}", quote(REMOTE_WORKDIR));
        match self.query(&workdir).await {
            Ok((0, _, _)) => Ok(started.elapsed()),
            Ok(_) => Err(RebootError::Broken(format!(
                "the task's working directory {REMOTE_WORKDIR} did not survive the reboot (the \
                 image keeps /var/tmp in memory)"
            ))),
            Err(e) => Err(RebootError::Broken(format!(
                "the VM stopped answering after its reboot: {e}"
            ))),
        }
    }
}

/// When `ssh` refused the VM because its host key is not the pinned one, the line that says so
/// (without OpenSSH's banner around it).
fn changed_host_key(stderr: &str) -> Option<&str> {
    if !stderr.contains("Host key verification failed") {
        return None;
    }
    stderr
        .lines()
        .find(|l| l.contains("has changed and you have requested strict checking"))
        .or(Some("Host key verification failed"))
        .map(str::trim)
}

async fn sh(command: &str) -> Result<(), String> {
    // bash for pipefail: a failing tar on either side of the pipe fails the copy.
    let output = Command::new("bash")
        .args(["-o", "pipefail", "-c", command])
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| e.to_string())?;
    if output.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).trim().to_string())
    }
}

/// Copy every regular file under `from` to the same relative path under `to` (directories
/// created as needed; links and special files skipped). Returns how many were copied.
fn copy_regular_files(from: &Path, to: &Path, overwrite: bool) -> std::io::Result<usize> {
    let mut copied = 0;
    let mut pending: Vec<PathBuf> = vec![PathBuf::new()];
    while let Some(relative) = pending.pop() {
        for entry in std::fs::read_dir(from.join(&relative))? {
            let entry = entry?;
            let kind = entry.file_type()?;
            let path = relative.join(entry.file_name());
            if kind.is_dir() {
                pending.push(path);
            } else if kind.is_file() {
                let dest = to.join(&path);
                if dest.symlink_metadata().is_ok() && !overwrite {
                    continue;
                }
                if let Some(parent) = dest.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                // Never write through a link left at the destination.
                if dest.symlink_metadata().is_ok_and(|m| !m.is_file()) {
                    continue;
                }
                std::fs::copy(entry.path(), &dest)?;
                copied += 1;
            }
        }
    }
    Ok(copied)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remote() -> Remote {
        Remote {
            host: "127.0.0.1".into(),
            port: 2222,
            user: "root".into(),
            key_path: "/keys/id".into(),
            known_hosts: None,
        }
    }

    #[test]
    fn pinned_host_keys_are_the_only_ones_ssh_accepts() {
        let dir = tempfile::tempdir().unwrap();
        assert!(known_hosts_file(dir.path(), "127.0.0.1", 2222, &[])
            .unwrap()
            .is_none());
        let keys = [
            "ssh-ed25519 AAAAkey1".to_string(),
            "ssh-rsa AAAAkey2".to_string(),
        ];
        let file = known_hosts_file(dir.path(), "127.0.0.1", 2222, &keys)
            .unwrap()
            .unwrap();
        assert_eq!(
            std::fs::read_to_string(file.path()).unwrap(),
            "[127.0.0.1]:2222 ssh-ed25519 AAAAkey1\n[127.0.0.1]:2222 ssh-rsa AAAAkey2\n"
        );
        let path = file.path().to_path_buf();
        let pinned = Remote {
            known_hosts: Some(Arc::new(file)),
            ..remote()
        };
        let command = pinned.ssh();
        assert!(
            command.contains(&format!(
                "-o StrictHostKeyChecking=yes -o UserKnownHostsFile='{}'",
                path.display()
            )),
            "{command}"
        );
        assert!(remote().ssh().contains("StrictHostKeyChecking=no"));
        drop(pinned);
        assert!(!path.exists(), "removed with the job's Remote");
    }

    #[test]
    fn a_step_runs_in_the_remote_workdir_with_its_environment_quoted() {
        let command = remote().step_command(
            "echo \"$TASKBOT_ITEM\" > out; rm -rf 'x'",
            &[("TASKBOT_ITEM".into(), "it's-1.0-1".into())],
        );
        assert!(command.starts_with("ssh -o BatchMode=yes"), "{command}");
        assert!(
            command.contains("-i '/keys/id' -p 2222 'root@127.0.0.1'"),
            "{command}"
        );
        // What the remote shell gets, once the local shell removed one level of quoting.
        let output = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "printf '%s' {}",
                command
                    .rsplit_once(" 'cd ")
                    .map(|(_, r)| format!("'cd {r}"))
                    .unwrap()
            ))
            .output()
            .unwrap();
        let remote_command = String::from_utf8(output.stdout).unwrap();
        assert_eq!(
            remote_command,
            "cd '/var/tmp/taskbot/job' && exec env 'TASKBOT_ITEM=it'\\''s-1.0-1' sh -c \
             'echo \"$TASKBOT_ITEM\" > out; rm -rf '\\''x'\\'''"
        );
    }

    #[test]
    fn a_changed_host_key_is_told_by_the_line_saying_so() {
        let stderr = "@@@@@@@\n@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\n\
            Offending ED25519 key in /k:1\n\
            Host key for [127.0.0.1]:2222 has changed and you have requested strict checking.\n\
            Host key verification failed.\n";
        assert_eq!(
            changed_host_key(stderr),
            Some(
                "Host key for [127.0.0.1]:2222 has changed and you have requested strict checking."
            )
        );
        assert_eq!(
            changed_host_key("Host key verification failed.\n"),
            Some("Host key verification failed")
        );
        assert_eq!(
            changed_host_key("ssh: connect to host 127.0.0.1 port 2222: Connection refused"),
            None
        );
    }

    #[test]
    fn only_regular_files_are_copied_back_and_runner_files_are_kept() {
        let from = tempfile::tempdir().unwrap();
        let to = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(from.path().join("sub")).unwrap();
        std::fs::write(from.path().join("sub/a.txt"), "a").unwrap();
        std::fs::write(from.path().join("task.log"), "from the VM").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", from.path().join("link")).unwrap();
        std::fs::write(to.path().join("task.log"), "the runner's").unwrap();
        let copied = copy_regular_files(from.path(), to.path(), false).unwrap();
        assert_eq!(copied, 1);
        assert_eq!(
            std::fs::read_to_string(to.path().join("sub/a.txt")).unwrap(),
            "a"
        );
        assert_eq!(
            std::fs::read_to_string(to.path().join("task.log")).unwrap(),
            "the runner's"
        );
        assert!(to.path().join("link").symlink_metadata().is_err());
        assert_eq!(copy_regular_files(from.path(), to.path(), true).unwrap(), 2);
        assert_eq!(
            std::fs::read_to_string(to.path().join("task.log")).unwrap(),
            "from the VM"
        );
    }
}
