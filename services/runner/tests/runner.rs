//! The runner against the real RabbitMQ: provisioned jobs go in on the run exchange, results and
//! job statuses are read from taps on the results exchange. Task repositories are real git
//! repositories built in temporary directories, cloned over `file://`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::Utc;
use git2::{Oid, Repository, RepositoryInitOptions, Signature};
use taskbot::amqp::REASON_HEADER;
use taskbot::messages::{
    JobRequest, JobState, JobStatus, Machine, Message, Outcome, ProvisionedJob, TaskRef, TaskResult,
};
use taskbot::testing::{test_config, TestBroker};
use taskbot::{Config, Shutdown};
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const WAIT: Duration = Duration::from_secs(30);

/// One test's world: a namespace on the broker, taps on the results exchange, and directories for
/// task repositories, clones and artifacts.
struct World {
    broker: TestBroker,
    config: Config,
    dirs: TempDir,
    results_tap: String,
    status_tap: String,
}

impl World {
    async fn new(arch: &str) -> World {
        let dirs = tempfile::tempdir().unwrap();
        let mut config = test_config();
        config.runner.arch = Some(arch.into());
        config.runner.allowed_repos =
            vec![format!("file://{}", dirs.path().join("repos").display())];
        config.runner.work_dir = dirs.path().join("work");
        config.runner.artifacts_dir = dirs.path().join("artifacts");
        config.runner.task_timeout_secs = 30;
        let broker = TestBroker::new(&config).await;
        let results_tap = broker
            .tap(&broker.topology.results_exchange(), "result.#")
            .await;
        let status_tap = broker
            .tap(&broker.topology.results_exchange(), "job.#")
            .await;
        World {
            broker,
            config,
            dirs,
            results_tap,
            status_tap,
        }
    }

    fn repos(&self) -> PathBuf {
        self.dirs.path().join("repos")
    }

    fn work_dir(&self) -> PathBuf {
        self.config.runner.work_dir.clone()
    }

    fn job_artifacts(&self, job: &ProvisionedJob) -> PathBuf {
        self.config
            .runner
            .artifacts_dir
            .join(job.job.job_id.to_string())
    }

    /// A runner for `arch` in this world, running in-process until stopped.
    fn start_runner(&self, arch: &str) -> RunningRunner {
        let mut config = self.config.clone();
        config.runner.arch = Some(arch.into());
        let (stop, stopped) = oneshot::channel::<()>();
        let shutdown = Shutdown::new(async move {
            let _ = stopped.await;
        });
        RunningRunner {
            stop,
            handle: tokio::spawn(taskbot_runner::run(config, shutdown)),
        }
    }

    async fn submit(&self, job: &ProvisionedJob) {
        self.broker
            .publish(
                &self.broker.topology.run_exchange(),
                &job.job.arch,
                job.to_json(),
            )
            .await;
    }

    /// The job's results, once its final status arrived.
    async fn results(&self, job: &ProvisionedJob, count: usize) -> Vec<TaskResult> {
        let mut results = Vec::new();
        let deadline = Instant::now() + WAIT;
        while results.len() < count && Instant::now() < deadline {
            if let Some(msg) = self
                .broker
                .get(&self.results_tap, Duration::from_secs(1))
                .await
            {
                let result = TaskResult::from_json(&msg.body).unwrap();
                assert_eq!(msg.routing_key, result.routing_key());
                if result.job_id == job.job.job_id {
                    results.push(result);
                }
            }
        }
        assert_eq!(results.len(), count, "results of job {}", job.job.job_id);
        results
    }

    /// The job's statuses up to and including its final one.
    async fn statuses(&self, job: &ProvisionedJob) -> Vec<JobStatus> {
        let mut statuses: Vec<JobStatus> = Vec::new();
        let deadline = Instant::now() + WAIT;
        while !statuses.last().is_some_and(|s| s.state.is_final()) {
            assert!(
                Instant::now() < deadline,
                "no final status for job {}; got {:?}",
                job.job.job_id,
                states(&statuses)
            );
            if let Some(msg) = self
                .broker
                .get(&self.status_tap, Duration::from_secs(1))
                .await
            {
                let status = JobStatus::from_json(&msg.body).unwrap();
                assert_eq!(msg.routing_key, status.routing_key());
                if status.job_id == job.job.job_id {
                    statuses.push(status);
                }
            }
        }
        statuses
    }

