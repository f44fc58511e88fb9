//! Each job's own directory in `runner.work_dir`, and the removal at start of what a killed
//! runner left there.
//!
//! A job's files on this host live in `<work_dir>/<job id>-XXXXXX/` (its clone in `clone/`, the
//! VM's known-hosts file beside it). A runner killed with SIGKILL never removes it, so the next
//! runner to start does. Several runners may share one work directory, though, and a starting
//! runner must not remove the directory of a job another runner is running. So every job
//! directory has a lock file beside it, `<job id>-XXXXXX.lock`, which its runner holds with an
//! exclusive `flock(2)` for the job's whole life. The kernel drops the lock when the process
//! dies, however it dies: a lock that can be taken belongs to a dead runner, and its directory
//! is removed ([`remove_stale`]).
//!
//! The lock file is made and locked before the directory and removed after it, so every state a
//! killed runner can leave is a lock file that no one holds, with or without its directory.
//! Both are the runner's (usually root's) in a directory tasks never see: a task cannot touch
//! its lock or another job's.

use std::fs::File;
use std::io;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::os::unix::io::AsRawFd as _;
use std::path::{Path, PathBuf};

/// How a lock file's name ends; the directory it guards has the same name without it.
pub const LOCK_SUFFIX: &str = ".lock";
/// Where the clone is in a job directory.
const CLONE: &str = "clone";

/// One job's directory, locked while this value lives. [`JobDir::remove`] removes it; dropping it
/// without that leaves the directory for the next runner's start (only a crash should).
#[derive(Debug)]
pub struct JobDir {
    dir: PathBuf,
    lock_path: PathBuf,
    /// Holds the `flock`; closing it releases the lock.
    _lock: File,
}

impl JobDir {
    /// A fresh, locked job directory `<work_dir>/<prefix>XXXXXX/` with an empty `clone/` in it.
    /// The job directory may be traversed by anyone (the sandbox user must reach the clone) but
    /// read only by the runner; the clone is private until it is given to the sandbox user.
    pub fn create(work_dir: &Path, prefix: &str) -> io::Result<JobDir> {
        std::fs::create_dir_all(work_dir)?;
        loop {
            let (file, lock_path) = tempfile::Builder::new()
                .prefix(prefix)
                .suffix(LOCK_SUFFIX)
                .tempfile_in(work_dir)?
                .keep()
                .map_err(|e| e.error)?;
            lock(&file, true)?;
            // A runner starting meanwhile may have taken the lock before us and removed the file
            // as stale: then ours is a lock on nothing, and we start again.
            if !same_file(&file, &lock_path) {
                continue;
            }
            let dir = guarded_dir(&lock_path);
            if let Err(e) = std::fs::create_dir(&dir) {
                let _ = std::fs::remove_file(&lock_path);
                if e.kind() == io::ErrorKind::AlreadyExists {
                    continue;
                }
                return Err(e);
            }
            let job_dir = JobDir {
                dir,
                lock_path,
                _lock: file,
            };
            std::fs::set_permissions(&job_dir.dir, std::fs::Permissions::from_mode(0o711))?;
            std::fs::create_dir(job_dir.clone_dir())?;
            std::fs::set_permissions(job_dir.clone_dir(), std::fs::Permissions::from_mode(0o700))?;
            return Ok(job_dir);
        }
    }

    /// The job directory (for the runner's own files of the job).
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Where the task is cloned.
    pub fn clone_dir(&self) -> PathBuf {
        self.dir.join(CLONE)
    }

    /// Remove the directory, then its lock file, then let the lock go.
    pub fn remove(self) -> io::Result<()> {
        remove_entry(&self.dir)?;
        std::fs::remove_file(&self.lock_path)
    }
}

/// What [`remove_stale`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Swept {
    /// Job directories (or lone lock files) of dead runners, removed.
    pub removed: Vec<PathBuf>,
    /// Job directories whose lock is held: a live runner's, left alone.
    pub live: usize,
    /// What could not be removed, and why.
    pub failed: Vec<(PathBuf, String)>,
}

/// Remove every job directory in `work_dir` whose lock no one holds: what runners killed
/// before they could clean up left behind. Directories of jobs that live runners are running
/// (their lock is held) are kept. Entries that are not guarded by a lock file are not the
/// runner's and are left alone.
pub fn remove_stale(work_dir: &Path) -> io::Result<Swept> {
    let mut swept = Swept::default();
    let entries = match std::fs::read_dir(work_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(swept),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let path = entry?.path();
        let is_lock = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.ends_with(LOCK_SUFFIX) && n.len() > LOCK_SUFFIX.len());
        if !is_lock || !std::fs::symlink_metadata(&path)?.is_file() {
            continue;
        }
        match remove_if_unlocked(&path) {
            Ok(true) => swept.removed.push(guarded_dir(&path)),
            Ok(false) => swept.live += 1,
            Err(e) => swept.failed.push((guarded_dir(&path), e.to_string())),
        }
    }
    Ok(swept)
}

