//! The image catalogue: which configured image a VM job boots, and fetching its files.
//!
//! A job asks by name, or by distro, release and flavour (its arch is the job's); of the images
//! that match, the newest wins, as the earlier system's image finder did: the highest release
//! (compared like RPM versions, so `9` < `10` < `10.1`), then the latest `built`.

use std::cmp::Ordering;
use std::path::{Path, PathBuf};
use std::time::Duration;

use taskbot::config::{ImageFile, VmImageConfig};
use taskbot::download::{self, DownloadSpec, RetryPolicy};
use taskbot::messages::ImageQuery;

/// The arches the catalogue has images for, in catalogue order: the arches the VM backend serves.
pub fn arches(images: &[VmImageConfig]) -> Vec<String> {
    let mut arches: Vec<String> = Vec::new();
    for image in images {
        if !arches.contains(&image.arch) {
            arches.push(image.arch.clone());
        }
    }
    arches
}

/// What is wrong with the catalogue (`provisioner.vm.images`), if anything: caught when the
/// provisioner starts, not at a job's boot.
pub fn validate(images: &[VmImageConfig]) -> Result<(), String> {
    let mut names = std::collections::BTreeSet::new();
    for (i, image) in images.iter().enumerate() {
        let at = format!("provisioner.vm.images[{i}] ({:?})", image.name);
        if image.name.is_empty() || image.arch.is_empty() {
            return Err(format!("{at}: name and arch must not be empty"));
        }
        if !names.insert(&image.name) {
            return Err(format!("{at}: the name is used twice"));
        }
        if image.initrd.is_some() && image.kernel.is_none() {
            return Err(format!("{at}: an initrd needs a kernel"));
        }
        let files = [
            Some(&image.disk),
            image.kernel.as_ref(),
            image.initrd.as_ref(),
        ];
        for file in files.into_iter().flatten() {
            if let ImageFile::Url { sha256, .. } = file {
                if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(format!("{at}: sha256 must be 64 hex digits"));
                }
            }
        }
    }
    Ok(())
}

/// The newest image of `arch` that `query` matches, or why there is none.
pub fn select<'a>(
    images: &'a [VmImageConfig],
    arch: &str,
    query: &ImageQuery,
) -> Result<&'a VmImageConfig, String> {
    let wanted = |asked: &Option<String>, have: &str| asked.as_deref().is_none_or(|a| a == have);
    images
        .iter()
        .filter(|i| i.arch == arch)
        .filter(|i| wanted(&query.name, &i.name))
        .filter(|i| wanted(&query.distro, &i.distro))
        .filter(|i| wanted(&query.release, &i.release))
        .filter(|i| wanted(&query.flavour, &i.flavour))
        .max_by(|a, b| compare_versions(&a.release, &b.release).then(a.built.cmp(&b.built)))
        .ok_or_else(|| {
            let have: Vec<String> = images
                .iter()
                .filter(|i| i.arch == arch)
                .map(|i| format!("{} ({} {} {})", i.name, i.distro, i.release, i.flavour))
                .collect();
            format!(
                "no {arch} image in the catalogue matches {} (the catalogue's {arch} images: {})",
                describe(query),
                if have.is_empty() {
                    "none".to_string()
                } else {
                    have.join(", ")
                }
            )
        })
}

/// `distro=fedora release=41`, or `any image`.
pub fn describe(query: &ImageQuery) -> String {
    let fields = [
        ("name", &query.name),
        ("distro", &query.distro),
        ("release", &query.release),
        ("flavour", &query.flavour),
    ];
    let parts: Vec<String> = fields
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={v}")))
        .collect();
    if parts.is_empty() {
        "any image".into()
    } else {
        parts.join(" ")
    }
}

/// Compare two versions as RPM does: runs of digits compare as numbers, runs of letters as text,
/// a number is newer than letters, and other characters only separate.
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (segments(a), segments(b));
    loop {
        match (a.next(), b.next()) {
            (None, None) => return Ordering::Equal,
            (Some(_), None) => return Ordering::Greater,
            (None, Some(_)) => return Ordering::Less,
            (Some(x), Some(y)) => {
                let x_num = x.bytes().all(|c| c.is_ascii_digit());
                let y_num = y.bytes().all(|c| c.is_ascii_digit());
                let order = match (x_num, y_num) {
                    (true, true) => {
                        let (x, y) = (x.trim_start_matches('0'), y.trim_start_matches('0'));
                        x.len().cmp(&y.len()).then(x.cmp(y))
                    }
                    (true, false) => Ordering::Greater,
                    (false, true) => Ordering::Less,
                    (false, false) => x.cmp(y),
                };
                if order != Ordering::Equal {
                    return order;
                }
            }
        }
    }
}

