//! The web dashboard: `/dashboard` (stages and queues with their depths, consumers and dead
//! letters, runners per arch, jobs by state, recent jobs) and `/dashboard/jobs/<id>` (a job's
//! history, results and log). Rendered on the server as plain HTML, refreshed by the browser
//! every few seconds: nothing to build, nothing to run in the browser, and what a test reads in
//! the page is exactly what was rendered.
//!
//! Queue figures come from RabbitMQ's management API (`taskbot::management`, as for `taskbot
//! status`); jobs from the reporter's tables.

use std::fmt::Write as _;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use taskbot::artifacts::TASK_LOG;
use taskbot::management::Status;
use uuid::Uuid;

use crate::store::ApiError;
use crate::SharedState;

/// Seconds between two refreshes of the dashboard page.
const REFRESH_SECS: u32 = 5;
/// Lines of a job's log shown on its page (the whole log is linked).
const LOG_LINES: usize = 200;
/// The most of a job's log read for its page: its end, room for [`LOG_LINES`] lines of 320
/// bytes. A log of many megabytes costs a request no more than this.
const LOG_TAIL_BYTES: u64 = 64 * 1024;

/// The end of a job's log, as read for its page.
#[derive(Debug, Clone, PartialEq)]
pub struct LogTail {
    /// Whole lines from the end of the log.
    pub text: String,
    /// The whole log's size in bytes.
    pub size: u64,
    /// Whether `text` is the whole log (then its lines are all the log's lines).
    pub whole: bool,
}

/// The last at most `max` bytes of the file at `path`, starting at a line: when reading did not
/// start at the file's start, the first (likely cut) line is dropped. `None` when there is no
/// such file, it cannot be read, or it is a link (symbolic or hard) or not a regular file.
pub async fn read_tail(path: &std::path::Path, max: u64) -> Option<LogTail> {
    use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};
    // As the artifacts are served: no symbolic link followed, a regular file of one link.
    let (dir, name) = (
        path.parent()?.to_path_buf(),
        std::path::PathBuf::from(path.file_name()?),
    );
    let opened = tokio::task::spawn_blocking(move || {
        let file = taskbot::artifacts::open_beneath(&dir, &name).ok()?;
        taskbot::artifacts::check_regular(&file.metadata().ok()?).ok()?;
        Some(file)
    });
    let mut file = tokio::fs::File::from_std(opened.await.ok()??);
    let size = file.metadata().await.ok()?.len();
    let start = size.saturating_sub(max);
    file.seek(std::io::SeekFrom::Start(start)).await.ok()?;
    let mut bytes = Vec::with_capacity(usize::try_from(size - start).unwrap_or(0));
    file.take(max).read_to_end(&mut bytes).await.ok()?;
    if start > 0 {
        let first_line = bytes
            .iter()
            .position(|&b| b == b'\n')
            .map_or(bytes.len(), |i| i + 1);
        bytes.drain(..first_line);
    }
    Some(LogTail {
        text: String::from_utf8_lossy(&bytes).into_owned(),
        size,
        whole: start == 0,
    })
}

/// One row of the recent jobs table.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRow {
    pub id: Uuid,
    pub state: String,
    pub task: String,
    pub item: String,
    pub arch: String,
    pub updated_at: DateTime<Utc>,
}

/// Text safe inside HTML elements and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn page(title: &str, refresh: bool, body: &str) -> String {
    let refresh = if refresh {
        format!("<meta http-equiv=\"refresh\" content=\"{REFRESH_SECS}\">")
    } else {
        String::new()
    };
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">{refresh}\
         <title>{}</title><style>\
         body{{font-family:sans-serif;margin:1.5em;color:#222}}\
         table{{border-collapse:collapse;margin-bottom:1.5em}}\
         th,td{{border:1px solid #ccc;padding:.25em .6em;text-align:left}}\
         td.n{{text-align:right;font-variant-numeric:tabular-nums}}\
         .bad{{background:#fdd}} .idle{{background:#ffd}}\
         .state-done{{color:#070}} .state-crashed{{color:#b00}}\
         pre{{background:#f6f6f6;padding:.8em;overflow:auto;max-height:40em}}\
         </style></head><body>{body}</body></html>\n",
        escape(title)
    )
}

