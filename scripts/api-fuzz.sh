#!/usr/bin/env bash
# Schema-driven fuzzing of the public API: schemathesis, installed into a virtualenv under target/,
# generates requests from the coordinator's own /openapi.json and runs them against a live local
# cluster (the binaries in $BIN, data in a temporary directory), with every response check on: no
# 5xx, every status and body as documented. Afterwards the cluster must still count correctly.
#
#   scripts/api-fuzz.sh            (BIN=target/debug, API_FUZZ_EXAMPLES=100 per operation)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${BIN:-target/debug}"
EXAMPLES="${API_FUZZ_EXAMPLES:-100}"
VENV="${SCHEMATHESIS_VENV:-target/schemathesis-venv}"
VERSION=4.32.5

if ! "$VENV/bin/st" --version 2>/dev/null | grep -q "$VERSION"; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$VERSION"
fi

data="$(mktemp -d)"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PORT="$(free_port)"
INTERNAL_PORT="$(free_port)"
cleanup() {
  kill -TERM -- "-$cluster" 2>/dev/null || true
  wait "$cluster" 2>/dev/null || true
  rm -rf "$data"
}
trap cleanup EXIT
# A process group of its own, so that cleanup stops every service the script started.
BIN="$BIN" DATA="$data" PORT="$PORT" INTERNAL_PORT="$INTERNAL_PORT" setsid ./scripts/run-local.sh \
  >"$data/cluster.log" 2>&1 &
cluster=$!
base="http://127.0.0.1:$PORT"
for _ in $(seq 100); do
  curl -sf -X POST "$base/items" -d '[{"id":"warm-up","tenant":"api-fuzz-check"}]' >/dev/null 2>&1 && break
  sleep 0.2
done

"$VENV/bin/st" run "$base/openapi.json" --checks all --max-examples "$EXAMPLES" \
  --generation-deterministic --no-color || { tail -50 "$data/cluster.log"; exit 1; }

# Still correct after the fuzzing: a fresh tenant counts exactly what was posted.
curl -sf -X POST "$base/items" \
  -d '[{"id":"a","tenant":"api-fuzz-after"},{"id":"b","tenant":"api-fuzz-after"},{"id":"a","tenant":"api-fuzz-after"}]' >/dev/null
count="$(curl -sf "$base/items/api-fuzz-after/count")"
if [ "$count" != '{"count":2}' ]; then
  echo "after the fuzzing the cluster answered $count, expected {\"count\":2}" >&2
  exit 1
fi
echo "api fuzzing passed; the cluster still counts correctly ($count)"
