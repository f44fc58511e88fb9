//! The hostile task (tests/fixtures/tasks/hostile) against the real pipeline: reporter,
//! provisioner, rules and a sandboxed runner, on the real RabbitMQ and PostgreSQL. Each test runs
//! one of its attacks (the job argument `mode`) and checks both that the attack failed and that
//! the job still ended with a clear result. docs/security.md lists these tests as what is
//! tested of the trust boundary.
//!
//! What an attack obtains, the task prints (into its log) and puts into its result's note: so
//! each secret the deployment holds is a canary, looked for in the log and in the stored results.

use std::os::unix::io::AsRawFd as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use taskbot::amqp::REASON_HEADER;
use taskbot::messages::{Event, Message, Outcome, TaskRef, TaskResult};
use taskbot::Config;
use taskbot_tests::{free_port, make_task_repo, workspace_root, Deployment};

/// The rules: one task per way of naming the hostile repository (its own allowed one, and three
/// that escape `runner.allowed_repos`), picked by `msg.task`; the attack is `msg.mode`.
fn rules(encoded: &str, dotted: &str, redirected: &str) -> String {
    let mut rules = format!(
        "tasks:\n  hostile: {{ repo: hostile, ref: main }}\n  encoded: {{ repo: \"{encoded}\", ref: main }}\n  \
         dotted: {{ repo: \"{dotted}\", ref: main }}\n  redirected: {{ repo: \"{redirected}\", ref: main }}\nrules:\n"
    );
    for task in ["hostile", "encoded", "dotted", "redirected"] {
        rules.push_str(&format!(
            "  - name: hostile-{task}\n    when: {{ topic: org.taskbot.test.hostile, match: {{ msg.task: {task} }} }}\n    do:\n      \
             - task: {task}\n        item: \"{{{{ msg.item }}}}\"\n        item_type: koji_build\n        arches: [x86_64]\n        args:\n"
        ));
        for arg in ["mode", "marker", "exchange", "routing_key", "forged"] {
            rules.push_str(&format!("          {arg}: \"{{{{ msg.{arg} }}}}\"\n"));
        }
    }
    rules
}

/// A deployment whose runner has secrets within a hostile task's reach, were it not sandboxed.
struct Hostile {
    d: Deployment,
    /// In the runner's environment, the config file, the VM key and another job's files.
    canary: String,
    /// The redirecting server's connections to the host it redirects to.
    redirect_hits: Arc<AtomicUsize>,
    /// Another (live) job's directory and its lock, held by this test process.
    _other_job: File,
    attacks: usize,
}

use std::fs::File;

impl Hostile {
    /// Rules, reporter, provisioner and the x86_64 runner, with the canaries in place.
    async fn start() -> Hostile {
        let fixture = workspace_root().join("tests/fixtures/tasks/hostile");
        let mut d = Deployment::new("", &[("hostile", fixture.as_path())], free_port()).await;
        let root = d.dir.path().to_path_buf();
        make_task_repo(&fixture, &root.join("outside/hostile"));
        let (redirector, redirect_hits) = redirecting_server();
        let tasks = format!("file://{}/tasks", root.display());
        std::fs::write(
            &d.config.rules.file,
            rules(
                &format!("{tasks}/%2e%2e/outside/hostile"),
                &format!("{tasks}/hostile/../../outside/hostile"),
                &format!("{redirector}/tasks/hostile"),
            ),
        )
        .unwrap();
        let canary = format!("canary-{}", uuid::Uuid::new_v4().simple());
        // Where a VM backend's key would be (the provisioner is not given it: no VM is booted).
        std::fs::create_dir_all(root.join("vm")).unwrap();
        let key = format!("-----BEGIN OPENSSH PRIVATE KEY----- {canary}\n");
        std::fs::write(root.join("vm/id_ed25519"), key).unwrap();
        d.set_arches(&["x86_64"]);
        d.configure(|config: &mut Config| {
            config
                .runner
                .allowed_repos
                .push(format!("{redirector}/tasks/"));
            // A forged result for a job never requested is dead-lettered once this has passed
            // (a real one's `queued` status is handled long before).
            config.reporter.unknown_job_grace_secs = 5;
        });
        append(&d.config_file, &format!("# {canary}\n"));
        let other_job = other_jobs_files(&d, &canary);
        d.start("reporter", "reporter", &[]);
        d.start("provisioner", "provisioner", &[]);
        d.start("rules", "rules", &[]);
        let amqp_url = d.config.amqp.url.clone();
        d.start_with_env(
            "runner-x86_64",
            "runner",
            &["--arch", "x86_64"],
            &[
                ("HOSTILE_CANARY", &canary),
                ("TASKBOT_AMQP__URL", &amqp_url),
            ],
        );
        wait_for_services(&d).await;
        Hostile {
            d,
            canary,
            redirect_hits,
            _other_job: other_job,
            attacks: 0,
        }
    }

