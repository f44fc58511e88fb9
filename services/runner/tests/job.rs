//! A job's whole life in the runner without a broker: the handler gets the provisioned job as the
//! consume loop would hand it over, publishes its mid-job statuses into a
//! [`Recorder`](taskbot::testing::Recorder), and returns the [`Disposition`] the consume loop
//! would carry out. Task repositories are real git repositories in temporary directories, cloned
//! over `file://`; tasks really run. `runner.rs` proves the same handler is wired to the broker.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{
    args, check_ending, commit, http_server, job, job_with_args, sha256_hex, states, Dirs,
    CRASHED_BEFORE_RUNNING, CRASHED_RUNNING, FULL_LIFE,
};
use git2::Repository;
use taskbot::amqp::{Disposition, Handler, Incoming};
use taskbot::config::RunnerConfig;
use taskbot::messages::{Event, JobState, JobStatus, Message, Outcome, ProvisionedJob, TaskResult};
use taskbot::testing::processes_running;
use taskbot::testing::Recorder;
use taskbot::{Shutdown, Topology};
use taskbot_runner::RunnerHandler;

/// The provisioner's broker user in these tests: run messages come from it.
const PROVISIONER: &str = "tb-provisioner";

/// One test's runner settings and directories.
struct Harness {
    dirs: Dirs,
    settings: RunnerConfig,
    topology: Topology,
}

/// What a job came to: the statuses published while it ran, then what its disposition publishes
/// (results, events, the final status).
struct Ran {
    disposition: Disposition,
    statuses: Vec<JobStatus>,
    results: Vec<TaskResult>,
    events: Vec<Event>,
}

impl Harness {
    fn new() -> Harness {
        let dirs = Dirs::new();
        let mut settings = RunnerConfig::default();
        dirs.configure(&mut settings);
        Harness {
            dirs,
            settings,
            topology: Topology::new("tb", &["x86_64".into()]),
        }
    }

    /// A runner for x86_64 with these settings, stopping when `shutdown` fires.
    fn handler(&self, shutdown: Shutdown) -> RunnerHandler {
        RunnerHandler {
            topology: self.topology.clone(),
            arch: "x86_64".into(),
            settings: self.settings.clone(),
            instance: "runner/x86_64@test".into(),
            shutdown,
            http: reqwest::Client::new(),
            sandbox: common::sandbox(),
            provisioner_user: PROVISIONER.into(),
        }
    }

    fn work_dir(&self) -> PathBuf {
        self.settings.work_dir.clone()
    }

    fn job_artifacts(&self, job: &ProvisionedJob) -> PathBuf {
        self.settings.artifacts_dir.join(job.job.job_id.to_string())
    }

    /// Run `job` on a runner that is not shutting down, its delivery received just now.
    async fn run(&self, job: &ProvisionedJob, ctx: &Recorder) -> Ran {
        let handler = self.handler(Shutdown::new(std::future::pending()));
        self.run_on(&handler, job, ctx).await
    }

    /// Hand `job` to `handler` as the consume loop does, and sort what it published.
    async fn run_on(&self, handler: &RunnerHandler, job: &ProvisionedJob, ctx: &Recorder) -> Ran {
        let incoming = Incoming::new(&job.job.arch, job.to_json()).with_user_id(PROVISIONER);
        let disposition = handler.handle(incoming.clone(), ctx).await;
        // The consume loop has every final message confirmed, then tells the handler.
        if let Disposition::Done(out) = &disposition {
            handler.confirmed(&incoming, out).await;
        }
        let results_exchange = self.topology.results_exchange();
        let statuses = ctx
            .published()
            .iter()
            .map(|m| {
                assert_eq!(m.exchange, results_exchange);
                let status = JobStatus::from_json(&m.body).unwrap();
                assert_eq!(m.routing_key, status.routing_key());
                assert_eq!(m.message_id, Some(status.status_id.to_string()));
                status
            })
            .collect();
        let mut ran = Ran {
            disposition,
            statuses,
            results: Vec::new(),
            events: Vec::new(),
        };
        if let Disposition::Done(out) = &ran.disposition {
            let (last, rest) = out.split_last().expect("a final status");
            for m in rest {
                if m.exchange == self.topology.events_exchange() {
                    ran.events.push(Event::from_json(&m.body).unwrap());
                    continue;
                }
                // An outcome from the outbox starts with the `reporting` status kept with it.
                if m.routing_key.starts_with("job.") {
                    ran.statuses.push(JobStatus::from_json(&m.body).unwrap());
                    continue;
                }
                let result = TaskResult::from_json(&m.body).unwrap();
                assert_eq!(m.routing_key, result.routing_key());
                assert_eq!(m.message_id, Some(result.result_id.to_string()));
                ran.results.push(result);
            }
            let status = JobStatus::from_json(&last.body).unwrap();
            assert_eq!(last.routing_key, status.routing_key());
            ran.statuses.push(status);
        }
        ran
    }

    /// Statuses and results of a job that should end, with the checks every ending shares.
    async fn outcome_of(
        &self,
        job: &ProvisionedJob,
        results: usize,
    ) -> (Vec<JobState>, Vec<TaskResult>) {
        let ran = self.run(job, &Recorder::new()).await;
        if let Disposition::Retry(reason) | Disposition::DeadLetter(reason) = &ran.disposition {
            panic!("job {} came to no verdict: {reason}", job.job.job_id);
        }
        assert_eq!(
            ran.results.len(),
            results,
            "results of job {}",
            job.job.job_id
        );
        check_ending(job, &ran.statuses, &ran.results, &self.work_dir());
        (states(&ran.statuses), ran.results)
    }
}

/// The number in "time limit Ns" of a running status's detail.
fn time_limit_of(status: &JobStatus) -> u64 {
    let detail = status.detail.as_deref().unwrap_or_default();
    detail
        .rsplit_once("time limit ")
        .and_then(|(_, n)| n.trim_end_matches('s').parse().ok())
        .unwrap_or_else(|| panic!("no time limit in {detail:?}"))
}

