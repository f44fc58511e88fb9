//! ResultsDB v2.0-compatible reads (`/api/v2.0/...`) over the reporter's `results` table, so
//! ResultsDB clients (its Python client, Greenwave, Bodhi) can read Taskbot's store directly.
//!
//! Each result is shown as the reporter's ResultsDB sink posts it: the testcase with the task's
//! repository as `ref_url`, the job as the only group, the log URL as `ref_url`, and `data` holding
//! the task's keys (`:` replaced by `_`) plus `item`, `type` and `arch`, every value a list of
//! strings. `submit_time` is when the task finished.
//!
//! Deviation: ResultsDB's result ids are integers; the reporter's `results` table has none, so
//! ids are the results' UUIDs (clients treat the id as opaque: `GET /results/<id>` takes it back
//! as is). Once the table has an integer `id` column (a `bigserial`), that becomes the id, and
//! `GET /results/<id>` accepts both.

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};
use taskbot::artifacts::public_link;
use tokio_postgres::Row;
use uuid::Uuid;

use crate::input::MAX_DATA_FILTERS;
use crate::links::{self, list, Paging};
use crate::store::{ApiError, Conditions};
use crate::{AppState, SharedState};

/// Outcomes a filter may name: ResultsDB's four, plus the extras Taskbot (like Fedora's
/// ResultsDB) stores. Any other is a 400, as in ResultsDB.
pub const OUTCOMES: &[&str] = &[
    "PASSED",
    "INFO",
    "FAILED",
    "NEEDS_INSPECTION",
    "ABORTED",
    "CRASHED",
    "QUEUED",
    "RUNNING",
];

/// Query keys with a meaning of their own; every other key filters `data` (at most
/// [`MAX_DATA_FILTERS`] of them).
pub const RESERVED_KEYS: &[&str] = &[
    "page",
    "limit",
    "since",
    "outcome",
    "groups",
    "_sort",
    "testcases",
    "testcases:like",
    "_distinct_on",
    // JSONP leftovers ResultsDB ignores.
    "callback",
    "_",
];

/// Data keys that are columns of `results` (the sink posts them from the result itself).
fn column_for_data_key(key: &str) -> Option<&'static str> {
    match key {
        "item" => Some("r.item"),
        "type" => Some("r.item_type"),
        "arch" | "system_architecture" => Some("r.arch"),
        _ => None,
    }
}

/// The columns every result query selects (read by [`result_json`]).
///
/// `integer_id` is the row's `id` column when the schema has one (a `bigserial` the reporter may
/// add so results get ResultsDB's integer ids), else NULL: reading it through `to_jsonb(r)`
/// works with and without the column, so the api needs no schema knowledge.
pub const RESULT_COLUMNS: &str = "r.result_id, r.job_id, r.testcase, r.outcome, r.item, \
    r.item_type, r.arch, r.note, r.log_url, r.data, r.task_repo, r.finished_at, \
    (to_jsonb(r) -> 'id') AS integer_id";

/// A filter on `data` (or on item/type/arch): `key=v1,v2` or `key:like=p1,p2`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataFilter {
    pub key: String,
    pub like: bool,
    pub values: Vec<String>,
}

/// The filters of `GET /results` and `/results/latest`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResultFilter {
    pub outcomes: Vec<String>,
    pub testcases: Vec<String>,
    pub testcases_like: Vec<String>,
    pub groups: Vec<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    pub data: Vec<DataFilter>,
    pub ascending: bool,
    pub distinct_on: Vec<String>,
}

