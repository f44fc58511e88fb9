#!/usr/bin/env bash
# Make sure everything Taskbot needs locally is installed and running: build dependencies,
# RabbitMQ and PostgreSQL. Safe to run again and again: it only acts on what is missing.
# Used by `make run` and `make test`; on a fresh Debian machine it installs from the OS packages.
set -euo pipefail

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
have() { command -v "$1" >/dev/null 2>&1; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

apt_updated=""
apt_install() {
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if ! have apt-get; then
    log "missing packages ${missing[*]} and no apt-get: install them by hand"; exit 1
  fi
  if [ -z "$apt_updated" ]; then
    log "apt-get update"
    $SUDO apt-get update -qq
    apt_updated=1
  fi
  log "installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

wait_for_port() { # port name seconds
  for _ in $(seq 1 "$3"); do port_open "$1" && return 0; sleep 1; done
  log "$2 did not open port $1 within $3 s"; return 1
}

# Build and runtime dependencies: libzmq for the fedmsg bridge, OpenSSL for git2 and reqwest,
# git for task repositories, Python 3 for the ResultsDB client checks, docker-compose to validate
# compose.yaml (no Docker engine needed for that).
apt_install build-essential pkg-config libzmq3-dev libssl-dev openssl git ca-certificates curl python3 docker-compose
# promtool (Debian package prometheus; its server is not started) checks the services' /metrics
# in tests/tests/ops.rs.
have promtool || apt_install prometheus
# The shipped RPM tasks (tasks/rpmlint, tasks/static-analysis, tasks/depcheck) and their tests:
# rpmbuild, rpmlint, cppcheck, rpm2cpio/cpio, createrepo_c, and librpm's Python module for the
# system Python (/usr/bin/python3), which the tasks run with. static-analysis's CPython check
# runs gcc -fanalyzer (gcc) with the system Python's headers (python3-dev) and reads which C API
# functions return new references from CPython's documentation (python3-doc's HTML pages).
apt_install rpm rpm2cpio cpio rpmlint cppcheck createrepo-c python3-rpm gcc python3-dev python3-doc
# libabigail's abipkgdiff, which tasks/abicheck runs to compare the ABI of a build's shared
# libraries with the previous build's (and its tests run directly, to compare); elfutils'
# eu-strip, with which rpmbuild (find-debuginfo) makes the debuginfo packages of those tests'
# libraries; zstd, to read the zstd-compressed repodata of Fedora's repositories
# (tasks/upgradepath, tasks/depcheck).
apt_install abigail-tools elfutils zstd
# make run's local Koji (scripts/demo-koji.py) builds its C libraries for aarch64 too, with
# Debian's cross compiler, so that the aarch64 jobs check real aarch64 RPMs.
apt_install gcc-aarch64-linux-gnu binutils-aarch64-linux-gnu libc6-dev-arm64-cross
# Headless Chromium: the api's dashboard is tested in a real browser (services/api/tests/dashboard.rs),
# driven by playwright-core from npm with Node.js (services/api/tests/dashboard_browser.rs runs
# tests/browser/dashboard.mjs). playwright-core 1.65 needs Node.js 20 or newer: the machine's own
# when it has one, else Debian's (bookworm's is 18: install a newer one by hand then).
have chromium || apt_install chromium
have node || apt_install nodejs
have npm || apt_install npm
node_major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$node_major" -lt 20 ]; then
  log "Node.js $(node --version) is too old for playwright-core (tests/browser): install Node.js 20 or newer"; exit 1
fi
# Installed from the lock file, again only when it changed (a stamp beside node_modules).
ensure_browser_driver() {
  local dir stamp want
  dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/tests/browser"
  stamp="$dir/node_modules/.taskbot-stamp"
  want="$(sha256sum "$dir/package-lock.json" | cut -d' ' -f1)"
  if [ -d "$dir/node_modules/playwright-core" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
    return 0
  fi
  log "installing playwright-core into tests/browser (npm ci)"
  (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
  printf '%s' "$want" >"$stamp"
}
ensure_browser_driver
# QEMU (under TCG) and what scripts/build-tiny-vm-image.sh builds the test guest from: the VM
# backend's tests (services/provisioner/tests/vm.rs) boot real VMs. xorriso builds cloud-init
# seeds (the provisioner) and bootable ISOs (tasks/build-iso, with isolinux and syslinux's
# BIOS modules).
apt_install qemu-system-x86 qemu-utils busybox-static dropbear-bin openssh-client cpio kmod \
  xorriso isolinux syslinux-common
# The Debian system image (scripts/build-debian-vm-image.sh, tests/tests/cloud_smoke.rs):
# debootstrap installs it from Debian's packages into a directory, mkfs.ext4 -d (e2fsprogs) makes
# that a file system without a loop device, qemu-img a qcow2 of it.
apt_install debootstrap e2fsprogs
# The aarch64 test guest (build-tiny-vm-image.sh DEST arm64, services/provisioner/tests/
# vm_aarch64.rs) is made of Debian's arm64 packages, downloaded and extracted, never installed:
# apt finds them once dpkg knows the arm64 architecture. qemu-system-arm has qemu-system-aarch64;
# readelf (binutils) resolves the guest's libraries.
if ! { dpkg --print-architecture; dpkg --print-foreign-architectures; } | grep -qx arm64; then
  log "adding the arm64 architecture to dpkg (the aarch64 test guest's packages)"
  $SUDO dpkg --add-architecture arm64
  $SUDO apt-get update -qq
  apt_updated=1
fi
apt_install qemu-system-arm binutils
# Again: where qemu-utils came from backports, installing Debian's qemu-system-x86 removes it
# (seen on a fresh machine), and Debian's own qemu-utils is needed.
apt_install qemu-utils

# The runner's sandbox (services/runner/src/sandbox.rs): bubblewrap runs every task step in its own
# namespaces as the unprivileged user taskbot-task, which owns nothing else on the host.
apt_install bubblewrap
if ! id -u taskbot-task >/dev/null 2>&1; then
  log "creating the unprivileged user taskbot-task that tasks run as"
  $SUDO useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin taskbot-task
fi

# The ResultsDB Python client from PyPI: the api's tests read the api with it
# (services/api/tests/resultsdb_client.rs). It brings `requests` and `simplejson`.
if ! python3 -c 'import resultsdb_api' >/dev/null 2>&1; then
  if ! python3 -m pip --version >/dev/null 2>&1; then apt_install python3-pip; fi
  log "installing the resultsdb_api Python client"
  python3 -m pip install --quiet resultsdb_api 2>/dev/null \
    || python3 -m pip install --quiet --break-system-packages resultsdb_api
fi

# --- fedora-messaging virtualenv (docs/fedora.md) ------------------------------------------------
# The real fedora-messaging library from PyPI, with Taskbot's own schema package
# (python/taskbot-messages) and those of Koji and Bodhi, in a virtualenv of this checkout: the
# reporter's tests consume what its fedora-messaging sink published with `fedora-messaging
# consume` and check they get typed messages (services/reporter/tests/fedora_messaging.rs), and the
# fedora-messaging bridge's tests publish Fedora's own messages with it
# (tests/tests/fedora_messaging.rs). Recreated only when the packages or the schema package's
# files change (a stamp file records both).
FEDORA_MESSAGING_VERSION="3.9.1"
FEDORA_MESSAGING_SCHEMAS="koji-fedoramessaging-messages bodhi-messages"
ensure_fedora_messaging_venv() {
  local root venv stamp want
  root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  venv="${TASKBOT_FEDORA_MESSAGING_VENV:-$root/.run/fedora-messaging-venv}"
  stamp="$venv/.taskbot-stamp"
  want="fedora-messaging==$FEDORA_MESSAGING_VERSION $FEDORA_MESSAGING_SCHEMAS $(cd "$root/python/taskbot-messages" \
    && find . -type f \( -name '*.py' -o -name '*.toml' -o -name '*.md' -o -name py.typed \) \
       -not -path '*/build/*' -not -path '*.egg-info/*' | sort | xargs sha256sum | sha256sum | cut -d' ' -f1)"
  if [ -x "$venv/bin/fedora-messaging" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
    return 0
  fi
  # Debian's python3 cannot make a virtualenv until python3-venv is installed.
  if have dpkg-query; then
    apt_install python3-venv
  elif ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    log "python3 cannot make virtualenvs (no venv/ensurepip): install them by hand"; exit 1
  fi
  log "installing fedora-messaging $FEDORA_MESSAGING_VERSION, $FEDORA_MESSAGING_SCHEMAS and taskbot-messages into $venv"
  mkdir -p "$(dirname "$venv")"
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    "fedora-messaging==$FEDORA_MESSAGING_VERSION" $FEDORA_MESSAGING_SCHEMAS
  # A copy, not the source tree: building in place would leave build/ and *.egg-info there.
  local src
  src="$(mktemp -d)"
  cp -r "$root/python/taskbot-messages/." "$src/"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --force-reinstall \
    --no-deps "$src"
  rm -rf "$src"
  printf '%s' "$want" >"$stamp"
}
ensure_fedora_messaging_venv
# --- end of the fedora-messaging virtualenv ------------------------------------------------------

if ! have cargo; then
  log "cargo is not installed: install Rust with rustup (https://rustup.rs), then run this again"
  exit 1
fi

# RabbitMQ.
if ! port_open 5672; then
  if ! have rabbitmq-server; then apt_install rabbitmq-server; fi
  log "starting RabbitMQ"
  $SUDO rabbitmq-server -detached >/dev/null 2>&1 || true
  wait_for_port 5672 RabbitMQ 90
fi

# RabbitMQ's management plugin: `taskbot status` reads queue depths, consumers, rates and dead
# letters from its HTTP API (port 15672; guest/guest works from localhost).
if ! port_open 15672; then
  log "enabling RabbitMQ's management plugin"
  $SUDO rabbitmq-plugins enable rabbitmq_management >/dev/null
  wait_for_port 15672 "RabbitMQ management" 60
fi

# PostgreSQL, reachable over TCP as postgres without a password (trust), with a database `test`.
if ! port_open 5432; then
  if ! have pg_ctlcluster; then apt_install postgresql; fi
  version=$(ls /etc/postgresql | sort -V | tail -n1)
  log "starting PostgreSQL $version"
  $SUDO pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  wait_for_port 5432 PostgreSQL 60
fi
if ! psql -h 127.0.0.1 -U postgres -d postgres -Atqc 'select 1' >/dev/null 2>&1; then
  # A fresh Debian install asks for a password over TCP; local development uses trust.
  version=$(ls /etc/postgresql | sort -V | tail -n1)
  hba="/etc/postgresql/$version/main/pg_hba.conf"
  log "allowing trust authentication from 127.0.0.1 in $hba (local development only)"
  $SUDO sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$hba"
  $SUDO pg_ctlcluster --skip-systemctl-redirect "$version" main reload
  sleep 1
fi
for db in test taskbot; do
  if ! psql -h 127.0.0.1 -U postgres -d postgres -Atqc "select 1 from pg_database where datname='$db'" | grep -q 1; then
    log "creating database $db"
    psql -h 127.0.0.1 -U postgres -d postgres -qc "create database $db"
  fi
done
log "RabbitMQ and PostgreSQL are up"
