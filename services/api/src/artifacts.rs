//! `/api/v1/jobs/<id>/artifacts/<path>`: a job's logs and artifacts, from
//! `<artifacts_dir>/<job id>/`, and nothing outside it.
//!
//! Tasks write these files, so their names and links are not trusted: the request path may not
//! hold `..`, `.` or an absolute part, and the file found must, once every symlink is resolved,
//! still be inside the job's directory (a task could leave `logs -> /etc`). A directory is
//! answered with the list of its entries.

use std::path::{Component, Path as FsPath, PathBuf};

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use uuid::Uuid;

use crate::links;
use crate::store::ApiError;
use crate::SharedState;

/// Why a request path is refused or not found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolve {
    /// The file or directory, canonical and inside the job's directory.
    Found(PathBuf),
    NotFound,
    /// Traversal: `..`, an absolute path, or a link leading outside the job's directory.
    Refused(&'static str),
}

/// Resolve `request` (relative, `/`-separated) under `job_dir`.
pub fn resolve(job_dir: &FsPath, request: &str) -> Resolve {
    let relative = FsPath::new(request);
    for component in relative.components() {
        match component {
            Component::Normal(_) => {}
            Component::ParentDir => return Resolve::Refused("path may not contain '..'"),
            Component::CurDir => return Resolve::Refused("path may not contain '.'"),
            Component::RootDir | Component::Prefix(_) => {
                return Resolve::Refused("path must be relative")
            }
        }
    }
    if request.contains('\0') {
        return Resolve::Refused("path may not contain NUL");
    }
    let Ok(root) = job_dir.canonicalize() else {
        return Resolve::NotFound;
    };
    let Ok(target) = root.join(relative).canonicalize() else {
        return Resolve::NotFound;
    };
    if target.starts_with(&root) {
        Resolve::Found(target)
    } else {
        Resolve::Refused("path leads outside the job's artifacts")
    }
}

fn content_type(path: &FsPath) -> &'static str {
    match path.extension().and_then(|e| e.to_str()).unwrap_or("") {
        "log" | "txt" | "out" | "err" => "text/plain; charset=utf-8",
        "json" => "application/json",
        "yml" | "yaml" => "application/yaml",
        "html" | "htm" => "text/plain; charset=utf-8", // never rendered as a page from our origin
        "xml" => "application/xml",
        _ => "application/octet-stream",
    }
}

/// `GET /api/v1/jobs/<id>/artifacts`: the job directory's listing.
pub async fn get_root(
    State(state): State<SharedState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    serve(&state, &headers, &id, "").await
}

/// `GET /api/v1/jobs/<id>/artifacts/<path>`.
pub async fn get_path(
    State(state): State<SharedState>,
    headers: HeaderMap,
    Path((id, path)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    serve(&state, &headers, &id, &path).await
}

async fn serve(
    state: &crate::AppState,
    headers: &HeaderMap,
    id: &str,
    request: &str,
) -> Result<Response, ApiError> {
    // The id names a directory: only a UUID may, so it cannot be `..` or a path itself.
    let Ok(job_id) = Uuid::parse_str(id) else {
        return Err(ApiError::not_found("Job not found"));
    };
    let job_dir = state.artifacts_dir.join(job_id.to_string());
    let request = request.trim_end_matches('/');
    let target = match tokio::task::spawn_blocking({
        let job_dir = job_dir.clone();
        let request = request.to_string();
        move || resolve(&job_dir, &request)
    })
    .await
    .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "lookup failed"))?
    {
        Resolve::Found(target) => target,
        Resolve::NotFound => return Err(ApiError::not_found("Artifact not found")),
        Resolve::Refused(why) => {
            tracing::warn!(job_id = %job_id, path = request, why, "artifact request refused");
            return Err(ApiError::new(StatusCode::FORBIDDEN, why));
        }
    };
    let metadata = tokio::fs::metadata(&target)
        .await
        .map_err(|_| ApiError::not_found("Artifact not found"))?;
    if metadata.is_dir() {
        let base = links::base_url(state, headers);
        let dir_url = if request.is_empty() {
            format!("{base}/api/v1/jobs/{job_id}/artifacts/")
        } else {
            let encoded: Vec<String> = request.split('/').map(links::encode_segment).collect();
            format!(
                "{base}/api/v1/jobs/{job_id}/artifacts/{}/",
                encoded.join("/")
            )
        };
        let mut entries = Vec::new();
        let mut reader = tokio::fs::read_dir(&target)
            .await
            .map_err(|_| ApiError::not_found("Artifact not found"))?;
        while let Ok(Some(entry)) = reader.next_entry().await {
            let name = entry.file_name().to_string_lossy().into_owned();
            let is_dir = entry.file_type().await.map(|t| t.is_dir()).unwrap_or(false);
            let size = entry.metadata().await.map(|m| m.len()).unwrap_or(0);
            let suffix = if is_dir { "/" } else { "" };
            entries.push(json!({
                "name": name,
                "type": if is_dir { "directory" } else { "file" },
                "size": size,
                "href": format!("{dir_url}{}{suffix}", links::encode_segment(&name)),
            }));
        }
        entries.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
        return Ok(Json(
            json!({"job_id": job_id.to_string(), "path": request, "entries": entries}),
        )
        .into_response());
    }
    let bytes = tokio::fs::read(&target)
        .await
        .map_err(|_| ApiError::not_found("Artifact not found"))?;
    Ok((
        [
            (header::CONTENT_TYPE, content_type(&target)),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        bytes,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traversal_is_refused_before_touching_the_disk() {
        let dir = FsPath::new("/nonexistent/job");
        assert!(matches!(resolve(dir, "../other/x"), Resolve::Refused(_)));
        assert!(matches!(resolve(dir, "a/../../x"), Resolve::Refused(_)));
        assert!(matches!(resolve(dir, "/etc/passwd"), Resolve::Refused(_)));
        assert!(matches!(resolve(dir, "./x"), Resolve::Refused(_)));
        assert_eq!(resolve(dir, "task.log"), Resolve::NotFound);
    }

    #[test]
    fn symlinks_leading_outside_are_refused_and_inside_ones_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let job = tmp.path().join("job");
        std::fs::create_dir_all(job.join("logs")).unwrap();
        std::fs::write(job.join("logs/task.log"), "ok").unwrap();
        std::fs::write(tmp.path().join("secret"), "no").unwrap();
        std::os::unix::fs::symlink(tmp.path().join("secret"), job.join("escape")).unwrap();
        std::os::unix::fs::symlink(tmp.path(), job.join("up")).unwrap();
        std::os::unix::fs::symlink(job.join("logs/task.log"), job.join("latest.log")).unwrap();
        assert!(matches!(resolve(&job, "escape"), Resolve::Refused(_)));
        assert!(matches!(resolve(&job, "up/secret"), Resolve::Refused(_)));
        match resolve(&job, "latest.log") {
            Resolve::Found(p) => assert!(p.ends_with("logs/task.log")),
            other => panic!("{other:?}"),
        }
        assert!(matches!(resolve(&job, "logs/task.log"), Resolve::Found(_)));
    }
}