impl ResultFilter {
    pub fn parse(query: &[(String, String)]) -> Result<ResultFilter, ApiError> {
        let mut filter = ResultFilter::default();
        if let Some(outcomes) = list(query, "outcome") {
            for outcome in outcomes {
                let outcome = outcome.to_ascii_uppercase();
                if !OUTCOMES.contains(&outcome.as_str()) {
                    return Err(ApiError::bad_request(format!(
                        "outcome {outcome:?} not one of {OUTCOMES:?}"
                    )));
                }
                filter.outcomes.push(outcome);
            }
        }
        filter.testcases = list(query, "testcases").unwrap_or_default();
        filter.testcases_like = list(query, "testcases:like").unwrap_or_default();
        filter.groups = list(query, "groups")
            .unwrap_or_default()
            .into_iter()
            .map(|g| g.to_ascii_lowercase())
            .collect();
        (filter.since, filter.until) = links::parse_since(query)?;
        // ResultsDB sorts by submit time, newest first, unless asked `asc:submit_time`; any other
        // value falls back to the default rather than failing.
        filter.ascending = links::last(query, "_sort") == Some("asc:submit_time");
        filter.distinct_on = list(query, "_distinct_on").unwrap_or_default();
        let mut keys: Vec<&str> = Vec::new();
        for (key, _) in query {
            if !RESERVED_KEYS.contains(&key.as_str()) && !keys.contains(&key.as_str()) {
                keys.push(key);
            }
        }
        if keys.len() > MAX_DATA_FILTERS {
            return Err(ApiError::bad_request(format!(
                "too many filters: {} keys filter result data, at most {MAX_DATA_FILTERS}; the \
                 other accepted keys are {}",
                keys.len(),
                RESERVED_KEYS.join(", ")
            )));
        }
        if filter.distinct_on.len() > MAX_DATA_FILTERS {
            return Err(ApiError::bad_request(format!(
                "_distinct_on: {} keys, at most {MAX_DATA_FILTERS}",
                filter.distinct_on.len()
            )));
        }
        for key in keys {
            let values = list(query, key).unwrap_or_default();
            let (name, like) = match key.split_once(':') {
                Some((name, "like")) => (name, true),
                Some((_, modifier)) => {
                    return Err(ApiError::bad_request(format!(
                        "{key}: unknown modifier {modifier:?} (only :like)"
                    )))
                }
                None => (key, false),
            };
            if name.is_empty() {
                return Err(ApiError::bad_request(format!(
                    "{key:?}: a data filter needs a key name"
                )));
            }
            filter.data.push(DataFilter {
                key: name.to_string(),
                like,
                values,
            });
        }
        Ok(filter)
    }

    /// The conditions on `results r`. `with_testcases` is false for the subquery ResultsDB's
    /// `latest` groups by (it does not exist here, but jobs reuse this without the testcase).
    pub fn conditions(&self) -> Conditions {
        let mut c = Conditions::default();
        if !self.outcomes.is_empty() {
            let p = c.param(self.outcomes.clone());
            c.push(format!("r.outcome = ANY({p})"));
        }
        let mut testcase_any = Vec::new();
        if !self.testcases.is_empty() {
            let p = c.param(self.testcases.clone());
            testcase_any.push(format!("r.testcase = ANY({p})"));
        }
        if !self.testcases_like.is_empty() {
            let patterns: Vec<String> = self
                .testcases_like
                .iter()
                .map(|t| links::like_pattern(t))
                .collect();
            let p = c.param(patterns);
            testcase_any.push(format!("r.testcase LIKE ANY({p})"));
        }
        if !testcase_any.is_empty() {
            c.push(format!("({})", testcase_any.join(" OR ")));
        }
        if !self.groups.is_empty() {
            let p = c.param(self.groups.clone());
            c.push(format!("r.job_id::text = ANY({p})"));
        }
        if let Some(since) = self.since {
            let p = c.param(since);
            c.push(format!("r.finished_at >= {p}"));
        }
        if let Some(until) = self.until {
            let p = c.param(until);
            c.push(format!("r.finished_at <= {p}"));
        }
        for filter in &self.data {
            let values: Vec<String> = if filter.like {
                filter
                    .values
                    .iter()
                    .map(|v| links::like_pattern(v))
                    .collect()
            } else {
                filter.values.clone()
            };
            let op = if filter.like { "LIKE" } else { "=" };
            let column = column_for_data_key(&filter.key);
            if let (Some(column), true, false) = (column, filter.like, values.is_empty()) {
                // One LIKE per pattern (not `LIKE ANY`), so a prefix can use the column's
                // pattern index (`item:like=xchat-*`).
                let likes: Vec<String> = values
                    .into_iter()
                    .map(|v| format!("{column} LIKE {}", c.param(v)))
                    .collect();
                c.push(format!("({})", likes.join(" OR ")));
                continue;
            }
            let vp = c.param(values);
            match column {
                Some(column) => c.push(format!("{column} {op} ANY({vp})")),
                None => {
                    // A task's key as the sink posts it: `:` became `_`, and a value is a string
                    // or a list whose elements each count.
                    let kp = c.param(filter.key.clone());
                    c.push(format!(
                        "EXISTS (SELECT 1 FROM jsonb_each(r.data) AS d(key, value), \
                         jsonb_array_elements_text(CASE jsonb_typeof(d.value) \
                           WHEN 'array' THEN d.value ELSE jsonb_build_array(d.value) END) \
                           AS e(x) \
                         WHERE replace(d.key, ':', '_') = {kp} \
                           AND COALESCE(e.x, 'null') {op} ANY({vp}))"
                    ));
                }
            }
        }
        c
    }

