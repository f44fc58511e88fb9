//! The dashboard's front page, `/dashboard`: a search form (package or item prefix, outcome,
//! testcase, arch, state, creation time), the items whose name starts with what was searched,
//! the jobs that match (newest first, 30 a page, with their outcome) and, on the unfiltered
//! first page, the operators' tables (queues, runners, jobs by state).
//!
//! The form is a plain `GET` form: every search is a URL (bookmarkable, shareable, and working
//! without JavaScript). The page does not reload itself unless asked (`refresh=N` seconds, for a
//! wall screen): a page that reloads under a hand typing into its search box loses the typing.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use taskbot::management::Status;
use uuid::Uuid;

use super::html::{self, escape, outcome, state};
use crate::jobs::{self, JobFilter};
use crate::links;
use crate::resultsdb::OUTCOMES;
use crate::store::{ApiError, Conditions};

/// Jobs on one page of the list.
pub const PAGE_SIZE: i64 = 30;
/// Items listed for a search (the most recently tested first).
pub const MAX_ITEMS: i64 = 20;
/// The states a job can be in, in pipeline order (the state filter's choices).
pub const STATES: &[&str] = &[
    "queued",
    "provisioning",
    "provisioned",
    "cloning",
    "running",
    "reporting",
    "done",
    "crashed",
];

/// Every key the front page accepts; any other is a 400 (a misspelt filter in a bookmark would
/// otherwise show every job as if it matched).
pub const KEYS: &[&str] = &[
    "q", "outcome", "testcase", "arch", "state", "since", "until", "page", "refresh",
];

/// A search as asked: the form's fields as typed (to fill the form again), the page, and the
/// refresh.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Search {
    /// Package or item: items starting with it.
    pub q: String,
    pub outcome: String,
    pub testcase: String,
    pub arch: String,
    pub state: String,
    pub since: String,
    pub until: String,
    pub page: i64,
    pub refresh: Option<u32>,
}

impl Search {
    pub fn parse(query: &[(String, String)]) -> Result<Search, ApiError> {
        let unknown: Vec<String> = query
            .iter()
            .filter(|(k, _)| !KEYS.contains(&k.as_str()))
            .map(|(k, _)| format!("{k:?}"))
            .collect();
        if !unknown.is_empty() {
            return Err(ApiError::bad_request(format!(
                "unknown search field {}; the fields are {}",
                unknown.join(", "),
                KEYS.join(", ")
            )));
        }
        let text = |key: &str| links::last(query, key).unwrap_or("").trim().to_string();
        let page = match text("page").as_str() {
            "" => 0,
            p => p
                .parse::<i64>()
                .ok()
                .filter(|p| (0..=100_000).contains(p))
                .ok_or_else(|| ApiError::bad_request(format!("page: {p:?} is not a page")))?,
        };
        let refresh = match text("refresh").as_str() {
            "" | "0" => None,
            r => Some(
                r.parse::<u32>()
                    .ok()
                    .filter(|r| (1..=3600).contains(r))
                    .ok_or_else(|| {
                        ApiError::bad_request(format!("refresh: {r:?} is not 1 to 3600 seconds"))
                    })?,
            ),
        };
        Ok(Search {
            q: text("q"),
            outcome: text("outcome"),
            testcase: text("testcase"),
            arch: text("arch"),
            state: text("state"),
            since: text("since"),
            until: text("until"),
            page,
            refresh,
        })
    }

    /// No filter, first page: the front page proper, with the operators' tables.
    pub fn is_front(&self) -> bool {
        self.filter_pairs().is_empty() && self.page == 0
    }

