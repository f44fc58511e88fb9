//! Status badges: an item's or a testcase's outcome as a small SVG image (label, then the
//! outcome's text on its colour), for a README, a pull request or a wiki page.
//!
//! - `/badge/items/<item>.svg` (`?testcase=a,b&arch=x86_64` to narrow): the worst of the item's
//!   latest results per testcase and arch (what its dashboard page shows as its outcome), with
//!   how many of its jobs are not finished;
//! - `/badge/testcases/<testcase>.svg` (`?item=…&arch=…`): that testcase's latest result.
//!
//! Labels and messages come from the store (a testcase name is the task's to choose), so they are
//! escaped as XML text, and cut; the answer carries the dashboard's no-script policy.

use std::fmt::Write as _;

use axum::extract::{Path, Query, State};
use axum::response::Response;

use crate::dashboard::html::{self, escape};
use crate::jobs::{self, JobFilter};
use crate::links::list;
use crate::store::ApiError;
use crate::SharedState;

/// Characters of a label or message shown (longer ones are cut).
const MAX_TEXT: usize = 48;
/// States after which a job runs no more.
const FINAL_STATES: &[&str] = &["done", "crashed"];

/// The background of an outcome's half of a badge.
pub fn colour(outcome: Option<&str>) -> &'static str {
    match outcome.map(str::to_ascii_uppercase).as_deref() {
        Some("PASSED") => "#2da44e",
        Some("INFO") => "#0969da",
        Some("FAILED") => "#cf222e",
        Some("CRASHED") => "#82071e",
        Some("ABORTED") => "#bc4c00",
        Some("NEEDS_INSPECTION") => "#9a6700",
        _ => "#6e7781",
    }
}

/// Width in pixels the text takes in 11 px Verdana, roughly (a badge slightly too wide is fine,
/// one too narrow cuts its text).
fn text_width(text: &str) -> usize {
    text.chars().count() * 7 + 10
}

/// A badge: `label` on grey, `message` on `fill`.
pub fn render(label: &str, message: &str, fill: &str) -> String {
    let (label, message) = (html::cut(label, MAX_TEXT), html::cut(message, MAX_TEXT));
    let (lw, mw) = (text_width(&label), text_width(&message));
    let (label, message) = (escape(&label), escape(&message));
    let mut svg = String::new();
    let _ = write!(
        svg,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"20\" role=\"img\" \
         aria-label=\"{label}: {message}\"><title>{label}: {message}</title>\
         <rect width=\"{lw}\" height=\"20\" fill=\"#555\"/>\
         <rect x=\"{lw}\" width=\"{mw}\" height=\"20\" fill=\"{fill}\"/>\
         <g fill=\"#fff\" text-anchor=\"middle\" font-family=\"Verdana,DejaVu Sans,sans-serif\" \
         font-size=\"11\"><text x=\"{lx}\" y=\"14\">{label}</text>\
         <text x=\"{mx}\" y=\"14\" data-outcome=\"{message}\">{message}</text></g></svg>",
        w = lw + mw,
        lx = lw / 2,
        mx = lw + mw / 2,
    );
    svg
}

/// The message of an item badge: its outcome, and how many of its jobs are unfinished.
pub fn item_message(outcome: Option<&str>, pending: i64) -> String {
    match (outcome, pending) {
        (Some(o), 0) => o.to_string(),
        (Some(o), n) => format!("{o}, {n} pending"),
        (None, 0) => "no results".to_string(),
        (None, n) => format!("{n} pending"),
    }
}

/// `name.svg` → `name`; anything else is not a badge.
fn strip_svg(path: &str) -> Result<&str, ApiError> {
    path.strip_suffix(".svg")
        .filter(|name| !name.is_empty())
        .ok_or_else(|| ApiError::not_found("Not found: badges end in .svg"))
}

/// Refuse any key but `allowed`.
fn check_keys(query: &[(String, String)], allowed: &[&str]) -> Result<(), ApiError> {
    match query.iter().find(|(k, _)| !allowed.contains(&k.as_str())) {
        Some((key, _)) => Err(ApiError::bad_request(format!(
            "unknown query key {key:?}; the accepted keys are {}",
            allowed.join(", ")
        ))),
        None => Ok(()),
    }
}

