#!/usr/bin/env bash
# The two-node drill (make stack-two-node), on the stack make stack-up runs on this engine: a second
# engine joins the swarm as a worker (scripts/second-node.sh), then
#   1. at most COUNTER_SCALE - 1 counters per node (max_replicas_per_node, as several machines should
#      run it), spread over both nodes by a rolling restart: they must run on both, all in sync;
#   2. the worker is drained: its counters are rescheduled on the manager as far as the cap allows
#      and caught up there (replicas do not follow a task to another node: such a counter starts
#      from a free replica of the manager, or empty), none left on the worker, every running one in
#      sync; the rest wait for a node;
#   3. the worker is made active, the counters spread again, and the Swarm chaos drill runs across
#      both engines (kills, stops, and drains of the worker).
# The second engine is removed afterwards whatever happened, the cap lifted, and the stack waited for
# on this node again.
set -euo pipefail
cd "$(dirname "$0")/.."

: "${STACK:=dcounter}" "${DC_TAG:=latest}" "${NODE2:=dcnode2}" "${CHAOS_SECS:=60}"
export STACK NODE2
SOCK="unix:///run/docker-$NODE2.sock"

say() { echo "two-node: $*" >&2; }

cleanup() {
  ./scripts/second-node.sh down
  docker service update --quiet --detach=false --replicas-max-per-node 0 "${STACK}_counter" >/dev/null || true
  if ! ./scripts/stack.sh wait >/dev/null; then
    # The worker's loss cost the cluster its last commits: a failure of the drill.
    say "FAIL: the stack did not come back in sync on the manager alone"
    exit 1
  fi
}
trap cleanup EXIT

IMAGES="dc-coordinator:$DC_TAG dc-counter:$DC_TAG" ./scripts/second-node.sh up
worker=$(docker -H "$SOCK" info -f '{{.Swarm.NodeID}}')
manager=$(docker info -f '{{.Swarm.NodeID}}')

# Running counter tasks on a node.
on() {
  docker node ps -q --filter desired-state=running --filter "name=${STACK}_counter" "$1" | wc -l
}

scale=$(docker service inspect -f '{{.Spec.Mode.Replicated.Replicas}}' "${STACK}_counter")
cap=$((scale - 1))
((cap >= 1)) || { say "needs at least 2 counters"; exit 1; }

spread() {
  say "spreading the counters over both nodes (rolling restart), at most $cap per node"
  docker service update --quiet --detach=false --force --replicas-max-per-node "$cap" "${STACK}_counter" >/dev/null
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
WANT_COUNTERS=$cap ./scripts/stack.sh wait
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
