//! A job's page, `/dashboard/jobs/<id>`: its fields and outcome, its results (outcome, note, log),
//! its history, its files as links, and the end of its log (each line linking to the whole log
//! at that line). It reloads itself until the job is final.

use std::fmt::Write as _;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use chrono::{DateTime, Utc};
use taskbot::artifacts::TASK_LOG;
use uuid::Uuid;

use super::files::{self, line_href};
use super::html::{self, escape, outcome, state, PageError};
use super::search::{job_row, when, JobRow, JOB_ROW_COLUMNS};
use crate::artifacts::{self, Resolve};
use crate::SharedState;

/// Lines of a job's log shown on its page (the whole log is linked).
pub const LOG_LINES: usize = 200;
/// The most of a job's log read for its page: its end, room for [`LOG_LINES`] lines of 320
/// bytes. A log of many megabytes costs a request no more than this.
pub const LOG_TAIL_BYTES: u64 = 64 * 1024;
/// A note longer than this is cut on the page (the api has it whole).
const NOTE_CHARS: usize = 4000;

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

/// One of the job's results, as its page shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct ResultRow {
    pub testcase: String,
    pub outcome: String,
    pub note: Option<String>,
    pub finished_at: DateTime<Utc>,
    /// Where the runner published the log, when it says.
    pub log_url: Option<String>,
}

pub use crate::jobs::HistoryRow;

/// What a job's page shows.
pub struct JobPage<'a> {
    pub job: &'a JobRow,
    pub history: &'a [HistoryRow],
    pub results: &'a [ResultRow],
    /// The entries of the job's directory (empty when it has none).
    pub files: &'a [(String, bool, u64)],
    pub log: Option<&'a LogTail>,
}

/// A link that is safe to follow from the page: `http(s)` only (a task's `javascript:` URL is
/// shown as text, never linked).
pub fn external_link(url: &str, text: &str) -> String {
    let lower = url.trim_start().to_ascii_lowercase();
    if lower.starts_with("https://") || lower.starts_with("http://") {
        format!(
            "<a href=\"{}\" rel=\"noreferrer nofollow\">{}</a>",
            escape(url.trim_start()),
            escape(text)
        )
    } else {
        escape(url)
    }
}

fn write_fields(b: &mut String, job: &JobRow) {
    let _ = write!(
        b,
        "<h1>Job {id}</h1><table id=\"job\">\
         <tr><th>item</th><td><a class=\"item\" href=\"{}\">{}</a></td></tr>\
         <tr><th>task</th><td>{}</td></tr><tr><th>arch</th><td>{}</td></tr>\
         <tr><th>state</th><td id=\"state\">{}</td></tr>\
         <tr><th>outcome</th><td id=\"outcome\">{}</td></tr>\
         <tr><th>created</th><td>{}</td></tr><tr><th>updated</th><td>{}</td></tr></table>",
        escape(&html::item_href(&job.item)),
        escape(&job.item),
        escape(&job.task),
        escape(&job.arch),
        state(&job.state),
        outcome(job.outcome.as_deref()),
        when(&job.created_at),
        when(&job.updated_at),
        id = job.id,
    );
}

fn write_results(b: &mut String, job_id: &Uuid, results: &[ResultRow]) {
    let _ = write!(b, "<h2>Results</h2>");
    if results.is_empty() {
        let _ = write!(b, "<p id=\"no-results\">No results (yet).</p>");
        return;
    }
    let log = html::file_href(job_id, TASK_LOG);
    let _ = write!(
        b,
        "<table id=\"results\"><tr><th>testcase</th><th>outcome</th><th>finished</th>\
         <th>note</th><th>log</th></tr>"
    );
    for r in results {
        let published = r
            .log_url
            .as_deref()
            .map(|u| format!(" · {}", external_link(u, "published")))
            .unwrap_or_default();
        let _ = write!(
            b,
            "<tr data-testcase=\"{t}\"><td>{t}</td><td>{}</td><td>{}</td><td class=\"note\">{}</td>\
             <td><a href=\"{}\">{TASK_LOG}</a>{published}</td></tr>",
            outcome(Some(&r.outcome)),
            when(&r.finished_at),
            escape(&html::cut(r.note.as_deref().unwrap_or(""), NOTE_CHARS)),
            escape(&log),
            t = escape(&r.testcase),
        );
    }
    let _ = write!(b, "</table>");
}

