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

mkdir -p "$state"/{logs,tasks,work,artifacts}

# Every folder of tasks/ is the content of one task repository: make each a real git repository
# (committing again when the folder changed, so edits to tasks/ show up).
sh tasks/mkrepos.sh "$state/tasks" >/dev/null

# The services' configuration: no administrator's credentials (each service logs in as its own
# user, from the accounts below).
cat > "$state/taskbot.toml" <<TOML
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
allowed_repos = ["file://$state/tasks/"]
task_timeout_secs = 300
[reporter]
jsonl_path = "$state/results.jsonl"
[postgres]
url = "postgres://127.0.0.1:5432/taskbot"
TOML
# One broker user per service (per arch for the runners) and the database roles, made as the administrator (the local
# broker's guest, PostgreSQL's postgres); the password files are kept from run to run.
log "making the services' broker users and database roles (taskbot setup-users)"
TASKBOT_CONFIG="$state/taskbot.toml" \
  TASKBOT_AMQP__URL="amqp://guest:guest@127.0.0.1:5672/%2f" \
  TASKBOT_AMQP__MANAGEMENT_URL="http://guest:guest@127.0.0.1:15672" \
  TASKBOT_POSTGRES__URL="postgres://postgres@127.0.0.1:5432/taskbot" \
  "$bin/taskbot" setup-users --secrets-dir "$state/secrets" >"$state/users.toml"
# TOML tables go after the top-level keys and sections above, so appending is enough.
cat "$state/users.toml" >>"$state/taskbot.toml"
# Readable by the services only (tasks never see it: the runner's sandbox hides its directory).
chmod 600 "$state/taskbot.toml"
export TASKBOT_CONFIG="$state/taskbot.toml"

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
# The real samples, then the real-shaped messages of the seed rules' tests (one or more per rule of
# deploy/rules.yaml, and near misses), so that every rule fires.
fixtures=("$top"/tests/fixtures/messages/*.json)
log "feeding $(wc -l <"$samples") real fedmsg messages and ${#fixtures[@]} real-shaped ones through $zmq_endpoint"
"$bin/fedmsg-publish" --bind "$zmq_endpoint" --wait-ms 2000 "$samples" "${fixtures[@]}"

# How many jobs the rules ask for, from the rules' own dry run (a job run again, with the same id,
# finishes again but is stored once). Jobs for tasks that need a VM end CRASHED at the
# provisioner (no VM backend yet), and tasks that fetch from the real Koji end CRASHED when this
# machine cannot reach it: each says why in its result's note.
expected=$(
  { cat "$samples"; for f in "${fixtures[@]}"; do tr -d '\n' <"$f"; echo; done; } |
    "$bin/taskbot" rules test "$top/deploy/rules.yaml" - --json |
    python3 -c 'import json, sys; print(len({j["job_id"] for m in json.load(sys.stdin)["messages"] for j in m.get("jobs", [])}))'
)
log "waiting for the $expected jobs the rules ask for to finish"
for _ in $(seq 1 180); do
  n=$(psql -h 127.0.0.1 -U postgres -d taskbot -Atqc "select count(distinct job_id) from job_events where state in ('done', 'crashed') and at >= '$started_at'" 2>/dev/null || echo 0)
  [ "$n" -ge "$expected" ] && break
  sleep 1
done
log "$n of $expected jobs finished"

log "results stored in PostgreSQL (database taskbot, table results):"
psql -h 127.0.0.1 -U postgres -d taskbot -P pager=off -c \
  "select testcase, outcome, item, arch, left(note, 90) as note from results order by finished_at desc limit 50"
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
  (results are stored once: running this again re-runs the same jobs, and the table keeps one row each)
MSG

if [ "${TASKBOT_RUN_ONCE:-}" = 1 ]; then exit 0; fi
log "pipeline running; feed more with: $bin/fedmsg-publish --bind $zmq_endpoint FILE (Ctrl-C to stop)"
wait
