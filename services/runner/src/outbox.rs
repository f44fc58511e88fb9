//! The runner's outbox: a finished job's outcome on disk until the broker has confirmed it, so
//! that a broker outage during a task costs a re-publish, not a re-run.
//!
//! A job's delivery is acked on the channel it came on. When the broker goes away while a task
//! runs, that channel is gone with it: the runner can neither publish the outcome nor ack, and
//! the broker hands the job out again once it is back. So, as soon as the verdict is known and
//! before anything of it is published, the runner writes the job's final messages (its results,
//! the events it announced, its final status, each with its message id) to
//! `runner.work_dir/outbox/<job id>.json`, atomically. Once the consume loop has had every one of
//! them confirmed (just before the ack, [`Handler::confirmed`]) the entry is marked published
//! (`<job id>.published.json`), and kept until the start sweep removes it by age: a run message
//! can come more than once (the provisioner publishes it again when the broker died before its
//! own ack). When a job arrives that has an entry, pending or published, its messages are
//! published again instead of running the task.
//!
//! Republishing is safe: result ids and status ids are derived or kept, so the reporter stores a
//! result once whatever the number of copies. Runners sharing a `work_dir` (one host) share the
//! outbox; a runner on another host that gets the redelivered job runs it again, and its results
//! carry the same ids (the worst case is a re-run, never a duplicate result).
//!
//! The directory is the runner's own (mode 0700, never bound into a task's sandbox). An entry
//! that cannot be read or does not hold what the runner writes is moved aside (`.refused`) with
//! a warning naming it, and the job runs again: a bad file never stops the runner.
//!
//! [`Handler::confirmed`]: taskbot::amqp::Handler::confirmed

use std::fs::{self, File};
use std::io::{self, Write as _};
use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use taskbot::amqp::Outgoing;
use uuid::Uuid;

/// The outbox's directory under `runner.work_dir`.
pub const OUTBOX_DIR: &str = "outbox";
/// An entry larger than this is refused rather than read (the runner writes far smaller ones).
pub const MAX_ENTRY_BYTES: u64 = 256 * 1024 * 1024;
/// Entries older than this are removed at the runner's start: their job went to a runner of
/// another host, or will never come back.
pub const MAX_ENTRY_AGE: Duration = Duration::from_secs(30 * 24 * 3600);
/// The middle of a published entry's name (`<job id>.published.json`).
const PUBLISHED: &str = "published";
/// The version of the entry's format.
const FORMAT: u32 = 1;

/// One job's kept outcome, as written to disk.
#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    format: u32,
    job_id: Uuid,
    kept_at: DateTime<Utc>,
    messages: Vec<Kept>,
}

/// An [`Outgoing`] as kept on disk: the body as text (every message the runner publishes is
/// JSON), so entries can be read by people.
#[derive(Debug, Serialize, Deserialize)]
struct Kept {
    exchange: String,
    routing_key: String,
    body: String,
    message_id: Option<String>,
    priority: Option<u8>,
    headers: Vec<(String, String)>,
    int_headers: Vec<(String, i64)>,
    #[serde(default)]
    bool_headers: Vec<(String, bool)>,
    content_encoding: Option<String>,
}

impl Kept {
    fn of(msg: &Outgoing) -> io::Result<Kept> {
        let body = String::from_utf8(msg.body.clone()).map_err(|_| {
            io::Error::new(io::ErrorKind::InvalidData, "a message body is not UTF-8")
        })?;
        Ok(Kept {
            exchange: msg.exchange.clone(),
            routing_key: msg.routing_key.clone(),
            body,
            message_id: msg.message_id.clone(),
            priority: msg.priority,
            headers: msg.headers.clone(),
            int_headers: msg.int_headers.clone(),
            bool_headers: msg.bool_headers.clone(),
            content_encoding: msg.content_encoding.clone(),
        })
    }

    fn into_outgoing(self) -> Outgoing {
        Outgoing {
            exchange: self.exchange,
            routing_key: self.routing_key,
            body: self.body.into_bytes(),
            message_id: self.message_id,
            priority: self.priority,
            headers: self.headers,
            int_headers: self.int_headers,
            bool_headers: self.bool_headers,
            content_encoding: self.content_encoding,
            bcc: Vec::new(),
        }
    }
}

/// What the outbox holds for a job.
#[derive(Debug, PartialEq)]
pub enum Pending {
    /// Nothing: run the job.
    None,
    /// The job's final messages, to publish instead of running it.
    Kept(Vec<Outgoing>),
    /// An entry that could not be used, moved aside to `moved_to` (if it could be): run the job.
    Refused {
        reason: String,
        moved_to: Option<PathBuf>,
    },
}

/// The outbox of the runners sharing one `work_dir`. All of it is blocking file I/O: call it off
/// the async threads.
#[derive(Debug, Clone)]
pub struct Outbox {
    dir: PathBuf,
}

