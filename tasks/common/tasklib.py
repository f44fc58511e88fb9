"""What the shipped RPM tasks share: fetching a Koji build's RPMs, reading a repository's
repodata, writing ResultYAML, and turning an unexpected failure into a CRASHED result that says
what happened.

Each task repository gets a copy of this folder as `common/` (tasks/mkrepos.sh, and the tests'
repository builder), so that a task stays one self-contained repository. Python 3 standard
library only.

Where Koji's files are: the job argument `koji_url` (from the rules), else the environment
variable `KOJI_PKGS_URL` (given to every task by the operator in `runner.task_env`), else the real
https://kojipkgs.fedoraproject.org. The layout is Koji's:
`<base>/packages/<name>/<version>/<release>/<arch>/<nvr>.<arch>.rpm`, with `src` for the
source RPM; directory listings are read as kojipkgs (Apache) serves them.
"""

import bz2
import gzip
import html.parser
import json
import lzma
import os
import subprocess
import sys
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET

DEFAULT_KOJI_URL = "https://kojipkgs.fedoraproject.org"
# Largest file fetched (a build's RPMs can be large, but not this large).
MAX_BYTES = 2 * 1024**3
ATTEMPTS = 4


class TaskError(Exception):
    """A failure with a message fit for the result's note."""


def env(name, default=None):
    value = os.environ.get(name)
    if value is None and default is None:
        raise TaskError(f"{name} is not set (this script is run by the Taskbot runner)")
    return value if value is not None else default


def koji_url():
    return (
        os.environ.get("TASKBOT_ARG_KOJI_URL") or os.environ.get("KOJI_PKGS_URL") or DEFAULT_KOJI_URL
    ).rstrip("/")


def split_nvr(nvr):
    """`python-requests-2.21.0-3.fc30` → (`python-requests`, `2.21.0`, `3.fc30`)."""
    parts = nvr.rsplit("-", 2)
    if len(parts) != 3 or not all(parts):
        raise TaskError(f"{nvr!r} is not a name-version-release")
    return tuple(parts)


def build_url(nvr):
    name, version, release = split_nvr(nvr)
    quote = urllib.parse.quote
    return f"{koji_url()}/packages/{quote(name)}/{quote(version)}/{quote(release)}/"


def open_url(url):
    """GET with retries on connection errors and 5xx answers (pauses doubling from 1 s); a 4xx
    answer is final (the file is not there)."""
    pause = 1
    for attempt in range(1, ATTEMPTS + 1):
        try:
            return urllib.request.urlopen(url, timeout=60)
        except urllib.error.HTTPError as e:
            if e.code < 500 or attempt == ATTEMPTS:
                raise TaskError(f"download {url} failed: HTTP status {e.code}") from None
            reason = f"HTTP status {e.code}"
        except (urllib.error.URLError, OSError) as e:
            if attempt == ATTEMPTS:
                raise TaskError(f"download {url} failed: {getattr(e, 'reason', e)}") from None
            reason = str(getattr(e, "reason", e))
        print(f"download {url}: attempt {attempt} failed ({reason}); retrying in {pause}s", flush=True)
        time.sleep(pause)
        pause *= 2


