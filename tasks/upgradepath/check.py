"""upgradepath of the Bodhi update $TASKBOT_ITEM (see ../README.md).

For every build of the update, the same package (by source package name) in every other active
release must keep the upgrade path: no older release, in any of its repositories (the release,
its updates, its updates-testing), carries a higher EVR than the build, and the build is not
higher than what a newer release carries. Compared as rpm compares (rpm.labelCompare).
"""

import functools
import os
import sys

import rpm

# common/ in the task's repository (tasks/mkrepos.sh puts it there), or tasks/common/ beside
# this folder when run from Taskbot's source tree.
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(HERE, "common"), os.path.join(HERE, "..", "common")]
import tasklib  # noqa: E402

CHECKNAME = "dist.upgradepath"
# Each release's repositories: `label=URL template` (with {release} and {arch}),
# space-separated; the `repo_urls` job argument, else UPGRADEPATH_REPO_URLS on the runner, else
# Fedora's own.
DEFAULT_REPO_URLS = (
    "release=https://dl.fedoraproject.org/pub/fedora/linux/releases/{release}/Everything/{arch}/os/ "
    "updates=https://dl.fedoraproject.org/pub/fedora/linux/updates/{release}/Everything/{arch}/ "
    "updates-testing=https://dl.fedoraproject.org/pub/fedora/linux/updates/testing/{release}/Everything/{arch}/"
)
# Whose repositories are read: every arch carries the same source packages, so one primary arch.
DEFAULT_ARCH = "x86_64"
# Sorts (epoch, version, release) tuples as rpm orders them.
EVR_ORDER = functools.cmp_to_key(rpm.labelCompare)


def setting(arg, variable, default):
    """A job argument (TASKBOT_ARG_<arg>), else the runner's variable, else the default."""
    return os.environ.get(f"TASKBOT_ARG_{arg}") or os.environ.get(variable) or default


def repo_templates():
    """[(label, template)] from the `label=URL` list (a bare URL is labelled by its position)."""
    templates = []
    for n, entry in enumerate(setting("REPO_URLS", "UPGRADEPATH_REPO_URLS", DEFAULT_REPO_URLS).split()):
        label, sep, url = entry.partition("=")
        templates.append((label, url) if sep and "://" not in label else (f"repo{n + 1}", entry))
    return templates


def releases(release):
    """The active releases, ascending: the `releases` argument, else UPGRADEPATH_RELEASES, else
    the update's release and its neighbours (a neighbour without repositories is skipped)."""
    n = int(release)
    text = setting("RELEASES", "UPGRADEPATH_RELEASES", f"{n - 1} {n} {n + 1}")
    try:
        found = sorted({int(r) for r in text.split()} | {n})
    except ValueError:
        raise tasklib.TaskError(f"releases must be numbers: {text!r}") from None
    return found


def evr_text(evr):
    epoch, version, release = evr
    return f"{epoch}:{version}-{release}" if epoch not in ("", "0") else f"{version}-{release}"


def source_evrs(base, names):
    """{source package name: highest (epoch, version, release)} for the source packages in
    `names`, from the binary packages of the repository at `base` (their sourcerpm field), or
    None when the repository does not exist (404)."""
    best = {}
    try:
        for package in tasklib.repo_packages(base, "repodata"):
            sourcerpm = package.findtext(f"{tasklib.COMMON_NS}format/{tasklib.RPM_NS}sourcerpm") or ""
            if not sourcerpm.endswith(".src.rpm"):
                continue
            try:
                name, version, release = tasklib.split_nvr(sourcerpm[: -len(".src.rpm")])
            except tasklib.TaskError:
                continue  # a malformed entry in untrusted metadata: not one of ours
            if name not in names:
                continue
            epoch = package.find(tasklib.COMMON_NS + "version").get("epoch") or "0"
            evr = (epoch, version, release)
            if name not in best or rpm.labelCompare(evr, best[name]) > 0:
                best[name] = evr
    except tasklib.NotFound as e:
        print(f"skipped: {e}", flush=True)
        return None
    return best


def read_releases(release_list, names, arch):
    """{release: [(label, {name: evr})]} for every repository of every release that exists."""
    found = {}
    for release in release_list:
        repos = []
        for label, template in repo_templates():
            base = template.format(release=release, arch=arch).rstrip("/") + "/"
            evrs = source_evrs(base, names)
            if evrs is not None:
                repos.append((label, evrs))
        found[release] = repos
    return found


def problems_of(name, evr, release, repos_by_release):
    """What breaks the upgrade path of build `name` at `evr` in `release`: an older release's
    repository with a higher EVR, or a newer release whose highest EVR is lower."""
    problems = []
    for other, repos in repos_by_release.items():
        carried = [(label, evrs[name]) for label, evrs in repos if name in evrs]
        if other < release:
            problems += [
                f"{name}: {evr_text(theirs)} in {other} ({label}) is higher than "
                f"{evr_text(evr)} in {release}"
                for label, theirs in carried
                if rpm.labelCompare(theirs, evr) > 0
            ]
        elif other > release and carried:
            highest = max((theirs for _, theirs in carried), key=EVR_ORDER)
            if rpm.labelCompare(evr, highest) > 0:
                problems.append(
                    f"{name}: {evr_text(evr)} in {release} is higher than {evr_text(highest)} "
                    f"in {other}, a newer release"
                )
    return problems


def main():
    alias = tasklib.env("TASKBOT_ITEM")
    release = tasklib.env("TASKBOT_ARG_RELEASE", "")
    builds = tasklib.env("TASKBOT_ARG_BUILDS", "").split()
    if not release.isdigit() or not builds:
        raise tasklib.TaskError("the job needs the arguments release (a number) and builds (NVRs)")
    arch = os.environ.get("UPGRADEPATH_ARCH") or DEFAULT_ARCH
    release = int(release)
    parsed = [tasklib.split_nvr(nvr) for nvr in builds]
    names = {name for name, _, _ in parsed}
    repos_by_release = read_releases(releases(release), names, arch)
    if not repos_by_release[release]:
        raise tasklib.TaskError(f"release {release} has none of its repositories")

    problems = []
    for nvr, (name, version, rel) in zip(builds, parsed):
        # The build's epoch is not in its NVR: it is the one its packages carry in its own
        # release's repositories (updates-testing holds a build requested to stable), else 0.
        epoch = next(
            (evrs[name][0] for _, evrs in repos_by_release[release]
             if name in evrs and evrs[name][1:] == (version, rel)),
            "0",
        )
        problems += problems_of(name, (epoch, version, rel), release, repos_by_release)
    for line in problems:
        print(f"upgrade path broken: {line}", flush=True)
    others = [r for r in repos_by_release if r != release and repos_by_release[r]]
    note = (
        f"{len(problems)} upgrade path problem{'' if len(problems) == 1 else 's'}: "
        + "; ".join(problems)
        if problems
        else f"upgrade path kept for {len(builds)} builds against releases "
        + (", ".join(map(str, others)) or "none")
    )
    tasklib.write_results(
        [
            {
                "item": alias,
                "type": "bodhi_update",
                "checkname": CHECKNAME,
                "outcome": "FAILED" if problems else "PASSED",
                "note": note[:1000],
                "builds": " ".join(builds),
                "release": str(release),
                "releases_compared": " ".join(map(str, others)),
            }
        ]
    )


if __name__ == "__main__":
    tasklib.run(main, CHECKNAME)
