//! The JSON-lines sink: every result and job status appended to a file as one JSON object per
//! line (the message itself, with its `schema` tag), for people who just want a log to `tail`,
//! `grep` or `jq`.
//!
//! A line is written and fsynced before its message is acked. Delivery is at-least-once: a
//! message redelivered after a crash between the fsync and the ack appears twice; every line
//! carries its `result_id` or `status_id`, so readers dedupe by that.
//!
//! Rotation by size: before a line would take the file past `jsonl_max_bytes`, `<path>` becomes
//! `<path>.1` (`.1` becomes `.2`, ...), keeping `jsonl_keep` old files.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use taskbot::amqp::{DeliveryContext, Disposition, Handler, Incoming};
use taskbot::messages::Message;

use crate::binding::Binding;
use crate::{decode_result, decode_status};

/// Appends lines to a size-rotated file.
#[derive(Debug)]
pub struct JsonlWriter {
    path: PathBuf,
    max_bytes: u64,
    keep: usize,
    file: Option<File>,
    size: u64,
}

/// `<path>.<n>`.
pub fn rotated_path(path: &Path, n: usize) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

impl JsonlWriter {
    /// Open (creating it and its directory if needed) `path` for appending.
    pub fn open(path: &Path, max_bytes: u64, keep: usize) -> std::io::Result<JsonlWriter> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let mut writer = JsonlWriter {
            path: path.to_path_buf(),
            max_bytes: max_bytes.max(1),
            keep,
            file: None,
            size: 0,
        };
        writer.reopen()?;
        Ok(writer)
    }

    fn reopen(&mut self) -> std::io::Result<()> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.size = file.metadata()?.len();
        self.file = Some(file);
        Ok(())
    }

    /// Append `line` and a newline, rotating first if the file would grow past the limit, and
    /// fsync. On failure the file is cut back to where it was, so a retry does not leave half a
    /// line before the whole one.
    pub fn append(&mut self, line: &[u8]) -> std::io::Result<()> {
        let needed = line.len() as u64 + 1;
        if self.size > 0 && self.size + needed > self.max_bytes {
            self.rotate()?;
        }
        if self.file.is_none() {
            self.reopen()?;
        }
        let Some(file) = self.file.as_mut() else {
            return Err(std::io::Error::other("the JSON-lines file is not open"));
        };
        let mut buf = Vec::with_capacity(line.len() + 1);
        buf.extend_from_slice(line);
        buf.push(b'\n');
        let written = file.write_all(&buf).and_then(|()| file.sync_data());
        match written {
            Ok(()) => {
                self.size += needed;
                Ok(())
            }
            Err(err) => {
                let _ = file.set_len(self.size);
                Err(err)
            }
        }
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        self.file = None;
        if self.keep == 0 {
            std::fs::remove_file(&self.path)?;
        } else {
            for n in (1..self.keep).rev() {
                let from = rotated_path(&self.path, n);
                if from.exists() {
                    std::fs::rename(&from, rotated_path(&self.path, n + 1))?;
                }
            }
            std::fs::rename(&self.path, rotated_path(&self.path, 1))?;
        }
        // Make the renames durable before lines go to the new file.
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir)?.sync_all()?;
        }
        tracing::info!(path = %self.path.display(), keep = self.keep, "JSON-lines file rotated");
        self.reopen()
    }
}

/// The sink's handler: decode (refusing what the other sinks refuse too), then append.
pub struct JsonlSink {
    pub writer: Arc<Mutex<JsonlWriter>>,
    /// Whether a message is its job's and from its sender ([`Binding`]).
    pub binding: Arc<Binding>,
}

impl JsonlSink {
    pub fn new(writer: JsonlWriter, binding: Arc<Binding>) -> Self {
        JsonlSink {
            writer: Arc::new(Mutex::new(writer)),
            binding,
        }
    }

    /// The line for a delivery: the decoded message re-encoded (one line, compact), chosen by
    /// routing key (`job.*` are statuses, everything else on the sink's queue is a result).
    pub fn line(routing_key: &str, body: &[u8]) -> Result<Vec<u8>, String> {
        if routing_key.starts_with("job.") {
            decode_status(body).map(|s| s.to_json())
        } else {
            decode_result(body).map(|r| r.to_json())
        }
    }