    /// The jobs this search selects. Lists (`a,b`) work in every field but `q`.
    pub fn filter(&self) -> Result<JobFilter, ApiError> {
        let split = |text: &str| -> Vec<String> {
            text.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        };
        let time = |field: &str, text: &str| -> Result<Option<DateTime<Utc>>, ApiError> {
            if text.is_empty() {
                return Ok(None);
            }
            links::parse_time(text).map(Some).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "{field}: {text:?} is not a date or time (2025-06-15 or 2025-06-15T15:00, UTC)"
                ))
            })
        };
        let states: Vec<String> = split(&self.state)
            .iter()
            .map(|s| s.to_ascii_lowercase())
            .collect();
        if let Some(bad) = states.iter().find(|s| !STATES.contains(&s.as_str())) {
            return Err(ApiError::bad_request(format!(
                "state {bad:?} not one of {}",
                STATES.join(", ")
            )));
        }
        Ok(JobFilter {
            states,
            item_patterns: if self.q.is_empty() {
                Vec::new()
            } else {
                vec![jobs::prefix_pattern(&self.q)]
            },
            arches: split(&self.arch),
            testcases: split(&self.testcase),
            outcomes: jobs::parse_outcomes(split(&self.outcome))?,
            since: time("since", &self.since)?,
            until: time("until", &self.until)?,
            ..JobFilter::default()
        })
    }

    /// The search's non-empty fields as query pairs (for links to other pages of it).
    pub fn filter_pairs(&self) -> Vec<(String, String)> {
        [
            ("q", &self.q),
            ("outcome", &self.outcome),
            ("testcase", &self.testcase),
            ("arch", &self.arch),
            ("state", &self.state),
            ("since", &self.since),
            ("until", &self.until),
        ]
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
    }

    /// The link to page `page` of this search (same refresh).
    pub fn page_href(&self, page: i64) -> String {
        let mut pairs = self.filter_pairs();
        if page > 0 {
            pairs.push(("page".into(), page.to_string()));
        }
        if let Some(r) = self.refresh {
            pairs.push(("refresh".into(), r.to_string()));
        }
        links::with_query("/dashboard", &pairs)
    }
}

/// One row of a jobs table.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRow {
    pub id: Uuid,
    pub state: String,
    pub task: String,
    pub item: String,
    pub arch: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The job's outcome ([`jobs::OUTCOME_SEVERITY`]); `None` before it has results.
    pub outcome: Option<String>,
}

/// The columns [`job_row`] reads, from [`jobs::jobs_from`].
pub const JOB_ROW_COLUMNS: &str =
    "j.job_id, j.state, j.task_name, j.item, j.arch, j.created_at, j.updated_at, o.outcome";

pub fn job_row(r: &tokio_postgres::Row) -> Result<JobRow, tokio_postgres::Error> {
    Ok(JobRow {
        id: r.try_get(0)?,
        state: r.try_get(1)?,
        task: r.try_get(2)?,
        item: r.try_get(3)?,
        arch: r.try_get(4)?,
        created_at: r.try_get(5)?,
        updated_at: r.try_get(6)?,
        outcome: r.try_get(7)?,
    })
}

/// An item found by a search: its name, its newest job's creation, and its outcome (the worst
/// of its testcases' latest results on every arch; `None` before any result).
#[derive(Debug, Clone, PartialEq)]
pub struct ItemRow {
    pub item: String,
    pub latest: DateTime<Utc>,
    pub outcome: Option<String>,
}

