//! The runner against the real RabbitMQ, for what only the broker shows: jobs consumed from the
//! run queue of their arch, statuses and results published on the results exchange (read from
//! taps there), malformed jobs dead-lettered, jobs handed back at shutdown, concurrency, and acks
//! before the consumer timeout. What a job comes to is tested without a broker in `job.rs`.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{check_ending, example_task_files, job, job_with_args, states, Dirs, FULL_LIFE};
use taskbot::amqp::Outgoing;
use taskbot::amqp::REASON_HEADER;
use taskbot::messages::{JobState, JobStatus, Message, Outcome, ProvisionedJob, TaskResult};
use taskbot::testing::{test_config, TestBroker, TestBrokerUser};
use taskbot::{Config, Shutdown};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const WAIT: Duration = Duration::from_secs(30);

/// One test's world: a namespace on the broker, taps on the results exchange, and directories for
/// task repositories, clones and artifacts.
struct World {
    broker: TestBroker,
    config: Config,
    dirs: Dirs,
    results_tap: String,
    status_tap: String,
    /// Messages read from the taps that belong to another job than the one being waited for:
    /// jobs run at once interleave their messages.
    other_results: std::sync::Mutex<Vec<TaskResult>>,
    other_statuses: std::sync::Mutex<Vec<JobStatus>>,
}

