//! Operating a running deployment: `taskbot status` and `watch` (queues read from RabbitMQ's
//! management API), `submit` (schedule a task by hand), `replay` (feed recorded bus messages),
//! and `dlq list|show|retry|purge` (dead letters, losing none).
//!
//! Broker work goes through the shared AMQP code (`taskbot::amqp`): publishes are confirmed,
//! dead letters are moved with [`taskbot::amqp::dead_letters`]. What is shown is computed by
//! pure functions ([`classify`], [`status_text`]), tested without a broker.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::IsTerminal as _;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use taskbot::amqp::{self, dead_letters, Publisher, REASON_HEADER, SOURCE_HEADER};
use taskbot::management::{classify, Management, Status};
use taskbot::messages::{JobRequest, JobState, JobStatus, Message, TaskRef};
use taskbot::routes::Publishable;
use taskbot::{Config, Topology};

use crate::cli::{DlqArgs, DlqCommand, ReplayArgs, StatusArgs, SubmitArgs, WatchArgs};
use crate::{message_input, Failure};

/// The status as a table for people.
pub fn status_text(status: &Status, colour: bool) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Taskbot deployment {:?}", status.namespace);
    write_stages(&mut out, status, colour);
    write_runners_and_jobs(&mut out, status);
    out
}

/// `text` in the terminal colour `code` (dead letters red, a queue nobody consumes yellow) when
/// colour is on.
fn paint(colour: bool, text: String, code: &str) -> String {
    if colour {
        format!("\x1b[{code}m{text}\x1b[0m")
    } else {
        text
    }
}

/// A row per stage: its queue's depths, consumers and rates, and its dead letters.
fn write_stages(out: &mut String, status: &Status, colour: bool) {
    let _ = writeln!(
        out,
        "{:<28} {:>7} {:>8} {:>9} {:>8} {:>8} {:>6}",
        "stage", "waiting", "working", "consumers", "in/s", "out/s", "dead"
    );
    for stage in &status.stages {
        let dead = format!("{:>6}", stage.dead_letters);
        let dead = if stage.dead_letters > 0 {
            paint(colour, dead, "31")
        } else {
            dead
        };
        match &stage.queue {
            Some(q) => {
                let consumers = format!("{:>9}", q.consumers);
                let consumers = if q.consumers == 0 {
                    paint(colour, consumers, "33")
                } else {
                    consumers
                };
                let _ = writeln!(
                    out,
                    "{:<28} {:>7} {:>8} {} {:>8.1} {:>8.1} {}",
                    stage.stage,
                    q.ready,
                    q.unacked,
                    consumers,
                    q.publish_rate,
                    q.deliver_rate,
                    dead
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "{:<28} {:>7} {:>8} {:>9} {:>8} {:>8} {}",
                    stage.stage, "-", "-", "-", "-", "-", dead
                );
            }
        }
    }
    if status.stages.is_empty() {
        let _ = writeln!(
            out,
            "(no queues: nothing of this deployment has run on this broker)"
        );
    }
}

/// `a: 1, b: 2`, or `none`.
fn counts<'a, N: std::fmt::Display + 'a>(
    counts: impl IntoIterator<Item = (&'a String, N)>,
) -> String {
    let parts: Vec<String> = counts
        .into_iter()
        .map(|(name, n)| format!("{name}: {n}"))
        .collect();
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(", ")
    }
}

/// The runners per arch, and the jobs by state (or why they are unknown) when asked for.
fn write_runners_and_jobs(out: &mut String, status: &Status) {
    let _ = writeln!(out, "runners per arch: {}", counts(&status.runners));
    match (&status.jobs, &status.jobs_error) {
        (Some(jobs), _) => {
            let _ = writeln!(out, "jobs by state: {}", counts(jobs));
        }
        (None, Some(err)) => {
            let _ = writeln!(out, "jobs by state: unknown ({err})");
        }
        (None, None) => {}
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::input(format!("taskbot: cannot start: {e}")))
}

/// The configuration with the command line's own secrets read from their files (its broker user
/// `[amqp.users.cli]`, else the URL's user with `amqp.password_file`).
fn load_config() -> Result<Config, Failure> {
    let config = Config::load(&[]).map_err(|e| Failure::config(format!("taskbot: {e}")))?;
    taskbot::secrets::resolve(config, Some(taskbot::Role::Cli))
        .map_err(|e| Failure::config(format!("taskbot: {e}")))
}

