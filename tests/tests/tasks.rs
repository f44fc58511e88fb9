//! The shipped RPM tasks (tasks/rpmlint, tasks/static-analysis, tasks/depcheck) end to end: the
//! shipped rules (deploy/rules.yaml) turn a real-shaped bus message into jobs, the real
//! provisioner, runner and reporter run them, and the results land in PostgreSQL.
//!
//! Each test builds real RPMs with rpmbuild, lays them out as Koji does
//! (`packages/<name>/<version>/<release>/<arch>/`) and serves them over HTTP (Python's
//! http.server, whose directory listings look like kojipkgs'); the runner points the tasks there
//! with `KOJI_PKGS_URL`. Expected figures come from running the same tools on the same files in
//! the test, never from constants.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::Utc;
use taskbot::messages::{Event, Message};
use taskbot_tests::{free_port, shipped_task, workspace_root, Deployment};

/// The RPM tools the tasks and these tests use (installed by scripts/ensure-services.sh).
fn tools_present() {
    for tool in [
        "rpmbuild",
        "rpmlint",
        "cppcheck",
        "createrepo_c",
        "rpm2cpio",
    ] {
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

/// Build `spec` (with `sources` in SOURCES) under `top`; returns the source and binary RPMs.
fn rpmbuild(top: &Path, spec: &str, sources: &[(&str, &Path)]) -> Vec<PathBuf> {
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

/// Put a build's RPMs where Koji would: `<root>/packages/<n>/<v>/<r>/<arch>/`.
fn publish_build(root: &Path, nvr: &str, rpms: &[PathBuf]) {
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

/// A static HTTP server over `root`, stopped on drop.
struct HttpServer {
    child: Child,
    url: String,
}

impl HttpServer {
    fn start(root: &Path) -> HttpServer {
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

/// A real-shaped message of tests/fixtures/messages as the bridge turns it into an event (with
/// a fresh id, so that runs of the test never share job ids).
fn fixture_event(name: &str) -> Event {
    let text = std::fs::read_to_string(workspace_root().join("tests/fixtures/messages").join(name))
        .unwrap();
    let envelope: serde_json::Value = serde_json::from_str(&text).unwrap();
    Event {
        id: format!("2026-{}", uuid::Uuid::new_v4()),
        topic: envelope["topic"].as_str().unwrap().to_string(),
        source: "test".into(),
        sent_at: None,
        received_at: Utc::now(),
        username: None,
        msg: envelope["msg"].clone(),
        headers: Default::default(),
    }
}

/// Publish a fixture's event on the deployment's events exchange, as the bridge would.
async fn send_fixture(d: &Deployment, name: &str) {
    let event = fixture_event(name);
    d.broker
        .publish(
            &d.broker.topology.events_exchange(),
            &event.topic,
            event.to_json(),
        )
        .await;
}

/// A deployment with the shipped rules and the shipped tasks, the runners of `arches` giving
/// their tasks `env` (where Koji and the repositories are).
async fn deployment(staging: &Path, runner_arches: &[&str], env: &[(&str, &str)]) -> Deployment {
    let tasks: Vec<(String, PathBuf)> = ["example", "rpmlint", "static-analysis", "depcheck"]
        .iter()
        .map(|name| (name.to_string(), shipped_task(name, staging)))
        .collect();
    let tasks: Vec<(&str, &Path)> = tasks
        .iter()
        .map(|(n, p)| (n.as_str(), p.as_path()))
        .collect();
    let rules = std::fs::read_to_string(workspace_root().join("deploy/rules.yaml")).unwrap();
    let mut d = Deployment::new(&rules, &tasks, free_port()).await;
    d.set_arches(&["x86_64", "aarch64", "noarch"]);
    // Tasks never see the runner's environment: the operator hands them these settings.
    d.configure(|config| {
        config.runner.task_env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    });
    d.start("reporter", "reporter", &[]);
    d.start("provisioner", "provisioner", &[]);
    d.start("rules", "rules", &[]);
    for arch in runner_arches {
        d.start(&format!("runner-{arch}"), "runner", &["--arch", arch]);
    }
    let t = d.broker.topology.clone();
    let mut queues = vec![
        t.rules_queue(),
        t.provisioner_queue(),
        t.postgres_results_queue(),
        t.postgres_status_queue(),
    ];
    queues.extend(runner_arches.iter().map(|arch| t.run_queue(arch)));
    d.wait_for_consumers(&queues, Duration::from_secs(60)).await;
    d
}

/// The (outcome, note, arch) of the results of `testcase` for `item`, once `count` are stored.
async fn results(
    d: &Deployment,
    testcase: &str,
    item: &str,
    count: i64,
) -> Vec<(String, String, String)> {
    let n = d
        .wait_for_count(
            &format!(
                "select count(*) from results where testcase = '{testcase}' and item = '{item}'"
            ),
            count,
            Duration::from_secs(120),
        )
        .await;
    assert_eq!(n, count, "results of {testcase} for {item}\n{}", d.logs());
    d.db()
        .await
        .query(
            "select outcome, coalesce(note, ''), arch from results where testcase = $1 and item = $2 order by arch",
            &[&testcase, &item],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .collect()
}

fn spec(name: &str, version: &str, release: &str, extra: &str) -> String {
    format!(
        "Name: {name}\nVersion: {version}\nRelease: {release}\nSummary: test package {name}\n\
         License: MIT\nBuildArch: noarch\nAutoReqProv: no\n{extra}\n%description\nA test package.\n\n\
         %install\nmkdir -p %{{buildroot}}/usr/share/{name}\necho data > %{{buildroot}}/usr/share/{name}/data\n\n\
         %files\n/usr/share/{name}/data\n"
    )
}

/// "E errors, W warnings" as rpmlint prints it for `rpms`, run here directly.
fn rpmlint_counts(rpms: &[PathBuf]) -> String {
    let output = Command::new("rpmlint").args(rpms).output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    let summary = text
        .lines()
        .find(|l| l.contains("checked;"))
        .unwrap_or_else(|| panic!("no rpmlint summary:\n{text}"));
    let counts = summary.split("checked;").nth(1).unwrap();
    let mut parts = counts.split(',');
    format!(
        "{}, {}",
        parts.next().unwrap().trim(),
        parts.next().unwrap().trim()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpmlint_reports_the_real_findings_of_each_build_of_an_update() {
    tools_present();
    let tmp = tempfile::tempdir().unwrap();
    let koji = tmp.path().join("koji");
    // The two builds of the real-shaped update: one with rpmlint errors (a world-writable
    // file), both with rpmlint's usual warnings.
    let portal = rpmbuild(
        &tmp.path().join("build-portal"),
        &spec("xdg-desktop-portal", "1.4.2", "1.fc30", "")
            .replace("%files\n", "%files\n%attr(0777,root,root) "),
        &[],
    );
    let pipewire = rpmbuild(
        &tmp.path().join("build-pipewire"),
        &spec("pipewire", "0.2.6", "1.fc30", ""),
        &[],
    );
    publish_build(&koji, "xdg-desktop-portal-1.4.2-1.fc30", &portal);
    publish_build(&koji, "pipewire-0.2.6-1.fc30", &pipewire);
    let server = HttpServer::start(&koji);

    let d = deployment(
        &tmp.path().join("staging"),
        &["noarch"],
        &[("KOJI_PKGS_URL", &server.url)],
    )
    .await;
    send_fixture(&d, "bodhi-request-testing-two-builds.json").await;

    for (nvr, rpms) in [
        ("xdg-desktop-portal-1.4.2-1.fc30", &portal),
        ("pipewire-0.2.6-1.fc30", &pipewire),
    ] {
        let expected = rpmlint_counts(rpms);
        let found = results(&d, "dist.rpmlint", nvr, 1).await;
        let (outcome, note, _) = &found[0];
        assert_eq!(note, &expected, "{nvr}");
        let errors: u32 = expected.split(' ').next().unwrap().parse().unwrap();
        assert_eq!(
            outcome,
            if errors > 0 { "FAILED" } else { "PASSED" },
            "{nvr}: {note}"
        );
    }
    // The world-writable file is an rpmlint error, so that build fails for a real reason.
    assert!(rpmlint_counts(&portal).split(' ').next().unwrap() != "0");
    d.shutdown().await;
}

const BUGGY_C: &str = r#"#include <stdlib.h>
#include <string.h>

/* A real bug: the loop writes one element past the end of the array. */
int sum_first(const int *values, int n)
{
    int copy[8];
    int total = 0;
    for (int i = 0; i <= 8; i++) {
        copy[i] = 0;
    }
    memcpy(copy, values, (n < 8 ? n : 8) * sizeof(int));
    for (int i = 0; i < 8; i++) {
        total += copy[i];
    }
    return total;
}

/* Another: memory allocated and lost on the early return. */
char *duplicate(const char *text)
{
    char *out = malloc(strlen(text) + 1);
    if (text[0] == '\0') {
        return NULL;
    }
    strcpy(out, text);
    return out;
}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_analysis_finds_the_real_bugs_in_a_c_package() {
    tools_present();
    let tmp = tempfile::tempdir().unwrap();
    // openssl is in the rules' c_packages set; its "source" is a tarball with a buggy C file.
    let src = tmp.path().join("src/openssl-1.1.1c");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("buggy.c"), BUGGY_C).unwrap();
    let tarball = tmp.path().join("openssl-1.1.1c.tar.gz");
    let status = Command::new("tar")
        .arg("czf")
        .arg(&tarball)
        .arg("-C")
        .arg(tmp.path().join("src"))
        .arg("openssl-1.1.1c")
        .status()
        .unwrap();
    assert!(status.success());
    let rpms = rpmbuild(
        &tmp.path().join("build"),
        &spec(
            "openssl",
            "1.1.1c",
            "2.fc30",
            "Source0: openssl-1.1.1c.tar.gz",
        ),
        &[("openssl-1.1.1c.tar.gz", &tarball)],
    );
    let koji = tmp.path().join("koji");
    publish_build(&koji, "openssl-1.1.1c-2.fc30", &rpms);
    let server = HttpServer::start(&koji);

    // What cppcheck itself says about the file.
    let direct = Command::new("cppcheck")
        .args([
            "--enable=warning,portability,performance",
            "--xml",
            "--xml-version=2",
            "--quiet",
        ])
        .arg(src.join("buggy.c"))
        .output()
        .unwrap();
    let xml = String::from_utf8_lossy(&direct.stderr);
    let errors = xml.matches("severity=\"error\"").count();
    assert!(errors >= 2, "cppcheck should find both bugs:\n{xml}");

    let d = deployment(
        &tmp.path().join("staging"),
        &["noarch"],
        &[("KOJI_PKGS_URL", &server.url)],
    )
    .await;
    send_fixture(&d, "koji-build-complete-openssl.json").await;
    let found = results(&d, "dist.static-analysis", "openssl-1.1.1c-2.fc30", 1).await;
    let (outcome, note, _) = &found[0];
    assert_eq!(outcome, "FAILED", "{note}");
    assert!(
        note.starts_with(&format!("cppcheck: {errors} error")),
        "{note}"
    );
    assert!(note.ends_with("in 1 files"), "{note}");
    // The readable list of findings is kept with the job and names the bugs.
    let listing = find_artifact(&d, "cppcheck.txt");
    assert!(listing.contains("arrayIndexOutOfBounds"), "{listing}");
    assert!(listing.contains("memleak"), "{listing}");
    d.shutdown().await;
}

/// The content of the first artifact called `name` under the deployment's artifacts.
fn find_artifact(d: &Deployment, name: &str) -> String {
    for entry in std::fs::read_dir(&d.config.runner.artifacts_dir).unwrap() {
        let path = entry.unwrap().path().join(name);
        if let Ok(text) = std::fs::read_to_string(&path) {
            return text;
        }
    }
    panic!("no artifact {name}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn depcheck_names_requirements_nothing_provides_and_passes_satisfied_builds() {
    tools_present();
    let tmp = tempfile::tempdir().unwrap();
    // The release's repository (Fedora 30, x86_64): libfoo 1.0 and libbar 1.5, with repodata.
    let repo = tmp.path().join("www/repo/30/x86_64");
    std::fs::create_dir_all(&repo).unwrap();
    for (name, version) in [("libfoo", "1.0"), ("libbar", "1.5")] {
        for rpm in rpmbuild(
            &tmp.path().join(format!("build-{name}")),
            &spec(name, version, "1.fc30", ""),
            &[],
        ) {
            if !rpm.to_str().unwrap().ends_with(".src.rpm") {
                std::fs::copy(&rpm, repo.join(rpm.file_name().unwrap())).unwrap();
            }
        }
    }
    let status = Command::new("createrepo_c")
        .arg("--quiet")
        .arg(&repo)
        .status()
        .unwrap();
    assert!(status.success());
    // The update's builds: one needs a newer libfoo than the repository has, and something
    // nobody provides; the other needs what the repository and the build itself provide.
    let koji = tmp.path().join("www");
    let portal = rpmbuild(
        &tmp.path().join("build-portal"),
        &spec(
            "xdg-desktop-portal",
            "1.4.2",
            "1.fc30",
            "Requires: libfoo >= 2.0\nRequires: libnowhere\nRequires: libbar",
        ),
        &[],
    );
    let pipewire = rpmbuild(
        &tmp.path().join("build-pipewire"),
        &spec(
            "pipewire",
            "0.2.6",
            "1.fc30",
            "Requires: libbar >= 1.2\nRequires: libfoo = 1.0-1.fc30\nRequires: pipewire = 0.2.6",
        ),
        &[],
    );
    publish_build(&koji, "xdg-desktop-portal-1.4.2-1.fc30", &portal);
    publish_build(&koji, "pipewire-0.2.6-1.fc30", &pipewire);
    let server = HttpServer::start(&koji);
    let repos = format!("{}/repo/{{release}}/{{arch}}/", server.url);

    let d = deployment(
        &tmp.path().join("staging"),
        &["x86_64"],
        &[
            ("KOJI_PKGS_URL", &server.url),
            ("DEPCHECK_REPO_URLS", &repos),
        ],
    )
    .await;
    send_fixture(&d, "bodhi-request-stable.json").await;

    // Only the x86_64 runner runs here; the aarch64 jobs wait in their queue.
    let found = results(&d, "dist.depcheck", "xdg-desktop-portal-1.4.2-1.fc30", 1).await;
    let (outcome, note, arch) = &found[0];
    assert_eq!(
        (outcome.as_str(), arch.as_str()),
        ("FAILED", "x86_64"),
        "{note}"
    );
    assert!(
        note.starts_with("2 of 3 requirements unsatisfied"),
        "{note}"
    );
    assert!(
        note.contains("xdg-desktop-portal requires libfoo >= 2.0"),
        "{note}"
    );
    assert!(
        note.contains("xdg-desktop-portal requires libnowhere"),
        "{note}"
    );
    assert!(!note.contains("libbar"), "{note}");

    let found = results(&d, "dist.depcheck", "pipewire-0.2.6-1.fc30", 1).await;
    let (outcome, note, _) = &found[0];
    assert_eq!(outcome, "PASSED", "{note}");
    assert_eq!(note, "all 3 requirements of 1 RPMs satisfied");
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_missing_from_koji_crashes_naming_the_url() {
    tools_present();
    let tmp = tempfile::tempdir().unwrap();
    let koji = tmp.path().join("koji");
    std::fs::create_dir_all(&koji).unwrap();
    let server = HttpServer::start(&koji);
    let d = deployment(
        &tmp.path().join("staging"),
        &["noarch"],
        &[("KOJI_PKGS_URL", &server.url)],
    )
    .await;
    send_fixture(&d, "koji-build-complete-openssl.json").await;
    let found = results(&d, "dist.static-analysis", "openssl-1.1.1c-2.fc30", 1).await;
    let (outcome, note, _) = &found[0];
    assert_eq!(outcome, "CRASHED", "{note}");
    assert_eq!(
        note,
        &format!(
            "download {}/packages/openssl/1.1.1c/2.fc30/ failed: HTTP status 404",
            server.url
        )
    );
    d.shutdown().await;
}
