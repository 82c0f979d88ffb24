#!/usr/bin/env bash
# The whole test suite: unit tests; integration tests against real RabbitMQ and Redis servers
# (started on loopback when not already running, stopped afterwards) and the in-process Genesys
# sandbox; and the sandbox's conformance with the official Genesys Python SDK (in .venv, created
# here). Extra arguments go to `cargo test` (e.g. a test name filter).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. scripts/toolchain.sh
ensure_toolchain
ensure_conformance_venv
SERVICES_STATE="$(mktemp /tmp/genesys-worker-services-state.XXXXXX)"
export SERVICES_STATE

scripts/services.sh up
trap 'scripts/services.sh down; rm -f "$SERVICES_STATE"' EXIT
cargo test --locked --workspace "$@"
