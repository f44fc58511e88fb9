# Shared by upgrade.sh and check.sh.

# Root's commands through sudo when the VM's user is not root.
if [ "$(id -u)" = 0 ]; then as_root() { "$@"; }; else as_root() { sudo -n "$@"; }; fi

# Write the job's one result and stop: with status 0 after the reboot (check.sh); before it
# (upgrade.sh) with status 1, so that the runner runs no further step (no reboot, no check over
# this verdict): it reads the results file whatever the step's status.
result() { # outcome note
  note=$(printf '%s' "$2" | sed "s/'/''/g")
  cat >"$TASKBOT_RESULTS" <<END
results:
  - item: $TASKBOT_ITEM
    type: $TASKBOT_ITEM_TYPE
    outcome: $1
    note: '$note'
END
  exit "${RESULT_EXIT:-0}"
}

# "Debian 12 (bookworm)", "Fedora 30": the running system's release, from /etc/os-release.
release_name() {
  (. /etc/os-release && printf '%s %s%s' "${NAME%% *}" "${VERSION_ID:-?}" \
    "${VERSION_CODENAME:+ ($VERSION_CODENAME)}")
}

version_id() { (. /etc/os-release && printf '%s' "${VERSION_ID:-}"); }
