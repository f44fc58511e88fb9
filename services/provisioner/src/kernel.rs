//! The job's own kernel (`vm.kernel_from_item`, docs/provisioning.md "Kernel tests"): the kernel
//! RPM of the item (a Koji build's NVR) is fetched from Koji's layout, unpacked into a private
//! directory, and booted directly with the image's initramfs, to which an initramfs of the RPM's
//! modules is appended (Linux unpacks concatenated cpio archives in order, so the guest finds
//! `/lib/modules/<release>/` for the kernel it runs).
//!
//! The RPM is untrusted: its name parts must be plain (no `/`, no `..`), its URL must be under
//! `koji_pkgs_url`, its size and unpacked size are bounded, its digests are checked (`rpm -K`),
//! and of its payload only regular files under `lib/modules/<release>/` and `boot/vmlinuz-*`
//! are written, by this module, never through a link, with plain permissions.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use taskbot::download::{self, DownloadError, DownloadSpec, RetryPolicy};

use crate::cpio;

/// At most this many entries in an RPM's payload (Fedora's kernel-modules has ~4000).
const MAX_ENTRIES: usize = 200_000;

/// A kernel ready to boot: its image, an initramfs of its modules, and its release (`uname -r`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobKernel {
    pub vmlinuz: PathBuf,
    pub modules: PathBuf,
    pub release: String,
    /// Where its RPM came from.
    pub rpm_url: String,
}

/// Where kernel RPMs come from and how much they may take.
#[derive(Debug, Clone)]
pub struct KernelSource {
    pub http: reqwest::Client,
    /// Koji's package base, e.g. `https://kojipkgs.fedoraproject.org`.
    pub koji_pkgs_url: String,
    /// Downloads (`rpms/`) and unpacked kernels (`<sha256>/`).
    pub cache: PathBuf,
    pub max_bytes: u64,
}

/// `(name, version, release)` of an NVR whose parts are safe in a URL and a file name.
pub fn parse_nvr(item: &str) -> Result<(&str, &str, &str), String> {
    let mut parts = item.rsplitn(3, '-');
    let (release, version, name) = match (parts.next(), parts.next(), parts.next()) {
        (Some(r), Some(v), Some(n)) if !r.is_empty() && !v.is_empty() && !n.is_empty() => (r, v, n),
        _ => return Err(format!("the item {item:?} is not a kernel build's NVR")),
    };
    let plain = |s: &str| {
        !s.starts_with('.')
            && !s.contains("..")
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._+~^-".contains(&b))
    };
    if [name, version, release].iter().all(|p| plain(p)) {
        Ok((name, version, release))
    } else {
        Err(format!(
            "the item {item:?} is not a plain NVR (letters, digits, ._+~^-)"
        ))
    }
}

