#!/usr/bin/env python3
"""The local Koji and package repositories `make run` points the RPM tasks at.

Fedora's Koji (kojipkgs) and repositories are not reachable from every machine, and a demo
should show real verdicts, not download failures. So for every Koji build that the messages
`make run` feeds make a job for (read from `taskbot rules test --json` on stdin), this script
builds a real RPM of that name, version and release with rpmbuild (source RPM and binary RPMs),
lays them out as Koji does (`packages/<name>/<version>/<release>/<arch>/`), and makes the
release repositories depcheck and upgradepath read (createrepo_c), so every shipped RPM task
has something real to check.

A few builds carry a real defect on purpose, so that the demo shows each task find something
(the table DEFECTS); every other build is clean. What each one is meant to prove is written to
`<dest>/demo.json` (build → the testcase that must fail on it, and why), which
scripts/demo-summary.py reads to say which result proved what.

Usage: demo-koji.py DEST < jobs.json   (jobs.json: `taskbot rules test ... --json`)
Builds again only when this script or the list of builds changed.
"""

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile

# name → (defect, the testcase that must find it, what the demo shows with it).
DEFECTS = {
    "xz": ("world-writable", "dist.rpmlint", "rpmlint finds the world-writable file it ships"),
    "xdg-desktop-portal": (
        "unsatisfiable",
        "dist.depcheck",
        "depcheck finds it requires libfoo >= 2.0, which no repository provides",
    ),
    "openssl": (
        "c-bug",
        "dist.static-analysis",
        "cppcheck finds the out-of-bounds write in its C source",
    ),
}
CLEAN = (None, None, "a clean build")

# Release repositories every depcheck'd build needs: one provider of what the builds require.
BASE_PACKAGE = "demo-base"

C_CLEAN = """#include <stdio.h>
int main(void) { puts("%(name)s demo"); return 0; }
"""
# Writes one past the end of an array: cppcheck reports arrayIndexOutOfBounds (an error).
C_BUG = """#include <stdio.h>
int main(void) {
    int values[4];
    for (int i = 0; i <= 4; i++) values[i] = i;
    printf("%%d\\n", values[0]);
    return 0;
}
"""


def split_nvr(nvr):
    name, version, release = nvr.rsplit("-", 2)
    return name, version, release


def release_of(release):
    """The Fedora release number of a build's dist tag (`2.fc30` → `30`), or None."""
    match = re.search(r"\.fc(\d+)", release)
    return match.group(1) if match else None


def spec(name, version, release, defect):
    is_c = defect in ("c-bug", "c-clean")
    lines = [
        f"Name: {name}",
        f"Version: {version}",
        f"Release: {release}",
        f"Summary: Taskbot demo build of {name}",
        "License: MIT",
        "Group: Applications/System",
        f"URL: https://example.org/{name}",
        f"Source0: https://example.org/{name}/{name}-{version}.tar.gz",
        "AutoReqProv: no",
        f"Requires: {BASE_PACKAGE}",
    ]
    if not is_c:
        lines.append("BuildArch: noarch")
    if defect == "unsatisfiable":
        lines.append("Requires: libfoo >= 2.0")
    lines += ["", "%description", f"A demo build of {name} for make run.", ""]
    lines += ["%prep", "%setup -q", ""]
    lines += ["%build"]
    if is_c:
        lines.append(f"gcc -O2 -o {name}-demo demo.c")
    lines += ["", "%install", "mkdir -p %{buildroot}/usr/share/%{name}"]
    lines.append("install -m 0644 README %{buildroot}/usr/share/%{name}/README")
    files = ["/usr/share/%{name}/README"]
    if is_c:
        lines.append("mkdir -p %{buildroot}/usr/bin")
        lines.append(f"install -m 0755 {name}-demo %{{buildroot}}/usr/bin/{name}-demo")
        files.append(f"/usr/bin/{name}-demo")
    if defect == "world-writable":
        lines.append("install -m 0666 README %{buildroot}/usr/share/%{name}/shared-state")
        files.append("%attr(0666,root,root) /usr/share/%{name}/shared-state")
    lines += ["", "%files"] + files
    lines += ["", "%changelog", f"* Mon Jun 03 2019 Taskbot demo <taskbot@example.org> - {version}-{release}", "- Demo build", ""]
    return "\n".join(lines)