/// The time as tables show it.
pub fn when(t: &DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// A jobs table (`id` is the table's element id).
pub fn write_jobs_table(b: &mut String, id: &str, jobs: &[JobRow]) {
    let _ = write!(
        b,
        "<table id=\"{id}\"><tr><th>created</th><th>item</th><th>task</th><th>arch</th>\
         <th>state</th><th>outcome</th><th>job</th></tr>"
    );
    for job in jobs {
        let _ = write!(
            b,
            "<tr data-job=\"{id}\"><td>{}</td><td><a class=\"item\" href=\"{}\">{}</a></td>\
             <td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td><a class=\"job\" href=\"/dashboard/jobs/{id}\">{short}</a></td></tr>",
            when(&job.created_at),
            escape(&html::item_href(&job.item)),
            escape(&job.item),
            escape(&job.task),
            escape(&job.arch),
            state(&job.state),
            outcome(job.outcome.as_deref()),
            id = job.id,
            short = &job.id.to_string()[..8],
        );
    }
    let _ = write!(b, "</table>");
}

/// The search form, filled with `search`.
fn write_form(b: &mut String, search: &Search) {
    let select = |name: &str, choices: &[&str], chosen: &str| {
        let mut s = format!("<select name=\"{name}\"><option value=\"\">any</option>");
        for choice in choices {
            let selected = if choice.eq_ignore_ascii_case(chosen) {
                " selected"
            } else {
                ""
            };
            let _ = write!(s, "<option{selected}>{choice}</option>");
        }
        s.push_str("</select>");
        s
    };
    let _ = write!(
        b,
        "<form id=\"search\" method=\"get\" action=\"/dashboard\" role=\"search\">\
         <label>Package or item (prefix)<input type=\"search\" name=\"q\" value=\"{}\" \
         placeholder=\"xchat or xchat-0.5-1.fc40\" size=\"30\" autofocus></label>\
         <label>Outcome{}</label>\
         <label>Testcase<input name=\"testcase\" value=\"{}\" placeholder=\"dist.rpmlint\"></label>\
         <label>Arch<input name=\"arch\" value=\"{}\" placeholder=\"x86_64\" size=\"8\"></label>\
         <label>State{}</label>\
         <label>Created since (UTC)<input type=\"datetime-local\" name=\"since\" value=\"{}\"></label>\
         <label>until<input type=\"datetime-local\" name=\"until\" value=\"{}\"></label>\
         <button type=\"submit\">Search</button><a href=\"/dashboard\">clear</a></form>",
        escape(&search.q),
        select("outcome", OUTCOMES, &search.outcome),
        escape(&search.testcase),
        escape(&search.arch),
        select("state", STATES, &search.state),
        escape(&search.since),
        escape(&search.until),
    );
}

fn write_items(b: &mut String, q: &str, items: &[ItemRow]) {
    let _ = write!(b, "<h2>Items starting with “{}”</h2>", escape(q));
    if items.is_empty() {
        let _ = write!(b, "<p id=\"no-items\">No item starts with it.</p>");
        return;
    }
    let _ = write!(
        b,
        "<table id=\"items\"><tr><th>item</th><th>outcome</th><th>latest job</th></tr>"
    );
    for item in items {
        let _ = write!(
            b,
            "<tr data-item=\"{i}\"><td><a class=\"item\" href=\"{}\">{i}</a></td><td>{}</td>\
             <td>{}</td></tr>",
            escape(&html::item_href(&item.item)),
            outcome(item.outcome.as_deref()),
            when(&item.latest),
            i = escape(&item.item),
        );
    }
    let _ = write!(b, "</table>");
}

/// The operators' part of the front page: the queues (or why they are unknown) and the jobs by
/// state.
pub type Operators<'a> = (&'a Result<Status, String>, &'a [(String, i64)]);

/// What the front page shows besides the search.
pub struct Front<'a> {
    /// The items starting with `q`, when it was given.
    pub items: Option<&'a [ItemRow]>,
    /// This page of the matching jobs (at most [`PAGE_SIZE`]) and whether there is another.
    pub jobs: &'a [JobRow],
    pub more: bool,
    /// On the front page proper: the queues (or why they are unknown) and jobs by state.
    pub operators: Option<Operators<'a>>,
    /// Why the search could not be made (a bad field): shown instead of results.
    pub error: Option<&'a str>,
}

