#!/bin/sh
# One result per check, all in one results file: a failing check does not hide the others.
set -u

results=""
check() { # name outcome note
  results="$results
  - item: $TASKBOT_ITEM
    type: $TASKBOT_ITEM_TYPE
    checkname: dist.cloud-smoke.$1
    outcome: $2
    note: '$(printf '%s' "$3" | sed "s/'/''/g")'"
}

cp /proc/cmdline "${TASKBOT_ARTIFACTS}cmdline.txt"
uname -a >"${TASKBOT_ARTIFACTS}uname.txt"

if command -v cloud-init >/dev/null 2>&1; then
  if status=$(cloud-init status --wait 2>&1); then
    check cloud-init PASSED "$(echo "$status" | tail -n 1)"
  else
    check cloud-init FAILED "$(echo "$status" | tail -n 1)"
  fi
fi

host=$(hostname)
case "$host" in
  taskbot-*) check hostname PASSED "hostname $host, from the seed" ;;
  *) check hostname FAILED "hostname $host: the seed's hostname was not applied" ;;
esac

disk=$(ls /sys/block 2>/dev/null | grep -E '^(vd|sd|xvd|nvme)' | head -n 1)
if [ -n "$disk" ] && [ "$(cat "/sys/block/$disk/size")" -gt 0 ]; then
  check disk PASSED "/dev/$disk: $(( $(cat "/sys/block/$disk/size") / 2048 )) MiB"
else
  check disk FAILED "no disk"
fi

route=$(ip route 2>/dev/null | grep '^default' | head -n 1)
if [ -n "$route" ]; then
  check network PASSED "$route"
else
  check network FAILED "no default route"
fi

printf 'results:%s\n' "$results" >"$TASKBOT_RESULTS"
