//! The release checks of the shipped rules end to end: upgradepath (tasks/upgradepath) on an
//! update requested to stable, and abicheck (tasks/abicheck) on completed Koji builds. The
//! shipped rules (deploy/rules.yaml) turn real-shaped bus messages into jobs, the real
//! provisioner, runner and reporter run them, and the results land in PostgreSQL.
//!
//! The RPMs are real (rpmbuild, with debuginfo packages for the libraries), served over HTTP in
//! Koji's layout and in createrepo_c repositories (`taskbot_tests::rpms`). What abipkgdiff says
//! is checked against running it directly on the same RPMs.

use std::path::{Path, PathBuf};
use std::process::Command;

use taskbot_tests::rpms::{
    create_repo, noarch_spec, publish_build, require_tools, rpmbuild, HttpServer,
};
use taskbot_tests::shipped::{
    deployment, fixture_event, job_artifact, results, send_event, send_fixture,
};

fn tools_present() {
    require_tools(&[
        "rpmbuild",
        "createrepo_c",
        "rpm2cpio",
        "abipkgdiff",
        "eu-strip",
    ]);
}

/// Build the noarch package `nvr`; returns its binary RPMs.
fn noarch_build(tmp: &Path, nvr: &str) -> Vec<PathBuf> {
    let mut parts = nvr.rsplitn(3, '-');
    let (release, version, name) = (
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap(),
    );
    rpmbuild(
        &tmp.join(format!("build-{nvr}")),
        &noarch_spec(name, version, release, ""),
        &[],
    )
}

