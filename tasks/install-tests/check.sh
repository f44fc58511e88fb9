#!/bin/sh
# The disk the installer wrote: the job argument disk, else /dev/vda (the VM's first disk).
set -eu

report() { # outcome note
  cat >"$TASKBOT_RESULTS" <<RESULTS
results:
  - item: $TASKBOT_ITEM
    type: $TASKBOT_ITEM_TYPE
    checkname: dist.install-tests
    outcome: $1
    note: '$(printf '%s' "$2" | sed "s/'/''/g")'
RESULTS
  exit 0
}

disk=${TASKBOT_ARG_DISK:-/dev/vda}
root=/mnt/installed
mkdir -p "$root"
mount -o ro "$disk" "$root" 2>mount.log || report FAILED "no file system on $disk: $(cat mount.log)"
trap 'umount "$root" 2>/dev/null || true' EXIT
release="$root/etc/taskbot-release"
[ -f "$release" ] || report FAILED "the installed system on $disk has no /etc/taskbot-release"
cp "$release" "${TASKBOT_ARTIFACTS}taskbot-release"
installed=$(sed -n 's/^item=//p' "$release")
[ "$installed" = "$TASKBOT_ITEM" ] || report FAILED "$disk holds $installed, not $TASKBOT_ITEM"
# The installed system's own busybox, run inside it.
name=$(chroot "$root" /bin/busybox sed -n 's/^NAME=//p' /etc/os-release 2>chroot.log) \
  || report FAILED "the installed system does not run: $(cat chroot.log)"
name=$(echo "$name" | tr -d "\"'")
report PASSED "$TASKBOT_ITEM installed to $disk: $name runs"