/// The front page.
pub fn render(search: &Search, front: &Front) -> String {
    let mut b = String::new();
    let _ = write!(b, "<h1>Taskbot</h1>");
    write_form(&mut b, search);
    if let Some(error) = front.error {
        let _ = write!(b, "<p class=\"error\" id=\"error\">{}</p>", escape(error));
        return html::page("Taskbot", None, &b);
    }
    if let Some(items) = front.items {
        write_items(&mut b, &search.q, items);
    }
    let heading = if search.is_front() {
        "Latest jobs"
    } else {
        "Jobs matching"
    };
    let _ = write!(b, "<h2>{heading}</h2>");
    if front.jobs.is_empty() {
        let _ = write!(b, "<p id=\"no-jobs\">No job matches.</p>");
    } else {
        write_jobs_table(&mut b, "jobs", front.jobs);
    }
    let prev = (search.page > 0).then(|| search.page_href(search.page - 1));
    let next = front.more.then(|| search.page_href(search.page + 1));
    html::pager(&mut b, prev, next);
    if let Some((status, states)) = front.operators {
        super::queues::write_queues(&mut b, status);
        super::queues::write_job_states(&mut b, states);
    }
    let (toggle, label) = match search.refresh {
        Some(_) => (
            Search {
                refresh: None,
                ..search.clone()
            },
            "stop refreshing".to_string(),
        ),
        None => (
            Search {
                refresh: Some(super::REFRESH_SECS),
                ..search.clone()
            },
            format!("refresh every {} s", super::REFRESH_SECS),
        ),
    };
    let _ = write!(
        b,
        "<p><a id=\"refresh\" href=\"{}\">{label}</a></p>",
        escape(&toggle.page_href(search.page))
    );
    html::page("Taskbot", search.refresh, &b)
}

/// The query of the items starting with `q`, the most recently tested first, each with its
/// outcome (the worst of its testcases' latest results on every arch).
pub fn items_query(q: &str) -> (String, Conditions) {
    let mut c = Conditions::default();
    let pattern = c.param(jobs::prefix_pattern(q));
    let limit = c.param(MAX_ITEMS);
    let latest = "SELECT DISTINCT ON (r.testcase, r.arch) r.outcome FROM results r \
                  WHERE r.item = i.item \
                  ORDER BY r.testcase, r.arch, r.finished_at DESC, r.stored_at DESC";
    let sql = format!(
        "SELECT i.item, i.latest, s.outcome FROM (\
           SELECT item, max(created_at) AS latest FROM jobs WHERE item LIKE {pattern} \
           GROUP BY item ORDER BY latest DESC, item LIMIT {limit}\
         ) i LEFT JOIN LATERAL ({}) s ON true ORDER BY i.latest DESC, i.item",
        jobs::worst_outcome_sql(latest)
    );
    (sql, c)
}

/// The items starting with `q` ([`items_query`]).
pub async fn find_items(
    client: &tokio_postgres::Client,
    q: &str,
) -> Result<Vec<ItemRow>, ApiError> {
    let (sql, c) = items_query(q);
    let rows = client.query(&sql, &c.refs()).await?;
    rows.iter()
        .map(|r| {
            Ok(ItemRow {
                item: r.try_get(0)?,
                latest: r.try_get(1)?,
                outcome: r.try_get(2)?,
            })
        })
        .collect()
}

/// The query of page `page` of the jobs `filter` selects, newest first, one more than a page
/// (to know whether another follows).
pub fn jobs_query(filter: &JobFilter, page: i64) -> (String, Conditions) {
    let mut c = filter.conditions();
    let limit = c.param(PAGE_SIZE + 1);
    let offset = c.param(page * PAGE_SIZE);
    let sql = format!(
        "SELECT {JOB_ROW_COLUMNS} FROM {} {} ORDER BY j.created_at DESC, j.job_id DESC \
         LIMIT {limit} OFFSET {offset}",
        jobs::jobs_from(),
        c.where_sql()
    );
    (sql, c)
}