    /// The line for a delivery the binding admits; else what to do with the delivery.
    async fn admitted_line(&self, incoming: &Incoming) -> Result<Vec<u8>, Disposition> {
        let user = incoming.user_id.as_deref();
        if incoming.routing_key.starts_with("job.") {
            let status = decode_status(&incoming.body).map_err(Disposition::DeadLetter)?;
            self.binding.admit_status(user, &status, false).await?;
            Ok(status.to_json())
        } else {
            let result = decode_result(&incoming.body).map_err(Disposition::DeadLetter)?;
            self.binding.admit_result(user, &result).await?;
            Ok(result.to_json())
        }
    }

    pub async fn process(&self, incoming: &Incoming) -> Disposition {
        let line = match self.admitted_line(incoming).await {
            Ok(line) => line,
            Err(refused) => return refused,
        };
        let writer = self.writer.clone();
        let written = tokio::task::spawn_blocking(move || {
            let mut writer = writer.lock().unwrap_or_else(|e| e.into_inner());
            writer.append(&line)
        })
        .await;
        match written {
            Ok(Ok(())) => Disposition::Done(Vec::new()),
            Ok(Err(err)) => {
                Disposition::Retry(format!("cannot append to the JSON-lines file: {err}"))
            }
            Err(err) => Disposition::Retry(format!("JSON-lines writer failed: {err}")),
        }
    }
}

