//! Fetching a task: which repositories may be cloned, and cloning one at a branch, tag or commit.
//!
//! Cloning is blocking (libgit2); callers run [`clone_at`] in `spawn_blocking`.

use std::path::Path;

use git2::{build::CheckoutBuilder, ErrorCode, Oid, Repository};

/// Whether `url` starts with one of the allowed prefixes. A task's code runs on the runner's
/// host, so only repositories the operator listed may be cloned; an empty list allows nothing.
///
/// The prefix must match up to a path boundary (`file:///srv/tasks` allows
/// `file:///srv/tasks/example` but not `file:///srv/tasks-evil`), and URLs with `..` segments are
/// refused outright because they could climb out of an allowed directory.
pub fn repo_allowed(url: &str, allowed: &[String]) -> bool {
    if url.split('/').any(|segment| segment == "..") {
        return false;
    }
    allowed.iter().any(|prefix| {
        !prefix.is_empty()
            && url.starts_with(prefix.as_str())
            && (prefix.ends_with('/')
                || url.len() == prefix.len()
                || url[prefix.len()..].starts_with('/'))
    })
}

/// Why a task could not be fetched; the text goes into a CRASHED result's note.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("cannot clone repository {url}: {reason}")]
    Repository { url: String, reason: String },
    #[error("ref {git_ref} not found in repository {url} (tried branch, tag and commit)")]
    RefNotFound { url: String, git_ref: String },
    #[error("cannot check out ref {git_ref} of repository {url}: {reason}")]
    Checkout {
        url: String,
        git_ref: String,
        reason: String,
    },
}

/// Clone `url` into `dest` (an empty directory) and check out `git_ref`, which may be a branch, a
/// tag or a commit id (full or abbreviated). Returns the commit id checked out, for the log.
pub fn clone_at(url: &str, git_ref: &str, dest: &Path) -> Result<String, FetchError> {
    let repo = Repository::clone(url, dest).map_err(|e| FetchError::Repository {
        url: url.to_string(),
        reason: e.message().to_string(),
    })?;
    let commit = resolve(&repo, git_ref).map_err(|e| match e.code() {
        ErrorCode::NotFound | ErrorCode::Ambiguous | ErrorCode::InvalidSpec => {
            FetchError::RefNotFound {
                url: url.to_string(),
                git_ref: git_ref.to_string(),
            }
        }
        _ => FetchError::Checkout {
            url: url.to_string(),
            git_ref: git_ref.to_string(),
            reason: e.message().to_string(),
        },
    })?;
    let checkout = |e: git2::Error| FetchError::Checkout {
        url: url.to_string(),
        git_ref: git_ref.to_string(),
        reason: e.message().to_string(),
    };
    let object = repo.find_object(commit, None).map_err(checkout)?;
    repo.checkout_tree(&object, Some(CheckoutBuilder::new().force()))
        .map_err(checkout)?;
    repo.set_head_detached(commit).map_err(checkout)?;
    Ok(commit.to_string())
}

