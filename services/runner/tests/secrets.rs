//! Secrets for tasks (`runner.secrets`), through whole jobs without a broker, in the real
//! sandbox: a task that prints its secret every way it can leaves only `[secret:<name>]` in its
//! log (capped or not), artifacts, results and events; a task not allowed the secret gets no
//! trace of it, even while another job holds it; no command line on the host shows it.

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{check_ending, job, states, Dirs, FULL_LIFE};
use taskbot::amqp::{Disposition, Handler, Incoming};
use taskbot::config::{RunnerConfig, TaskSecret};
use taskbot::messages::{Event, JobState, Message, Outcome, ProvisionedJob, TaskResult};
use taskbot::testing::Recorder;
use taskbot::{Shutdown, Topology};
use taskbot_runner::RunnerHandler;

/// The secret's value, with the newline its file ends in.
const VALUE: &str = "s3cr3t-koji-token-4242";
const MARKER: &str = "[secret:koji-token]";

struct Harness {
    dirs: Dirs,
    settings: RunnerConfig,
    _secret_dir: tempfile::TempDir,
}

/// What a job came to: its statuses, results and events, and every file it left.
struct Ran {
    states: Vec<JobState>,
    results: Vec<TaskResult>,
    events: Vec<Event>,
    /// Path (relative to the job's artifacts directory) and content of every file there.
    artifacts: Vec<(String, String)>,
}

impl Harness {
    /// A runner with secret `koji-token` (also `$KOJI_TOKEN`) for task `leaky` only.
    fn new() -> Harness {
        let dirs = Dirs::new();
        let mut settings = RunnerConfig::default();
        dirs.configure(&mut settings);
        let secret_dir = tempfile::tempdir().unwrap();
        let file = secret_dir.path().join("koji-token");
        std::fs::write(&file, format!("{VALUE}\n")).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let secret = TaskSecret {
            file,
            repos: vec![format!("file://{}", dirs.repos().display())],
            tasks: vec!["leaky".into()],
            rules: vec![],
            env: Some("KOJI_TOKEN".into()),
        };
        settings.secrets.insert("koji-token".into(), secret);
        Harness {
            dirs,
            settings,
            _secret_dir: secret_dir,
        }
    }

    fn handler(&self) -> RunnerHandler {
        RunnerHandler {
            topology: Topology::new("tb", &["x86_64".into()]),
            arch: "x86_64".into(),
            settings: self.settings.clone(),
            instance: "runner/x86_64@test".into(),
            shutdown: Shutdown::new(std::future::pending()),
            http: reqwest::Client::new(),
            sandbox: common::sandbox(),
            provisioner_user: "tb-provisioner".into(),
        }
    }

    async fn run(&self, job: &ProvisionedJob) -> Ran {
        let ctx = Recorder::new();
        let incoming = Incoming::new(&job.job.arch, job.to_json()).with_user_id("tb-provisioner");
        let disposition = self.handler().handle(incoming, &ctx).await;
        let Disposition::Done(out) = disposition else {
            panic!("job came to no verdict: {disposition:?}");
        };
        let mut statuses: Vec<_> = ctx
            .published()
            .iter()
            .map(|m| taskbot::messages::JobStatus::from_json(&m.body).unwrap())
            .collect();
        let (last, rest) = out.split_last().unwrap();
        statuses.push(taskbot::messages::JobStatus::from_json(&last.body).unwrap());
        let topology = Topology::new("tb", &["x86_64".into()]);
        let (mut results, mut events) = (Vec::new(), Vec::new());
        for m in rest {
            if m.exchange == topology.events_exchange() {
                events.push(Event::from_json(&m.body).unwrap());
            } else {
                results.push(TaskResult::from_json(&m.body).unwrap());
            }
        }
        check_ending(job, &statuses, &results, &self.settings.work_dir);
        let dir = self.settings.artifacts_dir.join(job.job.job_id.to_string());
        Ran {
            states: states(&statuses),
            results,
            events,
            artifacts: files_under(&dir, &dir),
        }
    }

    fn artifact<'a>(ran: &'a Ran, path: &str) -> &'a str {
        ran.artifacts
            .iter()
            .find(|(p, _)| p == path)
            .map(|(_, c)| c.as_str())
            .unwrap_or_else(|| panic!("no artifact {path}"))
    }
}

fn files_under(root: &Path, dir: &Path) -> Vec<(String, String)> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path: PathBuf = entry.unwrap().path();
        if path.is_dir() {
            files.extend(files_under(root, &path));
        } else {
            let relative = path.strip_prefix(root).unwrap().display().to_string();
            let content = String::from_utf8_lossy(&std::fs::read(&path).unwrap()).into_owned();
            files.push((relative, content));
        }
    }
    files
}

