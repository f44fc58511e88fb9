#!/bin/sh
# One result per check, all in one results file: a failing check does not hide the others.
# POSIX sh: it runs in real distributions and in the tiny test guest (busybox).
set -u

results=""
check() { # name outcome note
  results="$results
  - item: $TASKBOT_ITEM
    type: $TASKBOT_ITEM_TYPE
    checkname: dist.cloud-smoke.$1
    outcome: $2
    note: '$(printf '%s' "$3" | tr '\n' ' ' | cut -c1-900 | sed "s/'/''/g")'"
}
art=${TASKBOT_ARTIFACTS%/}

cp /proc/cmdline "$art/cmdline.txt"
uname -a >"$art/uname.txt"

# The seed the instance was given: the disk labelled cidata (its meta-data and user-data), read
# here, not through cloud-init, to check what cloud-init did with it.
seed=$(mktemp -d)
read_seed() {
  mkdir -p "$seed/mnt"
  for dev in /dev/vd? /dev/sd? /dev/sr?; do
    [ -b "$dev" ] || continue
    mount -t iso9660 -o ro "$dev" "$seed/mnt" 2>/dev/null || continue
    if [ -f "$seed/mnt/meta-data" ]; then
      cp "$seed/mnt/meta-data" "$seed/mnt/user-data" "$seed/" 2>/dev/null
      seed_dev=$dev
    fi
    umount "$seed/mnt"
    [ -f "$seed/meta-data" ] && return 0
  done
  return 1
}
seed_dev=""
read_seed || true

# cloud-init, where the image has it: it has finished (the provisioner waits for it before the
# job starts: a task that finds it still running says so), without errors, with the seed as its
# datasource (not None: the seed was not found).
cloud_init() {
  cloud-init status --long >"$art/cloud-init-status.txt" 2>&1
  before=$(sed -n 's/^status: //p' "$art/cloud-init-status.txt")
  case "$before" in
    running | "not run" | "not started") cloud-init status --wait --long >"$art/cloud-init-status.txt" 2>&1 ;;
  esac
  for f in /run/cloud-init/result.json /var/log/cloud-init.log /var/log/cloud-init-output.log; do
    [ -r "$f" ] && cp "$f" "$art/"
  done
  status=$(sed -n 's/^status: //p' "$art/cloud-init-status.txt")
  # result.json: the datasource cloud-init used and the errors of every stage.
  summary=$(python3 -c '
import json, sys
v1 = json.load(open("/run/cloud-init/result.json"))["v1"]
print(v1.get("datasource") or "None")
for e in v1.get("errors") or []:
    print(e)
' 2>/dev/null) || summary="None
no /run/cloud-init/result.json: cloud-init did not finish"
  datasource=$(echo "$summary" | head -n 1)
  errors=$(echo "$summary" | sed 1d)
  # Not the image's fault, but worth knowing: the machine was handed over before it was ready.
  late=""
  case "$before" in
    done | error) ;;
    *) late=" (it was $before when the task started)" ;;
  esac
  if [ "$status" = done ] && [ -z "$errors" ]; then
    case "$datasource" in
      *NoCloud*) check cloud-init PASSED "status done$late, datasource $datasource" ;;
      *) check cloud-init FAILED "status done$late, but datasource $datasource: the seed was not used" ;;
    esac
  else
    check cloud-init FAILED "status ${status:-unknown}$late; datasource $datasource; errors: ${errors:-none}"
  fi
}
if command -v cloud-init >/dev/null 2>&1; then
  cloud_init
fi

# The hostname: the seed's (user-data's `hostname:`, else meta-data's `local-hostname:`).
host=$(hostname)
want=$(sed -n 's/^hostname: *//p' "$seed/user-data" 2>/dev/null | head -n 1)
[ -n "$want" ] || want=$(sed -n 's/^local-hostname: *//p' "$seed/meta-data" 2>/dev/null | head -n 1)
if [ -z "$seed_dev" ]; then
  check hostname FAILED "hostname $host; no seed (a disk labelled cidata with meta-data) to compare with"
elif [ "$host" = "$want" ]; then
  check hostname PASSED "hostname $host, from the seed"
else
  check hostname FAILED "hostname $host, but the seed says $want: the seed's hostname was not applied"
fi

