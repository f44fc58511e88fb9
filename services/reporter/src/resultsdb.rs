//! Posting results to ResultsDB (API v2.0): building the request body from a result, sending it,
//! and deciding from the answer whether the result is posted, should be retried, or can never be
//! posted.
//!
//! The request body follows ResultsDB's `POST /results`: the testcase as `{name, ref_url}`, the
//! job as a group, and the item, type and arch as the conventional data keys that Fedora's
//! consumers (Bodhi, Greenwave) query by.

use std::collections::HashMap;
use std::time::Duration;

use chrono::SecondsFormat;
use deadpool_postgres::Pool;
use serde_json::{json, Map, Value};
use taskbot::amqp::{Backoff, DeliveryContext, Disposition, Handler, Incoming};
use taskbot::error_chain;
use taskbot::messages::{check_schema, JobStatus, Message, TaskResult};
use taskbot::outcomes::{OutcomeMap, Posted};
use taskbot::store::{self, StoreError};
use taskbot::Shutdown;
use uuid::Uuid;

use crate::binding::Binding;
use crate::{decode_result, decode_status, store_failure};

/// The most of a server's error message quoted in a dead-letter reason.
const MAX_MESSAGE_CHARS: usize = 500;

/// The link to a job's page from `reporter.job_url_template` (`{job_id}` replaced).
pub fn job_url(template: &str, job_id: Uuid) -> String {
    template.replace("{job_id}", &job_id.to_string())
}

/// The `POST /results` body for a result, with its outcome as `outcomes` posts it; `None` when
/// the profile skips it (an interim state the instance does not accept).
///
/// The job is the result's group; its `ref_url` is the job's public page (`job_url`, from
/// [`taskbot::Config::job_page_url`]) when there is one, else the result's log; with neither,
/// the group gets no `ref_url` key, since ResultsDB would overwrite a link an earlier result
/// gave the group with a null one. A mapped outcome keeps the original in the note
/// (`ABORTED: timed out after 300s`) and in the `taskbot_outcome` data key.
pub fn payload(result: &TaskResult, job_url: Option<&str>, outcomes: &OutcomeMap) -> Option<Value> {
    let (outcome, mapped) = match outcomes.posted(result.outcome) {
        Posted::Skip => return None,
        Posted::Same => (result.outcome, false),
        Posted::As(to) => (*to, true),
    };
    let mut data = data(result);
    let note = if mapped {
        data.insert("taskbot_outcome".into(), json!([result.outcome.as_str()]));
        Some(match &result.note {
            Some(note) => format!("{}: {note}", result.outcome),
            None => result.outcome.to_string(),
        })
    } else {
        result.note.clone()
    };
    let mut group = json!({
        "uuid": result.job_id.to_string(),
        "description": format!(
            "Taskbot job {}: {} on {} ({})",
            result.job_id, result.task.name, result.item, result.arch
        ),
    });
    if let Some(link) = job_url
        .map(str::to_string)
        .or_else(|| result.log_url.clone())
    {
        group["ref_url"] = json!(link);
    }
    Some(json!({
        "testcase": {
            "name": result.testcase,
            "ref_url": result.task.repo,
        },
        "outcome": outcome.as_str(),
        "note": note,
        "ref_url": result.log_url,
        "groups": [group],
        "data": data,
        // ResultsDB parses `%Y-%m-%dT%H:%M:%S.%f` plus an optional `Z`: the fraction is
        // mandatory, so always give microseconds.
        "submit_time": result.finished_at.to_rfc3339_opts(SecondsFormat::Micros, true),
    }))
}

