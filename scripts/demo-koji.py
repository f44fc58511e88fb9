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
(the table BUILDS); every other build is clean. What each one is meant to prove is written to
`<dest>/demo.json` (build → the testcase that must fail on it, and why), which
scripts/demo-summary.py reads to say which result proved what.

Usage: demo-koji.py DEST ARCH=TINY_IMAGE_DIR... < jobs.json
(jobs.json: `taskbot rules test ... --json`; e.g. x86_64=.run/vm/tiny aarch64=.run/vm/tiny-aarch64)

The kernel build is the tiny test guests' kernel (from scripts/build-tiny-vm-image.sh, one
RPM per arch), so kernel-tests boots a kernel that runs with their userspace; run-local.sh
feeds a Koji message for that build instead of the fixture's kernel.
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

# name → (what the build is, {testcase that must fail on it: what it must find}).
# The kinds: "noarch" (a clean noarch package), "base" (what the release repositories provide), "world-writable", "unsatisfiable" (noarch with a
# defect each), "library" (a shared library in C, built for x86_64 and, with the cross
# compiler, aarch64), "library-bug" (the same with an out-of-bounds write).
BUILDS = {
    "xz": ("world-writable", {"dist.rpmlint": "rpmlint finds the world-writable file it ships"}),
    "xdg-desktop-portal": (
        "unsatisfiable",
        {"dist.depcheck": "depcheck finds it requires libfoo >= 2.0, which no repository provides"},
    ),
    "openssl": (
        "library-bug",
        {
            "dist.static-analysis": "cppcheck finds the out-of-bounds write in its C source",
            "dist.abicheck": "abicheck finds that demo_legacy_digest, which the previous build "
            "exported, was removed",
        },
    ),
    "pipewire": ("library", {}),
}
CLEAN = ("noarch", {})
# Builds Koji has besides the ones the jobs name: a previous build to compare ABIs with, and the
# same packages in the neighbouring releases for upgradepath (lower in 29, higher in 31).
# name → [(version, release, functions its library exports)]
OTHER_BUILDS = {
    "openssl": [("1.1.1c", "1.fc30", ["demo_init", "demo_version", "demo_legacy_digest"])],
    "pipewire": [
        ("0.2.5", "1.fc30", ["demo_init", "demo_version"]),
        ("0.2.5", "1.fc29", ["demo_init", "demo_version"]),
        ("0.2.7", "1.fc31", ["demo_init", "demo_version"]),
    ],
}
API = ["demo_init", "demo_version"]
ARCHES = ("x86_64", "aarch64")
CROSS_CC = {"x86_64": "gcc", "aarch64": "aarch64-linux-gnu-gcc"}

# Release repositories every depcheck'd build needs: one provider of what the builds require.
BASE_PACKAGE = "demo-base"

# The library's functions, each returning a number, and a program that calls the first.
def library_source(name, functions, bug):
    body = [f"int {f}(void) {{ return {n}; }}" for n, f in enumerate(functions)]
    if bug:
        # Writes one past the end of an array: cppcheck reports arrayIndexOutOfBounds (an error).
        body.append("int demo_sum(void) { int v[4]; int s = 0; for (int i = 0; i <= 4; i++) v[i] = i;"
                    " for (int i = 0; i < 4; i++) s += v[i]; return s; }")
    return "\n".join(body) + "\n"


def split_nvr(nvr):
    name, version, release = nvr.rsplit("-", 2)
    return name, version, release


def release_of(release):
    """The Fedora release number of a build's dist tag (`2.fc30` → `30`), or None."""
    match = re.search(r"\.fc(\d+)", release)
    return match.group(1) if match else None