impl KernelSource {
    /// The kernel RPMs a build of `item` may have for `arch`, most likely first: Fedora's
    /// `kernel-core` (since Fedora 21), then the single `kernel` package of older builds.
    pub fn rpm_urls(&self, item: &str, arch: &str) -> Result<Vec<String>, String> {
        let (name, version, release) = parse_nvr(item)?;
        if !arch.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') || arch.is_empty() {
            return Err(format!("the arch {arch:?} is not a plain name"));
        }
        let base = self.koji_pkgs_url.trim_end_matches('/');
        let dir = format!("{base}/packages/{name}/{version}/{release}/{arch}");
        Ok([format!("{name}-core"), name.to_string()]
            .iter()
            .map(|package| format!("{dir}/{package}-{version}-{release}.{arch}.rpm"))
            .collect())
    }

    /// The item's kernel for `arch`, fetched and unpacked (both cached).
    pub async fn fetch(&self, item: &str, arch: &str) -> Result<JobKernel, String> {
        let urls = self.rpm_urls(item, arch)?;
        for url in &urls {
            match self.download(url).await {
                Ok(rpm) => return self.unpack(&rpm, url).await,
                Err(DownloadError::Status(404)) => continue,
                Err(e) => return Err(format!("cannot fetch the kernel RPM {url}: {e}")),
            }
        }
        Err(format!(
            "Koji has no kernel RPM of {item} for {arch} (HTTP status 404 for {})",
            urls.join(" and ")
        ))
    }

    /// `url` in the cache (`rpms/<sha256 of the URL>.rpm`: a Koji build's files never change),
    /// downloaded the first time.
    async fn download(&self, url: &str) -> Result<PathBuf, DownloadError> {
        let dest = self
            .cache
            .join("rpms")
            .join(format!("{}.rpm", download::sha256_hex(url.as_bytes())));
        if tokio::fs::metadata(&dest).await.is_ok_and(|m| m.is_file()) {
            return Ok(dest);
        }
        let partial = dest.with_extension("partial");
        let spec = DownloadSpec {
            url: url.to_string(),
            sha256: None,
            max_bytes: self.max_bytes,
            dest: partial.clone(),
        };
        let policy = RetryPolicy {
            attempts: 3,
            first_pause: Duration::from_secs(1),
        };
        download::download(&self.http, &spec, policy, &mut Vec::new()).await?;
        tokio::fs::rename(&partial, &dest)
            .await
            .map_err(|e| DownloadError::Write {
                path: dest.display().to_string(),
                reason: e.to_string(),
            })?;
        tracing::info!(%url, "kernel RPM downloaded");
        Ok(dest)
    }

    /// The kernel of `rpm` in `<cache>/<sha256 of the RPM>/`, unpacked the first time.
    async fn unpack(&self, rpm: &Path, url: &str) -> Result<JobKernel, String> {
        let (rpm, cache, max, url) = (
            rpm.to_path_buf(),
            self.cache.clone(),
            self.max_bytes,
            url.to_string(),
        );
        tokio::task::spawn_blocking(move || unpack_cached(&rpm, &cache, max, &url))
            .await
            .map_err(|e| e.to_string())?
    }
}

/// [`KernelSource::unpack`], blocking.
fn unpack_cached(rpm: &Path, cache: &Path, max: u64, url: &str) -> Result<JobKernel, String> {
    let sum = download::sha256_file(rpm).map_err(|e| format!("{}: {e}", rpm.display()))?;
    let dir = cache.join(&sum);
    let kernel = |release: String| JobKernel {
        vmlinuz: dir.join("vmlinuz"),
        modules: dir.join("modules.cpio"),
        release,
        rpm_url: url.to_string(),
    };
    if let Ok(release) = std::fs::read_to_string(dir.join("release")) {
        return Ok(kernel(release));
    }
    check_digests(rpm, url)?;
    let work = cache.join(format!("{sum}.partial"));
    let _ = std::fs::remove_dir_all(&work);
    let unpacked = unpack_rpm(rpm, &work, max).map_err(|e| format!("the kernel RPM {url}: {e}"));
    let packed = unpacked.and_then(|release| {
        pack_modules(&work, &release).map_err(|e| format!("the kernel RPM {url}: {e}"))?;
        Ok(release)
    });
    let release = match packed {
        Ok(release) => release,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&work);
            return Err(e);
        }
    };
    let _ = std::fs::remove_dir_all(work.join("tree"));
    std::fs::write(work.join("release"), &release).map_err(|e| e.to_string())?;
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&work, &dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    tracing::info!(%url, %release, "kernel RPM unpacked");
    Ok(kernel(release))
}

/// The RPM's own digests (header and payload): a file cut short or altered is refused.
fn check_digests(rpm: &Path, url: &str) -> Result<(), String> {
    let out = std::process::Command::new("rpm")
        .args(["-K", "--nosignature"])
        .arg(rpm)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run rpm -K: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "the kernel RPM {url} is damaged (rpm -K: {})",
            String::from_utf8_lossy(&out.stdout).trim()
        ))
    }
}

/// Unpack the kernel of `rpm` into `work`: `work/vmlinuz` and the modules under
/// `work/tree/lib/modules/<release>/`; returns the release. `rpm2cpio` decompresses the payload;
/// which entries become files is decided here ([`kept_path`]).
fn unpack_rpm(rpm: &Path, work: &Path, max: u64) -> Result<String, String> {
    let mut child = std::process::Command::new("rpm2cpio")
        .arg(rpm)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run rpm2cpio: {e}"))?;
    let stdout = child.stdout.take().expect("piped");
    let unpacked = unpack_payload(stdout, work, max);
    let _ = child.kill();
    let _ = child.wait();
    unpacked
}

