//! Fetching a task: which repositories may be cloned, and cloning one at a branch, tag or commit
//! through a local mirror cache.
//!
//! Every repository URL gets a bare mirror under `runner.mirror_dir` (named by a hash of the URL).
//! A job fetches into the mirror, which transfers only the objects that changed since the last
//! job, then clones from the mirror into its fresh work directory, which is a local copy. Jobs
//! running at once on the same repository take turns through an exclusive `flock` on the mirror's
//! lock file, so a fetch never runs while another job fetches or clones from the same mirror.
//!
//! All of this is blocking (libgit2); callers run it in `spawn_blocking`.

use std::fs::File;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use git2::{
    build::CheckoutBuilder, ErrorCode, FetchOptions, FetchPrune, Oid, RemoteRedirect, Repository,
};
use sha2::{Digest, Sha256};

/// Whether `url` is inside one of the allowed prefixes. A task's code runs on the runner's host,
/// so only repositories the operator listed may be cloned; an empty list allows nothing. Both are
/// compared in normal form ([`crate::repo_url`]): percent-encoding, dot segments, case and
/// slashes cannot move a URL out of its prefix, and what has no single meaning is refused.
pub fn repo_allowed(url: &str, allowed: &[String]) -> bool {
    crate::repo_url::allowed(url, allowed)
}

/// Why an http(s) repository must not be cloned because it redirects outside
/// `runner.allowed_repos`, if it does.
///
/// libgit2 refuses redirects to another host (`RemoteRedirect::None`) but follows those within
/// one, wherever they lead, and offers no hook to check them. So the runner first makes git's
/// own first request (the refs advertisement, `info/refs?service=git-upload-pack`) itself,
/// without following redirects: a redirect whose repository is outside the allowed prefixes is
/// refused; one inside them is fine. A server that answered this request one way and libgit2's
/// another would be hostile, and a hostile allowed server can serve any content without a
/// redirect at all: list only servers you trust. An unreachable server is left to the clone,
/// which reports it.
pub async fn redirect_refusal(url: &str, allowed: &[String]) -> Option<String> {
    let url = crate::repo_url::normalize(url).ok()?;
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return None;
    }
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .ok()?;
    let probe = format!("{url}/info/refs?service=git-upload-pack");
    let answer = client.get(&probe).send().await.ok()?;
    if !answer.status().is_redirection() {
        return None;
    }
    let location = answer
        .headers()
        .get(reqwest::header::LOCATION)?
        .to_str()
        .ok()?;
    let target = answer.url().join(location).ok()?;
    let mut repository = target.clone();
    repository.set_query(None);
    let path = repository.path().trim_end_matches("/info/refs").to_string();
    repository.set_path(&path);
    if repo_allowed(repository.as_str(), allowed) {
        return None;
    }
    Some(format!(
        "repository {url} redirects to {target}, outside runner.allowed_repos"
    ))
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

/// What fetching a task through the mirror did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// The commit checked out.
    pub commit: String,
    /// Objects the fetch into the mirror transferred (0 when nothing changed).
    pub received_objects: usize,
    /// Whether this fetch created the mirror.
    pub new_mirror: bool,
}

/// The mirror directory of `url` under `mirror_root`: a hash, so any URL makes a safe name.
pub fn mirror_path(mirror_root: &Path, url: &str) -> PathBuf {
    let digest = Sha256::digest(url.as_bytes());
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    mirror_root.join(format!("{hex}.git"))
}

/// An exclusive lock on one mirror, released when dropped (closing the file releases `flock`).
struct MirrorLock {
    _file: File,
}

