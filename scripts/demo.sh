#!/usr/bin/env bash
# The main job, end to end through the service on this machine's CPU: install
# what is missing, build (Release), prepare the King James Bible (Debian's
# bible-kjv), start a coordinator (RocksDB under ./var) and one worker on
# 127.0.0.1, submit the demo job with the CLI and watch it with a live progress
# bar, then print validation perplexity and a text sample from the final
# checkpoint, and stop both daemons cleanly (also on Ctrl-C).
#
# Extra arguments go to `llmt submit` (e.g. --set train.max_steps=300).
# Without daemons the same model trains with:
#   llmt train examples/demo.yaml --set data.dir=data/kjv --out runs/demo
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/install-deps.sh
echo "== build"
./scripts/build.sh --target llmt llmt-coordinator llmt-worker
BUILD=${LLMT_BUILD_DIR:-build}
LLMT=$BUILD/cli/llmt

DATA=data/kjv
if [[ ! -f "$DATA/manifest.json" ]]; then
  echo "== prepare: King James Bible -> $DATA"
  mkdir -p data/corpus
  bible Gen1:1-Rev22:21 > data/corpus/kjv.txt
  "$LLMT" prepare --input data/corpus/kjv.txt --out "$DATA" --vocab-size 4096 --seed 1337
else
  echo "== prepare: $DATA already prepared"
fi

# Service state of this demo: RocksDB, job outputs (checkpoints), worker state and logs.
VAR=var
rm -rf "$VAR/coordinator" "$VAR/jobs" "$VAR/worker-local"
mkdir -p "$VAR/coordinator" "$VAR/worker-local"
COORD_PID="" WORKER_PID=""

# Stops a daemon with SIGTERM and waits for it (the worker first: it checkpoints
# and reports its running rank before the coordinator goes away).
stop_daemon() {
  local name=$1 pid=$2
  [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  local rc=0
  wait "$pid" || rc=$?
  echo "   $name stopped (exit $rc)"
}
cleanup() {
  trap - EXIT INT TERM
  if [[ -n "$WORKER_PID$COORD_PID" ]]; then
    echo "== stopping the daemons"
    stop_daemon llmt-worker "$WORKER_PID"
    stop_daemon llmt-coordinator "$COORD_PID"
  fi
}
trap cleanup EXIT
trap 'echo; echo "interrupted"; exit 130' INT TERM

# Waits (bounded) for KEY=port in a daemon's port file.
port_from() {
  local file=$1 key=$2 pid=$3
  for _ in $(seq 200); do
    if [[ -f "$file" ]] && grep -q "^$key=" "$file"; then
      grep "^$key=" "$file" | cut -d= -f2
      return 0
    fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
  done
  echo "daemon did not start; see its log under $VAR/" >&2
  return 1
}

echo "== start llmt-coordinator (state in $VAR/coordinator/db, log $VAR/coordinator.log)"
"$BUILD/coordinator/llmt-coordinator" --data_dir="$VAR/coordinator/db" --jobs_dir="$PWD/$VAR/jobs" \
  --listen=127.0.0.1:0 --http_listen=127.0.0.1:0 --port_file="$VAR/coordinator/ports" \
  >"$VAR/coordinator.log" 2>&1 &
COORD_PID=$!
GRPC_PORT=$(port_from "$VAR/coordinator/ports" grpc_port "$COORD_PID")
export LLMT_COORDINATOR=127.0.0.1:$GRPC_PORT

echo "== start llmt-worker (log $VAR/worker.log)"
"$BUILD/worker/daemon/llmt-worker" --coordinator="$LLMT_COORDINATOR" --worker_id=local \
  --state_dir="$VAR/worker-local" --http_listen=127.0.0.1:0 \
  --port_file="$VAR/worker-local/ports" --trainer="$LLMT" >"$VAR/worker.log" 2>&1 &
WORKER_PID=$!
METRICS_PORT=$(port_from "$VAR/worker-local/ports" http_port "$WORKER_PID")
echo "   coordinator $LLMT_COORDINATOR, worker metrics http://127.0.0.1:$METRICS_PORT/metrics"

echo "== submit examples/demo.yaml"
CORES=$(nproc)
JOB=$("$LLMT" submit examples/demo.yaml --set data.dir="$PWD/$DATA" \
  --set resources.cpus_per_rank="$CORES" "$@")
echo "   $JOB"

echo "== watch $JOB"
if ! "$LLMT" watch "$JOB"; then
  "$LLMT" get "$JOB"
  exit 1
fi
CKPT=$("$LLMT" checkpoints "$JOB" --latest)

echo "== evaluate"
"$LLMT" eval --checkpoint "$CKPT"

echo "== sample"
"$LLMT" sample --checkpoint "$CKPT" --prompt "And God said" --max-tokens 120 \
  --temperature 0.8 --top-k 40 --seed 7