    fn order(&self) -> &'static str {
        if self.ascending {
            "ORDER BY r.finished_at ASC, r.result_id ASC"
        } else {
            "ORDER BY r.finished_at DESC, r.result_id DESC"
        }
    }
}

/// A data value as the ResultsDB sink posts it, always as a list of strings (ResultsDB answers
/// with lists): strings stay, list elements become strings, anything else its JSON text.
fn data_values(value: &Value) -> Vec<Value> {
    let text = |v: &Value| match v {
        Value::String(s) => Value::String(s.clone()),
        other => Value::String(other.to_string()),
    };
    match value {
        Value::Array(items) => items.iter().map(text).collect(),
        other => vec![text(other)],
    }
}

/// `data` in ResultsDB's answer form.
pub fn resultsdb_data(task_data: &Value, item: &str, item_type: &str, arch: &str) -> Value {
    let mut out: Map<String, Value> = Map::new();
    if let Value::Object(map) = task_data {
        for (key, value) in map {
            let key = key.replace(':', "_");
            let values = data_values(value);
            match out.get_mut(&key) {
                Some(Value::Array(existing)) => existing.extend(values),
                _ => {
                    out.insert(key, Value::Array(values));
                }
            }
        }
    }
    out.insert("item".into(), json!([item]));
    out.insert("type".into(), json!([item_type]));
    out.insert("arch".into(), json!([arch]));
    out.insert("system_architecture".into(), json!([arch]));
    Value::Object(out)
}

/// A result row (selected with [`RESULT_COLUMNS`]) as ResultsDB shows it. Its log link
/// (`ref_url`) is the public one where the artifacts are published (`artifacts_url`,
/// [`taskbot::Config::artifacts_url`]) even when its runner wrote a local path
/// ([`taskbot::artifacts::public_link`]).
pub fn result_json(row: &Row, base: &str, artifacts_url: Option<&str>) -> Result<Value, ApiError> {
    let id: Uuid = row.try_get("result_id")?;
    let job_id: Uuid = row.try_get("job_id")?;
    let testcase: String = row.try_get("testcase")?;
    let finished_at: DateTime<Utc> = row.try_get("finished_at")?;
    let item: String = row.try_get("item")?;
    let item_type: String = row.try_get("item_type")?;
    let arch: String = row.try_get("arch")?;
    let data: Value = row.try_get("data")?;
    // ResultsDB's integer id when the store has one, else the UUID (see the module docs).
    let id = match row.try_get::<_, Option<Value>>("integer_id")? {
        Some(Value::Number(n)) => Value::Number(n),
        _ => Value::String(id.to_string()),
    };
    let id_text = match &id {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    Ok(json!({
        "id": id,
        "testcase": testcase_json(&testcase, row.try_get::<_, Option<String>>("task_repo")?, base),
        "groups": [job_id.to_string()],
        "submit_time": links::resultsdb_time(&finished_at),
        "outcome": row.try_get::<_, String>("outcome")?,
        "note": row.try_get::<_, Option<String>>("note")?,
        "ref_url": row
            .try_get::<_, Option<String>>("log_url")?
            .map(|link| public_link(&link, job_id, artifacts_url)),
        "data": resultsdb_data(&data, &item, &item_type, &arch),
        "href": format!("{base}/api/v2.0/results/{id_text}"),
    }))
}

fn testcase_json(name: &str, ref_url: Option<String>, base: &str) -> Value {
    json!({
        "name": name,
        "ref_url": ref_url,
        "href": format!("{base}/api/v2.0/testcases/{}", links::encode_segment(name)),
    })
}

/// `GET /results`.
pub async fn get_results(
    State(state): State<SharedState>,
    headers: HeaderMap,
    Query(query): Query<Vec<(String, String)>>,
) -> Result<Json<Value>, ApiError> {
    let filter = ResultFilter::parse(&query)?;
    let paging = Paging::parse(&query)?;
    let base = links::base_url(&state, &headers);
    let select = |c: &Conditions| {
        format!(
            "SELECT {RESULT_COLUMNS} FROM results r {} {}",
            c.where_sql(),
            filter.order()
        )
    };
    let url = format!("{base}/api/v2.0/results");
    paging
        .answer(&state, filter.conditions(), select, &url, &query, |row| {
            result_json(row, &base, state.artifacts_url.as_deref())
        })
        .await
}

/// `GET /results/latest`: the newest result of each testcase among those the filters select
/// (with `_distinct_on=k1,k2`, of each testcase and combination of those data keys' values).
pub async fn get_results_latest(
    State(state): State<SharedState>,
    headers: HeaderMap,
    Query(query): Query<Vec<(String, String)>>,
) -> Result<Json<Value>, ApiError> {
    let filter = ResultFilter::parse(&query)?;
    let base = links::base_url(&state, &headers);
    let mut c = filter.conditions();
    let mut partition = vec!["r.testcase".to_string()];
    for key in &filter.distinct_on {
        match column_for_data_key(key) {
            Some(column) => partition.push(column.to_string()),
            None => {
                let kp = c.param(key.clone());
                partition.push(format!(
                    "(SELECT jsonb_agg(d.value ORDER BY d.key) FROM jsonb_each(r.data) AS d(key, value) \
                     WHERE replace(d.key, ':', '_') = {kp})"
                ));
            }
        }
    }
    let direction = if filter.ascending { "ASC" } else { "DESC" };
    let sql = format!(
        "SELECT * FROM (SELECT {RESULT_COLUMNS}, row_number() OVER (PARTITION BY {} \
           ORDER BY r.finished_at DESC, r.result_id DESC) AS newest \
         FROM results r {}) AS r WHERE newest = 1 \
         ORDER BY r.finished_at {direction}, r.result_id {direction}",
        partition.join(", "),
        c.where_sql()
    );
    let client = state.store.client().await?;
    let rows = client.query(&sql, &c.refs()).await?;
    let data = rows
        .iter()
        .map(|row| result_json(row, &base, state.artifacts_url.as_deref()))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Json(json!({"data": data})))
}