/// [`unpack_rpm`] from the payload, a newc cpio archive.
pub fn unpack_payload(payload: impl Read, work: &Path, max: u64) -> Result<String, String> {
    let mut unpacker = Unpacker {
        work: work.to_path_buf(),
        release: None,
        written: 0,
        entries: 0,
        max,
    };
    cpio::read_entries(payload, |header, data| unpacker.entry(header, data))
        .map_err(|e| format!("cannot unpack its payload: {e}"))?;
    let release = unpacker
        .release
        .ok_or("it has no /lib/modules/<release>/ (is it a kernel?)")?;
    if !work.join("vmlinuz").is_file() {
        return Err(format!("it has no kernel image (vmlinuz) for {release}"));
    }
    Ok(release)
}

/// What is written of an RPM's payload, and how much.
struct Unpacker {
    work: PathBuf,
    release: Option<String>,
    written: u64,
    entries: usize,
    max: u64,
}

impl Unpacker {
    fn entry(&mut self, header: &cpio::Header, data: &mut dyn Read) -> std::io::Result<()> {
        self.entries += 1;
        if self.entries > MAX_ENTRIES {
            return Err(refused(format!("more than {MAX_ENTRIES} files")));
        }
        if !header.is_regular() {
            return Ok(()); // Directories are made as needed; links and devices never.
        }
        let Some((release, rest)) = kept_path(&header.name) else {
            return Ok(());
        };
        if self.release.get_or_insert_with(|| release.to_string()) != release {
            return Err(refused(format!(
                "modules of two kernels ({} and {release})",
                self.release.as_deref().unwrap_or_default()
            )));
        }
        self.written += header.size;
        if self.written > self.max {
            return Err(refused(format!(
                "its kernel and modules take more than {} bytes",
                self.max
            )));
        }
        let dest = match rest {
            None => self.work.join("vmlinuz"),
            Some(rest) => self.work.join("tree/lib/modules").join(release).join(rest),
        };
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)?;
        }
        // create_new: a name given twice is refused, and no existing file (or link) is written.
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&dest)?;
        std::io::copy(data, &mut file)?;
        Ok(())
    }
}

fn refused(why: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, why)
}

/// Which payload paths are kept: `(release, Some(path inside its modules directory))` for
/// `lib/modules/<release>/...` (or `usr/lib/modules/...`), `(release, None)` for the kernel
/// image (`lib/modules/<release>/vmlinuz`, as Fedora ships it, or `boot/vmlinuz-<release>`).
/// Names with `..`, empty or odd components are never kept.
pub fn kept_path(name: &str) -> Option<(&str, Option<&str>)> {
    let name = name.strip_prefix("./").unwrap_or(name);
    let safe = |part: &str| !part.is_empty() && part != "." && part != ".." && !part.contains('\\');
    if name.starts_with('/') || !name.split('/').all(safe) {
        return None;
    }
    if let Some(release) = name.strip_prefix("boot/vmlinuz-") {
        return (!release.contains('/')).then_some((release, None));
    }
    let inside = name
        .strip_prefix("usr/lib/modules/")
        .or_else(|| name.strip_prefix("lib/modules/"))?;
    let (release, rest) = inside.split_once('/')?;
    Some((release, (rest != "vmlinuz").then_some(rest)))
}