/// Jobs by their latest state, from the api (`/api/v1/job-states`).
async fn jobs_by_state(api: &str) -> Result<BTreeMap<String, u64>, String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .map_err(|e| e.to_string())?;
    let url = format!("{api}/api/v1/job-states");
    let response = client
        .get(&url)
        .send()
        .await
        .map_err(|e| format!("the api at {api} cannot be reached: {e}"))?;
    if !response.status().is_success() {
        return Err(format!("the api answered {} to {url}", response.status()));
    }
    let body: Value = response.json().await.map_err(|e| e.to_string())?;
    let states = body["states"]
        .as_object()
        .ok_or_else(|| format!("the api's answer to {url} has no states"))?;
    Ok(states
        .iter()
        .map(|(state, n)| (state.clone(), n.as_u64().unwrap_or(0)))
        .collect())
}

/// The queues from the management API, and the jobs by state from the api at `api`.
async fn read_status(config: &Config, api: &str) -> Result<Status, Failure> {
    let management =
        Management::new(config).map_err(|e| Failure::config(format!("taskbot: {e}")))?;
    let queues = management
        .queues()
        .await
        .map_err(|e| Failure::input(format!("taskbot: {e}")))?;
    let mut status = classify(&config.amqp.namespace, &queues);
    match jobs_by_state(api).await {
        Ok(jobs) => status.jobs = Some(jobs),
        Err(err) => status.jobs_error = Some(err),
    }
    Ok(status)
}

pub fn status(args: &StatusArgs) -> Result<String, Failure> {
    let config = load_config()?;
    let api = crate::api_cmd::api_base(Some(&config), args.api.api.as_deref())?;
    let status = runtime()?.block_on(read_status(&config, &api))?;
    if args.json {
        Ok(serde_json::to_string_pretty(&status).expect("status serialises") + "\n")
    } else {
        Ok(status_text(&status, std::io::stdout().is_terminal()))
    }
}

/// Jobs not finished yet (from the api), as watch lines: state, task, item, arch, and how long
/// since the job was requested, oldest first.
async fn active_jobs(api: &str) -> Result<Vec<String>, String> {
    let url = format!(
        "{api}/api/v1/jobs?state=queued,provisioning,provisioned,cloning,running,reporting&limit=20"
    );
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .map_err(|e| e.to_string())?;
    let body: Value = client
        .get(&url)
        .send()
        .await
        .map_err(|e| format!("the api at {api} cannot be reached: {e}"))?
        .json()
        .await
        .map_err(|e| e.to_string())?;
    let now = chrono::Utc::now();
    let mut lines: Vec<(i64, String)> = body["data"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|job| {
            let since = job["created_at"]
                .as_str()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .map_or(0, |t| {
                    (now - t.with_timezone(&chrono::Utc)).num_seconds().max(0)
                });
            (
                since,
                format!(
                    "{:<12} {:>6}  {} {} ({}) {}",
                    job["state"].as_str().unwrap_or("?"),
                    elapsed(since),
                    job["task"]["name"].as_str().unwrap_or("?"),
                    job["item"].as_str().unwrap_or("?"),
                    job["arch"].as_str().unwrap_or("?"),
                    job["id"].as_str().unwrap_or("?"),
                ),
            )
        })
        .collect();
    lines.sort_by_key(|line| std::cmp::Reverse(line.0));
    Ok(lines.into_iter().map(|(_, line)| line).collect())
}

