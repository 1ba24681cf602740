#!/usr/bin/env bash
# The Swarm stack of docker-stack.yml (the make stack-* targets call this):
#
#   stack.sh up        deploy or update the stack, initializing a single-node swarm when the engine is
#                      in none (and saying so); waits until COUNTER_SCALE counters are in sync
#   stack.sh wait      only the wait
#   stack.sh status    tasks, then the cluster's own view (the coordinator's status table)
#   stack.sh upgrade TAG [counters]   counters to dc-counter:TAG one task at a time, each after the
#                      previous one is back in sync, then the coordinator (unless "counters" only);
#                      waits for the cluster
#   stack.sh rollback [counters]   the same, back to the previous images (docker service rollback)
#   stack.sh down      removes the stack; its volumes (the data) and the swarm stay
#
# Settings, from the environment (make passes them): STACK, DC_TAG, PORT, COUNTER_SCALE, TOKEN_FILE,
# COUNTER_MAX_PER_NODE (COUNTER_SCALE), STACK_NETWORKING (dnsrr or vip), UP_TIMEOUT (seconds);
# WANT_COUNTERS, for `wait`: how many counters to wait for when fewer than the replicas can run.
set -euo pipefail
cd "$(dirname "$0")/.."

: "${STACK:=dcounter}" "${DC_TAG:=latest}" "${PORT:=8080}" "${COUNTER_SCALE:=3}"
: "${TOKEN_FILE:=volumes/cluster-token}" "${STACK_NETWORKING:=dnsrr}" "${UP_TIMEOUT:=180}"
: "${COUNTER_MAX_PER_NODE:=$COUNTER_SCALE}"

say() { echo "stack: $*" >&2; }

case "$STACK_NETWORKING" in
  dnsrr) ENDPOINT_MODE=dnsrr PUBLISH_MODE=host ;;
  vip) ENDPOINT_MODE=vip PUBLISH_MODE=ingress ;;
  *) say "STACK_NETWORKING is dnsrr or vip, not $STACK_NETWORKING"; exit 2 ;;
esac

# The running coordinator task's container: pinned to a manager, so on this engine when it is one.
coordinator_container() {
  docker ps -q --filter "label=com.docker.swarm.service.name=${STACK}_coordinator" | head -n1
}

# Until every service runs its replicas with the wanted image and the coordinator lists COUNTER_SCALE
# counters in sync, each answering at the committed seq (the coordinator's status subcommand).
wait_ready() {
  local want deadline=$((SECONDS + UP_TIMEOUT)) c out=""
  want=${WANT_COUNTERS:-$(docker service inspect -f '{{.Spec.Mode.Replicated.Replicas}}' "${STACK}_counter")}
  say "waiting for the coordinator and $want counters in sync..."
  while ((SECONDS < deadline)); do
    c=$(coordinator_container)
    if [ -n "$c" ] && out=$(docker exec "$c" /coordinator status 2>&1) &&
      [ "$(grep -c ' InSync ' <<<"$out")" = "$want" ] && [ "$(grep -cE ' (Syncing|Lagging) ' <<<"$out")" = 0 ] &&
      running_everywhere "$want"; then
      echo "$out"
      say "API on http://127.0.0.1:${PORT} (and this node's other addresses)"
      return 0
    fi
    sleep 1
  done
  echo "$out" >&2
  docker stack ps --no-trunc "$STACK" >&2 || true
  say "not ready after ${UP_TIMEOUT}s: see make stack-status and docker service logs ${STACK}_counter"
  return 1
}

# Whether the counter service runs `want` tasks, all at the state Running, and no update is under way.
running_everywhere() {
  local running state
  running=$(docker service ps -q --filter desired-state=running "${STACK}_counter" |
    xargs -r docker inspect -f '{{.Status.State}}' | grep -cx running || true)
  state=$(docker service inspect -f '{{if .UpdateStatus}}{{.UpdateStatus.State}}{{end}}' "${STACK}_counter")
  [ "$running" = "$1" ] && [[ "$state" != updating && "$state" != rollback_started ]]
}

ensure_swarm() {
  local state
  state=$(docker info -f '{{.Swarm.LocalNodeState}}')
  case "$state" in
    active) ;;
    inactive)
      say "this engine is in no swarm: initializing a single-node swarm (docker swarm leave --force undoes it)"
      docker swarm init >/dev/null
      ;;
    *) say "this engine's swarm state is $state: fix it first (docker info)"; exit 1 ;;
  esac
  if [ "$(docker info -f '{{.Swarm.ControlAvailable}}')" != true ]; then
    say "this engine is a swarm worker: run make stack-up on a manager"
    exit 1
  fi
}

