"""Read Taskbot's api with the real ResultsDB client (`resultsdb_api` from PyPI).

Run by services/api/tests/resultsdb_client.rs against an api holding known rows:

    python3 check_resultsdb_client.py API_ROOT EXPECTED_JSON

API_ROOT is http://host:port/api/v2.0; EXPECTED_JSON describes the rows the test stored:
{"item": ..., "other_item": ..., "result_id": ..., "job_id": ..., "testcases": [...],
 "total": N, "gated_item": ..., "gated_latest": [[arch, outcome], ...]}. Exit status 0 when every check passes; an AssertionError otherwise.
"""

import json
import sys

import resultsdb_api


def names(results):
    return [r["testcase"]["name"] for r in results["data"]]


def main():
    root, expected = sys.argv[1], json.loads(sys.argv[2])
    api = resultsdb_api.ResultsDBapi(root, max_retries=0)

    # Filter by a data key, as Bodhi and Greenwave do.
    page = api.get_results(item=expected["item"])
    assert page["prev"] is None, page
    assert len(page["data"]) == expected["item_count"], page
    for r in page["data"]:
        assert r["data"]["item"] == [expected["item"]], r
        assert set(r) >= {"id", "testcase", "groups", "submit_time", "outcome", "note",
                          "ref_url", "data", "href"}, r
        assert r["groups"] == [expected["job_id"]], r

    # Several filters, keyword style the client turns into ResultsDB's query syntax.
    failed = api.get_results(outcome=["FAILED"], testcases_like="dist.*")
    assert names(failed) == expected["failed_dist"], failed
    both = api.get_results(item=[expected["item"], expected["other_item"]], limit=100)
    assert len(both["data"]) == expected["total"], both
    none = api.get_results(item="no-such-item-1-1")
    assert none["data"] == [] and none["next"] is None, none

    # Paging: follow `next` with the client's own session.
    first = api.get_results(limit=1)
    assert len(first["data"]) == 1 and first["next"], first
    second = api.session.get(first["next"]).json()
    assert second["prev"], second
    assert second["data"][0]["id"] != first["data"][0]["id"], (first, second)
    oldest = api.get_results(raw_params={"_sort": "asc:submit_time"}, limit=1)
    newest = api.get_results(limit=1)
    assert oldest["data"][0]["submit_time"] <= newest["data"][0]["submit_time"]

    # One result: found by Taskbot's result UUID, and by the integer id ResultsDB clients use.
    one = api.get_result(expected["result_id"])
    assert isinstance(one["id"], int), one
    assert api.get_result(one["id"]) == one
    assert one["outcome"] == expected["result_outcome"], one
    assert one["href"].endswith("/results/%d" % one["id"]), one

    # Testcases and groups.
    testcases = api.get_testcases()
    assert [t["name"] for t in testcases["data"]] == sorted(expected["testcases"]), testcases
    like = api.get_testcases(name_like="dist.*")
    assert all(t["name"].startswith("dist.") for t in like["data"]), like
    tc = api.get_testcase(expected["testcases"][0])
    assert tc["name"] == expected["testcases"][0], tc
    groups = api.get_groups()
    uuids = [g["uuid"] for g in groups["data"]]
    assert expected["job_id"] in uuids, groups
    group = api.get_group(expected["job_id"])
    assert group["uuid"] == expected["job_id"] and group["results_count"] >= 1, group
    assert api.get_groups(uuid=expected["job_id"])["data"][0]["uuid"] == expected["job_id"]

    # Greenwave's query (the client has no call for `latest`; Greenwave makes it with requests,
    # as here with the client's session): one latest result per testcase, scenario and arch.
    latest = api.session.get(root + "/results/latest", params={
        "item": expected["gated_item"], "type": "koji_build", "testcases": "upgrade.check",
        "_distinct_on": "scenario,system_architecture,system_variant"}).json()
    seen = sorted([r["data"]["system_architecture"][0], r["outcome"]] for r in latest["data"])
    assert seen == expected["gated_latest"], latest
    newest = api.session.get(root + "/results/latest", params={
        "item": expected["gated_item"], "testcases": "upgrade.check"}).json()
    assert [r["outcome"] for r in newest["data"]] == ["PASSED"], newest

    # Errors come back as the client expects them: HTTP status and the server's message.
    try:
        api.get_result("00000000-0000-0000-0000-000000000000")
    except resultsdb_api.ResultsDBapiException as e:
        assert e.response.status_code == 404, e
        assert "Result not found" in e.message, e.message
    else:
        raise AssertionError("a missing result did not raise")
    try:
        api.get_results(outcome="GREAT")
    except resultsdb_api.ResultsDBapiException as e:
        assert e.response.status_code == 400, e
        assert "GREAT" in e.message, e.message
    else:
        raise AssertionError("an unknown outcome did not raise")

    print("resultsdb_api client checks passed")


if __name__ == "__main__":
    main()