/// The result's `data` in the form ResultsDB accepts: string or list-of-strings values, no `:` in
/// keys (ResultsDB uses `key:like` in queries and refuses such keys with HTTP 400, so `a:b`
/// becomes `a_b`; if that name is taken too, the values are merged into one list rather than one
/// silently replacing the other). `item`, `type`, `arch` and `system_architecture` (the key
/// Greenwave keeps one latest result per, with `scenario`) always come from the result itself,
/// overriding same-named task data, because consumers filter on them; `scenario` comes from the
/// task or the rule (the runner puts it in the data).
pub fn data(result: &TaskResult) -> Map<String, Value> {
    let mut out = Map::new();
    for (key, value) in &result.data {
        let key = key.replace(':', "_");
        let value = data_value(value);
        let merged = match out.remove(&key) {
            None => value,
            Some(existing) => {
                let mut list = into_list(existing);
                list.extend(into_list(value));
                Value::Array(list)
            }
        };
        out.insert(key, merged);
    }
    out.insert("item".into(), json!([result.item]));
    out.insert("type".into(), json!([result.item_type]));
    out.insert("arch".into(), json!([result.arch]));
    out.insert("system_architecture".into(), json!([result.arch]));
    out
}

/// A data value as ResultsDB stores it: strings stay strings, lists become lists of strings, and
/// anything else (numbers, booleans, null, objects) becomes its JSON text, which keeps it
/// readable and unambiguous.
pub fn data_value(value: &Value) -> Value {
    match value {
        Value::String(s) => Value::String(s.clone()),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|item| match item {
                    Value::String(s) => Value::String(s.clone()),
                    other => Value::String(other.to_string()),
                })
                .collect(),
        ),
        other => Value::String(other.to_string()),
    }
}

fn into_list(value: Value) -> Vec<Value> {
    match value {
        Value::Array(items) => items,
        other => vec![other],
    }
}

/// What a `POST /results` attempt means for the delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PostOutcome {
    /// ResultsDB stored it, under this id when the answer carried one.
    Posted { id: Option<i64> },
    /// A failure that may pass (server down or overloaded, network trouble): try again later.
    Retry(String),
    /// ResultsDB refused this result; sending it again will not change that. The text is the
    /// server's own explanation.
    Refused { status: u16, message: String },
}

/// Classify ResultsDB's answer.
///
/// 2xx: posted (ResultsDB answers 201). 5xx, and 408/429 (timeouts and rate limits, which are 4xx
/// but pass): retry. Other 4xx: refused, with the server's message. 3xx also counts as refused:
/// redirects are not followed (a redirected POST turns into a GET that would look like success),
/// and a redirect means `reporter.resultsdb_url` is wrong, which retrying does not fix.
pub fn classify_response(status: u16, body: &[u8]) -> PostOutcome {
    match status {
        200..=299 => {
            let id = serde_json::from_slice::<Value>(body)
                .ok()
                .and_then(|v| v.get("id").and_then(Value::as_i64));
            PostOutcome::Posted { id }
        }
        408 | 429 => PostOutcome::Retry(format!(
            "ResultsDB answered HTTP {status}: {}",
            server_message(body)
        )),
        300..=499 => PostOutcome::Refused {
            status,
            message: server_message(body),
        },
        _ => PostOutcome::Retry(format!(
            "ResultsDB answered HTTP {status}: {}",
            server_message(body)
        )),
    }
}

/// The explanation in an error answer: ResultsDB's `{"message": ...}`, else the whole body
/// (JSON validation reports, proxy error pages), shortened.
pub fn server_message(body: &[u8]) -> String {
    let text = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(fields)) => match fields.get("message") {
            Some(Value::String(message)) => message.clone(),
            Some(other) => other.to_string(),
            None => Value::Object(fields).to_string(),
        },
        Ok(other) => other.to_string(),
        Err(_) => String::from_utf8_lossy(body).trim().to_string(),
    };
    if text.is_empty() {
        return "(empty body)".into();
    }
    if text.chars().count() > MAX_MESSAGE_CHARS {
        let short: String = text.chars().take(MAX_MESSAGE_CHARS).collect();
        format!("{short}…")
    } else {
        text
    }
}

/// Parse `reporter.resultsdb_auth_header` (`Name: value`). The value is marked sensitive so it
/// never appears in debug output.
pub fn parse_auth_header(
    text: &str,
) -> anyhow::Result<(reqwest::header::HeaderName, reqwest::header::HeaderValue)> {
    let (name, value) = text.split_once(':').ok_or_else(|| {
        anyhow::anyhow!(
            "reporter.resultsdb_auth_header must look like `Name: value` (e.g. \
             `Authorization: Bearer ...`), and has no `:`"
        )
    })?;
    let name = reqwest::header::HeaderName::from_bytes(name.trim().as_bytes()).map_err(|e| {
        anyhow::anyhow!(
            "reporter.resultsdb_auth_header: {:?} is not a header name: {e}",
            name.trim()
        )
    })?;
    let mut value = reqwest::header::HeaderValue::from_str(value.trim()).map_err(|_| {
        anyhow::anyhow!("reporter.resultsdb_auth_header: the value is not a valid header value")
    })?;
    value.set_sensitive(true);
    Ok((name, value))
}

