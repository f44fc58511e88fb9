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

/// Copy every regular file under `root` that matches one of `globs` to the same relative path
/// under `dest`. Returns one line per file: the relative path kept, or why it was not.
pub fn copy_matching(root: &Path, dest: &Path, globs: &[String]) -> Vec<Result<String, String>> {
    let mut files = Vec::new();
    collect_files(root, root, &mut files);
    files.sort();
    let mut out = Vec::new();
    for relative in files {
        if !globs.iter().any(|g| glob_matches(g, &relative)) {
            continue;
        }
        let target = dest.join(&relative);
        if target.exists() {
            out.push(Err(format!("{relative}: already in the artifacts")));
            continue;
        }
        let copied = target
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|_| std::fs::copy(root.join(&relative), &target));
        out.push(match copied {
            Ok(_) => Ok(relative),
            Err(e) => Err(format!("{relative}: {e}")),
        });
    }
    out
}

/// Regular files (not symlinks: they could point anywhere on the host) below `dir`, relative to
/// `root`, skipping `.git`.
fn collect_files(root: &Path, dir: &Path, out: &mut Vec<String>) {
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
                collect_files(root, &path, out);
            }
        } else if meta.is_file() {
            if let Ok(relative) = path.strip_prefix(root) {
                out.push(relative.to_string_lossy().into_owned());
            }
        }
    }
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

    #[test]
    fn matching_regular_files_are_copied_not_symlinks_nor_over_existing_files() {
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
        let lines = copy_matching(
            root.path(),
            dest.path(),
            &["**/*.log".to_string(), "task.log".to_string()],
        );
        assert_eq!(
            lines,
            [
                Ok("out/a.log".to_string()),
                Ok("out/deep/b.log".to_string()),
                Err("task.log: already in the artifacts".to_string()),
            ]
        );
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
}
