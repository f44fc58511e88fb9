//! What the runner's tests share: task repositories built in temporary directories (cloned over
//! `file://`), provisioned jobs for them, and the checks every ending of a job shares, whether it
//! ran through the broker (`runner.rs`) or without one (`job.rs`).

// Each test binary uses its own part of this module.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chrono::Utc;
use git2::{Oid, Repository, RepositoryInitOptions, Signature};
use taskbot::config::RunnerConfig;
use taskbot::messages::{
    JobRequest, JobState, JobStatus, Machine, ProvisionedJob, TaskRef, TaskResult,
};
use tempfile::TempDir;

/// The statuses of a job that ran to its verdict.
pub const FULL_LIFE: [JobState; 4] = [
    JobState::Cloning,
    JobState::Running,
    JobState::Reporting,
    JobState::Done,
];

/// The statuses of a job that crashed while it ran (a download, a step, its results).
pub const CRASHED_RUNNING: [JobState; 4] = [
    JobState::Cloning,
    JobState::Running,
    JobState::Reporting,
    JobState::Crashed,
];

/// The statuses of a job that crashed before its task ran (refused, no clone, no task file).
pub const CRASHED_BEFORE_RUNNING: [JobState; 3] =
    [JobState::Cloning, JobState::Reporting, JobState::Crashed];

/// A test's directories: task repositories, and the runner's clones, mirrors and artifacts.
pub struct Dirs {
    root: TempDir,
}

impl Dirs {
    pub fn new() -> Dirs {
        let root = tempfile::tempdir().unwrap();
        // The sandbox user must be able to reach the work and artifacts directories below.
        std::fs::set_permissions(
            root.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        Dirs { root }
    }

    /// Where task repositories are made; the runner is allowed to clone from there only.
    pub fn repos(&self) -> PathBuf {
        self.root.path().join("repos")
    }

    /// Point `runner` at these directories, with a task time limit of 30 s.
    pub fn configure(&self, runner: &mut RunnerConfig) {
        runner.allowed_repos = vec![format!("file://{}", self.repos().display())];
        runner.work_dir = self.root.path().join("work");
        runner.artifacts_dir = self.root.path().join("artifacts");
        runner.mirror_dir = self.root.path().join("mirrors");
        runner.task_timeout_secs = 30;
    }

    /// A task repository `name` with `files` (path, content); returns its clone URL.
    pub fn repo(&self, name: &str, files: &[(&str, &str)]) -> String {
        let path = self.repos().join(name);
        commit(&path, files);
        format!("file://{}", path.display())
    }

    /// A task repository `name` holding only `taskbot.yaml`; returns its clone URL.
    pub fn task(&self, name: &str, taskbot_yaml: &str) -> String {
        self.repo(name, &[("taskbot.yaml", taskbot_yaml)])
    }
}

/// Commit `files` (path, content) on `main` of the repository at `path`, creating it if needed.
pub fn commit(path: &Path, files: &[(&str, &str)]) -> Oid {
    let repo = Repository::open(path).unwrap_or_else(|_| {
        let mut opts = RepositoryInitOptions::new();
        opts.initial_head("main");
        Repository::init_opts(path, &opts).unwrap()
    });
    for (name, content) in files {
        let file = path.join(name);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(file, content).unwrap();
    }
    let mut index = repo.index().unwrap();
    index
        .add_all(["*"], git2::IndexAddOption::DEFAULT, None)
        .unwrap();
    index.write().unwrap();
    let tree = repo.find_tree(index.write_tree().unwrap()).unwrap();
    let sig = Signature::now("Taskbot Test", "test@example.org").unwrap();
    let parent = repo.head().ok().and_then(|h| h.peel_to_commit().ok());
    let parents: Vec<&git2::Commit> = parent.iter().collect();
    repo.commit(Some("HEAD"), &sig, &sig, "test", &tree, &parents)
        .unwrap()
}

/// The files of `tasks/example`, the example task shipped with Taskbot.
pub fn example_task_files() -> Vec<(String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tasks/example");
    let mut files: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| {
            let entry = entry.unwrap();
            (
                entry.file_name().to_string_lossy().into_owned(),
                std::fs::read_to_string(entry.path()).unwrap(),
            )
        })
        .collect();
    files.sort();
    assert!(files.iter().any(|(name, _)| name == "taskbot.yaml"));
    files
}

