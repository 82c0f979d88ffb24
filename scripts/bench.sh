#!/usr/bin/env bash
# The throughput benchmark suite (not a test): starts RabbitMQ and Redis on loopback when not
# already running, builds the release binary, and runs benches/throughput.rs, which starts the
# sandbox and worker processes itself. Prints a table; writes target/bench/throughput.json.
# Arguments go to the suite: --quick (smaller sizes, one run), --runs N, --only a,b
# (plumbing, bulk-off, bulk-on, single, durability, fidelity, handover, backlog; pool-status,
# pool-handover, handover-policies and audit-log, below, only when named). `durability` starts a
# Redis primary + replica + 3 Sentinels of its own (scripts/topology.sh) and drains the bulk-off
# workload with REDIS_WAIT_REPLICAS=0 and =1 alternately.
#
# Two scenarios run only when --only names them (about 3 minutes together, which would take the
# default suite of about 7 to 10), once each whatever --runs says, and measure the OAuth client pool
# (GENESYS_CLIENTS) against one client, the sandbox allowing 5 requests/s (burst 10) per client and
# the worker's budget 5/s per client:
#   pool-status    10,000 queued interaction.status jobs with 1 client, then 3: jobs/s and Genesys
#                  calls/s over a steady window (5 s after the first outcome, then 45 s; 15 s with
#                  --quick), the 3:1 ratio (target >= 2.8x), the share of 429s, calls per client;
#                  16 jobs in flight (BENCH_POOL_CONCURRENCY: with more, jobs finish in waves
#                  that a 45 s window cuts unevenly; see benches/throughput.rs)
#   pool-handover  the handover (10,000 agents as one batch) with 1 client, then 3: wall seconds,
#                  the speed-up (target >= 2.8x), API calls, 429s, calls per client
# e.g. scripts/bench.sh --only pool-status,pool-handover
#
# `handover-policies` (only when named, about 2 minutes): the handover as write-only jobs, then
# with the presence policies at their defaults (each agent's state read first, 100 agents a
# read): API calls of each and their ratio (target <= 1.5x). The other drains and the handover
# use write-only jobs, the same work as the plumbing's.
#
# `audit-log` (only when named, about 4 minutes): the bulk-off and bulk-on drains with the
# verifiable audit log off (AUDIT_LOG=off) and on (signed checkpoints), alternating per run:
# jobs/s on against off (target >= 0.95), Redis commands per job, and the log's Redis keys once
# the sealer caught up (bytes; leaves not yet sealed).
#
# `single` publishes jobs one at a time (each once the previous one's audit event arrived): the
# latency of a job with no company, publish to audit event and the worker's own latency_ms
# (300 jobs a run; BENCH_SINGLE_JOBS=N for more).
#
# BENCH_BASELINE_WORKER_BIN=PATH names an earlier worker build measured in the same run: bulk-off,
# bulk-on (reported as bulk-off@base, bulk-on@base, run after run beside this build's) and single.
# For example, the build before group commit:
#   git worktree add /tmp/base 2e3dad9 && (cd /tmp/base && CARGO_TARGET_DIR=/tmp/base-target cargo build --release --bin genesys-worker)
#   BENCH_BASELINE_WORKER_BIN=/tmp/base-target/release/genesys-worker scripts/bench.sh --only plumbing,bulk-off,bulk-on,single
#
# BENCH_CONCURRENCY=N: jobs in flight in the drains, the plumbing's and the worker's alike (64;
# prefetch twice that). The plumbing is bound by CPU at 64 already; the worker, whose jobs wait
# for company (group commit, bulk calls), by latency until many more are in flight.
#
# Each drain reports the CPU of every process involved (worker, the bench's audit reader, RabbitMQ,
# Redis, sandbox) and Redis's commands per job (INFO commandstats). Shared services count other
# clients' load too (the bench names such clients); BENCH_PRIVATE_SERVICES=1 starts a RabbitMQ and
# a Redis of the bench's own on other ports (BENCH_RABBITMQ_PORT, 5682; BENCH_REDIS_PORT, 6389),
# stopped at the end.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. scripts/toolchain.sh
ensure_toolchain
if [ "${BENCH_PRIVATE_SERVICES:-0}" = 1 ]; then
  export RABBITMQ_PORT="${BENCH_RABBITMQ_PORT:-5682}" REDIS_PORT="${BENCH_REDIS_PORT:-6389}"
  export AMQP_URL="amqp://guest:guest@127.0.0.1:$RABBITMQ_PORT/%2f" REDIS_URL="redis://127.0.0.1:$REDIS_PORT/"
fi
SERVICES_STATE="$(mktemp /tmp/genesys-worker-services-state.XXXXXX)"
export SERVICES_STATE

scripts/services.sh up
trap 'scripts/services.sh down; rm -f "$SERVICES_STATE"' EXIT
# The bench starts the simulator as a process of its own, from the binary beside the worker's.
cargo build --locked --release -p genesys-sandbox
cargo bench --locked --bench throughput -- "$@"