def spec(name, version, release, kind):
    library = kind.startswith("library")
    lines = [
        f"Name: {name}",
        f"Version: {version}",
        f"Release: {release}",
        f"Summary: Taskbot demo build of {name}",
        "License: MIT",
        "Group: Applications/System",
        f"URL: https://example.org/{name}",
        f"Source0: https://example.org/{name}/{name}-{version}.tar.gz",
        # The library's soname is provided, as rpm's automatic provides would (abipkgdiff
        # skips libraries no package provides, as private); nothing else is generated.
        "AutoReq: no",
        "AutoProv: yes" if library else "AutoProv: no",
    ]
    if kind != "base":
        lines.append(f"Requires: {BASE_PACKAGE}")
    if not library:
        lines.append("BuildArch: noarch")
    if kind == "unsatisfiable":
        lines.append("Requires: libfoo >= 2.0")
    lines += ["", "%description", f"A demo build of {name} for make run.", ""]
    lines += ["%prep", "%setup -q", "", "%build"]
    if library:
        # %{demo_cc}: the compiler for the target arch (rpmbuild --define).
        lines.append(f"%{{demo_cc}} -g -O2 -fPIC -shared -Wl,-soname,lib{name}-demo.so.1 "
                     f"-Wl,--hash-style=both -o lib{name}-demo.so.1 lib.c -Wl,--no-as-needed -lc")
    lines += ["", "%install"]
    if library:
        lines.append("mkdir -p %{buildroot}/usr/lib64")
        lines.append(f"install -m 0755 lib{name}-demo.so.1 %{{buildroot}}/usr/lib64/")
        files = [f"%attr(0755,root,root) /usr/lib64/lib{name}-demo.so.1"]
    else:
        lines.append("mkdir -p %{buildroot}/usr/share/%{name}")
        lines.append("install -m 0644 README %{buildroot}/usr/share/%{name}/README")
        files = ["/usr/share/%{name}/README"]
    if kind == "base":
        # What the libraries' scriptlets run (glibc's, in Fedora).
        lines.append("mkdir -p %{buildroot}/sbin")
        lines.append("printf '#!/bin/sh\\n' > %{buildroot}/sbin/ldconfig")
        files.append("%attr(0755,root,root) /sbin/ldconfig")
    if kind == "world-writable":
        lines.append("install -m 0666 README %{buildroot}/usr/share/%{name}/shared-state")
        files.append("%attr(0666,root,root) /usr/share/%{name}/shared-state")
    if library:
        lines += ["", "%post -p /sbin/ldconfig", "", "%postun -p /sbin/ldconfig"]
    lines += ["", "%files"] + files
    lines += ["", "%changelog",
              f"* Mon Jun 03 2019 Taskbot demo <taskbot@example.org> - {version}-{release}",
              "- Demo build", ""]
    return "\n".join(lines)


def source_tarball(path, name, version, kind, functions):
    with tempfile.TemporaryDirectory() as tmp:
        top = os.path.join(tmp, f"{name}-{version}")
        os.makedirs(top)
        with open(os.path.join(top, "README"), "w") as f:
            f.write(f"{name} {version}: built by Taskbot's scripts/demo-koji.py\n")
        if kind.startswith("library"):
            with open(os.path.join(top, "lib.c"), "w") as f:
                f.write(library_source(name, functions, kind == "library-bug"))
        with tarfile.open(path, "w:gz") as tar:
            tar.add(top, arcname=f"{name}-{version}")


def run_rpmbuild(top, spec_path, defines, options):
    args = ["rpmbuild", "--define", f"_topdir {top}",
            # The packager as Koji sets it (a macro, not in the spec).
            "--define", "packager Taskbot demo <taskbot@example.org>"]
    for define in defines:
        args += ["--define", define]
    result = subprocess.run(args + options + [spec_path], capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"demo-koji: {' '.join(args + options)} failed:\n{result.stderr[-2000:]}")


def rpmbuild(work, nvr, kind, functions=API):
    """Build `nvr` (for each of the arches when it is a library); returns its RPMs' paths."""
    name, version, release = split_nvr(nvr)
    top = os.path.join(work, nvr)
    os.makedirs(os.path.join(top, "SOURCES"), exist_ok=True)
    tarball = os.path.join(top, "SOURCES", f"{name}-{version}.tar.gz")
    source_tarball(tarball, name, version, kind, functions)
    spec_path = os.path.join(top, f"{name}.spec")
    with open(spec_path, "w") as f:
        f.write(spec(name, version, release, kind))
    if kind.startswith("library"):
        run_rpmbuild(top, spec_path, ["demo_cc gcc"], ["-ba"])
        # aarch64 with the cross compiler and binutils; no debuginfo (find-debuginfo would
        # read the foreign binaries with the host's tools).
        cross = ["demo_cc aarch64-linux-gnu-gcc", "__strip aarch64-linux-gnu-strip",
                 "__objdump aarch64-linux-gnu-objdump", "debug_package %{nil}"]
        run_rpmbuild(top, spec_path, cross, ["--target", "aarch64", "-bb"])
    else:
        run_rpmbuild(top, spec_path, [], ["-ba"])
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


