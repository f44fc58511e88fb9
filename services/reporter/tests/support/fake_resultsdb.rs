//! A ResultsDB test double: a minimal HTTP/1.1 server on a local port that answers
//! `POST /api/v2.0/results` the way ResultsDB 2.x does (same required fields, same 400 messages,
//! 201 with the stored result), records every request, and can be told to fail the next ones.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Map, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// ResultsDB's built-in outcomes plus the extras Fedora-style deployments configure.
pub const ALL_OUTCOMES: &[&str] = &[
    "PASSED",
    "INFO",
    "FAILED",
    "NEEDS_INSPECTION",
    "CRASHED",
    "ABORTED",
];

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
        None if req.method == "POST" && req.path == "/api/v2.0/results" => {
            let mut st = state.lock().unwrap();
            match create_result(&body, &st.outcomes, st.stored.len() as i64 + 1, api_url) {
                Ok(stored) => {
                    st.stored.push(stored.clone());
                    (201, stored)
                }
                Err(message) => (400, json!({ "message": message })),
            }
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
        400 => "BAD REQUEST",
        404 => "NOT FOUND",
        500 => "INTERNAL SERVER ERROR",
        503 => "SERVICE UNAVAILABLE",
        _ => "UNKNOWN",
    }
}

/// ResultsDB's checks on `POST /results`, then the stored result as it answers it.
fn create_result(
    body: &Value,
    outcomes: &[String],
    id: i64,
    api_url: &str,
) -> Result<Value, String> {
    let Value::Object(fields) = body else {
        return Err("Malformed Request: body is not a JSON object".into());
    };
    let outcome = match fields.get("outcome") {
        Some(Value::String(s)) if !s.trim().is_empty() => s.trim().to_uppercase(),
        _ => return Err("outcome: field required (non-empty string)".into()),
    };
    if !outcomes.contains(&outcome) {
        return Err(format!("outcome must be one of {outcomes:?}"));
    }
    let (testcase_name, testcase_ref) = match fields.get("testcase") {
        Some(Value::String(name)) if !name.is_empty() => (name.clone(), Value::Null),
        Some(Value::Object(tc)) => match tc.get("name") {
            Some(Value::String(name)) if !name.is_empty() => (
                name.clone(),
                tc.get("ref_url").cloned().unwrap_or(Value::Null),
            ),
            _ => return Err("testcase.name not set".into()),
        },
        _ => return Err("testcase name must be non-empty".into()),
    };
    for key in ["note", "ref_url"] {
        match fields.get(key) {
            None | Some(Value::Null) | Some(Value::String(_)) => {}
            Some(other) => return Err(format!("{key}: expected a string, got {other}")),
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
                        _ => return Err("group without uuid".into()),
                    },
                    other => return Err(format!("groups: unexpected {other}")),
                }
            }
        }
        Some(other) => return Err(format!("groups: expected a list, got {other}")),
    }
    let mut data = Map::new();
    match fields.get("data") {
        None | Some(Value::Null) => {}
        Some(Value::Object(d)) => {
            let invalid: Vec<&String> = d.keys().filter(|k| k.contains(':')).collect();
            if !invalid.is_empty() {
                return Err(format!("Colon not allowed in key name: {invalid:?}"));
            }
            for (key, value) in d {
                let values = match value {
                    Value::String(s) => vec![Value::String(s.clone())],
                    Value::Array(items) if items.iter().all(Value::is_string) => items.clone(),
                    other => {
                        return Err(format!(
                            "data.{key}: expected a string or a list of strings, got {other}"
                        ))
                    }
                };
                data.insert(key.clone(), Value::Array(values));
            }
        }
        Some(other) => return Err(format!("data: expected an object, got {other}")),
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
                return Err(format!(
                    "submit_time: Expected timestamp in milliseconds or datetime (in format \
                     YYYY-MM-DDTHH:MM:SS.ffffff), got {s:?}"
                ));
            }
            Value::String(naive.to_string())
        }
        Some(other) => return Err(format!("submit_time: unexpected {other}")),
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
