//! Limits on what one request may carry, checked before any handler runs, so a malformed or
//! oversized request is a 400 with a clear message, never a database error (a 500) or a query
//! that keeps PostgreSQL busy.
//!
//! Each endpoint checks the meaning of its own parameters (an integer `page`, a known outcome, at
//! most [`MAX_DATA_FILTERS`] data filters); this layer checks what holds for every request: no
//! NUL anywhere (PostgreSQL cannot store it in text), and bounded sizes.

use axum::extract::{Query, Request};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::store::ApiError;

/// Longest query string, in bytes (before percent-decoding); below the 64 KiB an HTTP URI may
/// have at most.
pub const MAX_QUERY_BYTES: usize = 48 * 1024;
/// Longest path, in bytes (before percent-decoding).
pub const MAX_PATH_BYTES: usize = 8 * 1024;
/// Longest query key, in bytes (after percent-decoding).
pub const MAX_KEY_BYTES: usize = 256;
/// Longest query value, in bytes (after percent-decoding): a comma-separated list counts as one.
pub const MAX_VALUE_BYTES: usize = 8 * 1024;
/// Most filters on result data one `/api/v2.0/results` request may make (each is a subquery on
/// every candidate row; ResultsDB's clients use one to three).
pub const MAX_DATA_FILTERS: usize = 10;

/// The middleware: 400 for a request whose path or query breaks the limits above.
pub async fn check_request(request: Request, next: Next) -> Response {
    let uri = request.uri();
    if let Err(error) = check_path(uri.path()).and_then(|()| check_query(uri)) {
        return error.into_response();
    }
    next.run(request).await
}

fn check_path(path: &str) -> Result<(), ApiError> {
    if path.len() > MAX_PATH_BYTES {
        return Err(ApiError::bad_request(format!(
            "path too long: {} bytes, at most {MAX_PATH_BYTES}",
            path.len()
        )));
    }
    // `%00` is the only way a NUL reaches a path (the raw path cannot hold one).
    if path.to_ascii_lowercase().contains("%00") {
        return Err(ApiError::bad_request("path contains a NUL character (%00)"));
    }
    Ok(())
}

fn check_query(uri: &axum::http::Uri) -> Result<(), ApiError> {
    let Some(raw) = uri.query() else {
        return Ok(());
    };
    if raw.len() > MAX_QUERY_BYTES {
        return Err(ApiError::bad_request(format!(
            "query string too long: {} bytes, at most {MAX_QUERY_BYTES}",
            raw.len()
        )));
    }
    let Query(pairs) = Query::<Vec<(String, String)>>::try_from_uri(uri)
        .map_err(|e| ApiError::bad_request(format!("malformed query string: {e}")))?;
    for (key, value) in &pairs {
        check_pair(key, value)?;
    }
    Ok(())
}

/// One decoded `key=value` of a query.
pub fn check_pair(key: &str, value: &str) -> Result<(), ApiError> {
    let shown = |text: &str| {
        let mut shown: String = text.chars().take(40).collect();
        if shown.len() < text.len() {
            shown.push('…');
        }
        format!("{shown:?}")
    };
    if key.contains('\0') {
        return Err(ApiError::bad_request(format!(
            "query key {} contains a NUL character",
            shown(key)
        )));
    }
    if value.contains('\0') {
        return Err(ApiError::bad_request(format!(
            "value of {} contains a NUL character",
            shown(key)
        )));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(ApiError::bad_request(format!(
            "query key {} too long: {} bytes, at most {MAX_KEY_BYTES}",
            shown(key),
            key.len()
        )));
    }
    if value.len() > MAX_VALUE_BYTES {
        return Err(ApiError::bad_request(format!(
            "value of {} too long: {} bytes, at most {MAX_VALUE_BYTES}",
            shown(key),
            value.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    fn query(text: &str) -> Result<(), ApiError> {
        check_query(&format!("/x?{text}").parse().unwrap())
    }

    #[test]
    fn nul_anywhere_is_a_bad_request() {
        for text in ["a%00b=1", "a=1%002", "ok=1&%00=x"] {
            let err = query(text).unwrap_err();
            assert_eq!(err.status, StatusCode::BAD_REQUEST, "{text}");
            assert!(err.message.contains("NUL"), "{text}: {}", err.message);
        }
        assert!(check_path("/api/v2.0/testcases/a%00b").is_err());
        assert!(check_path("/api/v2.0/testcases/a%2500b").is_ok());
        assert!(query("item=a%2500b&x=%20").is_ok());
    }

    #[test]
    fn sizes_are_bounded() {
        let long_key = "k".repeat(MAX_KEY_BYTES + 1);
        assert!(query(&format!("{long_key}=1"))
            .unwrap_err()
            .message
            .contains("too long"));
        assert!(query(&format!("k={}", "v".repeat(MAX_VALUE_BYTES + 1))).is_err());
        assert!(query(&format!("k={}", "v".repeat(MAX_VALUE_BYTES))).is_ok());
        let many = vec!["k=v"; MAX_QUERY_BYTES / 4 + 1].join("&");
        assert!(query(&many).unwrap_err().message.contains("query string"));
        assert!(check_path(&"/a".repeat(MAX_PATH_BYTES)).is_err());
    }
}
