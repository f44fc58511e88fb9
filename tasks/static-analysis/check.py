"""cppcheck on the C sources of the Koji build $TASKBOT_ITEM (see ../README.md)."""

import collections
import glob
import os
import subprocess
import sys
import tarfile
import xml.etree.ElementTree as ET

# common/ in the task's repository (tasks/mkrepos.sh puts it there), or tasks/common/ beside
# this folder when run from Taskbot's source tree.
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(HERE, "common"), os.path.join(HERE, "..", "common")]
import tasklib  # noqa: E402

CHECKNAME = "dist.static-analysis"
SOURCE_SUFFIXES = (".c", ".h", ".cc", ".cpp", ".cxx", ".hh", ".hpp")


def unpack(srpm, dest):
    """The source RPM's files, and every tar archive among them, unpacked under `dest`."""
    os.makedirs(dest, exist_ok=True)
    rpm2cpio = subprocess.Popen(["rpm2cpio", srpm], stdout=subprocess.PIPE)
    subprocess.run(["cpio", "-idm", "--quiet"], stdin=rpm2cpio.stdout, cwd=dest, check=True)
    if rpm2cpio.wait() != 0:
        raise tasklib.TaskError(f"rpm2cpio could not read {os.path.basename(srpm)}")
    for archive in glob.glob(os.path.join(dest, "*")):
        if os.path.isfile(archive) and tarfile.is_tarfile(archive):
            with tarfile.open(archive) as tar:
                tar.extractall(os.path.join(dest, "unpacked"), members=safe_members(tar))


def safe_members(tar):
    """Regular files and directories whose paths stay inside the destination: an archive from a
    package is not trusted to write elsewhere on the runner's host (links are skipped too)."""
    for member in tar.getmembers():
        parts = member.name.split("/")
        if (member.isfile() or member.isdir()) and not member.name.startswith("/") and ".." not in parts:
            yield member


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


def main():
    nvr = tasklib.env("TASKBOT_ITEM")
    artifacts = tasklib.env("TASKBOT_ARTIFACTS")
    [srpm] = tasklib.build_rpms(nvr, "srpm", arches=["src"])
    unpack(srpm, "sources")
    sources = [
        path
        for path in glob.glob("sources/**/*", recursive=True)
        if path.endswith(SOURCE_SUFFIXES) and os.path.isfile(path)
    ]
    report = os.path.join(artifacts, "cppcheck.xml")
    if not sources:
        tasklib.write_results(
            [{"item": nvr, "type": "koji_build", "checkname": CHECKNAME, "outcome": "INFO",
              "note": "no C or C++ sources in the source RPM"}]
        )
        return
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
    tasklib.write_results(
        [
            {
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
        ]
    )


if __name__ == "__main__":
    tasklib.run(main, CHECKNAME)
