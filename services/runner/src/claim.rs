//! One job runs at most once at a time on a host: a runner claims the job before it looks in the
//! outbox or runs it, and a second copy of the job waits for the claim.
//!
//! A second copy of a run message is normal under at-least-once delivery: the provisioner (or the
//! rules service before it) was killed after publishing the job but before acking its input, or
//! the broker restarted and redelivered a run message whose runner was still running the task.
//! With several runners sharing one `runner.work_dir`, the copy would otherwise start the same
//! task beside the first. Instead its runner waits until the first copy's handler is done: by
//! then the outcome is in the shared [outbox](crate::outbox), so the copy publishes it from there
//! (the stores dedupe the messages by id) and the task ran once. When the first runner died
//! before keeping an outcome, its claim died with it, and the copy runs the job.
//!
//! A claim is an exclusive `flock(2)` on `<work_dir>/claims/<job id>.lock`, held while the job's
//! delivery is handled. The kernel drops it when the runner dies, however it dies; the file is
//! removed when the claim ends (a killed runner's is removed at the next start,
//! [`remove_unclaimed`]). Runners on other hosts do not share the directory, so a copy delivered
//! there runs again; its results keep the same ids.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use uuid::Uuid;

use crate::workspace::{lock, same_file, LOCK_SUFFIX};

/// The claims' directory in a work directory.
pub const CLAIMS_DIR: &str = "claims";

/// A job claimed by this runner; the claim ends (and its file goes) when this is dropped.
#[derive(Debug)]
pub struct JobClaim {
    path: PathBuf,
    /// Holds the `flock`; closing it releases the claim.
    _lock: File,
}

impl JobClaim {
    /// Claim `job_id` if no live runner holds it; `None` when one does.
    pub fn try_take(work_dir: &Path, job_id: Uuid) -> io::Result<Option<JobClaim>> {
        let dir = work_dir.join(CLAIMS_DIR);
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(format!("{job_id}{LOCK_SUFFIX}"));
        loop {
            let file = File::options()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)?;
            match lock(&file, false) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) => return Err(e),
            }
            // The previous holder removed the file between our open and our lock: ours is a lock
            // on nothing, and we start again.
            if same_file(&file, &path) {
                return Ok(Some(JobClaim { path, _lock: file }));
            }
        }
    }
}

impl Drop for JobClaim {
    /// The file is removed while the lock is still held, so a runner waiting for it finds
    /// either a file it can lock for good or none (and makes a new one).
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Remove the claim files no live runner holds (left by killed runners); returns how many.
pub fn remove_unclaimed(work_dir: &Path) -> io::Result<usize> {
    let entries = match std::fs::read_dir(work_dir.join(CLAIMS_DIR)) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut removed = 0;
    for entry in entries {
        let path = entry?.path();
        let Some(job_id) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(LOCK_SUFFIX))
            .and_then(|id| id.parse::<Uuid>().ok())
        else {
            continue;
        };
        // Taking the claim and dropping it removes the file; a held one is left alone.
        if JobClaim::try_take(work_dir, job_id)?.is_some() {
            removed += 1;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claimed_job_cannot_be_claimed_again_until_the_claim_ends() {
        let work = tempfile::tempdir().unwrap();
        let job = Uuid::new_v4();
        let first = JobClaim::try_take(work.path(), job).unwrap().expect("free");
        // flock is per open file, so this holds within one process as between runners.
        assert!(JobClaim::try_take(work.path(), job).unwrap().is_none());
        assert!(
            JobClaim::try_take(work.path(), Uuid::new_v4())
                .unwrap()
                .is_some(),
            "another job is claimed independently"
        );
        drop(first);
        assert!(!work
            .path()
            .join("claims")
            .join(format!("{job}.lock"))
            .exists());
        assert!(JobClaim::try_take(work.path(), job).unwrap().is_some());
    }

    #[test]
    fn a_dead_runners_claim_is_free_and_removed_at_start() {
        let work = tempfile::tempdir().unwrap();
        let (dead, live) = (Uuid::new_v4(), Uuid::new_v4());
        // What a killed runner leaves: the file, with no lock on it.
        std::fs::create_dir_all(work.path().join("claims")).unwrap();
        std::fs::write(work.path().join("claims").join(format!("{dead}.lock")), "").unwrap();
        std::fs::write(work.path().join("claims").join("not-a-claim"), "").unwrap();
        let _held = JobClaim::try_take(work.path(), live).unwrap().unwrap();

        assert_eq!(remove_unclaimed(work.path()).unwrap(), 1);
        let mut left: Vec<String> = std::fs::read_dir(work.path().join("claims"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        let mut want = vec![format!("{live}.lock"), "not-a-claim".to_string()];
        want.sort();
        assert_eq!(left, want);
        assert_eq!(remove_unclaimed(&work.path().join("absent")).unwrap(), 0);
    }

    #[test]
    fn a_claim_is_free_once_its_process_dies() {
        use std::io::BufRead as _;
        use std::os::unix::process::CommandExt as _;
        let work = tempfile::tempdir().unwrap();
        let job = Uuid::new_v4();
        let path = work.path().join("claims").join(format!("{job}.lock"));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        // Another process holds the claim (flock(1) from util-linux, which says so once it
        // does; `-o`: its command does not inherit the lock), then is killed.
        let mut holder = std::process::Command::new("flock")
            .arg("-o")
            .arg(&path)
            .args(["-c", "echo locked; exec sleep 60"])
            .stdout(std::process::Stdio::piped())
            .process_group(0)
            .spawn()
            .expect("flock(1) runs");
        let mut line = String::new();
        std::io::BufReader::new(holder.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line, "locked\n");
        assert!(JobClaim::try_take(work.path(), job).unwrap().is_none());
        // SAFETY: kill(2) on the process group we made; no memory is involved.
        unsafe { libc::killpg(holder.id() as i32, libc::SIGKILL) };
        holder.wait().unwrap();
        assert!(JobClaim::try_take(work.path(), job).unwrap().is_some());
    }
}
