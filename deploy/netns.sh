#!/usr/bin/env bash
# Multi-host without Docker: three network namespaces on one machine stand in for three hosts.
#
#   <prefix>-a  10.231.0.1   nats-a + frontend (:8000)
#   <prefix>-b  10.231.0.2   nats-b + mocker workers
#   <prefix>-c  10.231.0.3   nats-c + mocker workers
#
# The namespaces hang off one bridge (<prefix>-br, 10.231.0.254 on this host, so this host can reach them).
# Each NATS node runs deploy/nats/cluster.conf (the compose file's config) with per-node flags; every process
# talks only to the NATS node in its own namespace, so each request crosses the cluster routes.
#
# usage: deploy/netns.sh [demo|up|down]
#   demo (default)  up, one chat completion per worker namespace through the frontend, down
#   up              start everything and leave it running; state (PIDs, logs) in $DM_NETNS_STATE
#   down            stop what `up` started (by PID), delete the namespaces and the bridge
# env:  DM_NETNS_PREFIX  name prefix, <= 8 chars (default dm)      DM_NETNS_SUBNET  first three octets (10.231.0)
#       DM_NETNS_STATE   state dir (/tmp/diffmesh-netns-<prefix>)   DM_NETNS_WORKERS mockers per worker namespace (1)
#       DIFFMESH         the diffmesh command (diffmesh on PATH)   NATS_SERVER      nats-server (next to DIFFMESH, else PATH)
# exit: 0 ok, 1 failure, 77 network namespaces cannot be made here (the reason is printed)
set -euo pipefail

PREFIX=${DM_NETNS_PREFIX:-dm}
SUBNET=${DM_NETNS_SUBNET:-10.231.0}
STATE=${DM_NETNS_STATE:-/tmp/diffmesh-netns-$PREFIX}
NUM_WORKERS=${DM_NETNS_WORKERS:-1}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CONF=$HERE/nats/cluster.conf
NODES=(a b c)
BRIDGE=$PREFIX-br

log() { echo "netns: $*" >&2; }
ip_of() { case $1 in a) echo "$SUBNET.1" ;; b) echo "$SUBNET.2" ;; c) echo "$SUBNET.3" ;; esac; }

find_commands() {
  DIFFMESH=${DIFFMESH:-$(command -v diffmesh || true)}
  [[ -x $DIFFMESH ]] || { log "diffmesh not found (set DIFFMESH)"; exit 1; }
  NATS_SERVER=${NATS_SERVER:-$(dirname "$DIFFMESH")/nats-server}
  [[ -x $NATS_SERVER ]] || NATS_SERVER=$(command -v nats-server || true)
  [[ -x $NATS_SERVER ]] || { log "nats-server not found (set NATS_SERVER)"; exit 1; }
}

# Exit 77 with a reason where namespaces, veths or bridges cannot be made (not root, no iproute2, no CAP_NET_ADMIN).
require_namespaces() {
  local probe=$PREFIX-probe$$
  [[ $(id -u) -eq 0 ]] || { echo "skip: network namespaces need root (uid is $(id -u))"; exit 77; }
  command -v ip >/dev/null || { echo "skip: iproute2 ('ip') is not installed"; exit 77; }
  command -v curl >/dev/null || { echo "skip: curl is not installed"; exit 77; }
  if ! err=$(ip netns add "$probe" 2>&1); then echo "skip: cannot create a network namespace: $err"; exit 77; fi
  if ! err=$(ip link add "${PREFIX}pb$$" type bridge 2>&1); then
    ip netns del "$probe"; echo "skip: cannot create a bridge: $err"; exit 77
  fi
  ip link del "${PREFIX}pb$$"; ip netns del "$probe"
}

make_network() {
  ip link add "$BRIDGE" type bridge
  ip addr add "$SUBNET.254/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  for node in "${NODES[@]}"; do
    local ns=$PREFIX-$node
    ip netns add "$ns"
    ip link add "$PREFIX-$node" type veth peer name eth0 netns "$ns"
    ip link set "$PREFIX-$node" master "$BRIDGE" up
    ip -n "$ns" addr add "$(ip_of "$node")/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" link set lo up
  done
}

# start_in NODE NAME [ENV=VALUE...] COMMAND...: a process in the node's namespace, PID and log in $STATE.
start_in() {
  local node=$1 name=$2
  shift 2
  ip netns exec "$PREFIX-$node" env "$@" </dev/null >"$STATE/$name.log" 2>&1 &
  echo $! >"$STATE/$name.pid"
}

