//! Fetching files over HTTP (a task's `downloads`, a VM image or ISO of the provisioner), with
//! retries, a size limit and a checksum, and progress lines in the job's log.
//!
//! Retried: connection errors, timeouts and 5xx answers (a mirror restarting, an overloaded
//! server), with doubling pauses. Not retried: 4xx (the file is not there; asking again will not
//! make it appear), a file over the size limit, a checksum mismatch. The size limit is enforced
//! while streaming, so a server that lies about (or omits) `Content-Length` cannot fill the disk.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

/// One file to fetch, with its URL already rendered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownloadSpec {
    pub url: String,
    /// Lower-case or upper-case hex.
    pub sha256: Option<String>,
    pub max_bytes: u64,
    pub dest: PathBuf,
}

/// How hard to try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub attempts: u32,
    /// Pause before the second attempt; doubles after each.
    pub first_pause: Duration,
}

/// Why a download failed; the text goes into a CRASHED result's note after the URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DownloadError {
    #[error("HTTP status {0}")]
    Status(u16),
    #[error("{0}")]
    Transport(String),
    #[error("larger than the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("SHA-256 mismatch: expected {expected}, got {actual}")]
    Checksum { expected: String, actual: String },
    #[error("cannot write {path}: {reason}")]
    Write { path: String, reason: String },
}

impl DownloadError {
    fn retryable(&self) -> bool {
        match self {
            DownloadError::Status(code) => *code >= 500,
            DownloadError::Transport(_) => true,
            _ => false,
        }
    }
}

/// Fetch `spec` into `spec.dest`, writing progress to `log`. Returns the size. On failure the
/// partial file is removed.
pub async fn download(
    client: &reqwest::Client,
    spec: &DownloadSpec,
    policy: RetryPolicy,
    log: &mut (impl Write + Send),
) -> Result<u64, DownloadError> {
    let mut pause = policy.first_pause;
    let attempts = policy.attempts.max(1);
    for attempt in 1..=attempts {
        let _ = writeln!(log, "download {} (attempt {attempt}/{attempts})", spec.url);
        match fetch_once(client, spec, log).await {
            Ok(size) => {
                let _ = writeln!(
                    log,
                    "download {}: {size} bytes saved as {}",
                    spec.url,
                    spec.dest.display()
                );
                return Ok(size);
            }
            Err(e) => {
                let _ = tokio::fs::remove_file(&spec.dest).await;
                let _ = writeln!(log, "download {}: {e}", spec.url);
                if !e.retryable() || attempt == attempts {
                    return Err(e);
                }
                let _ = writeln!(log, "retrying in {} ms", pause.as_millis());
                tokio::time::sleep(pause).await;
                pause *= 2;
            }
        }
    }
    unreachable!("the loop returns on its last attempt")
}

async fn fetch_once(
    client: &reqwest::Client,
    spec: &DownloadSpec,
    log: &mut (impl Write + Send),
) -> Result<u64, DownloadError> {
    let transport = |e: reqwest::Error| DownloadError::Transport(describe(&e));
    let mut response = client.get(&spec.url).send().await.map_err(transport)?;
    let status = response.status();
    if !status.is_success() {
        return Err(DownloadError::Status(status.as_u16()));
    }
    let limit = spec.max_bytes;
    let expected_len = response.content_length();
    if expected_len.is_some_and(|len| len > limit) {
        return Err(DownloadError::TooLarge { limit });
    }
    let write_error = |e: std::io::Error| DownloadError::Write {
        path: spec.dest.display().to_string(),
        reason: e.to_string(),
    };
    if let Some(parent) = spec.dest.parent() {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(write_error)?;
    }
    let mut file = tokio::fs::File::create(&spec.dest)
        .await
        .map_err(write_error)?;
    let mut hasher = Sha256::new();
    let mut size: u64 = 0;
    // A line per tenth of the file (or per 8 MiB when its size is unknown).
    let step = expected_len.map_or(8 << 20, |len| (len / 10).max(1));
    let mut next_report = step;
    while let Some(chunk) = response.chunk().await.map_err(transport)? {
        size += chunk.len() as u64;
        if size > limit {
            return Err(DownloadError::TooLarge { limit });
        }
        hasher.update(&chunk);
        file.write_all(&chunk).await.map_err(write_error)?;
        if size >= next_report {
            let _ = match expected_len {
                Some(len) => writeln!(log, "  {size}/{len} bytes ({}%)", size * 100 / len.max(1)),
                None => writeln!(log, "  {size} bytes"),
            };
            next_report = size + step;
        }
    }
    file.flush().await.map_err(write_error)?;
    if let Some(expected) = &spec.sha256 {
        let actual = hex(&hasher.finalize());
        if !actual.eq_ignore_ascii_case(expected) {
            return Err(DownloadError::Checksum {
                expected: expected.to_ascii_lowercase(),
                actual,
            });
        }
    }
    Ok(size)
}

