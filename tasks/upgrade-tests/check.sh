#!/bin/sh
# After the reboot: did the VM boot the new release, and do its services run?
set -u
. ./lib.sh
target=$TASKBOT_ARG_RELEASE
from=$(cat from-release)
now=$(release_name)
log="${TASKBOT_ARTIFACTS}upgrade.log"
echo "after the reboot: $now, kernel $(uname -r)" >>"$log"
[ "$(version_id)" = "$target" ] ||
  result FAILED "upgraded $from, but the VM booted $now after the upgrade, not release $target"

# systemd done booting: running, or degraded when a unit failed (named below).
state=$(timeout 300 systemctl is-system-running --wait 2>/dev/null || true)
failed=$(systemctl --failed --no-legend --plain 2>/dev/null | awk '{print $1}' | tr '\n' ' ')
systemctl --failed --no-pager >>"$log" 2>&1 || true
[ -z "$failed" ] || result FAILED "upgraded $from to $now: failed units after the reboot: $failed"
case "$state" in
  running) ;;
  *) result FAILED "upgraded $from to $now: systemd is '$state' after the reboot, not running" ;;
esac
ssh_unit=""
for unit in ssh sshd; do
  if systemctl is-active --quiet "$unit" 2>/dev/null; then
    ssh_unit=$unit
    break
  fi
done
[ -n "$ssh_unit" ] || result FAILED "upgraded $from to $now: no SSH server unit is active"
result PASSED "upgraded $from to $now and rebooted: systemd running, no failed unit, $ssh_unit active"