/// `75` → `1m15s`.
pub fn elapsed(secs: i64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// `taskbot watch`: the status, redrawn every `--interval` seconds until Ctrl-C.
pub fn watch(args: &WatchArgs) -> Result<String, Failure> {
    let config = load_config()?;
    let api = crate::api_cmd::api_base(Some(&config), args.api.api.as_deref())?;
    let runtime = runtime()?;
    let terminal = std::io::stdout().is_terminal();
    loop {
        let status = runtime.block_on(read_status(&config, &api))?;
        let active = match runtime.block_on(active_jobs(&api)) {
            Ok(lines) if lines.is_empty() => "jobs in progress: none\n".to_string(),
            Ok(lines) => format!(
                "jobs in progress (oldest first):\n{:<12} {:>6}  task item (arch) job\n{}\n",
                "state",
                "since",
                lines.join("\n")
            ),
            Err(err) => format!("jobs in progress: unknown ({err})\n"),
        };
        // On a terminal, clear the screen and go home, then draw; into a file or a pipe, no
        // control codes: one screen after the other.
        print!(
            "{}{}\n{active}\n(every {}s; Ctrl-C to stop) {}\n",
            if terminal { "\x1b[2J\x1b[H" } else { "" },
            status_text(&status, terminal),
            args.interval,
            chrono::Utc::now().format("%H:%M:%S UTC")
        );
        std::thread::sleep(Duration::from_secs(args.interval.max(1)));
    }
}

async fn publisher(config: &Config) -> Result<(lapin::Connection, Publisher, Topology), Failure> {
    let conn = amqp::connect(&config.amqp.url, "taskbot-cli")
        .await
        .map_err(|e| {
            Failure::input(format!(
                "taskbot: cannot reach the broker at {}: {e}",
                redact(&config.amqp.url)
            ))
        })?;
    let publisher = Publisher::new(&conn, "taskbot-cli")
        .await
        .map_err(|e| Failure::input(format!("taskbot: cannot open a channel: {e}")))?
        .with_user_id(amqp::url_user(&config.amqp.url));
    // With its own user the command line may declare nothing (`taskbot setup-users` did);
    // logged in as an administrator it declares everything, as before per-service users.
    let topology = Topology::for_config(config);
    topology
        .declare_for(config.amqp.login_role(), publisher.channel())
        .await
        .map_err(|e| Failure::input(format!("taskbot: cannot declare the topology: {e}")))?;
    Ok((conn, publisher, topology))
}

/// A URL without its password, for messages.
fn redact(url: &str) -> String {
    taskbot::secrets::redact_url(url)
}

/// `taskbot setup-users`: every broker user of the namespace with its permissions, the whole
/// topology, and (unless `--no-database`) the database roles with the schema migrated; prints the
/// configuration that makes the services use them. Run as an administrator: the config's own
/// URLs (and `amqp.password_file`, `postgres.password_file`) log in.
pub fn setup_users(args: &crate::cli::SetupUsersArgs) -> Result<String, Failure> {
    let config = Config::load(&[]).map_err(|e| Failure::config(format!("taskbot: {e}")))?;
    let admin = taskbot::secrets::resolve(config, None)
        .map_err(|e| Failure::config(format!("taskbot: {e}")))?;
    let database = !args.no_database;
    runtime()?.block_on(async {
        if args.delete {
            taskbot::accounts::tear_down(&admin, database)
                .await
                .map_err(|e| Failure::input(format!("taskbot: {e}")))?;
            return Ok(format!(
                "removed the users of namespace {:?}\n",
                admin.amqp.namespace
            ));
        }
        let dir = std::path::absolute(&args.secrets_dir)
            .map_err(|e| Failure::input(format!("taskbot: {}: {e}", args.secrets_dir.display())))?;
        let accounts = taskbot::accounts::set_up(&admin, &dir, database)
            .await
            .map_err(|e| Failure::input(format!("taskbot: {e}")))?;
        Ok(format!(
            "# Made by `taskbot setup-users` for namespace {:?}; add to the configuration.\n\
             # Each password file must be readable by its service's OS user only.\n\n{}",
            admin.amqp.namespace,
            accounts.snippet()
        ))
    })
}

/// The job request `taskbot submit` publishes: like one from the rules, with the rule
/// `manual` and an event id of its own, so its job id is new.
pub fn manual_job(args: &SubmitArgs, arch: &str, event_id: &str) -> Result<JobRequest, Failure> {
    let mut job_args = BTreeMap::new();
    for pair in &args.arg {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| Failure::usage(format!("taskbot: --arg {pair:?} is not KEY=VALUE")))?;
        job_args.insert(k.to_string(), v.to_string());
    }
    let task = TaskRef {
        name: args.task.clone(),
        repo: args.repo.clone(),
        git_ref: args.git_ref.clone(),
    };
    let rule = "manual";
    Ok(JobRequest {
        job_id: JobRequest::derive_id(event_id, rule, &task, &args.item, arch, &job_args),
        event_id: event_id.to_string(),
        event_topic: "taskbot.manual".into(),
        rule: rule.into(),
        task,
        item: args.item.clone(),
        item_type: args.item_type.clone(),
        arch: arch.to_string(),
        args: job_args,
        priority: args.priority,
        environment: Default::default(),
        destructive: false,
        vm: None,
        testcases: Vec::new(),
        scenario: None,
        created_at: chrono::Utc::now(),
    })
}