def source_tarball(path, name, version, defect):
    with tempfile.TemporaryDirectory() as tmp:
        top = os.path.join(tmp, f"{name}-{version}")
        os.makedirs(top)
        with open(os.path.join(top, "README"), "w") as f:
            f.write(f"{name} {version}: built by Taskbot's scripts/demo-koji.py\n")
        if defect in ("c-bug", "c-clean"):
            code = C_BUG if defect == "c-bug" else C_CLEAN % {"name": name}
            with open(os.path.join(top, "demo.c"), "w") as f:
                f.write(code)
        with tarfile.open(path, "w:gz") as tar:
            tar.add(top, arcname=f"{name}-{version}")


def rpmbuild(work, nvr, defect):
    """Build `nvr`; returns the paths of its source and binary RPMs."""
    name, version, release = split_nvr(nvr)
    top = os.path.join(work, nvr)
    os.makedirs(os.path.join(top, "SOURCES"), exist_ok=True)
    source_tarball(os.path.join(top, "SOURCES", f"{name}-{version}.tar.gz"), name, version, defect)
    spec_path = os.path.join(top, f"{name}.spec")
    with open(spec_path, "w") as f:
        f.write(spec(name, version, release, defect))
    result = subprocess.run(
        # The packager as Koji sets it (a macro, not in the spec).
        ["rpmbuild", "--define", f"_topdir {top}", "--define", "packager Taskbot demo <taskbot@example.org>",
         "-ba", spec_path],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        sys.exit(f"demo-koji: rpmbuild of {nvr} failed:\n{result.stderr[-2000:]}")
    found = []
    for sub in ("SRPMS", "RPMS"):
        for root, _, names in os.walk(os.path.join(top, sub)):
            found += [os.path.join(root, n) for n in names if n.endswith(".rpm")]
    return found


def publish(dest, nvr, rpms):
    """Put a build's RPMs where Koji would."""
    name, version, release = split_nvr(nvr)
    for rpm in rpms:
        arch = os.path.basename(rpm)[: -len(".rpm")].rsplit(".", 1)[1]
        target = os.path.join(dest, "packages", name, version, release, arch)
        os.makedirs(target, exist_ok=True)
        shutil.copy(rpm, target)


def make_repos(dest, work, releases):
    """`repos/<release>/<arch>/`: the release's repository, holding what the builds require."""
    for release in sorted(releases):
        rpms = rpmbuild(work, f"{BASE_PACKAGE}-1.0-1.fc{release}", None)
        for arch in ("x86_64", "aarch64"):
            repo = os.path.join(dest, "repos", release, arch)
            os.makedirs(repo, exist_ok=True)
            for rpm in rpms:
                if not rpm.endswith(".src.rpm"):
                    shutil.copy(rpm, repo)
            subprocess.run(["createrepo_c", "--quiet", repo], check=True)


def koji_builds(jobs_json):
    builds = set()
    for message in jobs_json["messages"]:
        for job in message.get("jobs", []):
            if job["item_type"] == "koji_build" and split_nvr(job["item"])[0] != "kernel":
                builds.add(job["item"])
    return sorted(builds)


def main():
    dest = sys.argv[1]
    builds = koji_builds(json.load(sys.stdin))
    with open(__file__, "rb") as f:
        stamp = hashlib.sha256(f.read() + "\n".join(builds).encode()).hexdigest()
    stamp_file = os.path.join(dest, ".stamp")
    if os.path.exists(stamp_file) and open(stamp_file).read() == stamp:
        return
    shutil.rmtree(dest, ignore_errors=True)
    os.makedirs(dest)
    demo = {}
    with tempfile.TemporaryDirectory() as work:
        for nvr in builds:
            defect, finds, shows = DEFECTS.get(split_nvr(nvr)[0], CLEAN)
            rpms = rpmbuild(work, nvr, defect)
            publish(dest, nvr, rpms)
            demo[nvr] = {"failed_on_purpose": finds, "why": shows}
        make_repos(dest, work, {r for r in map(lambda b: release_of(split_nvr(b)[2]), builds) if r})
    with open(os.path.join(dest, "demo.json"), "w") as f:
        json.dump(demo, f, indent=2, sort_keys=True)
    with open(stamp_file, "w") as f:
        f.write(stamp)


if __name__ == "__main__":
    main()
