//! The job's log ([`TASK_LOG`](taskbot::artifacts::TASK_LOG)): the one place where anything of a
//! job is written to its log, and the only copy of its steps' output.
//!
//! Everything written goes, in order, through a channel to a writer of its own (a blocking
//! thread) that owns the file: the runner's lines, the download progress, and each step's
//! stdout and stderr as the runner drains them from the step's pipe ([`OutputSink::drain`]).
//! The runner's own lines never wait, so they cannot hold up a step, and code that logs through
//! `std::io::Write` (the downloads) gets a writer that only queues. The runner writes few lines
//! of its own, so their channel needs no bound; step output may be endless, so at most
//! [`OUTPUT_IN_FLIGHT`] bytes of it are queued, and a step printing faster than the writer
//! stores waits on its pipe, never on the runner's memory.
//!
//! Every byte, the runner's own lines as much as a step's output, goes through the job's
//! [`Redactor`] first (one stream for the whole log, so a secret split across two reads of the
//! pipe, or across a step's output and the runner's next line, is still found), and then
//! through [`CappedLog::write`], which keeps the log within
//! `runner.max_log_bytes`: the first quarter of it, then a note where the log was cut, then (once
//! the job ends) a second note saying how many bytes were dropped and the log's last bytes. The
//! end of a log usually says why a job failed, so that part gets the most room. The last bytes
//! are kept in an unnamed file (a ring of a fixed size), so memory and disk stay bounded
//! whatever a task prints. As the cap only ever sees redacted bytes, neither the head nor the
//! tail it keeps can hold a secret, wherever the cut falls.
//!
//! Write errors are ignored, as a full disk must not change a job's verdict; a log that cannot be
//! created at all crashes the job before its task runs.

use std::fmt::Display;
use std::fs::File;
use std::io::{self, Write as _};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncSeekExt as _};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use crate::redact::{Redactor, StreamRedactor};

/// Bytes of step output queued for the writer at most.
const OUTPUT_IN_FLIGHT: u32 = 1024 * 1024;

/// Bytes read from a step's pipe at once.
const OUTPUT_CHUNK: u32 = 64 * 1024;

/// Room kept within the cap for the two notes.
const NOTES_ROOM: u64 = 1024;

/// The smallest `runner.max_log_bytes`: room for the notes and some of the log's head and tail.
pub const MIN_LOG_BYTES: u64 = 16 * 1024;

/// What the writer does next, in the order it was asked.
enum Entry {
    Bytes(Vec<u8>),
    /// Step output, holding its share of [`OUTPUT_IN_FLIGHT`] until written.
    Output(Vec<u8>, OwnedSemaphorePermit),
}

/// The open log of one job.
pub(crate) struct JobLog {
    path: PathBuf,
    entries: mpsc::UnboundedSender<Entry>,
    in_flight: Arc<Semaphore>,
    /// Ends with the number of bytes the cap dropped.
    writer: JoinHandle<u64>,
}

/// How a closed log ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LogEnd {
    /// Its last lines (for CRASHED notes), `None` when the file cannot be read.
    pub tail: Option<String>,
    /// Bytes dropped to keep it within `runner.max_log_bytes`.
    pub dropped: u64,
}

impl JobLog {
    /// Create (or truncate) the log at `path`, keeping at most `max_bytes` (at least
    /// [`MIN_LOG_BYTES`]) of what `redactor` leaves of everything written (the job's secrets
    /// taken out).
    pub async fn create(
        path: &Path,
        max_bytes: u64,
        redactor: Arc<Redactor>,
    ) -> io::Result<JobLog> {
        let owned = path.to_path_buf();
        let capped = tokio::task::spawn_blocking(move || CappedLog::create(&owned, max_bytes))
            .await
            .map_err(io::Error::other)??;
        let (entries, queue) = mpsc::unbounded_channel();
        Ok(JobLog {
            path: path.to_path_buf(),
            entries,
            in_flight: Arc::new(Semaphore::new(OUTPUT_IN_FLIGHT as usize)),
            writer: tokio::task::spawn_blocking(move || {
                write_entries(capped, redactor.stream(), queue)
            }),
        })
    }

    /// Add `text` and a newline.
    pub fn line(&self, text: impl Display) {
        // The writer lives as long as a sender does; an error would mean it panicked.
        let _ = self
            .entries
            .send(Entry::Bytes(format!("{text}\n").into_bytes()));
    }

