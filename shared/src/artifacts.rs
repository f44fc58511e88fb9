//! The layout of a job's artifacts directory: what the runner leaves in
//! `<runner.artifacts_dir>/<job id>/` (published at `<runner.artifacts_url>/<job id>/` when the
//! operator serves it) and what the api, the dashboard and people look for there.
//!
//! One place for the names, so the runner that writes them and the readers cannot drift apart,
//! and for how a file a task wrote is opened ([`open_beneath`], [`check_regular`]): the runner
//! and the api read those files as users that may see much more of the host than the task.
//! `docs/tasks.md` ("Logs and artifacts") describes the layout for task authors. Everything else
//! in the directory is the task's own: what it wrote to `$TASKBOT_ARTIFACTS` and the files its
//! `artifacts` globs matched.

use std::fs::{File, Metadata};
use std::os::fd::{AsRawFd as _, FromRawFd as _};
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;

/// The job's log, the one place its output is stored: the commit and mirror fetch, download
/// progress, each step's command, output and end, the artifacts kept, within
/// `runner.max_log_bytes` (past it, its head and its tail with a note of what was dropped). Every
/// result's `log_url` links it, and a CRASHED note quotes its last lines.
pub const TASK_LOG: &str = "task.log";

/// The events the task announced (`$TASKBOT_EVENTS`), one JSON object per line. Kept with the
/// artifacts so what a task announced can be looked at afterwards.
pub const EVENTS_FILE: &str = "events.jsonl";

/// How the log names the `number`-th step run (counted from 1 across all phases, in the order
/// they ran) named `name`: `02-setup`.
pub fn step_name(number: usize, name: &str) -> String {
    format!("{number:02}-{name}")
}

/// The kernel's `struct open_how` (libc's is not constructible outside its crate).
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// `relative` opened read-only beneath `root` with `openat2(2)`: no symbolic link followed
/// anywhere on its path (`ELOOP`), nothing outside `root` (`EXDEV`), without blocking on a FIFO.
/// An empty `relative` opens `root` itself. Check what was opened with [`check_regular`] before
/// reading it: a hard link or a device is opened too.
pub fn open_beneath(root: &Path, relative: &Path) -> std::io::Result<File> {
    let dir = File::open(root)?;
    let relative = if relative.as_os_str().is_empty() {
        Path::new(".")
    } else {
        relative
    };
    let path = std::ffi::CString::new(relative.as_os_str().as_encoded_bytes())
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    let how = OpenHow {
        flags: (libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve: libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS,
    };
    // SAFETY: openat2 reads `path` (a valid C string) and `how` (a valid open_how of the size
    // given) and returns a new descriptor or -1; nothing else is touched.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            path.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a descriptor openat2 just returned and nothing else owns.
    Ok(unsafe { File::from_raw_fd(fd as i32) })
}

/// Whether an error of [`open_beneath`] means a symbolic link (or a way out of the root) was
/// refused.
pub fn is_link_refusal(error: &std::io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::ELOOP) | Some(libc::EXDEV))
}

/// `Ok` for a regular file with a single link, else why a file a task wrote is not read: a
/// second link could be a host file (a hard link keeps the host file's content and owner), and
/// a FIFO, socket or device is not the task's data at all.
pub fn check_regular(meta: &Metadata) -> Result<(), String> {
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    if meta.nlink() != 1 {
        return Err(format!(
            "{} hard links; only files with one are kept",
            meta.nlink()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_numbered_in_running_order() {
        assert_eq!(step_name(2, "setup"), "02-setup");
        assert_eq!(step_name(12, "run-3"), "12-run-3");
    }
}