/// `GET /results/<id>`: a result by its UUID, or by its integer id when the store has an `id`
/// column (without one, an integer is simply not found).
pub async fn get_result(
    State(state): State<SharedState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let not_found = || ApiError::not_found("Result not found");
    let base = links::base_url(&state, &headers);
    let client = state.store.client().await?;
    let row = if let Ok(uuid) = Uuid::parse_str(id.trim()) {
        client
            .query_opt(
                &format!("SELECT {RESULT_COLUMNS} FROM results r WHERE r.result_id = $1"),
                &[&uuid],
            )
            .await?
    } else if let Ok(number) = id.trim().parse::<i64>() {
        match client
            .query_opt(
                &format!("SELECT {RESULT_COLUMNS} FROM results r WHERE r.id = $1"),
                &[&number],
            )
            .await
        {
            Ok(row) => row,
            // undefined_column: this store has no integer ids.
            Err(e) if e.code().is_some_and(|c| c.code() == "42703") => None,
            Err(e) => return Err(e.into()),
        }
    } else {
        None
    };
    Ok(Json(result_json(
        &row.ok_or_else(not_found)?,
        &base,
        state.artifacts_url.as_deref(),
    )?))
}

/// Each testcase with the repository of the task that last reported it (the sink's `ref_url`).
const TESTCASES_SQL: &str = "SELECT DISTINCT ON (r.testcase) r.testcase, r.task_repo \
     FROM results r ORDER BY r.testcase, r.finished_at DESC";

/// `GET /testcases` (filters `name=a,b` or `name:like=dist.*`), by name.
pub async fn get_testcases(
    State(state): State<SharedState>,
    headers: HeaderMap,
    Query(query): Query<Vec<(String, String)>>,
) -> Result<Json<Value>, ApiError> {
    let paging = Paging::parse(&query)?;
    let base = links::base_url(&state, &headers);
    let mut c = Conditions::default();
    exact_or_like(&mut c, &query, "name", "t.testcase");
    let select = |c: &Conditions| {
        format!(
            "SELECT t.testcase, t.task_repo FROM ({TESTCASES_SQL}) AS t {} ORDER BY t.testcase",
            c.where_sql()
        )
    };
    let url = format!("{base}/api/v2.0/testcases");
    paging
        .answer(&state, c, select, &url, &query, |row| {
            Ok(testcase_json(
                &row.try_get::<_, String>(0)?,
                row.try_get(1)?,
                &base,
            ))
        })
        .await
}

