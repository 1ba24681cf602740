#!/usr/bin/env bash
# The two-node drill (make stack-two-node), on the stack make stack-up runs on this engine: a second
# engine joins the swarm as a worker (scripts/second-node.sh), then
#   1. the counters are spread over both nodes (a rolling restart, placement preference spread) and
#      must run on both, all in sync;
#   2. the worker is drained: its counters must be rescheduled on the manager and caught up there
#      (replicas do not follow a task to another node: such a counter starts from a free replica of
#      the manager, or empty, and is caught up), none left on the worker;
#   3. the worker is made active, the counters spread again, and the Swarm chaos drill runs across
#      both engines (kills, stops, and drains of the worker).
# The second engine is removed afterwards whatever happened, and the stack waited for again.
set -euo pipefail
cd "$(dirname "$0")/.."

: "${STACK:=dcounter}" "${DC_TAG:=latest}" "${NODE2:=dcnode2}" "${CHAOS_SECS:=60}"
export STACK NODE2
SOCK="unix:///run/docker-$NODE2.sock"

say() { echo "two-node: $*" >&2; }

cleanup() {
  ./scripts/second-node.sh down
  ./scripts/stack.sh wait >/dev/null || say "the stack did not settle on one node again"
}
trap cleanup EXIT

IMAGES="dc-coordinator:$DC_TAG dc-counter:$DC_TAG" ./scripts/second-node.sh up
worker=$(docker -H "$SOCK" info -f '{{.Swarm.NodeID}}')
manager=$(docker info -f '{{.Swarm.NodeID}}')

# Running counter tasks on a node.
on() {
  docker node ps -q --filter desired-state=running --filter "name=${STACK}_counter" "$1" | wc -l
}

spread() {
  say "spreading the counters over both nodes (rolling restart)"
  docker service update --quiet --detach=false --force "${STACK}_counter" >/dev/null
  ./scripts/stack.sh wait
  local a b
  a=$(on "$manager") b=$(on "$worker")
  say "counters: $a on the manager, $b on the worker"
  if [ "$a" = 0 ] || [ "$b" = 0 ]; then
    say "FAIL: the counters do not run on both nodes"
    exit 1
  fi
}

spread

say "draining the worker"
docker node update --availability drain "$worker" >/dev/null
./scripts/stack.sh wait
if [ "$(on "$worker")" != 0 ]; then
  say "FAIL: counters still run on the drained worker"
  exit 1
fi
say "drained: $(on "$manager") counters on the manager, all in sync"
docker node update --availability active "$worker" >/dev/null

spread

say "the Swarm chaos drill across both nodes"
CHAOS_SECS="$CHAOS_SECS" CHAOS_PLATFORM=swarm CHAOS_STACK="$STACK" \
  CHAOS_DOCKER_HOSTS="unix:///var/run/docker.sock,$SOCK" "$@"
