"""Publish Fedora's messages with the real fedora-messaging library, as Koji and Bodhi do.

    publish.py CONFIG.toml DUMP.jsonl SCENARIO [COUNT [START]]

CONFIG.toml is a fedora-messaging configuration (broker URL, TLS files, exchange, topic prefix).
Each message is built from the real message classes of the schema packages
(koji-fedoramessaging-messages, bodhi-messages), validated by them, published with
fedora_messaging.api.publish (which returns once the broker confirmed it), and written to
DUMP.jsonl with fedora_messaging.message.dumps, as a consumer records it (topic = the routing
key): the serialized form `fedora-messaging publish` reads and `taskbot replay` takes. Scenarios:

  fedora   a Koji build state change (bash built), a Bodhi update request to testing and one to
           stable, and a ready-for-testing message asking to re-run the tests
  koji     COUNT Koji build state changes of packages pkgSTART, pkgSTART+1, ... (restart and
           benchmark tests)
"""

import os
import sys

from fedora_messaging import api, config, message
from bodhi.messages.schemas.update import (
    UpdateReadyForTestingV3,
    UpdateRequestStableV1,
    UpdateRequestTestingV1,
)
from koji_fedoramessaging_messages.build import BuildStateChangeV1

KOJI = "https://koji.fedoraproject.org/koji"


def koji_build(name, version, release, build_id):
    task_id = build_id * 10
    nvr = f"{name}-{version}-{release}"
    return BuildStateChangeV1(
        body={
            "name": name,
            "version": version,
            "release": release,
            "epoch": None,
            "attribute": "state",
            "old": 0,
            "new": 1,
            "build_id": build_id,
            "task_id": task_id,
            "owner": "alice",
            "instance": "primary",
            "url": f"{KOJI}/buildinfo?buildID={build_id}",
            "request": [
                f"git+https://src.fedoraproject.org/rpms/{name}.git#0123456789abcdef",
                "f41-candidate",
                {},
            ],
            "task": {
                "id": task_id,
                "url": f"{KOJI}/taskinfo?taskID={task_id}",
                "method": "build",
                "arch": "noarch",
                "state": 2,
                "owner": 1,
                "priority": 20,
                "channel_id": 1,
                "label": None,
                "request": [f"git+https://src.fedoraproject.org/rpms/{name}.git#0123456789abcdef"],
                "create_time": 1772360000.0,
                "start_time": 1772360010.0,
                "completion_time": 1772360430.0,
                "waiting": False,
                "awaited": None,
                "host_id": 42,
                "host_name": "buildvm-x86-01.iad2.fedoraproject.org",
                "parent": None,
                "result": {
                    "srpm": f"tasks/{task_id}/{nvr}.src.rpm",
                    "rpms": [f"tasks/{task_id}/{nvr}.x86_64.rpm", f"tasks/{task_id}/{nvr}.aarch64.rpm"],
                    "srpms": [f"tasks/{task_id}/{nvr}.src.rpm"],
                    "logs": [f"tasks/{task_id}/build.log", f"tasks/{task_id}/root.log"],
                    "brootid": 51234,
                    "source": {
                        "source": f"git+https://src.fedoraproject.org/rpms/{name}.git#0123456789abcdef",
                        "url": f"git+https://src.fedoraproject.org/rpms/{name}.git#0123456789abcdef",
                    },
                },
            },
            "creation_time": "2026-03-01T10:13:20+00:00",
            "completion_time": "2026-03-01T10:20:30+00:00",
        }
    )


def update(alias, request, nvrs):
    return {
        "alias": alias,
        "builds": [{"nvr": nvr} for nvr in nvrs],
        "release": {
            "name": "F41",
            "long_name": "Fedora 41",
            "version": "41",
            "id_prefix": "FEDORA",
            "branch": "f41",
            "dist_tag": "f41",
            "stable_tag": "f41-updates",
            "testing_tag": "f41-updates-testing",
            "candidate_tag": "f41-updates-candidate",
            "pending_signing_tag": "f41-signing-pending",
            "pending_testing_tag": "f41-updates-testing-pending",
            "pending_stable_tag": "f41-updates-pending",
            "override_tag": "f41-override",
            "mail_template": "fedora_errata_template",
            "state": "current",
            "composed_by_bodhi": True,
            "create_automatic_updates": False,
            "package_manager": "dnf",
            "testing_repository": "updates-testing",
            "eol": None,
        },
        "request": request,
        "status": "pending" if request == "testing" else "testing",
        "user": {"name": "alice"},
        "title": " ".join(nvrs),
        "critpath": False,
        "type": "bugfix",
    }


def fedora():
    testing_builds = ["python-requests-2.32.3-1.fc41", "python-urllib3-2.2.3-1.fc41"]
    stable_builds = ["bash-5.2.32-1.fc41"]
    ready_builds = ["xz-5.6.3-1.fc41"]
    return [
        koji_build("bash", "5.2.32", "1.fc41", 2600001),
        UpdateRequestTestingV1(
            body={"agent": "alice", "update": update("FEDORA-2026-1a2b3c4d5e", "testing", testing_builds)}
        ),
        UpdateRequestStableV1(
            body={"agent": "bodhi", "update": update("FEDORA-2026-6f7a8b9c0d", "stable", stable_builds)}
        ),
        UpdateReadyForTestingV3(
            body={
                "agent": "alice",
                "artifact": {
                    "type": "koji-build-group",
                    "builds": [
                        {"type": "koji-build", "id": 2600100, "task_id": 126001000, "nvr": nvr}
                        for nvr in ready_builds
                    ],
                },
                "re-trigger": True,
                "update": update("FEDORA-2026-e1f2a3b4c5", None, ready_builds),
            }
        ),
    ]


def main():
    config_file, dump, scenario = sys.argv[1:4]
    config.conf.load_config(config_file)
    if scenario == "fedora":
        messages = fedora()
    elif scenario == "koji":
        count, start = int(sys.argv[4]), int(sys.argv[5]) if len(sys.argv) > 5 else 0
        messages = [
            koji_build(f"pkg{n}", "1.0", "1.fc41", 3000000 + n) for n in range(start, start + count)
        ]
    else:
        raise SystemExit(f"unknown scenario {scenario}")
    with open(dump, "w", encoding="utf-8") as out:
        for m in messages:
            api.publish(m, timeout=int(os.environ.get("FM_PUBLISH_TIMEOUT", "30")))
            # As a consumer records it (`fedora-messaging record`): under the routing key it went
            # out with, the configured topic prefix included.
            m.topic = m._encoded_routing_key
            out.write(message.dumps(m))
            out.flush()
    print(f"published {len(messages)} messages", flush=True)


if __name__ == "__main__":
    main()
