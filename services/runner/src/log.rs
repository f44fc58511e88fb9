//! The job's combined log ([`TASK_LOG`](taskbot::artifacts::TASK_LOG)), written without blocking
//! the runtime's threads.
//!
//! Everything written goes, in order, through a channel to a task of its own that owns the file
//! (`tokio::fs`): the runner's lines, the download progress, and each step's own log appended
//! whole once the step ended (streamed from that file, never held in memory). Writing never waits,
//! so the runner's lines cannot hold up a step, and code that logs through `std::io::Write` (the
//! downloads) gets a writer that only queues. The runner writes few lines of its own (a header, a
//! line or two a step, ten per download), so the channel needs no bound.
//!
//! The runner's own lines and writes go through the job's [`Redactor`] (a task's file names and
//! the like can hold a secret); the step logs appended were redacted as the steps wrote them.
//!
//! Write errors are ignored, as a full disk must not change a job's verdict; a log that cannot be
//! created at all crashes the job before its task runs.

use std::fmt::Display;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _, AsyncWriteExt as _};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::redact::Redactor;

/// What the writer task does next, in the order it was asked.
enum Entry {
    Bytes(Vec<u8>),
    /// Append the whole file (a step's own log).
    File(PathBuf),
}

/// The open log of one job.
pub(crate) struct JobLog {
    path: PathBuf,
    entries: mpsc::UnboundedSender<Entry>,
    writer: JoinHandle<()>,
    redactor: Arc<Redactor>,
}

impl JobLog {
    /// Create (or truncate) the log at `path`.
    pub async fn create(path: &Path) -> io::Result<JobLog> {
        let file = tokio::fs::File::create(path).await?;
        let (entries, queue) = mpsc::unbounded_channel();
        Ok(JobLog {
            path: path.to_path_buf(),
            entries,
            writer: tokio::spawn(write_entries(file, queue)),
            redactor: Arc::default(),
        })
    }

    /// Redact what is written from now on with `redactor` (the job's secrets).
    pub fn redact_with(&mut self, redactor: Arc<Redactor>) {
        self.redactor = redactor;
    }

    /// Add `text` and a newline.
    pub fn line(&self, text: impl Display) {
        let line = self.redactor.text(&format!("{text}\n"));
        self.send(Entry::Bytes(line.into_bytes()));
    }

    /// Append the whole of the file at `path` (a step's own log); nothing when it cannot be read.
    pub fn append_file(&self, path: PathBuf) {
        self.send(Entry::File(path));
    }

    /// A `std::io::Write` into this log, for code that writes its progress that way.
    pub fn writer(&self) -> LogWriter {
        LogWriter(self.entries.clone(), self.redactor.clone())
    }

    /// Close the log once everything written is in the file, and give its last `lines` lines
    /// (for CRASHED notes), `None` when the file cannot be read.
    pub async fn finish(self, lines: usize) -> Option<String> {
        let path = self.path.clone();
        self.close().await;
        tail(&path, lines).await
    }

    /// Close the log once everything written is in the file: a job handed back may come again
    /// at once, and its new log must not be written under this one's last lines.
    pub async fn close(self) {
        drop(self.entries);
        // The writer ends when the queue is drained; it only fails by panicking.
        let _ = self.writer.await;
    }

    fn send(&self, entry: Entry) {
        // The writer lives as long as this sender does; an error would mean it panicked.
        let _ = self.entries.send(entry);
    }
}

/// See [`JobLog::writer`]: each write is queued, in order with the log's other entries.
pub(crate) struct LogWriter(mpsc::UnboundedSender<Entry>, Arc<Redactor>);

impl io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let _ = self.0.send(Entry::Bytes(self.1.bytes(buf)));
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

async fn write_entries(mut file: tokio::fs::File, mut queue: mpsc::UnboundedReceiver<Entry>) {
    while let Some(entry) = queue.recv().await {
        match entry {
            Entry::Bytes(bytes) => {
                let _ = file.write_all(&bytes).await;
            }
            Entry::File(path) => {
                if let Ok(mut own) = tokio::fs::File::open(&path).await {
                    let _ = tokio::io::copy(&mut own, &mut file).await;
                }
            }
        }
    }
    // Until flushed, tokio's file may still be writing the last entry in the background.
    let _ = file.flush().await;
}

/// The last `lines` lines of a log (from at most its last 64 KiB), for CRASHED notes.
pub async fn tail(path: &Path, lines: usize) -> Option<String> {
    const WINDOW: u64 = 64 * 1024;
    let mut file = tokio::fs::File::open(path).await.ok()?;
    let len = file.metadata().await.ok()?.len();
    file.seek(io::SeekFrom::Start(len.saturating_sub(WINDOW)))
        .await
        .ok()?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).await.ok()?;
    Some(last_lines(&String::from_utf8_lossy(&bytes), lines))
}

/// The last `n` lines of `text`, without a trailing newline.
pub fn last_lines(text: &str, n: usize) -> String {
    let trimmed = text.trim_end_matches('\n');
    let lines: Vec<&str> = trimmed.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    #[tokio::test]
    async fn tail_keeps_the_last_lines() {
        assert_eq!(last_lines("a\nb\nc\n", 2), "b\nc");
        assert_eq!(last_lines("a\n", 5), "a");
        assert_eq!(last_lines("", 5), "");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let text: String = (1..=100).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&path, text).unwrap();
        let tail = tail(&path, 20).await.unwrap();
        assert!(
            tail.starts_with("line 81\n") && tail.ends_with("line 100"),
            "{tail}"
        );
        assert_eq!(super::tail(&dir.path().join("none"), 20).await, None);
    }

    #[tokio::test]
    async fn lines_files_and_writes_land_in_the_order_they_were_made() {
        let dir = tempfile::tempdir().unwrap();
        let step_log = dir.path().join("01-run.log");
        std::fs::write(&step_log, "step output\n").unwrap();
        let path = dir.path().join("task.log");
        let log = JobLog::create(&path).await.unwrap();
        log.line(format_args!("== step {}: {}", "01-run.log", "true"));
        log.append_file(step_log);
        log.append_file(dir.path().join("missing.log"));
        writeln!(log.writer(), "download progress").unwrap();
        log.line("last");
        let tail = log.finish(2).await;
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "== step 01-run.log: true\nstep output\ndownload progress\nlast\n"
        );
        assert_eq!(tail.as_deref(), Some("download progress\nlast"));
    }

    #[tokio::test]
    async fn a_log_that_cannot_be_created_says_so() {
        let dir = tempfile::tempdir().unwrap();
        assert!(JobLog::create(&dir.path().join("no/such/dir/task.log"))
            .await
            .is_err());
    }
}
