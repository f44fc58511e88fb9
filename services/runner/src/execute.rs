//! Running one step of a task: `sh -c "<command>"` in the clone, in a process group of its own,
//! with its output drained from a pipe into the job's log (redacted and capped there) and a time
//! limit; on this host always inside the job's sandbox ([`crate::sandbox`]) unless the operator
//! turned it off.
//!
//! The process group matters: a task's shell starts children (test suites, `sleep`, daemons), and
//! killing only the shell would leave them running on the runner's host after the job is over. So
//! when the time is up, when the runner shuts down, and also after a normal exit (leftover
//! background processes), the whole group gets SIGKILL.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use taskbot::Shutdown;

use crate::log::OutputSink;
use crate::sandbox::{Sandbox, SecretFds, Step};
use crate::secrets::Delivered;

/// How long the step's output is still read once the step ended: its pipe ends when the last
/// process holding it is gone, which in the sandbox is at once; one that escaped the process
/// group (only possible unsandboxed) must not hold the job up.
const DRAIN_GRACE: Duration = Duration::from_secs(5);

/// Everything needed to start one step of a task.
#[derive(Debug, Clone)]
pub struct TaskCommand {
    /// The step's command, templates already rendered.
    pub script: String,
    /// The clone, where the command starts.
    pub cwd: PathBuf,
    /// Variables added to the runner's environment (see [`task_env`]).
    pub env: Vec<(String, String)>,
    /// Where stdout and stderr go, together: the job's log (which redacts and caps them), through
    /// one pipe the runner drains.
    pub output: OutputSink,
    pub timeout: Duration,
    /// Where the step runs: in the sandbox on this host (local jobs), or as it is (a VM job's
    /// `ssh` command, which needs the runner's key; the VM is that job's sandbox).
    pub confinement: Option<Confinement>,
    /// The job's secrets, given to a sandboxed step (never to an unconfined one).
    pub secrets: Arc<[Delivered]>,
}

/// A sandboxed step's sandbox and the directories it may write.
#[derive(Debug, Clone)]
pub struct Confinement {
    pub sandbox: std::sync::Arc<Sandbox>,
    /// The clone and the job's artifacts directory; made the sandbox user's before the step.
    pub writable: Vec<PathBuf>,
    /// The runner's own files inside those (the job's log): read-only to the step.
    pub protected: Vec<PathBuf>,
}

/// How a task process ended by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskExit {
    Code(i32),
    Signal(i32),
}

/// How running a task ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunEnd {
    Exited(TaskExit),
    /// The time limit passed; the process group was killed.
    TimedOut(Duration),
    /// The command could not be started (the reason).
    FailedToStart(String),
    /// The runner is shutting down; the process group was killed and the job should be handed
    /// back to the queue for another runner.
    Interrupted,
}

/// The variables a task gets on top of the runner's environment. Job arguments become
/// `TASKBOT_ARG_<KEY>` with the key upper-cased and anything but letters and digits turned into
/// `_` (`koji-tag` → `TASKBOT_ARG_KOJI_TAG`), because shells cannot read other names.
pub fn task_env(
    job: &taskbot::JobRequest,
    workdir: &Path,
    artifacts: &Path,
    results: &Path,
    events: &Path,
    artifacts_location: &str,
) -> Vec<(String, String)> {
    // Where the job's artifacts will be found once it ended: the published URL, or the local
    // directory as a file:// URL (a chained job on this host, such as an installation test
    // booting an ISO this task built, reads it there).
    let artifacts_url = if artifacts_location.contains("://") {
        format!("{}/", artifacts_location.trim_end_matches('/'))
    } else {
        format!("file://{}/", artifacts_location.trim_end_matches('/'))
    };
    let mut env = vec![
        ("TASKBOT_ITEM".to_string(), job.item.clone()),
        ("TASKBOT_ITEM_TYPE".to_string(), job.item_type.clone()),
        ("TASKBOT_ARCH".to_string(), job.arch.clone()),
        ("TASKBOT_JOB_ID".to_string(), job.job_id.to_string()),
        ("TASKBOT_WORKDIR".to_string(), workdir.display().to_string()),
        (
            "TASKBOT_ARTIFACTS".to_string(),
            // With the trailing slash, so `$TASKBOT_ARTIFACTS/x` and `${TASKBOT_ARTIFACTS}x`
            // both work.
            format!("{}/", artifacts.display()),
        ),
        ("TASKBOT_RESULTS".to_string(), results.display().to_string()),
        ("TASKBOT_EVENTS".to_string(), events.display().to_string()),
        ("TASKBOT_ARTIFACTS_URL".to_string(), artifacts_url),
    ];
    let args: &BTreeMap<String, String> = &job.args;
    for (key, value) in args {
        env.push((format!("TASKBOT_ARG_{}", env_key(key)), value.clone()));
    }
    env
}

