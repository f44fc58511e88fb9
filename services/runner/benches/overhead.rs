//! `make bench`: what the runner costs per job on top of the task itself.
//!
//! Two ways of running the same task (tasks/example, the shipped example task) on the same item,
//! one job after the other:
//!
//! - **bare minimum**: what a person would do by hand: `git clone` of the task repository (a
//!   local clone, the fastest git has), then `sh ./check.sh` with the same environment the
//!   runner gives it;
//! - **runner**: the real runner service (in-process, optimised build) against the real RabbitMQ:
//!   a provisioned job is published on the run exchange, and the clock stops when the runner's
//!   `done` status arrives on the results exchange. In between, the runner takes the job,
//!   publishes its statuses (each confirmed by the broker), fetches the task into its mirror
//!   (warm: nothing new to fetch) and clones from it at the requested ref, reads taskbot.yaml,
//!   runs the step in its own process group with logs captured, reads results.yml, copies
//!   artifacts, publishes the result and acknowledges the job.
//!
//! Each figure is the median (and mean) of `JOBS` jobs after a warm-up. Needs RabbitMQ
//! (`make bench` starts it like `make test` does).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use taskbot::config::SandboxMode;

use chrono::Utc;
use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions};
use lapin::types::FieldTable;
use taskbot::messages::{
    JobRequest, JobState, JobStatus, Machine, Message, ProvisionedJob, TaskRef,
};
use taskbot::testing::{test_config, TestBroker};
use taskbot::Shutdown;
use tokio::sync::oneshot;

/// Jobs measured per way (after the warm-up).
const JOBS: usize = 40;
const WARM_UP: usize = 3;
const ITEM: &str = "xchat-0.5-1.fc20";

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(bench());
}