    /// A `std::io::Write` into this log, for code that writes its progress that way.
    pub fn writer(&self) -> LogWriter {
        LogWriter(self.entries.clone())
    }

    /// Where a step's output goes: see [`OutputSink::drain`].
    pub fn output(&self) -> OutputSink {
        OutputSink {
            entries: self.entries.clone(),
            in_flight: self.in_flight.clone(),
        }
    }

    /// Close the log once everything written is in the file, and give its last `lines` lines
    /// and how much of it was dropped.
    pub async fn finish(self, lines: usize) -> LogEnd {
        let path = self.path.clone();
        let dropped = self.close().await;
        LogEnd {
            tail: tail(&path, lines).await,
            dropped,
        }
    }

    /// Close the log once everything written is in the file (a job handed back may come again
    /// at once, and its new log must not be written under this one's last lines); the bytes
    /// dropped. Every [`OutputSink`] and [`LogWriter`] must be gone by then.
    pub async fn close(self) -> u64 {
        drop(self.entries);
        // The writer ends when the queue is drained; it only fails by panicking.
        self.writer.await.unwrap_or(0)
    }
}

/// See [`JobLog::writer`]: each write is queued, in order with the log's other entries.
pub(crate) struct LogWriter(mpsc::UnboundedSender<Entry>);

impl io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let _ = self.0.send(Entry::Bytes(buf.to_vec()));
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// See [`JobLog::output`].
#[derive(Debug, Clone)]
pub struct OutputSink {
    entries: mpsc::UnboundedSender<Entry>,
    in_flight: Arc<Semaphore>,
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Entry::Bytes(b) | Entry::Output(b, _) => write!(f, "{} bytes", b.len()),
        }
    }
}

impl OutputSink {
    /// Add `text` and a newline, as [`JobLog::line`] does.
    pub fn line(&self, text: impl Display) {
        let _ = self
            .entries
            .send(Entry::Bytes(format!("{text}\n").into_bytes()));
    }

    /// Read `pipe` (a step's stdout and stderr) to its end into the log. Reading never stops
    /// while the step runs, however much it prints: what the cap leaves out is read and dropped.
    pub async fn drain(self, mut pipe: impl AsyncRead + Unpin) {
        loop {
            let Ok(permit) = self
                .in_flight
                .clone()
                .acquire_many_owned(OUTPUT_CHUNK)
                .await
            else {
                return;
            };
            let mut chunk = vec![0; OUTPUT_CHUNK as usize];
            match pipe.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    chunk.truncate(n);
                    if self.entries.send(Entry::Output(chunk, permit)).is_err() {
                        return;
                    }
                }
            }
        }
    }
}

/// Write every entry, redacted, into the capped log until the last sender is gone; the bytes
/// the cap dropped.
fn write_entries(
    mut log: CappedLog,
    mut redact: StreamRedactor,
    mut queue: mpsc::UnboundedReceiver<Entry>,
) -> u64 {
    while let Some(entry) = queue.blocking_recv() {
        match entry {
            Entry::Bytes(bytes) => log.write(&redact.push(&bytes)),
            Entry::Output(bytes, permit) => {
                log.write(&redact.push(&bytes));
                drop(permit);
            }
        }
    }
    // What was held back as the possible start of a secret: the log's very end.
    log.write(&redact.finish());
    log.finish()
}

/// A log file kept within a byte cap: its head in the file, then the last bytes of the rest in
/// a ring, copied after the head when the log is finished.
struct CappedLog {
    file: File,
    max_bytes: u64,
    /// Bytes the head may still take.
    head_room: u64,
    /// An unnamed file of `ring_size` bytes holding the last bytes past the head.
    ring: File,
    ring_size: u64,
    /// Where the next byte goes in the ring, and how much of it is filled.
    ring_pos: u64,
    ring_len: u64,
    /// Bytes past the head, in all.
    overflow: u64,
}

impl CappedLog {
    fn create(path: &Path, max_bytes: u64) -> io::Result<CappedLog> {
        let max_bytes = max_bytes.max(MIN_LOG_BYTES);
        // A new file, never through what an earlier attempt of the job left at its name (a
        // link would have the runner write a host file).
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let file = File::options().write(true).create_new(true).open(path)?;
        // Unnamed (O_TMPFILE): the task, which may write this directory, cannot reach it.
        let ring = tempfile::tempfile_in(path.parent().unwrap_or(Path::new(".")))?;
        let head = max_bytes / 4;
        Ok(CappedLog {
            file,
            max_bytes,
            head_room: head,
            ring,
            ring_size: max_bytes - head - NOTES_ROOM,
            ring_pos: 0,
            ring_len: 0,
            overflow: 0,
        })
    }

