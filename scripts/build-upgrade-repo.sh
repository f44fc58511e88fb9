#!/bin/bash
# An APT repository to upgrade a Debian VM to another release from, for upgrade-tests' own test
# and `make run`:
#
#   scripts/build-upgrade-repo.sh DEST_DIR SUITE [PACKAGE...]
#
# Downloads the named packages (default: base-files, which defines the release in
# /etc/os-release) of Debian's SUITE (e.g. trixie) for amd64 from deb.debian.org, with apt and
# lists of its own (the host's apt configuration is untouched), and lays them out as a
# repository: DEST_DIR/dists/SUITE/main/binary-amd64/Packages and an unsigned Release file
# (hence `[trusted=yes]`, UPGRADE_APT_TRUSTED=1), DEST_DIR/pool/SUITE/*.deb. Each suite is built
# on its own, so one repository can hold several. With `-` as the only PACKAGE the suite holds
# none (an upgrade that upgrades nothing, for the failing case).
#
# A whole release upgrade under TCG takes ~17 minutes, too long for tests; a repository of
# base-files alone makes `apt-get full-upgrade` move the system to the new release's identity
# in seconds, which is what the upgrade test checks after the reboot. Against Debian's real
# mirror (the task's default) the task does the full upgrade.
#
# Safe to run again: does nothing when DEST_DIR is complete for these arguments and this script.
set -euo pipefail
dest=${1:?"usage: $0 DEST_DIR SUITE [PACKAGE...]"}
suite=${2:?"usage: $0 DEST_DIR SUITE [PACKAGE...]"}
shift 2
packages=("${@:-base-files}")
[ "${packages[*]}" = - ] && packages=()
stamp="$suite ${packages[*]} $(sha256sum "$0" | cut -c1-16)"
if [ "$(cat "$dest/dists/$suite/stamp" 2>/dev/null)" = "$stamp" ]; then
  echo "==> $dest is up to date ($suite: ${packages[*]:-no packages})"
  exit 0
fi
mkdir -p "$dest"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
rm -rf "$dest/dists/$suite" "$dest/pool/$suite"
mkdir -p "$dest/pool/$suite" "$dest/dists/$suite/main/binary-amd64"
if [ ${#packages[@]} -gt 0 ]; then
  mkdir -p "$work/lists/partial" "$work/archives/partial"
  echo "deb http://deb.debian.org/debian $suite main" >"$work/sources.list"
  apt_opts=(-o "Dir::Etc::sourcelist=$work/sources.list" -o Dir::Etc::sourceparts=-
    -o "Dir::State::Lists=$work/lists" -o APT::Get::List-Cleanup=0 -o APT::Architecture=amd64
    # Files in our own directories: apt need not drop to its _apt user (which cannot write them).
    -o APT::Sandbox::User=root)
  apt-get "${apt_opts[@]}" update >/dev/null
  # PACKAGE/SUITE: that suite's version, never the host's own.
  (cd "$dest/pool/$suite" && apt-get "${apt_opts[@]}" download "${packages[@]/%//$suite}" >/dev/null)
fi
python3 - "$dest" "$suite" <<'PY'
import hashlib, os, subprocess, sys
dest, suite = sys.argv[1], sys.argv[2]
entries = []
for name in sorted(os.listdir(f"{dest}/pool/{suite}")):
    path = f"{dest}/pool/{suite}/{name}"
    control = subprocess.run(["dpkg-deb", "-f", path], check=True, capture_output=True, text=True).stdout.strip()
    data = open(path, "rb").read()
    entries.append(f"{control}\nFilename: pool/{suite}/{name}\nSize: {len(data)}\nSHA256: {hashlib.sha256(data).hexdigest()}\n")
packages = "\n".join(entries).encode()
rel = f"main/binary-amd64/Packages"
open(f"{dest}/dists/{suite}/{rel}", "wb").write(packages)
open(f"{dest}/dists/{suite}/Release", "w").write(
    f"Origin: Taskbot\nSuite: {suite}\nCodename: {suite}\nArchitectures: amd64\nComponents: main\n"
    f"SHA256:\n {hashlib.sha256(packages).hexdigest()} {len(packages)} {rel}\n")
PY
echo "$stamp" >"$dest/dists/$suite/stamp"
echo "==> $dest: $suite with $(ls "$dest/pool/$suite" | wc -l) package(s)"