    /// Statuses and results of a job that should end, with the checks every ending shares.
    async fn outcome_of(
        &self,
        job: &ProvisionedJob,
        results: usize,
    ) -> (Vec<JobState>, Vec<TaskResult>) {
        let statuses = self.statuses(job).await;
        let results = self.results(job, results).await;
        for s in &statuses {
            assert_eq!(s.job, job.job, "every status carries the whole job request");
            assert!(
                s.service.starts_with(&format!("runner/{}@", job.job.arch)),
                "{}",
                s.service
            );
        }
        for r in &results {
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
        let clones: Vec<_> = std::fs::read_dir(self.work_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.starts_with(&prefix))
            .collect();
        assert!(clones.is_empty(), "the clone was not removed: {clones:?}");
        (states(&statuses), results)
    }

    async fn finish(self, runners: Vec<RunningRunner>) {
        for runner in runners {
            runner.stop().await;
        }
        assert_eq!(
            std::fs::read_dir(self.work_dir()).unwrap().count(),
            0,
            "no clone is left behind"
        );
        self.broker.cleanup().await;
    }
}

struct RunningRunner {
    stop: oneshot::Sender<()>,
    handle: JoinHandle<anyhow::Result<()>>,
}

impl RunningRunner {
    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(WAIT, self.handle)
            .await
            .expect("runner stops on shutdown")
            .unwrap()
            .unwrap();
    }
}

fn states(statuses: &[JobStatus]) -> Vec<JobState> {
    statuses.iter().map(|s| s.state).collect()
}