/// A ResultsDB server.
#[derive(Debug, Clone)]
pub struct ResultsDb {
    client: reqwest::Client,
    results_url: String,
    timeout: Duration,
}

impl ResultsDb {
    /// `base_url` is the API root, ending in `/api/v2.0`; `auth_header` is sent with every
    /// request (`Name: value`).
    pub fn new(
        base_url: &str,
        timeout: Duration,
        auth_header: Option<&str>,
    ) -> anyhow::Result<Self> {
        let results_url = format!("{}/results", base_url.trim_end_matches('/'));
        reqwest::Url::parse(&results_url).map_err(|e| {
            anyhow::anyhow!("reporter.resultsdb_url {base_url:?} is not a URL: {e}")
        })?;
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(text) = auth_header {
            let (name, value) = parse_auth_header(text)?;
            headers.insert(name, value);
        }
        let client = reqwest::Client::builder()
            .default_headers(headers)
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("taskbot-reporter/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| anyhow::anyhow!("cannot build the HTTP client: {e}"))?;
        Ok(ResultsDb {
            client,
            results_url,
            timeout,
        })
    }

    /// Where results are posted.
    pub fn results_url(&self) -> &str {
        &self.results_url
    }

    /// Post one result body.
    pub async fn post(&self, payload: &Value) -> PostOutcome {
        let response = match self
            .client
            .post(&self.results_url)
            .json(payload)
            .send()
            .await
        {
            Ok(r) => r,
            Err(err) if err.is_timeout() => {
                return PostOutcome::Retry(format!(
                    "ResultsDB did not answer within {} s",
                    self.timeout.as_secs()
                ))
            }
            Err(err) => {
                return PostOutcome::Retry(format!("cannot reach ResultsDB: {}", error_chain(&err)))
            }
        };
        let status = response.status().as_u16();
        let body = match response.bytes().await {
            Ok(bytes) => bytes.to_vec(),
            Err(err) => {
                // The status line has been received, and it is what counts: a 201 whose body got
                // lost is still stored on the server.
                tracing::warn!(status, error = %error_chain(&err), "cannot read ResultsDB's answer");
                Vec::new()
            }
        };
        classify_response(status, &body)
    }
}

/// The dead-letter reason for a result ResultsDB refused. Says that only ResultsDB lacks it (the
/// other sinks have their own queues) and that replaying the message, once the cause is fixed,
/// posts it.
pub fn refused_reason(result: &TaskResult, status: u16, message: &str) -> String {
    format!(
        "ResultsDB refused result {} (HTTP {status}): {message} [only the ResultsDB copy is \
         missing: the other sinks have their own queues; replay this message once the cause is \
         fixed to post it]",
        result.result_id
    )
}

/// Most results whose retry pauses are remembered; beyond it the memory starts afresh (the
/// pauses merely restart from 0.5 s).
const MAX_TRACKED_RETRIES: usize = 10_000;

/// The ResultsDB sink: posts each result of its queue once, recording the delivery in
/// PostgreSQL (`resultsdb_deliveries`) before the message is acked.
///
/// Retrying without blocking other results: a transient failure (timeout, connection error, 5xx,
/// 408, 429) makes the handler wait this result's own back-off (doubling from 0.5 s up to
/// `reporter.resultsdb_retry_max_secs`, with jitter) and then hand the message back to the queue
/// (`Disposition::Retry`, requeued by the broker). Only the slot handling that result waits; the
/// database connection and the delivery lock are released first, and the other slots
/// (`reporter.resultsdb_concurrency`) go on with other results.
pub struct ResultsDbSink {
    /// Its own pool, so a hanging ResultsDB cannot take the connections the PostgreSQL sink needs.
    pub pool: Pool,
    pub resultsdb: ResultsDb,
    pub job_url_template: Option<String>,
    /// What each outcome is posted as (`reporter.resultsdb_outcomes`).
    pub outcomes: OutcomeMap,
    pub retry_max_secs: u64,
    /// Ends a retry pause early on shutdown.
    pub shutdown: Shutdown,
    /// Whether a result is its job's and from its sender ([`Binding`]).
    pub binding: std::sync::Arc<Binding>,
    /// Where the artifacts are published ([`taskbot::Config::artifacts_url`]): a log a runner
    /// linked by its local path is posted with its public link.
    pub artifacts_url: Option<String>,
    backoffs: std::sync::Mutex<HashMap<Uuid, Backoff>>,
}

impl ResultsDbSink {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        pool: Pool,
        resultsdb: ResultsDb,
        job_url_template: Option<String>,
        outcomes: OutcomeMap,
        retry_max_secs: u64,
        shutdown: Shutdown,
        binding: std::sync::Arc<Binding>,
    ) -> Self {
        ResultsDbSink {
            pool,
            resultsdb,
            job_url_template,
            outcomes,
            retry_max_secs,
            shutdown,
            binding,
            artifacts_url: None,
            backoffs: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// The same sink, posting logs under `artifacts_url` ([`Self::artifacts_url`]).
    pub fn with_artifacts_url(mut self, artifacts_url: Option<String>) -> Self {
        self.artifacts_url = artifacts_url;
        self
    }

    /// The pause before `result_id` is tried again; grows with each failure of that result.
    pub fn next_delay(&self, result_id: Uuid) -> Duration {
        let mut backoffs = self.backoffs.lock().unwrap_or_else(|e| e.into_inner());
        if backoffs.len() >= MAX_TRACKED_RETRIES && !backoffs.contains_key(&result_id) {
            backoffs.clear();
        }
        backoffs
            .entry(result_id)
            .or_insert_with(|| Backoff::new(self.retry_max_secs))
            .next_delay()
    }

    fn forget(&self, result_id: Uuid) {
        self.backoffs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&result_id);
    }

    /// Handle one delivery, pausing before a retry (a result whose job is not known yet waits
    /// the same way).
    pub async fn process(&self, incoming: &Incoming) -> Disposition {
        let user = incoming.user_id.as_deref();
        let (key, outcome) = if check_schema(&incoming.body, JobStatus::SCHEMA).is_ok() {
            let status = match decode_status(&incoming.body) {
                Ok(s) => s,
                Err(reason) => return Disposition::DeadLetter(reason),
            };
            let outcome = match self.binding.admit_status(user, &status, false).await {
                Ok(()) => self.deliver_interim(&status).await,
                Err(refused) => refused,
            };
            (status.status_id, outcome)
        } else {
            let result = match decode_result(&incoming.body) {
                Ok(r) => r,
                Err(reason) => return Disposition::DeadLetter(reason),
            };
            let outcome = match self.binding.admit_result(user, &result).await {
                Ok(()) => self.deliver(&result).await,
                Err(refused) => refused,
            };
            (result.result_id, outcome)
        };
        match outcome {
            Disposition::Retry(reason) => {
                let wait = self.next_delay(key);
                tracing::warn!(message_id = %key, %reason,
                    retry_in_ms = wait.as_millis() as u64, "ResultsDB delivery failed; will retry");
                let mut shutdown = self.shutdown.clone();
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.wait() => {}
                }
                Disposition::Retry(reason)
            }
            other => {
                self.forget(key);
                other
            }
        }
    }

