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

/// The public link to what `location` (a result's `log_url`, as its runner wrote it) points at:
/// a runner that knows no public URL (no `runner.artifacts_url` or `api.public_url` in *its*
/// configuration) writes the local path of the job's artifacts directory,
/// `<runner.artifacts_dir>/<job id>/task.log`. Where the configuration read here publishes
/// the artifacts (`artifacts_url`, [`crate::Config::artifacts_url`]), such a path, or the same as
/// a `file://` URL, becomes `<artifacts_url>/<job id>/task.log`. Anything else (already a URL, a
/// path that is not under a directory named after the job) is returned as it is.
pub fn public_link(location: &str, job_id: uuid::Uuid, artifacts_url: Option<&str>) -> String {
    let Some(base) = artifacts_url else {
        return location.to_string();
    };
    let path = location.strip_prefix("file://").unwrap_or(location);
    if !path.starts_with('/') {
        return location.to_string();
    }
    let job = job_id.to_string();
    let segments: Vec<&str> = path.split('/').collect();
    // The last directory named after the job: what follows is the file's place in the job's
    // artifacts, whatever the runner's artifacts directory was.
    let Some(at) = segments.iter().rposition(|segment| *segment == job) else {
        return location.to_string();
    };
    let rest: Vec<&str> = segments[at + 1..]
        .iter()
        .copied()
        .filter(|s| !s.is_empty())
        .collect();
    if rest.iter().any(|s| *s == ".." || *s == ".") {
        return location.to_string();
    }
    let base = base.trim_end_matches('/');
    match rest.is_empty() {
        true => format!("{base}/{job}/"),
        false => format!("{base}/{job}/{}", rest.join("/")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_log_paths_become_public_links_where_the_artifacts_are_published() {
        let job = uuid::Uuid::parse_str("0e7c1b7e-3a57-5f0e-8f7e-2b9c4d1a6e30").unwrap();
        let public = Some("https://taskbot.example/artifacts/");
        let local = format!("/var/lib/taskbot/artifacts/{job}/task.log");
        assert_eq!(
            public_link(&local, job, public),
            format!("https://taskbot.example/artifacts/{job}/task.log")
        );
        assert_eq!(
            public_link(&format!("file:///srv/a/{job}/out/x.txt"), job, public),
            format!("https://taskbot.example/artifacts/{job}/out/x.txt")
        );
        assert_eq!(
            public_link(&format!("/srv/a/{job}"), job, public),
            format!("https://taskbot.example/artifacts/{job}/")
        );
        // Unpublished, already a URL, another job's directory, a way out: left alone.
        assert_eq!(public_link(&local, job, None), local);
        let url = format!("https://cdn.example/{job}/task.log");
        assert_eq!(public_link(&url, job, public), url);
        let other = "/var/lib/taskbot/artifacts/5a1f0000-0000-4000-8000-000000000000/task.log";
        assert_eq!(public_link(other, job, public), other);
        let escape = format!("/srv/a/{job}/../../etc/passwd");
        assert_eq!(public_link(&escape, job, public), escape);
    }

    #[test]
    fn steps_are_numbered_in_running_order() {
        assert_eq!(step_name(2, "setup"), "02-setup");
        assert_eq!(step_name(12, "run-3"), "12-run-3");
    }
}