/// Commit `files` (path, content) on `main` of the repository at `path`, creating it if needed.
fn commit(path: &Path, files: &[(&str, &str)]) -> Oid {
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

/// A task repository under the world's allowed directory; returns its clone URL.
fn task_repo(world: &World, name: &str, files: &[(&str, &str)]) -> String {
    let path = world.repos().join(name);
    commit(&path, files);
    format!("file://{}", path.display())
}

/// The files of `tasks/example`, the example task shipped with Taskbot.
fn example_task_files() -> Vec<(String, String)> {
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

fn job(name: &str, repo: &str, git_ref: &str, item: &str, arch: &str) -> ProvisionedJob {
    job_with_args(name, repo, git_ref, item, arch, BTreeMap::new())
}

fn job_with_args(
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

const FULL_LIFE: [JobState; 4] = [
    JobState::Cloning,
    JobState::Running,
    JobState::Reporting,
    JobState::Done,
];

#[tokio::test]
async fn example_task_passes_a_good_nvr_and_fails_a_broken_one() {
    let mut world = World::new("x86_64").await;
    world.config.runner.artifacts_url = Some("https://artifacts.example/taskbot/".into());
    let files = example_task_files();
    let files: Vec<(&str, &str)> = files
        .iter()
        .map(|(n, c)| (n.as_str(), c.as_str()))
        .collect();
    let repo = task_repo(&world, "example", &files);
    let runner = world.start_runner("x86_64");

    let good = job("example", &repo, "main", "xchat-0.5-1.fc20", "x86_64");
    let broken = job("example", &repo, "main", "broken-pkg-1.0-1.fc40", "x86_64");
    world.submit(&good).await;
    world.submit(&broken).await;

    let (states, results) = world.outcome_of(&good, 1).await;
    assert_eq!(states, FULL_LIFE);
    let r = &results[0];
    assert_eq!(r.outcome, Outcome::Passed);
    assert_eq!(r.testcase, "dist.example");
    assert_eq!(
        (r.item.as_str(), r.item_type.as_str(), r.arch.as_str()),
        ("xchat-0.5-1.fc20", "koji_build", "x86_64")
    );
    assert_eq!(
        r.note.as_deref(),
        Some("name=xchat version=0.5 release=1.fc20")
    );
    assert_eq!(r.data["nvr_name"], "xchat");
    assert_eq!(r.data["nvr_version"], "0.5");
    assert_eq!(r.data["nvr_release"], "1.fc20");
    let base = format!("https://artifacts.example/taskbot/{}", good.job.job_id);
    assert_eq!(r.data["artifact"], format!("{base}/nvr.txt"));
    assert_eq!(
        r.log_url.as_deref(),
        Some(format!("{base}/task.log").as_str())
    );
    assert!(r.runner.starts_with("runner/x86_64@"), "{}", r.runner);
    let artifacts = world.job_artifacts(&good);
    let log = std::fs::read_to_string(artifacts.join("task.log")).unwrap();
    assert!(
        log.contains("checking koji_build xchat-0.5-1.fc20 on x86_64"),
        "{log}"
    );
    assert!(std::fs::read_to_string(artifacts.join("nvr.txt"))
        .unwrap()
        .contains("release: 1.fc20"));

    let (states, results) = world.outcome_of(&broken, 1).await;
    assert_eq!(states, FULL_LIFE);
    assert_eq!(results[0].outcome, Outcome::Failed);
    assert_eq!(
        results[0].note.as_deref(),
        Some("name=broken-pkg version=1.0 release=1.fc40: the item says it is broken")
    );
    world.finish(vec![runner]).await;
}

#[tokio::test]
async fn task_without_results_file_fails_with_its_exit_code() {
    let world = World::new("x86_64").await;
    let repo = task_repo(
        &world,
        "exit1",
        &[(
            "taskbot.yaml",
            "name: exit1\nrun: 'echo \"mode=$TASKBOT_ARG_MODE item=$TASKBOT_ITEM\"; exit 1'\n",
        )],
    );
    let runner = world.start_runner("x86_64");
    let args: BTreeMap<String, String> = [("mode".to_string(), "strict".to_string())].into();
    let failing = job_with_args("dist.exit1", &repo, "main", "pkg-1-1", "x86_64", args);
    world.submit(&failing).await;

    let (states, results) = world.outcome_of(&failing, 1).await;
    assert_eq!(states, FULL_LIFE);
    let r = &results[0];
    assert_eq!(r.outcome, Outcome::Failed);
    assert_eq!(r.note.as_deref(), Some("exit code 1"));
    assert_eq!(
        r.testcase, "dist.exit1",
        "the job's task name is the default testcase"
    );
    let log_path = world.job_artifacts(&failing).join("task.log");
    assert_eq!(
        r.log_url.as_deref(),
        Some(log_path.display().to_string().as_str())
    );
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(log.contains("mode=strict item=pkg-1-1"), "{log}");
    world.finish(vec![runner]).await;
}

#[tokio::test]
async fn task_past_its_timeout_is_aborted_and_its_process_group_killed() {
    let mut world = World::new("x86_64").await;
    // The runner's cap (2 s) wins over the task's own, longer timeout.
    world.config.runner.task_timeout_secs = 2;
    let repo = task_repo(
        &world,
        "sleeper",
        &[(
            "taskbot.yaml",
            "name: sleeper\ntimeout: 600\nrun: 'sleep 60 & echo $! > \"${TASKBOT_ARTIFACTS}bg.pid\"; echo started; sleep 60'\n",
        )],
    );
    let runner = world.start_runner("x86_64");
    let sleeper = job("sleeper", &repo, "main", "pkg-1-1", "x86_64");
    let started = Instant::now();
    world.submit(&sleeper).await;

    let (states, results) = world.outcome_of(&sleeper, 1).await;
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(states, FULL_LIFE);
    assert_eq!(results[0].outcome, Outcome::Aborted);
    assert_eq!(results[0].note.as_deref(), Some("timed out after 2s"));
    let pid: i32 = std::fs::read_to_string(world.job_artifacts(&sleeper).join("bg.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !process_gone(pid) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        process_gone(pid),
        "the task's background process {pid} survived"
    );
    world.finish(vec![runner]).await;
}

/// Dead, or a zombie waiting to be reaped by an init that may never do it: either way not running.
fn process_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

#[tokio::test]
async fn repository_outside_the_allowlist_crashes_without_cloning() {
    let world = World::new("x86_64").await;
    // A real repository, so that only the allowlist can stop it.
    let elsewhere = tempfile::tempdir().unwrap();
    commit(
        elsewhere.path(),
        &[(
            "taskbot.yaml",
            "name: t\nrun: touch /tmp/should-never-run\n",
        )],
    );
    let url = format!("file://{}", elsewhere.path().display());
    let runner = world.start_runner("x86_64");
    let foreign = job("foreign", &url, "main", "pkg-1-1", "x86_64");
    world.submit(&foreign).await;

    let (states, results) = world.outcome_of(&foreign, 1).await;
    assert_eq!(
        states,
        [JobState::Cloning, JobState::Reporting, JobState::Crashed]
    );
    let r = &results[0];
    assert_eq!(r.outcome, Outcome::Crashed);
    assert_eq!(
        r.note.as_deref(),
        Some(format!("repository {url} is not in runner.allowed_repos").as_str())
    );
    assert_eq!(r.testcase, "foreign");
    assert_eq!(r.log_url, None, "nothing ran, so there is no log");
    assert!(!world.job_artifacts(&foreign).exists());
    world.finish(vec![runner]).await;
}

#[tokio::test]
async fn missing_ref_or_repository_crashes_saying_which() {
    let world = World::new("x86_64").await;
    let repo = task_repo(
        &world,
        "real",
        &[("taskbot.yaml", "name: t\nrun: 'true'\n")],
    );
    let runner = world.start_runner("x86_64");
    let no_ref = job("real", &repo, "no-such-branch", "pkg-1-1", "x86_64");
    let missing_url = format!("file://{}", world.repos().join("missing").display());
    let no_repo = job("missing", &missing_url, "main", "pkg-1-1", "x86_64");
    world.submit(&no_ref).await;
    world.submit(&no_repo).await;

    let (states, results) = world.outcome_of(&no_ref, 1).await;
    assert_eq!(
        states,
        [JobState::Cloning, JobState::Reporting, JobState::Crashed]
    );
    assert_eq!(results[0].outcome, Outcome::Crashed);
    assert_eq!(
        results[0].note.as_deref(),
        Some(
            format!(
                "ref no-such-branch not found in repository {repo} (tried branch, tag and commit)"
            )
            .as_str()
        )
    );

    let (states, results) = world.outcome_of(&no_repo, 1).await;
    assert_eq!(
        states,
        [JobState::Cloning, JobState::Reporting, JobState::Crashed]
    );
    let note = results[0].note.clone().unwrap();
    assert!(
        note.starts_with(&format!("cannot clone repository {missing_url}:")),
        "{note}"
    );
    world.finish(vec![runner]).await;
}

#[tokio::test]
async fn invalid_taskbot_yaml_crashes_with_its_position() {
    let world = World::new("x86_64").await;
    let repo = task_repo(
        &world,
        "typo",
        &[("taskbot.yaml", "name: typo\ncomand: 'true'\n")],
    );
    let bare = task_repo(&world, "bare", &[("README", "no task file here\n")]);
    let runner = world.start_runner("x86_64");
    let typo = job("typo", &repo, "main", "pkg-1-1", "x86_64");
    let no_file = job("bare", &bare, "main", "pkg-1-1", "x86_64");
    world.submit(&typo).await;
    world.submit(&no_file).await;

    let (states, results) = world.outcome_of(&typo, 1).await;
    assert_eq!(
        states,
        [JobState::Cloning, JobState::Reporting, JobState::Crashed]
    );
    let note = results[0].note.clone().unwrap();
    assert!(
        note.starts_with("invalid taskbot.yaml: unknown field `comand`"),
        "{note}"
    );
    assert!(note.ends_with("at line 2 column 1"), "{note}");

    let (_, results) = world.outcome_of(&no_file, 1).await;
    assert_eq!(
        results[0].note.as_deref(),
        Some("the repository has no taskbot.yaml at its root")
    );
    world.finish(vec![runner]).await;
}

#[tokio::test]
async fn invalid_results_file_crashes_quoting_the_log() {
    let world = World::new("x86_64").await;
    let repo = task_repo(
        &world,
        "badresults",
        &[(
            "taskbot.yaml",
            "name: badresults\nrun: |\n  echo 'step one done'\n  printf 'results:\\n  - outcome: PASSED\\n' > \"$TASKBOT_RESULTS\"\n",
        )],
    );
    let runner = world.start_runner("x86_64");
    let bad = job("badresults", &repo, "main", "pkg-1-1", "x86_64");
    world.submit(&bad).await;

    let (states, results) = world.outcome_of(&bad, 1).await;
    assert_eq!(
        states,
        [
            JobState::Cloning,
            JobState::Running,
            JobState::Reporting,
            JobState::Crashed
        ]
    );
    let r = &results[0];
    assert_eq!(r.outcome, Outcome::Crashed);
    let note = r.note.clone().unwrap();
    assert!(
        note.starts_with("invalid results file: results[0]: missing field `item` at line 2"),
        "{note}"
    );
    let (_, tail) = note
        .split_once("\n--- end of task.log ---\n")
        .expect("log quoted");
    assert!(tail.ends_with("\nstep one done"), "{tail}");
    assert!(r.log_url.is_some());
    world.finish(vec![runner]).await;
}

#[tokio::test]
async fn several_results_at_a_tag_with_the_task_environment() {
    let world = World::new("x86_64").await;
    let path = world.repos().join("multi");
    commit(
        &path,
        &[(
            "taskbot.yaml",
            r#"name: multi
results: out/results.yml
run: |
  mkdir -p out
  cat > "$TASKBOT_RESULTS" <<EOF
  results:
    - {item: "$TASKBOT_ITEM", type: "$TASKBOT_ITEM_TYPE", checkname: multi.one, outcome: PASSED, job: "$TASKBOT_JOB_ID", workdir: "$TASKBOT_WORKDIR", results: "$TASKBOT_RESULTS"}
    - {item: other-1-1, type: koji_build, checkname: multi.two, note: "$TASKBOT_ARCH", arch: noarch}
  EOF
"#,
        )],
    );
    let tagged = commit(&path, &[]);
    let repository = Repository::open(&path).unwrap();
    repository
        .tag_lightweight("v1", &repository.find_object(tagged, None).unwrap(), false)
        .unwrap();
    // What is on main after the tag must not be what runs.
    commit(&path, &[("taskbot.yaml", "name: multi\nrun: exit 3\n")]);
    let repo = format!("file://{}", path.display());
    let runner = world.start_runner("x86_64");
    let multi = job("multi", &repo, "v1", "pkg-2.0-1.fc40", "x86_64");
    world.submit(&multi).await;

    let (states, results) = world.outcome_of(&multi, 2).await;
    assert_eq!(states, FULL_LIFE);
    let one = results.iter().find(|r| r.testcase == "multi.one").unwrap();
    let two = results.iter().find(|r| r.testcase == "multi.two").unwrap();
    assert_eq!(one.outcome, Outcome::Passed);
    assert_eq!(
        (one.item.as_str(), one.item_type.as_str()),
        ("pkg-2.0-1.fc40", "koji_build")
    );
    assert_eq!(one.data["job"], multi.job.job_id.to_string());
    let workdir = one.data["workdir"].as_str().unwrap();
    assert!(
        Path::new(workdir).starts_with(world.work_dir()),
        "{workdir}"
    );
    assert_eq!(one.data["results"], format!("{workdir}/out/results.yml"));
    assert_eq!(two.outcome, Outcome::NeedsInspection);
    assert_eq!(
        (two.item.as_str(), two.arch.as_str()),
        ("other-1-1", "noarch")
    );
    assert_eq!(two.note.as_deref(), Some("x86_64"));
    world.finish(vec![runner]).await;
}

#[tokio::test]
async fn malformed_job_is_dead_lettered_with_the_reason() {
    let world = World::new("x86_64").await;
    let runner = world.start_runner("x86_64");
    world
        .broker
        .publish(
            &world.broker.topology.run_exchange(),
            "x86_64",
            b"{not json".to_vec(),
        )
        .await;
    let run_queue = world.broker.topology.run_queue("x86_64");
    let dead = world
        .broker
        .get(&world.broker.topology.dead_letter_queue(&run_queue), WAIT)
        .await
        .expect("dead letter");
    assert_eq!(dead.body, b"{not json");
    let reason = dead.header(REASON_HEADER).unwrap();
    assert!(reason.starts_with("body is not valid JSON"), "{reason}");
    world.finish(vec![runner]).await;
}

#[tokio::test]
async fn job_is_taken_only_by_the_runner_of_its_arch() {
    let world = World::new("aarch64").await;
    let repo = task_repo(
        &world,
        "ok",
        &[("taskbot.yaml", "name: ok\nrun: 'uname -m'\n")],
    );
    let aarch64_runner = world.start_runner("aarch64");
    let x86_job = job("ok", &repo, "main", "pkg-1-1", "x86_64");
    let aarch64_job = job("ok", &repo, "main", "pkg-1-1", "aarch64");
    world.submit(&x86_job).await;
    world.submit(&aarch64_job).await;

    // The aarch64 job runs...
    let (states, _) = world.outcome_of(&aarch64_job, 1).await;
    assert_eq!(states, FULL_LIFE);
    // ...while the x86_64 one waits untouched on its own queue.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let x86_queue = world.broker.topology.run_queue("x86_64");
    assert_eq!(world.broker.depth(&x86_queue).await, 1);
    assert!(world
        .broker
        .get(&world.status_tap, Duration::from_millis(500))
        .await
        .is_none());

    // Until a runner for x86_64 comes.
    let x86_runner = world.start_runner("x86_64");
    let (states, results) = world.outcome_of(&x86_job, 1).await;
    assert_eq!(states, FULL_LIFE);
    assert!(results[0].runner.starts_with("runner/x86_64@"));
    assert_eq!(world.broker.depth(&x86_queue).await, 0);
    world.finish(vec![aarch64_runner, x86_runner]).await;
}

#[tokio::test]
async fn shutdown_kills_the_task_and_hands_the_job_back() {
    let world = World::new("x86_64").await;
    let repo = task_repo(
        &world,
        "long",
        &[("taskbot.yaml", "name: long\nrun: sleep 60\n")],
    );
    let runner = world.start_runner("x86_64");
    let long = job("long", &repo, "main", "pkg-1-1", "x86_64");
    world.submit(&long).await;

    // Wait until it runs.
    let deadline = Instant::now() + WAIT;
    loop {
        assert!(Instant::now() < deadline, "the task never started");
        if let Some(msg) = world
            .broker
            .get(&world.status_tap, Duration::from_secs(1))
            .await
        {
            if JobStatus::from_json(&msg.body).unwrap().state == JobState::Running {
                break;
            }
        }
    }
    let stopping = Instant::now();
    runner.stop().await;
    assert!(
        stopping.elapsed() < Duration::from_secs(15),
        "{:?}",
        stopping.elapsed()
    );

    let run_queue = world.broker.topology.run_queue("x86_64");
    assert_eq!(
        world.broker.depth(&run_queue).await,
        1,
        "the job is back on its queue"
    );
    assert!(
        world
            .broker
            .get(&world.results_tap, Duration::from_millis(200))
            .await
            .is_none(),
        "no result for an interrupted job"
    );
    assert_eq!(std::fs::read_dir(world.work_dir()).unwrap().count(), 0);
    world.finish(vec![]).await;
}
