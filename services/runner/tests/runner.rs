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
    /// Messages read from the taps that belong to another job than the one being waited for:
    /// jobs run at once interleave their messages.
    other_results: std::sync::Mutex<Vec<TaskResult>>,
    other_statuses: std::sync::Mutex<Vec<JobStatus>>,
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
        config.runner.mirror_dir = dirs.path().join("mirrors");
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
            other_results: Default::default(),
            other_statuses: Default::default(),
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
        let mut results: Vec<TaskResult> = {
            let mut others = self.other_results.lock().unwrap();
            let (mine, rest) = others.drain(..).partition(|r| r.job_id == job.job.job_id);
            *others = rest;
            mine
        };
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
                } else {
                    self.other_results.lock().unwrap().push(result);
                }
            }
        }
        assert_eq!(results.len(), count, "results of job {}", job.job.job_id);
        results
    }

    /// The job's statuses up to and including its final one.
    async fn statuses(&self, job: &ProvisionedJob) -> Vec<JobStatus> {
        let mut statuses: Vec<JobStatus> = {
            let mut others = self.other_statuses.lock().unwrap();
            let (mine, rest) = others.drain(..).partition(|s| s.job_id == job.job.job_id);
            *others = rest;
            mine
        };
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
                } else {
                    self.other_statuses.lock().unwrap().push(status);
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
    assert_eq!(
        results[0].note.as_deref(),
        Some("step run timed out: the task's time limit of 2s passed")
    );
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
    assert!(
        tail.contains("\nstep one done\n== step 01-run.log: exit code 0 after"),
        "{tail}"
    );
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

/// A minimal HTTP/1.1 server for downloads: `answer(path, n)` gives the status and body of the
/// n-th request (from 0). Returns the base URL.
async fn http_server(
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

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test]
async fn v1_task_downloads_prepares_runs_steps_keeps_artifacts_and_cleans_up() {
    let world = World::new("x86_64").await;
    let rpm = b"pretend this is an rpm\n".to_vec();
    let served = rpm.clone();
    // The first request fails with 503: downloads retry server errors.
    let base = http_server(move |path, n| match (path, n) {
        (_, 0) => (503, b"busy".to_vec()),
        ("/builds/pkg-1.0-1.fc40/x86_64.rpm", _) => (200, served.clone()),
        _ => (404, Vec::new()),
    })
    .await;
    let yaml = format!(
        r#"name: v1
maintainer: QA <qa@example.org>
item_types: [koji_build]
arches: [x86_64]
environment: {{packages: [coreutils], provision: local, destructive: false}}
timeout: 60
downloads:
  - url: "{base}/builds/{{{{ item }}}}/{{{{ arch }}}}.rpm"
    sha256: "{sum}"
    max_bytes: 1000
    dest: "rpms/{{{{ item }}}}.rpm"
prepare:
  - mkdir -p out
  - {{run: "echo tag={{{{ args.tag }}}} > out/prepared.txt", name: setup, timeout: 10}}
run:
  - {{run: "cat rpms/*.rpm > out/copy.log; echo checked {{{{ item }}}}", name: check}}
  - test -s out/copy.log
artifacts: ["out/*.log", "out/prepared.txt", "missing/*"]
cleanup:
  - "echo cleaned > \"${{TASKBOT_ARTIFACTS}}cleaned.txt\""
testcase: dist.v1
"#,
        sum = sha256_hex(&rpm)
    );
    let repo = task_repo(&world, "v1", &[("taskbot.yaml", &yaml)]);
    let runner = world.start_runner("x86_64");
    let args: BTreeMap<String, String> = [("tag".to_string(), "f40".to_string())].into();
    let v1 = job_with_args("v1", &repo, "main", "pkg-1.0-1.fc40", "x86_64", args);
    world.submit(&v1).await;

    let (states, results) = world.outcome_of(&v1, 1).await;
    assert_eq!(states, FULL_LIFE);
    let r = &results[0];
    assert_eq!(
        (r.outcome, r.testcase.as_str(), r.note.as_deref()),
        (Outcome::Passed, "dist.v1", Some("exit code 0"))
    );
    let artifacts = world.job_artifacts(&v1);
    let read = |p: &str| std::fs::read_to_string(artifacts.join(p)).unwrap();
    assert_eq!(read("out/copy.log").as_bytes(), rpm.as_slice());
    assert_eq!(read("out/prepared.txt"), "tag=f40\n");
    assert_eq!(read("cleaned.txt"), "cleaned\n");
    assert_eq!(
        read("steps/03-check.log").lines().last(),
        Some("checked pkg-1.0-1.fc40")
    );
    let steps: Vec<String> = {
        let mut v: Vec<String> = std::fs::read_dir(artifacts.join("steps"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        steps,
        [
            "01-prepare-1.log",
            "02-setup.log",
            "03-check.log",
            "04-run-2.log",
            "05-cleanup-1.log"
        ]
    );
    let log = read("task.log");
    for expected in [
        "HTTP status 503",
        "attempt 2/",
        "23 bytes saved as",
        "environment: needs packages coreutils",
        "== step 02-setup.log: exit code 0 after",
        "checked pkg-1.0-1.fc40",
        "artifact kept: out/copy.log",
        "== step 05-cleanup-1.log: exit code 0",
    ] {
        assert!(log.contains(expected), "{expected:?} missing from:\n{log}");
    }
    world.finish(vec![runner]).await;
}

#[tokio::test]
async fn download_failures_crash_naming_the_url_and_reason() {
    let world = World::new("x86_64").await;
    let base = http_server(|path, _| match path {
        "/big" => (200, vec![0u8; 5000]),
        "/ok" => (200, b"ok".to_vec()),
        _ => (404, Vec::new()),
    })
    .await;
    let repo_for = |name: &str, download: &str| {
        task_repo(
            &world,
            name,
            &[(
                "taskbot.yaml",
                &format!("name: {name}\ndownloads: [{download}]\nrun: 'true'\n"),
            )],
        )
    };
    let cases = [
        (
            "missing",
            format!("{{url: '{base}/nope.rpm'}}"),
            format!("download {base}/nope.rpm failed: HTTP status 404"),
        ),
        (
            "big",
            format!("{{url: '{base}/big', max_bytes: 4096}}"),
            format!("download {base}/big failed: larger than the limit of 4096 bytes"),
        ),
        (
            "badsum",
            format!("{{url: '{base}/ok', sha256: '{}'}}", "a".repeat(64)),
            format!(
                "download {base}/ok failed: SHA-256 mismatch: expected {}, got {}",
                "a".repeat(64),
                sha256_hex(b"ok")
            ),
        ),
    ];
    let runner = world.start_runner("x86_64");
    let mut jobs = Vec::new();
    for (name, download, _) in &cases {
        let j = job(name, &repo_for(name, download), "main", "pkg-1-1", "x86_64");
        world.submit(&j).await;
        jobs.push(j);
    }
    for (j, (_, _, expected)) in jobs.iter().zip(&cases) {
        let (states, results) = world.outcome_of(j, 1).await;
        assert_eq!(
            states,
            [
                JobState::Cloning,
                JobState::Running,
                JobState::Reporting,
                JobState::Crashed
            ]
        );
        assert_eq!(results[0].outcome, Outcome::Crashed);
        let note = results[0].note.clone().unwrap();
        assert!(note.starts_with(expected.as_str()), "{note}");
        assert!(note.contains("--- end of task.log ---"), "{note}");
        assert!(results[0].log_url.is_some());
    }
    world.finish(vec![runner]).await;
}

#[tokio::test]
async fn tasks_refuse_item_types_arches_and_machines_they_do_not_accept() {
    let world = World::new("x86_64").await;
    let picky = task_repo(
        &world,
        "picky",
        &[(
            "taskbot.yaml",
            "name: picky\nitem_types: [koji_build]\narches: [aarch64]\nrun: 'true'\n",
        )],
    );
    let vm = task_repo(
        &world,
        "vm",
        &[(
            "taskbot.yaml",
            "name: vm\nenvironment: {provision: vm}\nrun: 'true'\n",
        )],
    );
    let destructive = task_repo(
        &world,
        "destructive",
        &[(
            "taskbot.yaml",
            "name: destructive\nenvironment: {destructive: true}\nrun: touch \"${TASKBOT_ARTIFACTS}ran\"\n",
        )],
    );
    let runner = world.start_runner("x86_64");
    let mut wrong_type = job("picky", &picky, "main", "FEDORA-2024-1", "x86_64");
    wrong_type.job.item_type = "bodhi_update".into();
    let wrong_arch = job("picky", &picky, "main", "pkg-1-1", "x86_64");
    let on_vm = job("vm", &vm, "main", "pkg-1-1", "x86_64");
    let wrecker = job("destructive", &destructive, "main", "pkg-1-1", "x86_64");
    let cases = [
        (&wrong_type, "task picky does not accept item type bodhi_update (item_types: koji_build)".to_string()),
        (&wrong_arch, "task picky does not accept arch x86_64 (arches: aarch64)".to_string()),
        (&on_vm, "task vm needs a VM (environment.provision: vm) and this runner runs tasks locally only".to_string()),
        (&wrecker, "task destructive is destructive (environment.destructive: true) and must not run on the runner's own host".to_string()),
    ];
    for (j, _) in &cases {
        world.submit(j).await;
    }
    for (j, expected) in &cases {
        let (states, results) = world.outcome_of(j, 1).await;
        assert_eq!(
            states,
            [JobState::Cloning, JobState::Reporting, JobState::Crashed]
        );
        assert_eq!(results[0].outcome, Outcome::Crashed);
        assert_eq!(results[0].note.as_deref(), Some(expected.as_str()));
    }
    assert!(!world.job_artifacts(&wrecker).join("ran").exists());
    world.finish(vec![runner]).await;
}

#[tokio::test]
async fn step_timeout_aborts_naming_the_step_and_cleanup_still_runs() {
    let world = World::new("x86_64").await;
    let repo = task_repo(
        &world,
        "slow",
        &[(
            "taskbot.yaml",
            "name: slow\nrun:\n  - echo first\n  - {run: 'echo sleeping; sleep 30', timeout: 1, name: slow}\ncleanup: ['echo done > \"${TASKBOT_ARTIFACTS}cleanup.txt\"']\n",
        )],
    );
    let runner = world.start_runner("x86_64");
    let slow = job("slow", &repo, "main", "pkg-1-1", "x86_64");
    let started = Instant::now();
    world.submit(&slow).await;
    let (states, results) = world.outcome_of(&slow, 1).await;
    assert!(started.elapsed() < Duration::from_secs(15));
    assert_eq!(states, FULL_LIFE);
    let r = &results[0];
    assert_eq!(r.outcome, Outcome::Aborted);
    assert_eq!(
        r.note.as_deref(),
        Some("step slow timed out after 1s (its own timeout: 1s)")
    );
    let step_log = world.job_artifacts(&slow).join("steps/02-slow.log");
    assert_eq!(r.data["step_log"], step_log.display().to_string());
    assert!(std::fs::read_to_string(&step_log)
        .unwrap()
        .contains("sleeping"));
    assert_eq!(
        std::fs::read_to_string(world.job_artifacts(&slow).join("cleanup.txt")).unwrap(),
        "done\n"
    );
    world.finish(vec![runner]).await;
}

#[tokio::test]
async fn task_killed_by_a_signal_crashes_and_a_failing_prepare_step_crashes() {
    let world = World::new("x86_64").await;
    let segv = task_repo(
        &world,
        "segv",
        &[(
            "taskbot.yaml",
            "name: segv\nrun: 'echo about to crash; kill -SEGV $$'\n",
        )],
    );
    let prep = task_repo(
        &world,
        "prep",
        &[(
            "taskbot.yaml",
            "name: prep\nprepare: [{run: 'echo no make here; exit 2', name: build}]\nrun: touch \"${TASKBOT_ARTIFACTS}ran\"\n",
        )],
    );
    let runner = world.start_runner("x86_64");
    let crash = job("segv", &segv, "main", "pkg-1-1", "x86_64");
    let failing = job("prep", &prep, "main", "pkg-1-1", "x86_64");
    world.submit(&crash).await;
    world.submit(&failing).await;

    let (states, results) = world.outcome_of(&crash, 1).await;
    assert_eq!(states.last(), Some(&JobState::Crashed));
    assert_eq!(results[0].outcome, Outcome::Crashed);
    let note = results[0].note.clone().unwrap();
    assert!(
        note.starts_with(&format!(
            "the task was killed by signal {} (SIGSEGV)\n--- end of task.log ---\n",
            libc::SIGSEGV
        )),
        "{note}"
    );
    assert!(note.contains("about to crash"), "{note}");

    let (states, results) = world.outcome_of(&failing, 1).await;
    assert_eq!(states.last(), Some(&JobState::Crashed));
    let note = results[0].note.clone().unwrap();
    assert!(
        note.starts_with("prepare step build failed: exit code 2\n--- end of task.log ---\n"),
        "{note}"
    );
    assert!(note.contains("no make here"), "{note}");
    assert!(!world.job_artifacts(&failing).join("ran").exists());
    world.finish(vec![runner]).await;
}

#[tokio::test]
async fn second_job_fetches_the_new_commit_through_the_mirror() {
    let world = World::new("x86_64").await;
    let path = world.repos().join("evolving");
    commit(&path, &[("taskbot.yaml", "name: evolving\nrun: exit 0\n")]);
    let repo = format!("file://{}", path.display());
    let runner = world.start_runner("x86_64");
    let first = job("evolving", &repo, "main", "pkg-1-1", "x86_64");
    world.submit(&first).await;
    let (_, results) = world.outcome_of(&first, 1).await;
    assert_eq!(results[0].outcome, Outcome::Passed);
    let mirrors: Vec<_> = std::fs::read_dir(&world.config.runner.mirror_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "git"))
        .collect();
    assert_eq!(mirrors.len(), 1, "{mirrors:?}");

    commit(&path, &[("taskbot.yaml", "name: evolving\nrun: exit 4\n")]);
    let second = job("evolving", &repo, "main", "pkg-2-1", "x86_64");
    world.submit(&second).await;
    let (_, results) = world.outcome_of(&second, 1).await;
    assert_eq!(
        (results[0].outcome, results[0].note.as_deref()),
        (Outcome::Failed, Some("exit code 4"))
    );
    let log = std::fs::read_to_string(world.job_artifacts(&second).join("task.log")).unwrap();
    let fetched: usize = log
        .split(" objects fetched into the mirror")
        .next()
        .and_then(|head| head.rsplit('(').next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no fetch count in:\n{log}"));
    assert!((1..=3).contains(&fetched), "only the new commit: {log}");
    world.finish(vec![runner]).await;
}

#[tokio::test]
async fn runner_runs_as_many_tasks_at_once_as_its_concurrency() {
    let mut world = World::new("x86_64").await;
    world.config.runner.concurrency = 2;
    let rendezvous = tempfile::tempdir().unwrap();
    // Each task waits (up to 10 s) until both have started: only true concurrency passes.
    let repo = task_repo(
        &world,
        "together",
        &[(
            "taskbot.yaml",
            "name: together\nrun: |\n  touch {{ args.dir }}/$TASKBOT_JOB_ID\n  for i in $(seq 50); do [ $(ls {{ args.dir }} | wc -l) -ge 2 ] && exit 0; sleep 0.2; done\n  exit 1\n",
        )],
    );
    let runner = world.start_runner("x86_64");
    let dir = rendezvous.path().display().to_string();
    let jobs: Vec<_> = ["a-1-1", "b-1-1"]
        .iter()
        .map(|item| {
            let args: BTreeMap<String, String> = [("dir".to_string(), dir.clone())].into();
            job_with_args("together", &repo, "main", item, "x86_64", args)
        })
        .collect();
    for j in &jobs {
        world.submit(j).await;
    }
    for j in &jobs {
        let (_, results) = world.outcome_of(j, 1).await;
        assert_eq!(results[0].outcome, Outcome::Passed, "{:?}", results[0].note);
    }
    world.finish(vec![runner]).await;
}

/// RabbitMQ closes the channel of a delivery left unacked past its consumer timeout, and the job
/// would run again, forever. The runner ends the task first (ABORTED, saying why) so the job is
/// reported and acked. A short `consumer_timeout_secs` stands in for the broker's 30 minutes.
#[tokio::test]
async fn task_is_cut_short_before_the_consumer_timeout_and_the_job_is_reported() {
    let mut world = World::new("x86_64").await;
    world.config.runner.consumer_timeout_secs = 8;
    world.config.runner.task_timeout_secs = 60;
    let repo = task_repo(
        &world,
        "endless",
        &[("taskbot.yaml", "name: endless\nrun: sleep 60\n")],
    );
    let runner = world.start_runner("x86_64");
    let endless = job("endless", &repo, "main", "pkg-1-1", "x86_64");
    let started = Instant::now();
    world.submit(&endless).await;
    let (states, results) = world.outcome_of(&endless, 1).await;
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(states, FULL_LIFE);
    assert_eq!(results[0].outcome, Outcome::Aborted);
    let note = results[0].note.clone().unwrap();
    assert!(
        note.starts_with("step run timed out: the task's time limit of "),
        "{note}"
    );
    assert!(note.ends_with("(the job's time is capped below the broker's consumer timeout, runner.consumer_timeout_secs)"), "{note}");
    let run_queue = world.broker.topology.run_queue("x86_64");
    assert_eq!(
        world.broker.depth(&run_queue).await,
        0,
        "acked, not handed back"
    );
    world.finish(vec![runner]).await;
}
