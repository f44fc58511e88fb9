//! What every dashboard page shares: escaping, the page frame and its style, the security
//! headers, and how outcomes and states are shown.
//!
//! Everything a page shows from the store or a job's files was written by tasks, which are not
//! trusted (an item, a note, a log line may hold `<script>`): every such text goes through
//! [`escape`], every link built from it through [`crate::links::encode_segment`], and each page
//! is served with a Content-Security-Policy that allows no script at all, so a mistake in the
//! escaping still runs nothing.

use std::fmt::Write as _;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::store::ApiError;

/// No script, no plugin, no frame, no form posting elsewhere; styles only inline (the page's
/// own `<style>`), images only from this api (badges).
pub const CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; \
    form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Text safe inside HTML (and XML) elements and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `text` cut to at most `max` characters (an ellipsis marks the cut).
pub fn cut(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}

/// The dashboard's style: outcomes carry their meaning in the text and in its colour (a red
/// FAILED, a green PASSED), so neither colour alone nor a state like "done" can pass a failure
/// off as a success.
const STYLE: &str = "\
body{font-family:sans-serif;margin:1.5em;color:#222}\
nav{margin-bottom:1em}nav a{margin-right:1em}\
table{border-collapse:collapse;margin-bottom:1.5em}\
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left;vertical-align:top}\
td.n{text-align:right;font-variant-numeric:tabular-nums}\
td.note{white-space:pre-wrap;max-width:40em;font-size:.9em}\
.bad{background:#fdd}.idle{background:#ffd}\
.state-crashed{color:#b00;font-weight:bold}\
.outcome{font-weight:bold;padding:0 .3em;border-radius:3px;border:1px solid}\
.o-passed{color:#116329;background:#dafbe1}\
.o-info{color:#0550ae;background:#ddf4ff}\
.o-failed{color:#c00000;background:#ffebe9}\
.o-crashed{color:#82071e;background:#ffd8d3}\
.o-aborted{color:#953800;background:#fff1e5}\
.o-needs_inspection{color:#7d4e00;background:#fff8c5}\
.o-queued,.o-running,.o-none{color:#57606a;background:#f6f8fa;font-weight:normal}\
form#search{display:flex;flex-wrap:wrap;gap:.5em 1em;align-items:end;margin-bottom:1em}\
form#search label{display:flex;flex-direction:column;font-size:.85em}\
.error{background:#ffebe9;border:1px solid #c00000;padding:.5em;color:#c00000}\
pre{background:#f6f6f6;padding:.8em;overflow:auto;max-height:40em}\
pre.log{max-height:none;line-height:1.35}\
pre.log .line{display:block}pre.log .line:target{background:#fff8c5}\
pre.log a.ln{display:inline-block;width:6ch;margin-right:1ch;text-align:right;color:#888;\
text-decoration:none;user-select:none}\
pre.log a.ln::before{content:attr(data-n)}\
.pager a{margin-right:1em}\
#actions:empty{display:none}";

/// A whole page: `title` (escaped here), `body` (already HTML), refreshed every `refresh`
/// seconds when given.
pub fn page(title: &str, refresh: Option<u32>, body: &str) -> String {
    let refresh = refresh
        .map(|secs| format!("<meta http-equiv=\"refresh\" content=\"{secs}\">"))
        .unwrap_or_default();
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">{refresh}\
         <meta name=\"viewport\" content=\"width=device-width\">\
         <title>{}</title><style>{STYLE}</style></head><body>\
         <nav><a href=\"/dashboard\">Taskbot dashboard</a>\
         <a href=\"/api/v1/jobs\">jobs (JSON)</a><a href=\"/api/v2.0/results\">results (JSON)</a></nav>\
         {body}</body></html>\n",
        escape(title)
    )
}

/// The headers every dashboard answer carries.
fn secure(mut response: Response, content_type: &'static str) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    response
}

/// An HTML answer.
pub fn html(status: StatusCode, text: String) -> Response {
    secure((status, text).into_response(), "text/html; charset=utf-8")
}

/// An SVG answer (badges), never cached for long: it changes with every result.
pub fn svg(text: String) -> Response {
    let mut response = secure(text.into_response(), "image/svg+xml; charset=utf-8");
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, max-age=0"),
    );
    response
}

/// An error as a page (status and message), with a way back.
pub fn error_page(status: StatusCode, message: &str) -> Response {
    let body = format!(
        "<h1>{} {}</h1><p class=\"error\" id=\"error\">{}</p>",
        status.as_u16(),
        escape(status.canonical_reason().unwrap_or("")),
        escape(message)
    );
    html(status, page("Taskbot: error", None, &body))
}

/// An error answered as a page (the api's JSON errors are for programs).
#[derive(Debug)]
pub struct PageError(pub ApiError);

impl PageError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> PageError {
        PageError(ApiError::new(status, message))
    }

    pub fn bad_request(message: impl Into<String>) -> PageError {
        PageError(ApiError::bad_request(message))
    }

    pub fn not_found(message: impl Into<String>) -> PageError {
        PageError(ApiError::not_found(message))
    }
}