/// Standard base64, as `base64` prints it (no line wrapping for short input).
fn base64(data: &[u8]) -> String {
    let output = std::process::Command::new("base64")
        .arg("-w0")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write as _;
            child.stdin.take().unwrap().write_all(data)?;
            child.wait_with_output()
        })
        .unwrap();
    String::from_utf8(output.stdout).unwrap()
}

const LEAKY: &str = r#"name: leaky
artifacts: ["leak/*"]
run:
  - 'test "$(cat "$TASKBOT_SECRETS/koji-token")" = "$KOJI_TOKEN" && echo "same value, ${#KOJI_TOKEN} bytes"'
  - 'cat "$TASKBOT_SECRETS/koji-token"; echo "env=$KOJI_TOKEN"; echo "stderr=$KOJI_TOKEN" >&2'
  - 'printf "split:%s" "$(echo "$KOJI_TOKEN" | cut -c1-9)"; sleep 0.3; echo "$KOJI_TOKEN" | cut -c10-'
  - 'echo "b64=$(echo "$KOJI_TOKEN" | base64)"'
  - 'echo overwritten > "$TASKBOT_SECRETS/koji-token" 2>/dev/null || echo "secret file is read-only"'
  - 'mkdir -p leak && echo "$KOJI_TOKEN" > leak/token.txt && echo "$KOJI_TOKEN" > "${TASKBOT_ARTIFACTS}direct.txt"'
  - 'printf "{\"topic\": \"taskbot.test.leak\", \"msg\": {\"token\": \"%s\"}}\n" "$KOJI_TOKEN" > "$TASKBOT_EVENTS"'
  - |
    cat > "$TASKBOT_RESULTS" <<EOF
    results:
      - {item: "$TASKBOT_ITEM", type: "$TASKBOT_ITEM_TYPE", outcome: PASSED, note: "token $KOJI_TOKEN", leaked: "$KOJI_TOKEN", nested: {list: ["x$KOJI_TOKEN"]}}
    EOF
"#;

#[tokio::test]
async fn a_task_that_prints_its_secret_leaves_only_markers() {
    let h = Harness::new();
    let repo = h.dirs.task("leaky", LEAKY);
    let ran = h
        .run(&job("leaky", &repo, "main", "pkg-1-1.fc40", "x86_64"))
        .await;
    assert_eq!(ran.states, FULL_LIFE);

    // It did get the secret, as a file and a variable, the same value.
    let log = Harness::artifact(&ran, "task.log");
    assert!(
        log.contains(&format!("same value, {} bytes", VALUE.len())),
        "{log}"
    );
    assert!(
        log.contains("secrets: koji-token (also $KOJI_TOKEN) in $TASKBOT_SECRETS/"),
        "{log}"
    );
    assert!(log.contains("secret file is read-only"), "{log}");
    // Every way it printed the value shows the marker instead, a split write included.
    for expected in ["env=", "stderr=", "split:", "b64="] {
        assert!(
            log.contains(&format!("{expected}{MARKER}")),
            "{expected}: {log}"
        );
    }
    assert!(
        log.contains(&format!("\n{MARKER}\n")),
        "the file's content: {log}"
    );
    assert!(
        log.contains("artifact redacted (it held a secret): direct.txt"),
        "{log}"
    );
    let base64_value = base64(VALUE.as_bytes());
    for (path, content) in &ran.artifacts {
        assert!(
            !content.contains(VALUE),
            "{path} holds the secret:\n{content}"
        );
        assert!(
            !content.contains(&base64_value[..base64_value.len() - 4]),
            "{path} holds the secret in base64:\n{content}"
        );
    }
    for path in ["leak/token.txt", "direct.txt"] {
        assert_eq!(
            Harness::artifact(&ran, path),
            format!("{MARKER}\n"),
            "{path}"
        );
    }
    assert!(Harness::artifact(&ran, "events.jsonl").contains(MARKER));
    // The output is stored once, in task.log: the split write within its step's lines.
    assert!(
        !ran.artifacts.iter().any(|(p, _)| p.starts_with("steps/")),
        "{:?}",
        ran.artifacts.iter().map(|(p, _)| p).collect::<Vec<_>>()
    );
    let step_3 = log
        .split("== step 03-run-3: ")
        .nth(1)
        .and_then(|rest| rest.split("== step 04-").next())
        .unwrap_or_else(|| panic!("no step 03-run-3: {log}"));
    assert!(step_3.contains(&format!("split:{MARKER}")), "{step_3}");

    // The results and events published carry the marker, never the value.
    let r = &ran.results[0];
    assert_eq!(r.outcome, Outcome::Passed);
    assert_eq!(r.note.as_deref(), Some(format!("token {MARKER}").as_str()));
    assert_eq!(r.data["leaked"], MARKER);
    assert_eq!(r.data["nested"]["list"][0], format!("x{MARKER}"));
    assert_eq!(ran.events.len(), 1);
    assert_eq!(ran.events[0].msg["token"], MARKER);
    let published = serde_json::to_string(&(&ran.results, &ran.events)).unwrap();
    assert!(!published.contains(VALUE), "{published}");
}

