//! Real RPMs for the tests of the shipped RPM tasks: built with rpmbuild, laid out as Koji lays
//! out its builds, put into repositories with createrepo_c, and served over HTTP (Python's
//! http.server, whose directory listings look like kojipkgs' Apache listings).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::free_port;

/// Panic with a hint when one of `tools` is not installed (scripts/ensure-services.sh installs
/// them all).
pub fn require_tools(tools: &[&str]) {
    for tool in tools {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .unwrap()
            .success();
        assert!(
            found,
            "{tool} is missing: run scripts/ensure-services.sh (make test does)"
        );
    }
}

/// Build `spec` (with `sources` in SOURCES) under `top`; returns the source and binary RPMs
/// (debuginfo packages included, when the spec makes them).
pub fn rpmbuild(top: &Path, spec: &str, sources: &[(&str, &Path)]) -> Vec<PathBuf> {
    std::fs::create_dir_all(top.join("SOURCES")).unwrap();
    for (name, path) in sources {
        std::fs::copy(path, top.join("SOURCES").join(name)).unwrap();
    }
    let spec_path = top.join("package.spec");
    std::fs::write(&spec_path, spec).unwrap();
    let output = Command::new("rpmbuild")
        .arg("--define")
        .arg(format!("_topdir {}", top.display()))
        .args(["-ba"])
        .arg(&spec_path)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "rpmbuild failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut rpms = Vec::new();
    for dir in ["SRPMS", "RPMS/noarch", "RPMS/x86_64"] {
        if let Ok(entries) = std::fs::read_dir(top.join(dir)) {
            rpms.extend(entries.map(|e| e.unwrap().path()));
        }
    }
    rpms.sort();
    rpms
}

/// The spec of a noarch package `name` holding one data file; `extra` goes into its preamble
/// (`Requires:`, `Source0:`, ...).
pub fn noarch_spec(name: &str, version: &str, release: &str, extra: &str) -> String {
    format!(
        "Name: {name}\nVersion: {version}\nRelease: {release}\nSummary: test package {name}\n\
         License: MIT\nBuildArch: noarch\nAutoReqProv: no\n{extra}\n%description\nA test package.\n\n\
         %install\nmkdir -p %{{buildroot}}/usr/share/{name}\necho data > %{{buildroot}}/usr/share/{name}/data\n\n\
         %files\n/usr/share/{name}/data\n"
    )
}

/// Put a build's RPMs where Koji would: `<root>/packages/<n>/<v>/<r>/<arch>/`.
pub fn publish_build(root: &Path, nvr: &str, rpms: &[PathBuf]) {
    let mut parts = nvr.rsplitn(3, '-');
    let (r, v, n) = (
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap(),
    );
    for rpm in rpms {
        let file = rpm.file_name().unwrap().to_str().unwrap();
        let arch = file.trim_end_matches(".rpm").rsplit('.').next().unwrap();
        let dir = root.join("packages").join(n).join(v).join(r).join(arch);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(rpm, dir.join(file)).unwrap();
    }
}

/// Make `dir` a yum repository holding the binary RPMs of `rpms` (source RPMs left out, as in
/// Fedora's binary repositories), with repodata written by createrepo_c.
pub fn create_repo(dir: &Path, rpms: &[PathBuf]) {
    std::fs::create_dir_all(dir).unwrap();
    for rpm in rpms {
        if !rpm.to_str().unwrap().ends_with(".src.rpm") {
            std::fs::copy(rpm, dir.join(rpm.file_name().unwrap())).unwrap();
        }
    }
    let status = Command::new("createrepo_c")
        .arg("--quiet")
        .arg(dir)
        .status()
        .unwrap();
    assert!(status.success(), "createrepo_c {} failed", dir.display());
}

/// A static HTTP server over `root`, stopped on drop.
pub struct HttpServer {
    child: Child,
    pub url: String,
}

impl HttpServer {
    pub fn start(root: &Path) -> HttpServer {
        let port = free_port();
        let child = Command::new("python3")
            .args([
                "-m",
                "http.server",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .arg("--directory")
            .arg(root)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 -m http.server");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "the HTTP server did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        HttpServer {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
