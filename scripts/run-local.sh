#!/usr/bin/env bash
# `make run`: the whole pipeline on this machine. Starts the five services against the local
# RabbitMQ and PostgreSQL, feeds them the real sample bus messages through a local ZeroMQ
# publisher, prints the results stored, and keeps running until Ctrl-C (or, with
# TASKBOT_RUN_ONCE=1, stops once the results are in).
#
# Every service logs in as its own broker user (the runners of each arch as their arch's, which
# reads only that arch's run queue) and the reporter and the api as their own database roles,
# made by `taskbot setup-users` with passwords in .run/secrets/ (docs/security.md): the local
# broker's `guest` is only the administrator that makes them.
set -euo pipefail
cd "$(dirname "$0")/.."
top=$(pwd)
state="$top/.run"
bin="$top/target/debug"
samples="$top/tests/fixtures/fedmsg-real.jsonl"
zmq_endpoint="tcp://127.0.0.1:${TASKBOT_DEMO_ZMQ_PORT:-4001}"

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

bash scripts/ensure-services.sh
log "building"
cargo build --quiet --bins

# The configuration has a directory of its own (etc/): the runner hides the config file's
# directory from tasks, and must not hide the tiny guest under vm/ that build-iso packs.
mkdir -p "$state"/{etc,logs,tasks,work,artifacts,vm}

# Every folder of tasks/ is the content of one task repository: make each a real git repository
# (committing again when the folder changed, so edits to tasks/ show up).
sh tasks/mkrepos.sh "$state/tasks" >/dev/null

# The VM backend: the tiny guest (Debian's kernel, busybox, dropbear; about 12 s to build, once)
# on a blank base disk. It is also the installer build-iso packs, and its kernel is the kernel
# build kernel-tests boots.
log "building the tiny VM guest (once)"
bash scripts/build-tiny-vm-image.sh "$state/vm/tiny" >"$state/logs/tiny-vm.log" 2>&1
# The same guest for aarch64 (Debian's arm64 packages, emulated by qemu-system-aarch64), so that
# aarch64 VM jobs (kernel-tests on every arch) run too; it logs in with the same key (the seed's).
bash scripts/build-tiny-vm-image.sh "$state/vm/tiny-aarch64" arm64 >"$state/logs/tiny-vm-aarch64.log" 2>&1
[ -f "$state/vm/base.qcow2" ] || qemu-img create -q -f qcow2 "$state/vm/base.qcow2" 64M
# A real distribution beside it: the Debian 12 image (debootstrap, systemd, openssh-server, the
# real cloud-init; about 8 minutes the first time, then cached in /var/cache/taskbot/debian-vm,
# shared with the tests). It is the image of the three upgrade-tests configurations, and an APT
# repository of Debian 13's base-files is what they upgrade to (scripts/build-upgrade-repo.sh).
debian_vm=/var/cache/taskbot/debian-vm
log "building the Debian VM image (once; see .run/logs/debian-vm.log)"
bash scripts/build-debian-vm-image.sh "$debian_vm" >"$state/logs/debian-vm.log" 2>&1
bash scripts/build-upgrade-repo.sh "$state/upgrade-repo" trixie >"$state/logs/upgrade-repo.log" 2>&1

