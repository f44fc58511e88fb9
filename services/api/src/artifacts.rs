//! `/api/v1/jobs/<id>/artifacts/<path>`: a job's logs and artifacts, from
//! `<artifacts_dir>/<job id>/`, and nothing outside it.
//!
//! Tasks write these files, and may still be writing them while they are served, so their names
//! and links are not trusted: the request path may not hold `..`, `.` or an absolute part, and
//! the file is opened with `openat2(2)` beneath the job's directory without following any
//! symbolic link on the way ([`taskbot::artifacts::open_beneath`]), then checked as opened:
//! only a directory, or a regular file with a single link, is answered. A hard link could be a
//! host file, a FIFO would hang the reader. What is checked is the open file itself, so swapping
//! a name after the check changes nothing. A directory is answered with the list of the entries
//! that would be served.

use std::fs::{File, Metadata};
use std::os::fd::AsRawFd as _;
use std::path::{Component, Path as FsPath};

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use taskbot::artifacts::{check_regular, is_link_refusal, open_beneath};
use tokio::io::AsyncReadExt as _;
use uuid::Uuid;

use crate::links;
use crate::store::ApiError;
use crate::SharedState;

/// What a request path leads to.
#[derive(Debug)]
pub enum Resolve {
    /// A regular file of one link, open.
    File(File, Metadata),
    /// A directory, open.
    Dir(File),
    NotFound,
    /// Traversal (`..`, an absolute path), a symbolic link on the way, or a file that is not
    /// served (a hard link, a FIFO, a device): why.
    Refused(String),
}

/// Open `request` (relative, `/`-separated) under `job_dir`.
pub fn resolve(job_dir: &FsPath, request: &str) -> Resolve {
    let relative = FsPath::new(request);
    for component in relative.components() {
        let why = match component {
            Component::Normal(_) => continue,
            Component::ParentDir => "path may not contain '..'",
            Component::CurDir => "path may not contain '.'",
            Component::RootDir | Component::Prefix(_) => "path must be relative",
        };
        return Resolve::Refused(why.into());
    }
    if request.contains('\0') {
        return Resolve::Refused("path may not contain NUL".into());
    }
    let file = match open_beneath(job_dir, relative) {
        Ok(file) => file,
        Err(e) if is_link_refusal(&e) => {
            return Resolve::Refused(
                "path is or passes a symbolic link; only regular files are served".into(),
            )
        }
        Err(_) => return Resolve::NotFound,
    };
    let Ok(meta) = file.metadata() else {
        return Resolve::NotFound;
    };
    if meta.is_dir() {
        return Resolve::Dir(file);
    }
    match check_regular(&meta) {
        Ok(()) => Resolve::File(file, meta),
        Err(why) => Resolve::Refused(format!("not served: {why}")),
    }
}

/// The entries of the open directory `dir` that would be served (directories, and regular files
/// of one link), as (name, is a directory, size), sorted by name.
pub fn list(dir: &File) -> Vec<(String, bool, u64)> {
    // Read through the open descriptor, so the listing is of the directory that was checked.
    let Ok(entries) = std::fs::read_dir(format!("/proc/self/fd/{}", dir.as_raw_fd())) else {
        return Vec::new();
    };
    let mut out: Vec<(String, bool, u64)> = entries
        .flatten()
        .filter_map(|entry| {
            // The entry's own metadata, never a link's target.
            let meta = entry.metadata().ok()?;
            let served = meta.is_dir() || check_regular(&meta).is_ok();
            served.then(|| {
                let name = entry.file_name().to_string_lossy().into_owned();
                (
                    name,
                    meta.is_dir(),
                    if meta.is_dir() { 0 } else { meta.len() },
                )
            })
        })
        .collect();
    out.sort();
    out
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
    let request = request.trim_end_matches('/').to_string();
    let lookup = tokio::task::spawn_blocking({
        let request = request.clone();
        move || match resolve(&job_dir, &request) {
            Resolve::Dir(dir) => Ok(Err(list(&dir))),
            Resolve::File(file, meta) => Ok(Ok((file, meta))),
            Resolve::NotFound => Err(None),
            Resolve::Refused(why) => Err(Some(why)),
        }
    })
    .await
    .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "lookup failed"))?;
    match lookup {
        Ok(Ok((file, meta))) => Ok(file_response(file, &meta, &request)),
        Ok(Err(entries)) => Ok(listing(state, headers, job_id, &request, entries)),
        Err(None) => Err(ApiError::not_found("Artifact not found")),
        Err(Some(why)) => {
            tracing::warn!(job_id = %job_id, path = request, why, "artifact request refused");
            Err(ApiError::new(StatusCode::FORBIDDEN, &why))
        }
    }
}