/// The condition of a `key=a,b` (any of these) or else `key:like=a*,b*` (any of these
/// patterns) filter on `column`, if the request has one.
fn exact_or_like(c: &mut Conditions, query: &[(String, String)], key: &str, column: &str) {
    if let Some(values) = list(query, key).filter(|v| !v.is_empty()) {
        let p = c.param(values);
        c.push(format!("{column} = ANY({p})"));
    } else if let Some(patterns) = list(query, &format!("{key}:like")).filter(|v| !v.is_empty()) {
        let patterns: Vec<String> = patterns.iter().map(|p| links::like_pattern(p)).collect();
        let p = c.param(patterns);
        c.push(format!("{column} LIKE ANY({p})"));
    }
}

/// `GET /testcases/<name>`.
pub async fn get_testcase(
    State(state): State<SharedState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let base = links::base_url(&state, &headers);
    let client = state.store.client().await?;
    let row = client
        .query_opt(
            "SELECT r.testcase, r.task_repo FROM results r WHERE r.testcase = $1 \
             ORDER BY r.finished_at DESC LIMIT 1",
            &[&name],
        )
        .await?
        .ok_or_else(|| ApiError::not_found("Testcase not found"))?;
    Ok(Json(testcase_json(
        &row.try_get::<_, String>(0)?,
        row.try_get(1)?,
        &base,
    )))
}

/// Each job with results, as the group the sink posts (same description and `ref_url`), newest
/// first (ResultsDB lists groups newest first).
const GROUPS_SQL: &str = "SELECT r.job_id, \
       'Taskbot job ' || r.job_id || ': ' || min(r.task_name) || ' on ' || min(r.item) \
         || ' (' || min(r.arch) || ')' AS description, \
       max(r.log_url) AS ref_url, count(*) AS results_count, min(r.stored_at) AS first_stored \
     FROM results r GROUP BY r.job_id";

/// A group as the sink posts it: its `ref_url` is the job's public page when the configuration
/// gives one ([`taskbot::Config::job_page_url`]), else the job's log, so both agree.
fn group_json(row: &Row, base: &str, state: &AppState) -> Result<Value, ApiError> {
    let uuid: Uuid = row.try_get("job_id")?;
    let ref_url = match state.job_page_template.as_deref() {
        Some(template) => Some(template.replace("{job_id}", &uuid.to_string())),
        None => row
            .try_get::<_, Option<String>>("ref_url")?
            .map(|link| public_link(&link, uuid, state.artifacts_url.as_deref())),
    };
    Ok(json!({
        "uuid": uuid.to_string(),
        "description": row.try_get::<_, Option<String>>("description")?,
        "ref_url": ref_url,
        "results": format!("{base}/api/v2.0/results?groups={uuid}"),
        "results_count": row.try_get::<_, i64>("results_count")?,
        "href": format!("{base}/api/v2.0/groups/{uuid}"),
    }))
}

/// `GET /groups` (filters `uuid=a,b`, `description=...` or `description:like=...`).
pub async fn get_groups(
    State(state): State<SharedState>,
    headers: HeaderMap,
    Query(query): Query<Vec<(String, String)>>,
) -> Result<Json<Value>, ApiError> {
    let paging = Paging::parse(&query)?;
    let base = links::base_url(&state, &headers);
    let mut c = Conditions::default();
    exact_or_like(&mut c, &query, "description", "g.description");
    if let Some(uuids) = list(&query, "uuid").filter(|u| !u.is_empty()) {
        let uuids: Vec<String> = uuids.iter().map(|u| u.to_ascii_lowercase()).collect();
        let p = c.param(uuids);
        c.push(format!("g.job_id::text = ANY({p})"));
    }
    let select = |c: &Conditions| {
        format!(
            "SELECT * FROM ({GROUPS_SQL}) AS g {} ORDER BY g.first_stored DESC, g.job_id DESC",
            c.where_sql()
        )
    };
    let url = format!("{base}/api/v2.0/groups");
    paging
        .answer(&state, c, select, &url, &query, |row| {
            group_json(row, &base, &state)
        })
        .await
}

/// `GET /groups/<uuid>`.
pub async fn get_group(
    State(state): State<SharedState>,
    headers: HeaderMap,
    Path(uuid): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let uuid = links::path_id(&uuid, "Group not found")?;
    let base = links::base_url(&state, &headers);
    let client = state.store.client().await?;
    let sql = format!("SELECT * FROM ({GROUPS_SQL} HAVING r.job_id = $1) AS g");
    let row = links::row_by_id(&client, &sql, &uuid, "Group not found").await?;
    Ok(Json(group_json(&row, &base, &state)?))
}

