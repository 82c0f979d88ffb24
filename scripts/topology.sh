#!/usr/bin/env bash
# Production-like topologies on loopback, without Docker: user processes with their data in a
# private temporary directory, as scripts/services.sh runs its single nodes.
#
#   scripts/topology.sh up rabbit-cluster [DIR]   3 RabbitMQ nodes joined in one cluster
#                                                 (quorum queues get 3 members)
#   scripts/topology.sh up redis-sentinel [DIR]   a Redis primary, one replica and 3 Sentinels
#                                                 (master name "mymaster", quorum 2, a failover
#                                                 within a few seconds of the primary's death)
#   scripts/topology.sh up redis-cluster  [DIR]   a 6-node Redis Cluster: 3 primaries, each
#                                                 with a replica, all 16384 slots covered
#   scripts/topology.sh down DIR                  stops what `up` started there (SIGTERM), removes DIR
#   scripts/topology.sh kill DIR                  the same with SIGKILL (what the tests do)
#
# `up` keeps its data in DIR (default: a new /tmp/genesys-worker-topology.XXXXXX), writes
# DIR/state (key=value lines; a key written again overrides the earlier line) and prints the
# worker's connection settings on stdout as shell assignments, e.g.
#
#   settings="$(scripts/topology.sh up redis-sentinel)" && export $settings
#   ...                                    # REDIS_TOPOLOGY, REDIS_URL, REDIS_SENTINEL_MASTER set
#   scripts/topology.sh down /tmp/genesys-worker-topology.XXXXXX   # DIR, as `up` logged it
#
# Ports are free ones picked here (20000-31999), or consecutive ones from TOPOLOGY_BASE_PORT
# (a rabbit-cluster takes 6: AMQP then distribution; a redis-sentinel 5: primary, replica,
# Sentinels; a redis-cluster 12: client then cluster bus).
#
# Helpers for the test kit (crates/testkit/src/topology.rs), on a DIR that `up` made:
#   scripts/topology.sh start-rabbit DIR I   start RabbitMQ node I (1..3) again on its data: it rejoins
#   scripts/topology.sh start-redis DIR PORT start the redis-server (or Sentinel) of PORT again
#   scripts/topology.sh rabbitmqctl ARGS...  rabbitmqctl as the nodes' user (the same Erlang cookie)
set -euo pipefail

RABBITMQ_SERVER=/usr/lib/rabbitmq/bin/rabbitmq-server
RABBITMQCTL=/usr/lib/rabbitmq/bin/rabbitmqctl
MASTER_NAME=mymaster
# One scheduler per node and no busy waiting: three nodes share two cores with the tests.
RABBIT_ERL_ARGS="+S 1:1 +sbwt none +sbwtdcpu none +sbwtdio none"

log() { printf '[topology] %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

install_missing() {
  local missing=()
  case "$1" in
    rabbit-cluster) [ -x "$RABBITMQ_SERVER" ] || missing+=(rabbitmq-server) ;;
    *)
      command -v redis-server >/dev/null || missing+=(redis-server)
      command -v redis-cli >/dev/null || missing+=(redis-tools)
      ;;
  esac
  if [ "${#missing[@]}" -gt 0 ]; then
    log "installing ${missing[*]} with apt"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

port_answers() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for() { # what, seconds, command...
  local what=$1 secs=$2; shift 2
  local deadline=$((SECONDS + secs))
  until "$@"; do
    if [ "$SECONDS" -ge "$deadline" ]; then log "$what: not ready within ${secs}s"; return 1; fi
    sleep 0.2
  done
}