#[tokio::test]
async fn statuses_go_cloning_running_reporting_and_the_disposition_ends_with_the_final_status() {
    let h = Harness::new();
    let path = h.dirs.repos().join("events");
    let commit_id = commit(
        &path,
        &[(
            "taskbot.yaml",
            "name: events\nrun: |\n  echo '{\"topic\": \"taskbot.example.done\", \"msg\": {}}' > \"$TASKBOT_EVENTS\"\n",
        )],
    );
    let repo = format!("file://{}", path.display());
    let j = job("events", &repo, "main", "pkg-1-1", "x86_64");
    let ctx = Recorder::new();
    let ran = h.run(&j, &ctx).await;

    let published: Vec<JobState> = states(&ran.statuses[..3]);
    assert_eq!(
        published,
        [JobState::Cloning, JobState::Running, JobState::Reporting],
        "published while the job ran, each confirmed before it went on"
    );
    assert_eq!(ctx.published().len(), 3);
    assert_eq!(states(&ran.statuses), FULL_LIFE);
    assert_eq!(
        ran.statuses[0].detail.as_deref(),
        Some(format!("{repo} at main").as_str())
    );
    assert_eq!(
        ran.statuses[1].detail.as_deref(),
        Some(format!("commit {commit_id}, time limit 30s").as_str())
    );
    assert_eq!(
        ran.statuses[3].detail.as_deref(),
        Some("1 result(s): 1 PASSED")
    );
    let Disposition::Done(out) = &ran.disposition else {
        panic!("{:?}", ran.disposition);
    };
    // Results, then the events, then the final status: the consume loop publishes them in order.
    assert_eq!(out.len(), 3, "{out:?}");
    assert_eq!(out[0].exchange, h.topology.results_exchange());
    assert_eq!(out[1].exchange, h.topology.events_exchange());
    assert_eq!(ran.results[0].outcome, Outcome::Passed);
    assert_eq!(ran.events.len(), 1);
    assert_eq!(ran.events[0].topic, "taskbot.example.done");
    check_ending(&j, &ran.statuses, &ran.results, &h.work_dir());
}

#[tokio::test]
async fn job_for_another_arch_crashes_without_cloning() {
    let h = Harness::new();
    let repo = h
        .dirs
        .task("ok", "name: ok\nrun: touch \"${TASKBOT_ARTIFACTS}ran\"\n");
    let foreign = job("ok", &repo, "main", "pkg-1-1", "aarch64");
    // Not `outcome_of`: its statuses say (rightly) that the x86_64 runner published them.
    let ran = h.run(&foreign, &Recorder::new()).await;
    assert_eq!(states(&ran.statuses), CRASHED_BEFORE_RUNNING);
    let results = ran.results;
    assert_eq!(results.len(), 1);
    assert_eq!(results[0].outcome, Outcome::Crashed);
    assert_eq!(
        results[0].arch, "aarch64",
        "about the job as it was asked for"
    );
    assert_eq!(
        results[0].note.as_deref(),
        Some("job for arch aarch64 reached the runner for x86_64")
    );
    assert_eq!(results[0].log_url, None, "nothing ran, so there is no log");
    assert!(!h.job_artifacts(&foreign).exists());
    assert!(
        !h.settings.mirror_dir.exists(),
        "nothing was fetched into a mirror"
    );
}

#[tokio::test]
async fn a_run_message_not_from_the_provisioner_is_dead_lettered_and_never_run() {
    let h = Harness::new();
    let repo = h
        .dirs
        .task("ok", "name: ok\nrun: touch \"${TASKBOT_ARTIFACTS}ran\"\n");
    let injected = job("ok", &repo, "main", "pkg-1-1", "x86_64");
    let handler = h.handler(Shutdown::new(std::future::pending()));
    for (user, says) in [
        (
            Some("tb-runner"),
            "run message published by broker user \"tb-runner\"",
        ),
        (None, "run message published without a user_id"),
    ] {
        let ctx = Recorder::new();
        let mut incoming = Incoming::new("x86_64", injected.to_json());
        incoming.user_id = user.map(str::to_string);
        match handler.handle(incoming, &ctx).await {
            Disposition::DeadLetter(reason) => {
                assert!(reason.starts_with(says), "{reason}");
                assert!(
                    reason.ends_with("only the provisioner's user \"tb-provisioner\" dispatches jobs, so it is not run"),
                    "{reason}"
                );
            }
            other => panic!("expected DeadLetter, got {other:?}"),
        }
        assert!(
            ctx.published().is_empty(),
            "no status: {:?}",
            ctx.published()
        );
    }
    assert!(!h.job_artifacts(&injected).exists(), "nothing ran");
    assert!(!h.settings.mirror_dir.exists(), "nothing was fetched");
}

#[tokio::test]
async fn a_vm_on_a_host_or_with_a_key_the_runner_does_not_know_crashes_without_cloning() {
    let h = Harness::new();
    let repo = h.dirs.task(
        "vm",
        "name: vm\nenvironment: {provision: vm}\nrun: 'true'\n",
    );
    let on = |host: &str, key: &str| ProvisionedJob {
        machine: taskbot::messages::Machine::Vm {
            host: host.into(),
            port: 2222,
            user: "root".into(),
            key_path: key.into(),
            host_keys: Vec::new(),
        },
        ..job("vm", &repo, "main", "pkg-1-1", "x86_64")
    };
    let own_key = h.settings.vm_ssh_key.display().to_string();
    let cases = [
        (on("evil.example", &own_key), "the job's VM is on host \"evil.example\", which is not in runner.vm_hosts [\"127.0.0.1\"]".to_string()),
        (on("127.0.0.1", "/etc/shadow"), format!("the job's VM is reached with key \"/etc/shadow\", not this runner's runner.vm_ssh_key {own_key:?}")),
    ];
    for (j, expected) in &cases {
        let (states, results) = h.outcome_of(j, 1).await;
        assert_eq!(states, CRASHED_BEFORE_RUNNING);
        assert_eq!(results[0].note.as_deref(), Some(expected.as_str()));
        assert!(!h.job_artifacts(j).exists());
    }
    assert!(!h.settings.mirror_dir.exists(), "nothing was fetched");
}

#[tokio::test]
async fn refused_running_status_hands_the_job_back_before_the_task_runs() {
    let h = Harness::new();
    let repo = h
        .dirs
        .task("ok", "name: ok\nrun: touch \"${TASKBOT_ARTIFACTS}ran\"\n");
    let j = job("ok", &repo, "main", "pkg-1-1", "x86_64");
    // The broker confirms `cloning`, then refuses everything.
    let ctx = Recorder::new().failing_after(1);
    let ran = h.run(&j, &ctx).await;
    assert_eq!(
        ran.disposition,
        Disposition::Retry(
            "cannot publish the running status: broker refused the message (nack)".into()
        )
    );
    assert_eq!(states(&ran.statuses), [JobState::Cloning]);
    assert!(ran.results.is_empty(), "no verdict");
    assert!(!h.job_artifacts(&j).join("ran").exists());
    check_ending(&j, &ran.statuses, &[], &h.work_dir());
}

