//! An item's page, `/dashboard/items/<item>` (a build's NVR, an update's alias, a compose): the
//! maintainer's view. The latest result of each testcase on each arch, with its outcome, note and
//! log, and under it the earlier results of the same testcase and arch (other jobs, other
//! attempts); the item's outcome (the worst of those latest results, as its badge shows it); and
//! every job of the item, queued and running ones included.

use std::fmt::Write as _;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use chrono::{DateTime, Utc};
use taskbot::artifacts::TASK_LOG;
use uuid::Uuid;

use super::html::{self, escape, outcome, PageError};
use super::search::{job_row, when, write_jobs_table, JobRow, JOB_ROW_COLUMNS};
use crate::jobs::{self, OUTCOME_SEVERITY};
use crate::SharedState;

/// The most results of one item read for its page (every testcase, arch and attempt).
pub const MAX_RESULTS: i64 = 2000;
/// The most jobs of one item listed on its page.
pub const MAX_JOBS: i64 = 200;
/// Notes are cut in the tables (the job's page and the api have them whole).
const NOTE_CHARS: usize = 600;

/// One result of the item.
#[derive(Debug, Clone, PartialEq)]
pub struct ResultLine {
    pub outcome: String,
    pub note: Option<String>,
    pub finished_at: DateTime<Utc>,
    pub job_id: Uuid,
}

/// A testcase on an arch: its latest result and the earlier ones, newest first.
#[derive(Debug, Clone, PartialEq)]
pub struct Cell {
    pub testcase: String,
    pub arch: String,
    pub latest: ResultLine,
    pub earlier: Vec<ResultLine>,
}

/// Group `rows` (testcase, arch, result), sorted by testcase, arch and newest first, into cells.
pub fn group(rows: Vec<(String, String, ResultLine)>) -> Vec<Cell> {
    let mut cells: Vec<Cell> = Vec::new();
    for (testcase, arch, line) in rows {
        match cells.last_mut() {
            Some(cell) if cell.testcase == testcase && cell.arch == arch => cell.earlier.push(line),
            _ => cells.push(Cell {
                testcase,
                arch,
                latest: line,
                earlier: Vec::new(),
            }),
        }
    }
    cells
}

/// The worst of the cells' latest outcomes (see [`OUTCOME_SEVERITY`]).
pub fn worst<'a>(outcomes: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    outcomes.into_iter().min_by_key(|o| {
        OUTCOME_SEVERITY
            .iter()
            .position(|s| s.eq_ignore_ascii_case(o))
            .unwrap_or(OUTCOME_SEVERITY.len())
    })
}

/// The item's badge URL (path only).
pub fn badge_href(item: &str) -> String {
    format!("/badge/items/{}.svg", crate::links::encode_segment(item))
}

fn write_line_cells(b: &mut String, line: &ResultLine) {
    let _ = write!(
        b,
        "<td>{}</td><td>{}</td><td class=\"note\">{}</td>\
         <td><a class=\"job\" href=\"/dashboard/jobs/{id}\">{short}</a></td>\
         <td><a class=\"log\" href=\"{}\">log</a></td>",
        outcome(Some(&line.outcome)),
        when(&line.finished_at),
        escape(&html::cut(line.note.as_deref().unwrap_or(""), NOTE_CHARS)),
        escape(&html::file_href(&line.job_id, TASK_LOG)),
        id = line.job_id,
        short = &line.job_id.to_string()[..8],
    );
}

fn write_cells(b: &mut String, cells: &[Cell]) {
    let _ = write!(b, "<h2>Latest results</h2>");
    if cells.is_empty() {
        let _ = write!(b, "<p id=\"no-results\">No results yet.</p>");
        return;
    }
    let _ = write!(
        b,
        "<table id=\"latest\"><tr><th>testcase</th><th>arch</th><th>outcome</th>\
         <th>finished</th><th>note</th><th>job</th><th>log</th></tr>"
    );
    for cell in cells {
        let _ = write!(
            b,
            "<tr class=\"latest\" data-testcase=\"{t}\" data-arch=\"{a}\"><td>{t}</td><td>{a}</td>",
            t = escape(&cell.testcase),
            a = escape(&cell.arch),
        );
        write_line_cells(b, &cell.latest);
        let _ = write!(b, "</tr>");
        if cell.earlier.is_empty() {
            continue;
        }
        let _ = write!(
            b,
            "<tr class=\"history\"><td></td><td colspan=\"6\"><details><summary>{} earlier \
             result{}</summary><table><tr><th>outcome</th><th>finished</th><th>note</th>\
             <th>job</th><th>log</th></tr>",
            cell.earlier.len(),
            if cell.earlier.len() == 1 { "" } else { "s" }
        );
        for line in &cell.earlier {
            let _ = write!(b, "<tr>");
            write_line_cells(b, line);
            let _ = write!(b, "</tr>");
        }
        let _ = write!(b, "</table></details></td></tr>");
    }
    let _ = write!(b, "</table>");
}

