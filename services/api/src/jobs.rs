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
use crate::resultsdb::{result_json, RESULT_COLUMNS};
use crate::store::{ApiError, Conditions};
use crate::{AppState, SharedState};

/// The columns every job query selects. `testcases` and `scenario` (schema v6) are read through
/// `to_jsonb(j)`, so an api newer than the database's schema answers (with none) instead of
/// failing until the reporter has migrated it.
const JOB_COLUMNS: &str = "j.job_id, j.state, j.item, j.item_type, j.arch, j.task_name, \
    j.task_repo, j.task_ref, j.rule, j.event_id, j.event_topic, j.created_at, j.updated_at, \
    (to_jsonb(j) -> 'testcases') AS testcases, (to_jsonb(j) ->> 'scenario') AS scenario";

/// Every key `GET /jobs` accepts (its filters, paging, and the JSONP leftovers ResultsDB clients
/// send).
pub const JOB_QUERY_KEYS: &[&str] = &[
    "state", "item", "task", "arch", "type", "testcase", "since", "page", "limit", "callback", "_",
];

/// The conditions of `GET /jobs`: `state`, `item`, `task`, `arch`, `type`, `testcase` (jobs
/// declared to report one of them; comma = OR, different keys = AND) and `since=START[,END]` on
/// the job's creation time.
///
/// Any other key is a 400 naming the accepted ones: a misspelt filter would otherwise list every
/// job as if it matched.
pub fn job_conditions(query: &[(String, String)]) -> Result<Conditions, ApiError> {
    if let Some((key, _)) = query
        .iter()
        .find(|(k, _)| !JOB_QUERY_KEYS.contains(&k.as_str()))
    {
        return Err(ApiError::bad_request(format!(
            "unknown query key {key:?}; the accepted keys are {}",
            JOB_QUERY_KEYS.join(", ")
        )));
    }
    let mut c = Conditions::default();
    for (key, column) in [
        ("state", "j.state"),
        ("item", "j.item"),
        ("task", "j.task_name"),
        ("arch", "j.arch"),
        ("type", "j.item_type"),
    ] {
        if let Some(values) = list(query, key).filter(|v| !v.is_empty()) {
            let values: Vec<String> = if key == "state" {
                values.iter().map(|v| v.to_ascii_lowercase()).collect()
            } else {
                values
            };
            let p = c.param(values);
            c.push(format!("{column} = ANY({p})"));
        }
    }
    if let Some(testcases) = list(query, "testcase").filter(|v| !v.is_empty()) {
        let p = c.param(testcases);
        c.push(format!(
            "COALESCE(to_jsonb(j) -> 'testcases', '[]'::jsonb) ?| {p}::text[]"
        ));
    }
    let (since, until) = links::parse_since(query)?;
    if let Some(since) = since {
        let p = c.param(since);
        c.push(format!("j.created_at >= {p}"));
    }
    if let Some(until) = until {
        let p = c.param(until);
        c.push(format!("j.created_at <= {p}"));
    }
    Ok(c)
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
            "SELECT {JOB_COLUMNS} FROM jobs j {} ORDER BY j.created_at DESC, j.job_id DESC",
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
pub async fn get_job(
    State(state): State<SharedState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = links::path_id(&id, "Job not found")?;
    let base = links::base_url(&state, &headers);
    let client = state.store.client().await?;
    let sql = format!("SELECT {JOB_COLUMNS} FROM jobs j WHERE j.job_id = $1");
    let row = links::row_by_id(&client, &sql, &id, "Job not found").await?;
    let mut job = job_json(&row, &state, &base)?;
    let history = client
        .query(
            "SELECT state, at, service, detail FROM job_events WHERE job_id = $1 \
             ORDER BY at, status_id",
            &[&id],
        )
        .await?
        .iter()
        .map(|e| {
            Ok(json!({
                "state": e.try_get::<_, String>("state")?,
                "at": e.try_get::<_, DateTime<Utc>>("at")?.to_rfc3339(),
                "service": e.try_get::<_, String>("service")?,
                "detail": e.try_get::<_, Option<String>>("detail")?,
            }))
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
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
