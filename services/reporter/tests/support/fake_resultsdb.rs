//! A ResultsDB test double: a minimal HTTP/1.1 server on a local port that answers
//! `POST /api/v2.0/results` the way ResultsDB 2.2 does (its pydantic validation of the body and
//! the 400 answers it gives, `{"validation_error": {"body_params": [...]}}`; the colon check with
//! `{"message": ...}`; 201 with the stored result), `GET /api/v2.0/results` and
//! `/results/latest` (with `_distinct_on`, as upstream: one newest result per testcase and
//! combination of those data keys' values, outcome filters ignored, 400 without another filter),
//! can require HTTP Basic credentials on writes (as Fedora's instance does), records every
//! request, and can be told to fail the next ones.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Map, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The outcomes Fedora's instance accepts: upstream's four plus CRASHED, QUEUED and RUNNING
/// (ERROR, ABORTED and WAIVED are refused).
pub const FEDORA_OUTCOMES: &[&str] = &[
    "PASSED",
    "INFO",
    "FAILED",
    "NEEDS_INSPECTION",
    "CRASHED",
    "QUEUED",
    "RUNNING",
];

/// Upstream ResultsDB's default outcomes.
pub const UPSTREAM_OUTCOMES: &[&str] = &["PASSED", "INFO", "FAILED", "NEEDS_INSPECTION"];

/// How to answer the next request instead of handling it.
#[derive(Debug, Clone, Copy)]
pub enum Fault {
    /// Answer with this status and a `{"message": ...}` body.
    Status(u16),
    /// Say nothing for this long, then close the connection (a hung server).
    Hang(Duration),
}

#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub content_type: Option<String>,
    pub authorization: Option<String>,
    /// The body as JSON (`Value::Null` if it was not JSON).
    pub body: Value,
    /// The status answered (0 when the connection was dropped without an answer).
    pub status: u16,
}

#[derive(Default)]
struct State {
    outcomes: Vec<String>,
    /// The `Authorization` header writes must carry, when set.
    required_authorization: Option<String>,
    faults: VecDeque<Fault>,
    requests: Vec<Request>,
    stored: Vec<Value>,
}

pub struct FakeResultsDb {
    /// The API root to configure as `reporter.resultsdb_url`.
    pub api_url: String,
    state: Arc<Mutex<State>>,
}

impl FakeResultsDb {
    /// Serve until the test's runtime ends, accepting `outcomes`.
    pub async fn start(outcomes: &[&str]) -> FakeResultsDb {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("local addr").port();
        let api_url = format!("http://127.0.0.1:{port}/api/v2.0");
        let state = Arc::new(Mutex::new(State {
            outcomes: outcomes.iter().map(|o| o.to_string()).collect(),
            ..Default::default()
        }));
        let server_state = state.clone();
        let server_url = api_url.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = server_state.clone();
                let url = server_url.clone();
                tokio::spawn(async move {
                    let _ = serve(stream, &state, &url).await;
                });
            }
        });
        FakeResultsDb { api_url, state }
    }

    /// Refuse writes (HTTP 401) without this `Authorization` header value, as the HTTP Basic
    /// front of Fedora's instance does.
    pub fn require_authorization(&self, value: &str) {
        self.state.lock().unwrap().required_authorization = Some(value.to_string());
    }

    /// Store a result as if another client had posted it (for read tests); panics if refused.
    pub fn insert(&self, body: Value) -> Value {
        let mut st = self.state.lock().unwrap();
        let id = st.stored.len() as i64 + 1;
        let stored = create_result(&body, &st.outcomes, id, &self.api_url)
            .unwrap_or_else(|(_, e)| panic!("refused: {e}"));
        st.stored.push(stored.clone());
        stored
    }

    /// Make the next request (after those already queued) fail this way.
    pub fn fail_next(&self, fault: Fault) {
        self.state.lock().unwrap().faults.push_back(fault);
    }

    /// Forget the faults not used yet: the server works again.
    pub fn clear_faults(&self) {
        self.state.lock().unwrap().faults.clear();
    }

    pub fn requests(&self) -> Vec<Request> {
        self.state.lock().unwrap().requests.clone()
    }

    /// The results it stored, as it answered them.
    pub fn stored(&self) -> Vec<Value> {
        self.state.lock().unwrap().stored.clone()
    }
}

struct Parsed {
    method: String,
    path: String,
    content_type: Option<String>,
    authorization: Option<String>,
    body: Vec<u8>,
}

