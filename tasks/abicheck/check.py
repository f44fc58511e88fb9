"""abicheck of the Koji build $TASKBOT_ITEM on $TASKBOT_ARCH (see ../README.md).

Compares the ABI of the shared libraries of the build's RPMs of the job's arch with the same
subpackages of the previous build of the package, with libabigail's abipkgdiff and the builds'
debuginfo packages where Koji has them.
"""

import functools
import os
import re
import stat
import subprocess
import sys
import urllib.parse

import rpm

# common/ in the task's repository (tasks/mkrepos.sh puts it there), or tasks/common/ beside
# this folder when run from Taskbot's source tree.
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(HERE, "common"), os.path.join(HERE, "..", "common")]
import tasklib  # noqa: E402

CHECKNAME = "dist.abicheck"
REPORT = "abipkgdiff.txt"
EVR_ORDER = functools.cmp_to_key(rpm.labelCompare)
# abipkgdiff's exit status is a bit field (abidiff(1), RETURN VALUES).
ABIDIFF_ERROR, ABIDIFF_ABI_CHANGE, ABIDIFF_ABI_INCOMPATIBLE_CHANGE = 1, 4, 8
SHARED_LIBRARY = re.compile(r"\.so(\.[0-9]+)*$")
# How many lower builds are tried for one with RPMs of the job's arch.
MAX_CANDIDATES = 10
# "Functions changes summary: 1 Removed, 2 Changed (1 filtered out), 0 Added functions", and the
# same for variables and for symbols not described by debug info (no Changed count).
SUMMARY = re.compile(
    r"^\s*(Function|Variable)( symbol)?s changes summary: (\d+) Removed(?: \([^)]*\))?,"
    r"(?: (\d+) Changed(?: \([^)]*\))?,)? (\d+) Added"
)
SECTION = re.compile(r"^=+ changes of '([^']+)'=+$")


def subpackage_name(file_name):
    """`libfoo-devel-1.0-1.fc30.x86_64.rpm` → `libfoo-devel`."""
    return file_name[: -len(".rpm")].rsplit(".", 1)[0].rsplit("-", 2)[0]


def is_debug(name):
    return name.endswith(("-debuginfo", "-debugsource"))


def has_shared_library(path):
    """Whether the RPM holds a regular file named like a shared library (libfoo.so.1.2)."""
    ts = rpm.TransactionSet()
    ts.setVSFlags(rpm._RPMVSF_NOSIGNATURES | rpm._RPMVSF_NODIGESTS)
    with open(path, "rb") as f:
        hdr = ts.hdrFromFdno(f.fileno())
    return any(
        stat.S_ISREG(mode) and SHARED_LIBRARY.search(name)
        for name, mode in zip(hdr[rpm.RPMTAG_FILENAMES], hdr[rpm.RPMTAG_FILEMODES])
    )


def subdirs(url):
    return [entry.rstrip("/") for entry in tasklib.listing(url) if entry.endswith("/")]


def previous_build(name, version, release, arch):
    """The build of `name` with the highest EVR lower than version-release that has RPMs of
    `arch`, from Koji's packages/<name>/ listing (which has no epochs: compared without)."""
    base = f"{tasklib.koji_url()}/packages/{urllib.parse.quote(name)}/"
    current = ("0", version, release)
    versions = [v for v in subdirs(base) if rpm.labelCompare(("0", v, ""), ("0", version, "")) <= 0]
    tried = 0
    for v in sorted(versions, key=lambda v: EVR_ORDER(("0", v, "")), reverse=True):
        releases = [r for r in subdirs(base + urllib.parse.quote(v) + "/")
                    if rpm.labelCompare(("0", v, r), current) < 0]
        for r in sorted(releases, key=lambda r: EVR_ORDER(("0", v, r)), reverse=True):
            candidate = f"{name}-{v}-{r}"
            if subdirs_has_arch(candidate, arch):
                return candidate
            tried += 1
            if tried >= MAX_CANDIDATES:
                return None
    return None


def subdirs_has_arch(nvr, arch):
    return arch in subdirs(tasklib.build_url(nvr))


def by_subpackage(files):
    """{subpackage name: (file name, URL)} of build_files() entries."""
    return {subpackage_name(name): (name, url) for _, name, url in files}


def fetch(entry, dest_dir):
    name, url = entry
    os.makedirs(dest_dir, exist_ok=True)
    return tasklib.download(url, os.path.join(dest_dir, name))


def debuginfo(packages, subpackage, source_name, dest_dir):
    """The debuginfo RPMs of `subpackage` (its own, and the source package's, which holds the
    shared DWZ file), downloaded; those Koji does not have are left out."""
    names = dict.fromkeys([f"{subpackage}-debuginfo", f"{source_name}-debuginfo"])
    return [fetch(packages[n], dest_dir) for n in names if n in packages]