/// `GET /badge/items/<item>.svg`.
pub async fn item(
    State(state): State<SharedState>,
    Path(path): Path<String>,
    Query(query): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let item = strip_svg(&path)?;
    check_keys(&query, &["testcase", "arch"])?;
    let testcases = list(&query, "testcase").unwrap_or_default();
    let arches = list(&query, "arch").unwrap_or_default();
    let latest = "SELECT DISTINCT ON (r.testcase, r.arch) r.outcome FROM results r \
                  WHERE r.item = $1 \
                    AND (cardinality($2::text[]) = 0 OR r.testcase = ANY($2)) \
                    AND (cardinality($3::text[]) = 0 OR r.arch = ANY($3)) \
                  ORDER BY r.testcase, r.arch, r.finished_at DESC, r.stored_at DESC";
    let client = state.store.client().await?;
    let outcome: Option<String> = client
        .query_opt(
            &jobs::worst_outcome_sql(latest),
            &[&item, &testcases, &arches],
        )
        .await?
        .map(|r| r.try_get(0))
        .transpose()?;
    let unfinished = JobFilter {
        items: vec![item.to_string()],
        testcases: testcases.clone(),
        arches,
        ..JobFilter::default()
    };
    let mut c = unfinished.conditions();
    let finals = c.param(
        FINAL_STATES
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>(),
    );
    c.push(format!("NOT (j.state = ANY({finals}))"));
    let pending: i64 = client
        .query_one(
            &format!("SELECT count(*) FROM jobs j {}", c.where_sql()),
            &c.refs(),
        )
        .await?
        .try_get(0)?;
    let label = match testcases.as_slice() {
        [one] => one.as_str(),
        _ => "taskbot",
    };
    Ok(html::svg(render(
        label,
        &item_message(outcome.as_deref(), pending),
        colour(outcome.as_deref()),
    )))
}

/// `GET /badge/testcases/<testcase>.svg`.
pub async fn testcase(
    State(state): State<SharedState>,
    Path(path): Path<String>,
    Query(query): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let testcase = strip_svg(&path)?;
    check_keys(&query, &["item", "arch"])?;
    let items = list(&query, "item").unwrap_or_default();
    let arches = list(&query, "arch").unwrap_or_default();
    let client = state.store.client().await?;
    let outcome: Option<String> = client
        .query_opt(
            "SELECT r.outcome FROM results r WHERE r.testcase = $1 \
               AND (cardinality($2::text[]) = 0 OR r.item = ANY($2)) \
               AND (cardinality($3::text[]) = 0 OR r.arch = ANY($3)) \
             ORDER BY r.finished_at DESC, r.stored_at DESC LIMIT 1",
            &[&testcase, &items, &arches],
        )
        .await?
        .map(|r| r.try_get(0))
        .transpose()?;
    Ok(html::svg(render(
        testcase,
        outcome.as_deref().unwrap_or("no results"),
        colour(outcome.as_deref()),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_badge_has_the_outcomes_text_and_colour_and_escapes_its_label() {
        let svg = render("<script>x</script>", "FAILED", colour(Some("FAILED")));
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        assert!(!svg.contains("<script>"), "{svg}");
        assert!(
            svg.contains("&lt;script&gt;x&lt;/script&gt;: FAILED"),
            "{svg}"
        );
        assert!(svg.contains("fill=\"#cf222e\""));
        assert!(svg.contains(">FAILED</text>"));
        assert_ne!(colour(Some("FAILED")), colour(Some("PASSED")));
        assert_eq!(colour(Some("bogus")), colour(None));
        let long = render(&"x".repeat(500), "PASSED", colour(Some("PASSED")));
        assert!(long.len() < 1500, "{}", long.len());
    }

    #[test]
    fn item_messages_count_unfinished_jobs() {
        assert_eq!(item_message(Some("FAILED"), 0), "FAILED");
        assert_eq!(item_message(Some("PASSED"), 2), "PASSED, 2 pending");
        assert_eq!(item_message(None, 0), "no results");
        assert_eq!(item_message(None, 1), "1 pending");
        assert!(strip_svg("a.svg").is_ok() && strip_svg("a.png").is_err());
        assert!(strip_svg(".svg").is_err());
    }
}