/// A task that notes each of its runs in its artifacts directory (kept across a job's runs).
const COUNTED: &str = "name: counted\nrun: echo run >> \"${TASKBOT_ARTIFACTS}runs.txt\"\n";

fn runs(h: &Harness, job: &ProvisionedJob) -> usize {
    std::fs::read_to_string(h.job_artifacts(job).join("runs.txt"))
        .map(|text| text.lines().count())
        .unwrap_or(0)
}

fn outbox_entry(h: &Harness, job: &ProvisionedJob) -> PathBuf {
    h.work_dir().join(format!("outbox/{}.json", job.job.job_id))
}

fn published_entry(h: &Harness, job: &ProvisionedJob) -> PathBuf {
    h.work_dir()
        .join(format!("outbox/{}.published.json", job.job.job_id))
}

/// The broker goes away while the task runs: the `reporting` status is refused once the task has
/// run. The outcome stays in the outbox; when the job comes back it is published from there and
/// the task is not run again; once confirmed, the entry is gone.
#[tokio::test]
async fn an_outcome_the_broker_could_not_take_is_published_from_the_outbox_not_run_again() {
    let h = Harness::new();
    let repo = h.dirs.task("counted", COUNTED);
    let j = job("counted", &repo, "main", "pkg-1-1", "x86_64");
    let first = h.run(&j, &Recorder::new().failing_after(2)).await;
    assert_eq!(
        first.disposition,
        Disposition::Retry(
            "cannot publish the reporting status: broker refused the message (nack); the outcome is kept in the outbox and published when the job comes back".into()
        )
    );
    assert_eq!(
        states(&first.statuses),
        [JobState::Cloning, JobState::Running]
    );
    assert_eq!(runs(&h, &j), 1);
    assert!(outbox_entry(&h, &j).is_file());
    check_ending(&j, &first.statuses, &[], &h.work_dir());

    // Redelivered: only the kept outcome is published, the `reporting` status the broker
    // refused first, and the task did not run again.
    let again = h.run(&j, &Recorder::new()).await;
    assert_eq!(
        states(&again.statuses),
        [JobState::Reporting, JobState::Done]
    );
    assert_eq!(again.results.len(), 1);
    assert_eq!(again.results[0].outcome, Outcome::Passed);
    check_ending(&j, &again.statuses, &again.results, &h.work_dir());
    assert_eq!(runs(&h, &j), 1, "the finished task ran again");
    assert!(
        !outbox_entry(&h, &j).exists(),
        "entry left pending after its confirm"
    );
    assert!(published_entry(&h, &j).is_file(), "kept as published");

    // Another copy of the run message (a provisioner that published it twice around a broker
    // crash): the job is done, so its outcome is published again, and the task still not run.
    let third = h.run(&j, &Recorder::new()).await;
    assert_eq!(
        states(&third.statuses),
        [JobState::Reporting, JobState::Done]
    );
    assert_eq!(runs(&h, &j), 1, "a copy of a finished job ran it again");
    assert_eq!(
        third.results[0].result_id, again.results[0].result_id,
        "same result id"
    );
}

/// The consume loop could not have the final messages confirmed (the handler is never told they
/// were): the next delivery of the job publishes the same messages, without running the task.
#[tokio::test]
async fn final_messages_never_confirmed_are_published_again_from_the_outbox() {
    let h = Harness::new();
    let repo = h.dirs.task("counted", COUNTED);
    let j = job("counted", &repo, "main", "pkg-1-1", "x86_64");
    let handler = h.handler(Shutdown::new(std::future::pending()));
    let incoming = Incoming::new("x86_64", j.to_json()).with_user_id(PROVISIONER);
    let Disposition::Done(first) = handler.handle(incoming.clone(), &Recorder::new()).await else {
        panic!("the job has a verdict");
    };
    assert!(outbox_entry(&h, &j).is_file());
    let ctx = Recorder::new();
    let Disposition::Done(again) = handler.handle(incoming, &ctx).await else {
        panic!("the kept outcome is published");
    };
    assert_eq!(
        again[0].routing_key, "job.reporting",
        "kept with the outcome"
    );
    assert_eq!(again[1..], first, "the same messages, ids and all");
    assert!(ctx.published().is_empty(), "no status: nothing ran");
    assert_eq!(runs(&h, &j), 1);
}

/// A task that notes its runs and takes long enough for a second copy to arrive meanwhile.
const SLOW_COUNTED: &str =
    "name: slow-counted\nrun: echo run >> \"${TASKBOT_ARTIFACTS}runs.txt\"; sleep 2\n";