impl From<ApiError> for PageError {
    fn from(error: ApiError) -> PageError {
        PageError(error)
    }
}

impl From<tokio_postgres::Error> for PageError {
    fn from(error: tokio_postgres::Error) -> PageError {
        PageError(error.into())
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        error_page(self.0.status, &self.0.message)
    }
}

/// The CSS class of an outcome: one of a fixed set (whatever the store holds), `o-none` for no
/// outcome.
pub fn outcome_class(outcome: Option<&str>) -> &'static str {
    match outcome.map(str::to_ascii_uppercase).as_deref() {
        Some("PASSED") => "o-passed",
        Some("INFO") => "o-info",
        Some("FAILED") => "o-failed",
        Some("CRASHED") => "o-crashed",
        Some("ABORTED") => "o-aborted",
        Some("NEEDS_INSPECTION") => "o-needs_inspection",
        Some("QUEUED") => "o-queued",
        Some("RUNNING") => "o-running",
        _ => "o-none",
    }
}

/// An outcome as shown everywhere: its text in its colour (`—` when there is none yet).
pub fn outcome(outcome: Option<&str>) -> String {
    let class = outcome_class(outcome);
    match outcome {
        Some(o) => format!(
            "<span class=\"outcome {class}\" data-outcome=\"{o}\">{o}</span>",
            o = escape(o)
        ),
        None => format!("<span class=\"outcome {class}\" data-outcome=\"\">—</span>"),
    }
}

/// A job's state as shown in tables: plain text (whether the job's checks passed is its
/// outcome's to say), red when the job crashed.
pub fn state(state: &str) -> String {
    let class = if state == "crashed" {
        " class=\"state-crashed\""
    } else {
        ""
    };
    format!(
        "<span{class} data-state=\"{s}\">{s}</span>",
        s = escape(state)
    )
}

/// The dashboard link to an item's page.
pub fn item_href(item: &str) -> String {
    format!("/dashboard/items/{}", crate::links::encode_segment(item))
}

/// The dashboard link to a file of a job (`path` relative, `/`-separated; empty for the job's
/// directory).
pub fn file_href(job_id: &uuid::Uuid, path: &str) -> String {
    let encoded: Vec<String> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(crate::links::encode_segment)
        .collect();
    format!("/dashboard/jobs/{job_id}/files/{}", encoded.join("/"))
}

/// "← newer" and "older →" links for a page of a list (`page` from 0), escaped for an href.
pub fn pager(b: &mut String, prev: Option<String>, next: Option<String>) {
    if prev.is_none() && next.is_none() {
        return;
    }
    let _ = write!(b, "<p class=\"pager\">");
    if let Some(prev) = prev {
        let _ = write!(b, "<a id=\"newer\" href=\"{}\">← newer</a>", escape(&prev));
    }
    if let Some(next) = next {
        let _ = write!(b, "<a id=\"older\" href=\"{}\">older →</a>", escape(&next));
    }
    let _ = write!(b, "</p>");
}

/// Where re-run and cancel buttons go (issue 18, items 1, 2 and 5: they need an authenticated
/// operator and api endpoints that change state, which do not exist yet). Empty today, so the
/// pages stay read-only; the element is there so the buttons have one place to land.
pub fn actions(b: &mut String, what: &str) {
    let _ = write!(
        b,
        "<section id=\"actions\" data-for=\"{}\"></section>",
        escape(what)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_leaves_no_markup_and_no_attribute_breakout() {
        let hostile = "<script>alert(1)</script>\"' onmouseover=x &amp;";
        let escaped = escape(hostile);
        assert!(!escaped.contains(['<', '>', '"', '\'']), "{escaped}");
        assert_eq!(
            escaped,
            "&lt;script&gt;alert(1)&lt;/script&gt;&quot;&#39; onmouseover=x &amp;amp;"
        );
    }

    #[test]
    fn failed_is_red_text_and_an_unknown_outcome_gets_no_colour_of_its_own() {
        let html = outcome(Some("FAILED"));
        assert_eq!(
            html,
            "<span class=\"outcome o-failed\" data-outcome=\"FAILED\">FAILED</span>"
        );
        assert!(STYLE.contains(".o-failed{color:#c00000"));
        assert_eq!(outcome_class(Some("passed")), "o-passed");
        let html = outcome(Some("<b>PASSED</b>"));
        assert!(
            html.contains("o-none") && html.contains("&lt;b&gt;"),
            "{html}"
        );
        assert!(outcome(None).contains("—"));
    }

    #[test]
    fn links_to_items_and_files_are_encoded() {
        assert_eq!(
            item_href("a b/\"c\"<d>"),
            "/dashboard/items/a%20b%2F%22c%22%3Cd%3E"
        );
        let id = uuid::Uuid::from_u128(1);
        assert_eq!(
            file_href(&id, "logs/a b.log"),
            format!("/dashboard/jobs/{id}/files/logs/a%20b.log")
        );
        assert_eq!(cut("abcdef", 3), "abc…");
        assert_eq!(cut("abc", 3), "abc");
    }
}