    /// A `queued` or `running` status: the QUEUED or RUNNING result of each testcase the job is
    /// declared to report ([`TaskResult::interim`]), posted one by one; those already posted
    /// (by an earlier delivery of the status) are skipped. The job's final results come later
    /// and have later submit times, so they supersede these in `/results/latest`.
    async fn deliver_interim(&self, status: &JobStatus) -> Disposition {
        for testcase in status.known_testcases() {
            let Some(result) = TaskResult::interim(status, &testcase) else {
                break;
            };
            match self.deliver(&result).await {
                Disposition::Done(_) => {}
                other => return other,
            }
        }
        Disposition::Done(Vec::new())
    }

    async fn deliver(&self, result: &TaskResult) -> Disposition {
        let what = format!("result {}", result.result_id);
        let mut client = match self.pool.get().await {
            Ok(c) => c,
            Err(err) => return store_failure(&what, &StoreError::from(err)),
        };
        let tx = match client.transaction().await {
            Ok(tx) => tx,
            Err(err) => return store_failure(&what, &StoreError::from(err)),
        };
        match store::lock_delivery(&tx, result.result_id).await {
            Ok(Some(delivery)) => {
                tracing::info!(result_id = %result.result_id, resultsdb_id = ?delivery.resultsdb_id,
                    posted_at = %delivery.posted_at, "result already in ResultsDB");
                return Disposition::Done(Vec::new());
            }
            Ok(None) => {}
            Err(err) => return store_failure(&what, &err),
        }
        let job_url = self
            .job_url_template
            .as_deref()
            .map(|t| job_url(t, result.job_id));
        let published = result
            .clone()
            .with_public_log(self.artifacts_url.as_deref());
        let Some(body) = payload(&published, job_url.as_deref(), &self.outcomes) else {
            tracing::debug!(result_id = %result.result_id, outcome = %result.outcome,
                profile = %self.outcomes.name, "outcome not posted to this ResultsDB");
            return Disposition::Done(Vec::new());
        };
        match self.resultsdb.post(&body).await {
            PostOutcome::Posted { id } => {
                if id.is_none() {
                    tracing::warn!(result_id = %result.result_id, "ResultsDB accepted the result but its answer had no id");
                }
                let recorded = async {
                    store::record_delivery(&tx, result.result_id, id).await?;
                    tx.commit().await.map_err(StoreError::from)
                }
                .await;
                match recorded {
                    Ok(()) => {
                        tracing::info!(result_id = %result.result_id, resultsdb_id = ?id, "result posted to ResultsDB");
                        Disposition::Done(Vec::new())
                    }
                    // ResultsDB has no idempotency key, so the retry will post a second copy;
                    // the alternative, acking, could lose the record that the result was posted.
                    Err(err) => {
                        tracing::error!(result_id = %result.result_id, error = %err,
                            "result posted to ResultsDB but recording that failed; it will be posted again");
                        Disposition::Retry(format!(
                            "{what} was posted to ResultsDB but recording that failed: {err}"
                        ))
                    }
                }
            }
            PostOutcome::Retry(reason) => Disposition::Retry(format!("{what}: {reason}")),
            PostOutcome::Refused { status, message } => {
                Disposition::DeadLetter(refused_reason(result, status, &message))
            }
        }
    }
}