# The login: the seed's user (its `users:` entry, else root) has every key of the seed, and
# password logins are off where the seed says so (sshd's effective configuration).
user_check() {
  user=$(sed -n 's/^  - name: *//p' "$seed/user-data" | head -n 1)
  [ -n "$user" ] || user=root
  home=$(awk -F: -v u="$user" '$1 == u { print $6 }' /etc/passwd)
  [ -n "$home" ] || { check user FAILED "the seed's user $user does not exist"; return; }
  keys=$(grep -o 'ssh-[a-z0-9-]* [A-Za-z0-9+/=]*' "$seed/user-data")
  n=0
  missing=""
  for blob in $(echo "$keys" | awk '{ print $2 }'); do
    n=$((n + 1))
    grep -qF "$blob" "$home/.ssh/authorized_keys" 2>/dev/null || missing="$missing ${blob%"${blob#????????????????????}"}..."
  done
  if [ "$n" -eq 0 ]; then
    check user FAILED "the seed has no SSH key for $user"
    return
  fi
  if [ -n "$missing" ]; then
    check user FAILED "$user lacks the seed's keys in $home/.ssh/authorized_keys:$missing"
    return
  fi
  note="$user has the seed's $n key(s) in $home/.ssh/authorized_keys"
  if grep -q '^ssh_pwauth: *false' "$seed/user-data" && command -v sshd >/dev/null 2>&1; then
    pw=$(sshd -T 2>/dev/null | sed -n 's/^passwordauthentication //p')
    if [ "$pw" != no ]; then
      check user FAILED "$note, but sshd's PasswordAuthentication is ${pw:-unknown}, and the seed says ssh_pwauth: false"
      return
    fi
    note="$note; password logins off"
  fi
  check user PASSED "$note"
}
if [ -n "$seed_dev" ]; then
  user_check
else
  check user FAILED "no seed to compare the login with"
fi

# The disk: the first one, and where the root file system is on a disk, that it is writable.
disk=$(ls /sys/block 2>/dev/null | grep -E '^(vd|sd|xvd|nvme)' | head -n 1)
root_dev=$(awk '$2 == "/" && $1 ~ /^\/dev\// { d = $1; t = $3; o = $4 } END { if (d) print d, t, o }' /proc/mounts)
if [ -z "$disk" ] || [ "$(cat "/sys/block/$disk/size")" -eq 0 ]; then
  check disk FAILED "no disk"
elif [ -n "$root_dev" ]; then
  set -- $root_dev
  if touch /var/tmp/.cloud-smoke 2>/dev/null && rm -f /var/tmp/.cloud-smoke; then
    check disk PASSED "/ on $1 ($2, ${3%%,*}), /dev/$disk: $(($(cat "/sys/block/$disk/size") / 2048)) MiB"
  else
    check disk FAILED "/ on $1 ($2, ${3%%,*}) is not writable"
  fi
else
  check disk PASSED "/dev/$disk: $(($(cat "/sys/block/$disk/size") / 2048)) MiB"
fi

# The network: a default route and an address on its interface.
route=$(ip route 2>/dev/null | grep '^default' | head -n 1 | sed 's/ *$//')
dev=$(echo "$route" | sed -n 's/.* dev \([^ ]*\).*/\1/p')
addr=$(ip -4 addr show dev "${dev:-none}" 2>/dev/null | sed -n 's/.*inet \([0-9./]*\).*/\1/p' | head -n 1)
if [ -z "$route" ]; then
  check network FAILED "no default route"
elif [ -z "$addr" ]; then
  check network FAILED "$route, but no IPv4 address on ${dev:-its interface}"
else
  check network PASSED "$addr on $dev, $route"
fi

# The services, where systemd runs: the boot finished with no failed unit.
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
  state=$(timeout 120 systemctl is-system-running --wait 2>/dev/null)
  systemctl --failed --no-legend --plain >"$art/failed-units.txt" 2>&1
  failed=$(awk '{ print $1 }' "$art/failed-units.txt" | tr '\n' ' ' | sed 's/ *$//')
  if [ "$state" = running ]; then
    check services PASSED "systemd: $state, no failed unit"
  else
    check services FAILED "systemd: ${state:-unknown}; failed units: ${failed:-none}"
  fi
fi

rm -rf "$seed"
printf 'results:%s\n' "$results" >"$TASKBOT_RESULTS"