class _Links(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.links = []

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            href = dict(attrs).get("href")
            if href and not href.startswith(("?", "/", "#")) and "://" not in href:
                self.links.append(urllib.parse.unquote(href))


def listing(url):
    """The entries of a directory listing (subdirectories end with /)."""
    with open_url(url) as response:
        parser = _Links()
        parser.feed(response.read().decode("utf-8", "replace"))
    return parser.links


def download(url, dest):
    """Fetch `url` into `dest` (a path), with a size limit and progress lines."""
    with open_url(url) as response, open(dest, "wb") as out:
        size = int(response.headers.get("Content-Length") or 0)
        if size > MAX_BYTES:
            raise TaskError(f"download {url} failed: larger than the limit of {MAX_BYTES} bytes")
        done = 0
        while chunk := response.read(1 << 20):
            done += len(chunk)
            if done > MAX_BYTES:
                raise TaskError(f"download {url} failed: larger than the limit of {MAX_BYTES} bytes")
            out.write(chunk)
    print(f"downloaded {url} ({done} bytes)", flush=True)
    return dest


def build_files(nvr, arches=None):
    """The RPMs of a build in Koji, of `arches` (e.g. ["src"] or ["x86_64", "noarch"]; all when
    None), as (arch, file name, URL), read from the build's directory listings."""
    base = build_url(nvr)
    files = []
    for arch_dir in listing(base):
        arch = arch_dir.rstrip("/")
        if not arch_dir.endswith("/") or (arches is not None and arch not in arches):
            continue
        for name in listing(base + urllib.parse.quote(arch) + "/"):
            if name.endswith(".rpm") and "/" not in name:
                url = base + urllib.parse.quote(arch) + "/" + urllib.parse.quote(name)
                files.append((arch, name, url))
    return files


def build_rpms(nvr, dest_dir, arches=None):
    """Download the build's RPMs (of `arches`, as for build_files) into `dest_dir`; returns their
    paths. A build without any is an error."""
    os.makedirs(dest_dir, exist_ok=True)
    paths = [download(url, os.path.join(dest_dir, name)) for _, name, url in build_files(nvr, arches)]
    if not paths:
        wanted = "any arch" if arches is None else ", ".join(arches)
        raise TaskError(f"build {nvr} has no RPMs for {wanted} under {build_url(nvr)}")
    return sorted(paths)


# Repodata (createrepo's format): repodata/repomd.xml names the primary metadata, which lists
# every package with its name, EVR, source RPM, provides and (some) files.
REPO_NS = "{http://linux.duke.edu/metadata/repo}"
COMMON_NS = "{http://linux.duke.edu/metadata/common}"
RPM_NS = "{http://linux.duke.edu/metadata/rpm}"
# Decompressors by file suffix: the standard library's, and zstd's program (Fedora's repodata
# is zstd-compressed since Fedora 39; Debian package zstd).
_OPENERS = {".gz": gzip.open, ".xz": lzma.open, ".bz2": bz2.open}


class NotFound(TaskError):
    """A URL answered 404: the file is not there (as opposed to a server that failed)."""


def fetch(url, limit=64 * 1024**2):
    """The body of a small file (repomd.xml, a listing), at most `limit` bytes."""
    with open_url(url) as response:
        body = response.read(limit + 1)
    if len(body) > limit:
        raise TaskError(f"download {url} failed: larger than the limit of {limit} bytes")
    return body


def primary_href(base):
    """Where `base`'s primary metadata is, from its repomd.xml; NotFound when the repository
    has no repomd.xml (404)."""
    url = base + "repodata/repomd.xml"
    try:
        repomd = ET.fromstring(fetch(url))
    except TaskError as e:
        if "HTTP status 404" in str(e):
            raise NotFound(str(e)) from None
        raise
    except ET.ParseError as e:
        raise TaskError(f"{url} is not valid XML: {e}") from None
    for data in repomd.iter(REPO_NS + "data"):
        if data.get("type") == "primary":
            location = data.find(REPO_NS + "location")
            href = location.get("href") if location is not None else None
            if href and not href.startswith("/") and ".." not in href.split("/") and "://" not in href:
                return href
            raise TaskError(f"{url}: bad primary location {href!r}")
    raise TaskError(f"{url} lists no primary metadata")


def _open_decompressed(path):
    suffix = os.path.splitext(path)[1]
    if suffix == ".zst":
        return subprocess.Popen(["zstd", "-dcq", path], stdout=subprocess.PIPE).stdout
    return _OPENERS.get(suffix, open)(path, "rb")


def repo_packages(base, work_dir):
    """Every <package> element of the primary metadata of the repository at `base` (a URL
    ending in /), streamed (Fedora's primary holds ~70,000 packages): each element is complete
    when yielded and cleared after. The file is downloaded into `work_dir` first, within
    download()'s size limit."""
    href = primary_href(base)
    os.makedirs(work_dir, exist_ok=True)
    path = os.path.join(work_dir, f"primary-{abs(hash(base))}{os.path.splitext(href)[1]}")
    download(base + urllib.parse.quote(href), path)
    count = 0
    try:
        with _open_decompressed(path) as stream:
            for _, element in ET.iterparse(stream):
                if element.tag == COMMON_NS + "package":
                    count += 1
                    yield element
                    element.clear()
    except ET.ParseError as e:
        raise TaskError(f"{base}{href} is not valid XML: {e}") from None
    finally:
        os.unlink(path)
    print(f"repository {base}: {count} packages", flush=True)


def _scalar(value):
    # JSON strings, numbers and booleans are valid YAML scalars (strings double-quoted).
    return json.dumps(value)


def write_results(results):
    """Write ResultYAML (docs/tasks.md) to $TASKBOT_RESULTS: a list of dicts with item, type,
    outcome, note, checkname, artifact, arch and any extra keys (which become result data)."""
    lines = ["results:"]
    for result in results:
        first = True
        for key, value in result.items():
            if value is None:
                continue
            lines.append(f"  {'- ' if first else '  '}{key}: {_scalar(value)}")
            first = False
    with open(env("TASKBOT_RESULTS"), "w", encoding="utf-8") as out:
        out.write("\n".join(lines) + "\n")


def run(main, checkname):
    """Run `main()`; if it fails, report a CRASHED result saying why (instead of a bare exit code,
    which the runner would read as FAILED: a verdict on the item this task never reached)."""
    try:
        main()
    except Exception as e:  # noqa: BLE001 - every failure must become a result
        reason = str(e) if isinstance(e, TaskError) else f"{type(e).__name__}: {e}"
        if not isinstance(e, TaskError):
            traceback.print_exc()
        print(f"CRASHED: {reason}", file=sys.stderr, flush=True)
        write_results(
            [
                {
                    "item": os.environ.get("TASKBOT_ITEM", "unknown"),
                    "type": os.environ.get("TASKBOT_ITEM_TYPE", "koji_build"),
                    "checkname": checkname,
                    "outcome": "CRASHED",
                    "note": reason[:500],
                }
            ]
        )
        sys.exit(1)