/// A log past `runner.max_log_bytes` is cut after redaction: wherever the cut falls (the
/// secret is printed at every offset around it), neither the head nor the tail kept holds any
/// piece of the value.
#[tokio::test]
async fn a_capped_log_holds_no_piece_of_the_secret() {
    let mut h = Harness::new();
    h.settings.max_log_bytes = 16 * 1024;
    // 2,000 times the value after a growing run of dots, as one write at a time: 4 KiB in, the
    // head's end and then the tail's start fall on every place of one of them.
    let yaml = r#"name: leaky
run: 'i=0; pad=""; while [ $i -lt 2000 ]; do printf "%s%s" "$pad" "$KOJI_TOKEN"; pad="$pad."; [ ${#pad} -gt 40 ] && pad=""; i=$((i+1)); done; echo; echo done'
"#;
    let repo = h.dirs.task("leaky", yaml);
    let ran = h
        .run(&job("leaky", &repo, "main", "pkg-1-1.fc40", "x86_64"))
        .await;
    assert_eq!(ran.states, FULL_LIFE);
    let log = Harness::artifact(&ran, "task.log");
    assert!(log.len() <= 16 * 1024, "{}", log.len());
    assert!(log.contains("is cut here"), "{log}");
    assert!(log.contains("bytes of this log were dropped here"), "{log}");
    assert!(log.contains(MARKER) && log.contains("\ndone\n"), "{log}");
    // The marker holds "koji-token"; the value's other pieces must be nowhere.
    for piece in ["s3cr3t", "3cr3t-k", "token-4", "n-4242"] {
        assert!(!log.contains(piece), "{piece} in the log:\n{log}");
    }
    let note = ran.results[0].note.as_deref().unwrap_or_default();
    assert!(note.contains("passed runner.max_log_bytes"), "{note}");
}

#[tokio::test]
async fn a_crash_quoting_the_log_quotes_the_marker() {
    let h = Harness::new();
    let yaml = "name: leaky\nrun:\n  - 'echo \"token=$KOJI_TOKEN\"; echo \"results: [\" > \"$TASKBOT_RESULTS\"'\n";
    let repo = h.dirs.task("leaky", yaml);
    let ran = h
        .run(&job("leaky", &repo, "main", "pkg-1-1.fc40", "x86_64"))
        .await;
    assert_eq!(ran.states.last(), Some(&JobState::Crashed));
    let note = ran.results[0].note.as_deref().unwrap();
    assert!(note.contains(&format!("token={MARKER}")), "{note}");
    assert!(!note.contains(VALUE), "{note}");
}

/// While an allowed job holds the secret, one that is not allowed looks for it everywhere it
/// can; and the host's process list never shows it.
#[tokio::test]
async fn a_task_not_allowed_the_secret_finds_no_trace_of_it() {
    let h = Harness::new();
    let holder = h.dirs.task(
        "leaky",
        "name: leaky\nrun: 'test -n \"$KOJI_TOKEN\" && echo holding; sleep 3'\n",
    );
    let secret_file = h.settings.secrets["koji-token"].file.display().to_string();
    let nosy_yaml = format!(
        r#"name: nosy
run: |
  echo "variable=${{KOJI_TOKEN:-unset}} dir=${{TASKBOT_SECRETS:-unset}}"
  ls /run/taskbot-secrets 2>&1
  cat {secret_file} 2>&1
  env
  for f in /proc/[0-9]*/environ /proc/[0-9]*/cmdline; do tr '\0' '\n' < "$f"; done 2>/dev/null
  find /run /tmp /var/tmp -type f -exec cat {{}} + 2>/dev/null
  echo looked
"#
    );
    let nosy = h.dirs.task("nosy", &nosy_yaml);
    let holding = job("leaky", &holder, "main", "pkg-1-1.fc40", "x86_64");
    let looking = job("nosy", &nosy, "main", "pkg-1-1.fc40", "x86_64");
    let watching = async {
        // Every command line on the host while the secret is held: bwrap gets it through
        // descriptors, never as an argument.
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        let mut looked = 0;
        while std::time::Instant::now() < deadline {
            looked += taskbot::testing::processes_running(VALUE);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        looked
    };
    let (held, looked, on_command_lines) = tokio::join!(h.run(&holding), h.run(&looking), watching);
    assert!(Harness::artifact(&held, "task.log").contains("holding"));
    assert_eq!(on_command_lines, 0, "the secret was on a command line");
    let log = Harness::artifact(&looked, "task.log");
    assert!(log.contains("variable=unset dir=unset"), "{log}");
    assert!(log.contains("looked"), "{log}");
    assert!(!log.contains("secrets:"), "{log}");
    assert!(!log.contains(VALUE) && !log.contains(MARKER), "{log}");
}