/// A branch (as the clone knows it: `origin/<name>`), then a tag, then a commit id. In that order
/// because a branch and a tag may share a name and people mean the branch more often.
fn resolve(repo: &Repository, git_ref: &str) -> Result<Oid, git2::Error> {
    if git_ref.is_empty() || git_ref.starts_with('-') {
        return Err(git2::Error::new(
            ErrorCode::InvalidSpec,
            git2::ErrorClass::Reference,
            "invalid ref",
        ));
    }
    let candidates = [
        format!("refs/remotes/origin/{git_ref}"),
        format!("refs/tags/{git_ref}"),
    ];
    for name in &candidates {
        if let Ok(reference) = repo.find_reference(name) {
            return Ok(reference.peel_to_commit()?.id());
        }
    }
    // A commit id. revparse would also accept expressions like `HEAD~2`; only plain hex is meant.
    if git_ref.len() >= 4 && git_ref.chars().all(|c| c.is_ascii_hexdigit()) {
        let object = repo.revparse_single(git_ref)?;
        return Ok(object.peel_to_commit()?.id());
    }
    Err(git2::Error::new(
        ErrorCode::NotFound,
        git2::ErrorClass::Reference,
        "no such branch, tag or commit",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn empty_allowlist_allows_nothing() {
        assert!(!repo_allowed("file:///srv/tasks/x", &[]));
        assert!(!repo_allowed("file:///srv/tasks/x", &allowed(&[""])));
    }

    #[test]
    fn prefix_must_end_at_a_path_boundary() {
        let list = allowed(&["file:///srv/tasks", "https://pagure.io/taskbot/"]);
        assert!(repo_allowed("file:///srv/tasks/example", &list));
        assert!(repo_allowed("file:///srv/tasks", &list));
        assert!(repo_allowed("https://pagure.io/taskbot/rpmlint.git", &list));
        assert!(!repo_allowed("file:///srv/tasks-evil/x", &list));
        assert!(!repo_allowed("https://pagure.io/other/x", &list));
        assert!(!repo_allowed("file:///srv/tasks/../secret", &list));
    }

    fn commit_file(repo: &Repository, name: &str, content: &str, message: &str) -> Oid {
        let root = repo.workdir().unwrap();
        std::fs::write(root.join(name), content).unwrap();
        let mut index = repo.index().unwrap();
        index.add_path(Path::new(name)).unwrap();
        index.write().unwrap();
        let tree = repo.find_tree(index.write_tree().unwrap()).unwrap();
        let sig = git2::Signature::now("t", "t@example.org").unwrap();
        let parent = repo.head().ok().and_then(|h| h.peel_to_commit().ok());
        let parents: Vec<&git2::Commit> = parent.iter().collect();
        repo.commit(Some("HEAD"), &sig, &sig, message, &tree, &parents)
            .unwrap()
    }

    #[test]
    fn clones_at_branch_tag_and_commit() {
        let src = tempfile::tempdir().unwrap();
        let mut opts = git2::RepositoryInitOptions::new();
        opts.initial_head("main");
        let repo = Repository::init_opts(src.path(), &opts).unwrap();
        let first = commit_file(&repo, "f", "one", "first");
        repo.tag_lightweight("v1", &repo.find_object(first, None).unwrap(), false)
            .unwrap();
        let second = commit_file(&repo, "f", "two", "second");
        let url = format!("file://{}", src.path().display());

        let read_at = |git_ref: &str| {
            let dest = tempfile::tempdir().unwrap();
            let id = clone_at(&url, git_ref, dest.path()).unwrap();
            (id, std::fs::read_to_string(dest.path().join("f")).unwrap())
        };
        assert_eq!(read_at("main"), (second.to_string(), "two".into()));
        assert_eq!(read_at("v1"), (first.to_string(), "one".into()));
        assert_eq!(
            read_at(&first.to_string()),
            (first.to_string(), "one".into())
        );
        assert_eq!(
            read_at(&first.to_string()[..8]),
            (first.to_string(), "one".into())
        );

        let dest = tempfile::tempdir().unwrap();
        let err = clone_at(&url, "nope", dest.path()).unwrap_err();
        assert!(matches!(err, FetchError::RefNotFound { .. }), "{err}");
        assert!(err.to_string().starts_with("ref nope not found"), "{err}");
        let dest = tempfile::tempdir().unwrap();
        let err = clone_at(&url, "HEAD~1", dest.path()).unwrap_err();
        assert!(matches!(err, FetchError::RefNotFound { .. }), "{err}");
    }

    #[test]
    fn missing_repository_is_named() {
        let dest = tempfile::tempdir().unwrap();
        let err = clone_at("file:///nonexistent/taskbot-repo", "main", dest.path()).unwrap_err();
        assert!(matches!(err, FetchError::Repository { .. }), "{err}");
        assert!(
            err.to_string()
                .starts_with("cannot clone repository file:///nonexistent/taskbot-repo:"),
            "{err}"
        );
    }
}
