//! The shipped RPM tasks (tasks/rpmlint, tasks/static-analysis, tasks/depcheck) end to end: the
//! shipped rules (deploy/rules.yaml) turn a real-shaped bus message into jobs, the real
//! provisioner, runner and reporter run them, and the results land in PostgreSQL.
//!
//! Each test builds real RPMs with rpmbuild, lays them out as Koji does
//! (`packages/<name>/<version>/<release>/<arch>/`) and serves them over HTTP (Python's
//! http.server, whose directory listings look like kojipkgs'), with the helpers of
//! `taskbot_tests::rpms`; the runner points the tasks there
//! with `KOJI_PKGS_URL`. Expected figures come from running the same tools on the same files in
//! the test, never from constants.

use std::path::{Path, PathBuf};
use std::process::Command;

use taskbot_tests::rpms::{
    create_repo, noarch_spec as spec, publish_build, require_tools, rpmbuild, HttpServer,
};
use taskbot_tests::shipped::{
    deployment, find_artifact, fixture_event, results, send_event, send_fixture,
};
use taskbot_tests::{workspace_root, Deployment};

/// The RPM tools the tasks and these tests use (installed by scripts/ensure-services.sh).
fn tools_present() {
    require_tools(&[
        "rpmbuild",
        "rpmlint",
        "cppcheck",
        "createrepo_c",
        "rpm2cpio",
    ]);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn depcheck_names_requirements_nothing_provides_and_passes_satisfied_builds() {
    tools_present();
    let tmp = tempfile::tempdir().unwrap();
    // The release's repository (Fedora 30, x86_64): libfoo 1.0 and libbar 1.5, with repodata.
    let repo = tmp.path().join("www/repo/30/x86_64");
    let mut rpms = Vec::new();
    for (name, version) in [("libfoo", "1.0"), ("libbar", "1.5")] {
        rpms.extend(rpmbuild(
            &tmp.path().join(format!("build-{name}")),
            &spec(name, version, "1.fc30", ""),
            &[],
        ));
    }
    create_repo(&repo, &rpms);
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
    send_event(d, &event).await;
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