async fn read_request(stream: &mut TcpStream) -> std::io::Result<Option<Parsed>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let header_end = loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos + 4;
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..header_end]).to_string();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next().unwrap_or("").split_whitespace();
    let method = request_line.next().unwrap_or("").to_string();
    let path = request_line.next().unwrap_or("").to_string();
    let mut content_length = 0usize;
    let mut content_type = None;
    let mut authorization = None;
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                content_length = value.parse().unwrap_or(0);
            } else if name.eq_ignore_ascii_case("content-type") {
                content_type = Some(value.to_string());
            } else if name.eq_ignore_ascii_case("authorization") {
                authorization = Some(value.to_string());
            }
        }
    }
    let mut body = buf[header_end..].to_vec();
    while body.len() < content_length {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(content_length);
    Ok(Some(Parsed {
        method,
        path,
        content_type,
        authorization,
        body,
    }))
}

async fn serve(mut stream: TcpStream, state: &Mutex<State>, api_url: &str) -> std::io::Result<()> {
    let Some(req) = read_request(&mut stream).await? else {
        return Ok(());
    };
    let body: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
    let fault = state.lock().unwrap().faults.pop_front();
    let (status, answer) = match fault {
        Some(Fault::Hang(how_long)) => {
            record(state, &req, body, 0);
            tokio::time::sleep(how_long).await;
            return Ok(());
        }
        Some(Fault::Status(status)) => (status, json!({ "message": reason(status) })),
        None if req.method == "POST"
            && req.path == "/api/v2.0/results"
            && state
                .lock()
                .unwrap()
                .required_authorization
                .as_ref()
                .is_some_and(|r| req.authorization.as_deref() != Some(r.as_str())) =>
        {
            (401, json!({"message": "Unauthorized"}))
        }
        None if req.method == "POST" && req.path == "/api/v2.0/results" => {
            let mut st = state.lock().unwrap();
            match create_result(&body, &st.outcomes, st.stored.len() as i64 + 1, api_url) {
                Ok(stored) => {
                    st.stored.push(stored.clone());
                    (201, stored)
                }
                Err((status, answer)) => (status, answer),
            }
        }
        None if req.method == "GET" && req.path.starts_with("/api/v2.0/results") => {
            let st = state.lock().unwrap();
            read_results(&req.path, &st.stored)
        }
        None => (404, json!({"message": "Not found"})),
    };
    record(state, &req, body, status);
    let text = answer.to_string();
    let response = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{text}",
        reason(status),
        text.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

fn record(state: &Mutex<State>, req: &Parsed, body: Value, status: u16) {
    state.lock().unwrap().requests.push(Request {
        method: req.method.clone(),
        path: req.path.clone(),
        content_type: req.content_type.clone(),
        authorization: req.authorization.clone(),
        body,
        status,
    });
}

fn reason(status: u16) -> &'static str {
    match status {
        201 => "CREATED",
        200 => "OK",
        401 => "UNAUTHORIZED",
        400 => "BAD REQUEST",
        404 => "NOT FOUND",
        500 => "INTERNAL SERVER ERROR",
        503 => "SERVICE UNAVAILABLE",
        _ => "UNKNOWN",
    }
}

/// A pydantic validation failure of the body, as flask-pydantic answers it (HTTP 400).
fn invalid(field: &str, msg: &str) -> (u16, Value) {
    (
        400,
        json!({"validation_error": {"body_params": [
            {"loc": [field], "msg": msg, "type": "value_error"}
        ]}}),
    )
}