impl Outbox {
    pub fn new(work_dir: &Path) -> Outbox {
        Outbox {
            dir: work_dir.join(OUTBOX_DIR),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The entry's path for `job_id`.
    pub fn path(&self, job_id: Uuid) -> PathBuf {
        self.dir.join(format!("{job_id}.json"))
    }

    /// Keep `messages` as `job_id`'s outcome, replacing any earlier entry: written to a
    /// temporary file, flushed to disk, then renamed into place, so a reader sees the whole
    /// entry or none.
    pub fn keep(&self, job_id: Uuid, messages: &[Outgoing]) -> io::Result<PathBuf> {
        let entry = Entry {
            format: FORMAT,
            job_id,
            kept_at: Utc::now(),
            messages: messages.iter().map(Kept::of).collect::<io::Result<_>>()?,
        };
        let text = serde_json::to_vec_pretty(&entry).map_err(io::Error::other)?;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)?;
        let path = self.path(job_id);
        let temporary = self
            .dir
            .join(format!(".{job_id}.{}.tmp", Uuid::new_v4().simple()));
        let written = (|| {
            let mut file = File::create(&temporary)?;
            file.write_all(&text)?;
            file.sync_all()?;
            fs::rename(&temporary, &path)?;
            File::open(&self.dir)?.sync_all()
        })();
        if written.is_err() {
            let _ = fs::remove_file(&temporary);
        }
        written.map(|()| path)
    }

    /// The entry of `job_id` once its messages were all confirmed: kept (until the start sweep
    /// removes it by age), because a run message can arrive more than once (a provisioner that
    /// published it and lost the broker before its own ack publishes it again), and a copy of a
    /// finished job must not run it again.
    pub fn published_path(&self, job_id: Uuid) -> PathBuf {
        self.dir.join(format!("{job_id}.{PUBLISHED}.json"))
    }

    /// What the outbox holds for `job_id`, pending or published, every message on one of
    /// `exchanges`. A bad entry is moved aside, never left to be refused again.
    pub fn pending(&self, job_id: Uuid, exchanges: &[String]) -> Pending {
        match self.read(&self.path(job_id), job_id, exchanges) {
            Pending::None => self.read(&self.published_path(job_id), job_id, exchanges),
            found => found,
        }
    }

    fn read(&self, path: &Path, job_id: Uuid, exchanges: &[String]) -> Pending {
        let path = path.to_path_buf();
        match read_entry(&path, job_id, exchanges) {
            Ok(None) => Pending::None,
            Ok(Some(messages)) => Pending::Kept(messages),
            Err(reason) => {
                let aside = path.with_extension(format!(
                    "json.{}.refused",
                    Utc::now().format("%Y%m%dT%H%M%S%.f")
                ));
                let moved_to = fs::rename(&path, &aside).ok().map(|()| aside);
                Pending::Refused { reason, moved_to }
            }
        }
    }

    /// Mark `job_id`'s entry published (none is fine): its messages were all confirmed. It is
    /// kept as [`Outbox::published_path`], so a later copy of the job is answered from it.
    pub fn mark_published(&self, job_id: Uuid) -> io::Result<()> {
        match fs::rename(self.path(job_id), self.published_path(job_id)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// At start: remove entries (and temporary files of writes cut short) older than `max_age`;
    /// returns the entries removed and those still waiting for their job.
    pub fn sweep(&self, max_age: Duration) -> io::Result<Swept> {
        let mut swept = Swept::default();
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(swept),
            Err(e) => return Err(e),
        };
        let now = SystemTime::now();
        for entry in entries {
            let entry = entry?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let age = entry
                .metadata()?
                .modified()
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .unwrap_or_default();
            let is_entry = name.ends_with(".json") && !name.starts_with('.');
            if name.starts_with('.') && name.ends_with(".tmp") && age > Duration::from_secs(3600)
                || is_entry && age > max_age
            {
                fs::remove_file(&path)?;
                if is_entry {
                    swept.removed.push(path);
                }
            } else if is_entry && !name.ends_with(&format!(".{PUBLISHED}.json")) {
                swept.waiting.push(path);
            }
        }
        Ok(swept)
    }
}

/// What [`Outbox::sweep`] found.
#[derive(Debug, Default)]
pub struct Swept {
    pub removed: Vec<PathBuf>,
    pub waiting: Vec<PathBuf>,
}

/// The messages of the entry at `path`, `None` when there is none; why it cannot be used
/// otherwise.
fn read_entry(
    path: &Path,
    job_id: Uuid,
    exchanges: &[String],
) -> Result<Option<Vec<Outgoing>>, String> {
    let refuse = |why: String| format!("outbox entry {}: {why}", path.display());
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(refuse(e.to_string())),
    };
    if !meta.is_file() {
        return Err(refuse("not a regular file".into()));
    }
    if meta.len() > MAX_ENTRY_BYTES {
        return Err(refuse(format!(
            "{} bytes, over the {MAX_ENTRY_BYTES} an entry may have",
            meta.len()
        )));
    }
    let text = fs::read(path).map_err(|e| refuse(e.to_string()))?;
    let entry: Entry =
        serde_json::from_slice(&text).map_err(|e| refuse(format!("not an outbox entry: {e}")))?;
    if entry.format != FORMAT {
        return Err(refuse(format!(
            "format {} (this runner reads {FORMAT})",
            entry.format
        )));
    }
    if entry.job_id != job_id {
        return Err(refuse(format!("holds job {}", entry.job_id)));
    }
    if entry.messages.is_empty() {
        return Err(refuse("holds no message".into()));
    }
    if let Some(other) = entry
        .messages
        .iter()
        .find(|m| !exchanges.contains(&m.exchange))
    {
        return Err(refuse(format!(
            "a message for exchange {:?}, where the runner publishes none",
            other.exchange
        )));
    }
    Ok(Some(
        entry
            .messages
            .into_iter()
            .map(Kept::into_outgoing)
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn messages() -> Vec<Outgoing> {
        vec![
            Outgoing::new("tb.results", "result.PASSED.x", b"{\"a\":1}".to_vec())
                .with_message_id("r1")
                .with_header("h", "v")
                .with_int_header("n", 3),
            Outgoing::new("tb.results", "job.done", b"{}".to_vec()).with_message_id("s1"),
        ]
    }

    fn exchanges() -> Vec<String> {
        vec!["tb.results".into(), "tb.events".into()]
    }

    #[test]
    fn a_kept_outcome_reads_back_whole_and_stays_once_published() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::new(dir.path());
        let job = Uuid::new_v4();
        assert_eq!(outbox.pending(job, &exchanges()), Pending::None);
        let path = outbox.keep(job, &messages()).unwrap();
        assert_eq!(path, dir.path().join(format!("outbox/{job}.json")));
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &fs::metadata(outbox.dir()).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o700, "the outbox is the runner's own");
        assert_eq!(outbox.pending(job, &exchanges()), Pending::Kept(messages()));
        assert_eq!(
            fs::read_dir(outbox.dir()).unwrap().count(),
            1,
            "no temporary left"
        );
        outbox.mark_published(job).unwrap();
        assert!(!outbox.path(job).exists());
        assert!(outbox.published_path(job).is_file());
        assert_eq!(
            outbox.pending(job, &exchanges()),
            Pending::Kept(messages()),
            "a finished job's copy is answered from its published entry"
        );
        outbox.mark_published(job).unwrap();
        let swept = outbox.sweep(MAX_ENTRY_AGE).unwrap();
        assert!(
            swept.waiting.is_empty(),
            "a published entry waits for nothing"
        );
        outbox.sweep(Duration::ZERO).unwrap();
        assert_eq!(outbox.pending(job, &exchanges()), Pending::None);
    }

    #[test]
    fn a_bad_entry_is_refused_by_name_and_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::new(dir.path());
        let job = Uuid::new_v4();
        outbox.keep(job, &messages()).unwrap();
        let path = outbox.path(job);
        let whole = fs::read(&path).unwrap();
        fs::write(&path, &whole[..whole.len() / 2]).unwrap();
        let Pending::Refused { reason, moved_to } = outbox.pending(job, &exchanges()) else {
            panic!("a cut entry must be refused");
        };
        assert!(
            reason.starts_with(&format!(
                "outbox entry {}: not an outbox entry",
                path.display()
            )),
            "{reason}"
        );
        assert!(moved_to.unwrap().exists());
        assert!(!path.exists());
        assert_eq!(outbox.pending(job, &exchanges()), Pending::None);

        // Another job's entry under this job's name, and a message to an exchange the runner
        // never publishes to.
        let other = Uuid::new_v4();
        outbox.keep(other, &messages()).unwrap();
        fs::rename(outbox.path(other), &path).unwrap();
        let Pending::Refused { reason, .. } = outbox.pending(job, &exchanges()) else {
            panic!("another job's entry must be refused");
        };
        assert!(reason.ends_with(&format!("holds job {other}")), "{reason}");
        outbox.keep(job, &messages()).unwrap();
        let Pending::Refused { reason, .. } = outbox.pending(job, &["tb.events".into()]) else {
            panic!("a foreign exchange must be refused");
        };
        assert!(reason.contains("exchange \"tb.results\""), "{reason}");
    }

    #[test]
    fn the_sweep_removes_only_old_entries() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::new(dir.path());
        assert!(outbox.sweep(MAX_ENTRY_AGE).unwrap().waiting.is_empty());
        let job = Uuid::new_v4();
        let path = outbox.keep(job, &messages()).unwrap();
        let swept = outbox.sweep(MAX_ENTRY_AGE).unwrap();
        assert_eq!((swept.removed, swept.waiting), (vec![], vec![path.clone()]));
        std::thread::sleep(Duration::from_millis(20));
        let swept = outbox.sweep(Duration::from_millis(10)).unwrap();
        assert_eq!((swept.removed, swept.waiting), (vec![path.clone()], vec![]));
        assert!(!path.exists());
    }
}