/// Two copies of one run message (a provisioner killed before its ack published it twice)
/// reach two runners sharing a work directory at once: the task runs once; the second copy
/// waits for the first and publishes the same outcome, from the outbox.
#[tokio::test]
async fn a_second_copy_of_a_running_job_waits_for_it_and_does_not_run_it_again() {
    let h = Harness::new();
    let repo = h.dirs.task("slow-counted", SLOW_COUNTED);
    let j = job("slow-counted", &repo, "main", "pkg-1-1", "x86_64");
    let (first, second) = (
        h.handler(Shutdown::new(std::future::pending())),
        h.handler(Shutdown::new(std::future::pending())),
    );
    let (ctx1, ctx2) = (Recorder::new(), Recorder::new());
    let incoming = Incoming::new("x86_64", j.to_json()).with_user_id(PROVISIONER);
    let copy = async {
        // The second copy arrives once the first is running its task.
        let deadline = Instant::now() + Duration::from_secs(30);
        while runs(&h, &j) == 0 {
            assert!(Instant::now() < deadline, "the first copy never ran");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        second.handle(incoming.clone(), &ctx2).await
    };
    let (one, two) = tokio::join!(first.handle(incoming.clone(), &ctx1), copy);
    let (Disposition::Done(one), Disposition::Done(two)) = (one, two) else {
        panic!("both copies end with the outcome");
    };
    assert_eq!(runs(&h, &j), 1, "the task ran twice");
    assert_eq!(two[0].routing_key, "job.reporting", "kept with the outcome");
    assert_eq!(two[1..], one, "the same messages, ids and all");
    assert!(
        ctx2.published().is_empty(),
        "the copy published no status of its own"
    );
}

/// A copy waiting for its claim goes back to the queue when its runner stops.
#[tokio::test]
async fn a_copy_waiting_for_its_claim_is_handed_back_at_shutdown() {
    let h = Harness::new();
    let repo = h.dirs.task("slow-counted", SLOW_COUNTED);
    let j = job("slow-counted", &repo, "main", "pkg-1-1", "x86_64");
    let _held = taskbot_runner::claim::JobClaim::try_take(&h.work_dir(), j.job.job_id)
        .unwrap()
        .expect("free");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let handler = h.handler(Shutdown::new(async {
        let _ = stopped.await;
    }));
    let incoming = Incoming::new("x86_64", j.to_json()).with_user_id(PROVISIONER);
    let ctx = Recorder::new();
    let handled = handler.handle(incoming, &ctx);
    let stopper = async {
        tokio::time::sleep(Duration::from_millis(600)).await;
        let _ = stop.send(());
    };
    let (disposition, ()) = tokio::join!(handled, stopper);
    assert_eq!(
        disposition,
        Disposition::Retry("the runner is shutting down; the job goes back to the queue".into())
    );
    assert_eq!(runs(&h, &j), 0, "the task ran without its claim");
    assert!(ctx.published().is_empty());
}

/// A cut or foreign outbox entry never stops the runner: it is moved aside, named in the log,
/// and the job runs.
#[tokio::test]
async fn a_corrupt_outbox_entry_is_moved_aside_and_the_job_runs() {
    let h = Harness::new();
    let repo = h.dirs.task("counted", COUNTED);
    let j = job("counted", &repo, "main", "pkg-1-1", "x86_64");
    let entry = outbox_entry(&h, &j);
    std::fs::create_dir_all(entry.parent().unwrap()).unwrap();
    std::fs::write(&entry, "{\"format\": 1, \"job_id\": ").unwrap();
    let ran = h.run(&j, &Recorder::new()).await;
    assert_eq!(states(&ran.statuses), FULL_LIFE);
    assert_eq!(runs(&h, &j), 1);
    assert!(
        !entry.exists(),
        "the confirmed outcome's entry is no longer pending"
    );
    assert!(published_entry(&h, &j).is_file());
    let refused: Vec<String> = std::fs::read_dir(entry.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".refused"))
        .collect();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert!(
        refused[0].starts_with(&format!("{}.json.", j.job.job_id))
            && refused[0].ends_with(".refused"),
        "{refused:?}"
    );
}

#[tokio::test]
async fn refused_cloning_status_hands_the_job_back_untouched() {
    let h = Harness::new();
    let repo = h.dirs.task("ok", "name: ok\nrun: 'true'\n");
    let j = job("ok", &repo, "main", "pkg-1-1", "x86_64");
    let ran = h.run(&j, &Recorder::new().failing_after(0)).await;
    assert_eq!(
        ran.disposition,
        Disposition::Retry(
            "cannot publish the cloning status: broker refused the message (nack)".into()
        )
    );
    assert!(ran.statuses.is_empty());
    assert!(!h.settings.mirror_dir.exists(), "nothing was fetched");
}

/// The delivery arrived 72.5 s ago and the broker gives up on it after 100 s, keeping a quarter
/// (25 s) for cleanup and publishing: about 2 s are left for a task that may take 30.
#[tokio::test]
async fn time_left_before_the_consumer_timeout_caps_the_time_limit() {
    let mut h = Harness::new();
    h.settings.consumer_timeout_secs = 100;
    let repo = h.dirs.task(
        "endless",
        "name: endless\nrun: sleep 30\ncleanup: ['echo done > \"${TASKBOT_ARTIFACTS}cleanup.txt\"']\n",
    );
    let endless = job("endless", &repo, "main", "pkg-1-1", "x86_64");
    let started = Instant::now();
    let ran = h
        .run(&endless, &Recorder::received(Duration::from_millis(72_500)))
        .await;
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(states(&ran.statuses), FULL_LIFE);
    let limit = time_limit_of(&ran.statuses[1]);
    assert!((1..=2).contains(&limit), "{:?}", ran.statuses[1].detail);
    assert_eq!(ran.results[0].outcome, Outcome::Aborted);
    assert_eq!(
        ran.results[0].note.as_deref(),
        Some(format!("step run timed out: the task's time limit of {limit}s passed (the job's time is capped below the broker's consumer timeout, runner.consumer_timeout_secs)").as_str())
    );
    let log = std::fs::read_to_string(h.job_artifacts(&endless).join("task.log")).unwrap();
    assert!(
        log.contains(&format!(
            "time limit {limit}s (capped below runner.consumer_timeout_secs)"
        )),
        "{log}"
    );
    assert_eq!(
        std::fs::read_to_string(h.job_artifacts(&endless).join("cleanup.txt")).unwrap(),
        "done\n",
        "cleanup still runs, within what is left"
    );
}

#[tokio::test]
async fn shutdown_mid_task_hands_the_job_back_without_a_verdict() {
    let h = Harness::new();
    let repo = h.dirs.task("long", "name: long\nrun: sleep 60\n");
    let long = job("long", &repo, "main", "pkg-1-1", "x86_64");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let handler = h.handler(Shutdown::new(async move {
        let _ = stopped.await;
    }));
    let ctx = Recorder::new();
    let started = Instant::now();
    let stop_once_running = async {
        while !ctx
            .published()
            .iter()
            .any(|m| m.routing_key == "job.running")
        {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the task never started"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let _ = stop.send(());
    };
    let (ran, ()) = tokio::join!(h.run_on(&handler, &long, &ctx), stop_once_running);
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        ran.disposition,
        Disposition::Retry("the runner is shutting down; the job goes back to the queue".into())
    );
    assert_eq!(
        states(&ran.statuses),
        [JobState::Cloning, JobState::Running]
    );
    assert!(ran.results.is_empty(), "no result for an interrupted job");
    let log = std::fs::read_to_string(h.job_artifacts(&long).join("task.log")).unwrap();
    assert!(
        log.contains("interrupted: the runner is shutting down"),
        "{log}"
    );
    check_ending(&long, &ran.statuses, &[], &h.work_dir());
}