#[async_trait::async_trait]
impl Handler for ResultsDbSink {
    async fn handle(&self, incoming: Incoming, _ctx: &dyn DeliveryContext) -> Disposition {
        self.process(&incoming).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};
    use std::collections::BTreeMap;
    use taskbot::messages::{Outcome, TaskRef};
    use uuid::Uuid;

    fn result() -> TaskResult {
        let mut data = BTreeMap::new();
        data.insert("errors".to_string(), json!(5));
        data.insert("tags".to_string(), json!(["a", 2, true]));
        data.insert("koji:task".to_string(), json!("12345"));
        data.insert("details".to_string(), json!({"w": 10}));
        data.insert("arch".to_string(), json!("ppc64le"));
        TaskResult {
            result_id: Uuid::from_u128(1),
            job_id: Uuid::from_u128(0xabc),
            testcase: "dist.rpmlint".into(),
            outcome: Outcome::NeedsInspection,
            item: "xchat-0.5-1.fc20".into(),
            item_type: "koji_build".into(),
            arch: "x86_64".into(),
            note: Some("5 errors".into()),
            log_url: Some("https://logs.example/abc/".into()),
            data,
            task: TaskRef {
                name: "rpmlint".into(),
                repo: "https://git.example/rpmlint.git".into(),
                git_ref: "main".into(),
            },
            event_id: "e1".into(),
            rule: "r1".into(),
            runner: "runner@h/x86_64".into(),
            finished_at: Utc.with_ymd_and_hms(2024, 5, 6, 7, 8, 9).unwrap(),
        }
    }