/// The dashboard page. `status` is the queues' state or why it could not be read; `states` the
/// jobs by state; `jobs` the most recently updated jobs.
pub fn render_dashboard(
    status: &Result<Status, String>,
    states: &[(String, i64)],
    jobs: &[JobRow],
) -> String {
    let mut b = String::new();
    let _ = write!(b, "<h1>Taskbot</h1>");
    match status {
        Ok(status) => {
            write_stages(&mut b, status);
            write_runners(&mut b, status);
        }
        Err(err) => {
            let _ = write!(
                b,
                "<p id=\"queues-error\" class=\"bad\">Queues unknown: {}</p>",
                escape(err)
            );
        }
    }
    write_job_states(&mut b, states);
    write_recent_jobs(&mut b, jobs);
    let _ = write!(
        b,
        "<p>Refreshed every {REFRESH_SECS} s. JSON: <a href=\"/api/v1/jobs\">/api/v1/jobs</a>, \
         <a href=\"/api/v2.0/results\">/api/v2.0/results</a>.</p>"
    );
    page("Taskbot", true, &b)
}

/// The stages table: each stage's queue with its depths, consumers, rates and dead letters
/// (dead letters mark the row bad, a queue nobody consumes idle).
fn write_stages(b: &mut String, status: &Status) {
    let _ = write!(
        b,
        "<h2>Stages</h2><table id=\"stages\" data-namespace=\"{}\"><tr><th>stage</th>\
         <th>queue</th><th>waiting</th><th>working</th><th>consumers</th><th>in/s</th>\
         <th>out/s</th><th>dead letters</th></tr>",
        escape(&status.namespace)
    );
    for stage in &status.stages {
        let class = if stage.dead_letters > 0 {
            " class=\"bad\""
        } else if stage.queue.as_ref().is_some_and(|q| q.consumers == 0) {
            " class=\"idle\""
        } else {
            ""
        };
        match &stage.queue {
            Some(q) => {
                let _ = write!(
                    b,
                    "<tr{class} data-queue=\"{name}\"><td>{stage}</td><td>{name}</td>\
                     <td class=\"n\" data-field=\"ready\">{}</td>\
                     <td class=\"n\" data-field=\"unacked\">{}</td>\
                     <td class=\"n\" data-field=\"consumers\">{}</td>\
                     <td class=\"n\">{:.1}</td><td class=\"n\">{:.1}</td>\
                     <td class=\"n\" data-field=\"dead\">{}</td></tr>",
                    q.ready,
                    q.unacked,
                    q.consumers,
                    q.publish_rate,
                    q.deliver_rate,
                    stage.dead_letters,
                    stage = escape(&stage.stage),
                    name = escape(&q.name),
                );
            }
            None => {
                let _ = write!(
                    b,
                    "<tr{class} data-stage=\"{stage}\"><td>{stage}</td><td>-</td><td>-</td>\
                     <td>-</td><td>-</td><td>-</td><td>-</td>\
                     <td class=\"n\" data-field=\"dead\">{}</td></tr>",
                    stage.dead_letters,
                    stage = escape(&stage.stage),
                );
            }
        }
    }
    let _ = write!(b, "</table>");
}

fn write_runners(b: &mut String, status: &Status) {
    let _ = write!(
        b,
        "<h2>Runners per arch</h2><table id=\"runners\"><tr><th>arch</th><th>runners</th></tr>"
    );
    for (arch, n) in &status.runners {
        let _ = write!(
            b,
            "<tr data-arch=\"{a}\"><td>{a}</td><td class=\"n\">{n}</td></tr>",
            a = escape(arch)
        );
    }
    let _ = write!(b, "</table>");
}