fn env_key(key: &str) -> String {
    key.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// Run the task to its end, its time limit, or shutdown.
pub async fn run(task: &TaskCommand, shutdown: &mut Shutdown) -> RunEnd {
    let (mut child, pipe) = match start(task).await {
        Ok(started) => started,
        Err(reason) => return RunEnd::FailedToStart(reason),
    };
    let mut drain = tokio::spawn(task.output.clone().drain(pipe));
    // With process_group(0) the group id is the child's pid.
    let pgid = child.id();
    let end = tokio::select! {
        status = child.wait() => match status {
            Ok(status) => RunEnd::Exited(match task.confinement {
                Some(_) => exit_through_bwrap(exit_of(status)),
                None => exit_of(status),
            }),
            Err(e) => RunEnd::FailedToStart(format!("cannot wait for the task: {e}")),
        },
        _ = tokio::time::sleep(task.timeout) => RunEnd::TimedOut(task.timeout),
        _ = shutdown.wait() => RunEnd::Interrupted,
    };
    if let Some(pgid) = pgid {
        kill_group(pgid);
    }
    if !matches!(end, RunEnd::Exited(_)) {
        // Reap the shell so it does not linger as a zombie.
        let _ = child.wait().await;
    }
    if tokio::time::timeout(DRAIN_GRACE, &mut drain).await.is_err() {
        drain.abort();
        let _ = drain.await;
        task.output.line(format_args!(
            "\n[taskbot: output written more than {} s after the step ended is not kept]",
            DRAIN_GRACE.as_secs()
        ));
    }
    end
}

/// The step started, its stdout and stderr in one pipe (so their order is kept) whose reading
/// end is returned. `Err`: why it could not start.
async fn start(
    task: &TaskCommand,
) -> Result<(tokio::process::Child, tokio::net::unix::pipe::Receiver), String> {
    let (reader, stdout, stderr) =
        output_pipe().map_err(|e| format!("cannot make the step's output pipe: {e}"))?;
    let (mut command, secret_fds) = match &task.confinement {
        Some(confinement) => confined_command(task, confinement).await?,
        None => (unconfined_command(task), SecretFds::default()),
    };
    command
        .stdin(Stdio::null())
        .stdout(Stdio::from(stdout))
        .stderr(Stdio::from(stderr))
        .process_group(0)
        .kill_on_drop(true);
    let spawned = command.spawn();
    // Our copies of the pipe's writing end (held by the command) must go, or the output never
    // ends once the step's processes are gone; the secrets' descriptors are the child's now.
    drop((command, secret_fds));
    let child = spawned.map_err(|e| format!("cannot start sh: {e}"))?;
    Ok((child, reader))
}

/// A pipe for the step's stdout and stderr: the runner's reading end, and two writing ends.
fn output_pipe() -> std::io::Result<(tokio::net::unix::pipe::Receiver, OwnedFd, OwnedFd)> {
    let (reader, writer) = std::io::pipe()?;
    let writer = OwnedFd::from(writer);
    let second = writer.try_clone()?;
    let reader = tokio::net::unix::pipe::Receiver::from_owned_fd(OwnedFd::from(reader))?;
    Ok((reader, writer, second))
}

/// `sh -c` in the sandbox, once the step's writable directories belong to the sandbox user.
/// The descriptors of the job's secrets come with it, to keep open until it is spawned.
async fn confined_command(
    task: &TaskCommand,
    confinement: &Confinement,
) -> Result<(tokio::process::Command, SecretFds), String> {
    let (writable, sandbox) = (confinement.writable.clone(), confinement.sandbox.clone());
    tokio::task::spawn_blocking(move || sandbox.give(&writable))
        .await
        .map_err(|e| e.to_string())??;
    let secrets = SecretFds::new(&task.secrets)
        .map_err(|e| format!("cannot hand the job's secrets to the sandbox: {e}"))?;
    let step = Step {
        script: &task.script,
        cwd: &task.cwd,
        writable: &confinement.writable,
        protected: &confinement.protected,
        env: &task.env,
        secrets: &secrets,
    };
    Ok((confinement.sandbox.command(&step), secrets))
}

/// `sh -c` on the runner's host as the runner's user: only with `runner.sandbox = "none"` (or
/// for a VM job's `ssh`). The runner's own TASKBOT_* settings may hold secrets (the broker URL
/// with its password), so at least those are taken out of the environment.
fn unconfined_command(task: &TaskCommand) -> tokio::process::Command {
    let mut command = tokio::process::Command::new("sh");
    command.arg("-c").arg(&task.script).current_dir(&task.cwd);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("TASKBOT_") {
            command.env_remove(key);
        }
    }
    command.envs(task.env.iter().map(|(k, v)| (k, v)));
    command
}