    fn write(&mut self, bytes: &[u8]) {
        let into_head = bytes
            .len()
            .min(usize::try_from(self.head_room).unwrap_or(usize::MAX));
        let (head, rest) = bytes.split_at(into_head);
        if !head.is_empty() {
            let _ = self.file.write_all(head);
            self.head_room -= head.len() as u64;
        }
        if rest.is_empty() {
            return;
        }
        if self.overflow == 0 {
            let note = format!(
                "\n[taskbot: this log reached runner.max_log_bytes ({} bytes) and is cut here; its last {} bytes are added below when the job ends]\n",
                self.max_bytes, self.ring_size
            );
            let _ = self.file.write_all(note.as_bytes());
        }
        self.overflow += rest.len() as u64;
        self.keep_in_ring(rest);
    }

    fn keep_in_ring(&mut self, bytes: &[u8]) {
        let size = self.ring_size as usize;
        // Only the last `size` bytes can survive.
        let bytes = &bytes[bytes.len().saturating_sub(size)..];
        let pos = self.ring_pos as usize;
        let first = bytes.len().min(size - pos);
        let _ = self.ring.write_all_at(&bytes[..first], pos as u64);
        let _ = self.ring.write_all_at(&bytes[first..], 0);
        self.ring_pos = ((pos + bytes.len()) % size) as u64;
        self.ring_len = (self.ring_len + bytes.len() as u64).min(self.ring_size);
    }