# Waits until the service's last update ended (Swarm keeps it "updating" or "rollback_started"
# until the monitor period after the last task passed) and every task it wants runs the image of its
# spec. Prints the update's state ("" when the engine kept none) and the spec's image; fails on timeout.
settled() {
  local service="$1" state image replicas running deadline=$((SECONDS + UP_TIMEOUT))
  while ((SECONDS < deadline)); do
    state=$(docker service inspect -f '{{if .UpdateStatus}}{{.UpdateStatus.State}}{{end}}' "$service")
    image=$(docker service inspect -f '{{.Spec.TaskTemplate.ContainerSpec.Image}}' "$service")
    replicas=$(docker service inspect -f '{{.Spec.Mode.Replicated.Replicas}}' "$service")
    running=$(docker service ps --filter desired-state=running --format '{{.Image}} {{.CurrentState}}' "$service" |
      grep -c "^$image Running" || true)
    if [[ "$state" != updating && "$state" != rollback_started && "$running" = "$replicas" ]]; then
      echo "$state $image"
      return 0
    fi
    sleep 1
  done
  say "$service did not settle in ${UP_TIMEOUT}s: update $state, $running of $replicas tasks run $image"
  return 1
}

# Updates one service to `image`, one task at a time (docker-stack.yml's update_config), and waits
# until it ended; fails when Swarm rolled it back or paused it (a new task did not become ready).
update() {
  local service="$1" image="$2" out
  if [ "$(docker service inspect -f '{{.Spec.TaskTemplate.ContainerSpec.Image}}' "$service")" = "$image" ]; then
    say "$service already runs $image"
    return 0
  fi
  say "updating $service to $image, one task at a time"
  # The label is the image docker stack deploy last set: moved along, so that a later make stack-up
  # with another DC_TAG deploys that one (stack deploy keeps the running image while it equals it).
  docker service update --quiet --detach=false --image "$image" \
    --label-add "com.docker.stack.image=$image" "$service" >/dev/null || true
  out=$(settled "$service")
  case "$out" in
    "completed $image" | " $image") say "updated $service" ;;
    *) say "the update of $service ended as: $out"; return 1 ;;
  esac
}

# Rolls one service back to its previous spec, the same way (rollback_config).
rollback() {
  local service="$1" out
  say "rolling $service back, one task at a time"
  docker service rollback --quiet --detach=false "$service" >/dev/null || true
  out=$(settled "$service")
  case "$out" in
    rollback_completed* | " "*) say "rolled $service back to ${out#* }" ;;
    *) say "the rollback of $service ended as: $out"; return 1 ;;
  esac
}

cmd="${1:-}"
case "$cmd" in
  up)
    ensure_swarm
    STACK="$STACK" DC_TAG="$DC_TAG" PORT="$PORT" COUNTER_SCALE="$COUNTER_SCALE" COUNTER_MAX_PER_NODE="$COUNTER_MAX_PER_NODE" \
      TOKEN_FILE="$(realpath "$TOKEN_FILE")" ENDPOINT_MODE="$ENDPOINT_MODE" PUBLISH_MODE="$PUBLISH_MODE" \
      docker stack deploy --prune --resolve-image never -c docker-stack.yml "$STACK"
    wait_ready
    ;;
  wait) wait_ready ;;
  status)
    docker stack ps --filter desired-state=running "$STACK"
    c=$(coordinator_container)
    if [ -n "$c" ]; then docker exec "$c" /coordinator status; else say "no coordinator runs on this node"; fi
    ;;
  upgrade)
    tag="${2:?usage: stack.sh upgrade TAG}"
    # Counters first, so the coordinator of the old version drives their catch-up, then itself.
    update "${STACK}_counter" "dc-counter:$tag"
    [ "${3:-}" = counters ] || update "${STACK}_coordinator" "dc-coordinator:$tag"
    wait_ready
    ;;
  rollback)
    rollback "${STACK}_counter"
    [ "${2:-}" = counters ] || rollback "${STACK}_coordinator"
    wait_ready
    ;;
  down)
    docker stack rm "$STACK"
    # The stack's containers go away asynchronously; its volumes stay (they are the data).
    for _ in $(seq 60); do
      [ -z "$(docker ps -aq --filter "label=com.docker.stack.namespace=$STACK")" ] && break
      sleep 1
    done
    say "removed stack $STACK; its data stays in the volumes ${STACK}_coordinator and ${STACK}_counters (on each node)"
    ;;
  *)
    sed -n '2,15p' "$0" >&2
    exit 2
    ;;
esac