/// The repositories of the releases around Fedora 30, laid out as
/// `<www>/<release>/<repository>/`: what each one carries of the update's two packages.
const REPOSITORIES: &[(&str, &[&str])] = &[
    (
        "29/release",
        &["pipewire-0.2.3-1.fc29", "xdg-desktop-portal-1.4.0-1.fc29"],
    ),
    // Higher than the failing update's pipewire 0.2.4 in 30, lower than the passing one's.
    ("29/updates", &["pipewire-0.2.5-1.fc29"]),
    // Where an update requested to stable sits.
    (
        "30/updates-testing",
        &["pipewire-0.2.6-1.fc30", "xdg-desktop-portal-1.4.2-1.fc30"],
    ),
    (
        "31/release",
        &["pipewire-0.2.6-2.fc31", "xdg-desktop-portal-1.4.2-2.fc31"],
    ),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgradepath_passes_a_kept_path_and_names_an_older_release_with_a_higher_evr() {
    tools_present();
    let tmp = tempfile::tempdir().unwrap();
    let www = tmp.path().join("www");
    for (repo, nvrs) in REPOSITORIES {
        let rpms: Vec<PathBuf> = nvrs
            .iter()
            .flat_map(|nvr| noarch_build(tmp.path(), nvr))
            .collect();
        create_repo(&www.join(repo), &rpms);
    }
    let server = HttpServer::start(&www);
    // The other repositories of these releases (30/release, 31/updates, ...) do not exist: the
    // task skips a repository that answers 404.
    let repos = format!(
        "release={0}/{{release}}/release/ updates={0}/{{release}}/updates/ \
         updates-testing={0}/{{release}}/updates-testing/",
        server.url
    );
    let d = deployment(
        &tmp.path().join("staging"),
        &["noarch"],
        &[
            ("UPGRADEPATH_REPO_URLS", &repos),
            ("UPGRADEPATH_RELEASES", "29 30 31"),
        ],
    )
    .await;

    // The real-shaped request of xdg-desktop-portal 1.4.2 and pipewire 0.2.6 to stable in F30.
    send_fixture(&d, "bodhi-request-stable.json").await;
    // The same request for an update of pipewire 0.2.4 only: F29's updates have 0.2.5.
    let mut broken = fixture_event("bodhi-request-stable.json");
    broken.msg["update"]["alias"] = "FEDORA-2019-0000000bad".into();
    broken.msg["update"]["builds"] =
        serde_json::json!([{"epoch": 0, "nvr": "pipewire-0.2.4-1.fc30"}]);
    send_event(&d, &broken).await;

    let found = results(&d, "dist.upgradepath", "FEDORA-2019-46910daf41", 1).await;
    let (outcome, note, arch) = &found[0];
    assert_eq!(
        (outcome.as_str(), arch.as_str()),
        ("PASSED", "noarch"),
        "{note}"
    );
    assert_eq!(
        note,
        "upgrade path kept for 2 builds against releases 29, 31"
    );

    let found = results(&d, "dist.upgradepath", "FEDORA-2019-0000000bad", 1).await;
    let (outcome, note, _) = &found[0];
    assert_eq!(outcome, "FAILED", "{note}");
    assert_eq!(
        note,
        "1 upgrade path problem: pipewire: 0.2.5-1.fc29 in 29 (updates) is higher than \
         0.2.4-1.fc30 in 30"
    );
    d.shutdown().await;
}

/// The spec of a C library `libfoo.so.1` built from the source foo.c, with its debuginfo
/// package (rpmbuild's find-debuginfo).
fn library_spec(version: &str) -> String {
    format!(
        "Name: libfoo\nVersion: {version}\nRelease: 1.fc30\nSummary: a test library\nLicense: MIT\n\
         Source0: foo.c\n%global _enable_debug_packages 1\n%debug_package\n\
         %description\nA test library.\n\n\
         %build\ngcc -g -O2 -fPIC -shared -Wl,-soname,libfoo.so.1 -o libfoo.so.1.0 %{{SOURCE0}}\n\n\
         %install\nmkdir -p %{{buildroot}}/usr/lib64\n\
         install -m755 libfoo.so.1.0 %{{buildroot}}/usr/lib64/\n\
         ln -s libfoo.so.1.0 %{{buildroot}}/usr/lib64/libfoo.so.1\n\n\
         %files\n/usr/lib64/libfoo.so.1.0\n/usr/lib64/libfoo.so.1\n"
    )
}

/// The three versions of libfoo: 1.1 only adds a function to 1.0; 2.0 removes two and changes
/// the layout of the struct a kept function takes.
const LIBFOO: &[(&str, &str)] = &[
    (
        "1.0",
        "struct foo { int a; int b; };\nint foo_get(struct foo *f) { return f->a; }\n\
         int foo_old(void) { return 1; }\n",
    ),
    (
        "1.1",
        "struct foo { int a; int b; };\nint foo_get(struct foo *f) { return f->a; }\n\
         int foo_old(void) { return 1; }\nint foo_new(int x) { return x; }\n",
    ),
    (
        "2.0",
        "struct foo { int a; long b; int c; };\nint foo_get(struct foo *f) { return f->a + f->c; }\n",
    ),
];

/// abipkgdiff run here on two builds' RPMs (library and debuginfo): (exit status, report).
fn abipkgdiff_directly(old: &[PathBuf], new: &[PathBuf]) -> (i32, String) {
    let pick = |rpms: &[PathBuf], debug: bool| {
        rpms.iter()
            .find(|p| {
                let name = p.file_name().unwrap().to_str().unwrap();
                name.ends_with(".x86_64.rpm") && name.contains("-debuginfo-") == debug
            })
            .unwrap()
            .clone()
    };
    let output = Command::new("abipkgdiff")
        .args(["--dso-only", "--d1"])
        .arg(pick(old, true))
        .arg("--d2")
        .arg(pick(new, true))
        .arg(pick(old, false))
        .arg(pick(new, false))
        .output()
        .unwrap();
    (
        output.status.code().unwrap(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

/// The "Functions changes summary" line of an abipkgdiff report.
fn functions_summary(report: &str) -> &str {
    report
        .lines()
        .find(|l| l.contains("Functions changes summary"))
        .unwrap_or_else(|| panic!("no summary in:\n{report}"))
        .trim()
}

/// A Koji "build complete" message (the real-shaped openssl one) for `nvr`.
fn koji_complete(nvr: &str) -> taskbot::messages::Event {
    let mut event = fixture_event("koji-build-complete-openssl.json");
    let mut parts = nvr.rsplitn(3, '-');
    for key in ["release", "version", "name"] {
        event.msg[key] = parts.next().unwrap().into();
    }
    event
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abicheck_fails_removed_and_changed_functions_and_not_additions() {
    tools_present();
    let tmp = tempfile::tempdir().unwrap();
    let koji = tmp.path().join("koji");
    let mut builds = Vec::new();
    for (version, code) in LIBFOO {
        let source = tmp.path().join(format!("foo-{version}.c"));
        std::fs::write(&source, code).unwrap();
        let rpms = rpmbuild(
            &tmp.path().join(format!("build-{version}")),
            &library_spec(version),
            &[("foo.c", &source)],
        );
        assert!(rpms
            .iter()
            .any(|p| p.to_str().unwrap().contains("-debuginfo-")));
        publish_build(&koji, &format!("libfoo-{version}-1.fc30"), &rpms);
        builds.push(rpms);
    }
    let data = noarch_build(tmp.path(), "pipewire-0.2.6-1.fc30");
    publish_build(&koji, "pipewire-0.2.6-1.fc30", &data);
    let server = HttpServer::start(&koji);

    // What abipkgdiff itself says: 1.0 → 1.1 adds (ABI change, not incompatible), 1.1 → 2.0
    // removes functions (incompatible) and changes foo_get's struct.
    let (added_status, added) = abipkgdiff_directly(&builds[0], &builds[1]);
    assert_eq!(added_status & 12, 4, "{added}");
    assert!(added.contains("foo_new"), "{added}");
    let (broken_status, broken) = abipkgdiff_directly(&builds[1], &builds[2]);
    assert_eq!(broken_status & 12, 12, "{broken}");
    assert!(
        broken.contains("foo_old") && broken.contains("struct foo"),
        "{broken}"
    );

    let d = deployment(
        &tmp.path().join("staging"),
        &["x86_64"],
        &[("KOJI_PKGS_URL", &server.url)],
    )
    .await;
    for nvr in [
        "libfoo-1.0-1.fc30",
        "libfoo-1.1-1.fc30",
        "libfoo-2.0-1.fc30",
        "pipewire-0.2.6-1.fc30",
    ] {
        send_event(&d, &koji_complete(nvr)).await;
    }

    // Only the x86_64 runner runs here; the aarch64 jobs wait in their queue.
    let note_of = |found: Vec<(String, String, String)>| {
        let (outcome, note, arch) = found.into_iter().next().unwrap();
        assert_eq!(arch, "x86_64");
        (outcome, note)
    };
    let item = "libfoo-2.0-1.fc30";
    let (outcome, note) = note_of(results(&d, "dist.abicheck", item, 1).await);
    assert_eq!(outcome, "FAILED", "{note}");
    assert_eq!(
        note,
        "incompatible ABI changes compared with libfoo-1.1-1.fc30: libfoo.so.1.0: \
         2 functions removed, 1 function changed"
    );
    // The report kept with the job is abipkgdiff's own.
    let report = job_artifact(&d, "dist.abicheck", item, "abipkgdiff.txt").await;
    assert!(report.contains(functions_summary(&broken)), "{report}");
    assert!(report.contains("'function int foo_old()'"), "{report}");

    let (outcome, note) = note_of(results(&d, "dist.abicheck", "libfoo-1.1-1.fc30", 1).await);
    assert_eq!(outcome, "INFO", "{note}");
    assert_eq!(
        note,
        "compatible ABI additions compared with libfoo-1.0-1.fc30: libfoo.so.1.0: 1 function added"
    );
    let report = job_artifact(&d, "dist.abicheck", "libfoo-1.1-1.fc30", "abipkgdiff.txt").await;
    assert!(report.contains(functions_summary(&added)), "{report}");

    let (outcome, note) = note_of(results(&d, "dist.abicheck", "libfoo-1.0-1.fc30", 1).await);
    assert_eq!(
        (outcome.as_str(), note.as_str()),
        (
            "INFO",
            "no previous build of libfoo with x86_64 RPMs to compare with"
        )
    );
    let (outcome, note) = note_of(results(&d, "dist.abicheck", "pipewire-0.2.6-1.fc30", 1).await);
    assert_eq!(
        (outcome.as_str(), note.as_str()),
        ("INFO", "no shared libraries in the x86_64 RPMs")
    );
    d.shutdown().await;
}