# N distinct ports, one a line: TOPOLOGY_BASE_PORT, +1, ... or random ones that nothing answers
# on, below the kernel's ephemeral range (so no outgoing connection takes them meanwhile).
PICKED=" "
pick_ports() {
  local n=$1 port
  for _ in $(seq 1 "$n"); do
    if [ -n "${TOPOLOGY_BASE_PORT:-}" ]; then
      port=$((TOPOLOGY_BASE_PORT + $(wc -w <<<"$PICKED")))
      port_answers "$port" && die "port $port (from TOPOLOGY_BASE_PORT) is in use"
    else
      while :; do
        port=$((20000 + RANDOM % 12000))
        case "$PICKED" in *" $port "*) continue ;; esac
        port_answers "$port" || break
      done
    fi
    PICKED="$PICKED$port "
    echo "$port"
  done
}

# --- state ---------------------------------------------------------------------------------

DIR=""
state() { echo "$1=$2" >>"$DIR/state"; }
get() { # the last value of key $1
  local v
  v="$(grep "^$1=" "$DIR/state" | tail -n 1)" || die "$1 is not in $DIR/state"
  echo "${v#*=}"
}

alive() { # pid: running, and not a zombie
  [ -r "/proc/$1/stat" ] && ! grep -q '^[0-9]* (.*) Z ' "/proc/$1/stat" 2>/dev/null
}

# --- RabbitMQ cluster ----------------------------------------------------------------------

RUN_AS=()
rabbit_user() {
  if [ "$(id -u)" = 0 ] && id rabbitmq >/dev/null 2>&1; then
    # The package created the rabbitmq user and its cookie: every node and rabbitmqctl run as
    # that user with that HOME, so they share ~/.erlang.cookie.
    RUN_AS=(runuser -u rabbitmq -- env HOME=/var/lib/rabbitmq)
  else
    RUN_AS=(env)
    local cookie="$HOME/.erlang.cookie"
    if [ ! -f "$cookie" ]; then
      # Made here, before three nodes start at once and race to make it.
      (umask 077 && tr -dc 'ABCDEFGHIJKLMNOPQRSTUVWXYZ' </dev/urandom | head -c 20 >"$cookie") && chmod 400 "$cookie"
    fi
  fi
}

ctl() { "${RUN_AS[@]}" "$RABBITMQCTL" "$@" </dev/null; }

start_rabbit() { # node index; its settings are in the state
  local i=$1 ndir name port dist
  ndir="$(get "rabbit_${i}_dir")"
  name="$(get "rabbit_${i}_name")"
  port="$(get "rabbit_${i}_port")"
  dist="$(get "rabbit_${i}_dist_port")"
  rm -f "$ndir/rabbitmq.pid"
  (
    cd "$ndir"
    exec "${RUN_AS[@]}" \
      RABBITMQ_MNESIA_BASE="$ndir/mnesia" \
      RABBITMQ_LOG_BASE="$ndir/log" \
      RABBITMQ_NODENAME="$name" \
      RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
      RABBITMQ_NODE_PORT="$port" \
      RABBITMQ_DIST_PORT="$dist" \
      RABBITMQ_ENABLED_PLUGINS_FILE="$ndir/enabled_plugins" \
      RABBITMQ_CONFIG_FILE="$ndir/rabbitmq.conf" \
      RABBITMQ_PID_FILE="$ndir/rabbitmq.pid" \
      RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="$RABBIT_ERL_ARGS" \
      ERL_EPMD_ADDRESS=127.0.0.1 \
      "$RABBITMQ_SERVER" </dev/null >>"$ndir/log/stdout.log" 2>&1
  ) &
  state "rabbit_${i}_launcher" "$!"
}

wait_rabbit() { # node index: until its AMQP port answers (the listeners start last)
  local i=$1 port ndir
  port="$(get "rabbit_${i}_port")"
  ndir="$(get "rabbit_${i}_dir")"
  if ! wait_for "rabbitmq node $i" 120 port_answers "$port"; then
    tail -n 30 "$ndir/log/stdout.log" >&2 || true
    return 1
  fi
}