#[tokio::test]
async fn task_without_results_file_fails_with_its_exit_code() {
    let h = Harness::new();
    let repo = h.dirs.task(
        "exit1",
        "name: exit1\nrun: 'echo \"mode=$TASKBOT_ARG_MODE item=$TASKBOT_ITEM\"; exit 1'\n",
    );
    let args = args(&[("mode", "strict")]);
    let failing = job_with_args("dist.exit1", &repo, "main", "pkg-1-1", "x86_64", args);

    let (states, results) = h.outcome_of(&failing, 1).await;
    assert_eq!(states, FULL_LIFE);
    let r = &results[0];
    assert_eq!(r.outcome, Outcome::Failed);
    assert_eq!(r.note.as_deref(), Some("exit code 1"));
    assert_eq!(
        r.testcase, "dist.exit1",
        "the job's task name is the default testcase"
    );
    let log_path = h.job_artifacts(&failing).join("task.log");
    assert_eq!(
        r.log_url.as_deref(),
        Some(log_path.display().to_string().as_str())
    );
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(log.contains("mode=strict item=pkg-1-1"), "{log}");
}

#[tokio::test]
async fn task_past_its_timeout_is_aborted_and_its_process_group_killed() {
    let mut h = Harness::new();
    // The runner's cap (2 s) wins over the task's own, longer timeout.
    h.settings.task_timeout_secs = 2;
    // A background process with a command line no other process has: the task runs in a pid
    // namespace of its own, so the pid it could write down would mean nothing on the host.
    let marker = format!("60.{}", std::process::id());
    let repo = h.dirs.task(
        "sleeper",
        &format!("name: sleeper\ntimeout: 600\nrun: 'sleep {marker} & echo started; sleep 60'\n"),
    );
    let sleeper = job("sleeper", &repo, "main", "pkg-1-1", "x86_64");
    let started = Instant::now();

    let (states, results) = h.outcome_of(&sleeper, 1).await;
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
    let deadline = Instant::now() + Duration::from_secs(5);
    while processes_running(&format!("sleep\0{marker}")) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        processes_running(&format!("sleep\0{marker}")),
        0,
        "the task's background process survived"
    );
}

#[tokio::test]
async fn repository_outside_the_allowlist_crashes_without_cloning() {
    let h = Harness::new();
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
    let foreign = job("foreign", &url, "main", "pkg-1-1", "x86_64");

    let (states, results) = h.outcome_of(&foreign, 1).await;
    assert_eq!(states, CRASHED_BEFORE_RUNNING);
    let r = &results[0];
    assert_eq!(r.outcome, Outcome::Crashed);
    assert_eq!(
        r.note.as_deref(),
        Some(format!("repository {url} is not in runner.allowed_repos").as_str())
    );
    assert_eq!(r.testcase, "foreign");
    assert_eq!(r.log_url, None, "nothing ran, so there is no log");
    assert!(!h.job_artifacts(&foreign).exists());
}

#[tokio::test]
async fn missing_ref_or_repository_crashes_saying_which() {
    let h = Harness::new();
    let repo = h.dirs.task("real", "name: t\nrun: 'true'\n");
    let no_ref = job("real", &repo, "no-such-branch", "pkg-1-1", "x86_64");
    let missing_url = format!("file://{}", h.dirs.repos().join("missing").display());
    let no_repo = job("missing", &missing_url, "main", "pkg-1-1", "x86_64");

    let (states, results) = h.outcome_of(&no_ref, 1).await;
    assert_eq!(states, CRASHED_BEFORE_RUNNING);
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

    let (states, results) = h.outcome_of(&no_repo, 1).await;
    assert_eq!(states, CRASHED_BEFORE_RUNNING);
    let note = results[0].note.clone().unwrap();
    assert!(
        note.starts_with(&format!("cannot clone repository {missing_url}:")),
        "{note}"
    );
}

#[tokio::test]
async fn invalid_taskbot_yaml_crashes_with_its_position() {
    let h = Harness::new();
    let repo = h.dirs.task("typo", "name: typo\ncomand: 'true'\n");
    let bare = h.dirs.repo("bare", &[("README", "no task file here\n")]);
    let typo = job("typo", &repo, "main", "pkg-1-1", "x86_64");
    let no_file = job("bare", &bare, "main", "pkg-1-1", "x86_64");

    let (states, results) = h.outcome_of(&typo, 1).await;
    assert_eq!(states, CRASHED_BEFORE_RUNNING);
    let note = results[0].note.clone().unwrap();
    assert!(
        note.starts_with("invalid taskbot.yaml: unknown field `comand`"),
        "{note}"
    );
    assert!(note.ends_with("at line 2 column 1"), "{note}");

    let (_, results) = h.outcome_of(&no_file, 1).await;
    assert_eq!(
        results[0].note.as_deref(),
        Some("the repository has no taskbot.yaml at its root")
    );
}

#[tokio::test]
async fn invalid_results_file_crashes_quoting_the_log() {
    let h = Harness::new();
    let repo = h.dirs.task("badresults", "name: badresults\nrun: |\n  echo 'step one done'\n  printf 'results:\\n  - outcome: PASSED\\n' > \"$TASKBOT_RESULTS\"\n");
    let bad = job("badresults", &repo, "main", "pkg-1-1", "x86_64");

    let (states, results) = h.outcome_of(&bad, 1).await;
    assert_eq!(states, CRASHED_RUNNING);
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
        tail.contains("\nstep one done\n== step 01-run: exit code 0 after"),
        "{tail}"
    );
    assert!(r.log_url.is_some());
}

/// `runner.max_task_file_bytes` and `runner.max_task_file_depth` are the runner's limits on a
/// task's files, not fixed ones: set low, a `taskbot.yaml` past the size, and a results file past
/// the depth, are each refused naming the limit, and the job CRASHED.
#[tokio::test]
async fn the_configured_task_file_limits_are_the_ones_enforced() {
    let mut h = Harness::new();
    h.settings.max_task_file_bytes = 200;
    h.settings.max_task_file_depth = 3;
    let padded = format!("name: big\nrun: 'true'\ndescription: {}\n", "x".repeat(300));
    let big = h.dirs.task("big", &padded);
    let (states, results) = h
        .outcome_of(&job("big", &big, "main", "pkg-1-1", "x86_64"), 1)
        .await;
    assert_eq!(states, CRASHED_BEFORE_RUNNING);
    let note = results[0].note.clone().unwrap();
    assert!(note.contains("over the limit of 200"), "{note}");

    let deep = h.dirs.repo(
        "deep",
        &[
            ("taskbot.yaml", "name: deep\nrun: sh write.sh\n"),
            (
                "write.sh",
                "echo 'results: [{item: a, type: t, data: {a: {b: {c: 1}}}}]' > \"$TASKBOT_RESULTS\"\n",
            ),
        ],
    );
    let (states, results) = h
        .outcome_of(&job("deep", &deep, "main", "pkg-1-1", "x86_64"), 1)
        .await;
    assert_eq!(states, CRASHED_RUNNING);
    let note = results[0].note.clone().unwrap();
    assert!(
        note.starts_with("invalid results file:")
            && note.contains("deeper than the limit of 3 levels"),
        "{note}"
    );
}