/// ResultsDB's checks on `POST /results` (its `CreateResultParams`, then the colon check of
/// `create_result_any_data`), then the stored result as it answers it.
fn create_result(
    body: &Value,
    outcomes: &[String],
    id: i64,
    api_url: &str,
) -> Result<Value, (u16, Value)> {
    let Value::Object(fields) = body else {
        return Err(invalid("__root__", "value is not a valid dict"));
    };
    let outcome = match fields.get("outcome") {
        Some(Value::String(s)) if !s.trim().is_empty() => s.trim().to_uppercase(),
        Some(Value::String(_)) => {
            return Err(invalid(
                "outcome",
                "ensure this value has at least 1 characters",
            ))
        }
        None | Some(Value::Null) => return Err(invalid("outcome", "field required")),
        Some(_) => return Err(invalid("outcome", "str type expected")),
    };
    if !outcomes.contains(&outcome) {
        return Err(invalid(
            "outcome",
            &format!("must be one of: {}", outcomes.join(", ")),
        ));
    }
    let (testcase_name, testcase_ref) = match fields.get("testcase") {
        Some(Value::String(name)) if !name.is_empty() => (name.clone(), Value::Null),
        Some(Value::Object(tc)) => match tc.get("name") {
            Some(Value::String(name)) if !name.is_empty() => (
                name.clone(),
                tc.get("ref_url").cloned().unwrap_or(Value::Null),
            ),
            _ => return Err(invalid("testcase", "testcase name must be non-empty")),
        },
        None => return Err(invalid("testcase", "field required")),
        _ => return Err(invalid("testcase", "testcase name must be non-empty")),
    };
    for key in ["note", "ref_url"] {
        match fields.get(key) {
            None | Some(Value::Null) | Some(Value::String(_)) => {}
            Some(_) => return Err(invalid(key, "str type expected")),
        }
    }
    let mut groups = Vec::new();
    match fields.get("groups") {
        None | Some(Value::Null) => {}
        Some(Value::Array(list)) => {
            for group in list {
                match group {
                    Value::String(uuid) => groups.push(Value::String(uuid.clone())),
                    Value::Object(g) => match g.get("uuid") {
                        Some(Value::String(uuid)) => groups.push(Value::String(uuid.clone())),
                        _ => return Err((500, json!({"message": "group without uuid"}))),
                    },
                    _ => return Err((500, json!({"message": "unexpected group"}))),
                }
            }
        }
        Some(_) => return Err(invalid("groups", "value is not a valid list")),
    }
    let mut data = Map::new();
    match fields.get("data") {
        None | Some(Value::Null) => {}
        Some(Value::Object(d)) => {
            let invalid: Vec<&String> = d.keys().filter(|k| k.contains(':')).collect();
            if !invalid.is_empty() {
                return Err((
                    400,
                    json!({"message": format!("Colon not allowed in key name: {invalid:?}")}),
                ));
            }
            for (key, value) in d {
                // Upstream stores str() of anything that is not a string (a list's elements
                // each); the sink sends only strings, so anything else is flagged here.
                let values = match value {
                    Value::String(s) => vec![Value::String(s.clone())],
                    Value::Array(items) if items.iter().all(Value::is_string) => items.clone(),
                    other => {
                        return Err((
                            500,
                            json!({"message": format!("data.{key}: not a string or list of strings: {other}")}),
                        ))
                    }
                };
                data.insert(key.clone(), Value::Array(values));
            }
        }
        Some(_) => return Err(invalid("data", "value is not a valid dict")),
    }
    let submit_time = match fields.get("submit_time") {
        None | Some(Value::Null) => Value::Null,
        Some(Value::Number(n)) => Value::Number(n.clone()),
        Some(Value::String(s)) => {
            // ResultsDB: strptime("%Y-%m-%dT%H:%M:%S.%f") followed by "Z", "", "%z" or "+00".
            let naive = s
                .strip_suffix('Z')
                .or_else(|| s.strip_suffix("+00:00"))
                .or_else(|| s.strip_suffix("+00"))
                .unwrap_or(s);
            let has_fraction = naive.rsplit_once('.').is_some_and(|(_, f)| {
                !f.is_empty() && f.len() <= 6 && f.chars().all(|c| c.is_ascii_digit())
            });
            if !has_fraction
                || chrono::NaiveDateTime::parse_from_str(naive, "%Y-%m-%dT%H:%M:%S%.f").is_err()
            {
                return Err(invalid(
                    "submit_time",
                    &format!(
                        "Expected timestamp in milliseconds or datetime (in format \
                         YYYY-MM-DDTHH:MM:SS.ffffff), got {s:?}"
                    ),
                ));
            }
            Value::String(naive.to_string())
        }
        Some(_) => return Err(invalid("submit_time", "unexpected value")),
    };
    Ok(json!({
        "id": id,
        "testcase": {
            "name": testcase_name,
            "ref_url": testcase_ref,
            "href": format!("{api_url}/testcases/{testcase_name}"),
        },
        "groups": groups,
        "submit_time": submit_time,
        "outcome": outcome,
        "note": fields.get("note").cloned().unwrap_or(Value::Null),
        "ref_url": fields.get("ref_url").cloned().unwrap_or(Value::Null),
        "data": data,
        "href": format!("{api_url}/results/{id}"),
    }))
}