/// Refuse arches the deployment does not run (`arches` in the configuration): the provisioner
/// would only answer such a job with a CRASHED result, after it was published.
pub fn check_arches(requested: &[String], deployment: &[String]) -> Result<(), Failure> {
    let unknown: Vec<&str> = requested
        .iter()
        .map(String::as_str)
        .filter(|arch| !deployment.iter().any(|a| a == arch))
        .collect();
    if unknown.is_empty() && !requested.is_empty() {
        return Ok(());
    }
    let unknown = unknown
        .iter()
        .map(|a| format!("{a:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    Err(Failure::usage(format!(
        "taskbot submit: --arch {unknown} is not an arch of this deployment; \
         its arches (`arches` in the configuration) are: {}",
        deployment.join(", ")
    )))
}

pub fn submit(args: &SubmitArgs) -> Result<String, Failure> {
    let config = load_config()?;
    check_arches(&args.arch, &config.arches)?;
    let event_id = format!("manual-{}", uuid::Uuid::new_v4());
    let jobs = args
        .arch
        .iter()
        .map(|arch| manual_job(args, arch, &event_id))
        .collect::<Result<Vec<_>, _>>()?;
    runtime()?.block_on(async {
        let (conn, publisher, topology) = publisher(&config).await?;
        for job in &jobs {
            let status = JobStatus::new(job, JobState::Queued, "taskbot-cli", None);
            let messages = [status.outgoing(&topology), job.outgoing(&topology)];
            publisher.publish_all(&messages).await.map_err(|e| {
                Failure::input(format!("taskbot: the broker did not take the job: {e}"))
            })?;
        }
        let _ = conn.close(0, "done").await;
        Ok::<_, Failure>(())
    })?;
    let mut out = String::new();
    for job in &jobs {
        if args.json {
            let _ = writeln!(out, "{}", String::from_utf8_lossy(&job.to_json()));
        } else {
            let _ = writeln!(
                out,
                "submitted job {} ({} on {} {}, {})",
                job.job_id, job.task.name, job.item_type, job.item, job.arch
            );
        }
    }
    Ok(out)
}

pub fn replay(args: &ReplayArgs) -> Result<String, Failure> {
    let config = load_config()?;
    let (name, text) = match (&args.file, &args.datagrepper) {
        (_, Some(url)) => from_datagrepper(args, url)?,
        (Some(file), None) => message_input::read(file).map_err(Failure::input)?,
        (None, None) => {
            return Err(Failure::usage(
                "taskbot replay: give a FILE or --datagrepper",
            ))
        }
    };
    if text.trim() == "[]" {
        return Ok(format!("no messages in {name}\n"));
    }
    let messages = message_input::parse(&name, &text, config.bridge.max_message_bytes)
        .map_err(|problems| Failure::input(problems.join("\n")))?;
    let total = messages.len();
    let progress = std::io::stderr().is_terminal();
    runtime()?.block_on(async {
        let (conn, publisher, topology) = publisher(&config).await?;
        for (n, message) in messages.iter().enumerate() {
            let event = &message.event;
            publisher
                .publish(&event.outgoing(&topology))
                .await
                .map_err(|e| {
                    Failure::input(format!(
                        "taskbot: the broker did not take message {} of {total} ({}): {e}; \
                         the {n} before it were published",
                        n + 1,
                        event.id
                    ))
                })?;
            if progress {
                let width = 30;
                let done = (n + 1) * width / total.max(1);
                eprint!(
                    "\r[{}{}] {}/{total}",
                    "#".repeat(done),
                    " ".repeat(width - done),
                    n + 1
                );
            }
        }
        if progress {
            eprintln!();
        }
        let _ = conn.close(0, "done").await;
        Ok::<_, Failure>(())
    })?;
    Ok(format!(
        "replayed {total} messages from {name} into {}\n",
        Topology::for_config(&config).events_exchange()
    ))
}