#[tokio::test]
async fn several_results_at_a_tag_with_the_task_environment() {
    let h = Harness::new();
    let path = h.dirs.repos().join("multi");
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
    let multi = job("multi", &repo, "v1", "pkg-2.0-1.fc40", "x86_64");

    let (states, results) = h.outcome_of(&multi, 2).await;
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
    assert!(Path::new(workdir).starts_with(h.work_dir()), "{workdir}");
    assert_eq!(one.data["results"], format!("{workdir}/out/results.yml"));
    assert_eq!(two.outcome, Outcome::NeedsInspection);
    assert_eq!(
        (two.item.as_str(), two.arch.as_str()),
        ("other-1-1", "noarch")
    );
    assert_eq!(two.note.as_deref(), Some("x86_64"));
}

#[tokio::test]
async fn v1_task_downloads_prepares_runs_steps_keeps_artifacts_and_cleans_up() {
    let h = Harness::new();
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
    let repo = h.dirs.task("v1", &yaml);
    let args = args(&[("tag", "f40")]);
    let v1 = job_with_args("v1", &repo, "main", "pkg-1.0-1.fc40", "x86_64", args);

    let (states, results) = h.outcome_of(&v1, 1).await;
    assert_eq!(states, FULL_LIFE);
    let r = &results[0];
    assert_eq!(
        (r.outcome, r.testcase.as_str(), r.note.as_deref()),
        (Outcome::Passed, "dist.v1", Some("exit code 0"))
    );
    let artifacts = h.job_artifacts(&v1);
    let read = |p: &str| std::fs::read_to_string(artifacts.join(p)).unwrap();
    assert_eq!(read("out/copy.log").as_bytes(), rpm.as_slice());
    assert_eq!(read("out/prepared.txt"), "tag=f40\n");
    assert_eq!(read("cleaned.txt"), "cleaned\n");
    assert!(
        !artifacts.join("steps").exists(),
        "step output is stored once, in task.log"
    );
    let log = read("task.log");
    for expected in [
        "HTTP status 503",
        "attempt 2/",
        "23 bytes saved as",
        "environment: needs packages coreutils",
        "== step 01-prepare-1: mkdir -p out",
        "== step 02-setup: exit code 0 after",
        "== step 03-check: cat rpms/*.rpm",
        "checked pkg-1.0-1.fc40\n== step 03-check: exit code 0 after",
        "== step 04-run-2: exit code 0 after",
        "artifact kept: out/copy.log",
        "== step 05-cleanup-1: exit code 0",
    ] {
        assert!(log.contains(expected), "{expected:?} missing from:\n{log}");
    }
}

