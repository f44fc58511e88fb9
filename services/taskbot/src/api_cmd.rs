//! `taskbot results` and `taskbot job ID`: read results and jobs from the `api` service (so they
//! work from any machine that reaches it, without database credentials).
//!
//! The api is `--api URL`, else `api.public_url` from the configuration, else
//! `http://127.0.0.1:8080` (the api's default address). Text by default, the api's own JSON with
//! `--json`.

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::Value;
use taskbot::{error_chain, Config};

use crate::cli::{ApiArgs, JobArgs, ResultsArgs};
use crate::Failure;

/// The api's base URL, without a trailing slash: `--api`, else `api.public_url`, else the address
/// the api listens on (`api.listen`, default `127.0.0.1:8080`).
pub fn api_url(args: &ApiArgs) -> Result<String, Failure> {
    match &args.api {
        Some(url) => api_base(None, Some(url)),
        None => {
            let config = Config::load(&[]).map_err(|e| Failure::config(format!("taskbot: {e}")))?;
            api_base(Some(&config), None)
        }
    }
}

/// [`api_url`] from a loaded configuration (`None` only when `--api` is given). An `--api` that
/// is not an http(s) URL is a usage error (exit status 2).
pub fn api_base(config: Option<&Config>, flag: Option<&str>) -> Result<String, Failure> {
    let url = match (flag, config) {
        (Some(url), _) => {
            let url = url.trim();
            if !(url.starts_with("http://") || url.starts_with("https://")) || url.len() < 9 {
                return Err(Failure::usage(format!(
                    "taskbot: --api {url:?} is not an http:// or https:// URL"
                )));
            }
            url.to_string()
        }
        (None, Some(config)) => match &config.api.public_url {
            Some(public) => public.clone(),
            None => listen_url(&config.api.listen),
        },
        (None, None) => listen_url(&taskbot::config::ApiConfig::default().listen),
    };
    Ok(url.trim_end_matches('/').to_string())
}

/// The URL that reaches an api listening on `listen` (`HOST:PORT`) from this host: an address
/// that means "every interface" (`0.0.0.0`, `[::]`, or none) is reached on the loopback.
pub fn listen_url(listen: &str) -> String {
    let listen = listen.trim();
    if let Ok(address) = listen.parse::<std::net::SocketAddr>() {
        let ip = match address.ip() {
            std::net::IpAddr::V4(ip) if ip.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::IpAddr::V6(ip) if ip.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
            ip => ip,
        };
        return format!("http://{}", std::net::SocketAddr::new(ip, address.port()));
    }
    match listen.rsplit_once(':') {
        Some(("", port)) => format!("http://127.0.0.1:{port}"),
        _ => format!("http://{listen}"),
    }
}

/// Percent-encode a query value.
pub(crate) fn encode(text: &str) -> String {
    let mut out = String::new();
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b',' | b'*' => {
                out.push(byte as char)
            }
            other => out.push_str(&format!("%{other:02X}")),
        }
    }
    out
}

/// GET `url` and decode the JSON answer. `what` names the thing for a 404 ("job X").
pub(crate) fn get(url: &str, what: &str) -> Result<Value, Failure> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::input(format!("taskbot: cannot start the HTTP client: {e}")))?;
    runtime.block_on(async {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| Failure::input(format!("taskbot: cannot start the HTTP client: {e}")))?;
        let response = client.get(url).send().await.map_err(|e| {
            Failure::input(format!(
                "taskbot: cannot reach the api at {url}: {}\n\
                 (is the api service running? point --api, api.public_url or api.listen at it)",
                error_chain(&e)
            ))
        })?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| Failure::input(format!("taskbot: the api's answer was cut off: {e}")))?;
        let json: Option<Value> = serde_json::from_slice(&body).ok();
        if status.as_u16() == 404 {
            return Err(Failure::input(format!(
                "taskbot: no {what} (api answered 404 for {url})"
            )));
        }
        if !status.is_success() {
            let message = json
                .as_ref()
                .and_then(|j| j["message"].as_str())
                .map(str::to_string)
                .unwrap_or_else(|| String::from_utf8_lossy(&body).chars().take(300).collect());
            return Err(Failure::input(format!(
                "taskbot: the api answered {status} for {url}: {message}"
            )));
        }
        json.ok_or_else(|| {
            Failure::input(format!("taskbot: the api's answer for {url} is not JSON"))
        })
    })
}

