//! `artifacts:` globs: which files of the clone are kept with the job's logs when it ends.
//!
//! Globs are matched against paths relative to the clone, segment by segment: `*` matches any
//! run of characters within one segment, `?` one character, and a `**` segment any number of
//! segments (`out/**/*.log`). `.git` is never searched.

use std::path::Path;

/// Whether the relative path `path` (with `/` separators) matches `glob`: the project's one
/// path-glob matcher, [`taskbot::text::path_glob_matches`].
pub fn glob_matches(glob: &str, path: &str) -> bool {
    taskbot::text::path_glob_matches(glob, path)
}

/// What a job may leave in its artifacts directory (`runner.max_artifact_bytes`,
/// `runner.max_artifact_files`), and how much of it is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allowance {
    pub max_bytes: u64,
    pub max_files: u64,
    pub bytes: u64,
    pub files: u64,
}

impl Allowance {
    pub fn new(max_bytes: u64, max_files: u64) -> Allowance {
        Allowance {
            max_bytes,
            max_files,
            bytes: 0,
            files: 0,
        }
    }

    /// Take room for a file of `len` bytes; `Err` names the cap it would pass.
    fn take(&mut self, len: u64) -> Result<(), String> {
        if self.files >= self.max_files {
            return Err(format!(
                "over runner.max_artifact_files ({} files)",
                self.max_files
            ));
        }
        if self.bytes.saturating_add(len) > self.max_bytes {
            return Err(format!(
                "over runner.max_artifact_bytes ({} bytes; this file has {len})",
                self.max_bytes
            ));
        }
        self.files += 1;
        self.bytes += len;
        Ok(())
    }
}

/// What [`sweep`] and [`copy_matching`] did, file by file.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tidied {
    /// Relative paths kept.
    pub kept: Vec<String>,
    /// Relative paths removed (or not copied) as links, special files or failed copies, with
    /// why.
    pub refused: Vec<(String, String)>,
    /// Relative paths removed (or not copied) because a cap was reached, with which.
    pub over_cap: Vec<(String, String)>,
}

/// Why a file is not kept: it is not one a job may keep, or it passes a cap.
enum Refusal {
    Kind(String),
    Cap(String),
}

impl Tidied {
    fn note(&mut self, relative: String, verdict: Result<(), Refusal>) {
        match verdict {
            Ok(()) => self.kept.push(relative),
            Err(Refusal::Kind(why)) => self.refused.push((relative, why)),
            Err(Refusal::Cap(why)) => self.over_cap.push((relative, why)),
        }
    }
}

/// Whether a file of `meta` may be kept, and room for it.
fn admit(meta: &std::fs::Metadata, allowance: &mut Allowance) -> Result<(), Refusal> {
    taskbot::artifacts::check_regular(meta).map_err(Refusal::Kind)?;
    allowance.take(meta.len()).map_err(Refusal::Cap)
}

/// Remove `relative` under `dir`, saying so in `why` when it cannot be.
fn remove(dir: &Path, relative: &str, verdict: Result<(), Refusal>) -> Result<(), Refusal> {
    let Err(refusal) = verdict else {
        return Ok(());
    };
    let failed = std::fs::remove_file(dir.join(relative)).err();
    let with = |why: String| match &failed {
        None => why,
        Some(e) => format!("{why}; cannot remove it: {e}"),
    };
    Err(match refusal {
        Refusal::Kind(why) => Refusal::Kind(with(why)),
        Refusal::Cap(why) => Refusal::Cap(with(why)),
    })
}

/// Remove from the job's artifacts directory `dir` everything it may not keep, once no process
/// of the task is left to change it: symbolic links (they could point anywhere on the host),
/// files with more than one hard link (one could be a host file), FIFOs, sockets and devices,
/// and the files past `allowance` (in path order; a file too big for what is left is removed,
/// smaller ones after it may still fit). `own` are the runner's files at the top, not counted.
pub fn sweep(dir: &Path, own: &[&str], allowance: &mut Allowance) -> Tidied {
    let mut entries = Vec::new();
    walk(dir, dir, &mut entries);
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    let mut tidied = Tidied::default();
    for (relative, meta) in entries {
        if own.contains(&relative.as_str()) {
            continue;
        }
        let verdict = remove(dir, &relative, admit(&meta, allowance));
        tidied.note(relative, verdict);
    }
    tidied
}

/// Everything but directories below `dir` (not following symbolic links), relative to `root`,
/// with its own metadata, skipping `.git`.
fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, std::fs::Metadata)>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            if entry.file_name() != ".git" {
                walk(root, &path, out);
            }
        } else if let Ok(relative) = path.strip_prefix(root) {
            out.push((relative.to_string_lossy().into_owned(), meta));
        }
    }
}

