#!/usr/bin/env bash
# A second Docker engine on this machine, as a swarm worker, for the two-node drill (make
# stack-two-node). It runs in a network namespace of its own with its own data root, exec root,
# socket, containerd namespace and hostname, linked to this host by a veth pair; as there is no
# registry, the stack's images are copied into it with docker save | docker load.
#
#   second-node.sh up     start it and join it to this engine's swarm (which must be a manager)
#   second-node.sh down   leave the swarm, stop it and remove everything `up` made
#
# Needs root, iproute2 and nsenter/unshare (util-linux). Settings from the environment: NODE2 (name,
# dcnode2), NODE2_NET (the veth /24, 10.231.0), NODE2_GWBRIDGE (its docker_gwbridge subnet,
# 172.31.0.0/16), IMAGES (what to copy in). Swarm needs 2377/tcp, 7946/tcp+udp and 4789/udp between
# the nodes: on the veth, nothing filters them.
set -euo pipefail

: "${NODE2:=dcnode2}" "${NODE2_NET:=10.231.0}" "${NODE2_GWBRIDGE:=172.31.0.0/16}" "${IMAGES:=}"
HOST_IF="${NODE2}-h"
NODE_IF="${NODE2}-n"
HOST_IP="$NODE2_NET.1"
NODE_IP="$NODE2_NET.2"
DATA_ROOT="/var/lib/docker-$NODE2"
EXEC_ROOT="/run/docker-$NODE2"
SOCK="unix://$EXEC_ROOT.sock"
D2=(docker -H "$SOCK")

say() { echo "second-node: $*" >&2; }

# The manager's address the worker joins (and the overlay's VXLAN packets come from).
manager_addr() {
  docker info -f '{{.Swarm.NodeAddr}}'
}

up() {
  [ "$(docker info -f '{{.Swarm.ControlAvailable}}')" = true ] || { say "this engine is no swarm manager"; exit 1; }
  local manager
  manager=$(manager_addr)
  say "starting engine $NODE2 in network namespace $NODE2 ($NODE_IP), joining the swarm at $manager"
  ip netns add "$NODE2"
  ip link add "$HOST_IF" type veth peer name "$NODE_IF"
  ip link set "$NODE_IF" netns "$NODE2"
  ip addr add "$HOST_IP/24" dev "$HOST_IF"
  ip link set "$HOST_IF" up
  # Packets to the node leave from the manager's swarm address: the overlay's VXLAN endpoint on the
  # worker drops packets of a known peer that come from another address.
  ip route add "$NODE_IP/32" dev "$HOST_IF" src "$manager"
  # Its containers' docker_gwbridge, where the drill reaches them, through the namespace.
  ip route add "$NODE2_GWBRIDGE" via "$NODE_IP"
  ip netns exec "$NODE2" sh -c "ip addr add $NODE_IP/24 dev $NODE_IF && ip link set $NODE_IF up &&
    ip link set lo up && ip route add $manager/32 via $HOST_IP && sysctl -qw net.ipv4.ip_forward=1"
  # No default route: an image pull (Swarm tries one for every task) fails at once instead of
  # waiting for a DNS timeout.
  mkdir -p "$DATA_ROOT" "$EXEC_ROOT"
  echo '{}' >"$EXEC_ROOT/daemon.json"
  # nsenter --net, not ip netns exec: that one remounts /sys, hiding the cgroup hierarchy dockerd needs.
  nsenter --net="/var/run/netns/$NODE2" unshare --uts sh -c "hostname $NODE2 && exec dockerd \
    --config-file $EXEC_ROOT/daemon.json --data-root $DATA_ROOT --exec-root $EXEC_ROOT -H $SOCK \
    --pidfile $EXEC_ROOT/dockerd.pid --containerd-namespace $NODE2 --containerd-plugins-namespace $NODE2-plugins \
    --cgroup-parent /$NODE2 --storage-driver vfs --iptables=false --ip-forward=false --bridge=none --mtu 1400" \
    >"$EXEC_ROOT.log" 2>&1 &
  for _ in $(seq 60); do "${D2[@]}" info >/dev/null 2>&1 && break; sleep 1; done
  "${D2[@]}" info >/dev/null || { tail -20 "$EXEC_ROOT.log" >&2; say "the engine did not start"; exit 1; }
  "${D2[@]}" network create --subnet "$NODE2_GWBRIDGE" \
    --opt com.docker.network.bridge.name=docker_gwbridge \
    --opt com.docker.network.bridge.enable_icc=false \
    --opt com.docker.network.bridge.enable_ip_masquerade=false docker_gwbridge >/dev/null
  if [ -n "$IMAGES" ]; then
    say "copying images: $IMAGES"
    # shellcheck disable=SC2086 # a list of images
    docker save $IMAGES | "${D2[@]}" load -q >/dev/null
  fi
  "${D2[@]}" swarm join --token "$(docker swarm join-token -q worker)" --advertise-addr "$NODE_IP" "$manager:2377"
  say "engine $NODE2 is a swarm worker: docker -H $SOCK"
}

down() {
  local id
  id=$("${D2[@]}" info -f '{{.Swarm.NodeID}}' 2>/dev/null || true)
  "${D2[@]}" swarm leave --force >/dev/null 2>&1 || true
  if [ -n "$id" ]; then
    # The manager sees it leave after a moment; its tasks go to the other nodes.
    for _ in $(seq 30); do
      [ "$(docker node inspect -f '{{.Status.State}}' "$id" 2>/dev/null)" = down ] && break
      sleep 1
    done
    docker node rm --force "$id" >/dev/null 2>&1 || true
  fi
  if [ -f "$EXEC_ROOT/dockerd.pid" ]; then
    local pid
    pid=$(cat "$EXEC_ROOT/dockerd.pid")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
  fi
  ip route del "$NODE2_GWBRIDGE" 2>/dev/null || true
  ip link del "$HOST_IF" 2>/dev/null || true
  ip netns del "$NODE2" 2>/dev/null || true
  # Mounts the engine left behind (container namespaces), then its files.
  grep -oE " ($EXEC_ROOT|$DATA_ROOT)[^ ]*" /proc/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
  rm -rf "$DATA_ROOT" "$EXEC_ROOT" "$EXEC_ROOT.sock" "$EXEC_ROOT.log"
  say "engine $NODE2 stopped and removed"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  *) sed -n '2,14p' "$0" >&2; exit 2 ;;
esac