    /// Run `mode` as the job of `task`; how the job ended.
    async fn attack(&mut self, task: &str, mode: &str, args: &[(&str, String)]) -> Ended {
        self.attacks += 1;
        let item = format!("hostile-{task}-{mode}-{}", self.attacks);
        let mut msg = serde_json::json!({
            "task": task, "item": item, "mode": mode,
            "marker": "", "exchange": "", "routing_key": "", "forged": "",
        });
        for (key, value) in args {
            msg[key] = value.clone().into();
        }
        let event = Event {
            id: format!("hostile-{}", uuid::Uuid::new_v4()),
            topic: "org.taskbot.test.hostile".into(),
            source: "test".into(),
            sent_at: None,
            received_at: Utc::now(),
            username: None,
            msg,
            headers: Default::default(),
        };
        let t = self.d.broker.topology.clone();
        self.d
            .broker
            .publish(&t.events_exchange(), &event.topic, event.to_json())
            .await;
        self.ended(&item, Duration::from_secs(120)).await
    }

    /// The job of `item` once it is done or crashed, with its results and log.
    async fn ended(&self, item: &str, timeout: Duration) -> Ended {
        let sql = format!(
            "select count(*) from jobs where item = '{item}' and state in ('done', 'crashed')"
        );
        let n = self.d.wait_for_count(&sql, 1, timeout).await;
        assert_eq!(n, 1, "job {item} did not end\n{}", self.d.logs());
        let db = self.d.db().await;
        let row = db
            .query_one(
                "select job_id::text, state from jobs where item = $1",
                &[&item],
            )
            .await
            .unwrap();
        let (job_id, state): (String, String) = (row.get(0), row.get(1));
        // The final status is stored when the results were published before it; give the
        // results sink a moment too.
        let results_sql = format!("select count(*) from results where item = '{item}'");
        self.d
            .wait_for_count(&results_sql, 1, Duration::from_secs(10))
            .await;
        let results = db
            .query(
                "select outcome, coalesce(note, '') from results where item = $1",
                &[&item],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let artifacts = self.d.config.runner.artifacts_dir.join(&job_id);
        let log = std::fs::read_to_string(artifacts.join("task.log")).unwrap_or_default();
        Ended {
            state,
            results,
            artifacts,
            log,
        }
    }
}

/// How a job ended: its state, its results (outcome, note), its artifacts and its log.
#[derive(Debug)]
struct Ended {
    state: String,
    results: Vec<(String, String)>,
    artifacts: PathBuf,
    log: String,
}

impl Ended {
    /// The one result, when the job ended with exactly one.
    fn only_result(&self) -> (&str, &str) {
        assert_eq!(self.results.len(), 1, "{self:#?}");
        (&self.results[0].0, &self.results[0].1)
    }
}

/// Every queue the started services consume (the deployment's broker namespace was made for its
/// default arches; only x86_64 has a runner here).
async fn wait_for_services(d: &Deployment) {
    let topology = &d.broker.topology;
    let queues: Vec<String> = topology
        .work_queues()
        .into_iter()
        .chain(topology.sink_queues(&[taskbot::topology::Sink::Postgres]))
        .map(|q| q.name)
        .filter(|name| *name != topology.run_queue("noarch"))
        .collect();
    d.wait_for_consumers(&queues, Duration::from_secs(60)).await;
}

fn append(file: &Path, text: &str) {
    use std::io::Write as _;
    let mut f = File::options().append(true).open(file).unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

/// Another job's files, as a live runner would have them: a job directory in `work_dir` whose
/// lock (`<dir>.lock`, flocked) this test process holds, and an artifacts directory. Returns the
/// held lock.
fn other_jobs_files(d: &Deployment, canary: &str) -> File {
    let work = &d.config.runner.work_dir;
    let job = work.join(format!("{}-other", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(job.join("clone")).unwrap();
    std::fs::write(job.join("clone/results.yml"), canary).unwrap();
    let lock = hold_lock(Path::new(&format!("{}.lock", job.display())));
    let artifacts = d
        .config
        .runner
        .artifacts_dir
        .join(uuid::Uuid::new_v4().to_string());
    std::fs::create_dir_all(&artifacts).unwrap();
    std::fs::write(artifacts.join("task.log"), canary).unwrap();
    lock
}

/// An exclusive flock on `path` (created), held while the file stays open.
fn hold_lock(path: &Path) -> File {
    let file = File::create(path).unwrap();
    // SAFETY: flock(2) on a descriptor we own.
    assert_eq!(unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) }, 0);
    file
}

/// An HTTP server on 127.0.0.1 answering every request with a 302 to another host (127.0.0.2),
/// where a listener counts connections. Returns the redirector's base URL and the count.
fn redirecting_server() -> (String, Arc<AtomicUsize>) {
    use std::io::{Read as _, Write as _};
    let target = std::net::TcpListener::bind("127.0.0.2:0").unwrap();
    let target_port = target.local_addr().unwrap().port();
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    std::thread::spawn(move || {
        for stream in target.incoming().flatten() {
            counted.fetch_add(1, Ordering::SeqCst);
            drop(stream);
        }
    });
    let redirector = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", redirector.local_addr().unwrap());
    std::thread::spawn(move || {
        for mut stream in redirector.incoming().flatten() {
            let mut request = Vec::new();
            let mut chunk = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&chunk[..n]),
                }
            }
            let location = format!(
                "http://127.0.0.2:{target_port}/outside/hostile/info/refs?service=git-upload-pack"
            );
            let answer = format!(
                "HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            let _ = stream.write_all(answer.as_bytes());
        }
    });
    (url, hits)
}

