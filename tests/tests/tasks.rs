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
    // With the task's own settings, as the task runs it.
    let config = workspace_root().join("tasks/rpmlint/rpmlint.toml");
    let output = Command::new("rpmlint")
        .arg("-c")
        .arg(config)
        .args(rpms)
        .output()
        .unwrap();
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

// --- static-analysis without a list of C packages, and its CPython API analysis -------------

/// What the python-capi check needs besides the RPM tools: GCC's analyzer, Python.h and
/// CPython's C API documentation (scripts/ensure-services.sh installs them).
fn capi_tools_present() {
    let gcc = Command::new("gcc").arg("--version").output();
    assert!(gcc.is_ok_and(|o| o.status.success()), "gcc is missing");
    assert!(
        python_include_dir().join("Python.h").is_file(),
        "Python.h is missing: run scripts/ensure-services.sh (python3-dev)"
    );
    let docs = Command::new("sh")
        .args(["-c", "ls /usr/share/doc/python3*/html/c-api/long.html"])
        .output()
        .unwrap();
    assert!(
        docs.status.success(),
        "CPython's C API documentation is missing: run scripts/ensure-services.sh (python3-doc)"
    );
}

/// The include directory of the system Python (/usr/bin/python3, which the tasks run with).
fn python_include_dir() -> PathBuf {
    let output = Command::new("/usr/bin/python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_paths()['include'])",
        ])
        .output()
        .unwrap();
    PathBuf::from(String::from_utf8(output.stdout).unwrap().trim())
}

/// Send the Koji "build complete" message of the real-shaped fixture, for another build.
async fn send_build_complete(d: &Deployment, name: &str, version: &str, release: &str) {
    let mut event = fixture_event("koji-build-complete-openssl.json");
    event.msg["name"] = name.into();
    event.msg["version"] = version.into();
    event.msg["release"] = release.into();
    d.broker
        .publish(
            &d.broker.topology.events_exchange(),
            &event.topic,
            event.to_json(),
        )
        .await;
}

/// A `<dir>.tar.gz` of the files of `tests/fixtures/python-extensions/<fixture>` (or of `files`
/// written here), as an upstream release tarball would hold them; returns its path.
fn source_tarball(tmp: &Path, dir: &str, fixture: Option<&str>, files: &[(&str, &str)]) -> PathBuf {
    let src = tmp.join("src").join(dir);
    std::fs::create_dir_all(&src).unwrap();
    if let Some(fixture) = fixture {
        let from = workspace_root()
            .join("tests/fixtures/python-extensions")
            .join(fixture);
        for entry in std::fs::read_dir(from).unwrap() {
            let path = entry.unwrap().path();
            std::fs::copy(&path, src.join(path.file_name().unwrap())).unwrap();
        }
    }
    for (name, text) in files {
        std::fs::write(src.join(name), text).unwrap();
    }
    let tarball = tmp.join(format!("{dir}.tar.gz"));
    let status = Command::new("tar")
        .arg("czf")
        .arg(&tarball)
        .arg("-C")
        .arg(tmp.join("src"))
        .arg(dir)
        .status()
        .unwrap();
    assert!(status.success());
    tarball
}

/// Build and publish in Koji's layout a noarch package `name-version-1.fc30` whose Source0 is
/// `tarball`.
fn publish_source_package(tmp: &Path, koji: &Path, name: &str, version: &str, tarball: &Path) {
    let file = tarball.file_name().unwrap().to_str().unwrap();
    let rpms = rpmbuild(
        &tmp.join(format!("build-{name}")),
        &spec(name, version, "1.fc30", &format!("Source0: {file}")),
        &[(file, tarball)],
    );
    publish_build(koji, &format!("{name}-{version}-1.fc30"), &rpms);
}

/// The number of results of `testcase` stored for `item`.
async fn result_count(d: &Deployment, testcase: &str, item: &str) -> i64 {
    d.db()
        .await
        .query_one(
            "select count(*) from results where testcase = $1 and item = $2",
            &[&testcase, &item],
        )
        .await
        .unwrap()
        .get(0)
}

const SETUP_PY: &str = "from setuptools import Extension, setup\n\
    setup(name='ext', ext_modules=[Extension('ext', ['ext.c'])])\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_without_c_sources_gets_one_info_result() {
    tools_present();
    let tmp = tempfile::tempdir().unwrap();
    // A shell-script package: the rules analyse every completed build; the task finds nothing
    // to analyse in its source RPM.
    let tarball = source_tarball(
        tmp.path(),
        "hello-sh-1.0",
        None,
        &[
            ("hello.sh", "#!/bin/sh\necho hello\n"),
            ("README", "Says hello.\n"),
        ],
    );
    let koji = tmp.path().join("koji");
    publish_source_package(tmp.path(), &koji, "hello-sh", "1.0", &tarball);
    let server = HttpServer::start(&koji);
    let d = deployment(
        &tmp.path().join("staging"),
        &["noarch"],
        &[("KOJI_PKGS_URL", &server.url)],
    )
    .await;
    send_build_complete(&d, "hello-sh", "1.0", "1.fc30").await;
    let found = results(&d, "dist.static-analysis", "hello-sh-1.0-1.fc30", 1).await;
    assert_eq!(
        found,
        [("INFO".into(), "no C sources".into(), "noarch".into())]
    );
    // The job's only result: no CPython check either (all results of a job are stored together).
    let capi = result_count(
        &d,
        "dist.static-analysis.python-capi",
        "hello-sh-1.0-1.fc30",
    )
    .await;
    assert_eq!(capi, 0);
    d.shutdown().await;
}