/// A job of task `name` in `repo` at `git_ref` on `item`, provisioned on the runner's host.
pub fn job(name: &str, repo: &str, git_ref: &str, item: &str, arch: &str) -> ProvisionedJob {
    job_with_args(name, repo, git_ref, item, arch, BTreeMap::new())
}

/// [`job`] with job arguments (`{{ args.x }}`, `$TASKBOT_ARG_X`).
pub fn job_with_args(
    name: &str,
    repo: &str,
    git_ref: &str,
    item: &str,
    arch: &str,
    args: BTreeMap<String, String>,
) -> ProvisionedJob {
    let task = TaskRef {
        name: name.into(),
        repo: repo.into(),
        git_ref: git_ref.into(),
    };
    let mut job = taskbot::testing::job_request(task, item, arch);
    job.job_id = JobRequest::derive_id(&job.event_id, &job.rule, &job.task, item, arch, &args);
    job.args = args;
    ProvisionedJob {
        job,
        machine: Machine::Local,
        provisioner: "local".into(),
        provisioned_at: Utc::now(),
    }
}

/// `[("key", "value")]` as job arguments.
pub fn args(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub fn states(statuses: &[JobStatus]) -> Vec<JobState> {
    statuses.iter().map(|s| s.state).collect()
}

/// The checks every ending of `job` shares: statuses and results say which job, runner and rule
/// they are about, result ids are derived, and the clone (in `work_dir`) is gone.
pub fn check_ending(
    job: &ProvisionedJob,
    statuses: &[JobStatus],
    results: &[TaskResult],
    work_dir: &Path,
) {
    // Stores order a job's history by the statuses' own times: in the order they were sent.
    for pair in statuses.windows(2) {
        assert!(
            pair[0].at <= pair[1].at,
            "{} at {} is sent before {} at {}",
            pair[0].state,
            pair[0].at,
            pair[1].state,
            pair[1].at
        );
    }
    for s in statuses {
        assert_eq!(s.job, job.job, "every status carries the whole job request");
        assert!(
            s.service.starts_with(&format!("runner/{}@", job.job.arch)),
            "{}",
            s.service
        );
    }
    for r in results {
        assert_eq!(r.task, job.job.task);
        assert_eq!(r.rule, job.job.rule);
        assert_eq!(r.event_id, job.job.event_id);
        assert_eq!(
            r.result_id,
            TaskResult::derive_id(r.job_id, &r.testcase, &r.item, &r.item_type, &r.arch)
        );
    }
    // Clones are named after their job; the runner may already be cloning the next job.
    let prefix = job.job.job_id.to_string();
    let clones: Vec<_> = std::fs::read_dir(work_dir)
        .map(|entries| {
            entries
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|name| name.starts_with(&prefix))
                .collect()
        })
        .unwrap_or_default();
    assert!(clones.is_empty(), "the clone was not removed: {clones:?}");
}

/// A minimal HTTP/1.1 server for downloads: `answer(path, n)` gives the status and body of the
/// n-th request (from 0). Returns the base URL.
pub async fn http_server(
    answer: impl Fn(&str, usize) -> (u16, Vec<u8>) + Send + Sync + 'static,
) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let answer = std::sync::Arc::new(answer);
    tokio::spawn(async move {
        let mut n = 0;
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let (answer, count) = (answer.clone(), n);
            n += 1;
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(k) => seen.extend_from_slice(&buf[..k]),
                    }
                }
                let request = String::from_utf8_lossy(&seen).into_owned();
                let path = request.split(' ').nth(1).unwrap_or("/").to_string();
                let (status, body) = answer(&path, count);
                let head = format!(
                    "HTTP/1.1 {status} X\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                );
                let _ = sock.write_all(head.as_bytes()).await;
                let _ = sock.write_all(&body).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    format!("http://{addr}")
}

pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The sandbox a runner uses by default (bubblewrap, as `taskbot-task`, which
/// `scripts/ensure-services.sh` creates), so the job tests run their tasks confined, as in
/// production.
pub fn sandbox() -> Option<std::sync::Arc<taskbot_runner::sandbox::Sandbox>> {
    let defaults = RunnerConfig::default();
    let (uid, gid) = taskbot_runner::sandbox::resolve_user(&defaults.sandbox_user)
        .expect("the sandbox user exists (make test creates it)");
    Some(std::sync::Arc::new(taskbot_runner::sandbox::Sandbox {
        uid,
        gid,
        network: true,
        read_only: defaults.sandbox_read_only,
        hidden: defaults.sandbox_hidden,
        program: "bwrap".into(),
    }))
}