/// The messages of `--since..--until` from datagrepper at `url`, as a JSON array's text, and the
/// name to call them by.
fn from_datagrepper(args: &ReplayArgs, url: &str) -> Result<(String, String), Failure> {
    let time = |flag: &str, t: &Option<String>| {
        crate::datagrepper::parse_time(t.as_deref().unwrap_or_default())
            .map_err(|e| Failure::usage(format!("taskbot replay: --{flag}: {e}")))
    };
    let (since, until) = (time("since", &args.since)?, time("until", &args.until)?);
    if since > until {
        return Err(Failure::usage("taskbot replay: --since is after --until"));
    }
    let messages = runtime()?
        .block_on(crate::datagrepper::fetch(url, since, until, &args.topic))
        .map_err(|e| Failure::input(format!("taskbot replay: {e}")))?;
    let name = format!(
        "datagrepper {} .. {}",
        since.to_rfc3339(),
        until.to_rfc3339()
    );
    Ok((name, Value::Array(messages).to_string()))
}

/// One dead letter, as `dlq list` and `dlq show` print it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeadLetter {
    pub queue: String,
    pub reason: Option<String>,
    pub source: Option<String>,
    /// The routing key the message was first published with (what its consumer saw), else (when
    /// the dead-lettering recorded none) the dead-letter queue's own.
    pub routing_key: String,
    /// The exchange it was first published to, when known.
    pub exchange: Option<String>,
    pub body: String,
}

pub fn dlq(args: &DlqArgs) -> Result<String, Failure> {
    let config = load_config()?;
    let topology = Topology::for_config(&config);
    let sources = dead_letter_sources(&topology, args.queue.as_deref())?;
    if matches!(args.command, DlqCommand::Purge) && !args.yes {
        return Err(Failure::usage(
            "taskbot: dlq purge deletes dead letters for good; add --yes to confirm",
        ));
    }
    runtime()?.block_on(async {
        let (conn, publisher, topology) = publisher(&config).await?;
        let broker = DlqBroker {
            conn: &conn,
            publisher: &publisher,
            topology: &topology,
        };
        let out = match &args.command {
            DlqCommand::List => broker.list(&sources, 0, args.json).await?,
            DlqCommand::Show => broker.list(&sources, args.limit, args.json).await?,
            DlqCommand::Retry => broker.retry(&sources, args.limit).await?,
            DlqCommand::Purge => broker.purge(&sources).await?,
        };
        let _ = conn.close(0, "done").await;
        Ok(out)
    })
}

/// Every queue of this namespace whose dead letters `dlq` looks at: every work and sink queue,
/// and the bridges' (which have no queue of their own).
fn all_dead_letter_sources(topology: &Topology) -> Vec<String> {
    let mut sources: Vec<String> = topology
        .work_queues()
        .into_iter()
        .chain(topology.sink_queues(&taskbot::topology::Sink::ALL))
        .map(|q| q.name)
        .collect();
    sources.insert(0, topology.bridge_source());
    sources.insert(1, topology.fedora_messaging_bridge_source());
    sources
}

/// The sources `dlq` works on: all of them, or only `only` (a full queue name or one without the
/// namespace). A name that is none of them is a usage error naming the valid ones: doing nothing
/// with status 0 would look like "no dead letters".
pub fn dead_letter_sources(
    topology: &Topology,
    only: Option<&str>,
) -> Result<Vec<String>, Failure> {
    let sources = all_dead_letter_sources(topology);
    let Some(only) = only else {
        return Ok(sources);
    };
    let prefix = format!("{}.", topology.namespace);
    let only = only.trim();
    let short = only.strip_prefix(&prefix).unwrap_or(only);
    // The dead-letter queue's own name is understood too.
    let short = short.strip_suffix(".dead").unwrap_or(short);
    let wanted = format!("{prefix}{short}");
    if sources.contains(&wanted) {
        return Ok(vec![wanted]);
    }
    let names: Vec<&str> = sources
        .iter()
        .map(|s| s.strip_prefix(&prefix).unwrap_or(s))
        .collect();
    Err(Failure::usage(format!(
        "taskbot dlq: --queue {only:?} is not a queue of namespace {:?}; \
         the queues with dead letters are: {}",
        topology.namespace,
        names.join(", ")
    )))
}

