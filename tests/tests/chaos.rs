//! Chaos: 300 jobs through the whole pipeline while a service is killed with SIGKILL every 1–2 s
//! (every service in turn, in a random order each round) and restarted at once, the broker is killed and restarted once, and PostgreSQL is crash-restarted
//! once. Afterwards every job has exactly one stored result, PASSED; every job is `done` with its
//! whole history; every dead-letter queue is empty; and no task that finished ran again unless a
//! kill of its arch's runner fell between that run's end and the next run's start (the only window
//! where a finished run has no kept outcome yet).
//!
//! The broker and the database are a node and a cluster of this test's own ([`PrivateBroker`],
//! [`PrivatePostgres`]), never the machine's shared ones; this file has one test, as it points the
//! test harness at them through the environment.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use taskbot::testing::TestBroker;
use taskbot_tests::{free_port, Deployment, PrivateBroker, PrivatePostgres};

/// Events published; each gives one job per arch.
const EVENTS: usize = 150;
const ARCHES: [&str; 2] = ["x86_64", "noarch"];
const JOBS: i64 = (EVENTS * ARCHES.len()) as i64;
/// How long the whole run may take before the test gives up.
const DEADLINE: Duration = Duration::from_secs(900);

const RULES: &str = r#"
tasks:
  chaos: { repo: chaos, ref: main }
rules:
  - name: chaos-on-test-event
    when: { topic: org.taskbot.test.chaos }
    do:
      - task: chaos
        item: "{{ msg.nvr }}"
        item_type: koji_build
        arches: [x86_64, noarch]
"#;

/// Each run notes its start and end (wall-clock seconds) in the job's artifacts directory, which
/// is kept across a job's runs.
const RUN_SH: &str = r#"echo "start $(date +%s.%N)" >> "${TASKBOT_ARTIFACTS}runs.txt"
sleep 1
echo "end $(date +%s.%N)" >> "${TASKBOT_ARTIFACTS}runs.txt"
"#;

/// Seconds since the epoch, as the task's `date +%s.%N` writes them.
fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// A small xorshift generator: the test's choices, reproducible from the seed it prints.
struct Dice(u64);