#[tokio::test]
async fn download_failures_crash_naming_the_url_and_reason() {
    let h = Harness::new();
    let base = http_server(|path, _| match path {
        "/big" => (200, vec![0u8; 5000]),
        "/ok" => (200, b"ok".to_vec()),
        _ => (404, Vec::new()),
    })
    .await;
    let repo_for = |name: &str, download: &str| {
        h.dirs.task(
            name,
            &format!("name: {name}\ndownloads: [{download}]\nrun: 'true'\n"),
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
    let mut jobs = Vec::new();
    for (name, download, _) in &cases {
        let j = job(name, &repo_for(name, download), "main", "pkg-1-1", "x86_64");
        jobs.push(j);
    }
    for (j, (_, _, expected)) in jobs.iter().zip(&cases) {
        let (states, results) = h.outcome_of(j, 1).await;
        assert_eq!(states, CRASHED_RUNNING);
        assert_eq!(results[0].outcome, Outcome::Crashed);
        let note = results[0].note.clone().unwrap();
        assert!(note.starts_with(expected.as_str()), "{note}");
        assert!(note.contains("--- end of task.log ---"), "{note}");
        assert!(results[0].log_url.is_some());
    }
}

#[tokio::test]
async fn tasks_refuse_item_types_arches_and_machines_they_do_not_accept() {
    let h = Harness::new();
    let picky = h.dirs.task(
        "picky",
        "name: picky\nitem_types: [koji_build]\narches: [aarch64]\nrun: 'true'\n",
    );
    let vm = h.dirs.task(
        "vm",
        "name: vm\nenvironment: {provision: vm}\nrun: 'true'\n",
    );
    let destructive = h.dirs.task("destructive", "name: destructive\nenvironment: {destructive: true}\nrun: touch \"${TASKBOT_ARTIFACTS}ran\"\n");
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
    for (j, expected) in &cases {
        let (states, results) = h.outcome_of(j, 1).await;
        assert_eq!(states, CRASHED_BEFORE_RUNNING);
        assert_eq!(results[0].outcome, Outcome::Crashed);
        assert_eq!(results[0].note.as_deref(), Some(expected.as_str()));
    }
    assert!(!h.job_artifacts(&wrecker).join("ran").exists());
}

#[tokio::test]
async fn step_timeout_aborts_naming_the_step_and_cleanup_still_runs() {
    let h = Harness::new();
    let repo = h.dirs.task("slow", "name: slow\nrun:\n  - echo first\n  - {run: 'echo sleeping; sleep 30', timeout: 1, name: slow}\ncleanup: ['echo done > \"${TASKBOT_ARTIFACTS}cleanup.txt\"']\n");
    let slow = job("slow", &repo, "main", "pkg-1-1", "x86_64");
    let started = Instant::now();
    let (states, results) = h.outcome_of(&slow, 1).await;
    assert!(started.elapsed() < Duration::from_secs(15));
    assert_eq!(states, FULL_LIFE);
    let r = &results[0];
    assert_eq!(r.outcome, Outcome::Aborted);
    assert_eq!(
        r.note.as_deref(),
        Some("step slow timed out after 1s (its own timeout: 1s)")
    );
    let log = std::fs::read_to_string(h.job_artifacts(&slow).join("task.log")).unwrap();
    assert!(
        log.contains("== step 02-slow: echo sleeping; sleep 30\nsleeping\n== step 02-slow: timed out after 1s"),
        "{log}"
    );
    assert_eq!(
        std::fs::read_to_string(h.job_artifacts(&slow).join("cleanup.txt")).unwrap(),
        "done\n"
    );
}

#[tokio::test]
async fn task_killed_by_a_signal_crashes_and_a_failing_prepare_step_crashes() {
    let h = Harness::new();
    let segv = h.dirs.task(
        "segv",
        "name: segv\nrun: 'echo about to crash; kill -SEGV $$'\n",
    );
    let prep = h.dirs.task("prep", "name: prep\nprepare: [{run: 'echo no make here; exit 2', name: build}]\nrun: touch \"${TASKBOT_ARTIFACTS}ran\"\n");
    let crash = job("segv", &segv, "main", "pkg-1-1", "x86_64");
    let failing = job("prep", &prep, "main", "pkg-1-1", "x86_64");

    let (states, results) = h.outcome_of(&crash, 1).await;
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

    let (states, results) = h.outcome_of(&failing, 1).await;
    assert_eq!(states.last(), Some(&JobState::Crashed));
    let note = results[0].note.clone().unwrap();
    assert!(
        note.starts_with("prepare step build failed: exit code 2\n--- end of task.log ---\n"),
        "{note}"
    );
    assert!(note.contains("no make here"), "{note}");
    assert!(!h.job_artifacts(&failing).join("ran").exists());
}

#[tokio::test]
async fn second_job_fetches_the_new_commit_through_the_mirror() {
    let h = Harness::new();
    let path = h.dirs.repos().join("evolving");
    commit(&path, &[("taskbot.yaml", "name: evolving\nrun: exit 0\n")]);
    let repo = format!("file://{}", path.display());
    let first = job("evolving", &repo, "main", "pkg-1-1", "x86_64");
    let (_, results) = h.outcome_of(&first, 1).await;
    assert_eq!(results[0].outcome, Outcome::Passed);
    let mirrors: Vec<_> = std::fs::read_dir(&h.settings.mirror_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "git"))
        .collect();
    assert_eq!(mirrors.len(), 1, "{mirrors:?}");

    commit(&path, &[("taskbot.yaml", "name: evolving\nrun: exit 4\n")]);
    let second = job("evolving", &repo, "main", "pkg-2-1", "x86_64");
    let (_, results) = h.outcome_of(&second, 1).await;
    assert_eq!(
        (results[0].outcome, results[0].note.as_deref()),
        (Outcome::Failed, Some("exit code 4"))
    );
    let log = std::fs::read_to_string(h.job_artifacts(&second).join("task.log")).unwrap();
    let fetched: usize = log
        .split(" objects fetched into the mirror")
        .next()
        .and_then(|head| head.rsplit('(').next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no fetch count in:\n{log}"));
    assert!((1..=3).contains(&fetched), "only the new commit: {log}");
}

#[tokio::test]
async fn a_results_file_linking_to_a_host_file_crashes_the_job_without_reading_it() {
    let h = Harness::new();
    // From inside the sandbox the link points at the sandbox's own /etc/passwd; the runner
    // reads results.yml on the host, where it would be the host's.
    let repo = h.dirs.task(
        "linker",
        "name: linker\nrun: 'ln -s /etc/passwd results.yml'\n",
    );
    let linker = job("linker", &repo, "main", "pkg-1-1", "x86_64");
    crashed_on_a_link_unread(&h, &linker).await;
}

#[tokio::test]
async fn a_task_file_that_is_a_symbolic_link_is_refused() {
    let h = Harness::new();
    let repo = h.dirs.task("plain", "name: plain\nrun: 'true'\n");
    // Turn taskbot.yaml into a link to a host file, as a repository can hold it.
    let path = repo.trim_start_matches("file://").to_string();
    let git = |args: &[&str]| {
        assert!(std::process::Command::new("git")
            .args(["-C", &path])
            .args(args)
            .status()
            .unwrap()
            .success());
    };
    git(&["rm", "-q", "taskbot.yaml"]);
    std::os::unix::fs::symlink(
        "/etc/passwd",
        std::path::Path::new(&path).join("taskbot.yaml"),
    )
    .unwrap();
    git(&["add", "taskbot.yaml"]);
    git(&[
        "-c",
        "user.name=t",
        "-c",
        "user.email=t@t",
        "commit",
        "-qm",
        "link",
    ]);
    let linked = job("plain", &repo, "main", "pkg-1-1", "x86_64");
    crashed_on_a_link_unread(&h, &linked).await;
}

/// `job` ended CRASHED for a symbolic link, and nothing of the link's target (the host's
/// /etc/passwd) reached its note.
async fn crashed_on_a_link_unread(h: &Harness, job: &ProvisionedJob) {
    let (states, results) = h.outcome_of(job, 1).await;
    assert_eq!(states.last(), Some(&JobState::Crashed));
    let note = results[0].note.clone().unwrap();
    assert!(note.contains("symbolic link"), "{note}");
    assert!(
        !note.contains("root:x:0:0"),
        "a host file leaked into the note: {note}"
    );
}

#[tokio::test]
async fn a_task_printing_500_mb_is_stored_within_the_log_cap_and_still_ends_with_its_verdict() {
    let mut h = Harness::new();
    h.settings.max_log_bytes = 1024 * 1024;
    let repo = h.dirs.task(
        "loud",
        "name: loud\nrun: |\n  echo first words\n  head -c 500M /dev/zero | tr '\\0' y\n  echo\n  echo last words\n  exit 3\n",
    );
    let loud = job("loud", &repo, "main", "pkg-1-1", "x86_64");

    let (states, results) = h.outcome_of(&loud, 1).await;
    assert_eq!(states, FULL_LIFE);
    let r = &results[0];
    assert_eq!(r.outcome, Outcome::Failed);
    let note = r.note.as_deref().unwrap();
    let (verdict, notice) = note.split_once('\n').expect("a notice after the verdict");
    assert_eq!(verdict, "exit code 3");
    let dropped: u64 = notice
        .strip_prefix("task.log passed runner.max_log_bytes: ")
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no dropped bytes in {notice:?}"));
    assert!(dropped > 499 * 1024 * 1024, "{dropped}");

    let path = h.job_artifacts(&loud).join("task.log");
    let stored = std::fs::metadata(&path).unwrap().len();
    assert!(stored <= 1024 * 1024, "task.log has {stored} bytes");
    let log = String::from_utf8(std::fs::read(&path).unwrap()).unwrap();
    assert!(log.starts_with("task loud ("), "the head is kept");
    assert!(log.contains("\nfirst words\n"));
    assert!(log.contains(&format!(
        "[taskbot: {dropped} bytes of this log were dropped here (runner.max_log_bytes = 1048576)"
    )));
    assert!(
        log.contains("\nlast words\n== step 01-run: exit code 3 after"),
        "the tail is kept"
    );
    let entries: Vec<_> = std::fs::read_dir(h.job_artifacts(&loud)).unwrap().collect();
    assert_eq!(entries.len(), 1, "task.log only: {entries:?}");
}

/// A task that writes `files` (name, bytes) into its artifacts directory.
fn writing_artifacts(h: &Harness, name: &str, files: &[(&str, usize)]) -> ProvisionedJob {
    let script: String = files
        .iter()
        .map(|(file, bytes)| {
            format!("  head -c {bytes} /dev/zero > \"${{TASKBOT_ARTIFACTS}}{file}\"\n")
        })
        .collect();
    let repo = h.dirs.task(
        name,
        &format!("name: {name}\nrun: |\n  mkdir -p \"${{TASKBOT_ARTIFACTS}}sub\"\n{script}"),
    );
    job(name, &repo, "main", "pkg-1-1", "x86_64")
}

/// The files left in `dir`, relative, sorted.
fn files_in(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.symlink_metadata().unwrap().is_dir() {
                stack.push(path);
            } else {
                let relative = path.strip_prefix(dir).unwrap();
                out.push(relative.display().to_string());
            }
        }
    }
    out.sort();
    out
}

