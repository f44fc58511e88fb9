"""The message Taskbot's reporter publishes for each result (schema ``taskbot.result.v1``).

The body is the result exactly as Taskbot carries it internally (docs/messages.md in the Taskbot
repository). ``packages`` and ``usernames`` follow the same rules as the reporter's filter
headers (``fedora_messaging_rpm_<name>``, ``fedora_messaging_user_<name>``), so a message built
here from a body gets the headers the reporter sent.
"""

import re
from typing import Optional

from fedora_messaging import message

#: Outcomes a Taskbot result can have.
OUTCOMES = ["PASSED", "INFO", "FAILED", "NEEDS_INSPECTION", "ABORTED", "CRASHED"]

#: Longest name given a filter header (AMQP header names are at most 255 bytes).
MAX_FILTER_NAME = 200

_FILTER_NAME = re.compile(r"[A-Za-z0-9._+-]+")


def is_filter_name(name: object) -> bool:
    """Whether ``name`` may go into a filter header: the characters of RPM and account names."""
    return (
        isinstance(name, str)
        and 0 < len(name.encode("utf-8")) <= MAX_FILTER_NAME
        and _FILTER_NAME.fullmatch(name) is not None
    )


def _string(description: str) -> dict:
    return {"type": "string", "description": description}


class ResultV1(message.Message):
    """One verdict of one Taskbot task on one item (a build, an update, a compose)."""

    body_schema = {
        "id": "https://taskbot.example/schemas/taskbot.result.v1.json",
        "$schema": "http://json-schema.org/draft-04/schema#",
        "description": "A Taskbot result",
        "type": "object",
        "properties": {
            "schema": {"type": "string", "enum": ["taskbot.result.v1"]},
            "result_id": _string("the result's id (a UUID); the same when redelivered"),
            "job_id": _string("the job that produced it (a UUID)"),
            "testcase": _string("dotted testcase name, e.g. dist.rpmlint"),
            "outcome": {"type": "string", "enum": OUTCOMES},
            "item": _string("what was checked: an NVR, an update alias, a compose id"),
            "item_type": _string("koji_build, bodhi_update, compose, ..."),
            "arch": _string("architecture the task ran for"),
            "note": {"type": ["string", "null"]},
            "log_url": {"type": ["string", "null"]},
            "data": {"type": "object"},
            "task": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "repo": {"type": "string"},
                    "ref": {"type": "string"},
                },
                "required": ["name", "repo", "ref"],
            },
            "event_id": {"type": "string"},
            "rule": {"type": "string"},
            "runner": {"type": "string"},
            "finished_at": _string("when the task finished (RFC 3339)"),
        },
        "required": [
            "schema",
            "result_id",
            "job_id",
            "testcase",
            "outcome",
            "item",
            "item_type",
            "arch",
            "task",
            "event_id",
            "rule",
            "runner",
            "finished_at",
        ],
    }

    @property
    def result_id(self) -> str:
        return self.body["result_id"]

    @property
    def job_id(self) -> str:
        return self.body["job_id"]

    @property
    def testcase(self) -> str:
        return self.body["testcase"]

    @property
    def outcome(self) -> str:
        return self.body["outcome"]

    @property
    def item(self) -> str:
        return self.body["item"]

    @property
    def item_type(self) -> str:
        return self.body["item_type"]

    @property
    def arch(self) -> str:
        return self.body["arch"]

    @property
    def note(self) -> Optional[str]:
        return self.body.get("note")

    @property
    def app_name(self) -> str:
        return "taskbot"

    @property
    def url(self) -> Optional[str]:
        """The job's logs and artifacts."""
        return self.body.get("log_url")

    @property
    def agent_name(self) -> Optional[str]:
        """Nobody: a result is Taskbot's verdict, not a person's action. (Naming the build's
        owner here would make notification services treat it as the owner's own doing and not
        tell them.)"""
        return None

    @property
    def summary(self) -> str:
        return f"{self.testcase} {self.outcome} on {self.item} ({self.arch})"

    def __str__(self) -> str:
        lines = [
            f"Taskbot's {self.testcase} {self.outcome} on {self.item_type} {self.item} "
            f"({self.arch}).",
            "",
        ]
        if self.note:
            lines += [f"Note: {self.note}"]
        if self.url:
            lines += [f"Logs: {self.url}"]
        lines += [
            f"Task: {self.body['task']['name']} ({self.body['task']['repo']} "
            f"at {self.body['task']['ref']})",
            f"Rule: {self.body['rule']}",
            f"Job: {self.job_id}",
            f"Result: {self.result_id}",
            f"Finished: {self.body['finished_at']}",
        ]
        return "\n".join(lines)

    @property
    def packages(self) -> list:
        """The package of a ``koji_build`` item (the name of its NVR); other items name none."""
        if self.item_type != "koji_build":
            return []
        parts = self.item.rsplit("-", 2)
        if len(parts) != 3 or not is_filter_name(parts[0]):
            return []
        return [parts[0]]

    @property
    def usernames(self) -> list:
        """The ``owner`` the task reported in its data (a rule passes it the build's owner)."""
        owner = (self.body.get("data") or {}).get("owner")
        return [owner] if is_filter_name(owner) else []
