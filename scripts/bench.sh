#!/usr/bin/env bash
# The throughput benchmark suite (not a test): starts RabbitMQ and Redis on loopback when not
# already running, builds the release binary, and runs benches/throughput.rs, which starts the
# sandbox and worker processes itself. Prints a table; writes target/bench/throughput.json.
# Arguments go to the suite: --quick (smaller sizes, one run), --runs N, --only a,b
# (plumbing, bulk-off, bulk-on, durability, fidelity, handover, backlog). `durability` starts a
# Redis primary + replica + 3 Sentinels of its own (scripts/topology.sh) and drains the bulk-off
# workload with REDIS_WAIT_REPLICAS=0 and =1 alternately.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. scripts/toolchain.sh
ensure_toolchain
SERVICES_STATE="$(mktemp /tmp/genesys-worker-services-state.XXXXXX)"
export SERVICES_STATE

scripts/services.sh up
trap 'scripts/services.sh down; rm -f "$SERVICES_STATE"' EXIT
# The bench starts the simulator as a process of its own, from the binary beside the worker's.
cargo build --locked --release -p genesys-sandbox
cargo bench --locked --bench throughput -- "$@"