fn write_job_states(b: &mut String, states: &[(String, i64)]) {
    let _ = write!(
        b,
        "<h2>Jobs by state</h2><table id=\"job-states\"><tr><th>state</th><th>jobs</th></tr>"
    );
    for (state, n) in states {
        let _ = write!(
            b,
            "<tr data-state=\"{s}\"><td class=\"state-{s}\">{s}</td><td class=\"n\">{n}</td></tr>",
            s = escape(state)
        );
    }
    let _ = write!(b, "</table>");
}

fn write_recent_jobs(b: &mut String, jobs: &[JobRow]) {
    let _ = write!(
        b,
        "<h2>Recent jobs</h2><table id=\"jobs\"><tr><th>updated</th><th>state</th>\
         <th>task</th><th>item</th><th>arch</th><th>job</th></tr>"
    );
    for job in jobs {
        let _ = write!(
            b,
            "<tr data-job=\"{id}\"><td>{}</td><td class=\"state-{s}\">{s}</td><td>{}</td>\
             <td>{}</td><td>{}</td><td><a href=\"/dashboard/jobs/{id}\">{id}</a></td></tr>",
            job.updated_at.format("%Y-%m-%d %H:%M:%S UTC"),
            escape(&job.task),
            escape(&job.item),
            escape(&job.arch),
            id = job.id,
            s = escape(&job.state),
        );
    }
    let _ = write!(b, "</table>");
}

/// One job's page: its fields, history (state, time, service, detail), results, and the end of
/// its log.
pub fn render_job(
    job: &JobRow,
    history: &[(String, DateTime<Utc>, String, Option<String>)],
    results: &[(String, String, Option<String>)],
    log: Option<&LogTail>,
) -> String {
    let mut b = String::new();
    let _ = write!(
        b,
        "<p><a href=\"/dashboard\">← dashboard</a></p><h1>Job {id}</h1>\
         <table id=\"job\"><tr><th>task</th><td>{}</td></tr><tr><th>item</th><td>{}</td></tr>\
         <tr><th>arch</th><td>{}</td></tr><tr><th>state</th><td class=\"state-{s}\" id=\"state\">{s}</td></tr></table>\
         <h2>History</h2><table id=\"history\"><tr><th>at</th><th>state</th><th>service</th><th>detail</th></tr>",
        escape(&job.task),
        escape(&job.item),
        escape(&job.arch),
        id = job.id,
        s = escape(&job.state),
    );
    for (state, at, service, detail) in history {
        let _ = write!(
            b,
            "<tr><td>{}</td><td class=\"state-{s}\">{s}</td><td>{}</td><td>{}</td></tr>",
            at.format("%Y-%m-%d %H:%M:%S%.3f UTC"),
            escape(service),
            escape(detail.as_deref().unwrap_or("")),
            s = escape(state),
        );
    }
    let _ = write!(b, "</table><h2>Results</h2><table id=\"results\"><tr><th>testcase</th><th>outcome</th><th>note</th></tr>");
    for (testcase, outcome, note) in results {
        let _ = write!(
            b,
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(testcase),
            escape(outcome),
            escape(note.as_deref().unwrap_or(""))
        );
    }
    let _ = write!(b, "</table><h2>Log</h2>");
    match log {
        Some(log) => {
            let lines: Vec<&str> = log.text.lines().collect();
            let shown = &lines[lines.len().saturating_sub(LOG_LINES)..];
            // Only a log read whole has a known number of lines.
            let of = if log.whole {
                format!("{} lines", lines.len())
            } else {
                format!("{} bytes", log.size)
            };
            let _ = write!(
                b,
                "<p>Last {} of {of}; whole log: <a href=\"/api/v1/jobs/{id}/artifacts/{TASK_LOG}\">{TASK_LOG}</a></p>\
                 <pre id=\"log\">{}</pre>",
                shown.len(),
                escape(&shown.join("\n")),
                id = job.id
            );
        }
        None => {
            let _ = write!(b, "<p id=\"log\">No log here (yet).</p>");
        }
    }
    let refresh = !matches!(job.state.as_str(), "done" | "crashed");
    page(&format!("Taskbot job {}", job.id), refresh, &b)
}