fn write_history(b: &mut String, history: &[HistoryRow]) {
    let _ = write!(
        b,
        "<h2>History</h2><table id=\"history\"><tr><th>at</th><th>state</th><th>service</th>\
         <th>detail</th></tr>"
    );
    for (s, at, service, detail) in history {
        let _ = write!(
            b,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"note\">{}</td></tr>",
            at.format("%Y-%m-%d %H:%M:%S%.3f UTC"),
            state(s),
            escape(service),
            escape(&html::cut(detail.as_deref().unwrap_or(""), NOTE_CHARS)),
        );
    }
    let _ = write!(b, "</table>");
}

/// The end of the log; when it was read whole its lines are numbered, each number linking to
/// that line of the whole log's page.
fn write_log(b: &mut String, job_id: &Uuid, log: Option<&LogTail>) {
    let _ = write!(b, "<h2>Log</h2>");
    let Some(log) = log else {
        let _ = write!(b, "<p id=\"log\">No log here (yet).</p>");
        return;
    };
    let lines: Vec<&str> = log.text.lines().collect();
    let skipped = lines.len().saturating_sub(LOG_LINES);
    let shown = &lines[skipped..];
    // Only a log read whole has a known number of lines.
    let of = if log.whole {
        format!("{} lines", lines.len())
    } else {
        format!("{} bytes", log.size)
    };
    let href = html::file_href(job_id, TASK_LOG);
    let _ = write!(
        b,
        "<p>Last {} of {of}; whole log, with line numbers: \
         <a id=\"whole-log\" href=\"{}\">{TASK_LOG}</a></p><pre class=\"log\" id=\"log\">",
        shown.len(),
        escape(&href),
    );
    for (i, line) in shown.iter().enumerate() {
        let text = escape(&files::printable(line.as_bytes()));
        if log.whole {
            let n = skipped + i + 1;
            let _ = write!(
                b,
                "<span class=\"line\"><a class=\"ln\" href=\"{}\" data-n=\"{n}\"></a>{text}</span>",
                escape(&line_href(&href, n))
            );
        } else {
            let _ = write!(b, "<span class=\"line\">{text}</span>");
        }
    }
    let _ = write!(b, "</pre>");
}

/// One job's page.
pub fn render(p: &JobPage) -> String {
    let mut b = String::new();
    write_fields(&mut b, p.job);
    html::actions(&mut b, &format!("job {}", p.job.id));
    write_results(&mut b, &p.job.id, p.results);
    write_history(&mut b, p.history);
    let _ = write!(
        b,
        "<h2>Files</h2><p><a href=\"{}\">all files</a></p>",
        html::file_href(&p.job.id, "")
    );
    files::write_entries(&mut b, &p.job.id, "", p.files);
    write_log(&mut b, &p.job.id, p.log);
    let refresh =
        (!matches!(p.job.state.as_str(), "done" | "crashed")).then_some(super::REFRESH_SECS);
    html::page(&format!("Taskbot job {}", p.job.id), refresh, &b)
}

/// The entries of the job's directory, listed as the artifacts endpoint lists them.
async fn list_files(dir: std::path::PathBuf) -> Vec<(String, bool, u64)> {
    tokio::task::spawn_blocking(move || match artifacts::resolve(&dir, "") {
        Resolve::Dir(dir) => artifacts::list(&dir),
        _ => Vec::new(),
    })
    .await
    .unwrap_or_default()
}

