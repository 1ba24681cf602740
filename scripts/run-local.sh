#!/usr/bin/env bash
# Starts the coordinator and three counters as local processes, data under ./data (kept across runs).
# The cluster token is created on first use in $DATA/cluster-token (mode 0600) and read by every
# service from there. Ctrl-C (or the end of any service) stops them all.
set -euo pipefail
cd "$(dirname "$0")/.."
PORT="${PORT:-8080}"
INTERNAL_PORT="${INTERNAL_PORT:-$((PORT + 1))}"
COUNTERS="${COUNTERS:-3}"
BIN="${BIN:-target/debug}"
DATA="${DATA:-data}"
mkdir -p "$DATA"
CLUSTER_TOKEN_FILE="$(./scripts/cluster-token.sh "$DATA/cluster-token")"
export CLUSTER_TOKEN_FILE
unset CLUSTER_TOKEN

pids=()
stop() {
  trap - INT TERM EXIT
  echo "stopping..."
  kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap stop INT TERM EXIT

"$BIN/coordinator" --listen "127.0.0.1:$PORT" --internal-listen "127.0.0.1:$INTERNAL_PORT" \
  --data-dir "$DATA/coordinator" &
pids+=($!)
for i in $(seq 1 "$COUNTERS"); do
  "$BIN/counter" --listen "127.0.0.1:$((PORT + 100 + i))" --data-dir "$DATA/counter-$i" \
    --coordinator-url "http://127.0.0.1:$INTERNAL_PORT" &
  pids+=($!)
done
echo "coordinator on http://127.0.0.1:$PORT (internal API on 127.0.0.1:$INTERNAL_PORT, token in" \
  "$CLUSTER_TOKEN_FILE), $COUNTERS counters; data in $DATA/. Ctrl-C stops."
wait -n
