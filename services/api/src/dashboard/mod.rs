//! The web dashboard, rendered on the server as plain HTML: nothing to build, no script in the
//! browser (every page reads without JavaScript, and the Content-Security-Policy allows none),
//! and what a test reads in the page is exactly what was rendered.
//!
//! - `/` redirects to `/dashboard`;
//! - `/dashboard` ([`search`]): search by package or item prefix, filters by outcome, testcase,
//!   arch, state and creation time, the matching jobs with their outcome, 30 a page; on the
//!   unfiltered first page also the queues, runners and jobs by state;
//! - `/dashboard/items/<item>` ([`item`]): the latest result of each testcase on each arch, with
//!   the earlier ones under it;
//! - `/dashboard/jobs/<id>` ([`job`]): a job's fields, results, history, files and log's end;
//! - `/dashboard/jobs/<id>/files/<path>` ([`files`]): a job's files as links, its logs as lines
//!   with anchors (`#L12`);
//! - `/badge/...svg` ([`crate::badge`]): an item's or testcase's outcome as an SVG badge.
//!
//! Queue figures come from RabbitMQ's management API (`taskbot::management`, as for `taskbot
//! status`); everything else from the reporter's tables. Re-run and cancel buttons are not here:
//! they need authenticated write endpoints; [`html::actions`] marks where they go.

pub mod files;
pub mod html;
pub mod item;
pub mod job;
pub mod queues;
pub mod search;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};

pub use html::escape;
pub use job::{job, read_tail, LogTail};
pub use search::JobRow;

use crate::SharedState;
use html::PageError;

/// Seconds between two reloads of a page that reloads itself (a job's page until the job is
/// final; the front page when asked with `refresh=`).
pub const REFRESH_SECS: u32 = 5;

/// `GET /`: the dashboard is the api's human face.
pub async fn root() -> Response {
    Redirect::to("/dashboard").into_response()
}

/// `GET /dashboard` (see [`search`]).
pub async fn dashboard(
    State(state): State<SharedState>,
    Query(query): Query<Vec<(String, String)>>,
) -> Result<Response, PageError> {
    let search = search::Search::parse(&query)?;
    let filter = match search.filter() {
        Ok(filter) => filter,
        // The form again, with what is wrong in it.
        Err(error) => {
            let page = search::render(
                &search,
                &search::Front {
                    items: None,
                    jobs: &[],
                    more: false,
                    operators: None,
                    error: Some(&error.message),
                },
            );
            return Ok(html::html(error.status, page));
        }
    };
    let client = state.store.client().await?;
    let items = if search.q.is_empty() {
        None
    } else {
        Some(search::find_items(&client, &search.q).await?)
    };
    let (jobs, more) = search::find_jobs(&client, &filter, search.page).await?;
    let operators = if search.is_front() {
        let states = client
            .query(
                "SELECT state, count(*) FROM jobs GROUP BY state ORDER BY state",
                &[],
            )
            .await?
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect::<Result<Vec<(String, i64)>, tokio_postgres::Error>>()?;
        drop(client);
        let status = match &state.management {
            Ok(management) => management.status(&state.namespace).await,
            Err(e) => Err(e.clone()),
        };
        Some((status, states))
    } else {
        None
    };
    let page = search::render(
        &search,
        &search::Front {
            items: items.as_deref(),
            jobs: &jobs,
            more,
            operators: operators.as_ref().map(|(s, t)| (s, t.as_slice())),
            error: None,
        },
    );
    Ok(html::html(StatusCode::OK, page))
}

#[cfg(test)]
mod tests {
    use super::search::{render, Front, Search};
    use taskbot::management::{classify, QueueStats};

    #[test]
    fn the_front_page_shows_queues_runners_states_and_jobs_escaped() {
        let status = Ok(classify(
            "tb",
            &[
                QueueStats {
                    name: "tb.rules".into(),
                    ready: 3,
                    consumers: 1,
                    ..Default::default()
                },
                QueueStats {
                    name: "tb.run.x86_64".into(),
                    ready: 0,
                    consumers: 2,
                    ..Default::default()
                },
                QueueStats {
                    name: "tb.rules.dead".into(),
                    ready: 1,
                    ..Default::default()
                },
            ],
        ));
        let states = [("done".to_string(), 4), ("<x>".to_string(), 1)];
        let front = |status| Front {
            items: None,
            jobs: &[],
            more: false,
            operators: Some((status, &states)),
            error: None,
        };
        let html = render(&Search::default(), &front(&status));
        assert!(
            html.contains("<tr class=\"bad\" data-queue=\"tb.rules\">"),
            "{html}"
        );
        assert!(
            html.contains("<td class=\"n\" data-field=\"ready\">3</td>"),
            "{html}"
        );
        assert!(
            html.contains("<tr data-arch=\"x86_64\"><td>x86_64</td><td class=\"n\">2</td></tr>"),
            "{html}"
        );
        assert!(
            html.contains("<tr data-state=\"done\"><td><a href=\"/dashboard?state=done\">"),
            "{html}"
        );
        assert!(html.contains("data-state=\"&lt;x&gt;\""), "{html}");
        assert!(!html.contains("<x>"), "{html}");
        // Reloading only when asked: a form must not reload under the typing.
        assert!(!html.contains("http-equiv=\"refresh\""));
        assert!(html.contains("href=\"/dashboard?refresh=5\""), "{html}");
        let refreshing = Search {
            refresh: Some(5),
            ..Search::default()
        };
        let html = render(&refreshing, &front(&status));
        assert!(html.contains("<meta http-equiv=\"refresh\" content=\"5\">"));
        let unknown = Err("cannot read <x>".to_string());
        let html = render(&Search::default(), &front(&unknown));
        assert!(
            html.contains("Queues unknown: cannot read &lt;x&gt;"),
            "{html}"
        );
    }
}
