#!/usr/bin/env bash
# Local RabbitMQ and Redis on loopback, for the demo and the tests; Chromium and chromedriver
# installed (not started: the browser tests start their own chromedriver).
#
#   scripts/services.sh up     install (apt) if missing, start what is not already answering
#   scripts/services.sh down   stop only what `up` started
#   scripts/services.sh status
#
# SERVICES_STATE names the file where `up` records what it started (default .services/state).
#
# Servers run as user processes with their data in a private temporary directory;
# nothing touches the system services. Ports: RABBITMQ_PORT (5672), REDIS_PORT (6379).
set -euo pipefail

RABBITMQ_PORT="${RABBITMQ_PORT:-5672}"
REDIS_PORT="${REDIS_PORT:-6379}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# What `up` started, for `down` to stop. Scripts pass a file of their own, so their `down` never
# stops services that someone else started.
STATE_FILE="${SERVICES_STATE:-$ROOT/.services/state}"

log() { printf '[services] %s\n' "$*" >&2; }

port_answers() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

redis_answers() {
  # A port that answers is not enough: it must be Redis.
  (exec 3<>"/dev/tcp/127.0.0.1/$REDIS_PORT" && printf 'PING\r\n' >&3 && timeout 2 head -c 5 <&3 | grep -q PONG) 2>/dev/null
}

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