/// A number of seconds no other process on the host sleeps: how a test finds a task's daemons.
fn marker() -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{}{}.5",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst) + 10
    )
}

/// Wait up to `timeout` for no process sleeping `marker` to be left.
async fn no_process_left(marker: &str, timeout: Duration) -> bool {
    let needle = format!("sleep\0{marker}");
    let deadline = Instant::now() + timeout;
    while taskbot::testing::processes_running(&needle) > 0 {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_environments_config_keys_and_other_jobs_finds_nothing() {
    let mut h = Hostile::start().await;
    let ended = h.attack("hostile", "read-secrets", &[]).await;
    let (outcome, note) = ended.only_result();
    // The attack ran to its end (so it did look), and found no secret.
    assert_eq!(
        (ended.state.as_str(), outcome),
        ("done", "PASSED"),
        "{ended:#?}"
    );
    assert!(note.starts_with("loot:"), "{note}");
    assert!(ended.log.contains("loot:"), "{}", ended.log);
    let broker_url = &h.d.config.amqp.url;
    // The host's own SSH key, where the host has one (the test runs as root and can read it).
    let host_key = std::fs::read_to_string("/etc/ssh/ssh_host_ed25519_key").ok();
    let host_key_line = host_key.as_deref().and_then(|k| k.lines().nth(1));
    for (what, text) in [("log", &ended.log), ("note", &note.to_string())] {
        if let Some(line) = host_key_line {
            assert!(!text.contains(line), "the host's SSH key is in the {what}");
        }
        assert!(
            !text.contains(&h.canary),
            "a canary is in the {what}: {text}"
        );
        assert!(
            !text.contains(broker_url.as_str()),
            "the broker URL is in the {what}"
        );
        assert!(
            !text.contains("TASKBOT_CONFIG"),
            "the runner's environment is in the {what}"
        );
    }
    h.d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_forged_with_the_brokers_default_account_is_not_stored() {
    let mut h = Hostile::start().await;
    let forged_item = format!("FORGED-glibc-9.99-{}.fc99", h.attacks);
    let forged = forged_result(&forged_item);
    let topology = h.d.broker.topology.clone();
    let body = String::from_utf8(forged.to_json()).unwrap();
    let args = [
        ("exchange", topology.results_exchange()),
        ("routing_key", forged.routing_key()),
        ("forged", serde_json::to_string(&body).unwrap()),
    ];
    let ended = h.attack("hostile", "publish", &args).await;
    assert_eq!(ended.state, "done", "{ended:#?}");
    // The attack reached the broker: what stops it is the reporter, not a failed publish.
    let (_, note) = ended.only_result();
    assert!(note.contains("routed:true"), "{note}");
    let dead_letters = topology.dead_letter_queue(&topology.postgres_results_queue());
    let dead = h.d.broker.get(&dead_letters, Duration::from_secs(60)).await;
    let dead = dead.expect("the forged result is dead-lettered");
    assert!(
        String::from_utf8_lossy(&dead.body).contains(&forged_item),
        "{dead:?}"
    );
    let reason = dead.header(REASON_HEADER).unwrap_or_default();
    assert!(
        reason.contains("user_id") || reason.contains("never saw requested"),
        "{reason}"
    );
    let sql = format!("select count(*) from results where item = '{forged_item}'");
    let stored = h.d.wait_for_count(&sql, 1, Duration::from_secs(1)).await;
    assert_eq!(stored, 0, "the forged result was stored\n{ended:#?}");
    h.d.shutdown().await;
}

/// What a task would publish: a well-formed PASSED result for a job that never existed.
fn forged_result(item: &str) -> TaskResult {
    let job_id = uuid::Uuid::new_v4();
    TaskResult {
        result_id: TaskResult::derive_id(job_id, "dist.rpmlint", item, "koji_build", "x86_64"),
        job_id,
        testcase: "dist.rpmlint".into(),
        outcome: Outcome::Passed,
        item: item.into(),
        item_type: "koji_build".into(),
        arch: "x86_64".into(),
        note: Some("forged by a task".into()),
        log_url: None,
        data: Default::default(),
        task: TaskRef {
            name: "rpmlint".into(),
            repo: "https://pagure.io/taskbot/rpmlint".into(),
            git_ref: "main".into(),
        },
        event_id: "forged".into(),
        rule: "forged".into(),
        runner: "runner/x86_64@forged".into(),
        finished_at: Utc::now(),
    }
}

/// Each way of naming a repository outside `runner.allowed_repos` ends CRASHED, saying why, and
/// the task never runs.
async fn escape_is_refused(task: &str, why: &str) {
    let mut h = Hostile::start().await;
    let ended = h.attack(task, "escape", &[]).await;
    let (outcome, note) = ended.only_result();
    assert_eq!(
        (ended.state.as_str(), outcome),
        ("crashed", "CRASHED"),
        "{ended:#?}"
    );
    assert!(note.contains(why), "{note}");
    assert!(!ended.artifacts.join("escaped").exists(), "the task ran");
    assert_eq!(
        h.redirect_hits.load(Ordering::SeqCst),
        0,
        "the redirect was followed"
    );
    h.d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encoded_dot_dot_does_not_leave_the_allowed_repos() {
    escape_is_refused("encoded", "is not in runner.allowed_repos").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dot_segments_do_not_leave_the_allowed_repos() {
    escape_is_refused("dotted", "is not in runner.allowed_repos").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_to_another_host_is_not_followed() {
    escape_is_refused("redirected", "outside runner.allowed_repos").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_setsid_and_a_double_forked_daemon_do_not_outlive_the_job() {
    let mut h = Hostile::start().await;
    let marker = marker();
    let ended = h
        .attack("hostile", "daemons", &[("marker", marker.clone())])
        .await;
    assert_eq!(ended.only_result().0, "PASSED", "{ended:#?}");
    assert!(ended.log.contains("daemons started"), "{}", ended.log);
    assert!(
        no_process_left(&marker, Duration::from_secs(5)).await,
        "the task's daemons outlived its job"
    );
    h.d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symlinked_results_file_crashes_the_job_without_leaking_its_target() {
    let mut h = Hostile::start().await;
    let ended = h.attack("hostile", "symlink-results", &[]).await;
    let (outcome, note) = ended.only_result();
    assert_eq!(
        (ended.state.as_str(), outcome),
        ("crashed", "CRASHED"),
        "{ended:#?}"
    );
    assert!(note.contains("results.yml"), "{note}");
    assert!(note.contains("link"), "{note}");
    assert!(!note.contains("root:x:0:0"), "{note}");
    h.d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hard_linked_results_file_crashes_the_job() {
    let mut h = Hostile::start().await;
    let ended = h.attack("hostile", "hardlink-results", &[]).await;
    let (outcome, note) = ended.only_result();
    assert_eq!(
        (ended.state.as_str(), outcome),
        ("crashed", "CRASHED"),
        "{ended:#?}"
    );
    assert!(note.contains("link"), "{note}");
    assert!(!note.contains("root:x:0:0"), "{note}");
    // The host file itself could not even be linked into the sandbox.
    assert!(
        ended.log.contains("Invalid cross-device link")
            || ended.log.contains("Operation not permitted"),
        "{}",
        ended.log
    );
    h.d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_to_host_files_as_artifacts_are_not_copied_nor_served() {
    let mut h = Hostile::start().await;
    let api_listen = format!("127.0.0.1:{}", free_port());
    h.d.start_with_env("api", "api", &[], &[("TASKBOT_API__LISTEN", &api_listen)]);
    let ended = h.attack("hostile", "link-artifacts", &[]).await;
    assert_eq!(ended.state, "done", "{ended:#?}");
    assert!(!ended.results.is_empty(), "{ended:#?}");
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    let first_line = passwd.lines().next().unwrap();
    // No regular file of the job's artifacts holds the host file's text.
    for file in regular_files(&ended.artifacts) {
        let text = String::from_utf8_lossy(&std::fs::read(&file).unwrap()).into_owned();
        assert!(
            !text.contains(first_line),
            "{} holds /etc/passwd",
            file.display()
        );
    }
    // The links the task left in its artifacts directory are not served either (while its log
    // is: the api does serve this job's files).
    let job_id = ended.artifacts.file_name().unwrap().to_string_lossy();
    wait_for_http(&api_listen).await;
    let log = curl(&format!(
        "http://{api_listen}/api/v1/jobs/{job_id}/artifacts/task.log"
    ));
    assert!(log.contains("hostile: mode link-artifacts"), "{log}");
    for path in ["passwd.txt", "root/etc/passwd", "out/passwd.txt"] {
        let url = format!("http://{api_listen}/api/v1/jobs/{job_id}/artifacts/{path}");
        let body = curl(&url);
        assert!(!body.contains(first_line), "{url} served /etc/passwd");
    }
    h.d.shutdown().await;
}

/// Every regular file below `dir`, never following symbolic links.
fn regular_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let meta = std::fs::symlink_metadata(entry.path()).unwrap();
        if meta.is_dir() {
            files.extend(regular_files(&entry.path()));
        } else if meta.is_file() {
            files.push(entry.path());
        }
    }
    files
}

fn curl(url: &str) -> String {
    let output = std::process::Command::new("curl")
        .args(["-s", "-m", "10", url])
        .output()
        .expect("curl runs");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

async fn wait_for_http(address: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(address).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the api does not listen on {address}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// 500 MB on stdout: the runner reads all of it (the task is not held up), stores within
/// `runner.max_log_bytes` (the default, 10 MiB) its head and its tail with notes saying how
/// much was dropped between them, and the result and the final status say the log was cut. The
/// disk holds at most the cap and the tail's ring of the same size meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn printing_500_mb_is_capped_and_the_job_ends() {
    let mut h = Hostile::start().await;
    let max = h.d.config.runner.max_log_bytes;
    let ended = h.attack("hostile", "print", &[]).await;
    assert_eq!(ended.state, "done", "{}", h.d.logs());
    let (outcome, note) = ended.only_result();
    assert_eq!(outcome, "PASSED", "{note}");
    // The task's own note, then the runner's notice of what it dropped.
    let (own, notice) = note
        .split_once('\n')
        .expect("a notice after the task's note");
    assert_eq!(own, "printed 500 MB");
    let dropped: u64 = notice
        .strip_prefix("task.log passed runner.max_log_bytes: ")
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no dropped bytes in {notice:?}"));
    assert!(
        dropped > 500_000_000 - max && dropped < 500_000_000,
        "{dropped}"
    );

    let log_size = std::fs::metadata(ended.artifacts.join("task.log"))
        .unwrap()
        .len();
    assert!(log_size <= max, "the log holds {log_size} bytes");
    let log = &ended.log;
    assert!(log.starts_with("task hostile ("), "the head is kept");
    assert!(
        log.contains(&format!(
            "[taskbot: this log reached runner.max_log_bytes ({max} bytes) and is cut here"
        )),
        "no note where the log is cut"
    );
    assert!(
        log.contains(&format!(
            "[taskbot: {dropped} bytes of this log were dropped here (runner.max_log_bytes = {max})"
        )),
        "no note of the bytes dropped"
    );
    let tail = &log[log.len().saturating_sub(4096)..];
    assert!(
        tail.contains("xxxx") && tail.contains("== step 01-run: exit code 0 after"),
        "the tail is kept: {tail}"
    );
    // Stored once: no other copy of the output.
    let entries: Vec<String> = std::fs::read_dir(&ended.artifacts)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!entries.iter().any(|e| e == "steps"), "{entries:?}");

    let job_id = ended.artifacts.file_name().unwrap().to_string_lossy();
    let db = h.d.db().await;
    let detail: String = db
        .query_one(
            "select coalesce(detail, '') from job_events where job_id::text = $1 and state = 'done'",
            &[&job_id.as_ref()],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        detail.contains("task.log passed runner.max_log_bytes"),
        "{detail}"
    );
    h.d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_killed_mid_task_leaves_no_process_and_the_job_ends_after_restart() {
    let mut h = Hostile::start().await;
    let marker = marker();
    let item = "hostile-killed-1-1";
    let msg = serde_json::json!({
        "task": "hostile", "item": item, "mode": "daemons-then-hang",
        "marker": marker, "exchange": "", "routing_key": "", "forged": "",
    });
    let event = Event {
        id: format!("hostile-{}", uuid::Uuid::new_v4()),
        topic: "org.taskbot.test.hostile".into(),
        source: "test".into(),
        sent_at: None,
        received_at: Utc::now(),
        username: None,
        msg,
        headers: Default::default(),
    };
    let t = h.d.broker.topology.clone();
    h.d.broker
        .publish(&t.events_exchange(), &event.topic, event.to_json())
        .await;
    // Both daemons and the hanging sleep run.
    let needle = format!("sleep\0{marker}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while taskbot::testing::processes_running(&needle) < 3 {
        assert!(
            Instant::now() < deadline,
            "the task never started\n{}",
            h.d.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let work = h.d.config.runner.work_dir.clone();
    let killed_job_dirs = job_dirs(&work);
    assert_eq!(killed_job_dirs.len(), 1, "{killed_job_dirs:?}");
    let runner =
        h.d.services
            .iter()
            .position(|s| s.name == "runner-x86_64")
            .unwrap();
    h.d.services[runner].kill_hard();
    assert!(
        no_process_left(&marker, Duration::from_secs(5)).await,
        "the killed runner's task still runs"
    );
    // What it left, for the next runner to remove.
    assert!(killed_job_dirs[0].exists());

    h.d.start("runner-x86_64-restarted", "runner", &["--arch", "x86_64"]);
    let ended = h.ended(item, Duration::from_secs(120)).await;
    assert_eq!(ended.only_result().0, "PASSED", "{ended:#?}");
    let started = std::fs::read_to_string(ended.artifacts.join("started")).unwrap();
    assert_eq!(
        started, "first\nagain\n",
        "the redelivered job ran once more"
    );
    assert!(
        no_process_left(&marker, Duration::from_secs(5)).await,
        "the second run's daemons outlived its job"
    );
    assert!(
        !killed_job_dirs[0].exists(),
        "the killed runner's job directory is still there"
    );
    h.d.shutdown().await;
}

/// The job directories in `work_dir` (those with a lock file beside them), but the other job's
/// the test made.
fn job_dirs(work_dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(work_dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_dir()
                && !p.to_string_lossy().ends_with("-other")
                && PathBuf::from(format!("{}.lock", p.display())).exists()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_starting_runner_removes_what_a_killed_one_left_and_keeps_live_jobs() {
    let fixture = workspace_root().join("tests/fixtures/tasks/hostile");
    let mut d = Deployment::new("", &[("hostile", fixture.as_path())], free_port()).await;
    d.set_arches(&["x86_64"]);
    let work = d.config.runner.work_dir.clone();
    // A killed runner's job: a directory and a lock file nobody holds any more.
    let stale = work.join(format!("{}-stale1", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(stale.join("clone/sub")).unwrap();
    std::fs::write(stale.join("clone/sub/file"), "left behind").unwrap();
    File::create(format!("{}.lock", stale.display())).unwrap();
    // A live runner's job (this test process holds its lock).
    let live = work.join(format!("{}-live01", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(live.join("clone")).unwrap();
    let _held = hold_lock(Path::new(&format!("{}.lock", live.display())));
    // Not the runner's: left alone.
    let other = work.join("operator-notes");
    std::fs::create_dir_all(&other).unwrap();

    d.start("runner-x86_64", "runner", &["--arch", "x86_64"]);
    let queue = d.broker.topology.run_queue("x86_64");
    d.wait_for_consumers(&[queue], Duration::from_secs(60))
        .await;
    assert!(!stale.exists(), "the stale job directory is still there");
    assert!(!Path::new(&format!("{}.lock", stale.display())).exists());
    assert!(
        live.join("clone").is_dir(),
        "a live job's directory was removed"
    );
    assert!(other.is_dir());
    let log = d.services[0].log_text();
    assert!(
        log.contains("removed a killed runner's job directory"),
        "{log}"
    );
    d.shutdown().await;
}