/// reqwest's top-level message is often just "error sending request"; the cause says why.
fn describe(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The file name a download gets without `dest`: the URL's last path segment.
pub fn default_dest(url: &str) -> Option<String> {
    let path = url.split(['?', '#']).next()?;
    let after_scheme = path.split_once("://").map_or(path, |(_, rest)| rest);
    let (_, path) = after_scheme.split_once('/')?;
    let name = path.rsplit('/').next()?;
    (!name.is_empty() && name != "." && name != "..").then(|| name.to_string())
}

/// A path inside `root`, for a destination already checked to be relative without `..`.
pub fn dest_in(root: &Path, dest: &str) -> PathBuf {
    root.join(dest)
}

/// The SHA-256 of a local file, in lower-case hex (a file:// ISO checked in place, say).
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 16];
    loop {
        let n = std::io::Read::read(&mut file, &mut buffer)?;
        if n == 0 {
            return Ok(hex(&hasher.finalize()));
        }
        hasher.update(&buffer[..n]);
    }
}

/// The SHA-256 of `data`, in lower-case hex (a cache key, say).
pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    /// What the hand-written test server answers to the n-th request (from 0).
    type Answer = Arc<dyn Fn(usize) -> (u16, Vec<u8>, bool) + Send + Sync>;

    /// A minimal HTTP/1.1 server on 127.0.0.1; `answer(n)` gives status, body and whether to send
    /// `Content-Length`. Returns its base URL and the request counter.
    async fn serve(answer: Answer) -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let count = Arc::new(AtomicUsize::new(0));
        let counter = count.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                let n = counter.fetch_add(1, Ordering::SeqCst);
                let (status, body, with_len) = answer(n);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut seen = Vec::new();
                    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                        match sock.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(k) => seen.extend_from_slice(&buf[..k]),
                        }
                    }
                    let mut head = format!("HTTP/1.1 {status} X\r\nConnection: close\r\n");
                    if with_len {
                        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
                    }
                    head.push_str("\r\n");
                    let _ = sock.write_all(head.as_bytes()).await;
                    let _ = sock.write_all(&body).await;
                    let _ = sock.shutdown().await;
                });
            }
        });
        (format!("http://{addr}"), count)
    }

    fn spec(url: String, dir: &Path, sha256: Option<String>, max_bytes: u64) -> DownloadSpec {
        DownloadSpec {
            url,
            sha256,
            max_bytes,
            dest: dir.join("sub/file.bin"),
        }
    }

    const FAST: RetryPolicy = RetryPolicy {
        attempts: 3,
        first_pause: Duration::from_millis(50),
    };

    fn sha(data: &[u8]) -> String {
        Sha256::digest(data)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    #[tokio::test]
    async fn success_saves_the_file_checks_it_and_logs_progress() {
        let body: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let served = body.clone();
        let (base, count) = serve(Arc::new(move |_| (200, served.clone(), true))).await;
        let dir = tempfile::tempdir().unwrap();
        let s = spec(
            format!("{base}/a.rpm"),
            dir.path(),
            Some(sha(&body).to_uppercase()),
            1 << 20,
        );
        let mut log = Vec::new();
        let size = download(&reqwest::Client::new(), &s, FAST, &mut log)
            .await
            .unwrap();
        assert_eq!(size, 100_000);
        assert_eq!(std::fs::read(&s.dest).unwrap(), body);
        assert_eq!(count.load(Ordering::SeqCst), 1);
        let log = String::from_utf8(log).unwrap();
        assert!(log.contains("100000/100000 bytes (100%)"), "{log}");
        assert!(log.contains("100000 bytes saved as"), "{log}");
    }

    #[tokio::test]
    async fn checksum_mismatch_fails_without_retry_and_removes_the_file() {
        let (base, count) = serve(Arc::new(|_| (200, b"hello".to_vec(), true))).await;
        let dir = tempfile::tempdir().unwrap();
        let wrong = "0".repeat(64);
        let s = spec(format!("{base}/x"), dir.path(), Some(wrong.clone()), 1000);
        let err = download(&reqwest::Client::new(), &s, FAST, &mut Vec::new())
            .await
            .unwrap_err();
        assert_eq!(
            err,
            DownloadError::Checksum {
                expected: wrong,
                actual: sha(b"hello")
            }
        );
        assert_eq!(count.load(Ordering::SeqCst), 1);
        assert!(!s.dest.exists());
    }

    #[tokio::test]
    async fn too_large_is_refused_by_header_and_while_streaming() {
        let dir = tempfile::tempdir().unwrap();
        for with_len in [true, false] {
            let (base, count) = serve(Arc::new(move |_| (200, vec![7u8; 5000], with_len))).await;
            let s = spec(format!("{base}/big"), dir.path(), None, 4096);
            let err = download(&reqwest::Client::new(), &s, FAST, &mut Vec::new())
                .await
                .unwrap_err();
            assert_eq!(err, DownloadError::TooLarge { limit: 4096 }, "{with_len}");
            assert_eq!(err.to_string(), "larger than the limit of 4096 bytes");
            assert_eq!(count.load(Ordering::SeqCst), 1);
            assert!(!s.dest.exists());
        }
    }

    #[tokio::test]
    async fn server_errors_are_retried_and_client_errors_are_not() {
        let (base, count) = serve(Arc::new(|n| {
            if n == 0 {
                (503, b"busy".to_vec(), true)
            } else {
                (200, b"ok".to_vec(), true)
            }
        }))
        .await;
        let dir = tempfile::tempdir().unwrap();
        let s = spec(format!("{base}/f"), dir.path(), Some(sha(b"ok")), 100);
        let mut log = Vec::new();
        assert_eq!(
            download(&reqwest::Client::new(), &s, FAST, &mut log).await,
            Ok(2)
        );
        assert_eq!(count.load(Ordering::SeqCst), 2);
        let log = String::from_utf8(log).unwrap();
        assert!(log.contains("HTTP status 503"), "{log}");
        assert!(log.contains("attempt 2/3"), "{log}");

        let (base, count) = serve(Arc::new(|_| (404, Vec::new(), true))).await;
        let s = spec(format!("{base}/missing"), dir.path(), None, 100);
        let err = download(&reqwest::Client::new(), &s, FAST, &mut Vec::new())
            .await
            .unwrap_err();
        assert_eq!(err, DownloadError::Status(404));
        assert_eq!(count.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn unreachable_server_fails_after_every_attempt() {
        // Bind then drop, so the port is (almost certainly) closed.
        let port = {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            l.local_addr().unwrap().port()
        };
        let dir = tempfile::tempdir().unwrap();
        let s = spec(format!("http://127.0.0.1:{port}/x"), dir.path(), None, 100);
        let mut log = Vec::new();
        let err = download(&reqwest::Client::new(), &s, FAST, &mut log)
            .await
            .unwrap_err();
        assert!(matches!(err, DownloadError::Transport(_)), "{err}");
        assert!(String::from_utf8(log).unwrap().contains("attempt 3/3"));
    }

    #[test]
    fn default_dest_is_the_last_path_segment() {
        assert_eq!(
            default_dest("https://k.example/a/b/x-1.rpm?y=1").as_deref(),
            Some("x-1.rpm")
        );
        assert_eq!(default_dest("https://k.example/a/"), None);
        assert_eq!(default_dest("https://k.example"), None);
        assert_eq!(default_dest("https://k.example/.."), None);
    }
}
