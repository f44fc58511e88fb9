"""Static analysis of the C/C++ sources of the Koji build $TASKBOT_ITEM (see ../README.md):
cppcheck on all of them (testcase dist.static-analysis) and gcc -fanalyzer, taught the CPython
API, on the CPython extension modules among them (dist.static-analysis.python-capi, capi.py).

The rules run this on every completed build: whether there is anything to analyse is decided
here, from the build's source RPM. A build without C or C++ sources gets one INFO result, "no C
sources", and nothing else."""

import collections
import os
import subprocess
import sys
import tarfile
import xml.etree.ElementTree as ET

# common/ in the task's repository (tasks/mkrepos.sh puts it there), or tasks/common/ beside
# this folder when run from Taskbot's source tree.
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.join(HERE, "common"), os.path.join(HERE, "..", "common")]
import capi  # noqa: E402
import tasklib  # noqa: E402

CHECKNAME = "dist.static-analysis"
SOURCE_SUFFIXES = (".c", ".h", ".cc", ".cpp", ".cxx", ".hh", ".hpp")
# Bounds on what is unpacked from a build's (untrusted) archives: only C/C++ files, each at most
# MAX_FILE_BYTES, together at most MAX_TOTAL_BYTES and MAX_FILES. A tree beyond them (the kernel
# has some 60000 C files) would not be analysed within the task's time limit anyway.
MAX_FILE_BYTES = 16 * 1024**2
MAX_TOTAL_BYTES = 1024**3
MAX_FILES = 20000


class TooLarge(Exception):
    """The build's C sources exceed what this task analyses: a fact about the build (INFO)."""


def unpack(srpm, dest):
    """The C/C++ files of the source RPM and of every tar archive in it, under `dest`; returns
    their paths. Archives are opened by Python's tarfile (gzip, bzip2, xz)."""
    os.makedirs(dest, exist_ok=True)
    rpm2cpio = subprocess.Popen(["rpm2cpio", srpm], stdout=subprocess.PIPE)
    subprocess.run(["cpio", "-idm", "--quiet"], stdin=rpm2cpio.stdout, cwd=dest, check=True)
    if rpm2cpio.wait() != 0:
        raise tasklib.TaskError(f"rpm2cpio could not read {os.path.basename(srpm)}")
    sources, budget = [], [MAX_TOTAL_BYTES]
    for name in sorted(os.listdir(dest)):
        path = os.path.join(dest, name)
        if not os.path.isfile(path) or os.path.islink(path):
            continue
        if name.endswith(SOURCE_SUFFIXES):
            sources.append(path)
        elif tarfile.is_tarfile(path):
            sources.extend(extract_sources(path, os.path.join(dest, "unpacked", name), budget))
        if len(sources) > MAX_FILES:
            raise TooLarge(f"more than {MAX_FILES} C/C++ files")
    return sources


def extract_sources(archive, dest, budget):
    """Extract the archive's C/C++ files (safe_members) into `dest`, within `budget` bytes."""
    out = []
    with tarfile.open(archive) as tar:
        for member in tar:
            if not (safe_member(member) and member.name.endswith(SOURCE_SUFFIXES)):
                continue
            if member.size > MAX_FILE_BYTES:
                print(f"skipped {member.name}: larger than {MAX_FILE_BYTES} bytes", flush=True)
                continue
            budget[0] -= member.size
            if budget[0] < 0:
                raise TooLarge(f"more than {MAX_TOTAL_BYTES} bytes of C/C++ files")
            tar.extract(member, dest, set_attrs=False)
            out.append(os.path.join(dest, member.name))
            if len(out) > MAX_FILES:
                raise TooLarge(f"more than {MAX_FILES} C/C++ files")
    return out


def safe_member(member):
    """A regular file whose path stays inside the destination: an archive from a package is not
    trusted to write elsewhere on the runner's host (links and devices are skipped too)."""
    parts = member.name.split("/")
    return member.isfile() and not member.name.startswith("/") and ".." not in parts


def findings(report):
    """(severity, file:line, id, message) of each finding of a cppcheck XML (version 2) report,
    leaving out cppcheck's notes about its own configuration."""
    out = []
    for error in ET.parse(report).getroot().iter("error"):
        if error.get("severity") == "information":
            continue
        location = error.find("location")
        where = (
            f"{location.get('file')}:{location.get('line')}" if location is not None else "?"
        )
        out.append((error.get("severity"), where, error.get("id"), error.get("msg")))
    return out


def cppcheck(nvr, sources, artifacts):
    """The dist.static-analysis result: cppcheck on every C/C++ file."""
    report = os.path.join(artifacts, "cppcheck.xml")
    print(f"running cppcheck on {len(sources)} files", flush=True)
    with open(report, "w", encoding="utf-8") as xml:
        done = subprocess.run(
            ["cppcheck", "--enable=warning,portability,performance", "--inline-suppr",
             "--xml", "--xml-version=2", "--quiet", *sources],
            stderr=xml,
        )
    if done.returncode != 0:
        raise tasklib.TaskError(f"cppcheck failed with exit code {done.returncode}")
    found = findings(report)
    by_severity = collections.Counter(severity for severity, *_ in found)
    with open(os.path.join(artifacts, "cppcheck.txt"), "w", encoding="utf-8") as text:
        for severity, where, check, message in found:
            line = f"{where}: {severity}: {message} [{check}]"
            text.write(line + "\n")
            print(line, flush=True)
    summary = ", ".join(f"{n} {s}" for s, n in sorted(by_severity.items())) or "no findings"
    return {
        "item": nvr,
        "type": "koji_build",
        "checkname": CHECKNAME,
        "outcome": "FAILED" if by_severity["error"] else "PASSED",
        "note": f"cppcheck: {summary} in {len(sources)} files",
        "artifact": "cppcheck.txt",
        "errors": by_severity["error"],
        "warnings": by_severity["warning"],
        "findings": len(found),
    }


def info(nvr, note):
    return {"item": nvr, "type": "koji_build", "checkname": CHECKNAME, "outcome": "INFO",
            "note": note}


def main():
    nvr = tasklib.env("TASKBOT_ITEM")
    artifacts = tasklib.env("TASKBOT_ARTIFACTS")
    [srpm] = tasklib.build_rpms(nvr, "srpm", arches=["src"])
    try:
        sources = unpack(srpm, "sources")
    except TooLarge as e:
        tasklib.write_results([info(nvr, f"not analysed: the sources hold {e}")])
        return
    if not sources:
        unread = unread_archives("sources")
        note = "no C sources" + (f" (archives not read: {', '.join(unread)})" if unread else "")
        tasklib.write_results([info(nvr, note)])
        return
    tasklib.write_results([cppcheck(nvr, sources, artifacts), python_capi(nvr, sources, artifacts)])


def python_capi(nvr, sources, artifacts):
    """The python-capi result; its infrastructure errors crash that testcase only, keeping
    cppcheck's verdict."""
    try:
        return capi.analyse(nvr, sources, artifacts)
    except tasklib.TaskError as e:
        return {"item": nvr, "type": "koji_build", "checkname": capi.CHECKNAME,
                "outcome": "CRASHED", "note": str(e)[:500]}


def unread_archives(dest):
    """Files of the source RPM that look like archives this task cannot open (zstd, lzip, zip,
    7z), so that "no C sources" does not hide them."""
    suffixes = (".zst", ".tzst", ".lz", ".zip", ".7z", ".rar", ".lzma")
    return sorted(n for n in os.listdir(dest) if n.endswith(suffixes))


if __name__ == "__main__":
    tasklib.run(main, CHECKNAME)