/// Maximal runs of digits or of letters.
fn segments(s: &str) -> impl Iterator<Item = &str> {
    let mut rest = s;
    std::iter::from_fn(move || {
        rest = rest.trim_start_matches(|c: char| !c.is_ascii_alphanumeric());
        let first = rest.chars().next()?;
        let digits = first.is_ascii_digit();
        let end = rest
            .find(|c: char| !c.is_ascii_alphanumeric() || c.is_ascii_digit() != digits)
            .unwrap_or(rest.len());
        let (segment, tail) = rest.split_at(end);
        rest = tail;
        Some(segment)
    })
}

/// Where fetched files are kept: `<cache>/<sha256>-<last URL segment>`, so a file is fetched
/// once, and a URL whose content changed (another sha256) is fetched again.
pub fn cache_path(cache: &Path, url: &str, sha256: &str) -> PathBuf {
    let name = url
        .rsplit('/')
        .next()
        .filter(|n| !n.is_empty() && !n.starts_with('.'))
        .unwrap_or("file");
    let name: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    cache.join(format!("{}-{name}", sha256.to_ascii_lowercase()))
}

/// A local copy of `file`: a path as it is (it must exist), a URL from the cache, downloaded
/// and checked against its SHA-256 the first time.
pub async fn fetch(
    client: &reqwest::Client,
    file: &ImageFile,
    cache: &Path,
    max_bytes: u64,
) -> Result<PathBuf, String> {
    match file {
        ImageFile::Path(path) => {
            if is_file(path).await {
                Ok(path.clone())
            } else {
                Err(format!("image file {} does not exist", path.display()))
            }
        }
        ImageFile::Url { url, sha256 } => fetch_url(client, url, sha256, cache, max_bytes).await,
    }
}

/// [`fetch`] for a URL: `http(s)://`, or `file://` (checked in place, not copied).
pub async fn fetch_url(
    client: &reqwest::Client,
    url: &str,
    sha256: &str,
    cache: &Path,
    max_bytes: u64,
) -> Result<PathBuf, String> {
    if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("{url}: sha256 must be 64 hex digits"));
    }
    if let Some(path) = url.strip_prefix("file://") {
        let path = PathBuf::from(path);
        // Hashing a whole ISO takes a while: not on the async threads.
        let hashed = path.clone();
        let actual = tokio::task::spawn_blocking(move || download::sha256_file(&hashed))
            .await
            .map_err(|e| format!("{url}: {e}"))?
            .map_err(|e| format!("{url}: {e}"))?;
        return if actual.eq_ignore_ascii_case(sha256) {
            Ok(path)
        } else {
            Err(format!(
                "{url}: SHA-256 mismatch: expected {sha256}, got {actual}"
            ))
        };
    }
    let dest = cache_path(cache, url, sha256);
    if is_file(&dest).await {
        return Ok(dest);
    }
    let partial = dest.with_extension("partial");
    let spec = DownloadSpec {
        url: url.to_string(),
        sha256: Some(sha256.to_string()),
        max_bytes,
        dest: partial.clone(),
    };
    let policy = RetryPolicy {
        attempts: 3,
        first_pause: Duration::from_secs(1),
    };
    let mut log = Vec::new();
    download::download(client, &spec, policy, &mut log)
        .await
        .map_err(|e| format!("cannot fetch {url}: {e}"))?;
    tokio::fs::rename(&partial, &dest)
        .await
        .map_err(|e| format!("{}: {e}", dest.display()))?;
    tracing::info!(%url, path = %dest.display(), "image file downloaded");
    Ok(dest)
}

