//! `/api/v1/jobs`: jobs (the reporter's `jobs` table) with their state history (`job_events`),
//! their results and links to their logs: the one place that ties a job's trigger, execution,
//! logs and results together.

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::Json;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use taskbot::artifacts::TASK_LOG;
use tokio_postgres::Row;
use uuid::Uuid;

use crate::links::{self, list, Paging};
use crate::resultsdb::{result_json, OUTCOMES, RESULT_COLUMNS};
use crate::store::{ApiError, Conditions};
use crate::{AppState, SharedState};

/// Outcomes from the worst to the best. A job's outcome is the worst of its testcases' latest
/// results: a job reporting one FAILED testcase and two PASSED ones failed, whichever finished
/// last. QUEUED and RUNNING (interim results) rank above the passes, since a testcase still
/// running has not passed yet.
pub const OUTCOME_SEVERITY: [&str; 8] = [
    "FAILED",
    "CRASHED",
    "ABORTED",
    "NEEDS_INSPECTION",
    "RUNNING",
    "QUEUED",
    "INFO",
    "PASSED",
];

/// The worst outcome (see [`OUTCOME_SEVERITY`]) among those `select` returns (a query of one
/// column, `outcome`), as a query of one row, or of none when `select` returns nothing.
pub fn worst_outcome_sql(select: &str) -> String {
    format!(
        "SELECT l.outcome FROM ({select}) l \
         ORDER BY array_position('{{{}}}'::text[], l.outcome) NULLS LAST LIMIT 1",
        OUTCOME_SEVERITY.join(",")
    )
}

/// `jobs j` with `o.outcome`, the job's outcome (see [`OUTCOME_SEVERITY`]; NULL for a job with
/// no results): the latest result of each testcase of the job (through `results_job_id_idx`),
/// the worst of them.
pub fn jobs_from() -> String {
    let latest = "SELECT DISTINCT ON (r.testcase) r.outcome FROM results r \
                  WHERE r.job_id = j.job_id \
                  ORDER BY r.testcase, r.finished_at DESC, r.stored_at DESC";
    format!(
        "jobs j LEFT JOIN LATERAL ({}) o ON true",
        worst_outcome_sql(latest)
    )
}

/// The columns every job query selects (from [`jobs_from`]). `testcases` and `scenario` (schema
/// v6) are read through `to_jsonb(j)`, so an api newer than the database's schema answers (with
/// none) instead of failing until the reporter has migrated it.
pub const JOB_COLUMNS: &str = "j.job_id, j.state, j.item, j.item_type, j.arch, j.task_name, \
    j.task_repo, j.task_ref, j.rule, j.event_id, j.event_topic, j.created_at, j.updated_at, \
    (to_jsonb(j) -> 'testcases') AS testcases, (to_jsonb(j) ->> 'scenario') AS scenario, \
    o.outcome";

/// Every key `GET /jobs` accepts (its filters, paging, and the JSONP leftovers ResultsDB clients
/// send).
pub const JOB_QUERY_KEYS: &[&str] = &[
    "state",
    "item",
    "item:like",
    "task",
    "arch",
    "type",
    "testcase",
    "outcome",
    "since",
    "page",
    "limit",
    "callback",
    "_",
];

/// What a list of jobs is narrowed to: each field a set of values (OR), the fields ANDed; empty
/// means "any". Parsed from `/api/v1/jobs`'s query ([`JobFilter::parse`]) or the dashboard's
/// search form.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobFilter {
    /// Latest states (lower case).
    pub states: Vec<String>,
    /// Exact items.
    pub items: Vec<String>,
    /// SQL `LIKE` patterns on the item (backslash escapes), ORed.
    pub item_patterns: Vec<String>,
    pub tasks: Vec<String>,
    pub arches: Vec<String>,
    pub types: Vec<String>,
    /// Jobs declared to report one of these, or that reported one.
    pub testcases: Vec<String>,
    /// The job's outcome (upper case, one of [`OUTCOMES`]).
    pub outcomes: Vec<String>,
    /// On the job's creation time, both ends included.
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
}