/// gcc -fanalyzer's warnings for `source`, run here directly with the header the task
/// generated (kept in the job's artifacts), as (line of the path's last step in the file,
/// function) pairs.
fn analyzer_warnings(source: &Path, api_header: &Path, include_dir: &Path) -> Vec<String> {
    let output = Command::new("gcc")
        .args([
            "-fanalyzer",
            "-fdiagnostics-format=json",
            "-Wno-deprecated-declarations",
        ])
        .arg("-include")
        .arg(api_header)
        .arg(format!("-I{}", python_include_dir().display()))
        .arg(format!("-I{}", include_dir.display()))
        .arg("-c")
        .arg(source)
        .args(["-o", "/dev/null"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let diagnostics: serde_json::Value = serde_json::from_slice(&output.stderr).unwrap();
    let name = source.file_name().unwrap().to_str().unwrap();
    diagnostics
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| {
            d["option"]
                .as_str()
                .unwrap_or("")
                .starts_with("-Wanalyzer-")
        })
        .map(|d| {
            let steps: Vec<&serde_json::Value> = d["path"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| e["location"]["file"].as_str().unwrap().ends_with(name))
                .collect();
            let last = steps.last().expect("a step in the file");
            format!(
                "{name}:{} {}",
                last["location"]["line"],
                last["function"].as_str().unwrap()
            )
        })
        .collect()
}

/// The line (1-based) of the first line of `text` that contains `needle` after the line that
/// contains `after`.
fn line_of(text: &str, after: &str, needle: &str) -> usize {
    let start = text.lines().position(|l| l.contains(after)).unwrap();
    start
        + 1
        + text
            .lines()
            .skip(start)
            .position(|l| l.contains(needle))
            .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_capi_names_the_leaks_of_an_extension_and_passes_a_clean_one() {
    tools_present();
    capi_tools_present();
    let tmp = tempfile::tempdir().unwrap();
    let koji = tmp.path().join("koji");
    let leaky = source_tarball(
        tmp.path(),
        "python-leaky-1.0",
        Some("leaky"),
        &[("setup.py", &SETUP_PY.replace("ext", "leaky"))],
    );
    publish_source_package(tmp.path(), &koji, "python-leaky", "1.0", &leaky);
    // The clean extension includes Python.h through a header of its own.
    let clean = source_tarball(
        tmp.path(),
        "python-clean-1.0",
        Some("clean"),
        &[("setup.py", &SETUP_PY.replace("ext", "clean"))],
    );
    publish_source_package(tmp.path(), &koji, "python-clean", "1.0", &clean);
    let server = HttpServer::start(&koji);
    let d = deployment(
        &tmp.path().join("staging"),
        &["noarch"],
        &[("KOJI_PKGS_URL", &server.url)],
    )
    .await;
    send_build_complete(&d, "python-leaky", "1.0", "1.fc30").await;
    send_build_complete(&d, "python-clean", "1.0", "1.fc30").await;

    let capi = "dist.static-analysis.python-capi";
    let found = results(&d, capi, "python-leaky-1.0-1.fc30", 1).await;
    let (outcome, note, _) = &found[0];
    assert_eq!(outcome, "FAILED", "{note}");
    // What gcc -fanalyzer says, run here on the same file with the task's API header.
    let src = tmp.path().join("src/python-leaky-1.0");
    let header = tmp.path().join("cpython-api.h");
    std::fs::write(&header, find_artifact(&d, "cpython-api.h")).unwrap();
    let direct = analyzer_warnings(&src.join("leaky.c"), &header, &src);
    assert!(
        note.starts_with(&format!(
            "gcc -fanalyzer: {} findings in 1 of 1 extension files: ",
            direct.len()
        )),
        "{note}\n{direct:?}"
    );
    for warning in &direct {
        assert!(note.contains(warning.as_str()), "{warning} not in {note}");
    }
    // The three real bugs the analyzer knows, at the lines where the source has them.
    let text = std::fs::read_to_string(src.join("leaky.c")).unwrap();
    let leak = line_of(&text, "\"negative\"", "return NULL");
    assert!(
        note.contains(&format!("leaky.c:{leak} leaky_ref: leak of ‘result’")),
        "{note}"
    );
    let buffer = line_of(&text, "\"too long\"", "return NULL");
    assert!(
        note.contains(&format!("leaky.c:{buffer} leaky_buffer: leak of ‘buffer’")),
        "{note}"
    );
    let unchecked = line_of(&text, "PyList_New(1)", "PyList_SET_ITEM");
    assert!(
        note.contains(&format!(
            "leaky.c:{unchecked} unchecked: dereference of possibly-NULL"
        )),
        "{note}"
    );
    // cppcheck ran too (its own testcase) and found nothing CPython-specific to fail.
    let found = results(&d, "dist.static-analysis", "python-leaky-1.0-1.fc30", 1).await;
    assert!(found[0].1.starts_with("cppcheck: "), "{found:?}");

    let found = results(&d, capi, "python-clean-1.0-1.fc30", 1).await;
    assert_eq!(
        found,
        [(
            "PASSED".into(),
            "gcc -fanalyzer: 0 findings in 1 of 1 extension files".into(),
            "noarch".into()
        )]
    );
    let clean_src = tmp.path().join("src/python-clean-1.0");
    assert_eq!(
        analyzer_warnings(&clean_src.join("clean.c"), &header, &clean_src),
        Vec::<String>::new()
    );
    d.shutdown().await;
}