up_rabbit_cluster() {
  rabbit_user
  local ports i first
  mapfile -t ports < <(pick_ports 6)
  for i in 1 2 3; do
    local ndir="$DIR/rabbit-$i"
    mkdir -p "$ndir/mnesia" "$ndir/log"
    : >"$ndir/enabled_plugins"
    # A config of its own (empty: the defaults), so no system-wide one applies.
    : >"$ndir/rabbitmq.conf"
    state "rabbit_${i}_dir" "$ndir"
    state "rabbit_${i}_name" "gw-c${ports[0]}-$i@localhost"
    state "rabbit_${i}_port" "${ports[$((i - 1))]}"
    state "rabbit_${i}_dist_port" "${ports[$((i + 2))]}"
    state "rabbit_${i}_pidfile" "$ndir/rabbitmq.pid"
  done
  if [ "${#RUN_AS[@]}" -gt 1 ]; then chown -R rabbitmq:rabbitmq "$DIR"; fi
  log "starting 3 rabbitmq nodes on ports ${ports[*]:0:3} (data in $DIR)"
  for i in 1 2 3; do start_rabbit "$i"; done
  for i in 1 2 3; do wait_rabbit "$i"; done
  first="$(get rabbit_1_name)"
  local second third
  second="$(get rabbit_2_name)" third="$(get rabbit_3_name)"
  log "joining $second and $third to $first"
  # stop_app and start_app in parallel, join_cluster one node at a time.
  ctl -q -n "$second" stop_app >/dev/null & ctl -q -n "$third" stop_app >/dev/null
  wait "$!"
  ctl -q -n "$second" join_cluster "$first" >/dev/null
  ctl -q -n "$third" join_cluster "$first" >/dev/null
  ctl -q -n "$second" start_app >/dev/null & ctl -q -n "$third" start_app >/dev/null
  wait "$!"
  for i in 2 3; do wait_rabbit "$i"; done
  local running
  running="$(ctl -q -n "$first" eval 'length(rabbit_nodes:all_running()).')"
  [ "$running" = 3 ] || die "the cluster has $running running nodes, not 3"
  local urls=()
  for i in 1 2 3; do urls+=("amqp://guest:guest@127.0.0.1:$(get "rabbit_${i}_port")/%2f"); done
  local joined
  joined="$(IFS=,; echo "${urls[*]}")"
  echo "AMQP_URL=$joined"
}

# --- Redis ---------------------------------------------------------------------------------

redis_conf() { # port, dir (a directory of its own) → its config on stdout
  cat <<EOF
bind 127.0.0.1
port $1
dir $2
daemonize yes
pidfile $2/redis.pid
logfile $2/redis.log
save ""
appendonly no
EOF
}

start_redis() { # port: the node's config is in the state
  local port=$1 conf ndir
  conf="$(get "redis_${port}_conf")"
  ndir="$(dirname "$conf")"
  rm -f "$ndir/redis.pid"
  if [ "$(get "redis_${port}_kind")" = sentinel ]; then
    redis-server "$conf" --sentinel </dev/null >/dev/null 2>&1
  else
    redis-server "$conf" </dev/null >/dev/null 2>&1
  fi
  wait_for "redis on $port" 20 redis_pings "$port"
}

redis_pings() { [ "$(redis-cli -p "$1" PING 2>/dev/null)" = PONG ]; }

redis_node() { # port, kind (redis|sentinel) → a directory and a config of its own
  local port=$1 kind=$2 ndir="$DIR/$2-$1"
  mkdir -p "$ndir"
  redis_conf "$port" "$ndir" >"$ndir/$kind.conf"
  state "redis_${port}_kind" "$kind"
  state "redis_${port}_conf" "$ndir/$kind.conf"
  state "redis_${port}_pidfile" "$ndir/redis.pid"
}