/// An item's page. `truncated` says the item has more results than were read.
pub fn render(item: &str, cells: &[Cell], jobs: &[JobRow], truncated: bool) -> String {
    let mut b = String::new();
    let overall = worst(cells.iter().map(|c| c.latest.outcome.as_str()));
    let badge = badge_href(item);
    let _ = write!(
        b,
        "<h1 id=\"item\">{}</h1><p>Outcome: <span id=\"item-outcome\">{}</span> \
         (the worst of the latest results below) · badge: <img alt=\"badge\" src=\"{b}\"> \
         <code>{b}</code></p>",
        escape(item),
        outcome(overall),
        b = escape(&badge),
    );
    html::actions(&mut b, &format!("item {item}"));
    write_cells(&mut b, cells);
    if truncated {
        let _ = write!(
            b,
            "<p class=\"error\">Only the newest {MAX_RESULTS} results were read; the api has \
             them all (<code>/api/v2.0/results?item=…</code>).</p>"
        );
    }
    let _ = write!(b, "<h2>Jobs</h2>");
    write_jobs_table(&mut b, "item-jobs", jobs);
    html::page(&format!("Taskbot: {item}"), None, &b)
}

/// `GET /dashboard/items/<item>`.
pub async fn item(
    State(state): State<SharedState>,
    Path(item): Path<String>,
) -> Result<Response, PageError> {
    let client = state.store.client().await?;
    let mut rows = client
        .query(
            "SELECT testcase, arch, outcome, note, finished_at, job_id FROM results \
             WHERE item = $1 ORDER BY testcase, arch, finished_at DESC, stored_at DESC LIMIT $2",
            &[&item, &(MAX_RESULTS + 1)],
        )
        .await?
        .iter()
        .map(|r| {
            Ok((
                r.try_get(0)?,
                r.try_get(1)?,
                ResultLine {
                    outcome: r.try_get(2)?,
                    note: r.try_get(3)?,
                    finished_at: r.try_get(4)?,
                    job_id: r.try_get(5)?,
                },
            ))
        })
        .collect::<Result<Vec<_>, tokio_postgres::Error>>()?;
    let truncated = rows.len() as i64 > MAX_RESULTS;
    rows.truncate(MAX_RESULTS as usize);
    let sql = format!(
        "SELECT {JOB_ROW_COLUMNS} FROM {} WHERE j.item = $1 \
         ORDER BY j.created_at DESC, j.job_id DESC LIMIT $2",
        jobs::jobs_from()
    );
    let jobs = client
        .query(&sql, &[&item, &MAX_JOBS])
        .await?
        .iter()
        .map(job_row)
        .collect::<Result<Vec<_>, _>>()?;
    if rows.is_empty() && jobs.is_empty() {
        return Err(PageError::not_found(format!(
            "no job or result of item {item:?}"
        )));
    }
    let cells = group(rows);
    Ok(html::html(
        StatusCode::OK,
        render(&item, &cells, &jobs, truncated),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(outcome: &str, at: i64) -> ResultLine {
        ResultLine {
            outcome: outcome.into(),
            note: Some(format!("<i>{outcome}</i>")),
            finished_at: DateTime::from_timestamp(at, 0).unwrap(),
            job_id: Uuid::from_u128(at as u128),
        }
    }

    #[test]
    fn results_group_per_testcase_and_arch_newest_first_and_the_worst_counts() {
        let cells = group(vec![
            ("a".into(), "x86_64".into(), line("PASSED", 3)),
            ("a".into(), "x86_64".into(), line("FAILED", 2)),
            ("a".into(), "aarch64".into(), line("FAILED", 4)),
            ("b".into(), "x86_64".into(), line("INFO", 1)),
        ]);
        assert_eq!(cells.len(), 3);
        assert_eq!(cells[0].latest.outcome, "PASSED");
        assert_eq!(cells[0].earlier, [line("FAILED", 2)]);
        assert_eq!(
            worst(cells.iter().map(|c| c.latest.outcome.as_str())),
            Some("FAILED")
        );
        assert_eq!(worst(["PASSED", "RUNNING", "INFO"]), Some("RUNNING"));
        assert_eq!(worst(["PASSED", "WEIRD"]), Some("PASSED"));
        assert_eq!(worst([]), None);

        let page = render("<x>", &cells, &[], false);
        assert!(page.contains("<h1 id=\"item\">&lt;x&gt;</h1>"), "{page}");
        assert!(page.contains("src=\"/badge/items/%3Cx%3E.svg\""), "{page}");
        assert!(
            page.contains("<summary>1 earlier result</summary>"),
            "{page}"
        );
        assert!(page.contains("&lt;i&gt;FAILED&lt;/i&gt;"));
        assert!(!page.contains("<i>"));
        assert!(page.contains(
            "<span id=\"item-outcome\"><span class=\"outcome o-failed\" data-outcome=\"FAILED\">"
        ));
    }
}