/// Index the modules (`depmod`: Fedora's RPMs leave `modules.dep` to be made at installation)
/// and write them as an initramfs, `work/modules.cpio`.
fn pack_modules(work: &Path, release: &str) -> Result<(), String> {
    let tree = work.join("tree");
    let modules = tree.join("lib/modules").join(release);
    std::fs::create_dir_all(&modules).map_err(|e| e.to_string())?;
    let out = std::process::Command::new("depmod")
        .arg("-b")
        .arg(&tree)
        .arg(release)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run depmod: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "depmod failed on its modules: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let file = std::fs::File::create(work.join("modules.cpio")).map_err(|e| e.to_string())?;
    let mut writer = cpio::Writer::new(std::io::BufWriter::new(file));
    let write = |e: std::io::Error| format!("cannot write its modules' initramfs: {e}");
    for dir in ["lib", "lib/modules"] {
        writer.directory(dir).map_err(write)?;
    }
    add_tree(&mut writer, &modules, &format!("lib/modules/{release}")).map_err(write)?;
    use std::io::Write;
    writer
        .finish()
        .and_then(|mut out| out.flush())
        .map_err(write)
}

/// `dir` and everything in it, as `name/...`: directories and regular files only.
fn add_tree<W: std::io::Write>(
    writer: &mut cpio::Writer<W>,
    dir: &Path,
    name: &str,
) -> std::io::Result<()> {
    writer.directory(name)?;
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let child = format!("{name}/{}", entry.file_name().to_string_lossy());
        let meta = std::fs::symlink_metadata(&path)?;
        if meta.is_dir() {
            add_tree(writer, &path, &child)?;
        } else if meta.is_file() {
            writer.file(&child, meta.len(), &mut std::fs::File::open(&path)?)?;
        }
    }
    Ok(())
}

/// The early console for a job kernel's command line on `arch`: a kernel that fails before its
/// console driver starts (a corrupt image stops in its decompressor) still leaves its last words
/// in the serial log, which the FAILED result quotes.
pub fn early_console(arch: &str) -> Option<&'static str> {
    match arch {
        "x86_64" | "i686" => Some("earlyprintk=serial,ttyS0,115200"),
        "aarch64" | "riscv64" => Some("earlycon"),
        _ => None,
    }
}