#[tokio::test]
async fn artifacts_past_the_byte_cap_are_removed_and_the_result_says_so() {
    let mut h = Harness::new();
    h.settings.max_artifact_bytes = 1000;
    let big = writing_artifacts(&h, "big", &[("a.bin", 600), ("b.bin", 600), ("c.bin", 300)]);

    let (states, results) = h.outcome_of(&big, 1).await;
    assert_eq!(states, FULL_LIFE);
    assert_eq!(results[0].outcome, Outcome::Passed);
    assert_eq!(
        results[0].note.as_deref(),
        Some("exit code 0\n1 artifact file(s) were not kept, over the job's caps (runner.max_artifact_files = 10000, runner.max_artifact_bytes = 1000): b.bin")
    );
    assert_eq!(
        files_in(&h.job_artifacts(&big)),
        ["a.bin", "c.bin", "task.log"]
    );
    let log = std::fs::read_to_string(h.job_artifacts(&big).join("task.log")).unwrap();
    assert!(
        log.contains("artifact removed: b.bin: over runner.max_artifact_bytes (1000 bytes; this file has 600)"),
        "{log}"
    );
}

#[tokio::test]
async fn artifacts_past_the_file_count_cap_are_removed_and_the_result_says_so() {
    let mut h = Harness::new();
    h.settings.max_artifact_files = 2;
    let files: Vec<(String, usize)> = (1..=8).map(|i| (format!("sub/{i}.txt"), 1)).collect();
    let files: Vec<(&str, usize)> = files.iter().map(|(f, n)| (f.as_str(), *n)).collect();
    let many = writing_artifacts(&h, "many", &files);

    let (states, results) = h.outcome_of(&many, 1).await;
    assert_eq!(states, FULL_LIFE);
    assert_eq!(results[0].outcome, Outcome::Passed);
    assert_eq!(
        results[0].note.as_deref(),
        Some("exit code 0\n6 artifact file(s) were not kept, over the job's caps (runner.max_artifact_files = 2, runner.max_artifact_bytes = 1073741824): sub/3.txt, sub/4.txt, sub/5.txt, sub/6.txt, sub/7.txt, and 1 more (see task.log)")
    );
    assert_eq!(
        files_in(&h.job_artifacts(&many)),
        ["sub/1.txt", "sub/2.txt", "task.log"]
    );
}

#[tokio::test]
async fn links_to_host_files_in_the_artifacts_are_never_kept_nor_given_to_the_task() {
    let h = Harness::new();
    let repo = h.dirs.task(
        "links",
        "name: links\nrun: |\n  cd \"$TASKBOT_ARTIFACTS\"\n  ln -s /etc/passwd passwd\n  ln -s / root\n  echo mine > own\n  ln own own-too\n  echo kept > kept.txt\n  cat host-hard host-sym || true\n",
    );
    let links = job("links", &repo, "main", "pkg-1-1", "x86_64");
    // What an earlier attempt of the job could have left: a hard link to a host file only root
    // may read, and a symbolic link to it.
    let secret_dir = tempfile::tempdir().unwrap();
    let secret = secret_dir.path().join("secret");
    std::fs::write(&secret, "host secret").unwrap();
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let artifacts = h.job_artifacts(&links);
    std::fs::create_dir_all(&artifacts).unwrap();
    std::fs::hard_link(&secret, artifacts.join("host-hard")).unwrap();
    std::os::unix::fs::symlink(&secret, artifacts.join("host-sym")).unwrap();

    let (states, results) = h.outcome_of(&links, 1).await;
    assert_eq!(states, FULL_LIFE);
    assert_eq!(results[0].outcome, Outcome::Passed);
    let note = results[0].note.as_deref().unwrap();
    assert!(
        note.starts_with(
            "exit code 0\n6 file(s) in the artifacts were removed as links or special files"
        ),
        "{note}"
    );
    assert_eq!(files_in(&artifacts), ["kept.txt", "task.log"]);
    let log = std::fs::read_to_string(artifacts.join("task.log")).unwrap();
    assert!(
        !log.contains("host secret"),
        "the task read the host file: {log}"
    );
    assert!(log.contains("cat: host-hard: Permission denied"), "{log}");
    assert!(
        log.contains("artifact removed: host-hard: 2 hard links"),
        "{log}"
    );
    // The host file is whole, still root's, and only its second name is gone.
    let meta = std::fs::metadata(&secret).unwrap();
    assert_eq!(
        (
            std::os::unix::fs::MetadataExt::uid(&meta),
            std::os::unix::fs::MetadataExt::nlink(&meta)
        ),
        (0, 1)
    );
    assert_eq!(std::fs::read_to_string(&secret).unwrap(), "host secret");
}
