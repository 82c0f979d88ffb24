#!/usr/bin/env bash
# The demo: local RabbitMQ + Redis, the Genesys sandbox and the worker. A sample shift handover
# (demo/handover.ndjson, planned first with `plan`), a 200-agent handover as one batch
# (demo/handover-batch.ndjson), some
# interaction changes (demo/interactions.ndjson) and an IVR flow
# release (demo/flows.ndjson, checked first with `validate-flow`) are enqueued,
# each job's outcome is printed from the audit events, the events' hash chains are verified,
# then everything is stopped. Logs and captured events are kept in a temporary directory named
# at the end. Other NDJSON files of jobs may be given as arguments.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. scripts/toolchain.sh
ensure_toolchain
SERVICES_STATE="$(mktemp /tmp/genesys-worker-services-state.XXXXXX)"
export SERVICES_STATE

SANDBOX_PORT="${SANDBOX_PORT:-18088}"
JOBS_FILES=("${@:-demo/handover.ndjson}")
[ "$#" -gt 0 ] || JOBS_FILES=(demo/handover.ndjson demo/handover-batch.ndjson demo/interactions.ndjson demo/flows.ndjson)
LOGS="$(mktemp -d /tmp/genesys-worker-demo.XXXXXX)"
pids=()

cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  scripts/services.sh down
  rm -f "$SERVICES_STATE"
}
trap cleanup EXIT

echo "== building"
cargo build --locked --quiet --bin genesys-worker
cargo build --locked --quiet -p genesys-sandbox
bin=target/debug/genesys-worker
sandbox=target/debug/genesys-sandbox

echo "== starting RabbitMQ and Redis"
scripts/services.sh up

echo "== starting the Genesys sandbox on 127.0.0.1:$SANDBOX_PORT"
"$sandbox" --bind "127.0.0.1:$SANDBOX_PORT" --users 200 >"$LOGS/sandbox.log" 2>&1 &
pids+=("$!")
for _ in $(seq 1 50); do (exec 3<>"/dev/tcp/127.0.0.1/$SANDBOX_PORT") 2>/dev/null && break; sleep 0.1; done

echo "== making the audit log's signing key (genesys-worker audit keygen); auditors get the verifier key"
verifier_key="$("$bin" audit keygen demo.genesys-worker.local --out "$LOGS/audit.key")"
echo "   verifier key: $verifier_key"
export AUDIT_SIGNING_KEY_FILE="$LOGS/audit.key"
export AUDIT_CHECKPOINT_SECS=2

echo "== starting the worker"
export GENESYS_API_BASE="http://127.0.0.1:$SANDBOX_PORT"
export GENESYS_LOGIN_BASE="http://127.0.0.1:$SANDBOX_PORT"
export GENESYS_CLIENT_ID=sandbox-client
export GENESYS_CLIENT_SECRET=sandbox-secret
export FLOW_POLL_MS=200
# A fresh key space per run, so the sample jobs are not duplicates of the last demo's.
export REDIS_KEY_PREFIX="demo:$(date +%s):"
"$bin" run >"$LOGS/worker.log" 2>&1 &
worker_pid=$!
pids=("$worker_pid" "${pids[@]}")
for _ in $(seq 1 100); do grep -q "Consuming jobs" "$LOGS/worker.log" && break; sleep 0.1; done

# An auditor's capture of the audit exchange: every event and every signed checkpoint.
"$bin" audit capture --out "$LOGS/audit-log.ndjson" --until-sealed --idle-secs 3 --timeout-secs 600 \
  2>"$LOGS/capture.log" &
capture_pid=$!

echo "== validating the IVR flow offline, as a CI pipeline would"
"$bin" validate-flow demo/flow-main-ivr.json --max-depth 50 --media-registry <(echo '["prompt-welcome"]')

for file in "${JOBS_FILES[@]}"; do
  if [ "$file" = demo/handover.ndjson ]; then
    # Exit 1 says a job is blocked: the demo enqueues them all the same, to show the outcomes.
    echo "== planning $file first: what each job would do now, read from the sandbox (nothing is changed)"
    "$bin" plan "$file" || echo "   (plan exit $?: 1 = some jobs are blocked; enqueued all the same)"
  fi
  echo "== enqueueing $file; outcomes from the audit exchange (entity and its version):"
  "$bin" enqueue "$file" --wait --timeout-secs 60 --events-out "$LOGS/$(basename "$file" .ndjson).audit.ndjson"
done

echo "== verifying the hash chains of every audit event received"
cat "$LOGS"/*.audit.ndjson | "$bin" audit verify -

echo "== the verifiable audit log: waiting for a signed checkpoint over every event, then verifying with the public key only"
wait "$capture_pid"
"$bin" audit verify --key "$verifier_key" "$LOGS/audit-log.ndjson"
event_id="$(grep -m1 '"outcome":"applied"' "$LOGS/audit-log.ndjson" | sed 's/.*"event_id":"\([^"]*\)".*/\1/')"
echo "== an inclusion proof of event $event_id, checked with nothing but the proof and the key:"
"$bin" audit prove "$event_id" "$LOGS/audit-log.ndjson" > "$LOGS/proof.json"
"$bin" audit check-proof "$LOGS/proof.json" --key "$verifier_key"

admin="${ADMIN_ADDR:-127.0.0.1:9090}"
echo "== the worker's metrics (curl http://$admin/metrics), jobs by kind and outcome:"
if command -v curl >/dev/null; then
  curl -fsS "http://$admin/metrics" | grep '^genesys_worker_jobs_total' || true
fi

echo "== the operators' console: http://$admin/console (the same figures, batches, dead letters, controls)"

echo "== the dead-letter queue (replay after fixing the cause: genesys-worker dlq replay --code CODE):"
"$bin" dlq list --limit 10

echo "== stopping the worker (SIGTERM: finishes in-flight jobs, then closes cleanly)"
kill -TERM "$worker_pid"
wait "$worker_pid" || true
pids=("${pids[@]:1}")
echo "== done; logs in $LOGS"