/// What `dlq` works with on the broker.
struct DlqBroker<'a> {
    conn: &'a lapin::Connection,
    publisher: &'a Publisher,
    topology: &'a Topology,
}

fn broker_failure(e: impl std::fmt::Display) -> Failure {
    Failure::input(format!("taskbot: {e}"))
}

impl DlqBroker<'_> {
    /// How many dead letters `dead` holds; `None` when there is no such queue.
    async fn count(&self, dead: &str) -> Result<Option<u32>, Failure> {
        dead_letters::count(self.conn, dead)
            .await
            .map_err(broker_failure)
    }

    /// `dlq list` (`limit` 0: counts only) and `dlq show` (up to `limit` letters per queue).
    async fn list(&self, sources: &[String], limit: usize, json: bool) -> Result<String, Failure> {
        let channel = self.publisher.channel();
        let mut listed = Vec::new();
        for source in sources {
            let dead = self.topology.dead_letter_queue(source);
            let Some(count) = self.count(&dead).await? else {
                continue;
            };
            let letters = if limit > 0 {
                dead_letters::peek_letters(channel, &dead, limit)
                    .await
                    .map_err(broker_failure)?
            } else {
                Vec::new()
            };
            let letters: Vec<DeadLetter> = letters.iter().map(|l| letter(&dead, l)).collect();
            listed.push((dead, count, letters));
        }
        Ok(if json {
            let json: Vec<Value> = listed
                .iter()
                .map(|(queue, count, letters)| {
                    serde_json::json!({"queue": queue, "count": count, "messages": letters})
                })
                .collect();
            serde_json::to_string_pretty(&json).expect("JSON serialises") + "\n"
        } else {
            let mut out = String::new();
            for (queue, count, letters) in &listed {
                let _ = writeln!(out, "{queue}: {count} dead letters");
                for l in letters {
                    out.push_str(&letter_text(l));
                }
            }
            out
        })
    }

    /// `dlq retry`: up to `limit` dead letters of each queue back onto it, each once.
    async fn retry(&self, sources: &[String], limit: usize) -> Result<String, Failure> {
        let mut out = String::new();
        let mut total = 0;
        for source in sources {
            let dead = self.topology.dead_letter_queue(source);
            let waiting = self.count(&dead).await?.unwrap_or(0);
            if let Some(why) = self.not_retried(source) {
                if waiting > 0 {
                    let _ = writeln!(out, "{dead}: {waiting} not re-queued: {why}");
                }
                continue;
            }
            if waiting == 0 {
                continue;
            }
            let moved = dead_letters::move_to(self.conn, self.publisher, &dead, source, limit)
                .await
                .map_err(|e| {
                    broker_failure(format!("moving {dead} back to {source} stopped: {e}"))
                })?;
            total += moved;
            let left = waiting as usize - moved;
            let _ = writeln!(
                out,
                "{dead} → {source}: {moved} re-queued{}",
                if left > 0 {
                    format!(", {left} left (raise --limit)")
                } else {
                    String::new()
                }
            );
        }
        let _ = writeln!(out, "{total} dead letters re-queued");
        Ok(out)
    }

    /// Why the dead letters of `source` are not put back, if they are not.
    fn not_retried(&self, source: &str) -> Option<&'static str> {
        if *source == self.topology.bridge_source()
            || *source == self.topology.fedora_messaging_bridge_source()
        {
            // A malformed bus message has no queue to go back to.
            return Some(
                "a bridge has no queue to put them back on; fix the bus message and feed it \
                 with `taskbot replay`",
            );
        }
        if self.is_run_queue(source) {
            // Runners honour run messages only from the provisioner's broker user, and a run
            // message names a machine that may be gone: the job is re-requested instead.
            return Some(
                "runners take run messages only from the provisioner; submit the job again \
                 with `taskbot submit`",
            );
        }
        None
    }

    /// Whether `queue` is a runner's run queue.
    fn is_run_queue(&self, queue: &str) -> bool {
        let prefix = self.topology.run_queue("");
        queue.starts_with(&prefix) && queue.len() > prefix.len()
    }

    /// `dlq purge --yes`: every dead letter of each queue, gone.
    async fn purge(&self, sources: &[String]) -> Result<String, Failure> {
        let mut out = String::new();
        for source in sources {
            let dead = self.topology.dead_letter_queue(source);
            if self.count(&dead).await?.is_none() {
                continue;
            }
            let n = dead_letters::purge(self.publisher.channel(), &dead)
                .await
                .map_err(broker_failure)?;
            let _ = writeln!(out, "{dead}: {n} purged");
        }
        Ok(out)
    }
}