def kernel_tree(image, root):
    """The tiny guest's Debian kernel (`image`: scripts/build-tiny-vm-image.sh's DEST) laid out
    as Fedora's kernel-core lays it out: `lib/modules/<uname>/vmlinuz` beside the modules. Only
    the modules the guest loads, plus `dummy` and `loop` for kernel-tests' checks, with what
    they depend on (all of them would make every VM's initramfs hundreds of MB). Returns uname."""
    extracted = os.path.join(root, "deb")
    os.makedirs(extracted)
    subprocess.run(["dpkg-deb", "-x", os.path.join(image, "kernel.deb"), extracted], check=True)
    uname = os.listdir(os.path.join(extracted, "lib/modules"))[0]
    # Debian's package ships no modules.dep (made at installation).
    subprocess.run(["depmod", "-b", extracted, uname], check=True)
    source = os.path.join(extracted, "lib/modules", uname)
    target = os.path.join(root, "tree/lib/modules", uname)
    os.makedirs(target)
    shutil.copy(os.path.join(extracted, "boot", f"vmlinuz-{uname}"), os.path.join(target, "vmlinuz"))
    for listing in ("modules.builtin", "modules.order", "modules.builtin.modinfo"):
        shutil.copy(os.path.join(source, listing), target)
    order = subprocess.run(f"zcat '{image}/initrd.img' | cpio -i --quiet --to-stdout lib/modules/order",
                           shell=True, check=True, capture_output=True, text=True).stdout
    wanted_names = {m.removesuffix(".ko") for m in order.split()} | {"dummy", "loop"}
    with open(os.path.join(source, "modules.dep")) as f:
        for line in f:
            module, _, needs = line.partition(":")
            if os.path.basename(module).removesuffix(".ko") in wanted_names:
                for path in [module] + needs.split():
                    os.makedirs(os.path.dirname(os.path.join(target, path)), exist_ok=True)
                    shutil.copy(os.path.join(source, path), os.path.join(target, path))
    return uname


def kernel_spec(version, release, uname, tree):
    return "\n".join([
        "%global debug_package %{nil}", "%global __os_install_post %{nil}",
        "%global _build_id_links none",
        "Name: kernel", f"Version: {version}", f"Release: {release}",
        "Summary: The Linux kernel", "License: GPL-2.0-only", "AutoReqProv: no",
        "Source0: kernel.tar.gz", "%description", "Debian's kernel as a Fedora-style build.",
        "%package core", "Summary: The Linux kernel", "%description core",
        "The kernel and its core modules.",
        "%install", "mkdir -p %{buildroot}/lib",
        f"cp -a {tree}/lib/modules %{{buildroot}}/lib/",
        "%files core", f"/lib/modules/{uname}", ""])


