//! Reading the files a task controls (`taskbot.yaml` in its clone, `results.yml`, its events
//! file) without being tricked into reading anything else.
//!
//! The runner reads them as its own user, typically root, while the task wrote them as the
//! sandbox user. A task could make `results.yml` a symbolic link to `/etc/shadow`, a directory on
//! its path a link to `/`, a hard link to a host file, a FIFO that blocks the reader forever, or
//! a file of gigabytes. So a task file is opened with `openat2(2)` beneath its directory with no
//! symbolic link followed anywhere on the path, must be a regular file with one link, and is
//! read up to a size cap: anything else is refused with a reason, never read.

use std::io::Read as _;
use std::path::Path;

use taskbot::artifacts::{check_regular, is_link_refusal, open_beneath};
use taskbot::yaml_budget::YamlBudget;

/// The limits `taskbot.yaml` and `results.yml` are checked against before they are parsed
/// (taskbot::yaml_budget) when the runner's configuration says none: a task could otherwise nest
/// brackets so that the YAML parser spends minutes on one file, past the task's time limit. The
/// runner's own are `runner.max_task_file_bytes` and `runner.max_task_file_depth`.
pub fn default_budget() -> YamlBudget {
    taskbot::config::RunnerConfig::default().task_file_budget()
}

/// The bytes of `relative` under `root`, `None` if it does not exist, or why it was refused.
pub fn read_beneath(
    root: &Path,
    relative: &Path,
    max_bytes: u64,
) -> Result<Option<Vec<u8>>, String> {
    let file = match open_beneath(root, relative) {
        Ok(file) => file,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
        Err(e) if is_link_refusal(&e) => {
            return Err(format!(
                "{} is a symbolic link, lies behind one or outside the job's directory; task files must be regular files in it",
                relative.display()
            ))
        }
        Err(e) => return Err(format!("cannot open {}: {e}", relative.display())),
    };
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot inspect {}: {e}", relative.display()))?;
    check_regular(&meta).map_err(|why| format!("{}: {why}", relative.display()))?;
    if meta.len() > max_bytes {
        return Err(format!(
            "{} is {} bytes, over the limit of {max_bytes}",
            relative.display(),
            meta.len()
        ));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(max_bytes + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read {}: {e}", relative.display()))?;
    if bytes.len() as u64 > max_bytes {
        return Err(format!(
            "{} grew over the limit of {max_bytes} bytes",
            relative.display()
        ));
    }
    Ok(Some(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn a_regular_file_is_read_and_a_missing_one_is_none() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("out")).unwrap();
        std::fs::write(dir.path().join("out/results.yml"), "ok").unwrap();
        assert_eq!(
            read_beneath(dir.path(), Path::new("out/results.yml"), 10),
            Ok(Some(b"ok".to_vec()))
        );
        assert_eq!(
            read_beneath(dir.path(), Path::new("none.yml"), 10),
            Ok(None)
        );
    }

    #[test]
    fn links_fifos_and_oversized_files_are_refused_unread() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        symlink("/etc/passwd", root.join("results.yml")).unwrap();
        std::fs::create_dir(root.join("real")).unwrap();
        std::fs::write(root.join("real/r.yml"), "x").unwrap();
        symlink("/etc", root.join("etc")).unwrap();
        symlink(root.join("real"), root.join("inside")).unwrap();
        std::fs::hard_link(root.join("real/r.yml"), root.join("hard.yml")).unwrap();
        std::fs::write(root.join("big.yml"), vec![b'a'; 11]).unwrap();
        let fifo =
            std::ffi::CString::new(root.join("fifo.yml").as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: mkfifo reads a valid C string.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        for (name, why) in [
            ("results.yml", "symbolic link"),
            ("etc/passwd", "symbolic link"),
            ("inside/r.yml", "symbolic link"),
            ("../outside.yml", "symbolic link"),
            ("/etc/passwd", "symbolic link"),
            ("hard.yml", "hard links"),
            ("big.yml", "over the limit"),
            ("fifo.yml", "not a regular file"),
            ("real", "not a regular file"),
        ] {
            let err = read_beneath(root, Path::new(name), 10).unwrap_err();
            assert!(err.contains(why), "{name}: {err}");
            assert!(!err.contains("root:"), "{name} was read: {err}");
        }
    }
}