/// This page of the jobs `filter` selects ([`jobs_query`]); and whether another page follows.
pub async fn find_jobs(
    client: &tokio_postgres::Client,
    filter: &JobFilter,
    page: i64,
) -> Result<(Vec<JobRow>, bool), ApiError> {
    let (sql, c) = jobs_query(filter, page);
    let mut jobs = client
        .query(&sql, &c.refs())
        .await?
        .iter()
        .map(job_row)
        .collect::<Result<Vec<_>, _>>()?;
    let more = jobs.len() as i64 > PAGE_SIZE;
    jobs.truncate(PAGE_SIZE as usize);
    Ok((jobs, more))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::links::tests::q;
    use axum::http::StatusCode;

    fn row(outcome: Option<&str>, item: &str) -> JobRow {
        JobRow {
            id: Uuid::from_u128(7),
            state: "done".into(),
            task: "rpmlint".into(),
            item: item.into(),
            arch: "x86_64".into(),
            created_at: DateTime::UNIX_EPOCH,
            updated_at: DateTime::UNIX_EPOCH,
            outcome: outcome.map(String::from),
        }
    }

    #[test]
    fn a_search_becomes_a_job_filter_and_unknown_fields_are_refused() {
        let search = Search::parse(&q(&[
            ("q", " xchat_"),
            ("outcome", "failed"),
            ("arch", "x86_64,aarch64"),
            ("state", "done"),
            ("since", "2025-06-15T15:00"),
            ("until", ""),
            ("page", "2"),
        ]))
        .unwrap();
        let filter = search.filter().unwrap();
        assert_eq!(filter.item_patterns, ["xchat\\_%"]);
        assert_eq!(filter.outcomes, ["FAILED"]);
        assert_eq!(filter.arches, ["x86_64", "aarch64"]);
        assert_eq!(filter.states, ["done"]);
        assert!(filter.since.is_some() && filter.until.is_none());
        assert!(!search.is_front());
        assert_eq!(
            search.page_href(3),
            "/dashboard?q=xchat_&outcome=failed&arch=x86_64,aarch64&state=done&since=2025-06-15T15:00&page=3"
        );
        let err = Search::parse(&q(&[("outcomes", "FAILED"), ("x", "1")])).unwrap_err();
        assert_eq!(err.status, StatusCode::BAD_REQUEST);
        assert!(
            err.message.contains("\"outcomes\", \"x\""),
            "{}",
            err.message
        );
        for (key, value) in [
            ("outcome", "GREEN"),
            ("state", "finished"),
            ("since", "yesterday"),
        ] {
            let search = Search::parse(&q(&[(key, value)])).unwrap();
            assert!(search.filter().is_err(), "{key}={value}");
        }
        assert!(Search::parse(&q(&[("page", "-1")])).is_err());
        assert!(Search::parse(&q(&[("refresh", "0")]))
            .unwrap()
            .refresh
            .is_none());
        assert!(Search::parse(&q(&[])).unwrap().is_front());
    }

    #[test]
    fn the_page_shows_outcomes_in_colour_escapes_everything_and_pages() {
        let search = Search {
            q: "\"><script>alert(1)</script>".into(),
            page: 1,
            ..Search::default()
        };
        let jobs = [
            row(Some("FAILED"), "<img src=x onerror=alert(1)>"),
            row(None, "b"),
        ];
        let items = [ItemRow {
            item: "<b>x</b>".into(),
            latest: DateTime::UNIX_EPOCH,
            outcome: Some("PASSED".into()),
        }];
        let page = render(
            &search,
            &Front {
                items: Some(&items),
                jobs: &jobs,
                more: true,
                operators: None,
                error: None,
            },
        );
        assert!(
            !page.contains("<script>") && !page.contains("<img"),
            "{page}"
        );
        assert!(page.contains("value=\"&quot;&gt;&lt;script&gt;"), "{page}");
        assert!(
            page.contains("<span class=\"outcome o-failed\" data-outcome=\"FAILED\">FAILED</span>")
        );
        assert!(page.contains("data-outcome=\"\">—</span>"));
        assert!(
            page.contains("href=\"/dashboard/items/%3Cimg%20src%3Dx%20onerror%3Dalert%281%29%3E\""),
            "{page}"
        );
        assert!(page.contains("id=\"newer\"") && page.contains("id=\"older\""));
        assert!(page.contains("page=2"), "{page}");
        assert!(!page.contains("http-equiv=\"refresh\""));
        let refreshing = render(
            &Search {
                refresh: Some(5),
                ..Search::default()
            },
            &Front {
                items: None,
                jobs: &[],
                more: false,
                operators: None,
                error: Some("since: <bad>"),
            },
        );
        assert!(refreshing.contains("since: &lt;bad&gt;"), "{refreshing}");
    }
}