def abipkgdiff(old, new, old_debug, new_debug):
    """Run abipkgdiff on two RPMs; returns (exit status, report)."""
    command = ["abipkgdiff", "--dso-only", "--no-parallel"]
    for path in old_debug:
        command += ["--d1", path]
    for path in new_debug:
        command += ["--d2", path]
    command += [old, new]
    print("running", " ".join(command), flush=True)
    done = subprocess.run(command, capture_output=True, text=True, errors="replace")
    if done.returncode & ABIDIFF_ERROR:
        tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-5:])
        raise tasklib.TaskError(f"abipkgdiff failed (exit status {done.returncode}): {tail}")
    report = f"### {' '.join(command)}\n### exit status {done.returncode}\n{done.stdout}{done.stderr}\n"
    return done.returncode, report


def plural(n, word):
    return f"{n} {word}{'' if n == 1 else 's'}"


def sections(report):
    """[(binary, [lines])] of the "changes of '<binary>'" sections of an abipkgdiff report."""
    found = []
    for line in report.splitlines():
        section = SECTION.match(line.strip())
        if section:
            found.append((section.group(1), []))
        elif found:
            found[-1][1].append(line)
    return found


def summarise(report):
    """([breaking changes], [additions]) per binary of an abipkgdiff report, e.g.
    "libfoo.so.1: 1 function removed, 1 function changed"."""
    breaking, additions = [], []
    for binary, lines in sections(report):
        bad, added = [], []
        for line in lines:
            found = SUMMARY.match(line)
            if not found:
                continue
            kind = found.group(1).lower() + (" symbol" if found.group(2) else "")
            removed, changed, new = (int(found.group(n) or 0) for n in (3, 4, 5))
            bad += [f"{plural(n, kind)} {what}" for n, what in ((removed, "removed"), (changed, "changed")) if n]
            added += [f"{plural(new, kind)} added"] if new else []
        if bad:
            breaking.append(f"{binary}: " + ", ".join(bad))
        if added:
            additions.append(f"{binary}: " + ", ".join(added))
    return breaking, additions


def verdict(status, breaking, additions, previous):
    """The outcome and note of the comparison with `previous`."""
    where = f"compared with {previous}"
    if breaking or status & ABIDIFF_ABI_INCOMPATIBLE_CHANGE:
        return "FAILED", f"incompatible ABI changes {where}: " + ("; ".join(breaking) or f"see {REPORT}")
    if additions:
        return "INFO", f"compatible ABI additions {where}: " + "; ".join(additions)
    if status & ABIDIFF_ABI_CHANGE:
        return "NEEDS_INSPECTION", f"ABI changes abipkgdiff does not classify {where}: see {REPORT}"
    return "PASSED", f"no ABI change {where}"


def compare(nvr, previous, arch, libraries, current):
    """Compare each subpackage with shared libraries with its namesake in `previous`; returns
    (outcome, note, subpackages compared)."""
    source_name = tasklib.split_nvr(nvr)[0]
    before = by_subpackage(tasklib.build_files(previous, [arch]))
    status, report, compared = 0, "", []
    for subpackage, path in libraries.items():
        if subpackage not in before:
            print(f"{subpackage}: not in {previous}, nothing to compare", flush=True)
            continue
        old = fetch(before[subpackage], "old")
        code, text = abipkgdiff(
            old, path,
            debuginfo(before, subpackage, source_name, "old-debug"),
            debuginfo(current, subpackage, source_name, "new-debug"),
        )
        status |= code
        report += text
        compared.append(subpackage)
    with open(os.path.join(tasklib.env("TASKBOT_ARTIFACTS"), REPORT), "w", encoding="utf-8") as out:
        out.write(report or f"no subpackage of {nvr} with shared libraries is in {previous}\n")
    if not compared:
        return "INFO", f"no subpackage with shared libraries is also in {previous}", compared
    outcome, note = verdict(status, *summarise(report), previous)
    return outcome, note, compared


def main():
    nvr = tasklib.env("TASKBOT_ITEM")
    arch = tasklib.env("TASKBOT_ARCH")
    name, version, release = tasklib.split_nvr(nvr)
    current = by_subpackage(tasklib.build_files(nvr, [arch]))
    libraries = {}
    for subpackage in sorted(n for n in current if not is_debug(n)):
        path = fetch(current[subpackage], "new")
        if has_shared_library(path):
            libraries[subpackage] = path
    previous = os.environ.get("TASKBOT_ARG_PREVIOUS") or None
    compared = []
    if not libraries:
        outcome, note = "INFO", f"no shared libraries in the {arch} RPMs"
    elif previous is None and not (previous := previous_build(name, version, release, arch)):
        outcome, note = "INFO", f"no previous build of {name} with {arch} RPMs to compare with"
    else:
        outcome, note, compared = compare(nvr, previous, arch, libraries, current)
    print(f"{outcome}: {note}", flush=True)
    tasklib.write_results(
        [
            {
                "item": nvr,
                "type": "koji_build",
                "checkname": CHECKNAME,
                "outcome": outcome,
                "note": note[:1000],
                "arch": arch,
                "artifact": REPORT if compared else None,
                "previous_build": previous,
                "compared": " ".join(compared) or None,
            }
        ]
    )


if __name__ == "__main__":
    tasklib.run(main, CHECKNAME)