    /// The ring's bytes after the head, oldest first, with the second note; the bytes dropped.
    fn finish(mut self) -> u64 {
        if self.overflow == 0 {
            let _ = self.file.flush();
            return 0;
        }
        let dropped = self.overflow - self.ring_len;
        let note = format!(
            "[taskbot: {dropped} bytes of this log were dropped here (runner.max_log_bytes = {}); its last {} bytes follow]\n",
            self.max_bytes, self.ring_len
        );
        let _ = self.file.write_all(note.as_bytes());
        let segments = if self.ring_len == self.ring_size {
            [(self.ring_pos, self.ring_size), (0, self.ring_pos)]
        } else {
            [(0, self.ring_len), (0, 0)]
        };
        let mut buf = vec![0; OUTPUT_CHUNK as usize];
        for (mut from, to) in segments {
            while from < to {
                let n = buf.len().min((to - from) as usize);
                if self.ring.read_exact_at(&mut buf[..n], from).is_err() {
                    break;
                }
                let _ = self.file.write_all(&buf[..n]);
                from += n as u64;
            }
        }
        let _ = self.file.flush();
        dropped
    }
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
    async fn lines_output_and_writes_land_in_the_order_they_were_made() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("task.log");
        let log = JobLog::create(&path, 1 << 20, Arc::default())
            .await
            .unwrap();
        log.line(format_args!("== step {}: {}", "01-run", "true"));
        log.output().drain(&b"step output\n"[..]).await;
        writeln!(log.writer(), "download progress").unwrap();
        log.line("last");
        let end = log.finish(2).await;
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "== step 01-run: true\nstep output\ndownload progress\nlast\n"
        );
        assert_eq!(end.tail.as_deref(), Some("download progress\nlast"));
        assert_eq!(end.dropped, 0);
    }

    #[tokio::test]
    async fn a_log_that_cannot_be_created_says_so() {
        let dir = tempfile::tempdir().unwrap();
        assert!(JobLog::create(
            &dir.path().join("no/such/dir/task.log"),
            1 << 20,
            Arc::default()
        )
        .await
        .is_err());
    }

    /// The lines `line 0`, `line 1`, ... `line <count - 1>`.
    fn numbered(count: usize) -> Vec<u8> {
        (0..count)
            .flat_map(|i| format!("line {i}\n").into_bytes())
            .collect()
    }

    #[test]
    fn past_the_cap_the_head_and_the_tail_stay_with_notes_saying_what_was_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("task.log");
        let text = numbered(20_000);
        for piece in [1, 7, 4096, 1 << 20] {
            let mut log = CappedLog::create(&path, MIN_LOG_BYTES).unwrap();
            for chunk in text.chunks(piece) {
                log.write(chunk);
            }
            let dropped = log.finish();
            let stored = std::fs::read(&path).unwrap();
            assert!(
                stored.len() as u64 <= MIN_LOG_BYTES,
                "{piece}: {}",
                stored.len()
            );
            let kept_head = (MIN_LOG_BYTES / 4) as usize;
            assert_eq!(&stored[..kept_head], &text[..kept_head], "{piece}");
            let stored = String::from_utf8(stored).unwrap();
            let ring = (MIN_LOG_BYTES - MIN_LOG_BYTES / 4 - NOTES_ROOM) as usize;
            assert_eq!(dropped, (text.len() - kept_head - ring) as u64, "{piece}");
            assert!(
                stored.contains(&format!("[taskbot: {dropped} bytes of this log were dropped here (runner.max_log_bytes = {MIN_LOG_BYTES}); its last {ring} bytes follow]\n")),
                "{piece}: {stored}"
            );
            assert!(stored.contains("reached runner.max_log_bytes"), "{piece}");
            assert!(
                stored.ends_with(std::str::from_utf8(&text[text.len() - ring..]).unwrap()),
                "{piece}"
            );
        }
    }

    #[test]
    fn a_log_just_past_its_head_keeps_everything() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("task.log");
        let text = numbered(600);
        let mut log = CappedLog::create(&path, MIN_LOG_BYTES).unwrap();
        log.write(&text);
        assert_eq!(log.finish(), 0);
        let stored = std::fs::read_to_string(&path).unwrap();
        assert!(stored.ends_with("line 599\n"), "{stored}");
        assert!(
            stored.contains("0 bytes of this log were dropped"),
            "{stored}"
        );
        let mut log = CappedLog::create(&path, MIN_LOG_BYTES).unwrap();
        log.write(b"short\n");
        assert_eq!(log.finish(), 0);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "short\n");
    }

    #[tokio::test]
    async fn endless_output_is_drained_to_its_end_and_stored_within_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("task.log");
        let log = JobLog::create(&path, MIN_LOG_BYTES, Arc::default())
            .await
            .unwrap();
        let output = tokio::io::repeat(b'y').take(50 << 20);
        log.output().drain(output).await;
        log.line("\nthe end");
        let end = log.finish(1).await;
        assert_eq!(end.tail.as_deref(), Some("the end"));
        let stored = std::fs::metadata(&path).unwrap().len();
        assert!(stored <= MIN_LOG_BYTES, "{stored}");
        let (head, ring) = (
            MIN_LOG_BYTES / 4,
            MIN_LOG_BYTES - MIN_LOG_BYTES / 4 - NOTES_ROOM,
        );
        assert_eq!(
            end.dropped,
            (50 << 20) + "\nthe end\n".len() as u64 - head - ring
        );
    }

    #[tokio::test]
    async fn a_secret_is_redacted_before_the_cap_wherever_the_cut_and_the_chunks_fall() {
        const VALUE: &str = "s3cr3t-koji-token-4242";
        let redactor = Arc::new(Redactor::new(&[crate::secrets::Delivered {
            name: "koji-token".into(),
            value: format!("{VALUE}\n").into_bytes(),
            env: None,
        }]));
        // The value after 0 to 40 dots, over and over: the head's end, the tail's start and the
        // chunks' ends fall on every place of it.
        let text: String = (0..3000)
            .map(|i| format!("{}{VALUE}", ".".repeat(i % 41)))
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("task.log");
        for piece in [1, 5, 7, 23, 4096, 1 << 16] {
            let log = JobLog::create(&path, MIN_LOG_BYTES, redactor.clone())
                .await
                .unwrap();
            log.line(format_args!("the runner says {VALUE}"));
            for chunk in text.as_bytes().chunks(piece) {
                log.output().drain(chunk).await;
            }
            log.line(format_args!("and ends with s3cr3t-koji"));
            let end = log.finish(1).await;
            assert!(end.dropped > 0, "{piece}");
            let stored = std::fs::read_to_string(&path).unwrap();
            assert!(stored.len() as u64 <= MIN_LOG_BYTES, "{piece}");
            assert!(
                stored.starts_with("the runner says [secret:koji-token]\n"),
                "{piece}"
            );
            // What only looked like the start of the value is given at the end, as it was.
            assert!(stored.ends_with("and ends with s3cr3t-koji\n"), "{piece}");
            let stored = stored.trim_end_matches("and ends with s3cr3t-koji\n");
            for piece_of_value in ["s3cr3t", "3cr3t-k", "token-4", "n-4242"] {
                assert!(
                    !stored.contains(piece_of_value),
                    "{piece}: {piece_of_value} in {stored}"
                );
            }
        }
    }
}
