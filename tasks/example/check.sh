#!/bin/sh
# Example Taskbot task: checks that $TASKBOT_ITEM is a well-formed name-version-release (NVR),
# e.g. xchat-0.5-1.fc20, and writes a Taskotron-style results.yml with the parts as data.
#
# Taskbot provides: TASKBOT_ITEM, TASKBOT_ITEM_TYPE, TASKBOT_ARCH, TASKBOT_JOB_ID, TASKBOT_WORKDIR,
# TASKBOT_ARTIFACTS (directory kept after the job), TASKBOT_RESULTS (where to write results).
# To try it by hand:
#   TASKBOT_ITEM=xchat-0.5-1.fc20 TASKBOT_RESULTS=/tmp/results.yml TASKBOT_ARTIFACTS=/tmp/art/ sh check.sh
set -eu

item=${TASKBOT_ITEM:?"TASKBOT_ITEM is not set (see tasks/README.md)"}
item_type=${TASKBOT_ITEM_TYPE:-koji_build}
arch=${TASKBOT_ARCH:-noarch}
results=${TASKBOT_RESULTS:-results.yml}
artifacts=${TASKBOT_ARTIFACTS:-./artifacts/}
mkdir -p "$artifacts"

# YAML single-quoted scalar: the only escape is '' for '.
quote() {
    printf "'%s'" "$(printf '%s' "$1" | sed "s/'/''/g")"
}

echo "checking $item_type $item on $arch"

# An NVR splits at its last two dashes: the name itself may contain dashes (python-requests).
release=${item##*-}
rest=${item%-*}
version=${rest##*-}
name=${rest%-*}

outcome=PASSED
if [ "$rest" = "$item" ] || [ "$name" = "$rest" ] || [ -z "$name" ] || [ -z "$version" ] \
    || [ -z "$release" ]; then
    outcome=FAILED
    note="$item is not a name-version-release"
    name='' version='' release=''
else
    note="name=$name version=$version release=$release"
    case $version in
        [0-9]*) ;;
        *)
            outcome=FAILED
            note="$note: the version does not start with a digit"
            ;;
    esac
    case $item in
        *broken*)
            outcome=FAILED
            note="$note: the item says it is broken"
            ;;
    esac
fi
echo "$outcome: $note"

# A small artifact, linked from the result.
{
    echo "item: $item"
    echo "name: $name"
    echo "version: $version"
    echo "release: $release"
    echo "outcome: $outcome"
} > "${artifacts%/}/nvr.txt"

{
    echo "results:"
    echo "  - item: $(quote "$item")"
    echo "    type: $(quote "$item_type")"
    echo "    checkname: dist.example"
    echo "    outcome: $outcome"
    echo "    note: $(quote "$note")"
    echo "    artifact: nvr.txt"
    if [ -n "$name" ]; then
        echo "    nvr_name: $(quote "$name")"
        echo "    nvr_version: $(quote "$version")"
        echo "    nvr_release: $(quote "$release")"
    fi
} > "$results"
echo "wrote $results"