# What is fed: the real samples, then the real-shaped messages of the seed rules' tests (one or
# more per rule of deploy/rules.yaml, and near misses), so that every rule fires. Not the
# taskbot-*.json ones: those are events tasks announce (the ISO the build-iso job really builds
# here is announced by that job). The kernel build message names the tiny guest's kernel, the
# one kernel this machine has that boots with the guest's userspace. Each run feeds copies with
# message ids of its own: every run's jobs are new jobs, with results of their own (the same
# message fed twice is the same event, whose jobs are not requested again).
run_id=$(date -u +%Y%m%dT%H%M%S)
rm -rf "$state/messages"
mkdir -p "$state/messages"
python3 - "$run_id" "$(cat "$state/vm/tiny/kernel")" "$samples" "$state/messages" \
  "$top"/tests/fixtures/messages/*.json <<'PY'
import json, os, sys
run_id, kernel_package, samples, out, fixtures = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:]
def renamed(message):
    message["msg_id"] = f"{message.get('msg_id', 'sample')}-run-{run_id}"
    return message
with open(samples) as f, open(os.path.join(out, "samples.jsonl"), "w") as copy:
    for line in f:
        if line.strip():
            copy.write(json.dumps(renamed(json.loads(line))) + "\n")
for path in fixtures:
    name = os.path.basename(path)
    if name.startswith("taskbot-"):
        continue
    message = renamed(json.load(open(path)))
    if name == "bodhi-request-testing-fedup.json":
        # The upgrade tests' target: Debian 13, the release the demo's upgrade repository has.
        message["msg"]["update"]["release"]["version"] = "13"
    if name == "koji-build-complete-kernel.json":
        version, release = kernel_package.removeprefix("linux-image-").split("-")[:2]
        message["msg"].update(version=version, release=release)
    with open(os.path.join(out, name), "w") as copy:
        json.dump(message, copy)
PY
samples="$state/messages/samples.jsonl"
fixtures=()
for f in "$state"/messages/*.json; do fixtures+=("$f"); done
# The jobs the rules ask for, from the rules' own dry run.
{ cat "$samples"; for f in "${fixtures[@]}"; do tr -d '\n' <"$f"; echo; done; } |
  "$bin/taskbot" rules test "$top/deploy/rules.yaml" - --json >"$state/jobs.json"

# A local Koji and release repositories with a real RPM of every build those jobs check (built
# once; a few with defects on purpose, listed in demo.json), served over HTTP: Fedora's Koji is
# the production default, and not reachable from every machine.
log "building the demo Koji's RPMs (once)"
python3 scripts/demo-koji.py "$state/demo-koji" x86_64="$state/vm/tiny" aarch64="$state/vm/tiny-aarch64" <"$state/jobs.json"
koji_port=${TASKBOT_DEMO_KOJI_PORT:-4002}
koji_url="http://127.0.0.1:$koji_port"
# The upgrade repository, as the VMs reach the host's loopback (QEMU's user networking).
upgrade_port=${TASKBOT_DEMO_UPGRADE_PORT:-4003}

# The services' configuration: no administrator's credentials (each service logs in as its own
# user, from the accounts below).
cat > "$state/etc/taskbot.toml" <<TOML
arches = ["x86_64", "aarch64", "noarch"]
[amqp]
namespace = "taskbot"
url = "amqp://127.0.0.1:5672/%2f"
management_url = "http://127.0.0.1:15672"
[bridge]
endpoints = ["$zmq_endpoint"]
[rules]
file = "$top/deploy/rules.yaml"
task_base_url = "file://$state/tasks"
[runner]
work_dir = "$state/work"
artifacts_dir = "$state/artifacts"
artifacts_url = "http://127.0.0.1:8080/artifacts"
allowed_repos = ["file://$state/tasks/"]
task_timeout_secs = 2400
vm_ssh_key = "$state/vm/tiny/id_ed25519"
sandbox_read_only = ["$state/vm/tiny"]
[runner.task_env]
KOJI_PKGS_URL = "$koji_url"
DEPCHECK_REPO_URLS = "$koji_url/repos/{release}/{arch}/"
UPGRADEPATH_REPO_URLS = "release=$koji_url/repos/{release}/{arch}/"
INSTALLER_DIR = "$state/vm/tiny"
UPGRADE_REPO_URL = "http://10.0.2.2:$upgrade_port"
UPGRADE_APT_TRUSTED = "1"
[provisioner.vm]
koji_pkgs_url = "$koji_url"
ssh_key = "$state/vm/tiny/id_ed25519"
state_dir = "$state/vm/state"
memory_mb = 768
max_vms = 2
boot_timeout_secs = 600
lease_secs = 2400
allowed_urls = ["http://127.0.0.1:8080/artifacts/"]
[[provisioner.vm.images]]
name = "tiny"
distro = "tiny"
release = "1"
arch = "x86_64"
flavour = "base"
disk = "$state/vm/base.qcow2"
kernel = "$state/vm/tiny/vmlinuz"
initrd = "$state/vm/tiny/initrd.img"
append = "console=ttyS0 quiet panic=-1"
[[provisioner.vm.images]]
name = "tiny-aarch64"
distro = "tiny"
release = "1"
arch = "aarch64"
flavour = "base"
disk = "$state/vm/base.qcow2"
kernel = "$state/vm/tiny-aarch64/vmlinuz"
initrd = "$state/vm/tiny-aarch64/initrd.img"
append = "console=ttyAMA0 quiet panic=-1"
qemu = "qemu-system-aarch64"
qemu_args = ["-M", "virt", "-cpu", "cortex-a57"]
$(for config in n-1-minimal n-1-workstation n-2-server; do
  # The demo's three configurations are the one Debian 12 image (production registers each
  # configuration's own image at its older release).
  cat <<IMAGE
[[provisioner.vm.images]]
name = "debian-12-$config"
distro = "debian"
release = "$(cut -d. -f1 "$debian_vm/version")"
arch = "x86_64"
flavour = "upgrade-$config"
built = "$(cat "$debian_vm/built")"
disk = "$debian_vm/disk.qcow2"
kernel = "$debian_vm/vmlinuz"
initrd = "$debian_vm/initrd.img"
append = "root=/dev/vda rw console=ttyS0"
IMAGE
done)
[reporter]
jsonl_path = "$state/results.jsonl"
[postgres]
url = "postgres://127.0.0.1:5432/taskbot"
TOML
# One broker user per service (per arch for the runners) and the database roles, made as the administrator (the local
# broker's guest, PostgreSQL's postgres); the password files are kept from run to run.
log "making the services' broker users and database roles (taskbot setup-users)"
TASKBOT_CONFIG="$state/etc/taskbot.toml" \
  TASKBOT_AMQP__URL="amqp://guest:guest@127.0.0.1:5672/%2f" \
  TASKBOT_AMQP__MANAGEMENT_URL="http://guest:guest@127.0.0.1:15672" \
  TASKBOT_POSTGRES__URL="postgres://postgres@127.0.0.1:5432/taskbot" \
  "$bin/taskbot" setup-users --secrets-dir "$state/secrets" >"$state/users.toml"
# TOML tables go after the top-level keys and sections above, so appending is enough.
cat "$state/users.toml" >>"$state/etc/taskbot.toml"
# Readable by the services only (tasks never see it: the runner's sandbox hides its directory).
chmod 600 "$state/etc/taskbot.toml"
export TASKBOT_CONFIG="$state/etc/taskbot.toml"

pids=()
stop() {
  log "stopping"
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  log "stopped"
}
trap stop EXIT
trap 'exit 130' INT TERM

start() { # name, command...
  local name=$1; shift
  "$@" >"$state/logs/$name.log" 2>&1 &
  pids+=($!)
  log "started $name (pid $!), log: .run/logs/$name.log"
}
start demo-koji python3 -m http.server "$koji_port" --bind 127.0.0.1 --directory "$state/demo-koji"
start upgrade-repo python3 -m http.server "$upgrade_port" --bind 127.0.0.1 --directory "$state/upgrade-repo"
start reporter "$bin/reporter"
start provisioner "$bin/provisioner"
# Each runner on this host needs its own ops port (/healthz, /readyz, /metrics): 9190, 9191, ...
ops_port=9190
for arch in x86_64 aarch64 noarch; do
  start "runner-$arch" "$bin/runner" --arch "$arch" --ops-listen "127.0.0.1:$ops_port"
  ops_port=$((ops_port + 1))
done
start rules "$bin/rules"
start fedmsg-bridge "$bin/fedmsg-bridge"
start api "$bin/api"

started_at=$(date -u +%Y-%m-%dT%H:%M:%SZ)
log "feeding $(wc -l <"$samples") real fedmsg messages and ${#fixtures[@]} real-shaped ones through $zmq_endpoint"
"$bin/fedmsg-publish" --bind "$zmq_endpoint" --wait-ms 2000 "$samples" "${fixtures[@]}"

# How many jobs the rules ask for (a job run again, with the same id, finishes again but is
# stored once), plus the installation test the ISO that build-iso announces asks for.
expected=$(python3 -c 'import json, sys; print(1 + len({j["job_id"] for m in json.load(sys.stdin)["messages"] for j in m.get("jobs", [])}))' <"$state/jobs.json")
log "waiting for the $expected jobs the rules ask for to finish"
for _ in $(seq 1 2700); do
  n=$(psql -h 127.0.0.1 -U postgres -d taskbot -Atqc "select count(distinct job_id) from job_events where state in ('done', 'crashed') and at >= '$started_at'" 2>/dev/null || echo 0)
  [ "$n" -ge "$expected" ] && break
  sleep 1
done
log "$n of $expected jobs finished"

log "results stored in PostgreSQL (database taskbot, table results), and what each proved:"
set +e
psql -h 127.0.0.1 -U postgres -d taskbot -AtqF $'\t' -c \
  "select testcase, outcome, item, arch || coalesce(', ' || (data->>'scenario'), ''),
     regexp_replace(coalesce(note, ''), '\s+', ' ', 'g')
   from results where job_id in (select job_id from job_events where at >= '$started_at')" |
  python3 scripts/demo-summary.py "$state/demo-koji/demo.json"
verdicts=$?
set -e
log "job history (table job_events), latest jobs:"
psql -h 127.0.0.1 -U postgres -d taskbot -P pager=off -c \
  "select job_id, state, item, arch, task_name from jobs order by updated_at desc limit 10"
cat >&2 <<MSG

Where to look:
  service logs      .run/logs/*.log
  task logs         .run/artifacts/<job id>/task.log
  JSON-lines log    .run/results.jsonl (every result and job status, one JSON object a line)
  results           psql -h 127.0.0.1 -U postgres taskbot -c 'select * from results'
  api               http://127.0.0.1:8080/api/v2.0/results (ResultsDB-compatible), /api/v1/jobs,
                    /openapi.json; or: target/debug/taskbot results, target/debug/taskbot job <id>
  dashboard         http://127.0.0.1:8080/dashboard (queues, runners, jobs; a job's page shows its log)
  queues            target/debug/taskbot status (or watch); dead letters: target/debug/taskbot dlq list
  broker users      .run/users.toml (one per service and runner arch, passwords in .run/secrets/, docs/security.md)
  health, metrics   http://127.0.0.1:PORT/healthz, /readyz, /metrics with PORT 9181 (bridge),
                    9182 (rules), 9183 (provisioner), 9184 (reporter), 9190-9192 (runners)
  dead letters      queues ending in .dead (the bridge's hold the malformed bus messages)
  (each run feeds the messages with new message ids, so its jobs are new and results its own)
MSG

if [ "${TASKBOT_RUN_ONCE:-}" = 1 ]; then exit "$verdicts"; fi
log "pipeline running; feed more with: $bin/fedmsg-publish --bind $zmq_endpoint FILE (Ctrl-C to stop)"
wait