def kernel_build(work, images):
    """kernel-<V>-<R> of the tiny guests' kernels (`images`: arch → the guest's directory):
    kernel-core's RPM of each arch (the source RPM with the first), named so that `uname -r`
    (`6.1.0-57-amd64`, `6.1.0-57-arm64`) is the build's version-release and a flavour, as
    kernel-tests checks. Returns (nvr, rpms)."""
    nvrs, rpms = set(), []
    for n, (arch, image) in enumerate(sorted(images.items(), key=lambda i: i[0] != "x86_64")):
        top = os.path.join(work, f"kernel-{arch}")
        uname = kernel_tree(image, top)
        version, release = uname.split("-")[:2]
        nvrs.add(f"kernel-{version}-{release}")
        os.makedirs(os.path.join(top, "SOURCES"))
        with tarfile.open(os.path.join(top, "SOURCES", "kernel.tar.gz"), "w:gz") as tar:
            readme = os.path.join(top, "README")
            with open(readme, "w") as f:
                f.write("Debian's kernel, repackaged by Taskbot's scripts/demo-koji.py\n")
            tar.add(readme, arcname="kernel/README")
        spec_path = os.path.join(top, "kernel.spec")
        with open(spec_path, "w") as f:
            f.write(kernel_spec(version, release, uname, os.path.join(top, "tree")))
        run_rpmbuild(top, spec_path, [], ["--target", arch, "-ba" if n == 0 else "-bb"])
        rpms += [os.path.join(root, name) for sub in ("SRPMS", "RPMS")
                 for root, _, names in os.walk(os.path.join(top, sub)) for name in names]
    if len(nvrs) != 1:
        sys.exit(f"demo-koji: the tiny guests' kernels are different builds: {sorted(nvrs)}")
    return nvrs.pop(), rpms


def make_repos(dest, work, repos):
    """`repos/<release>/<arch>/`: each release's repository, holding the provider of what the
    builds require and the other releases' builds of OTHER_BUILDS (`repos` lists their RPMs by
    release)."""
    for release in sorted(repos):
        base = rpmbuild(work, f"{BASE_PACKAGE}-1.0-1.fc{release}", "base")
        for arch in ARCHES:
            repo = os.path.join(dest, "repos", release, arch)
            os.makedirs(repo, exist_ok=True)
            for rpm in base + repos[release]:
                if rpm.endswith((f".{arch}.rpm", ".noarch.rpm")):
                    shutil.copy(rpm, repo)
            subprocess.run(["createrepo_c", "--quiet", repo], check=True)


def koji_builds(jobs_json):
    builds = set()
    for message in jobs_json["messages"]:
        for job in message.get("jobs", []):
            if job["item_type"] == "koji_build" and split_nvr(job["item"])[0] != "kernel":
                builds.add(job["item"])
    return sorted(builds)


def build_all(dest, work, builds):
    """Every build into Koji's layout and the release repositories; returns demo.json's map."""
    demo, repos = {}, {}
    for nvr in builds:
        name, _, release = split_nvr(nvr)
        kind, fails = BUILDS.get(name, CLEAN)
        rpms = rpmbuild(work, nvr, kind)
        publish(dest, nvr, rpms)
        if release_of(release):
            repos.setdefault(release_of(release), [])
        demo[nvr] = {"failed_on_purpose": fails}
        for version, other_release, functions in OTHER_BUILDS.get(name, []):
            other = f"{name}-{version}-{other_release}"
            other_rpms = rpmbuild(work, other, kind.replace("-bug", ""), functions)
            publish(dest, other, other_rpms)
            repos.setdefault(release_of(other_release), []).extend(
                r for r in other_rpms if not r.endswith(".src.rpm"))
    make_repos(dest, work, repos)
    return demo


def main():
    dest = sys.argv[1]
    images = dict(arg.split("=", 1) for arg in sys.argv[2:])
    builds = koji_builds(json.load(sys.stdin))
    with open(__file__, "rb") as f:
        script = f.read()
    kernel_package = b"".join(open(os.path.join(d, "kernel"), "rb").read() for d in images.values())
    stamp = hashlib.sha256(script + kernel_package + "\n".join(builds).encode()).hexdigest()
    stamp_file = os.path.join(dest, ".stamp")
    if os.path.exists(stamp_file) and open(stamp_file).read() == stamp:
        return
    shutil.rmtree(dest, ignore_errors=True)
    os.makedirs(dest)
    with tempfile.TemporaryDirectory() as work:
        demo = build_all(dest, work, builds)
        nvr, rpms = kernel_build(work, images)
        publish(dest, nvr, rpms)
        demo[nvr] = {"failed_on_purpose": {}}
    with open(os.path.join(dest, "demo.json"), "w") as f:
        json.dump(demo, f, indent=2, sort_keys=True)
    with open(stamp_file, "w") as f:
        f.write(stamp)


if __name__ == "__main__":
    main()