/// Copy every regular file of a single link under `root` that matches one of `globs` to the
/// same relative path under `dest`, within `allowance`. Never over a file already there (the
/// runner's own log).
pub fn copy_matching(
    root: &Path,
    dest: &Path,
    globs: &[String],
    allowance: &mut Allowance,
) -> Tidied {
    let mut files = Vec::new();
    if globs.is_empty() {
        return Tidied::default();
    }
    walk(root, root, &mut files);
    files.sort_by(|a, b| a.0.cmp(&b.0));
    let mut tidied = Tidied::default();
    for (relative, meta) in files {
        if !globs.iter().any(|g| glob_matches(g, &relative)) {
            continue;
        }
        let target = dest.join(&relative);
        let verdict = match target.symlink_metadata() {
            Ok(_) => Err(Refusal::Kind("already in the artifacts".into())),
            Err(_) => admit(&meta, allowance),
        };
        if verdict.is_err() {
            tidied.note(relative, verdict);
            continue;
        }
        let copied = target
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|_| std::fs::copy(root.join(&relative), &target));
        tidied.note(
            relative,
            copied.map(drop).map_err(|e| Refusal::Kind(e.to_string())),
        );
    }
    tidied
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_by_segment() {
        assert!(glob_matches("*.log", "a.log"));
        assert!(
            !glob_matches("*.log", "out/a.log"),
            "* stays in its segment"
        );
        assert!(glob_matches("out/*.log", "out/a.log"));
        assert!(glob_matches("out/**/*.log", "out/a.log"));
        assert!(glob_matches("out/**/*.log", "out/x/y/a.log"));
        assert!(glob_matches("**", "any/thing"));
        assert!(glob_matches("report-?.html", "report-1.html"));
        assert!(!glob_matches("report-?.html", "report-12.html"));
        assert!(!glob_matches("out/*.log", "out/a.txt"));
    }

    fn plenty() -> Allowance {
        Allowance::new(u64::MAX, u64::MAX)
    }

    #[test]
    fn matching_regular_files_are_copied_not_links_nor_over_existing_files() {
        let root = tempfile::tempdir().unwrap();
        let dest = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("out/deep")).unwrap();
        std::fs::create_dir_all(root.path().join(".git")).unwrap();
        std::fs::write(root.path().join("out/a.log"), "a").unwrap();
        std::fs::write(root.path().join("out/deep/b.log"), "b").unwrap();
        std::fs::write(root.path().join("out/c.txt"), "c").unwrap();
        std::fs::write(root.path().join(".git/x.log"), "git").unwrap();
        std::fs::write(root.path().join("task.log"), "mine").unwrap();
        std::fs::write(dest.path().join("task.log"), "runner's").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.path().join("out/p.log")).unwrap();
        std::fs::hard_link(root.path().join("out/c.txt"), root.path().join("out/h.log")).unwrap();
        let mut allowance = plenty();
        let tidied = copy_matching(
            root.path(),
            dest.path(),
            &["**/*.log".to_string(), "task.log".to_string()],
            &mut allowance,
        );
        assert_eq!(tidied.kept, ["out/a.log", "out/deep/b.log"]);
        let refused: Vec<&str> = tidied.refused.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(refused, ["out/h.log", "out/p.log", "task.log"]);
        assert!(tidied.refused[0].1.contains("2 hard links"), "{tidied:?}");
        assert!(
            tidied.refused[1].1.contains("not a regular file"),
            "{tidied:?}"
        );
        assert_eq!(tidied.refused[2].1, "already in the artifacts");
        assert_eq!((allowance.files, allowance.bytes), (2, 2));
        assert_eq!(
            std::fs::read_to_string(dest.path().join("out/deep/b.log")).unwrap(),
            "b"
        );
        assert_eq!(
            std::fs::read_to_string(dest.path().join("task.log")).unwrap(),
            "runner's"
        );
        assert!(!dest.path().join("out/p.log").exists());
    }

    #[test]
    fn sweeping_removes_links_special_files_and_what_passes_the_caps() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("sub")).unwrap();
        std::fs::write(d.join("task.log"), "the runner's, not counted").unwrap();
        std::fs::write(d.join("a.txt"), "12345").unwrap();
        std::fs::write(d.join("b.bin"), vec![0; 100]).unwrap();
        std::fs::write(d.join("c.txt"), "123").unwrap();
        std::fs::write(d.join("sub/d.txt"), "1").unwrap();
        std::fs::write(d.join("sub/e.txt"), "1").unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("host"), "host secret").unwrap();
        std::fs::hard_link(outside.path().join("host"), d.join("hard")).unwrap();
        std::os::unix::fs::symlink(outside.path(), d.join("up")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", d.join("sub/pw")).unwrap();
        let fifo = std::ffi::CString::new(d.join("fifo").as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: mkfifo reads a valid C string.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);

        let mut allowance = Allowance::new(10, 3);
        let tidied = sweep(d, &["task.log"], &mut allowance);
        assert_eq!(tidied.kept, ["a.txt", "c.txt", "sub/d.txt"]);
        let over: Vec<&str> = tidied.over_cap.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(over, ["b.bin", "sub/e.txt"]);
        assert!(
            tidied.over_cap[0].1.contains("runner.max_artifact_bytes"),
            "{tidied:?}"
        );
        assert!(
            tidied.over_cap[1].1.contains("runner.max_artifact_files"),
            "{tidied:?}"
        );
        let refused: Vec<&str> = tidied.refused.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(refused, ["fifo", "hard", "sub/pw", "up"]);
        assert_eq!((allowance.files, allowance.bytes), (3, 9));
        for gone in ["b.bin", "sub/e.txt", "fifo", "hard", "sub/pw", "up"] {
            assert!(
                d.join(gone).symlink_metadata().is_err(),
                "{gone} is still there"
            );
        }
        // The host file itself is untouched, only its second name is gone.
        assert_eq!(
            std::fs::read_to_string(outside.path().join("host")).unwrap(),
            "host secret"
        );
        assert!(d.join("task.log").exists());
    }
}