/// A dead letter for people: its reason, the route it was first published on and its body's start.
fn letter(queue: &str, l: &dead_letters::Letter) -> DeadLetter {
    const SHOWN: usize = 300;
    let incoming = &l.incoming;
    let body = String::from_utf8_lossy(&incoming.body);
    let body = if body.len() > SHOWN {
        let mut end = SHOWN;
        while !body.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}... ({} bytes)", &body[..end], incoming.body.len())
    } else {
        body.into_owned()
    };
    DeadLetter {
        queue: queue.to_string(),
        reason: incoming.header(REASON_HEADER).map(str::to_string),
        source: incoming.header(SOURCE_HEADER).map(str::to_string),
        routing_key: l
            .route
            .as_ref()
            .map_or_else(|| incoming.routing_key.clone(), |r| r.routing_key.clone()),
        exchange: l
            .route
            .as_ref()
            .map(|r| r.exchange.clone())
            .filter(|e| !e.is_empty()),
        body,
    }
}

/// The lines `dlq show` prints for one letter.
pub fn letter_text(l: &DeadLetter) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "  - reason: {}",
        l.reason.as_deref().unwrap_or("(none given)")
    );
    let _ = writeln!(out, "    routing key: {}", l.routing_key);
    if let Some(exchange) = &l.exchange {
        let _ = writeln!(out, "    exchange: {exchange}");
    }
    let _ = writeln!(out, "    body: {}", l.body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use taskbot::management::QueueStats;

    fn q(name: &str, ready: u64, consumers: u64) -> QueueStats {
        QueueStats::named(name, ready, consumers)
    }

    #[test]
    fn submit_takes_only_the_deployments_arches() {
        let deployment = ["x86_64".to_string(), "noarch".to_string()];
        let arches = |list: &[&str]| list.iter().map(|a| a.to_string()).collect::<Vec<_>>();
        assert!(check_arches(&arches(&["x86_64", "noarch"]), &deployment).is_ok());
        let refused = check_arches(&arches(&["x86_64", "s390x"]), &deployment).unwrap_err();
        assert_eq!(refused.status, 2);
        assert!(
            refused.message.contains("\"s390x\"") && refused.message.contains("x86_64, noarch"),
            "{}",
            refused.message
        );
        assert!(
            !refused.message.contains("\"x86_64\""),
            "{}",
            refused.message
        );
        assert!(check_arches(&arches(&[""]), &deployment).is_err());
    }

    #[test]
    fn elapsed_times_read_well() {
        assert_eq!(elapsed(5), "5s");
        assert_eq!(elapsed(75), "1m15s");
        assert_eq!(elapsed(7260), "2h01m");
    }

    #[test]
    fn the_status_table_shows_every_stage_runners_and_jobs() {
        let queues = [
            q("tb.run.x86_64", 4, 2),
            q("tb.run.x86_64.dead", 1, 0),
            q("tb.rules", 7, 1),
            q("tb.run.aarch64", 0, 0),
        ];
        let mut status = classify("tb", &queues);
        status.jobs = Some(BTreeMap::from([("done".to_string(), 3)]));
        let text = status_text(&status, false);
        assert!(
            text.contains("runners per arch: aarch64: 0, x86_64: 2"),
            "{text}"
        );
        assert!(text.contains("jobs by state: done: 3"), "{text}");
        assert!(
            text.lines()
                .any(|l| l.starts_with("rules ") && l.split_whitespace().nth(1) == Some("7")),
            "{text}"
        );
        assert!(!text.contains('\x1b'), "no colour unless asked");
        assert!(
            status_text(&status, true).contains("\x1b[31m"),
            "dead letters in red"
        );
        assert!(
            status_text(&status, true).contains("\x1b[33m"),
            "no consumers in yellow"
        );
    }
}