up_redis_sentinel() {
  local ports primary replica s
  mapfile -t ports < <(pick_ports 5)
  primary=${ports[0]} replica=${ports[1]}
  redis_node "$primary" redis
  redis_node "$replica" redis
  echo "replicaof 127.0.0.1 $primary" >>"$DIR/redis-$replica/redis.conf"
  for s in "${ports[@]:2}"; do
    redis_node "$s" sentinel
    # Sentinel rewrites this file as it learns the topology: it must stay writable.
    cat >>"$DIR/sentinel-$s/sentinel.conf" <<EOF
sentinel monitor $MASTER_NAME 127.0.0.1 $primary 2
sentinel down-after-milliseconds $MASTER_NAME 1000
sentinel failover-timeout $MASTER_NAME 5000
sentinel parallel-syncs $MASTER_NAME 1
EOF
  done
  state redis_ports "$primary,$replica"
  state sentinel_ports "$(IFS=,; echo "${ports[*]:2}")"
  state master_name "$MASTER_NAME"
  log "starting redis primary on $primary, replica on $replica, sentinels on ${ports[*]:2} (data in $DIR)"
  start_redis "$primary"
  start_redis "$replica"
  wait_for "replica's link to its primary" 30 replica_linked "$replica"
  for s in "${ports[@]:2}"; do start_redis "$s"; done
  # Ready when every Sentinel knows the replica and the two other Sentinels: a failover then
  # finds its quorum and a replica to promote.
  for s in "${ports[@]:2}"; do wait_for "sentinel $s" 30 sentinel_sees_all "$s"; done
  local urls=()
  for s in "${ports[@]:2}"; do urls+=("redis://127.0.0.1:$s"); done
  echo "REDIS_TOPOLOGY=sentinel REDIS_URL=$(IFS=,; echo "${urls[*]}") REDIS_SENTINEL_MASTER=$MASTER_NAME"
}

replica_linked() { redis-cli -p "$1" INFO replication 2>/dev/null | grep -q 'master_link_status:up'; }

sentinel_sees_all() {
  local info
  info="$(redis-cli -p "$1" SENTINEL master "$MASTER_NAME" 2>/dev/null)" || return 1
  grep -A1 -x 'num-slaves' <<<"$info" | tail -n 1 | grep -qx 1 &&
    grep -A1 -x 'num-other-sentinels' <<<"$info" | tail -n 1 | grep -qx 2
}

up_redis_cluster() {
  local ports p i
  # Six client ports, then their cluster bus ports (named: the default, port + 10000, may be taken).
  mapfile -t ports < <(pick_ports 12)
  for i in 0 1 2 3 4 5; do
    p=${ports[$i]}
    redis_node "$p" redis
    cat >>"$DIR/redis-$p/redis.conf" <<EOF
cluster-enabled yes
cluster-port ${ports[$((i + 6))]}
cluster-config-file $DIR/redis-$p/nodes.conf
cluster-node-timeout 1000
cluster-replica-validity-factor 0
EOF
  done
  ports=("${ports[@]:0:6}")
  state cluster_ports "$(IFS=,; echo "${ports[*]}")"
  log "starting a redis cluster on ${ports[*]} (data in $DIR)"
  for p in "${ports[@]}"; do start_redis "$p"; done
  local addrs=()
  for p in "${ports[@]}"; do addrs+=("127.0.0.1:$p"); done
  redis-cli --cluster create "${addrs[@]}" --cluster-replicas 1 --cluster-yes >"$DIR/cluster-create.log" 2>&1 ||
    { cat "$DIR/cluster-create.log" >&2; die "redis-cli --cluster create failed"; }
  wait_for "redis cluster" 60 cluster_ready "${ports[@]}"
  local urls=()
  for p in "${ports[@]}"; do urls+=("redis://127.0.0.1:$p"); done
  echo "REDIS_TOPOLOGY=cluster REDIS_URL=$(IFS=,; echo "${urls[*]}")"
}