/// `GET /dashboard/jobs/<id>`.
pub async fn job(
    State(state): State<SharedState>,
    Path(id): Path<String>,
) -> Result<Response, PageError> {
    let id = Uuid::parse_str(&id).map_err(|_| PageError::not_found("Not found"))?;
    let client = state.store.client().await?;
    let sql = format!(
        "SELECT {JOB_ROW_COLUMNS} FROM {} WHERE j.job_id = $1",
        crate::jobs::jobs_from()
    );
    let Some(row) = client.query_opt(&sql, &[&id]).await? else {
        return Err(PageError::not_found(format!("job {id} not found")));
    };
    let job = job_row(&row)?;
    let history = crate::jobs::job_history(&client, &id).await?;
    let results = client
        .query(
            "SELECT testcase, outcome, note, finished_at, log_url FROM results \
             WHERE job_id = $1 ORDER BY testcase, finished_at DESC",
            &[&id],
        )
        .await?
        .iter()
        .map(|r| {
            Ok(ResultRow {
                testcase: r.try_get(0)?,
                outcome: r.try_get(1)?,
                note: r.try_get(2)?,
                finished_at: r.try_get(3)?,
                log_url: r.try_get(4)?,
            })
        })
        .collect::<Result<Vec<_>, tokio_postgres::Error>>()?;
    drop(client);
    let dir = state.artifacts_dir.join(id.to_string());
    let files = list_files(dir.clone()).await;
    let log = read_tail(&dir.join(TASK_LOG), LOG_TAIL_BYTES).await;
    let page = render(&JobPage {
        job: &job,
        history: &history,
        results: &results,
        files: &files,
        log: log.as_ref(),
    });
    Ok(html::html(StatusCode::OK, page))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(state: &str, item: &str, outcome: Option<&str>) -> JobRow {
        JobRow {
            id: Uuid::from_u128(7),
            state: state.into(),
            task: "rpmlint".into(),
            item: item.into(),
            arch: "noarch".into(),
            created_at: DateTime::UNIX_EPOCH,
            updated_at: DateTime::UNIX_EPOCH,
            outcome: outcome.map(String::from),
        }
    }

    fn page(job: &JobRow, results: &[ResultRow], log: Option<&LogTail>) -> String {
        render(&JobPage {
            job,
            history: &[],
            results,
            files: &[],
            log,
        })
    }

    #[test]
    fn a_job_page_shows_the_end_of_its_log_numbered_and_stops_refreshing_when_final() {
        let text: String = (1..=250).map(|n| format!("line {n}\n")).collect();
        let log = LogTail {
            size: text.len() as u64,
            text,
            whole: true,
        };
        let failed = ResultRow {
            testcase: "dist.rpmlint".into(),
            outcome: "FAILED".into(),
            note: Some("1 error <b>".into()),
            finished_at: DateTime::UNIX_EPOCH,
            log_url: Some("javascript:alert(1)".into()),
        };
        let html = page(&job("done", "a-1-1", Some("FAILED")), &[failed], Some(&log));
        assert!(html.contains("Last 200 of 250 lines"), "{html}");
        assert!(
            html.contains("line 250") && !html.contains("line 50<"),
            "{html}"
        );
        // Line 51 is the first shown, linked to its place in the whole log.
        assert!(html.contains(&format!(
            "href=\"/dashboard/jobs/{}/files/task.log#L51\" data-n=\"51\"></a>line 51</span>",
            Uuid::from_u128(7)
        )));
        assert!(html.contains("<td id=\"outcome\"><span class=\"outcome o-failed\""));
        assert!(html.contains("1 error &lt;b&gt;"));
        // A task's javascript: URL is text, not a link.
        assert!(!html.contains("href=\"javascript:"), "{html}");
        assert!(html.contains("<section id=\"actions\""));
        assert!(!html.contains("http-equiv=\"refresh\""));
        let html = page(&job("running", "a-1-1", None), &[], None);
        assert!(html.contains("No log here (yet)."));
        assert!(html.contains("http-equiv=\"refresh\""));
    }

    #[test]
    fn only_http_links_are_followed() {
        assert!(external_link("https://a.example/x?a=1&b=\"", "log")
            .starts_with("<a href=\"https://a.example/x?a=1&amp;b=&quot;\""));
        assert_eq!(
            external_link(" JavaScript:alert(1)", "x"),
            " JavaScript:alert(1)"
        );
        assert_eq!(
            external_link("data:text/html,<x>", "x"),
            "data:text/html,&lt;x&gt;"
        );
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

        let html = page(&job("done", "a-1-1", None), &[], Some(&tail));
        assert!(
            html.contains(&format!("Last 200 of {size} bytes")),
            "{html}"
        );
        // Not read whole: its lines are not numbered.
        assert!(
            html.contains("<span class=\"line\">line 19801</span><span class=\"line\">line 19802")
        );
        assert!(!html.contains("line 19800"));
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