/// Whether `path` is a regular file (following links), as [`Path::is_file`], without blocking.
async fn is_file(path: &Path) -> bool {
    tokio::fs::metadata(path)
        .await
        .is_ok_and(|meta| meta.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(name: &str, distro: &str, release: &str, flavour: &str, built: &str) -> VmImageConfig {
        VmImageConfig {
            name: name.into(),
            distro: distro.into(),
            release: release.into(),
            arch: "x86_64".into(),
            flavour: flavour.into(),
            built: built.into(),
            disk: ImageFile::Path(format!("/img/{name}.qcow2").into()),
            kernel: None,
            initrd: None,
            append: String::new(),
            cloud_init: true,
            qemu: None,
            qemu_args: Vec::new(),
        }
    }

    fn query(distro: Option<&str>, release: Option<&str>, flavour: Option<&str>) -> ImageQuery {
        ImageQuery {
            name: None,
            distro: distro.map(Into::into),
            release: release.map(Into::into),
            flavour: flavour.map(Into::into),
        }
    }

    /// What the provisioner checks at start (moved from shared/src/config.rs's catalogue test,
    /// same cases and messages).
    #[test]
    fn the_catalogue_is_validated_and_gives_the_backends_arches() {
        let mut tiny = image("tiny", "tiny", "1", "base", "");
        tiny.kernel = Some(ImageFile::Path("/img/vmlinuz".into()));
        let mut f41 = image("f41", "fedora", "41", "cloud", "2026-11-01");
        f41.arch = "aarch64".into();
        f41.disk = ImageFile::Url {
            url: "https://example.org/f41.qcow2".into(),
            sha256: "ab".repeat(32),
        };
        let mut other = image("other", "tiny", "2", "base", "");
        other.arch = "aarch64".into();
        let images = vec![tiny, f41, other];
        assert_eq!(arches(&images), ["x86_64", "aarch64"]);
        assert_eq!(validate(&images), Ok(()));

        let mut twice = images.clone();
        twice[1].name = "tiny".into();
        assert!(validate(&twice)
            .unwrap_err()
            .contains("the name is used twice"));
        let mut short = images.clone();
        short[1].disk = ImageFile::Url {
            url: "https://example.org/x".into(),
            sha256: "abc".into(),
        };
        assert!(validate(&short).unwrap_err().contains("64 hex digits"));
        let mut initrd_only = images.clone();
        initrd_only[0].kernel = None;
        initrd_only[0].initrd = Some(ImageFile::Path("/img/initrd".into()));
        let err = validate(&initrd_only).unwrap_err();
        assert!(err.contains("an initrd needs a kernel"), "{err}");
        assert!(
            err.starts_with("provisioner.vm.images[0] (\"tiny\")"),
            "{err}"
        );
        let mut unnamed = images;
        unnamed[2].arch = String::new();
        assert!(validate(&unnamed)
            .unwrap_err()
            .contains("name and arch must not be empty"));
    }

    #[test]
    fn versions_compare_like_rpm() {
        use Ordering::*;
        for (a, b, expected) in [
            ("9", "10", Less),
            ("10", "10.1", Less),
            ("41", "41", Equal),
            ("040", "40", Equal),
            ("1.0a", "1.0", Greater),
            ("rawhide", "41", Less),
            ("20261101.n.0", "20261101.n.1", Less),
            ("2.b", "2.a", Greater),
        ] {
            assert_eq!(compare_versions(a, b), expected, "{a} vs {b}");
            assert_eq!(compare_versions(b, a), expected.reverse(), "{b} vs {a}");
        }
    }

    #[test]
    fn the_newest_matching_image_of_the_jobs_arch_wins() {
        let mut aarch64 = image("f42-arm", "fedora", "42", "cloud", "2026-11-20");
        aarch64.arch = "aarch64".into();
        let images = vec![
            image("f9-cloud", "fedora", "9", "cloud", "2026-01-01"),
            image("f41-cloud-old", "fedora", "41", "cloud", "2026-10-01"),
            image("f41-cloud", "fedora", "41", "cloud", "2026-11-01"),
            image("f41-server", "fedora", "41", "server", "2026-11-15"),
            image("f40-cloud", "fedora", "40", "cloud", "2026-11-10"),
            image("deb12", "debian", "12", "cloud", "2026-11-11"),
            aarch64,
        ];
        let pick = |q: ImageQuery| select(&images, "x86_64", &q).map(|i| i.name.as_str());
        // Release 41 beats 40 (built later) and 9 (a higher number as text).
        assert_eq!(
            pick(query(Some("fedora"), None, Some("cloud"))),
            Ok("f41-cloud")
        );
        assert_eq!(
            pick(query(Some("fedora"), Some("40"), None)),
            Ok("f40-cloud")
        );
        assert_eq!(pick(query(None, None, Some("server"))), Ok("f41-server"));
        assert_eq!(pick(query(Some("debian"), None, None)), Ok("deb12"));
        let by_name = ImageQuery {
            name: Some("f41-cloud-old".into()),
            ..ImageQuery::default()
        };
        assert_eq!(pick(by_name), Ok("f41-cloud-old"));
        // aarch64's 42 is not an x86_64 image.
        assert_eq!(pick(ImageQuery::default()), Ok("f41-server"));
        let err = pick(query(Some("fedora"), Some("43"), None)).unwrap_err();
        assert!(
            err.starts_with("no x86_64 image in the catalogue matches distro=fedora release=43"),
            "{err}"
        );
        assert!(err.contains("f40-cloud (fedora 40 cloud)"), "{err}");
        let err = select(&images, "s390x", &ImageQuery::default()).unwrap_err();
        assert!(err.ends_with("images: none)"), "{err}");
    }

    #[test]
    fn cached_files_are_named_by_checksum_and_a_safe_url_segment() {
        let sum = "AB".repeat(32);
        assert_eq!(
            cache_path(Path::new("/c"), "https://x/images/F41 cloud.qcow2", &sum),
            Path::new(&format!("/c/{}-F41_cloud.qcow2", "ab".repeat(32)))
        );
        assert_eq!(
            cache_path(Path::new("/c"), "https://x/..", &sum),
            Path::new(&format!("/c/{}-file", "ab".repeat(32)))
        );
    }

    #[tokio::test]
    async fn file_urls_are_checked_in_place_and_bad_checksums_refused() {
        let dir = tempfile::tempdir().unwrap();
        let iso = dir.path().join("a.iso");
        std::fs::write(&iso, b"iso").unwrap();
        let sum = download::sha256_file(&iso).unwrap();
        let client = reqwest::Client::new();
        let url = format!("file://{}", iso.display());
        let got = fetch_url(&client, &url, &sum, dir.path(), 10).await;
        assert_eq!(got, Ok(iso.clone()));
        let err = fetch_url(&client, &url, &"0".repeat(64), dir.path(), 10)
            .await
            .unwrap_err();
        assert!(err.contains("SHA-256 mismatch"), "{err}");
        let err = fetch_url(&client, &url, "abc", dir.path(), 10)
            .await
            .unwrap_err();
        assert!(err.contains("64 hex digits"), "{err}");
    }

    /// A server answering every request with `body`, counting the requests.
    async fn serve(
        body: &'static [u8],
    ) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use std::sync::atomic::Ordering;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "http://{}/images/disk.qcow2",
            listener.local_addr().unwrap()
        );
        let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = hits.clone();
        tokio::spawn(async move {
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                counter.fetch_add(1, Ordering::SeqCst);
                let mut request = [0u8; 4096];
                let _ = socket.read(&mut request).await;
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = socket.write_all(head.as_bytes()).await;
                let _ = socket.write_all(body).await;
            }
        });
        (url, hits)
    }

    #[tokio::test]
    async fn url_files_are_downloaded_once_checked_and_then_served_from_the_cache() {
        use std::sync::atomic::Ordering;
        let (url, hits) = serve(b"a disk image").await;
        let cache = tempfile::tempdir().unwrap();
        let source = cache.path().join("source");
        std::fs::write(&source, b"a disk image").unwrap();
        let sum = download::sha256_file(&source).unwrap();
        let client = reqwest::Client::new();
        let file = ImageFile::Url {
            url: url.clone(),
            sha256: sum.clone(),
        };
        let first = fetch(&client, &file, cache.path(), 1000).await.unwrap();
        assert_eq!(first, cache_path(cache.path(), &url, &sum));
        assert_eq!(std::fs::read(&first).unwrap(), b"a disk image");
        let again = fetch(&client, &file, cache.path(), 1000).await.unwrap();
        assert_eq!(again, first);
        assert_eq!(hits.load(Ordering::SeqCst), 1, "fetched once");
        // Another checksum for the same URL: fetched again, and refused as it does not match.
        let err = fetch_url(&client, &url, &"0".repeat(64), cache.path(), 1000)
            .await
            .unwrap_err();
        assert!(err.contains("SHA-256 mismatch"), "{err}");
        assert_eq!(hits.load(Ordering::SeqCst), 2);
        let left: Vec<_> = std::fs::read_dir(cache.path()).unwrap().collect();
        assert_eq!(
            left.len(),
            2,
            "the source and the good copy, no partial file"
        );
        // Too large for the limit.
        let small = tempfile::tempdir().unwrap();
        let err = fetch(&client, &file, small.path(), 4).await.unwrap_err();
        assert!(err.contains("larger than the limit"), "{err}");
    }
}
