#!/usr/bin/env bash
# Starts the coordinator and three counters as local processes, data under ./data (kept across runs).
# Ctrl-C (or the end of any service) stops them all.
set -euo pipefail
cd "$(dirname "$0")/.."
PORT="${PORT:-8080}"
COUNTERS="${COUNTERS:-3}"
BIN="${BIN:-target/debug}"
DATA="${DATA:-data}"
mkdir -p "$DATA"

pids=()
stop() {
  trap - INT TERM EXIT
  echo "stopping..."
  kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap stop INT TERM EXIT

"$BIN/coordinator" --listen "127.0.0.1:$PORT" --data-dir "$DATA/coordinator" &
pids+=($!)
for i in $(seq 1 "$COUNTERS"); do
  "$BIN/counter" --listen "127.0.0.1:$((PORT + 100 + i))" --data-dir "$DATA/counter-$i" \
    --coordinator-url "http://127.0.0.1:$PORT" &
  pids+=($!)
done
echo "coordinator on http://127.0.0.1:$PORT, $COUNTERS counters; data in $DATA/. Ctrl-C stops."
wait -n
