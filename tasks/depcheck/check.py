"""depcheck of the Koji build $TASKBOT_ITEM on $TASKBOT_ARCH (see ../README.md)."""

import os
import re
import sys

import rpm

# common/ in the task's repository (tasks/mkrepos.sh puts it there), or tasks/common/ beside
# this folder when run from Taskbot's source tree.
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(HERE, "common"), os.path.join(HERE, "..", "common")]
import tasklib  # noqa: E402

CHECKNAME = "dist.depcheck"
# The release's repositories: the `repo_urls` job argument, else DEPCHECK_REPO_URLS on the
# runner, else Fedora's own; space-separated, with {release} and {arch}.
DEFAULT_REPO_URLS = (
    "https://dl.fedoraproject.org/pub/fedora/linux/releases/{release}/Everything/{arch}/os/ "
    "https://dl.fedoraproject.org/pub/fedora/linux/updates/{release}/Everything/{arch}/"
)
COMMON = tasklib.COMMON_NS
RPM_NS = tasklib.RPM_NS
FLAGS = {"EQ": rpm.RPMSENSE_EQUAL, "LT": rpm.RPMSENSE_LESS, "GT": rpm.RPMSENSE_GREATER,
         "LE": rpm.RPMSENSE_LESS | rpm.RPMSENSE_EQUAL, "GE": rpm.RPMSENSE_GREATER | rpm.RPMSENSE_EQUAL}
SENSE = rpm.RPMSENSE_LESS | rpm.RPMSENSE_GREATER | rpm.RPMSENSE_EQUAL


def evr_tuple(evr):
    """"1:2.0-3" → ("1", "2.0", "3"); a missing epoch is 0, a missing release empty."""
    epoch, _, rest = evr.rpartition(":")
    version, _, release = rest.partition("-")
    return (epoch or "0", version, release)


class Provides:
    """Capability name → [(sense flags, evr or None)], and file paths."""

    def __init__(self):
        self.names = {}
        self.files = set()

    def add(self, name, flags, evr):
        self.names.setdefault(name, []).append((flags & SENSE, evr or None))

    def satisfies(self, name, flags, evr):
        if name.startswith("/") and name in self.files:
            return True
        for provided_flags, provided_evr in self.names.get(name, []):
            if not evr or not flags & SENSE or not provided_evr:
                return True  # an unversioned requirement or provide matches any version
            # A versioned provide is a single version (EQ) in practice. As rpm does, a
            # requirement without a release (`foo = 1.0`) matches every release of that version.
            wanted, provided = evr_tuple(evr), evr_tuple(provided_evr)
            if not wanted[2]:
                provided = (provided[0], provided[1], "")
            c = rpm.labelCompare(provided, wanted)
            if (c < 0 and flags & rpm.RPMSENSE_LESS) or (c > 0 and flags & rpm.RPMSENSE_GREATER) or (
                c == 0 and flags & rpm.RPMSENSE_EQUAL
            ):
                return True
        return False


def read_headers(paths):
    ts = rpm.TransactionSet()
    ts.setVSFlags(rpm._RPMVSF_NOSIGNATURES | rpm._RPMVSF_NODIGESTS)  # verifying is not our job
    headers = []
    for path in paths:
        with open(path, "rb") as f:
            headers.append(ts.hdrFromFdno(f.fileno()))
    return headers


def add_repo(provides, base):
    """Add what a repository's packages provide (and their files) from its repodata."""
    for package in tasklib.repo_packages(base, "repodata"):
        fmt = package.find(COMMON + "format")
        for entry in fmt.iterfind(f"{RPM_NS}provides/{RPM_NS}entry"):
            evr = None
            if entry.get("ver") is not None:
                evr = f"{entry.get('epoch') or '0'}:{entry.get('ver')}-{entry.get('rel') or ''}"
            provides.add(entry.get("name"), FLAGS.get(entry.get("flags"), 0), evr)
        provides.files.update(f.text for f in fmt.iterfind(COMMON + "file"))


def main():
    nvr = tasklib.env("TASKBOT_ITEM")
    arch = tasklib.env("TASKBOT_ARCH")
    _, _, release_field = tasklib.split_nvr(nvr)
    dist = re.search(r"\.fc(\d+)", release_field)
    if not dist:
        raise tasklib.TaskError(f"cannot tell the Fedora release of {nvr} (no .fcNN dist tag)")
    release = dist.group(1)
    templates = (
        os.environ.get("TASKBOT_ARG_REPO_URLS") or os.environ.get("DEPCHECK_REPO_URLS") or DEFAULT_REPO_URLS
    ).split()
    rpms = tasklib.build_rpms(nvr, "rpms", arches=[arch, "noarch"])
    headers = read_headers(rpms)

    provides = Provides()
    for hdr in headers:
        for dep in rpm.ds(hdr, "providename"):
            provides.add(dep.N(), dep.Flags(), dep.EVR())
        provides.files.update(hdr[rpm.RPMTAG_FILENAMES])
    repos = [t.format(release=release, arch=arch).rstrip("/") + "/" for t in templates]
    for base in repos:
        add_repo(provides, base)

    checked, missing = 0, []
    for hdr in headers:
        for dep in rpm.ds(hdr, "requirename"):
            if dep.N().startswith("rpmlib("):
                continue  # provided by rpm itself
            checked += 1
            if not provides.satisfies(dep.N(), dep.Flags(), dep.EVR()):
                missing.append(f"{hdr[rpm.RPMTAG_NAME]} requires {dep.DNEVR()[2:]}")
    for line in missing:
        print(f"unsatisfied: {line}", flush=True)
    note = (
        f"{len(missing)} of {checked} requirements unsatisfied: " + "; ".join(missing)
        if missing
        else f"all {checked} requirements of {len(rpms)} RPMs satisfied"
    )
    tasklib.write_results(
        [
            {
                "item": nvr,
                "type": "koji_build",
                "checkname": CHECKNAME,
                "outcome": "FAILED" if missing else "PASSED",
                "note": note[:1000],
                "arch": arch,
                "requirements": checked,
                "unsatisfied": len(missing),
                "repositories": " ".join(repos),
            }
        ]
    )


if __name__ == "__main__":
    tasklib.run(main, CHECKNAME)