impl World {
    async fn new(arch: &str) -> World {
        let dirs = Dirs::new();
        let mut config = test_config();
        config.runner.arch = Some(arch.into());
        dirs.configure(&mut config.runner);
        let broker = TestBroker::new(&config).await;
        let results_exchange = broker.topology.results_exchange();
        let results_tap = broker.tap(&results_exchange, "result.#").await;
        let status_tap = broker.tap(&results_exchange, "job.#").await;
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
        let mut results = self.take_others(&self.other_results, job, |r| r.job_id);
        let deadline = Instant::now() + WAIT;
        while results.len() < count && Instant::now() < deadline {
            if let Some((result, key)) = self.next::<TaskResult>(&self.results_tap).await {
                assert_eq!(key, result.routing_key());
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
        let mut statuses = self.take_others(&self.other_statuses, job, |s| s.job_id);
        let deadline = Instant::now() + WAIT;
        while !statuses.last().is_some_and(|s| s.state.is_final()) {
            assert!(
                Instant::now() < deadline,
                "no final status for job {}; got {:?}",
                job.job.job_id,
                states(&statuses)
            );
            if let Some((status, key)) = self.next::<JobStatus>(&self.status_tap).await {
                assert_eq!(key, status.routing_key());
                if status.job_id == job.job.job_id {
                    statuses.push(status);
                } else {
                    self.other_statuses.lock().unwrap().push(status);
                }
            }
        }
        statuses
    }

    /// What was read earlier for `job` while waiting for another.
    fn take_others<T>(
        &self,
        others: &std::sync::Mutex<Vec<T>>,
        job: &ProvisionedJob,
        job_id: impl Fn(&T) -> uuid::Uuid,
    ) -> Vec<T> {
        let mut others = others.lock().unwrap();
        let (mine, rest) = others.drain(..).partition(|m| job_id(m) == job.job.job_id);
        *others = rest;
        mine
    }

    /// The next message on `tap` (waiting up to a second), with its routing key.
    async fn next<T: Message>(&self, tap: &str) -> Option<(T, String)> {
        let msg = self.broker.get(tap, Duration::from_secs(1)).await?;
        Some((T::from_json(&msg.body).unwrap(), msg.routing_key))
    }

    /// Statuses and results of a job that should end, with the checks every ending shares.
    async fn outcome_of(
        &self,
        job: &ProvisionedJob,
        results: usize,
    ) -> (Vec<JobState>, Vec<TaskResult>) {
        let statuses = self.statuses(job).await;
        let results = self.results(job, results).await;
        check_ending(job, &statuses, &results, &self.work_dir());
        (states(&statuses), results)
    }

    async fn finish(self, runners: Vec<RunningRunner>) {
        for runner in runners {
            runner.stop().await;
        }
        // The outbox (the runner's record of published outcomes) and the claims' directory stay;
        // no job directory does, and no claim.
        let kept = [
            taskbot_runner::outbox::OUTBOX_DIR,
            taskbot_runner::claim::CLAIMS_DIR,
        ];
        let left: Vec<_> = std::fs::read_dir(self.work_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|name| !kept.iter().any(|k| name == k))
            .collect();
        assert!(left.is_empty(), "no clone is left behind: {left:?}");
        let claims = self.work_dir().join(taskbot_runner::claim::CLAIMS_DIR);
        let claimed = std::fs::read_dir(&claims).map_or(0, |d| d.count());
        assert_eq!(claimed, 0, "a claim outlived its job");
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

/// With no `runner.artifacts_url`, results link the api's artifacts under `api.public_url`, the
/// same place the api's job pages and `logs.published` point at, instead of a local path.
#[tokio::test]
async fn without_artifacts_url_results_link_the_apis_artifacts() {
    let mut world = World::new("x86_64").await;
    world.config.runner.artifacts_url = None;
    world.config.api.public_url = Some("https://taskbot.example.org/".into());
    let files = example_task_files();
    let files: Vec<(&str, &str)> = files
        .iter()
        .map(|(n, c)| (n.as_str(), c.as_str()))
        .collect();
    let repo = world.dirs.repo("example", &files);
    let runner = world.start_runner("x86_64");
    let good = job("example", &repo, "main", "xchat-0.5-1.fc20", "x86_64");
    world.submit(&good).await;
    let (_, results) = world.outcome_of(&good, 1).await;
    let base = format!("https://taskbot.example.org/artifacts/{}", good.job.job_id);
    assert_eq!(
        results[0].log_url.as_deref(),
        Some(format!("{base}/task.log").as_str())
    );
    // What the task was told (TASKBOT_ARTIFACTS_URL) agrees.
    assert_eq!(results[0].data["artifact"], format!("{base}/nvr.txt"));
    world.finish(vec![runner]).await;
}

#[tokio::test]
async fn example_task_passes_a_good_nvr_and_fails_a_broken_one() {
    let mut world = World::new("x86_64").await;
    world.config.runner.artifacts_url = Some("https://artifacts.example/taskbot/".into());
    let files = example_task_files();
    let files: Vec<(&str, &str)> = files
        .iter()
        .map(|(n, c)| (n.as_str(), c.as_str()))
        .collect();
    let repo = world.dirs.repo("example", &files);
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
async fn a_run_message_injected_by_another_broker_user_is_dead_lettered_and_never_run() {
    let world = World::new("x86_64").await;
    let t = world.broker.topology.clone();
    let intruder = TestBrokerUser::create(&t.namespace);
    let repo = world
        .dirs
        .task("ok", "name: ok\nrun: touch \"${TASKBOT_ARTIFACTS}ran\"\n");
    let runner = world.start_runner("x86_64");
    let injected = job("ok", &repo, "main", "pkg-1-1", "x86_64");
    let (conn, publisher) = intruder.publisher().await;
    publisher
        .publish(&Outgoing::new(
            t.run_exchange(),
            "x86_64",
            injected.to_json(),
        ))
        .await
        .expect("the broker takes it");
    let dead = world
        .broker
        .get(&t.dead_letter_queue(&t.run_queue("x86_64")), WAIT)
        .await
        .expect("the injected run message dead-lettered");
    let reason = dead.header(REASON_HEADER).unwrap();
    assert_eq!(
        reason,
        format!(
            "run message published by broker user {:?}; only the provisioner's user \"guest\" \
             dispatches jobs, so it is not run",
            intruder.name
        )
    );
    // The same job from the provisioner's user (here the test broker's `guest`) runs.
    let dispatched = job("ok", &repo, "main", "pkg-2-1", "x86_64");
    world.submit(&dispatched).await;
    let (states, _) = world.outcome_of(&dispatched, 1).await;
    assert_eq!(states, FULL_LIFE);
    assert!(
        !world.job_artifacts(&injected).exists(),
        "the injected job never ran"
    );
    assert!(
        world.other_statuses.lock().unwrap().is_empty(),
        "and no status was published for it"
    );
    let _ = conn.close(200, "done").await;
    world.finish(vec![runner]).await;
}

#[tokio::test]
async fn job_is_taken_only_by_the_runner_of_its_arch() {
    let world = World::new("aarch64").await;
    let repo = world.dirs.task("ok", "name: ok\nrun: 'uname -m'\n");
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
    let repo = world.dirs.task("long", "name: long\nrun: sleep 60\n");
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
    // Nothing in the work directory but the claims' (emptied: `finish` checks it).
    let left: Vec<_> = std::fs::read_dir(world.work_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|name| name != taskbot_runner::claim::CLAIMS_DIR)
        .collect();
    assert!(left.is_empty(), "{left:?}");
    world.finish(vec![]).await;
}

#[tokio::test]
async fn runner_runs_as_many_tasks_at_once_as_its_concurrency() {
    let mut world = World::new("x86_64").await;
    world.config.runner.concurrency = 2;
    // Each task waits (up to 10 s) until both have started: only true concurrency passes. The
    // tasks are sandboxed and cannot share a directory, so they meet at a TCP server of the
    // test's that answers "go" once two of them are connected.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        use std::io::Write as _;
        let mut waiting = Vec::new();
        for stream in listener.incoming().flatten() {
            waiting.push(stream);
            if waiting.len() == 2 {
                for mut task in waiting.drain(..) {
                    let _ = task.write_all(b"go\n");
                }
            }
        }
    });
    let repo = world.dirs.repo(
        "together",
        &[
            (
                "taskbot.yaml",
                "name: together\nrun: bash ./meet.sh {{ args.port }}\n",
            ),
            (
                "meet.sh",
                "exec 3<>/dev/tcp/127.0.0.1/$1\nread -t 10 answer <&3\n[ \"$answer\" = go ]\n",
            ),
        ],
    );
    let runner = world.start_runner("x86_64");
    let port = port.to_string();
    let jobs: Vec<_> = ["a-1-1", "b-1-1"]
        .iter()
        .map(|item| {
            let args = common::args(&[("port", &port)]);
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
    let repo = world.dirs.task("endless", "name: endless\nrun: sleep 60\n");
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