/// Query keys of ResultsDB's `ResultsParams`; every other key filters `data`.
const RESERVED: &[&str] = &[
    "page",
    "limit",
    "_sort",
    "since",
    "outcome",
    "groups",
    "testcases",
    "testcases:like",
    "_distinct_on",
    "callback",
    "_",
];

/// `GET /results` and `/results/latest` over the stored results (exact and `:like` data
/// filters, testcases, outcome; newest first).
fn read_results(path_and_query: &str, stored: &[Value]) -> (u16, Value) {
    let url = reqwest::Url::parse(&format!("http://double{path_and_query}")).unwrap();
    let mut params: Vec<(String, Vec<String>)> = Vec::new();
    for (k, v) in url.query_pairs() {
        let values: Vec<String> = v
            .split(',')
            .map(|x| x.trim().to_string())
            .filter(|x| !x.is_empty())
            .collect();
        match params.iter_mut().find(|(key, _)| *key == k) {
            Some((_, existing)) => existing.extend(values),
            None => params.push((k.to_string(), values)),
        }
    }
    let get = |key: &str| {
        params
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    };
    let latest = url.path().ends_with("/latest");
    let data_filters: Vec<(String, Vec<String>)> = params
        .iter()
        .filter(|(k, _)| !RESERVED.contains(&k.as_str()))
        .cloned()
        .collect();
    let testcases = get("testcases").unwrap_or_default();
    let distinct_on = get("_distinct_on").unwrap_or_default();
    if latest
        && !distinct_on.is_empty()
        && testcases.is_empty()
        && get("testcases:like").is_none()
        && get("groups").is_none()
        && get("since").is_none()
        && data_filters.is_empty()
    {
        return (
            400,
            json!({"message": "Please, provide at least one filter beside '_distinct_on'"}),
        );
    }
    let like = |pattern: &str, value: &str| {
        let parts: Vec<&str> = pattern.split('*').collect();
        if parts.len() == 1 {
            return pattern == value;
        }
        let mut rest = value;
        for (i, part) in parts.iter().enumerate() {
            if i == 0 {
                let Some(r) = rest.strip_prefix(part) else {
                    return false;
                };
                rest = r;
            } else if i == parts.len() - 1 {
                return rest.ends_with(part);
            } else {
                match rest.find(part) {
                    Some(at) => rest = &rest[at + part.len()..],
                    None => return false,
                }
            }
        }
        true
    };
    let values_of = |r: &Value, key: &str| -> Vec<String> {
        r["data"][key]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    // Upstream's `latest` passes no outcome filter to its query.
    let outcomes = if latest { None } else { get("outcome") };
    let mut selected: Vec<&Value> = stored
        .iter()
        .filter(|r| {
            let name = r["testcase"]["name"].as_str().unwrap_or("");
            (testcases.is_empty() || testcases.iter().any(|t| t == name))
                && outcomes.as_ref().is_none_or(|o| {
                    o.iter()
                        .any(|x| x.eq_ignore_ascii_case(r["outcome"].as_str().unwrap_or("")))
                })
                && data_filters.iter().all(|(key, wanted)| {
                    let (name, is_like) = match key.strip_suffix(":like") {
                        Some(n) => (n, true),
                        None => (key.as_str(), false),
                    };
                    values_of(r, name).iter().any(|v| {
                        wanted
                            .iter()
                            .any(|w| if is_like { like(w, v) } else { w == v })
                    })
                })
        })
        .collect();
    let time = |r: &Value| r["submit_time"].as_str().unwrap_or("").to_string();
    selected.sort_by_key(|r| std::cmp::Reverse((time(r), r["id"].as_i64())));
    if !latest {
        return (200, json!({"prev": null, "next": null, "data": selected}));
    }
    let mut seen = Vec::new();
    let mut newest = Vec::new();
    for r in selected {
        let mut key = vec![vec![r["testcase"]["name"]
            .as_str()
            .unwrap_or("")
            .to_string()]];
        for k in &distinct_on {
            key.push(values_of(r, k));
        }
        if !seen.contains(&key) {
            seen.push(key);
            newest.push(r);
        }
    }
    (200, json!({"data": newest}))
}

/// Answer a `GET` of `path_and_query` as the double would over HTTP (status and body).
pub fn query(resultsdb: &FakeResultsDb, path_and_query: &str) -> (u16, Value) {
    let st = resultsdb.state.lock().unwrap();
    read_results(path_and_query, &st.stored)
}
