//! The `api` service: Taskbot's results store (the PostgreSQL tables the reporter writes) over
//! HTTP, read-only.
//!
//! - `/api/v2.0/...`: ResultsDB v2.0-compatible reads ([`resultsdb`]), so existing ResultsDB
//!   clients and gating tools can read Taskbot's store directly;
//! - `/api/v1/jobs...`: jobs with their state history, results and logs ([`jobs`]), and each job's
//!   artifact files served without path traversal ([`artifacts`]);
//! - `/dashboard...` and `/badge/...`: the web dashboard ([`dashboard`]) and status badges
//!   ([`badge`]), HTML and SVG for people; `/` leads to the dashboard;
//! - `/healthz` (the process answers), `/readyz` (the database answers and has the tables),
//!   `/openapi.json` (the description of all of this).
//!
//! The api creates nothing: the schema is `taskbot::store`'s, and the reporter applies it. Until the
//! reporter has created the tables, store endpoints answer 503 "store not ready" instead of failing.

pub mod artifacts;
pub mod badge;
pub mod dashboard;
pub mod input;
pub mod jobs;
pub mod links;
pub mod resultsdb;
pub mod store;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use taskbot::{Config, Shutdown};
use tokio::net::TcpListener;

pub use store::ApiError;

/// The OpenAPI 3 description served at `/openapi.json` (hand-written; a test checks it lists
/// every route in [`ROUTES`]).
pub const OPENAPI: &str = include_str!("openapi.json");

/// Every route the api serves, in axum's syntax (which OpenAPI shares: `{id}`; a wildcard such as
/// the artifact path is `{*path}` in axum and `{path}` in OpenAPI).
pub const ROUTES: &[&str] = &[
    "/healthz",
    "/readyz",
    "/openapi.json",
    "/api/v2.0/healthcheck",
    "/api/v2.0/results",
    "/api/v2.0/results/latest",
    "/api/v2.0/results/{id}",
    "/api/v2.0/testcases",
    "/api/v2.0/testcases/{name}",
    "/api/v2.0/groups",
    "/api/v2.0/groups/{uuid}",
    "/api/v1/jobs",
    "/api/v1/job-states",
    "/api/v1/jobs/{id}",
    "/api/v1/jobs/{id}/artifacts",
    "/api/v1/jobs/{id}/artifacts/{*path}",
    "/artifacts/{id}",
    "/artifacts/{id}/{*path}",
    "/",
    "/dashboard",
    "/dashboard/items/{*item}",
    "/dashboard/jobs/{id}",
    "/dashboard/jobs/{id}/files",
    "/dashboard/jobs/{id}/files/{*path}",
    "/badge/items/{*item}",
    "/badge/testcases/{*testcase}",
    "/metrics",
];

/// What every handler needs.
pub struct AppState {
    /// The database, by request class (see [`store::Store`]).
    pub store: store::Store,
    /// `api.public_url` without its trailing slash; `None` means "from the request's Host".
    pub public_url: Option<String>,
    /// Root of the job artifact directories (`<artifacts_dir>/<job id>/`).
    pub artifacts_dir: PathBuf,
    /// Where the runners publish the same files ([`Config::artifacts_url`]), if anywhere.
    pub artifacts_url: Option<String>,
    /// RabbitMQ's management API (for the dashboard's queues), or why it cannot be used.
    pub management: Result<taskbot::management::Management, String>,
    /// `amqp.namespace`: whose queues the dashboard shows.
    pub namespace: String,
    /// The public link to a job ([`Config::job_page_template`], `{job_id}` in it): the
    /// `ref_url` of its ResultsDB group, as the reporter's sink posts it.
    pub job_page_template: Option<String>,
}

pub type SharedState = Arc<AppState>;

impl AppState {
    pub fn new(config: &Config) -> anyhow::Result<AppState> {
        Ok(AppState {
            store: store::Store::connect(config)?,
            public_url: config
                .api
                .public_url
                .as_ref()
                .map(|u| u.trim_end_matches('/').to_string()),
            artifacts_dir: config
                .api
                .artifacts_dir
                .clone()
                .unwrap_or_else(|| config.runner.artifacts_dir.clone()),
            artifacts_url: config.artifacts_url(),
            management: taskbot::management::Management::new(config),
            namespace: config.amqp.namespace.clone(),
            job_page_template: config.job_page_template(),
        })
    }
}

