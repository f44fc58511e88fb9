"""rpmlint on every RPM of the Koji build $TASKBOT_ITEM (see ../README.md)."""

import os
import re
import subprocess
import sys

# common/ in the task's repository (tasks/mkrepos.sh puts it there), or tasks/common/ beside
# this folder when run from Taskbot's source tree.
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(HERE, "common"), os.path.join(HERE, "..", "common")]
import tasklib  # noqa: E402

CHECKNAME = "dist.rpmlint"


def counts(output):
    """(errors, warnings) from rpmlint's summary line, e.g. "3 packages and 0 specfiles
    checked; 2 errors, 5 warnings, 7 badness; has taken 0.2 s" (rpmlint 2) or "... 2 errors,
    5 warnings." (rpmlint 1)."""
    match = re.search(r"(\d+) errors?, (\d+) warnings?", output)
    if not match:
        raise tasklib.TaskError("rpmlint printed no summary line (see rpmlint.log)")
    return int(match.group(1)), int(match.group(2))


def main():
    nvr = tasklib.env("TASKBOT_ITEM")
    artifacts = tasklib.env("TASKBOT_ARTIFACTS")
    rpms = tasklib.build_rpms(nvr, "rpms")
    print(f"running rpmlint on {len(rpms)} RPMs", flush=True)
    # Exit codes: 0 clean, 64 errors found, 66 badness over threshold; others are failures.
    # The task's own settings (rpmlint.toml, beside this script): see why there.
    config = os.path.join(os.path.dirname(os.path.abspath(__file__)), "rpmlint.toml")
    done = subprocess.run(["rpmlint", "-c", config, *rpms], capture_output=True, text=True)
    output = done.stdout + done.stderr
    with open(os.path.join(artifacts, "rpmlint.log"), "w", encoding="utf-8") as log:
        log.write(output)
    print(output, flush=True)
    if done.returncode not in (0, 64, 66):
        raise tasklib.TaskError(f"rpmlint failed with exit code {done.returncode} (see rpmlint.log)")
    errors, warnings = counts(output)
    tasklib.write_results(
        [
            {
                "item": nvr,
                "type": "koji_build",
                "checkname": CHECKNAME,
                "outcome": "FAILED" if errors else "PASSED",
                "note": f"{errors} errors, {warnings} warnings",
                "artifact": "rpmlint.log",
                "errors": errors,
                "warnings": warnings,
                "rpms": len(rpms),
            }
        ]
    )


if __name__ == "__main__":
    tasklib.run(main, CHECKNAME)