/// The image's initramfs with the kernel's modules appended (cached beside the kernel, per
/// image initramfs content): what QEMU gets as `-initrd`.
pub fn initrd_with_modules(image_initrd: &Path, kernel: &JobKernel) -> Result<PathBuf, String> {
    let io = |e: std::io::Error| format!("cannot add the kernel's modules to the initramfs: {e}");
    let image_sum = download::sha256_file(image_initrd).map_err(io)?;
    let dir = kernel.modules.parent().unwrap_or(Path::new("."));
    let dest = dir.join(format!("initrd-{image_sum}.img"));
    if dest.is_file() {
        return Ok(dest);
    }
    let partial = dest.with_extension("partial");
    let mut out = std::fs::File::create(&partial).map_err(io)?;
    let size = std::io::copy(
        &mut std::fs::File::open(image_initrd).map_err(io)?,
        &mut out,
    )
    .map_err(io)?;
    // Each archive of an initramfs starts on a 4-byte boundary (zeros between are skipped).
    use std::io::Write;
    out.write_all(&[0u8; 3][..((4 - size % 4) % 4) as usize])
        .map_err(io)?;
    std::io::copy(
        &mut std::fs::File::open(&kernel.modules).map_err(io)?,
        &mut out,
    )
    .map_err(io)?;
    drop(out);
    std::fs::rename(&partial, &dest).map_err(io)?;
    Ok(dest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nvrs_must_be_plain_and_give_kojis_kernel_core_then_kernel_urls() {
        let source = KernelSource {
            http: reqwest::Client::new(),
            koji_pkgs_url: "https://koji.example/".into(),
            cache: "/c".into(),
            max_bytes: 1,
        };
        assert_eq!(
            source.rpm_urls("kernel-6.11.5-300.fc41", "x86_64").unwrap(),
            [
                "https://koji.example/packages/kernel/6.11.5/300.fc41/x86_64/kernel-core-6.11.5-300.fc41.x86_64.rpm",
                "https://koji.example/packages/kernel/6.11.5/300.fc41/x86_64/kernel-6.11.5-300.fc41.x86_64.rpm",
            ]
        );
        for bad in [
            "kernel",
            "kernel-1",
            "k/x-1-1",
            "kernel-..-1",
            "kernel-1-%2e",
            "-1-1",
        ] {
            assert!(source.rpm_urls(bad, "x86_64").is_err(), "{bad}");
        }
        assert!(source.rpm_urls("kernel-1-1", "../x").is_err());
    }

    /// A payload as rpm2cpio writes it, with entries a hostile RPM could carry.
    fn payload(entries: &[(&str, u32, &[u8])]) -> Vec<u8> {
        let mut w = cpio::Writer::new(Vec::new());
        for (name, mode, data) in entries {
            w.raw_entry(name, *mode, data.len() as u64, &mut &data[..])
                .unwrap();
        }
        w.finish().unwrap()
    }

    #[test]
    fn a_payload_gives_its_kernel_and_modules_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let work = dir.path().join("work");
        let link = 0o120000 | 0o777;
        let archive = payload(&[
            ("./lib/modules/6.1-1.x86_64", cpio::DIRECTORY | 0o755, b""),
            (
                "./lib/modules/6.1-1.x86_64/vmlinuz",
                cpio::REGULAR | 0o4755,
                b"bzImage",
            ),
            (
                "./lib/modules/6.1-1.x86_64/kernel/a.ko",
                cpio::REGULAR | 0o644,
                b"elf",
            ),
            // A link to outside, then a file "through" it: neither is written.
            ("./lib/modules/6.1-1.x86_64/build", link, b"/etc"),
            (
                "./lib/modules/6.1-1.x86_64/../../../../escaped",
                cpio::REGULAR,
                b"x",
            ),
            ("./etc/cron.d/evil", cpio::REGULAR | 0o644, b"x"),
        ]);
        let release = unpack_payload(&archive[..], &work, 1000).unwrap();
        assert_eq!(release, "6.1-1.x86_64");
        assert_eq!(std::fs::read(work.join("vmlinuz")).unwrap(), b"bzImage");
        let modules = work.join("tree/lib/modules/6.1-1.x86_64");
        assert_eq!(std::fs::read(modules.join("kernel/a.ko")).unwrap(), b"elf");
        assert!(!modules.join("build").exists() && !dir.path().join("escaped").exists());
        assert!(!work.join("etc").exists());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(work.join("vmlinuz"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7000, 0, "no setuid from the archive");

        // Over the size limit, two kernels, or no kernel image: refused, saying why.
        let err = unpack_payload(&archive[..], &dir.path().join("small"), 5).unwrap_err();
        assert!(err.contains("take more than 5 bytes"), "{err}");
        let two = payload(&[
            ("./lib/modules/6.1/a.ko", cpio::REGULAR, b"a"),
            ("./lib/modules/6.2/b.ko", cpio::REGULAR, b"b"),
        ]);
        let err = unpack_payload(&two[..], &dir.path().join("two"), 100).unwrap_err();
        assert!(
            err.contains("modules of two kernels (6.1 and 6.2)"),
            "{err}"
        );
        let no_image = payload(&[("./lib/modules/6.1/a.ko", cpio::REGULAR, b"a")]);
        let err = unpack_payload(&no_image[..], &dir.path().join("none"), 100).unwrap_err();
        assert!(err.contains("no kernel image"), "{err}");
    }

    #[test]
    fn only_modules_and_the_kernel_image_are_kept_and_never_outside() {
        assert_eq!(
            kept_path("./lib/modules/6.1-1.x86_64/kernel/fs/a.ko"),
            Some(("6.1-1.x86_64", Some("kernel/fs/a.ko")))
        );
        assert_eq!(
            kept_path("./usr/lib/modules/6.1/vmlinuz"),
            Some(("6.1", None))
        );
        assert_eq!(kept_path("./boot/vmlinuz-6.1"), Some(("6.1", None)));
        for outside in [
            "./etc/passwd",
            "/lib/modules/6.1/a.ko",
            "./lib/modules/6.1/../../../etc/x",
            "./lib/modules/../x",
            "./lib/modules/6.1//a",
            "./lib/modules/6.1",
            "./boot/vmlinuz-6.1/x",
            "./boot/config-6.1",
        ] {
            assert_eq!(kept_path(outside), None, "{outside}");
        }
    }
}