fn lock_mirror(mirror: &Path) -> std::io::Result<MirrorLock> {
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(mirror.with_extension("lock"))?;
    loop {
        // SAFETY: flock(2) on a descriptor we own; no memory is involved.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        if rc == 0 {
            return Ok(MirrorLock { _file: file });
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Update the mirror of `url` under `mirror_root` (creating it on first use), then clone from it
/// into `dest` (an empty directory) and check out `git_ref`.
pub fn clone_through_mirror(
    url: &str,
    git_ref: &str,
    mirror_root: &Path,
    dest: &Path,
) -> Result<Fetched, FetchError> {
    let repository_error = |reason: String| FetchError::Repository {
        url: url.to_string(),
        reason,
    };
    std::fs::create_dir_all(mirror_root).map_err(|e| {
        repository_error(format!(
            "cannot create the mirror directory {}: {e}",
            mirror_root.display()
        ))
    })?;
    // The URL as it was checked against `runner.allowed_repos`, never the raw text: libgit2
    // decodes what the check would otherwise not have seen.
    let url = &crate::repo_url::normalize(url).map_err(repository_error)?;
    let mirror = mirror_path(mirror_root, url);
    let _lock = lock_mirror(&mirror).map_err(|e| {
        repository_error(format!("cannot lock the mirror {}: {e}", mirror.display()))
    })?;
    // A mirror that cannot be opened (an interrupted first fetch, disk trouble) is rebuilt: it is
    // only a cache.
    let existing = Repository::open_bare(&mirror).ok();
    let new_mirror = existing.is_none();
    let repo = match existing {
        Some(repo) => repo,
        None => {
            let _ = std::fs::remove_dir_all(&mirror);
            Repository::init_bare(&mirror).map_err(|e| {
                repository_error(format!("cannot create the mirror: {}", e.message()))
            })?
        }
    };
    let received_objects = match fetch_all(&repo, url) {
        Ok(n) => n,
        Err(e) => {
            if new_mirror {
                // Do not keep an empty mirror of a repository that does not exist.
                let _ = std::fs::remove_dir_all(&mirror);
            }
            return Err(repository_error(e.message().to_string()));
        }
    };
    let mirror_url = mirror.display().to_string();
    let commit = checkout_clone(&mirror_url, url, git_ref, dest)?;
    Ok(Fetched {
        commit,
        received_objects,
        new_mirror,
    })
}

/// Fetch every branch and tag of `url` into the bare mirror, dropping those deleted upstream.
fn fetch_all(repo: &Repository, url: &str) -> Result<usize, git2::Error> {
    let mut remote = repo.remote_anonymous(url)?;
    let mut options = FetchOptions::new();
    options.prune(FetchPrune::On);
    // An allowed server that answers with a redirect could send the fetch to another host;
    // libgit2 refuses such off-site redirects here. (Redirects within the same host it follows:
    // [`redirect_refusal`] checks them before the fetch.)
    options.follow_redirects(RemoteRedirect::None);
    remote.fetch(
        &["+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*"],
        Some(&mut options),
        None,
    )?;
    Ok(remote.stats().received_objects())
}

/// Clone `url` into `dest` (an empty directory) and check out `git_ref`, which may be a branch, a
/// tag or a commit id (full or abbreviated). Returns the commit id checked out, for the log.
pub fn clone_at(url: &str, git_ref: &str, dest: &Path) -> Result<String, FetchError> {
    checkout_clone(url, url, git_ref, dest)
}

/// Clone `source` (the repository itself, or its mirror) into `dest` and check out `git_ref`;
/// errors name `url`, the repository people know.
fn checkout_clone(
    source: &str,
    url: &str,
    git_ref: &str,
    dest: &Path,
) -> Result<String, FetchError> {
    let repo = Repository::clone(source, dest).map_err(|e| FetchError::Repository {
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

    /// An HTTP server that answers every request with a redirect to `location`, and one that
    /// counts the connections it gets.
    fn redirecting_server(
        location: impl Fn(u16) -> String + Send + 'static,
    ) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use std::io::{Read, Write};
        use std::sync::atomic::{AtomicUsize, Ordering};
        // Another host (libgit2 judges "off-site" by host): still loopback.
        let target = std::net::TcpListener::bind("127.0.0.2:0").unwrap();
        let target_port = target.local_addr().unwrap().port();
        let hits = std::sync::Arc::new(AtomicUsize::new(0));
        let counted = hits.clone();
        std::thread::spawn(move || {
            for stream in target.incoming().flatten() {
                counted.fetch_add(1, Ordering::SeqCst);
                drop(stream);
            }
        });
        let redirector = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!(
            "http://127.0.0.1:{}/tasks/quick",
            redirector.local_addr().unwrap().port()
        );
        let to = location(target_port);
        std::thread::spawn(move || {
            for mut stream in redirector.incoming().flatten() {
                let mut request = Vec::new();
                let mut chunk = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&chunk[..n]),
                    }
                }
                let answer = format!(
                    "HTTP/1.1 302 Found\r\nLocation: {to}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
                let _ = stream.write_all(answer.as_bytes());
            }
        });
        (url, hits)
    }

    #[test]
    fn redirects_are_not_followed() {
        let (url, hits) = redirecting_server(|port| {
            format!("http://127.0.0.2:{port}/elsewhere/info/refs?service=git-upload-pack")
        });
        let mirrors = tempfile::tempdir().unwrap();
        let dest = tempfile::tempdir().unwrap();
        let err = clone_through_mirror(&url, "main", mirrors.path(), dest.path()).unwrap_err();
        assert!(err.to_string().contains(&url), "{err}");
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert_eq!(
            hits.load(std::sync::atomic::Ordering::SeqCst),
            0,
            "the redirect was followed"
        );
    }

    /// A redirect within the same host is checked against the allowed prefixes before libgit2,
    /// which would follow it, is asked to fetch.
    #[tokio::test]
    async fn a_redirect_within_the_host_must_stay_inside_the_allowed_prefixes() {
        let (url, _) =
            redirecting_server(|_| "/elsewhere/evil/info/refs?service=git-upload-pack".into());
        let prefix = url.trim_end_matches("quick").to_string();
        let refused = redirect_refusal(&url, &[prefix]).await;
        let why = refused.expect("a redirect out of the allowed prefix is refused");
        assert!(why.contains("/elsewhere/evil/info/refs"), "{why}");
        assert!(why.contains("outside runner.allowed_repos"), "{why}");

        let (url, _) =
            redirecting_server(|_| "/tasks/quick.git/info/refs?service=git-upload-pack".into());
        let prefix = url.trim_end_matches("quick").to_string();
        assert_eq!(
            redirect_refusal(&url, &[prefix]).await,
            None,
            "inside: fine"
        );
        // Not http: nothing to probe.
        let file = ["file:///srv/tasks/".to_string()];
        assert_eq!(redirect_refusal("file:///srv/tasks/x", &file).await, None);
    }

    #[test]
    fn the_url_cloned_is_the_url_checked() {
        // A repository at <root>/outside, and an allowed prefix <root>/tasks/: the encoded dot
        // segments are refused by the check, and the clone itself never decodes them.
        let root = tempfile::tempdir().unwrap();
        let outside = root.path().join("outside");
        let repo = Repository::init(&outside).unwrap();
        commit_file(&repo, "taskbot.yaml", "name: outside\n", "init");
        std::fs::create_dir(root.path().join("tasks")).unwrap();
        let allowed = vec![format!("file://{}/tasks/", root.path().display())];
        let sneaky = format!("file://{}/tasks/%2e%2e/outside", root.path().display());
        assert!(!repo_allowed(&sneaky, &allowed));
        let mirrors = tempfile::tempdir().unwrap();
        let dest = tempfile::tempdir().unwrap();
        // Normalised, the URL is <root>/outside itself, so cloning it is what was asked; what
        // matters is that the allowlist said no above. A double encoding is refused outright.
        let double = format!("file://{}/tasks/%252e%252e/outside", root.path().display());
        let err = clone_through_mirror(&double, "master", mirrors.path(), dest.path()).unwrap_err();
        assert!(err.to_string().contains("percent-encoding"), "{err}");
    }

    /// A listener on 127.0.0.1 that counts the connections it gets (and answers none); its URL.
    fn counting_server() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = hits.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                drop(stream);
            }
        });
        (url, hits)
    }

    fn git(dir: &Path, args: &[&str]) -> String {
        let output = std::process::Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@example.org"])
            .args(args)
            .current_dir(dir)
            .output()
            .expect("git runs");
        assert!(output.status.success(), "git {args:?}: {output:?}");
        String::from_utf8(output.stdout).unwrap().trim().to_string()
    }

    /// A task repository with two submodules, one on a repository outside the allowed prefix
    /// and one on a server that counts connections, and a file under a Git LFS filter whose
    /// LFS server is that counting server: the clone gets the repository's own files only.
    #[test]
    fn submodules_and_lfs_content_are_not_fetched() {
        let (server, hits) = counting_server();
        let root = tempfile::tempdir().unwrap();
        let outside = root.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        git(&outside, &["init", "-q", "-b", "main"]);
        std::fs::write(outside.join("secret.txt"), "outside the allowed repos").unwrap();
        git(&outside, &["add", "-A"]);
        git(&outside, &["commit", "-qm", "outside"]);
        let outside_head = git(&outside, &["rev-parse", "HEAD"]);

        let task = root.path().join("tasks/task");
        std::fs::create_dir_all(&task).unwrap();
        git(&task, &["init", "-q", "-b", "main"]);
        let pointer = "version https://git-lfs.github.com/spec/v1\noid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\nsize 12345\n";
        let files = [
            ("taskbot.yaml", "name: task\nrun: true\n".to_string()),
            (
                ".gitattributes",
                "*.bin filter=lfs diff=lfs merge=lfs -text\n".into(),
            ),
            (".lfsconfig", format!("[lfs]\n\turl = {server}/lfs\n")),
            ("big.bin", pointer.into()),
            (
                ".gitmodules",
                format!(
                    "[submodule \"outside\"]\n\tpath = outside\n\turl = file://{}\n\
                     [submodule \"web\"]\n\tpath = web\n\turl = {server}/web.git\n",
                    outside.display()
                ),
            ),
        ];
        for (name, content) in &files {
            std::fs::write(task.join(name), content).unwrap();
        }
        git(&task, &["add", "-A"]);
        for path in ["outside", "web"] {
            let entry = format!("160000,{outside_head},{path}");
            git(&task, &["update-index", "--add", "--cacheinfo", &entry]);
        }
        git(&task, &["commit", "-qm", "task with submodules and LFS"]);
        let tree = git(&task, &["ls-tree", "HEAD"]);
        assert!(
            tree.contains(&format!("160000 commit {outside_head}\toutside")),
            "{tree}"
        );

        let mirrors = tempfile::tempdir().unwrap();
        let dest = tempfile::tempdir().unwrap();
        let url = format!("file://{}", task.display());
        clone_through_mirror(&url, "main", mirrors.path(), dest.path()).unwrap();
        for submodule in ["outside", "web"] {
            let dir = dest.path().join(submodule);
            let entries = std::fs::read_dir(&dir).map(|d| d.count()).unwrap_or(0);
            assert_eq!(entries, 0, "submodule {submodule} was fetched into {dir:?}");
        }
        assert_eq!(
            std::fs::read_to_string(dest.path().join("big.bin")).unwrap(),
            pointer,
            "the LFS pointer was replaced"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 0);
        let mirrored = std::fs::read_dir(mirrors.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "git")
            })
            .count();
        assert_eq!(mirrored, 1, "only the task's own repository is mirrored");
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

    #[test]
    fn mirror_sees_updates_and_fetches_only_what_changed() {
        let src = tempfile::tempdir().unwrap();
        let mirrors = tempfile::tempdir().unwrap();
        let mut opts = git2::RepositoryInitOptions::new();
        opts.initial_head("main");
        let repo = Repository::init_opts(src.path(), &opts).unwrap();
        for i in 0..20 {
            commit_file(&repo, &format!("f{i}"), &format!("content {i}"), "bulk");
        }
        let first = commit_file(&repo, "f", "one", "first");
        let url = format!("file://{}", src.path().display());

        let dest = tempfile::tempdir().unwrap();
        let fetched = clone_through_mirror(&url, "main", mirrors.path(), dest.path()).unwrap();
        assert_eq!(fetched.commit, first.to_string());
        assert!(fetched.new_mirror);
        assert!(fetched.received_objects > 20, "{fetched:?}");
        assert!(mirror_path(mirrors.path(), &url).join("HEAD").exists());

        // Nothing changed: nothing transferred.
        let dest = tempfile::tempdir().unwrap();
        let again = clone_through_mirror(&url, "main", mirrors.path(), dest.path()).unwrap();
        assert_eq!((again.new_mirror, again.received_objects), (false, 0));

        // One new commit: its commit, tree and blob only, and the updated branch is seen.
        let second = commit_file(&repo, "f", "two", "second");
        repo.tag_lightweight("v2", &repo.find_object(second, None).unwrap(), false)
            .unwrap();
        let dest = tempfile::tempdir().unwrap();
        let updated = clone_through_mirror(&url, "main", mirrors.path(), dest.path()).unwrap();
        assert_eq!(updated.commit, second.to_string());
        assert!(updated.received_objects <= 3, "{updated:?}");
        assert_eq!(
            std::fs::read_to_string(dest.path().join("f")).unwrap(),
            "two"
        );
        let dest = tempfile::tempdir().unwrap();
        let tagged = clone_through_mirror(&url, "v2", mirrors.path(), dest.path()).unwrap();
        assert_eq!(tagged.commit, second.to_string());
        let dest = tempfile::tempdir().unwrap();
        let old = clone_through_mirror(&url, &first.to_string(), mirrors.path(), dest.path());
        assert_eq!(old.unwrap().commit, first.to_string());
        let dest = tempfile::tempdir().unwrap();
        let err = clone_through_mirror(&url, "nope", mirrors.path(), dest.path()).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("ref nope not found in repository {url} (tried branch, tag and commit)")
        );
    }

    #[test]
    fn concurrent_jobs_share_one_mirror_safely() {
        let src = tempfile::tempdir().unwrap();
        let mirrors = tempfile::tempdir().unwrap();
        let mut opts = git2::RepositoryInitOptions::new();
        opts.initial_head("main");
        let repo = Repository::init_opts(src.path(), &opts).unwrap();
        let head = commit_file(&repo, "f", "one", "first");
        let url = format!("file://{}", src.path().display());
        let handles: Vec<_> = (0..6)
            .map(|_| {
                let (url, root) = (url.clone(), mirrors.path().to_path_buf());
                std::thread::spawn(move || {
                    let dest = tempfile::tempdir().unwrap();
                    clone_through_mirror(&url, "main", &root, dest.path()).map(|f| f.commit)
                })
            })
            .collect();
        for h in handles {
            assert_eq!(h.join().unwrap().unwrap(), head.to_string());
        }
        let created: usize = std::fs::read_dir(mirrors.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "git")
            })
            .count();
        assert_eq!(created, 1, "one mirror per URL");
    }

    #[test]
    fn missing_repository_leaves_no_mirror() {
        let mirrors = tempfile::tempdir().unwrap();
        let dest = tempfile::tempdir().unwrap();
        let url = "file:///nonexistent/taskbot-repo";
        let err = clone_through_mirror(url, "main", mirrors.path(), dest.path()).unwrap_err();
        assert!(
            err.to_string()
                .starts_with(&format!("cannot clone repository {url}:")),
            "{err}"
        );
        assert!(!mirror_path(mirrors.path(), url).exists());
    }
}