fn html(text: String) -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], text).into_response()
}

/// `GET /dashboard`.
pub async fn dashboard(State(state): State<SharedState>) -> Result<Response, ApiError> {
    let status = match &state.management {
        Ok(management) => management.status(&state.namespace).await,
        Err(e) => Err(e.clone()),
    };
    let client = state.store.client().await?;
    let states = client
        .query(
            "SELECT state, count(*) FROM jobs GROUP BY state ORDER BY state",
            &[],
        )
        .await?
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect::<Result<Vec<(String, i64)>, tokio_postgres::Error>>()?;
    let jobs = client
        .query(
            "SELECT job_id, state, task_name, item, arch, updated_at FROM jobs \
             ORDER BY updated_at DESC, job_id LIMIT 30",
            &[],
        )
        .await?
        .iter()
        .map(job_row)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(html(render_dashboard(&status, &states, &jobs)))
}

fn job_row(r: &tokio_postgres::Row) -> Result<JobRow, tokio_postgres::Error> {
    Ok(JobRow {
        id: r.try_get(0)?,
        state: r.try_get(1)?,
        task: r.try_get(2)?,
        item: r.try_get(3)?,
        arch: r.try_get(4)?,
        updated_at: r.try_get(5)?,
    })
}

/// `GET /dashboard/jobs/<id>`.
pub async fn job(
    State(state): State<SharedState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let Ok(id) = Uuid::parse_str(&id) else {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "Not found"));
    };
    let client = state.store.client().await?;
    let Some(row) = client
        .query_opt(
            "SELECT job_id, state, task_name, item, arch, updated_at FROM jobs WHERE job_id = $1",
            &[&id],
        )
        .await?
    else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("job {id} not found"),
        ));
    };
    let job = job_row(&row)?;
    let history = client
        .query(
            "SELECT state, at, service, detail FROM job_events WHERE job_id = $1 ORDER BY at, state",
            &[&id],
        )
        .await?
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?)))
        .collect::<Result<Vec<_>, tokio_postgres::Error>>()?;
    let results = client
        .query(
            "SELECT testcase, outcome, note FROM results WHERE job_id = $1 ORDER BY testcase",
            &[&id],
        )
        .await?
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
        .collect::<Result<Vec<_>, tokio_postgres::Error>>()?;
    let log = read_tail(
        &state.artifacts_dir.join(id.to_string()).join(TASK_LOG),
        LOG_TAIL_BYTES,
    )
    .await;
    Ok(html(render_job(&job, &history, &results, log.as_ref())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use taskbot::management::{classify, QueueStats};

    fn job(state: &str, item: &str) -> JobRow {
        JobRow {
            id: Uuid::from_u128(7),
            state: state.into(),
            task: "rpmlint".into(),
            item: item.into(),
            arch: "noarch".into(),
            updated_at: DateTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn the_dashboard_shows_queues_runners_states_and_jobs_escaped() {
        let status = classify(
            "tb",
            &[
                QueueStats {
                    name: "tb.rules".into(),
                    ready: 3,
                    consumers: 1,
                    ..Default::default()
                },
                QueueStats {
                    name: "tb.run.x86_64".into(),
                    ready: 0,
                    consumers: 2,
                    ..Default::default()
                },
                QueueStats {
                    name: "tb.rules.dead".into(),
                    ready: 1,
                    ..Default::default()
                },
            ],
        );
        let html = render_dashboard(
            &Ok(status),
            &[("done".into(), 4)],
            &[job("running", "<script>x</script>")],
        );
        assert!(
            html.contains("<tr class=\"bad\" data-queue=\"tb.rules\">"),
            "{html}"
        );
        assert!(
            html.contains("<td class=\"n\" data-field=\"ready\">3</td>"),
            "{html}"
        );
        assert!(
            html.contains("<tr data-arch=\"x86_64\"><td>x86_64</td><td class=\"n\">2</td></tr>"),
            "{html}"
        );
        assert!(html.contains("<tr data-state=\"done\">"), "{html}");
        assert!(html.contains("&lt;script&gt;x&lt;/script&gt;"), "{html}");
        assert!(!html.contains("<script>"), "{html}");
        assert!(html.contains("http-equiv=\"refresh\""));
        let html = render_dashboard(&Err("cannot read <x>".into()), &[], &[]);
        assert!(
            html.contains("Queues unknown: cannot read &lt;x&gt;"),
            "{html}"
        );
    }

    #[test]
    fn a_job_page_shows_the_end_of_its_log_and_stops_refreshing_when_final() {
        let text: String = (1..=250).map(|n| format!("line {n}\n")).collect();
        let log = LogTail {
            size: text.len() as u64,
            text,
            whole: true,
        };
        let html = render_job(
            &job("done", "a-1-1"),
            &[],
            &[("dist.rpmlint".into(), "PASSED".into(), None)],
            Some(&log),
        );
        assert!(html.contains("Last 200 of 250 lines"), "{html}");
        assert!(
            html.contains("line 250") && !html.contains("line 50\n"),
            "{html}"
        );
        assert!(!html.contains("http-equiv=\"refresh\""));
        let html = render_job(&job("running", "a-1-1"), &[], &[], None);
        assert!(html.contains("No log here (yet)."));
        assert!(html.contains("http-equiv=\"refresh\""));
    }

    #[tokio::test]
    async fn only_the_end_of_a_huge_log_is_read_and_it_starts_at_a_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("task.log");
        // 8 GiB of hole, then the lines: a handler reading the whole log would not finish (nor
        // fit in memory); one reading the tail reads 64 KiB.
        let hole = 8u64 << 30;
        let file = std::fs::File::create(&path).unwrap();
        file.set_len(hole).unwrap();
        drop(file);
        let lines: String = (1..=20_000).map(|n| format!("line {n:05}\n")).collect();
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        std::io::Write::write_all(&mut file, lines.as_bytes()).unwrap();
        let size = hole + lines.len() as u64;

        let tail = read_tail(&path, LOG_TAIL_BYTES).await.unwrap();
        assert_eq!((tail.size, tail.whole), (size, false));
        assert!(tail.text.len() as u64 <= LOG_TAIL_BYTES);
        // Each line is 11 bytes: 65536 bytes from the end cut line 14043 after its first 9
        // bytes, so the tail starts with the next line, and is everything after it.
        assert!(
            tail.text.starts_with("line 14044\n"),
            "{}",
            &tail.text[..40]
        );
        assert!(lines.ends_with(&tail.text));
        assert!(tail.text.ends_with("line 20000\n"));

        let html = render_job(&job("done", "a-1-1"), &[], &[], Some(&tail));
        assert!(
            html.contains(&format!("Last 200 of {size} bytes")),
            "{html}"
        );
        assert!(html.contains("line 19801\nline 19802") && !html.contains("line 19800"));
    }

    #[tokio::test]
    async fn a_short_log_is_read_whole_and_a_missing_one_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("task.log");
        std::fs::write(&path, "one\ntwo\n").unwrap();
        assert_eq!(
            read_tail(&path, LOG_TAIL_BYTES).await,
            Some(LogTail {
                text: "one\ntwo\n".into(),
                size: 8,
                whole: true
            })
        );
        // Reading that starts exactly at a line drops that line too: the tail is whole lines.
        let tail = read_tail(&path, 4).await.unwrap();
        assert_eq!((tail.text.as_str(), tail.whole), ("", false));
        let tail = read_tail(&path, 5).await.unwrap();
        assert_eq!(tail.text, "two\n");
        assert_eq!(read_tail(&dir.path().join("nothing"), 10).await, None);
    }
}
