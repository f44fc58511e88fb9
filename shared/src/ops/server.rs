//! The HTTP endpoints every service serves on its `ops_listen` address: `/healthz`, `/readyz`
//! and `/metrics`; and a plain HTTP GET for the tests of them.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use super::{Ops, METRICS_CONTENT_TYPE};

/// The routes: `/healthz` (the process answers), `/readyz` (see [`super::Readiness`]),
/// `/metrics`. The JSON answers are those of the api's own `/healthz` and `/readyz`.
pub fn router(ops: Arc<Ops>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(ops)
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

async fn readyz(State(ops): State<Arc<Ops>>) -> Response {
    match ops.readiness.check() {
        Ok(()) => Json(json!({"status": "ready"})).into_response(),
        Err(message) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not ready", "message": message})),
        )
            .into_response(),
    }
}

async fn metrics(State(ops): State<Arc<Ops>>) -> Response {
    ([(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)], ops.render()).into_response()
}

/// The running endpoints: where they listen, and the task serving them (aborted on drop).
pub struct Server {
    pub address: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Listen on `address` (`host:port`; port 0 picks a free one) and serve [`router`] in the
/// background. The address actually bound is logged, as `ops endpoints on http://HOST:PORT/`,
/// so whoever asked for port 0 can find it.
pub async fn serve(address: &str, ops: Arc<Ops>) -> anyhow::Result<Server> {
    let listener = tokio::net::TcpListener::bind(address).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot listen on {address} for /healthz, /readyz and /metrics: {e} (set another address with --ops-listen; port 0 picks a free one)"
        )
    })?;
    let bound = listener.local_addr()?;
    tracing::info!(address = %bound, "ops endpoints on http://{bound}/ (/healthz, /readyz, /metrics)");
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router(ops)).await {
            tracing::error!(error = %e, "ops endpoints stopped");
        }
    });
    Ok(Server {
        address: bound,
        task,
    })
}

/// A plain HTTP/1.1 GET (status, body), for tests of the endpoints without an HTTP client crate.
#[cfg(any(test, feature = "testing"))]
pub async fn http_get(address: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "not an HTTP answer");
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(bad)?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(bad)?;
    Ok((status, body.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::sample;

    #[tokio::test]
    async fn endpoints_answer_health_readiness_and_metrics() {
        let ops = Arc::new(Ops::new());
        let server = serve("127.0.0.1:0", ops.clone()).await.unwrap();
        assert_ne!(server.address.port(), 0, "the bound port is reported");
        let (status, body) = http_get(server.address, "/healthz").await.unwrap();
        assert_eq!((status, body.as_str()), (200, r#"{"status":"ok"}"#));
        let (status, body) = http_get(server.address, "/readyz").await.unwrap();
        assert_eq!(status, 503, "{body}");
        let flag = ops.readiness.part("tb.provisioner");
        flag.set(true);
        let (status, _) = http_get(server.address, "/readyz").await.unwrap();
        assert_eq!(status, 200);
        flag.set(false);
        let (status, body) = http_get(server.address, "/readyz").await.unwrap();
        assert_eq!(status, 503);
        assert!(body.contains("tb.provisioner"), "{body}");
        ops.amqp.published.with(&["tb.jobs"]).inc();
        let (status, body) = http_get(server.address, "/metrics").await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(
            sample(
                &body,
                "taskbot_messages_published_total{exchange=\"tb.jobs\"}"
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(&body, "taskbot_ready{part=\"tb.provisioner\"}"),
            Some(0.0)
        );
    }

    #[tokio::test]
    async fn an_address_in_use_is_a_clear_error() {
        let ops = Arc::new(Ops::new());
        let first = serve("127.0.0.1:0", ops.clone()).await.unwrap();
        let err = serve(&first.address.to_string(), ops)
            .await
            .err()
            .expect("second bind fails")
            .to_string();
        assert!(err.contains(&first.address.to_string()), "{err}");
        assert!(err.contains("--ops-listen"), "{err}");
    }
}