async fn bench() {
    let dirs = tempfile::tempdir().expect("a temporary directory");
    // The runner's sandbox user must reach the work and artifacts directories below.
    std::fs::set_permissions(
        dirs.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("a reachable temporary directory");
    let repo = dirs.path().join("repos/example");
    make_repo(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tasks/example"),
        &repo,
    );

    let bare = measure_bare(&repo, &dirs.path().join("bare"));
    let runner = measure_runner(&repo, dirs.path(), SandboxMode::Bwrap).await;
    // The same without the sandbox, to show what the trust boundary costs per job.
    let unconfined =
        measure_runner(&repo, &dirs.path().join("unconfined"), SandboxMode::None).await;

    println!(
        "runner overhead benchmark: task tasks/example on {ITEM}, {JOBS} jobs per way after \
         {WARM_UP} warm-up jobs, one job at a time"
    );
    println!();
    println!("{:<58} {:>11} {:>11}", "way", "median ms", "mean ms");
    for (name, times) in [
        ("bare minimum (git clone + sh ./check.sh by hand)", &bare),
        ("runner (publish job → done status, real RabbitMQ)", &runner),
        (
            "runner with runner.sandbox = \"none\" (unconfined)",
            &unconfined,
        ),
    ] {
        println!(
            "{:<58} {:>11.1} {:>11.1}",
            name,
            median(times).as_secs_f64() * 1e3,
            mean(times).as_secs_f64() * 1e3
        );
    }
    println!();
    println!(
        "runner / bare minimum: {:.2}x (median), {:.2}x (mean); target: at most 1.5x",
        median(&runner).as_secs_f64() / median(&bare).as_secs_f64(),
        mean(&runner).as_secs_f64() / mean(&bare).as_secs_f64()
    );
    if let Ok(load) = std::fs::read_to_string("/proc/loadavg") {
        println!(
            "load average during the run (1, 5, 15 min): {}",
            load.trim()
        );
    }
}

/// Copy the task folder into a new git repository with one commit on `main`.
fn make_repo(content: &Path, dest: &Path) {
    std::fs::create_dir_all(dest).expect("mkdir");
    for entry in std::fs::read_dir(content).expect("tasks/example") {
        let entry = entry.expect("an entry");
        std::fs::copy(entry.path(), dest.join(entry.file_name())).expect("copy");
    }
    git(dest, &["init", "-q", "-b", "main"]);
    git(dest, &["add", "-A"]);
    git(
        dest,
        &[
            "-c",
            "user.name=bench",
            "-c",
            "user.email=bench@localhost",
            "commit",
            "-qm",
            "task",
        ],
    );
}

fn git(dir: &Path, args: &[&str]) {
    let status = Command::new("git")
        .args(args)
        .current_dir(dir)
        .status()
        .expect("git runs");
    assert!(status.success(), "git {args:?} failed");
}

/// By hand: a fresh clone, then the task's command with the environment the runner gives it.
fn measure_bare(repo: &Path, work: &Path) -> Vec<Duration> {
    let mut times = Vec::new();
    for n in 0..WARM_UP + JOBS {
        let clone = work.join(format!("job-{n}"));
        let artifacts = work.join(format!("artifacts-{n}/"));
        let started = Instant::now();
        let status = Command::new("git")
            .args(["clone", "-q"])
            .arg(repo)
            .arg(&clone)
            .status()
            .expect("git clone");
        assert!(status.success());
        let status = Command::new("sh")
            .arg("./check.sh")
            .current_dir(&clone)
            .env("TASKBOT_ITEM", ITEM)
            .env("TASKBOT_ITEM_TYPE", "koji_build")
            .env("TASKBOT_ARCH", "x86_64")
            .env("TASKBOT_RESULTS", clone.join("results.yml"))
            .env("TASKBOT_ARTIFACTS", &artifacts)
            .stdout(std::process::Stdio::null())
            .status()
            .expect("sh ./check.sh");
        assert!(status.success());
        let elapsed = started.elapsed();
        assert!(
            clone.join("results.yml").exists(),
            "the task wrote no results"
        );
        if n >= WARM_UP {
            times.push(elapsed);
        }
        let _ = std::fs::remove_dir_all(&clone);
    }
    times
}

/// Through the real runner and broker, one job at a time.
async fn measure_runner(repo: &Path, dirs: &Path, sandbox: SandboxMode) -> Vec<Duration> {
    let mut config = test_config();
    config.runner.sandbox = sandbox;
    config.runner.arch = Some("x86_64".into());
    config.runner.allowed_repos = vec![format!(
        "file://{}",
        repo.parent().expect("repos/example").display()
    )];
    config.runner.work_dir = dirs.join("work");
    config.runner.artifacts_dir = dirs.join("artifacts");
    config.runner.mirror_dir = dirs.join("mirrors");
    let broker = TestBroker::new(&config).await;
    let tap = broker
        .tap(&broker.topology.results_exchange(), "job.#")
        .await;
    // A consumer (not polling) so the clock stops as soon as the status is delivered.
    let channel = broker.publisher.channel();
    let mut statuses = channel
        .basic_consume(
            &tap,
            "overhead-bench",
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume the status tap");

    let (stop, stopped) = oneshot::channel::<()>();
    let shutdown = Shutdown::new(async move {
        let _ = stopped.await;
    });
    let runner = tokio::spawn(taskbot_runner::run(config.clone(), shutdown));
    // Wait until the runner consumes its queue.
    let run_queue = broker.topology.run_queue("x86_64");
    let deadline = Instant::now() + Duration::from_secs(30);
    while broker.consumers(&run_queue).await == 0 {
        assert!(
            Instant::now() < deadline,
            "the runner never consumed {run_queue}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let url = format!("file://{}", repo.display());
    let mut times = Vec::new();
    for n in 0..WARM_UP + JOBS {
        let job = provisioned_job(&url, n);
        let started = Instant::now();
        broker
            .publish(&broker.topology.run_exchange(), "x86_64", job.to_json())
            .await;
        loop {
            let delivery = tokio::time::timeout(Duration::from_secs(60), statuses.next())
                .await
                .expect("the job ended within a minute")
                .expect("the status stream is open")
                .expect("a delivery");
            let _ = delivery.acker.ack(BasicAckOptions::default()).await;
            let status = JobStatus::from_json(&delivery.data).expect("a job status");
            if status.job_id == job.job.job_id && status.state.is_final() {
                assert_eq!(status.state, JobState::Done, "{status:?}");
                break;
            }
        }
        if n >= WARM_UP {
            times.push(started.elapsed());
        }
    }
    let _ = stop.send(());
    runner
        .await
        .expect("the runner task")
        .expect("the runner stopped cleanly");
    broker.cleanup().await;
    times
}

fn provisioned_job(url: &str, n: usize) -> ProvisionedJob {
    let task = TaskRef {
        name: "example".into(),
        repo: url.into(),
        git_ref: "main".into(),
    };
    let mut job = taskbot::testing::job_request(task, ITEM, "x86_64");
    // A distinct job each time (same item): the runner must not take it for a redelivery.
    job.event_id = format!("bench-{n}");
    job.job_id = JobRequest::derive_id(
        &job.event_id,
        &job.rule,
        &job.task,
        ITEM,
        "x86_64",
        &job.args,
    );
    ProvisionedJob {
        job,
        machine: Machine::Local,
        provisioner: "local".into(),
        provisioned_at: Utc::now(),
    }
}

fn median(times: &[Duration]) -> Duration {
    let mut sorted = times.to_vec();
    sorted.sort();
    sorted[sorted.len() / 2]
}

fn mean(times: &[Duration]) -> Duration {
    times.iter().sum::<Duration>() / times.len() as u32
}