    fn upstream() -> OutcomeMap {
        taskbot::outcomes::OutcomeProfile::default()
            .resolve()
            .unwrap()
    }

    fn fedora() -> OutcomeMap {
        taskbot::outcomes::OutcomeProfile::Named("fedora".into())
            .resolve()
            .unwrap()
    }

    #[test]
    fn payload_has_resultsdb_shape() {
        let r = result();
        assert_eq!(
            payload(&r, None, &upstream()).unwrap(),
            json!({
                "testcase": {"name": "dist.rpmlint", "ref_url": "https://git.example/rpmlint.git"},
                "outcome": "NEEDS_INSPECTION",
                "note": "5 errors",
                "ref_url": "https://logs.example/abc/",
                "groups": [{
                    "uuid": "00000000-0000-0000-0000-000000000abc",
                    "description": "Taskbot job 00000000-0000-0000-0000-000000000abc: rpmlint on xchat-0.5-1.fc20 (x86_64)",
                    "ref_url": "https://logs.example/abc/",
                }],
                "data": {
                    "item": ["xchat-0.5-1.fc20"],
                    "type": ["koji_build"],
                    "arch": ["x86_64"],
                    "system_architecture": ["x86_64"],
                    "errors": "5",
                    "tags": ["a", "2", "true"],
                    "koji_task": "12345",
                    "details": "{\"w\":10}",
                },
                "submit_time": "2024-05-06T07:08:09.000000Z",
            })
        );
    }

    #[test]
    fn missing_note_and_log_are_null() {
        let mut r = result();
        r.note = None;
        r.log_url = None;
        let p = payload(&r, None, &upstream()).unwrap();
        assert_eq!(p["note"], Value::Null);
        assert_eq!(p["ref_url"], Value::Null);
        assert!(
            p["groups"][0].get("ref_url").is_none(),
            "no null ref_url: ResultsDB would erase the group's link with it"
        );
    }

    #[test]
    fn outcomes_are_posted_as_the_profile_says_keeping_the_original() {
        let mut r = result();
        r.outcome = Outcome::Aborted;
        r.note = Some("timed out after 300s".into());
        let p = payload(&r, None, &fedora()).unwrap();
        assert_eq!(p["outcome"], "CRASHED");
        assert_eq!(p["note"], "ABORTED: timed out after 300s");
        assert_eq!(p["data"]["taskbot_outcome"], json!(["ABORTED"]));
        let p = payload(&r, None, &upstream()).unwrap();
        assert_eq!(p["outcome"], "NEEDS_INSPECTION");
        r.outcome = Outcome::Crashed;
        let p = payload(&r, None, &fedora()).unwrap();
        assert_eq!(p["outcome"], "CRASHED");
        assert_eq!(
            p["note"], "timed out after 300s",
            "unmapped: the note as it is"
        );
        assert!(p["data"].get("taskbot_outcome").is_none());
        r.outcome = Outcome::Running;
        assert_eq!(payload(&r, None, &fedora()).unwrap()["outcome"], "RUNNING");
        assert_eq!(
            payload(&r, None, &upstream()),
            None,
            "upstream skips interim states"
        );
    }

    #[test]
    fn job_group_links_to_the_job_page_when_configured() {
        let r = result();
        let url = job_url("https://taskbot.example/jobs/{job_id}", r.job_id);
        assert_eq!(
            url,
            "https://taskbot.example/jobs/00000000-0000-0000-0000-000000000abc"
        );
        let p = payload(&r, Some(&url), &upstream()).unwrap();
        assert_eq!(p["groups"][0]["ref_url"], json!(url));
        assert_eq!(
            p["ref_url"],
            json!("https://logs.example/abc/"),
            "logs stay the result's link"
        );
    }

    #[test]
    fn auth_header_is_name_and_value() {
        let (name, value) = parse_auth_header("Authorization: Bearer s3cret").unwrap();
        assert_eq!(name.as_str(), "authorization");
        assert_eq!(value.to_str().unwrap(), "Bearer s3cret");
        assert!(value.is_sensitive());
        let err = parse_auth_header("Bearer s3cret").unwrap_err().to_string();
        assert!(err.contains("Name: value"), "{err}");
        assert!(parse_auth_header("Bad Name: x").is_err());
        assert!(ResultsDb::new(
            "http://rdb/api/v2.0",
            Duration::from_secs(1),
            Some("nocolon")
        )
        .is_err());
    }