/// All routes over `state`.
pub fn router(state: SharedState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/openapi.json", get(openapi))
        .route("/api/v2.0/healthcheck", get(resultsdb::healthcheck))
        .route("/api/v2.0/results", get(resultsdb::get_results))
        .route(
            "/api/v2.0/results/latest",
            get(resultsdb::get_results_latest),
        )
        .route("/api/v2.0/results/{id}", get(resultsdb::get_result))
        .route("/api/v2.0/testcases", get(resultsdb::get_testcases))
        .route("/api/v2.0/testcases/{name}", get(resultsdb::get_testcase))
        .route("/api/v2.0/groups", get(resultsdb::get_groups))
        .route("/api/v2.0/groups/{uuid}", get(resultsdb::get_group))
        .route("/api/v1/jobs", get(jobs::list_jobs))
        .route("/api/v1/job-states", get(jobs::job_states))
        .route("/api/v1/jobs/{id}", get(jobs::get_job))
        .route("/api/v1/jobs/{id}/artifacts", get(artifacts::get_root))
        .route("/api/v1/jobs/{id}/artifacts/", get(artifacts::get_root))
        .route(
            "/api/v1/jobs/{id}/artifacts/{*path}",
            get(artifacts::get_path),
        )
        // The same files as `<runner.artifacts_url>/<job id>/<path>`, when the runners' artifacts
        // URL is `<api>/artifacts`: the links in results and the URLs tasks announce.
        .route("/artifacts/{id}", get(artifacts::get_root))
        .route("/artifacts/{id}/", get(artifacts::get_root))
        .route("/artifacts/{id}/{*path}", get(artifacts::get_path))
        .route("/metrics", get(metrics))
        .route("/", get(dashboard::root))
        .route("/dashboard", get(dashboard::dashboard))
        .route("/dashboard/", get(dashboard::root))
        .route("/dashboard/items/{*item}", get(dashboard::item::item))
        .route("/dashboard/jobs/{id}", get(dashboard::job))
        .route("/dashboard/jobs/{id}/files", get(dashboard::files::root))
        .route("/dashboard/jobs/{id}/files/", get(dashboard::files::root))
        .route(
            "/dashboard/jobs/{id}/files/{*path}",
            get(dashboard::files::path),
        )
        .route("/badge/items/{*item}", get(badge::item))
        .route("/badge/testcases/{*testcase}", get(badge::testcase))
        .fallback(not_found)
        .layer(axum::middleware::from_fn(input::check_request))
        .layer(axum::middleware::from_fn(count_request))
        .with_state(state)
}

/// Serve on `config.api.listen` until `shutdown`.
pub async fn run(config: Config, shutdown: Shutdown) -> anyhow::Result<()> {
    let listener = TcpListener::bind(&config.api.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.api.listen))?;
    serve(config, listener, shutdown).await
}

/// Serve on an already bound listener (tests bind port 0 and read the address first).
pub async fn serve(
    config: Config,
    listener: TcpListener,
    mut shutdown: Shutdown,
) -> anyhow::Result<()> {
    let state = Arc::new(AppState::new(&config)?);
    let address: SocketAddr = listener.local_addr()?;
    tracing::info!(
        %address,
        database = %store::database_name(&config.postgres.url),
        artifacts_dir = %state.artifacts_dir.display(),
        "api listening"
    );
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async move { shutdown.wait().await })
        .await?;
    tracing::info!("api stopped");
    Ok(())
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// Ready when the database answers and the reporter has created the tables: before that, every
/// store endpoint would answer 503.
async fn readyz(State(state): State<SharedState>) -> Response {
    match state.store.check_ready().await {
        Ok(()) => Json(json!({"status": "ready"})).into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not ready", "message": e.message})),
        )
            .into_response(),
    }
}

/// Prometheus metrics: requests by route and status, and their durations (the same text format
/// as every service's `/metrics`).
async fn metrics() -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        taskbot::ops::global().render(),
    )
        .into_response()
}

/// Count each request under its route pattern (`/api/v1/jobs/{id}`, not the id: one series per
/// route, whatever the ids), its status, and how long it took.
async fn count_request(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    static METRICS: std::sync::OnceLock<(
        taskbot::ops::CounterFamily,
        taskbot::ops::HistogramFamily,
    )> = std::sync::OnceLock::new();
    let (requests, seconds) = METRICS.get_or_init(|| {
        let registry = &taskbot::ops::global().registry;
        (
            registry.counter(
                "taskbot_http_requests_total",
                "HTTP requests answered, by route and status.",
                &["route", "status"],
            ),
            registry.histogram(
                "taskbot_http_request_duration_seconds",
                "Time to answer HTTP requests, by route.",
                &["route"],
                &[0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0],
            ),
        )
    });
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "(unknown)".to_string(), |p| p.as_str().to_string());
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    requests.with(&[&route, response.status().as_str()]).inc();
    seconds
        .with(&[&route])
        .observe(started.elapsed().as_secs_f64());
    response
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

/// Unknown routes answer like ResultsDB does (`{"message": "Not found"}`), so clients that read
/// `message` from errors keep working.
async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "Not found")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openapi_parses_and_lists_every_route() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).expect("openapi.json is JSON");
        assert!(doc["openapi"].as_str().unwrap_or("").starts_with("3."));
        let paths = doc["paths"].as_object().expect("paths");
        for route in ROUTES {
            let openapi_path = route.replace("{*", "{");
            assert!(
                paths.contains_key(&openapi_path),
                "{openapi_path} missing from openapi.json"
            );
            assert!(
                paths[&openapi_path].get("get").is_some(),
                "{openapi_path} has no GET"
            );
        }
        assert_eq!(
            paths.len(),
            ROUTES.len(),
            "openapi.json lists a route the api lacks"
        );
    }
}