cluster_ready() { # ports: every node says ok and every primary with slots has a replica
  local p masters replicas
  for p in "$@"; do
    redis-cli -p "$p" CLUSTER INFO 2>/dev/null | grep -q 'cluster_state:ok' || return 1
    if redis-cli -p "$p" ROLE | head -n 1 | grep -qx slave; then replica_linked "$p" || return 1; fi
  done
  masters="$(redis-cli -p "$1" CLUSTER NODES | awk '$3 ~ /master/ && $3 !~ /fail/ && NF > 8 {print $1}' | sort)"
  replicas="$(redis-cli -p "$1" CLUSTER NODES | awk '$3 ~ /slave/ && $3 !~ /fail/ && $8 == "connected" {print $4}' | sort -u)"
  [ -n "$masters" ] && [ "$masters" = "$replicas" ]
}

# --- up / down -----------------------------------------------------------------------------

up() {
  local topology=${1:-} dir=${2:-}
  case "$topology" in rabbit-cluster | redis-sentinel | redis-cluster) ;; *) usage ;; esac
  install_missing "$topology"
  if [ -n "$dir" ]; then
    [ ! -e "$dir/state" ] || die "$dir/state exists: a topology runs there (scripts/topology.sh down $dir)"
    # `down` removes DIR: it must hold nothing else.
    [ ! -e "$dir" ] || [ -z "$(ls -A "$dir")" ] || die "$dir is not empty"
    mkdir -p "$dir"
    DIR="$(cd "$dir" && pwd)"
  else
    DIR="$(mktemp -d /tmp/genesys-worker-topology.XXXXXX)"
  fi
  chmod 755 "$DIR"
  state topology "$topology"
  state dir "$DIR"
  # A topology that does not come up is taken down again.
  trap 'log "failed: stopping what started (logs were in $DIR)"; stop KILL' EXIT
  case "$topology" in
    rabbit-cluster) up_rabbit_cluster ;;
    redis-sentinel) up_redis_sentinel ;;
    redis-cluster) up_redis_cluster ;;
  esac
  trap - EXIT
  log "ready (state in $DIR/state; stop with: scripts/topology.sh down $DIR)"
}

stop() { # signal
  local signal=$1 pids=() pid file
  # The servers' own pids (the Erlang VM for RabbitMQ), then the launchers.
  while IFS= read -r file; do
    [ -f "$file" ] && pids+=("$(cat "$file")")
  done < <(grep -E '_pidfile=' "$DIR/state" | cut -d= -f2- | sort -u)
  while IFS= read -r pid; do pids+=("$pid"); done < <(grep -E '_launcher=' "$DIR/state" | cut -d= -f2-)
  for pid in "${pids[@]}"; do
    if alive "$pid"; then kill "-$signal" "$pid" 2>/dev/null || true; fi
  done
  for pid in "${pids[@]}"; do
    local deadline=$((SECONDS + 20))
    while alive "$pid" && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.1; done
    if alive "$pid"; then kill -KILL "$pid" 2>/dev/null || true; fi
  done
  rm -rf "$DIR"
}

down() { # signal, dir
  [ -n "${2:-}" ] || usage
  [ -f "$2/state" ] || die "$2/state is missing: nothing of scripts/topology.sh runs there"
  DIR="$(cd "$2" && pwd)"
  stop "$1"
}

usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' >&2
  exit 2
}

case "${1:-}" in
  up) shift; up "$@" ;;
  down) down TERM "${2:-}" ;;
  kill) down KILL "${2:-}" ;;
  start-rabbit)
    if [ ! -f "${2:-}/state" ] || [ -z "${3:-}" ]; then usage; fi
    DIR="$(cd "$2" && pwd)"
    rabbit_user
    start_rabbit "$3"
    wait_rabbit "$3"
    ;;
  start-redis)
    if [ ! -f "${2:-}/state" ] || [ -z "${3:-}" ]; then usage; fi
    DIR="$(cd "$2" && pwd)"
    start_redis "$3"
    ;;
  rabbitmqctl) shift; rabbit_user; ctl "$@" ;;
  *) usage ;;
esac
