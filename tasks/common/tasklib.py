"""What the shipped RPM tasks share: fetching a Koji build's RPMs, writing ResultYAML, and
turning an unexpected failure into a CRASHED result that says what happened.

Each task repository gets a copy of this folder as `common/` (tasks/mkrepos.sh, and the tests'
repository builder), so that a task stays one self-contained repository. Python 3 standard
library only.

Where Koji's files are: the job argument `koji_url` (from the rules), else the environment
variable `KOJI_PKGS_URL` (given to every task by the operator in `runner.task_env`), else the real
https://kojipkgs.fedoraproject.org. The layout is Koji's:
`<base>/packages/<name>/<version>/<release>/<arch>/<nvr>.<arch>.rpm`, with `src` for the
source RPM; directory listings are read as kojipkgs (Apache) serves them.
"""

import html.parser
import json
import os
import sys
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request

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


def build_rpms(nvr, dest_dir, arches=None):
    """Download the build's RPMs (of `arches`, e.g. ["src"] or ["x86_64", "noarch"]; all when
    None) into `dest_dir`; returns their paths. A build without any is an error."""
    base = build_url(nvr)
    os.makedirs(dest_dir, exist_ok=True)
    paths = []
    for arch_dir in listing(base):
        arch = arch_dir.rstrip("/")
        if not arch_dir.endswith("/") or (arches is not None and arch not in arches):
            continue
        for name in listing(base + urllib.parse.quote(arch) + "/"):
            if name.endswith(".rpm"):
                url = base + urllib.parse.quote(arch) + "/" + urllib.parse.quote(name)
                paths.append(download(url, os.path.join(dest_dir, os.path.basename(name))))
    if not paths:
        wanted = "any arch" if arches is None else ", ".join(arches)
        raise TaskError(f"build {nvr} has no RPMs for {wanted} under {base}")
    return sorted(paths)


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