/// Upper-cased `values`, each one of [`OUTCOMES`], else a 400 naming the known ones.
pub fn parse_outcomes(values: Vec<String>) -> Result<Vec<String>, ApiError> {
    values
        .into_iter()
        .map(|v| {
            let outcome = v.to_ascii_uppercase();
            if OUTCOMES.contains(&outcome.as_str()) {
                Ok(outcome)
            } else {
                Err(ApiError::bad_request(format!(
                    "outcome {v:?} not one of {}",
                    OUTCOMES.join(", ")
                )))
            }
        })
        .collect()
}

/// `prefix` as a `LIKE` pattern matching the items that start with it, taken literally (`%`,
/// `_` and `\` in it match only themselves).
pub fn prefix_pattern(prefix: &str) -> String {
    let mut pattern = String::with_capacity(prefix.len() + 1);
    for c in prefix.chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

impl JobFilter {
    /// The filters of `GET /jobs`: `state`, `item`, `item:like` (`*` wildcard, as ResultsDB's
    /// `:like`), `task`, `arch`, `type`, `testcase`, `outcome` (comma = OR, different keys =
    /// AND) and `since=START[,END]` on the job's creation time.
    ///
    /// Unknown keys are a 400 naming them and the accepted ones: a misspelt filter would
    /// otherwise list every job as if it matched.
    pub fn parse(query: &[(String, String)]) -> Result<JobFilter, ApiError> {
        let mut unknown: Vec<&str> = Vec::new();
        for (key, _) in query {
            if !JOB_QUERY_KEYS.contains(&key.as_str()) && !unknown.contains(&key.as_str()) {
                unknown.push(key);
            }
        }
        if !unknown.is_empty() {
            let names: Vec<String> = unknown.iter().map(|k| format!("{k:?}")).collect();
            return Err(ApiError::bad_request(format!(
                "unknown query key{} {}; the accepted keys are {}",
                if unknown.len() == 1 { "" } else { "s" },
                names.join(", "),
                JOB_QUERY_KEYS.join(", ")
            )));
        }
        let get = |key: &str| list(query, key).unwrap_or_default();
        let (since, until) = links::parse_since(query)?;
        Ok(JobFilter {
            states: get("state")
                .iter()
                .map(|s| s.to_ascii_lowercase())
                .collect(),
            items: get("item"),
            item_patterns: get("item:like")
                .iter()
                .map(|p| links::like_pattern(p))
                .collect(),
            tasks: get("task"),
            arches: get("arch"),
            types: get("type"),
            testcases: get("testcase"),
            outcomes: parse_outcomes(get("outcome"))?,
            since,
            until,
        })
    }

    /// The conditions on [`jobs_from`].
    pub fn conditions(&self) -> Conditions {
        let mut c = Conditions::default();
        for (values, column) in [
            (&self.states, "j.state"),
            (&self.items, "j.item"),
            (&self.tasks, "j.task_name"),
            (&self.arches, "j.arch"),
            (&self.types, "j.item_type"),
            (&self.outcomes, "o.outcome"),
        ] {
            if !values.is_empty() {
                let p = c.param(values.clone());
                c.push(format!("{column} = ANY({p})"));
            }
        }
        if !self.item_patterns.is_empty() {
            // One LIKE per pattern (not `LIKE ANY`), so each can use the item's pattern index.
            let likes: Vec<String> = self
                .item_patterns
                .iter()
                .map(|pattern| format!("j.item LIKE {}", c.param(pattern.clone())))
                .collect();
            c.push(format!("({})", likes.join(" OR ")));
        }
        if !self.testcases.is_empty() {
            let p = c.param(self.testcases.clone());
            c.push(format!(
                "(COALESCE(to_jsonb(j) -> 'testcases', '[]'::jsonb) ?| {p}::text[] \
                 OR EXISTS (SELECT 1 FROM results rt \
                            WHERE rt.job_id = j.job_id AND rt.testcase = ANY({p})))"
            ));
        }
        if let Some(since) = self.since {
            let p = c.param(since);
            c.push(format!("j.created_at >= {p}"));
        }
        if let Some(until) = self.until {
            let p = c.param(until);
            c.push(format!("j.created_at <= {p}"));
        }
        c
    }
}

/// The conditions of `GET /jobs` ([`JobFilter::parse`], then [`JobFilter::conditions`]).
pub fn job_conditions(query: &[(String, String)]) -> Result<Conditions, ApiError> {
    Ok(JobFilter::parse(query)?.conditions())
}

/// Where a job's logs are: through this api, and (when `runner.artifacts_url` is set) where the
/// runner publishes them.
fn logs_json(state: &AppState, base: &str, job_id: Uuid) -> Value {
    let artifacts = format!("{base}/api/v1/jobs/{job_id}/artifacts/");
    json!({
        "artifacts": artifacts,
        "task_log": format!("{artifacts}{TASK_LOG}"),
        "published": state.artifacts_url.as_ref().map(|u| format!("{u}/{job_id}/")),
    })
}

fn job_json(row: &Row, state: &AppState, base: &str) -> Result<Value, ApiError> {
    let id: Uuid = row.try_get("job_id")?;
    Ok(json!({
        "id": id.to_string(),
        "state": row.try_get::<_, String>("state")?,
        "item": row.try_get::<_, String>("item")?,
        "type": row.try_get::<_, String>("item_type")?,
        "arch": row.try_get::<_, String>("arch")?,
        "task": {
            "name": row.try_get::<_, String>("task_name")?,
            "repo": row.try_get::<_, String>("task_repo")?,
            "ref": row.try_get::<_, String>("task_ref")?,
        },
        "rule": row.try_get::<_, String>("rule")?,
        "testcases": row
            .try_get::<_, Option<Value>>("testcases")?
            .unwrap_or_else(|| json!([])),
        "scenario": row.try_get::<_, Option<String>>("scenario")?,
        "outcome": row.try_get::<_, Option<String>>("outcome")?,
        "event": {
            "id": row.try_get::<_, String>("event_id")?,
            "topic": row.try_get::<_, String>("event_topic")?,
        },
        "created_at": row.try_get::<_, DateTime<Utc>>("created_at")?.to_rfc3339(),
        "updated_at": row.try_get::<_, DateTime<Utc>>("updated_at")?.to_rfc3339(),
        "logs": logs_json(state, base, id),
        "results_href": format!("{base}/api/v2.0/results?groups={id}"),
        "href": format!("{base}/api/v1/jobs/{id}"),
    }))
}

/// `GET /api/v1/jobs`: newest first, paged like the ResultsDB endpoints.
pub async fn list_jobs(
    State(state): State<SharedState>,
    headers: HeaderMap,
    Query(query): Query<Vec<(String, String)>>,
) -> Result<Json<Value>, ApiError> {
    let paging = Paging::parse(&query)?;
    let base = links::base_url(&state, &headers);
    let c = job_conditions(&query)?;
    let select = |c: &Conditions| {
        format!(
            "SELECT {JOB_COLUMNS} FROM {} {} ORDER BY j.created_at DESC, j.job_id DESC",
            jobs_from(),
            c.where_sql()
        )
    };
    let url = format!("{base}/api/v1/jobs");
    paging
        .answer(&state, c, select, &url, &query, |row| {
            job_json(row, &state, &base)
        })
        .await
}

/// `GET /api/v1/job-states`: how many jobs are in each state now (their latest state), for
/// `taskbot status`. States no job is in are left out.
pub async fn job_states(State(state): State<SharedState>) -> Result<Json<Value>, ApiError> {
    let client = state.store.client().await?;
    let rows = client
        .query(
            "SELECT state, count(*) FROM jobs GROUP BY state ORDER BY state",
            &[],
        )
        .await?;
    let mut states = serde_json::Map::new();
    for row in &rows {
        states.insert(
            row.try_get::<_, String>(0)?,
            json!(row.try_get::<_, i64>(1)?),
        );
    }
    Ok(Json(json!({ "states": states })))
}

/// `GET /api/v1/jobs/<id>`: the job, every state it went through (oldest first), its results
/// (ResultsDB-shaped) and its log links.
/// One state of a job's history: state, time, service, detail.
pub type HistoryRow = (String, DateTime<Utc>, String, Option<String>);

/// A job's history, oldest first (the api's job and the dashboard's job page).
pub async fn job_history(
    client: &tokio_postgres::Client,
    id: &Uuid,
) -> Result<Vec<HistoryRow>, tokio_postgres::Error> {
    client
        .query(
            "SELECT state, at, service, detail FROM job_events WHERE job_id = $1 \
             ORDER BY at, status_id",
            &[id],
        )
        .await?
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?)))
        .collect()
}