fn exit_of(status: std::process::ExitStatus) -> TaskExit {
    match (status.code(), status.signal()) {
        (Some(code), _) => TaskExit::Code(code),
        (None, Some(signal)) => TaskExit::Signal(signal),
        // Neither happens on Unix; report something a person can recognise as odd.
        (None, None) => TaskExit::Code(-1),
    }
}

/// How the step's shell ended, from how bwrap ended: bwrap (the pid namespace's init) exits
/// with 128 + N when the shell was killed by signal N, the shells' own convention. A step that
/// itself `exit`s with such a code is read as killed by that signal.
fn exit_through_bwrap(exit: TaskExit) -> TaskExit {
    match exit {
        TaskExit::Code(code) if (129..=128 + 64).contains(&code) => TaskExit::Signal(code - 128),
        other => other,
    }
}

/// SIGKILL every process of the group. Errors are ignored: ESRCH means nothing was left.
fn kill_group(pgid: u32) {
    let Ok(pgid) = i32::try_from(pgid) else {
        return;
    };
    // Never signal group 0 (our own) or 1 (init): a negative of those would hit far too much.
    if pgid > 1 {
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::JobLog;
    use taskbot::messages::{JobRequest, TaskRef};

    fn never() -> Shutdown {
        Shutdown::new(std::future::pending())
    }

    fn command(dir: &Path, script: &str, timeout: Duration, log: &JobLog) -> TaskCommand {
        TaskCommand {
            script: script.into(),
            cwd: dir.to_path_buf(),
            env: vec![("TASKBOT_ITEM".into(), "xchat-1-1".into())],
            output: log.output(),
            timeout,
            confinement: None,
            secrets: Arc::from([]),
        }
    }

    async fn log_in(dir: &Path) -> JobLog {
        JobLog::create(&dir.join("task.log"), 1 << 20, Arc::default())
            .await
            .unwrap()
    }

    /// Run `task` to its end, then what its log holds.
    async fn run_and_read(task: TaskCommand, log: JobLog, dir: &Path) -> (RunEnd, String) {
        let end = run(&task, &mut never()).await;
        drop(task);
        log.close().await;
        (end, std::fs::read_to_string(dir.join("task.log")).unwrap())
    }

    #[tokio::test]
    async fn output_and_exit_code_are_captured() {
        let dir = tempfile::tempdir().unwrap();
        let log = log_in(dir.path()).await;
        let task = command(
            dir.path(),
            "echo out $TASKBOT_ITEM; echo err >&2; exit 3",
            Duration::from_secs(10),
            &log,
        );
        let (end, log) = run_and_read(task, log, dir.path()).await;
        assert_eq!(end, RunEnd::Exited(TaskExit::Code(3)));
        assert!(log.contains("out xchat-1-1\n"), "{log}");
        assert!(log.contains("err\n"), "{log}");
    }

    #[tokio::test]
    async fn runner_secrets_are_not_passed_on() {
        // Set for this test process only; no other test reads it.
        std::env::set_var("TASKBOT_AMQP__URL", "amqp://secret@broker");
        let dir = tempfile::tempdir().unwrap();
        let log = log_in(dir.path()).await;
        let task = command(
            dir.path(),
            "echo \"url=${TASKBOT_AMQP__URL:-unset}\"",
            Duration::from_secs(10),
            &log,
        );
        let (end, log) = run_and_read(task, log, dir.path()).await;
        assert_eq!(end, RunEnd::Exited(TaskExit::Code(0)));
        assert!(log.contains("url=unset"), "{log}");
    }

    #[tokio::test]
    async fn signal_death_is_reported_as_such() {
        let dir = tempfile::tempdir().unwrap();
        let log = log_in(dir.path()).await;
        let task = command(dir.path(), "kill -TERM $$", Duration::from_secs(10), &log);
        assert_eq!(
            run(&task, &mut never()).await,
            RunEnd::Exited(TaskExit::Signal(libc::SIGTERM))
        );
    }

    #[tokio::test]
    async fn timeout_kills_the_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("bg.pid");
        let log = log_in(dir.path()).await;
        let task = command(
            dir.path(),
            &format!("sleep 30 & echo $! > {}; wait", pid_file.display()),
            Duration::from_millis(500),
            &log,
        );
        let started = std::time::Instant::now();
        assert_eq!(
            run(&task, &mut never()).await,
            RunEnd::TimedOut(Duration::from_millis(500))
        );
        assert!(started.elapsed() < Duration::from_secs(5));
        let pid: i32 = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // SIGKILL is delivered asynchronously; give the kernel a moment to finish the process.
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        while !process_gone(pid) && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(process_gone(pid), "background sleep {pid} survived");
    }

    #[tokio::test]
    async fn shutdown_interrupts_the_task() {
        let dir = tempfile::tempdir().unwrap();
        let log = log_in(dir.path()).await;
        let task = command(dir.path(), "sleep 30", Duration::from_secs(60), &log);
        let mut shutdown = Shutdown::new(tokio::time::sleep(Duration::from_millis(300)));
        let started = std::time::Instant::now();
        assert_eq!(run(&task, &mut shutdown).await, RunEnd::Interrupted);
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn missing_directory_fails_to_start() {
        let dir = tempfile::tempdir().unwrap();
        let log = log_in(dir.path()).await;
        let mut task = command(dir.path(), "true", Duration::from_secs(10), &log);
        task.cwd = dir.path().join("nope");
        assert!(matches!(
            run(&task, &mut never()).await,
            RunEnd::FailedToStart(reason) if reason.contains("cannot start sh")
        ));
    }

    /// Dead, or a zombie waiting for a parent that is not us (in a container PID 1 may never
    /// reap): either way it no longer runs.
    fn process_gone(pid: i32) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(stat) => stat
                .rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
                .unwrap_or(false),
        }
    }

    #[test]
    fn env_has_job_fields_and_sanitised_args() {
        let task = TaskRef {
            name: "t".into(),
            repo: "file:///r".into(),
            git_ref: "main".into(),
        };
        let mut args = BTreeMap::new();
        args.insert("koji-tag".to_string(), "f40".to_string());
        let job = JobRequest {
            job_id: uuid::Uuid::nil(),
            args,
            ..taskbot::testing::job_request(task, "xchat-1-1", "x86_64")
        };
        let env: BTreeMap<String, String> = task_env(
            &job,
            Path::new("/w/c"),
            Path::new("/a/j"),
            Path::new("/w/c/results.yml"),
            Path::new("/a/j/events.jsonl"),
            "/srv/artifacts/j",
        )
        .into_iter()
        .collect();
        assert_eq!(env["TASKBOT_ITEM"], "xchat-1-1");
        assert_eq!(env["TASKBOT_ITEM_TYPE"], "koji_build");
        assert_eq!(env["TASKBOT_ARCH"], "x86_64");
        assert_eq!(env["TASKBOT_JOB_ID"], uuid::Uuid::nil().to_string());
        assert_eq!(env["TASKBOT_WORKDIR"], "/w/c");
        assert_eq!(env["TASKBOT_ARTIFACTS"], "/a/j/");
        assert_eq!(env["TASKBOT_RESULTS"], "/w/c/results.yml");
        assert_eq!(env["TASKBOT_EVENTS"], "/a/j/events.jsonl");
        assert_eq!(env["TASKBOT_ARTIFACTS_URL"], "file:///srv/artifacts/j/");
        assert_eq!(env["TASKBOT_ARG_KOJI_TAG"], "f40");
        assert_eq!(env.len(), 10);
        let published = task_env(
            &job,
            Path::new("/w/c"),
            Path::new("/a/j"),
            Path::new("/w/c/results.yml"),
            Path::new("/a/j/events.jsonl"),
            "https://taskbot.example/artifacts/j",
        );
        assert!(published.contains(&(
            "TASKBOT_ARTIFACTS_URL".into(),
            "https://taskbot.example/artifacts/j/".into()
        )));
    }
}