install_missing() {
  local missing=()
  [ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || missing+=(rabbitmq-server)
  command -v redis-server >/dev/null || missing+=(redis-server)
  # The TLS test makes its certificates with openssl.
  command -v openssl >/dev/null || missing+=(openssl)
  # The browser tests drive a headless Chromium through chromedriver, which the test kit starts
  # itself (unless CHROMEDRIVER_URL names one already running, which brings its own browser).
  if [ -z "${CHROMEDRIVER_URL:-}" ]; then
    command -v chromedriver >/dev/null || missing+=(chromium-driver)
    [ -x "${CHROME_BIN:-/usr/bin/chromium}" ] || missing+=(chromium)
  fi
  if [ "${#missing[@]}" -gt 0 ]; then
    log "installing ${missing[*]} with apt"
    as_root apt-get update -qq
    # policy-rc.d keeps apt from starting the system services we do not use.
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

wait_for() { # name, seconds, command...
  local name=$1 secs=$2; shift 2
  local deadline=$((SECONDS + secs))
  until "$@"; do
    if [ "$SECONDS" -ge "$deadline" ]; then log "$name did not answer within ${secs}s"; return 1; fi
    sleep 0.2
  done
}

start_redis() {
  local dir=$1
  redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --dir "$dir/redis" --daemonize yes \
    --pidfile "$dir/redis/redis.pid" --logfile "$dir/redis/redis.log" --save '' --appendonly no
  wait_for redis 20 redis_answers
  echo "redis_pid=$(cat "$dir/redis/redis.pid")" >>"$STATE_FILE"
}

start_rabbitmq() {
  local dir=$1 node="genesys-worker-$RABBITMQ_PORT@localhost" run_as=()
  mkdir -p "$dir/rabbitmq/mnesia" "$dir/rabbitmq/log"
  : >"$dir/rabbitmq/enabled_plugins"
  if [ "$(id -u)" = 0 ] && id rabbitmq >/dev/null 2>&1; then
    chown -R rabbitmq:rabbitmq "$dir/rabbitmq"
    # HOME holds the Erlang cookie; the package created one for the rabbitmq user.
    run_as=(runuser -u rabbitmq -- env HOME=/var/lib/rabbitmq)
  fi
  (
    cd "$dir/rabbitmq"
    # runuser's PAM session lowers the soft limit of open files to 1024. Each quorum queue holds
    # files open, and a broker out of file handles stops answering new connections (the AMQP
    # handshake hangs): raise it as far as the hard limit allows.
    exec "${run_as[@]}" sh -c 'ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"; exec "$@"' sh env \
      RABBITMQ_MNESIA_BASE="$dir/rabbitmq/mnesia" \
      RABBITMQ_LOG_BASE="$dir/rabbitmq/log" \
      RABBITMQ_NODENAME="$node" \
      RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
      RABBITMQ_NODE_PORT="$RABBITMQ_PORT" \
      RABBITMQ_DIST_PORT=$((RABBITMQ_PORT + 20000)) \
      RABBITMQ_ENABLED_PLUGINS_FILE="$dir/rabbitmq/enabled_plugins" \
      RABBITMQ_PID_FILE="$dir/rabbitmq/rabbitmq.pid" \
      ERL_EPMD_ADDRESS=127.0.0.1 \
      /usr/lib/rabbitmq/bin/rabbitmq-server >"$dir/rabbitmq/log/stdout.log" 2>&1
  ) &
  echo "rabbitmq_pid=$!" >>"$STATE_FILE"
  echo "rabbitmq_pidfile=$dir/rabbitmq/rabbitmq.pid" >>"$STATE_FILE"
  if ! wait_for rabbitmq 90 port_answers "$RABBITMQ_PORT"; then
    tail -n 30 "$dir/rabbitmq/log/stdout.log" >&2 || true
    return 1
  fi
}

up() {
  install_missing
  mkdir -p "$(dirname "$STATE_FILE")"
  local dir=""
  if redis_answers; then log "redis already answering on 127.0.0.1:$REDIS_PORT: reusing it"; fi
  if port_answers "$RABBITMQ_PORT"; then log "rabbitmq already answering on 127.0.0.1:$RABBITMQ_PORT: reusing it"; fi
  if ! redis_answers || ! port_answers "$RABBITMQ_PORT"; then
    dir="$(mktemp -d /tmp/genesys-worker-services.XXXXXX)"
    chmod 755 "$dir"
    mkdir -p "$dir/redis"
    echo "dir=$dir" >>"$STATE_FILE"
  fi
  if ! redis_answers; then log "starting redis on 127.0.0.1:$REDIS_PORT"; start_redis "$dir"; fi
  if ! port_answers "$RABBITMQ_PORT"; then log "starting rabbitmq on 127.0.0.1:$RABBITMQ_PORT (data in $dir)"; start_rabbitmq "$dir"; fi
  log "ready: AMQP_URL=amqp://guest:guest@127.0.0.1:$RABBITMQ_PORT/%2f REDIS_URL=redis://127.0.0.1:$REDIS_PORT/"
}

kill_and_wait() { # pid, name
  local pid=$1
  kill -0 "$pid" 2>/dev/null || return 0
  log "stopping $2 (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
}

down() {
  [ -f "$STATE_FILE" ] || { log "nothing started by this script"; return 0; }
  local redis_pid="" rabbitmq_pid="" rabbitmq_pidfile="" dirs=()
  while IFS='=' read -r key value; do
    case "$key" in
      redis_pid) redis_pid=$value ;;
      rabbitmq_pid) rabbitmq_pid=$value ;;
      rabbitmq_pidfile) rabbitmq_pidfile=$value ;;
      dir) dirs+=("$value") ;;
    esac
  done <"$STATE_FILE"
  [ -n "$redis_pid" ] && kill_and_wait "$redis_pid" redis
  if [ -n "$rabbitmq_pidfile" ] && [ -f "$rabbitmq_pidfile" ]; then
    kill_and_wait "$(cat "$rabbitmq_pidfile")" rabbitmq
  fi
  [ -n "$rabbitmq_pid" ] && kill_and_wait "$rabbitmq_pid" "rabbitmq wrapper"
  for d in "${dirs[@]}"; do case "$d" in /tmp/genesys-worker-services.*) rm -rf "$d" ;; esac; done
  rm -f "$STATE_FILE"
}

status() {
  if redis_answers; then echo "redis: answering on 127.0.0.1:$REDIS_PORT"; else echo "redis: down"; fi
  if port_answers "$RABBITMQ_PORT"; then echo "rabbitmq: answering on 127.0.0.1:$RABBITMQ_PORT"; else echo "rabbitmq: down"; fi
  if command -v chromedriver >/dev/null; then echo "chromedriver: $(command -v chromedriver)"; else echo "chromedriver: not installed"; fi
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