    #[test]
    fn refusal_reason_quotes_the_server_and_says_only_resultsdb_lacks_it() {
        let mut r = result();
        r.outcome = Outcome::Aborted;
        let reason = refused_reason(&r, 400, "outcome must be one of ...");
        assert!(
            reason.contains("(HTTP 400): outcome must be one of ..."),
            "{reason}"
        );
        assert!(
            reason.contains("only the ResultsDB copy is missing"),
            "{reason}"
        );
        assert!(reason.contains(&r.result_id.to_string()), "{reason}");
    }

    #[test]
    fn renamed_key_colliding_with_an_existing_one_keeps_both_values() {
        let mut r = result();
        r.data.clear();
        r.data.insert("a:b".into(), json!("from-colon"));
        r.data.insert("a_b".into(), json!(["x", "y"]));
        let d = data(&r);
        assert_eq!(d["a_b"], json!(["from-colon", "x", "y"]));
        assert!(d.keys().all(|k| !k.contains(':')));
    }

    #[test]
    fn data_values_become_strings_or_lists_of_strings() {
        assert_eq!(data_value(&json!("s")), json!("s"));
        assert_eq!(data_value(&json!(1.5)), json!("1.5"));
        assert_eq!(data_value(&Value::Null), json!("null"));
        assert_eq!(
            data_value(&json!([{"k": 1}, "x"])),
            json!(["{\"k\":1}", "x"])
        );
    }

    #[test]
    fn created_is_posted_with_the_returned_id() {
        assert_eq!(
            classify_response(201, br#"{"id": 42, "outcome": "PASSED"}"#),
            PostOutcome::Posted { id: Some(42) }
        );
        assert_eq!(
            classify_response(201, b"not json"),
            PostOutcome::Posted { id: None }
        );
    }

    #[test]
    fn client_errors_are_refused_with_the_servers_message() {
        assert_eq!(
            classify_response(
                400,
                br#"{"message": "outcome must be one of ['PASSED', 'FAILED']"}"#
            ),
            PostOutcome::Refused {
                status: 400,
                message: "outcome must be one of ['PASSED', 'FAILED']".into()
            }
        );
        // Newer ResultsDB reports validation errors without a `message` key.
        match classify_response(400, br#"{"validation_error": {"body_params": []}}"#) {
            PostOutcome::Refused { message, .. } => {
                assert!(message.contains("validation_error"), "{message}")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            classify_response(404, b"<html>Not Found</html>\n"),
            PostOutcome::Refused {
                status: 404,
                message: "<html>Not Found</html>".into()
            }
        );
        assert!(matches!(
            classify_response(302, b""),
            PostOutcome::Refused { status: 302, .. }
        ));
    }

    #[test]
    fn server_errors_timeouts_and_rate_limits_are_retried() {
        for status in [500, 502, 503, 504, 408, 429] {
            match classify_response(status, br#"{"message": "busy"}"#) {
                PostOutcome::Retry(reason) => {
                    assert!(reason.contains(&status.to_string()), "{reason}");
                    assert!(reason.contains("busy"), "{reason}");
                }
                other => panic!("{status}: {other:?}"),
            }
        }
    }

    #[test]
    fn long_messages_are_shortened() {
        let body = format!("{{\"message\": \"{}\"}}", "x".repeat(2000));
        let message = server_message(body.as_bytes());
        assert_eq!(message.chars().count(), MAX_MESSAGE_CHARS + 1);
        assert_eq!(server_message(b""), "(empty body)");
    }

    #[test]
    fn results_url_is_under_the_api_root() {
        let rdb =
            ResultsDb::new("http://rdb:5001/api/v2.0/", Duration::from_secs(1), None).unwrap();
        assert_eq!(rdb.results_url(), "http://rdb:5001/api/v2.0/results");
        assert!(ResultsDb::new("not a url", Duration::from_secs(1), None).is_err());
    }
}