/// `GET /healthcheck`: as ResultsDB, OK only when the database answers.
pub async fn healthcheck(State(state): State<SharedState>) -> Response {
    match health(&state).await {
        Ok(()) => Json(json!({"message": "Health check OK"})).into_response(),
        Err(e) => ApiError::new(
            e.status,
            format!("Unable to communicate with database: {}", e.message),
        )
        .into_response(),
    }
}

/// Through the health pool, so busy store queries do not make the api look dead.
async fn health(state: &AppState) -> Result<(), ApiError> {
    state.store.check_alive().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::links::tests::q;

    #[test]
    fn filters_split_reserved_keys_from_data_keys() {
        let f = ResultFilter::parse(&q(&[
            ("outcome", "passed,FAILED"),
            ("testcases:like", "dist.*"),
            ("item", "a,b"),
            ("koji_task_id:like", "12*"),
            ("page", "2"),
            ("_sort", "asc:submit_time"),
        ]))
        .unwrap();
        assert_eq!(f.outcomes, ["PASSED", "FAILED"]);
        assert_eq!(f.testcases_like, ["dist.*"]);
        assert!(f.ascending);
        assert_eq!(
            f.data,
            [
                DataFilter {
                    key: "item".into(),
                    like: false,
                    values: vec!["a".into(), "b".into()]
                },
                DataFilter {
                    key: "koji_task_id".into(),
                    like: true,
                    values: vec!["12*".into()]
                },
            ]
        );
    }

    #[test]
    fn unknown_outcome_and_modifier_are_bad_requests() {
        let err = ResultFilter::parse(&q(&[("outcome", "GREAT")])).unwrap_err();
        assert_eq!(err.status, axum::http::StatusCode::BAD_REQUEST);
        assert!(err.message.contains("GREAT"), "{}", err.message);
        assert!(ResultFilter::parse(&q(&[("item:regex", "x")])).is_err());
    }

    #[test]
    fn data_filters_are_capped_and_named() {
        let keys: Vec<String> = (0..=MAX_DATA_FILTERS).map(|i| format!("k{i}")).collect();
        let pairs: Vec<(&str, &str)> = keys.iter().map(|k| (k.as_str(), "v")).collect();
        let err = ResultFilter::parse(&q(&pairs)).unwrap_err();
        assert_eq!(err.status, axum::http::StatusCode::BAD_REQUEST);
        assert!(err.message.contains("at most 10"), "{}", err.message);
        assert!(err.message.contains("testcases:like"), "{}", err.message);
        // Repeating one key is one filter; reserved keys are not data filters.
        let mut pairs = pairs[..MAX_DATA_FILTERS].to_vec();
        pairs.extend([("k0", "w"), ("outcome", "PASSED"), ("page", "1")]);
        assert_eq!(
            ResultFilter::parse(&q(&pairs)).unwrap().data.len(),
            MAX_DATA_FILTERS
        );
        assert!(ResultFilter::parse(&q(&[(":like", "x")])).is_err());
        let many = ["a"; MAX_DATA_FILTERS + 1].join(",");
        assert!(ResultFilter::parse(&q(&[("_distinct_on", many.as_str())])).is_err());
    }

    #[test]
    fn data_is_shown_as_the_sink_posts_it() {
        let task = json!({
            "errors": 5,
            "koji:task_id": "123",
            "koji_task_id": ["456"],
            "checked": ["spec", 2],
            "item": "overridden",
        });
        let data = resultsdb_data(&task, "xchat-1-1.fc40", "koji_build", "x86_64");
        assert_eq!(data["errors"], json!(["5"]));
        assert_eq!(data["checked"], json!(["spec", "2"]));
        let mut ids: Vec<&str> = data["koji_task_id"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        ids.sort();
        assert_eq!(ids, ["123", "456"]);
        assert_eq!(data["item"], json!(["xchat-1-1.fc40"]));
        assert_eq!(data["type"], json!(["koji_build"]));
        assert_eq!(data["arch"], json!(["x86_64"]));
        assert_eq!(data["system_architecture"], json!(["x86_64"]));
    }

    #[test]
    fn conditions_number_their_parameters() {
        let f = ResultFilter::parse(&q(&[("outcome", "PASSED"), ("arch", "x86_64"), ("k", "v")]))
            .unwrap();
        let c = f.conditions();
        assert_eq!(c.params.len(), 4);
        let sql = c.where_sql();
        assert!(sql.contains("r.outcome = ANY($1)"), "{sql}");
        assert!(sql.contains("r.arch = ANY($2)"), "{sql}");
        assert!(sql.contains("= $4"), "{sql}");
    }
}
