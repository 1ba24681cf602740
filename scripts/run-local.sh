#!/usr/bin/env bash
# Starts the coordinator and three counters as local processes, data under ./data (kept across runs).
# The cluster token is created on first use in $DATA/cluster-token (mode 0600) and read by every
# service from there. Each service runs under a supervisor loop: when it exits (a crash, a kill, a
# failed start), it is started again on the same data after RESTART_DELAY seconds (1 by default, like
# a compose restart policy) and the others keep running. Ctrl-C (or SIGTERM) stops them all.
set -euo pipefail
cd "$(dirname "$0")/.."
PORT="${PORT:-8080}"
INTERNAL_PORT="${INTERNAL_PORT:-$((PORT + 1))}"
COUNTERS="${COUNTERS:-3}"
BIN="${BIN:-target/debug}"
DATA="${DATA:-data}"
RESTART_DELAY="${RESTART_DELAY:-1}"
# How long a stopped service may take to shut down before it is killed.
STOP_TIMEOUT="${STOP_TIMEOUT:-10}"
for b in coordinator counter; do
  # A missing binary would only be restarted every second, forever.
  [ -x "$BIN/$b" ] || { echo "run-local: no $BIN/$b; build it first (cargo build --bins)" >&2; exit 1; }
done
mkdir -p "$DATA"
CLUSTER_TOKEN_FILE="$(./scripts/cluster-token.sh "$DATA/cluster-token")"
export CLUSTER_TOKEN_FILE
unset CLUSTER_TOKEN

# supervise NAME COMMAND...: runs COMMAND, and runs it again RESTART_DELAY seconds after each exit,
# until this loop gets SIGINT or SIGTERM; it then stops the command (SIGTERM, SIGKILL after
# STOP_TIMEOUT seconds) and exits. Meant to run in the background (a subshell of its own). The
# command and the delay run in the background too, so that `wait` (which a signal interrupts) is
# what the loop blocks in, and a stop is handled at once.
supervise() {
  local name="$1"
  shift
  child=""
  trap 'stop_child; exit 0' INT TERM
  while true; do
    "$@" &
    child=$!
    local status=0
    # (bash's own "Killed" notice of a job killed by a signal goes to /dev/null: the line below says it.)
    wait "$child" 2>/dev/null || status=$?
    local how="status $status"
    if [ "$status" -gt 128 ] && signal="$(kill -l "$((status - 128))" 2>/dev/null)"; then
      how="$how (SIG$signal)"
    fi
    echo "run-local: $name (pid $child) exited with $how; restarting it in ${RESTART_DELAY}s" >&2
    sleep "$RESTART_DELAY" &
    child=$!
    wait "$child" || true
  done
}

# Stops the supervised command (or the pending delay). bash reaps background children as they exit,
# so `kill -0` fails once the child is gone.
stop_child() {
  [ -n "$child" ] || return 0
  kill -TERM "$child" 2>/dev/null || true
  local tries=$((STOP_TIMEOUT * 10))
  while [ "$tries" -gt 0 ] && kill -0 "$child" 2>/dev/null; do
    sleep 0.1
    tries=$((tries - 1))
  done
  kill -KILL "$child" 2>/dev/null || true
  wait "$child" 2>/dev/null || true
}

pids=()
stop() {
  trap - INT TERM EXIT
  echo "stopping..."
  kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  exit 0
}
trap stop INT TERM EXIT

supervise coordinator "$BIN/coordinator" --listen "127.0.0.1:$PORT" \
  --internal-listen "127.0.0.1:$INTERNAL_PORT" --data-dir "$DATA/coordinator" &
pids+=($!)
for i in $(seq 1 "$COUNTERS"); do
  supervise "counter-$i" "$BIN/counter" --listen "127.0.0.1:$((PORT + 100 + i))" \
    --data-dir "$DATA/counter-$i" --coordinator-url "http://127.0.0.1:$INTERNAL_PORT" &
  pids+=($!)
done
echo "coordinator on http://127.0.0.1:$PORT (internal API on 127.0.0.1:$INTERNAL_PORT, token in" \
  "$CLUSTER_TOKEN_FILE), $COUNTERS counters; data in $DATA/. Ctrl-C stops."
# The supervisors only end when stopped; a signal interrupts this wait and runs `stop`.
wait
