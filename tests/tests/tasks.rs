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

use std::path::PathBuf;
use std::process::Command;

use taskbot_tests::rpms::{
    create_repo, noarch_spec as spec, publish_build, require_tools, rpmbuild, HttpServer,
};
use taskbot_tests::shipped::{deployment, find_artifact, results, send_fixture};

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