/// Take the lock at `lock_path` without waiting; if it was free, remove what it guards and the
/// lock file. `false`: the lock is held (or the file went away meanwhile).
fn remove_if_unlocked(lock_path: &Path) -> io::Result<bool> {
    let file = match File::open(lock_path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    match lock(&file, false) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
        Err(e) => return Err(e),
    }
    // Another starting runner removed it between our open and our lock.
    if !same_file(&file, lock_path) {
        return Ok(false);
    }
    remove_entry(&guarded_dir(lock_path))?;
    std::fs::remove_file(lock_path)?;
    Ok(true)
}

/// The directory a lock file guards: its path without [`LOCK_SUFFIX`].
fn guarded_dir(lock_path: &Path) -> PathBuf {
    let name = lock_path.to_string_lossy();
    PathBuf::from(name.strip_suffix(LOCK_SUFFIX).unwrap_or(&name).to_string())
}

/// Remove a directory tree (never following symbolic links) or a file; gone already is fine.
fn remove_entry(path: &Path) -> io::Result<()> {
    let removed = match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
    };
    match removed {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// An exclusive `flock`, waiting for it or not.
pub(crate) fn lock(file: &File, wait: bool) -> io::Result<()> {
    let operation = if wait {
        libc::LOCK_EX
    } else {
        libc::LOCK_EX | libc::LOCK_NB
    };
    loop {
        // SAFETY: flock(2) on a descriptor we own; no memory is involved.
        if unsafe { libc::flock(file.as_raw_fd(), operation) } == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Whether `path` still names the file `file` has open.
pub(crate) fn same_file(file: &File, path: &Path) -> bool {
    match (file.metadata(), std::fs::symlink_metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_job_dir_is_locked_for_its_life_and_removed_with_its_lock() {
        let work = tempfile::tempdir().unwrap();
        let job = JobDir::create(work.path(), "job-").unwrap();
        assert!(job.clone_dir().is_dir());
        let name = job
            .path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        assert_eq!(names(work.path()), [name.clone(), format!("{name}.lock")]);
        // Another open of the lock file cannot take the lock (flock is per open file, so this
        // holds even within one process).
        let lock_path = work.path().join(format!("{name}.lock"));
        let other = File::open(&lock_path).unwrap();
        assert_eq!(
            lock(&other, false).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        job.remove().unwrap();
        assert!(names(work.path()).is_empty());
    }

    #[test]
    fn stale_dirs_are_removed_and_live_ones_kept() {
        let work = tempfile::tempdir().unwrap();
        let live = JobDir::create(work.path(), "live-").unwrap();
        std::fs::write(live.clone_dir().join("f"), "running").unwrap();
        // A killed runner's job: its lock file is no longer held by anyone.
        let dead = JobDir::create(work.path(), "dead-").unwrap();
        std::fs::create_dir_all(dead.clone_dir().join("deep/er")).unwrap();
        std::fs::write(dead.clone_dir().join("deep/er/f"), "left").unwrap();
        let dead_path = dead.path().to_path_buf();
        drop(dead);
        // Killed between making its lock file and its directory.
        std::fs::write(work.path().join("half-XXXX.lock"), "").unwrap();
        // Not the runner's: left alone.
        std::fs::create_dir(work.path().join("operator-notes")).unwrap();

        let swept = remove_stale(work.path()).unwrap();
        let mut removed = swept.removed.clone();
        removed.sort();
        assert_eq!(removed, [dead_path, work.path().join("half-XXXX")]);
        assert_eq!((swept.live, swept.failed.len()), (1, 0), "{swept:?}");
        let live_name = live
            .path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        assert_eq!(
            names(work.path()),
            [
                live_name.clone(),
                format!("{live_name}.lock"),
                "operator-notes".to_string()
            ]
        );
        assert_eq!(
            std::fs::read_to_string(live.clone_dir().join("f")).unwrap(),
            "running"
        );
        live.remove().unwrap();
    }

    #[test]
    fn a_symlink_in_a_stale_dir_is_removed_not_followed() {
        let work = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("keep"), "keep").unwrap();
        let dead = JobDir::create(work.path(), "dead-").unwrap();
        std::os::unix::fs::symlink(outside.path(), dead.clone_dir().join("link")).unwrap();
        drop(dead);
        assert_eq!(remove_stale(work.path()).unwrap().removed.len(), 1);
        assert!(outside.path().join("keep").exists());
        assert!(names(work.path()).is_empty());
    }

    #[test]
    fn a_missing_work_dir_has_nothing_stale() {
        let work = tempfile::tempdir().unwrap();
        assert_eq!(
            remove_stale(&work.path().join("nope")).unwrap(),
            Swept::default()
        );
    }
}
