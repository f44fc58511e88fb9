#!/bin/sh
# Before the reboot: upgrade this VM to release $TASKBOT_ARG_RELEASE.
set -eu
. ./lib.sh
RESULT_EXIT=1
target=${TASKBOT_ARG_RELEASE:-}
[ -n "$target" ] || result CRASHED "the job names no target release (the rule's args.release)"
log="${TASKBOT_ARTIFACTS}upgrade.log"
release_name >from-release
from=$(version_id)
echo "upgrading $(cat from-release) to release $target" | tee "$log"
if [ "$from" = "$target" ]; then
  result CRASHED "the VM's image is already at release $target: the rule's image is not an older release"
fi

if command -v dnf >/dev/null 2>&1; then
  # The update under test: its builds (the upgrade tool) from Koji, installed first.
  koji=${KOJI_PKGS_URL:-https://kojipkgs.fedoraproject.org}
  mkdir -p update
  for nvr in ${TASKBOT_ARG_BUILDS:-}; do
    name=${nvr%-*}; name=${name%-*}; rest=${nvr#"$name"-}; version=${rest%-*}; rel=${rest##*-}
    for arch in noarch "$(uname -m)"; do
      curl -fsS -o "update/$nvr.$arch.rpm" "$koji/packages/$name/$version/$rel/$arch/$nvr.$arch.rpm" ||
        rm -f "update/$nvr.$arch.rpm"
    done
  done
  if ls update/*.rpm >/dev/null 2>&1; then
    as_root dnf -y install update/*.rpm >>"$log" 2>&1 || result FAILED "the update's builds do not install: $(tail -n 3 "$log")"
  fi
  repo=""
  [ -n "${UPGRADE_REPO_URL:-}" ] && repo="--disablerepo=* --repofrompath=upgrade,$UPGRADE_REPO_URL --enablerepo=upgrade"
  # shellcheck disable=SC2086
  as_root dnf -y --releasever="$target" $repo distro-sync --allowerasing >>"$log" 2>&1 ||
    result FAILED "dnf distro-sync to release $target failed: $(tail -n 3 "$log")"
elif command -v apt-get >/dev/null 2>&1; then
  # Debian's releases by number; UPGRADE_APT_SUITE names another.
  case "$target" in
    11) suite=bullseye ;; 12) suite=bookworm ;; 13) suite=trixie ;; 14) suite=forky ;;
    *) suite=${UPGRADE_APT_SUITE:-} ;;
  esac
  suite=${UPGRADE_APT_SUITE:-$suite}
  [ -n "$suite" ] || result CRASHED "no APT suite for release $target (set UPGRADE_APT_SUITE)"
  url=${UPGRADE_REPO_URL:-http://deb.debian.org/debian}
  # An operator's local repository may be unsigned; Debian's own is checked against its keyring.
  options=""
  [ "${UPGRADE_APT_TRUSTED:-}" = 1 ] && options="[trusted=yes] "
  echo "deb ${options}$url $suite main" >upgrade.list
  as_root sh -c 'for f in /etc/apt/sources.list /etc/apt/sources.list.d/*; do
      [ -f "$f" ] && mv "$f" "$f.before-upgrade"; done; true'
  as_root cp upgrade.list /etc/apt/sources.list.d/upgrade.list
  as_root apt-get update >>"$log" 2>&1 ||
    result FAILED "apt-get update from $url $suite failed: $(tail -n 3 "$log")"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get -y \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
    full-upgrade >>"$log" 2>&1 ||
    result FAILED "apt-get full-upgrade to $suite failed: $(tail -n 3 "$log")"
else
  result CRASHED "the VM has neither dnf nor apt-get: no upgrade tool for $(cat from-release)"
fi
echo "upgraded; the runner reboots the VM next" | tee -a "$log"