impl Dice {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// One job's runs, from its `runs.txt`: (start, end) pairs, `end` missing for a run cut short.
fn runs_of(text: &str) -> Vec<(f64, Option<f64>)> {
    let mut runs: Vec<(f64, Option<f64>)> = Vec::new();
    for line in text.lines() {
        let Some((mark, at)) = line.split_once(' ') else {
            continue;
        };
        let Ok(at) = at.parse::<f64>() else { continue };
        match mark {
            "start" => runs.push((at, None)),
            "end" => {
                if let Some(last) = runs.last_mut() {
                    last.1 = Some(at);
                }
            }
            _ => {}
        }
    }
    runs
}

/// Publish event `n` under a fixed id (a re-publish is a duplicate the pipeline must absorb),
/// retrying through broker trouble.
async fn publish(d: &Deployment, n: usize) {
    let event = taskbot::messages::Event {
        id: format!("chaos-{n}"),
        topic: "org.taskbot.test.chaos".into(),
        source: "test".into(),
        sent_at: None,
        received_at: chrono::Utc::now(),
        username: None,
        msg: serde_json::json!({ "nvr": format!("chaos-{n}-1.fc40") }),
        headers: Default::default(),
    };
    let body = taskbot::messages::Message::to_json(&event);
    d.broker
        .publish(&d.broker.topology.events_exchange(), &event.topic, body)
        .await;
}

/// One bigint from the database, or `None` while it is unreachable (it restarts in this test).
async fn count(d: &Deployment, sql: &str) -> Option<i64> {
    let url = d.database.as_ref()?.url.clone();
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .ok()?;
    tokio::spawn(connection);
    client.query_one(sql, &[]).await.ok().map(|row| row.get(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_jobs_survive_kills_a_broker_restart_and_a_database_restart() {
    let mut broker = PrivateBroker::with_management();
    let postgres = PrivatePostgres::start();
    // Read by `taskbot::testing`, which `Deployment` uses; set before any other thread of this
    // test binary runs.
    std::env::set_var("TASKBOT_TEST_AMQP_URL", broker.url());
    std::env::set_var("TASKBOT_TEST_MANAGEMENT_URL", broker.management_url());
    std::env::set_var("TASKBOT_TEST_POSTGRES_URL", postgres.url());

    let task = tempfile::tempdir().unwrap();
    std::fs::write(
        task.path().join("taskbot.yaml"),
        "name: chaos\ndescription: Notes its runs.\nrun: sh run.sh\ntestcase: dist.chaos\n",
    )
    .unwrap();
    std::fs::write(task.path().join("run.sh"), RUN_SH).unwrap();
    let mut d = Deployment::new(RULES, &[("chaos", task.path())], free_port()).await;
    d.configure(|c| c.runner.concurrency = 2);
    d.start("reporter", "reporter", &[]);
    d.start("provisioner", "provisioner", &[]);
    d.start("rules", "rules", &[]);
    // Two x86_64 runners share the work directory, as runners on one host do.
    d.start("runner-x86_64", "runner", &["--arch", "x86_64"]);
    d.start("runner-x86_64", "runner", &["--arch", "x86_64"]);
    d.start("runner-noarch", "runner", &["--arch", "noarch"]);
    d.wait_until_consuming(Duration::from_secs(60)).await;

    let seed = now().to_bits() | 1;
    println!("chaos seed {seed}");
    let mut dice = Dice(seed);
    let started = Instant::now();
    for n in 0..EVENTS / 3 {
        publish(&d, n).await;
    }
    let mut published = EVENTS / 3;
    // (when, service name) of every SIGKILL.
    let mut kills: Vec<(f64, String)> = Vec::new();
    let (mut broker_restarted, mut database_restarted) = (None::<f64>, false);
    let results_sql = "select count(*) from results";
    let done_sql = "select count(*) from jobs where state = 'done'";
    // Victims in rounds: each round kills every service once, in a random order.
    let mut round: Vec<usize> = Vec::new();
    loop {
        tokio::time::sleep(Duration::from_millis(1000 + dice.below(1000) as u64)).await;
        if round.is_empty() {
            round = (0..d.services.len()).collect();
            for i in (1..round.len()).rev() {
                round.swap(i, dice.below(i + 1));
            }
        }
        let victim = round.pop().unwrap();
        d.restart(victim);
        kills.push((now(), d.services[victim].name.clone()));

        let stored = count(&d, results_sql).await;
        let done = count(&d, done_sql).await;
        if stored.is_some_and(|n| n >= JOBS / 6) && broker_restarted.is_none() {
            broker.kill();
            broker_restarted = Some(now());
            tokio::time::sleep(Duration::from_secs(3)).await;
            broker.resume();
            d.broker = TestBroker::new(&d.config).await;
            // Events published after the broker came back, with one already seen again.
            for n in published..2 * EVENTS / 3 {
                publish(&d, n).await;
            }
            publish(&d, 0).await;
            published = 2 * EVENTS / 3;
        }
        if stored.is_some_and(|n| n >= JOBS / 2) && !database_restarted {
            postgres.crash_restart();
            database_restarted = true;
            for n in published..EVENTS {
                publish(&d, n).await;
            }
            published = EVENTS;
        }
        if published == EVENTS && stored == Some(JOBS) && done == Some(JOBS) {
            break;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "after {DEADLINE:?}: {stored:?} results, {done:?} jobs done, {} kills\n{}",
            kills.len(),
            all_logs(&d)
        );
    }
    let elapsed = started.elapsed();
    assert!(broker_restarted.is_some() && database_restarted);
    // Nothing left in flight: every queue drained, and a moment for a straggling duplicate.
    settle(&d).await;
    tokio::time::sleep(Duration::from_secs(5)).await;

    check_results(&d).await;
    check_histories(&d).await;
    check_dead_letters(&d).await;
    let reruns = check_runs(&d, &kills).await;
    let mut by_service: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, name) in &kills {
        *by_service.entry(name).or_default() += 1;
    }
    println!(
        "chaos: {JOBS} jobs in {elapsed:.0?}; {} SIGKILLs {by_service:?}, one broker restart, one \
         PostgreSQL restart; {} runs cut short by a kill; {} finished runs repeated after a \
         runner kill",
        kills.len(),
        reruns.interrupted,
        reruns.repeated
    );
    d.shutdown().await;
}

/// Every service log, restarted ones too (a restart starts a new log file).
fn all_logs(d: &Deployment) -> String {
    let mut out = String::new();
    let mut paths: Vec<_> = std::fs::read_dir(d.dir.path().join("logs"))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .collect();
    paths.sort();
    for path in paths {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(40).collect();
        out.push_str(&format!("--- {} (last lines) ---\n", path.display()));
        for line in tail.into_iter().rev() {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// Wait until every queue of the pipeline is empty and unconsumed messages are gone.
async fn settle(d: &Deployment) {
    let t = &d.broker.topology;
    let queues: Vec<String> = t
        .work_queues()
        .into_iter()
        .chain(t.sink_queues(&[taskbot::topology::Sink::Postgres]))
        .map(|q| q.name)
        .collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut busy = Vec::new();
        for q in &queues {
            let depth = d.broker.depth(q).await;
            if depth > 0 {
                busy.push((q.clone(), depth));
            }
        }
        if busy.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "queues never drained: {busy:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn check_results(d: &Deployment) {
    let db = d.db().await;
    let rows = db
        .query(
            "select item, arch, testcase, outcome, count(*) from results \
             group by item, arch, testcase, outcome",
            &[],
        )
        .await
        .unwrap();
    let mut seen = BTreeSet::new();
    for row in &rows {
        let (item, arch, testcase, outcome, n): (String, String, String, String, i64) =
            (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
        assert_eq!(n, 1, "{item} {arch} {testcase}: {n} results stored");
        assert_eq!(outcome, "PASSED", "{item} {arch} {testcase}");
        assert_eq!(testcase, "dist.chaos");
        assert!(seen.insert((item, arch)), "two outcomes for one testcase");
    }
    assert_eq!(seen.len() as i64, JOBS, "one result per job");
}

/// Every job is `done`, and its history holds every state of a job's life, ending with `done`.
async fn check_histories(d: &Deployment) {
    let db = d.db().await;
    let jobs: i64 = db
        .query_one("select count(*) from jobs where state = 'done'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(jobs, JOBS);
    let rows = db
        .query(
            "select job_id::text, array_agg(state order by at, state) from job_events \
             group by job_id",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len() as i64, JOBS, "every job has a history");
    let life = [
        "queued",
        "provisioning",
        "provisioned",
        "cloning",
        "running",
        "reporting",
        "done",
    ];
    for row in rows {
        let (job, states): (String, Vec<String>) = (row.get(0), row.get(1));
        for state in life {
            assert!(
                states.iter().any(|s| s == state),
                "job {job} lacks {state}: {states:?}"
            );
        }
        assert_eq!(states.last().map(String::as_str), Some("done"), "{job}");
    }
}

async fn check_dead_letters(d: &Deployment) {
    let t = &d.broker.topology;
    for source in t.dead_letter_sources() {
        let queue = t.dead_letter_queue(&source);
        let depth = d.broker.depth(&queue).await;
        assert_eq!(depth, 0, "{queue} holds {depth} messages\n{}", all_logs(d));
    }
}

#[derive(Default)]
struct Reruns {
    interrupted: usize,
    repeated: usize,
}

/// Every job ran to its end at least once; a run that had ended was repeated only when a runner
/// of the job's arch was killed between that end and the next run's start.
async fn check_runs(d: &Deployment, kills: &[(f64, String)]) -> Reruns {
    let jobs = d
        .db()
        .await
        .query("select job_id::text, arch from jobs", &[])
        .await
        .unwrap();
    let mut reruns = Reruns::default();
    for row in &jobs {
        let (job_id, arch): (String, String) = (row.get(0), row.get(1));
        let path = d.config.runner.artifacts_dir.join(&job_id).join("runs.txt");
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let runs = runs_of(&text);
        assert!(
            runs.iter().any(|(_, end)| end.is_some()),
            "job {job_id} never ran to its end: {text}"
        );
        reruns.interrupted += runs.iter().filter(|(_, end)| end.is_none()).count();
        let runner = format!("runner-{arch}");
        let runner_killed = |from: f64, to: f64| {
            kills
                .iter()
                .any(|(at, name)| *name == runner && *at >= from - 0.1 && *at <= to + 0.5)
        };
        for pair in runs.windows(2) {
            let ((started, ended), (next_start, _)) = (pair[0], pair[1]);
            match ended {
                // A run cut short (or a second copy started beside it): only a kill of its
                // runner may explain it.
                None => assert!(
                    runner_killed(started, next_start),
                    "job {job_id} started again while a run of it was going, with no kill of \
                     its runner between: {text}"
                ),
                Some(ended) => {
                    assert!(
                        runner_killed(ended, next_start),
                        "job {job_id} ran again after finishing, with no kill of its runner \
                         between: {text}"
                    );
                    reruns.repeated += 1;
                }
            }
        }
    }
    reruns
}

#[test]
fn runs_files_read_as_start_end_pairs() {
    let runs = runs_of("start 10.5\nend 10.7\nstart 12.0\nstart 13.0\nend 13.2\n");
    assert_eq!(runs, [(10.5, Some(10.7)), (12.0, None), (13.0, Some(13.2))]);
}