/// The file streamed from the descriptor that was checked, never read whole into memory.
fn file_response(file: File, meta: &Metadata, request: &str) -> Response {
    let file = tokio::fs::File::from_std(file);
    let chunks = futures::stream::unfold(file, |mut file| async move {
        let mut chunk = vec![0; 64 * 1024];
        match file.read(&mut chunk).await {
            Ok(0) => None,
            Ok(n) => {
                chunk.truncate(n);
                Some((Ok::<_, std::io::Error>(chunk), file))
            }
            Err(e) => Some((Err(e), file)),
        }
    });
    (
        [
            (
                header::CONTENT_TYPE,
                content_type(FsPath::new(request)).to_string(),
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_string()),
            (header::CONTENT_LENGTH, meta.len().to_string()),
        ],
        Body::from_stream(chunks),
    )
        .into_response()
}

/// A directory's listing, with links to its entries.
fn listing(
    state: &crate::AppState,
    headers: &HeaderMap,
    job_id: Uuid,
    request: &str,
    entries: Vec<(String, bool, u64)>,
) -> Response {
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
    let entries: Vec<serde_json::Value> = entries
        .into_iter()
        .map(|(name, is_dir, size)| {
            let suffix = if is_dir { "/" } else { "" };
            json!({
                "name": name,
                "type": if is_dir { "directory" } else { "file" },
                "size": size,
                "href": format!("{dir_url}{}{suffix}", links::encode_segment(&name)),
            })
        })
        .collect();
    Json(json!({"job_id": job_id.to_string(), "path": request, "entries": entries})).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traversal_is_refused_before_touching_the_disk() {
        let dir = FsPath::new("/nonexistent/job");
        for path in ["../other/x", "a/../../x", "/etc/passwd", "./x"] {
            assert!(matches!(resolve(dir, path), Resolve::Refused(_)), "{path}");
        }
        assert!(matches!(resolve(dir, "task.log"), Resolve::NotFound));
    }

    #[test]
    fn only_directories_and_regular_files_of_one_link_are_opened() {
        let tmp = tempfile::tempdir().unwrap();
        let job = tmp.path().join("job");
        std::fs::create_dir_all(job.join("logs")).unwrap();
        std::fs::write(job.join("logs/task.log"), "ok").unwrap();
        std::fs::write(tmp.path().join("secret"), "no").unwrap();
        std::os::unix::fs::symlink(tmp.path().join("secret"), job.join("escape")).unwrap();
        std::os::unix::fs::symlink(tmp.path(), job.join("up")).unwrap();
        std::os::unix::fs::symlink(job.join("logs/task.log"), job.join("latest.log")).unwrap();
        std::os::unix::fs::symlink("logs", job.join("inside")).unwrap();
        std::fs::hard_link(tmp.path().join("secret"), job.join("hard")).unwrap();
        let fifo = std::ffi::CString::new(job.join("fifo").as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: mkfifo reads a valid C string.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        for path in [
            "escape",
            "up/secret",
            "latest.log",
            "inside/task.log",
            "hard",
            "fifo",
        ] {
            assert!(matches!(resolve(&job, path), Resolve::Refused(_)), "{path}");
        }
        match resolve(&job, "logs/task.log") {
            Resolve::File(_, meta) => assert_eq!(meta.len(), 2),
            other => panic!("{other:?}"),
        }
        let Resolve::Dir(dir) = resolve(&job, "") else {
            panic!("the job's directory")
        };
        assert_eq!(list(&dir), [("logs".to_string(), true, 0)]);
    }
}
