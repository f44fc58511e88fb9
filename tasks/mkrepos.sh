#!/bin/sh
# Turn each folder of tasks/ into a git repository (branch `main`) under DEST, so the runner can
# clone them like any task repository: file://DEST/<folder>.
#
#   sh tasks/mkrepos.sh /var/tmp/taskbot/tasks
#
# Safe to run again: a repository that exists gets a new commit only when the folder changed, so
# a task edited here is picked up by the next job.
set -eu

dest=${1:?"usage: $0 DEST"}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$dest"

for dir in "$here"/*/; do
    [ -f "$dir/taskbot.yaml" ] || continue
    name=$(basename "$dir")
    repo="$dest/$name"
    if [ ! -d "$repo/.git" ]; then
        git init -q -b main "$repo"
    fi
    # Replace the content with the folder's, keeping the history.
    git -C "$repo" rm -rq --ignore-unmatch . >/dev/null
    cp -R "$dir". "$repo/"
    # Tasks written with the shared helper (tasks/common/tasklib.py) get a copy of it as common/,
    # so each repository stays self-contained.
    if grep -qs tasklib "$dir"*.py; then
        cp -R "$here/common" "$repo/common"
    fi
    git -C "$repo" add -A
    if ! git -C "$repo" diff --cached --quiet 2>/dev/null \
        || ! git -C "$repo" rev-parse -q --verify HEAD >/dev/null; then
        git -C "$repo" -c user.name=taskbot -c user.email=taskbot@localhost \
            commit -q -m "Update $name from tasks/$name"
        echo "$repo: committed $(git -C "$repo" rev-parse --short HEAD)"
    else
        echo "$repo: up to date"
    fi
done