pub async fn get_job(
    State(state): State<SharedState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = links::path_id(&id, "Job not found")?;
    let base = links::base_url(&state, &headers);
    let client = state.store.client().await?;
    let sql = format!(
        "SELECT {JOB_COLUMNS} FROM {} WHERE j.job_id = $1",
        jobs_from()
    );
    let row = links::row_by_id(&client, &sql, &id, "Job not found").await?;
    let mut job = job_json(&row, &state, &base)?;
    let history: Vec<Value> = job_history(&client, &id)
        .await?
        .into_iter()
        .map(|(state, at, service, detail)| {
            json!({"state": state, "at": at.to_rfc3339(), "service": service, "detail": detail})
        })
        .collect();
    let results = client
        .query(
            &format!(
                "SELECT {RESULT_COLUMNS}, r.runner FROM results r WHERE r.job_id = $1 \
                 ORDER BY r.finished_at, r.testcase"
            ),
            &[&id],
        )
        .await?;
    let runner: Option<String> = match results.first() {
        Some(r) => Some(r.try_get("runner")?),
        None => None,
    };
    let results = results
        .iter()
        .map(|r| result_json(r, &base, state.artifacts_url.as_deref()))
        .collect::<Result<Vec<_>, _>>()?;
    job["history"] = Value::Array(history);
    job["results"] = Value::Array(results);
    job["runner"] = json!(runner);
    Ok(Json(job))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::links::tests::q;

    #[test]
    fn unknown_keys_are_refused_all_named() {
        let err = JobFilter::parse(&q(&[("bogus", "1"), ("item", "x"), ("outcomes", "FAILED")]))
            .unwrap_err();
        assert_eq!(err.status, axum::http::StatusCode::BAD_REQUEST);
        assert!(
            err.message
                .starts_with("unknown query keys \"bogus\", \"outcomes\"; the accepted keys are"),
            "{}",
            err.message
        );
        assert!(err.message.contains("item:like"), "{}", err.message);
        let err = JobFilter::parse(&q(&[("item:LIKE", "x*")])).unwrap_err();
        assert!(err.message.starts_with("unknown query key \"item:LIKE\";"));
    }

    #[test]
    fn outcome_item_like_and_testcase_become_conditions() {
        let filter = JobFilter::parse(&q(&[
            ("outcome", "failed,CRASHED"),
            ("item:like", "xchat-*,glibc-2.*"),
            ("testcase", "dist.rpmlint"),
            ("state", "DONE"),
        ]))
        .unwrap();
        assert_eq!(filter.outcomes, ["FAILED", "CRASHED"]);
        assert_eq!(filter.item_patterns, ["xchat-%", "glibc-2.%"]);
        assert_eq!(filter.states, ["done"]);
        let c = filter.conditions();
        let sql = c.where_sql();
        assert!(sql.contains("j.state = ANY($1)"), "{sql}");
        assert!(sql.contains("o.outcome = ANY($2)"), "{sql}");
        assert!(sql.contains("(j.item LIKE $3 OR j.item LIKE $4)"), "{sql}");
        assert!(sql.contains("rt.testcase = ANY($5)"), "{sql}");
        assert_eq!(c.params.len(), 5);
        let err = JobFilter::parse(&q(&[("outcome", "GREEN")])).unwrap_err();
        assert!(err.message.contains("not one of PASSED"), "{}", err.message);
    }

    #[test]
    fn a_prefix_matches_only_itself_and_the_worst_outcome_comes_first() {
        assert_eq!(prefix_pattern("a_b%c\\"), "a\\_b\\%c\\\\%");
        assert!(jobs_from()
            .contains("'{FAILED,CRASHED,ABORTED,NEEDS_INSPECTION,RUNNING,QUEUED,INFO,PASSED}'"));
        for outcome in OUTCOMES {
            assert!(OUTCOME_SEVERITY.contains(outcome), "{outcome} has no rank");
        }
    }
}