all_alive() {  # every process started so far still runs; else show the log of the one that exited
  for file in "$STATE"/*.pid; do
    [[ -e $file ]] || continue
    if ! kill -0 "$(cat "$file")" 2>/dev/null; then
      log "$(basename "$file" .pid) exited:"; tail -n 20 "${file%.pid}.log" >&2; return 1
    fi
  done
}

wait_until() {  # wait_until SECONDS DESCRIPTION COMMAND...
  local seconds=$1 what=$2
  shift 2
  local deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    if [[ $what != *disappear* ]] && ! all_alive; then return 1; fi
    if ((SECONDS >= deadline)); then log "timed out after ${seconds}s waiting for $what"; return 1; fi
    sleep 0.2
  done
}

cluster_ready() {
  for node in "${NODES[@]}"; do
    curl -sf "http://$(ip_of "$node"):8222/healthz?js-enabled-only=true" || return 1
    curl -sf "http://$(ip_of "$node"):8222/jsz" | grep -q '"leader"' || return 1
  done
}

models_ready() {  # models_ready N: N workers registered and live at the frontend
  curl -sf "http://$SUBNET.1:8000/v1/models" | grep -Eq "\"workers\":$1[,}]"
}

start_nats() {
  local routes="nats://$SUBNET.1:6222,nats://$SUBNET.2:6222,nats://$SUBNET.3:6222"
  for node in "${NODES[@]}"; do
    local addr
    addr=$(ip_of "$node")
    mkdir -p "$STATE/js-$node"
    start_in "$node" "nats-$node" "$NATS_SERVER" -c "$CONF" --name "nats-$node" --routes "$routes" \
      -sd "$STATE/js-$node" --cluster_advertise "$addr:6222" --client_advertise "$addr:4222"
  done
}

start_worker() {  # start_worker NODE INDEX: a mocker talking to the NATS node of its own namespace
  start_in "$1" "mocker-$1$2" DIFFMESH_NATS_URL="nats://$(ip_of "$1"):4222" DIFFMESH_JS_REPLICAS=3 \
    "$DIFFMESH" --log-format json worker mocker --worker-id "mocker-$1$2"
}

start_mesh() {
  start_in a frontend DIFFMESH_NATS_URL="nats://$SUBNET.1:4222" DIFFMESH_HOST=0.0.0.0 DIFFMESH_PORT=8000 \
    "$DIFFMESH" --log-format json frontend
  # The first worker creates the R3 registry buckets. On a fresh cluster its first read can time out before the
  # stream leader is elected and the worker exits; like a supervisor (compose `restart:`), start it once more.
  start_worker b 1
  if ! wait_until 120 "the first worker" models_ready 1; then
    log "starting mocker-b1 again"
    kill -KILL "$(cat "$STATE/mocker-b1.pid")" 2>/dev/null || true
    start_worker b 1
    wait_until 120 "the first worker" models_ready 1
  fi
  for node in b c; do
    for i in $(seq 1 "$NUM_WORKERS"); do
      [[ $node$i == b1 ]] || start_worker "$node" "$i"
    done
  done
}

up() {
  require_namespaces
  find_commands
  if ip netns list | grep -q "^$PREFIX-a\b"; then log "$PREFIX-a exists: run '$0 down' first"; exit 1; fi
  mkdir -p "$STATE"
  make_network
  start_nats
  wait_until 60 "the NATS cluster (3 nodes, JetStream meta leader)" cluster_ready
  start_mesh
  wait_until 120 "$((2 * NUM_WORKERS)) workers at the frontend" models_ready $((2 * NUM_WORKERS))
  echo "frontend http://$SUBNET.1:8000  nats nats://$SUBNET.1:4222,nats://$SUBNET.2:4222,nats://$SUBNET.3:4222  state $STATE"
}

stop_pids() {
  local pids=()
  for file in "$STATE"/*.pid; do
    [[ -e $file ]] && pids+=("$(cat "$file")")
  done
  ((${#pids[@]})) || return 0
  kill -TERM "${pids[@]}" 2>/dev/null || true
  local deadline=$((SECONDS + 15))
  for pid in "${pids[@]}"; do
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
}

down() {
  [[ -d $STATE ]] && stop_pids
  for node in "${NODES[@]}"; do
    ip netns del "$PREFIX-$node" 2>/dev/null || true
  done
  ip link del "$BRIDGE" 2>/dev/null || true
  # veth ends vanish asynchronously once their namespace is gone
  wait_until 10 "veths to disappear" bash -c "! ip -o link show | grep -q ': $PREFIX-[abc]@'"
  [[ ${DM_NETNS_KEEP_STATE:-0} == 1 ]] || rm -rf "$STATE"
}

demo() {
  trap down EXIT
  up
  for node in b c; do
    echo "--- via the frontend in $PREFIX-a to mocker-${node}1 in $PREFIX-$node"
    curl -sf "http://$SUBNET.1:8000/v1/chat/completions" -H 'Content-Type: application/json' \
      -d "{\"model\": \"mocker\", \"max_tokens\": 8, \"nvext\": {\"worker_id\": \"mocker-${node}1\"},
           \"messages\": [{\"role\": \"user\", \"content\": \"Hello across namespaces\"}]}"
    echo
  done
}

case ${1:-demo} in
  demo) demo ;;
  up) up ;;
  down) down ;;
  *) echo "usage: $0 [demo|up|down]" >&2; exit 2 ;;
esac