#[async_trait::async_trait]
impl Handler for JsonlSink {
    async fn handle(&self, incoming: Incoming, _ctx: &dyn DeliveryContext) -> Disposition {
        self.process(&incoming).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn appends_lines_and_rotates_keeping_n_old_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/results.jsonl");
        // Each line is 9 bytes with its newline: two fit in 20 bytes, a third rotates.
        let mut w = JsonlWriter::open(&path, 20, 2).unwrap();
        for i in 0..7 {
            w.append(format!("{{\"n\":{i}}}").as_bytes()).unwrap();
        }
        assert_eq!(lines(&path), [r#"{"n":6}"#]);
        assert_eq!(lines(&rotated_path(&path, 1)), [r#"{"n":4}"#, r#"{"n":5}"#]);
        assert_eq!(lines(&rotated_path(&path, 2)), [r#"{"n":2}"#, r#"{"n":3}"#]);
        assert!(!rotated_path(&path, 3).exists(), "only two old files kept");
        // Reopening continues the file and its size.
        drop(w);
        let mut w = JsonlWriter::open(&path, 20, 2).unwrap();
        w.append(br#"{"n":7}"#).unwrap();
        assert_eq!(lines(&path), [r#"{"n":6}"#, r#"{"n":7}"#]);
        w.append(br#"{"n":8}"#).unwrap();
        assert_eq!(lines(&path), [r#"{"n":8}"#]);
        assert_eq!(lines(&rotated_path(&path, 1)), [r#"{"n":6}"#, r#"{"n":7}"#]);
    }

    #[test]
    fn keep_zero_discards_the_full_file_and_a_long_line_still_goes_in() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.jsonl");
        let mut w = JsonlWriter::open(&path, 10, 0).unwrap();
        w.append(b"aaaa").unwrap();
        w.append(b"a line longer than the limit").unwrap();
        assert_eq!(lines(&path), ["a line longer than the limit"]);
        assert!(!rotated_path(&path, 1).exists());
    }

    #[test]
    fn lines_are_the_decoded_messages_and_bad_ones_are_refused() {
        let err = JsonlSink::line("result.PASSED.x", b"{nope").unwrap_err();
        assert!(err.contains("not valid JSON"), "{err}");
        let err = JsonlSink::line("job.running", br#"{"schema":"taskbot.result.v1"}"#).unwrap_err();
        assert!(
            err.contains("expected schema taskbot.job-status.v1"),
            "{err}"
        );
    }

    fn job() -> taskbot::messages::JobRequest {
        let task = taskbot::messages::TaskRef {
            name: "rpmlint".into(),
            repo: "https://git.example/rpmlint.git".into(),
            git_ref: "main".into(),
        };
        taskbot::testing::job_request(task, "x-1-1", "x86_64")
    }

    /// The binding of a deployment where every service is `guest` and no job records are kept
    /// (no PostgreSQL sink): only senders are checked.
    fn senders_only() -> Arc<Binding> {
        Arc::new(Binding::new(&taskbot::Config::default(), None))
    }

    /// Handle one delivery published by `guest`, checking that the sink published nothing itself.
    async fn deliver(sink: &JsonlSink, key: &str, body: Vec<u8>) -> Disposition {
        deliver_as(sink, key, body, Some("guest")).await
    }

    async fn deliver_as(
        sink: &JsonlSink,
        key: &str,
        body: Vec<u8>,
        user: Option<&str>,
    ) -> Disposition {
        let ctx = taskbot::testing::Recorder::new();
        let mut incoming = Incoming::new(key, body);
        incoming.user_id = user.map(str::to_string);
        let d = sink.handle(incoming, &ctx).await;
        assert!(ctx.published().is_empty());
        d
    }

    #[tokio::test]
    async fn the_sink_appends_each_status_and_result_as_one_line_and_dead_letters_junk() {
        use taskbot::messages::{JobState, JobStatus, TaskResult};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log/results.jsonl");
        let sink = JsonlSink::new(
            JsonlWriter::open(&path, 1 << 20, 2).unwrap(),
            senders_only(),
        );
        let job = job();
        let running = JobStatus::new(&job, JobState::Running, "runner@test", None);
        let result = TaskResult::crashed(&job, "runner@test", "boom");
        let done = Disposition::Done(Vec::new());
        assert_eq!(
            deliver(&sink, &running.routing_key(), running.to_json()).await,
            done
        );
        // A redelivered copy is appended again (at-least-once; readers dedupe by id).
        for _ in 0..2 {
            assert_eq!(
                deliver(&sink, &result.routing_key(), result.to_json()).await,
                done
            );
        }
        match deliver(&sink, "result.PASSED.x", b"{junk".to_vec()).await {
            Disposition::DeadLetter(reason) => {
                assert!(reason.contains("not valid JSON"), "{reason}")
            }
            other => panic!("expected DeadLetter, got {other:?}"),
        }
        let lines = lines(&path);
        assert_eq!(lines.len(), 3, "{lines:#?}");
        assert_eq!(JobStatus::from_json(lines[0].as_bytes()).unwrap(), running);
        assert_eq!(TaskResult::from_json(lines[1].as_bytes()).unwrap(), result);
        assert_eq!(lines[1], lines[2]);
    }

    #[tokio::test]
    async fn what_another_broker_user_or_no_user_sent_is_dead_lettered_and_not_written() {
        use taskbot::messages::{JobState, JobStatus, TaskResult};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("results.jsonl");
        let sink = JsonlSink::new(
            JsonlWriter::open(&path, 1 << 20, 2).unwrap(),
            senders_only(),
        );
        let job = job();
        let result = TaskResult::crashed(&job, "runner@test", "forged");
        let done = JobStatus::new(&job, JobState::Done, "runner@test", None);
        for (key, body) in [
            (result.routing_key(), result.to_json()),
            (done.routing_key(), done.to_json()),
        ] {
            for (user, says) in [
                (Some("forger"), "published by broker user \"forger\""),
                (None, "published without a user_id"),
            ] {
                match deliver_as(&sink, &key, body.clone(), user).await {
                    Disposition::DeadLetter(reason) => {
                        assert!(reason.contains(says), "{reason}");
                        assert!(
                            reason.contains("\"guest\""),
                            "names the expected user: {reason}"
                        );
                    }
                    other => panic!("expected DeadLetter, got {other:?}"),
                }
            }
        }
        assert!(lines(&path).is_empty(), "{:?}", lines(&path));
    }

    #[tokio::test]
    async fn a_line_that_cannot_be_written_is_retried() {
        // Every write to /dev/full fails with ENOSPC: a full disk.
        let sink = JsonlSink::new(
            JsonlWriter::open(Path::new("/dev/full"), 1 << 20, 0).unwrap(),
            senders_only(),
        );
        let result = taskbot::messages::TaskResult::crashed(&job(), "runner@test", "boom");
        match deliver(&sink, &result.routing_key(), result.to_json()).await {
            Disposition::Retry(reason) => assert!(
                reason.starts_with("cannot append to the JSON-lines file: "),
                "{reason}"
            ),
            other => panic!("expected Retry, got {other:?}"),
        }
    }
}
