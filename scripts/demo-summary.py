#!/usr/bin/env python3
"""What `make run` proved: every result it stored, read against what the demo meant to show.

Reads the results (tab-separated `testcase, outcome, item, arch, note` lines, as psql -At -F
prints them) on stdin and the demo Koji's `demo.json` (scripts/demo-koji.py: which build carries
which defect, and which testcase must find it). Prints one line per result saying what it proved,
then the counts. Exits 1 when a result is unexpected: CRASHED (an infrastructure failure, never
a verdict), or FAILED where no defect was planted, or not FAILED where one was.

Usage: demo-summary.py DEMO_JSON < results.tsv
"""

import json
import sys

VERDICTS = ("PASSED", "FAILED", "INFO", "NEEDS_INSPECTION")


def judge(row, demo):
    """(expected?, what the result proved) for one result row."""
    testcase, outcome, item, _arch, note = row
    planted = demo.get(item, {})
    on_purpose = planted.get("failed_on_purpose", {})
    if outcome == "CRASHED":
        return False, f"unexpected CRASHED: {note}"
    if testcase in on_purpose:
        if outcome == "FAILED":
            return True, f"found the planted defect: {on_purpose[testcase]}"
        return False, f"missed the planted defect ({on_purpose[testcase]}): {outcome}"
    if outcome == "FAILED":
        return False, f"FAILED on a build without a planted defect: {note}"
    if outcome not in VERDICTS:
        return False, f"no final verdict: {outcome}"
    return True, f"{outcome.lower()}: {note}"


def main():
    with open(sys.argv[1]) as f:
        demo = json.load(f)
    rows = [line.rstrip("\n").split("\t", 4) for line in sys.stdin if line.strip()]
    counts, unexpected = {}, 0
    for row in sorted(rows):
        row += [""] * (5 - len(row))
        good, proved = judge(row, demo)
        unexpected += not good
        counts[row[1]] = counts.get(row[1], 0) + 1
        mark = "  " if good else "!!"
        print(f"{mark} {row[0]:<34} {row[1]:<8} {row[2]} ({row[3]}): {proved[:150]}")
    summary = ", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items()))
    print(f"\n{len(rows)} results: {summary}; {unexpected} unexpected")
    sys.exit(1 if unexpected else 0)


if __name__ == "__main__":
    main()