/// The `/api/v2.0/results` URL for the command's filters.
pub fn results_url(base: &str, args: &ResultsArgs) -> String {
    let mut query = vec![format!("limit={}", args.limit)];
    if let Some(item) = &args.item {
        query.push(format!("item={}", encode(item)));
    }
    if let Some(testcase) = &args.testcase {
        // A `*` makes it a pattern, as in ResultsDB's `testcases:like`.
        let key = if testcase.contains('*') {
            "testcases:like"
        } else {
            "testcases"
        };
        query.push(format!("{key}={}", encode(testcase)));
    }
    if let Some(outcome) = &args.outcome {
        query.push(format!("outcome={}", encode(outcome)));
    }
    format!("{base}/api/v2.0/results?{}", query.join("&"))
}

/// `--outcome`'s names, each one of ResultsDB's outcomes (any case), else a usage error naming
/// them.
pub fn check_outcomes(list: Option<&str>) -> Result<(), Failure> {
    let Some(list) = list else {
        return Ok(());
    };
    let unknown: Vec<&str> = list
        .split(',')
        .map(str::trim)
        .filter(|o| !o.is_empty() && taskbot::Outcome::parse(o).is_none())
        .collect();
    if unknown.is_empty() {
        return Ok(());
    }
    let known: Vec<&str> = taskbot::Outcome::ALL.iter().map(|o| o.as_str()).collect();
    Err(Failure::usage(format!(
        "taskbot results: --outcome {:?} is not an outcome; the outcomes are {}",
        unknown.join(","),
        known.join(", ")
    )))
}

/// `taskbot results`.
pub fn results(args: &ResultsArgs) -> Result<String, Failure> {
    check_outcomes(args.outcome.as_deref())?;
    let base = api_url(&args.api)?;
    let page = get(&results_url(&base, args), "results")?;
    if args.json {
        return Ok(format!("{}\n", pretty(&page)));
    }
    Ok(results_table(&page, args.full))
}

fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
}

fn first_data(result: &Value, key: &str) -> String {
    result["data"][key][0].as_str().unwrap_or("").to_string()
}

/// How much of a note a table shows by default: its first line, this many characters at most.
pub const NOTE_WIDTH: usize = 60;

/// A note as a table's last cell: with `full`, all of it (its lines after the first go under
/// it, aligned with the column); else its first line, cut to [`NOTE_WIDTH`] characters, with
/// `…` when anything was left out. A CRASHED note holds the last ~20 lines of the job's log,
/// which would otherwise fill the screen with one result.
pub fn note_cell(note: &str, full: bool) -> String {
    let note = note.trim_end();
    if full {
        return note.to_string();
    }
    let mut lines = note.lines();
    let first = lines.next().unwrap_or("").trim_end();
    let more = lines.next().is_some();
    if first.chars().count() > NOTE_WIDTH {
        let kept: String = first.chars().take(NOTE_WIDTH - 1).collect();
        format!("{}…", kept.trim_end())
    } else if more {
        format!("{first} …")
    } else {
        first.to_string()
    }
}

/// Rows as aligned columns. The last cell may hold several lines: the ones after the first
/// start under it.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i + 1 < row.len() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                let indent = text.chars().count();
                let mut cell_lines = cell.lines();
                text.push_str(cell_lines.next().unwrap_or(""));
                for more in cell_lines {
                    text = text.trim_end().to_string();
                    let _ = write!(text, "\n{:indent$}{more}", "");
                }
            } else {
                let _ = write!(text, "{cell:<width$}  ", width = widths[i]);
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

/// A time without its fraction: `2025-06-15T15:06:50.250000` → `2025-06-15 15:06:50`.
fn short_time(text: &str) -> String {
    let text = text.split('.').next().unwrap_or(text);
    let text = text.split('+').next().unwrap_or(text);
    text.replace('T', " ")
}

/// The text form of a `/results` page; notes cut to one line unless `full` ([`note_cell`]).
pub fn results_table(page: &Value, full: bool) -> String {
    let results = page["data"].as_array().cloned().unwrap_or_default();
    if results.is_empty() {
        return "no results\n".to_string();
    }
    let rows: Vec<Vec<String>> = results
        .iter()
        .map(|r| {
            vec![
                short_time(r["submit_time"].as_str().unwrap_or("")),
                r["outcome"].as_str().unwrap_or("").to_string(),
                r["testcase"]["name"].as_str().unwrap_or("").to_string(),
                first_data(r, "item"),
                first_data(r, "arch"),
                r["groups"][0].as_str().unwrap_or("").to_string(),
                note_cell(r["note"].as_str().unwrap_or(""), full),
            ]
        })
        .collect();
    let mut out = table(
        &[
            "SUBMITTED",
            "OUTCOME",
            "TESTCASE",
            "ITEM",
            "ARCH",
            "JOB",
            "NOTE",
        ],
        &rows,
    );
    if page["next"].is_string() {
        let _ = writeln!(
            out,
            "(first {} shown; more match: raise --limit or narrow the filters)",
            results.len()
        );
    }
    out
}

/// `taskbot job ID`.
pub fn job(args: &JobArgs) -> Result<String, Failure> {
    let id = args.id.trim();
    if uuid::Uuid::parse_str(id).is_err() {
        return Err(Failure::usage(format!(
            "taskbot job: {id:?} is not a job id (a UUID, as `taskbot results` shows)"
        )));
    }
    let base = api_url(&args.api)?;
    let job = get(
        &format!("{base}/api/v1/jobs/{}", encode(id)),
        &format!("job {id}"),
    )?;
    if args.json {
        return Ok(format!("{}\n", pretty(&job)));
    }
    Ok(job_text(&job, args.full))
}

/// The text form of a job; details and notes cut to one line unless `full` ([`note_cell`]).
pub fn job_text(job: &Value, full: bool) -> String {
    let s = |v: &Value| v.as_str().unwrap_or("").to_string();
    let mut out = String::new();
    let _ = writeln!(out, "job      {}", s(&job["id"]));
    let _ = writeln!(out, "state    {}", s(&job["state"]));
    let _ = writeln!(
        out,
        "task     {} ({}@{})",
        s(&job["task"]["name"]),
        s(&job["task"]["repo"]),
        s(&job["task"]["ref"])
    );
    let _ = writeln!(
        out,
        "item     {} ({}) on {}",
        s(&job["item"]),
        s(&job["type"]),
        s(&job["arch"])
    );
    let _ = writeln!(
        out,
        "trigger  rule {}, event {} ({})",
        s(&job["rule"]),
        s(&job["event"]["id"]),
        s(&job["event"]["topic"])
    );
    if let Some(runner) = job["runner"].as_str() {
        let _ = writeln!(out, "runner   {runner}");
    }
    let _ = writeln!(out, "created  {}", short_time(&s(&job["created_at"])));
    let _ = writeln!(out, "logs     {}", s(&job["logs"]["task_log"]));
    let _ = writeln!(out, "         {}", s(&job["logs"]["artifacts"]));
    if let Some(published) = job["logs"]["published"].as_str() {
        let _ = writeln!(out, "         {published}");
    }
    out.push_str("\nhistory:\n");
    let history: Vec<Vec<String>> = job["history"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|e| {
            vec![
                short_time(&s(&e["at"])),
                s(&e["state"]),
                s(&e["service"]),
                note_cell(&s(&e["detail"]), full),
            ]
        })
        .collect();
    out.push_str(&indent(&table(&["AT", "STATE", "BY", "DETAIL"], &history)));
    let results = job["results"].as_array().cloned().unwrap_or_default();
    if results.is_empty() {
        out.push_str("\nno results\n");
    } else {
        out.push_str("\nresults:\n");
        let rows: Vec<Vec<String>> = results
            .iter()
            .map(|r| {
                vec![
                    s(&r["outcome"]),
                    s(&r["testcase"]["name"]),
                    note_cell(&s(&r["note"]), full),
                ]
            })
            .collect();
        out.push_str(&indent(&table(&["OUTCOME", "TESTCASE", "NOTE"], &rows)));
    }
    out
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}\n")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn args() -> ResultsArgs {
        ResultsArgs {
            item: Some("xchat 1".into()),
            testcase: Some("dist.*".into()),
            outcome: Some("FAILED,CRASHED".into()),
            limit: 5,
            json: false,
            full: false,
            api: ApiArgs { api: None },
        }
    }

    #[test]
    fn the_api_is_found_at_its_public_url_else_where_it_listens() {
        assert_eq!(listen_url("127.0.0.1:8080"), "http://127.0.0.1:8080");
        assert_eq!(listen_url("0.0.0.0:9000"), "http://127.0.0.1:9000");
        assert_eq!(listen_url("[::]:9000"), "http://[::1]:9000");
        assert_eq!(listen_url("[2001:db8::1]:80"), "http://[2001:db8::1]:80");
        assert_eq!(listen_url("api.internal:8081"), "http://api.internal:8081");
        assert_eq!(listen_url(":8081"), "http://127.0.0.1:8081");
        let mut config = Config::default();
        config.api.listen = "0.0.0.0:8081".into();
        assert_eq!(
            api_base(Some(&config), None).unwrap(),
            "http://127.0.0.1:8081"
        );
        config.api.public_url = Some("https://taskbot.example/".into());
        assert_eq!(
            api_base(Some(&config), None).unwrap(),
            "https://taskbot.example"
        );
        assert_eq!(
            api_base(Some(&config), Some("http://h:1/")).unwrap(),
            "http://h:1"
        );
        assert_eq!(api_base(None, Some("h:1")).unwrap_err().status, 2);
    }

    #[test]
    fn outcomes_are_checked_before_asking() {
        assert!(check_outcomes(None).is_ok());
        assert!(check_outcomes(Some("failed, CRASHED,")).is_ok());
        let err = check_outcomes(Some("FAILED,GREAT,bad")).unwrap_err();
        assert_eq!(err.status, 2);
        assert!(err.message.contains("\"GREAT,bad\""), "{}", err.message);
    }

    #[test]
    fn long_notes_take_one_line_unless_full() {
        assert_eq!(note_cell("fine", false), "fine");
        assert_eq!(note_cell("fine\n", false), "fine");
        let crashed = "the task was killed by signal 11 (SIGSEGV)\n--- end of task.log ---\na\nb";
        assert_eq!(
            note_cell(crashed, false),
            "the task was killed by signal 11 (SIGSEGV) …"
        );
        assert_eq!(note_cell(crashed, true), crashed);
        let long = "x".repeat(200);
        let cut = note_cell(&long, false);
        assert_eq!(cut.chars().count(), NOTE_WIDTH);
        assert!(cut.ends_with('…'));
        let page = json!({"data": [{
            "submit_time": "2025-06-15T15:06:50", "outcome": "CRASHED",
            "testcase": {"name": "t"}, "data": {"item": ["i"], "arch": ["a"]},
            "groups": ["g"], "note": crashed,
        }]});
        let short = results_table(&page, false);
        assert_eq!(short.lines().count(), 2, "{short}");
        let full = results_table(&page, true);
        let lines: Vec<&str> = full.lines().collect();
        assert_eq!(lines.len(), 5, "{full}");
        let column = lines[0].find("NOTE").unwrap();
        assert_eq!(lines[1].find("the task was"), Some(column), "{full}");
        assert_eq!(lines[2].find("--- end"), Some(column), "{full}");
    }

    #[test]
    fn results_url_carries_the_filters() {
        assert_eq!(
            results_url("http://h:8080", &args()),
            "http://h:8080/api/v2.0/results?limit=5&item=xchat%201&testcases:like=dist.*\
             &outcome=FAILED,CRASHED"
        );
        let plain = ResultsArgs {
            testcase: Some("dist.rpmlint".into()),
            item: None,
            outcome: None,
            ..args()
        };
        assert_eq!(
            results_url("u", &plain),
            "u/api/v2.0/results?limit=5&testcases=dist.rpmlint"
        );
    }

    #[test]
    fn results_table_aligns_and_says_when_there_is_more() {
        let page = json!({
            "prev": null,
            "next": "http://h/api/v2.0/results?page=1",
            "data": [{
                "submit_time": "2025-06-15T15:06:50.250000",
                "outcome": "PASSED",
                "testcase": {"name": "dist.rpmlint"},
                "data": {"item": ["xchat-0.5-1.fc40"], "arch": ["x86_64"]},
                "groups": ["0e7c"],
                "note": "fine",
            }, {
                "submit_time": "2025-06-15T15:06:49",
                "outcome": "FAILED",
                "testcase": {"name": "abi"},
                "data": {"item": ["glibc"], "arch": ["aarch64"]},
                "groups": ["1f2a"],
                "note": null,
            }],
        });
        let text = results_table(&page, false);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "SUBMITTED            OUTCOME  TESTCASE      ITEM              ARCH     JOB   NOTE"
        );
        assert_eq!(
            lines[1],
            "2025-06-15 15:06:50  PASSED   dist.rpmlint  xchat-0.5-1.fc40  x86_64   0e7c  fine"
        );
        assert_eq!(
            lines[2],
            "2025-06-15 15:06:49  FAILED   abi           glibc             aarch64  1f2a"
        );
        assert!(lines[3].contains("more match"), "{text}");
        assert_eq!(results_table(&json!({"data": []}), false), "no results\n");
    }
}
