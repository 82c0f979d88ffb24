//! Integration tests against real RabbitMQ and Redis servers and the in-process sandbox.
//!
//! Start the servers with `scripts/services.sh up` (or run `scripts/test.sh`, which does it).
//! Every test uses its own exchange, queue and Redis key names, so tests run in parallel on one
//! broker and one Redis.

mod acks;
mod agent_status;
mod audit_log;
mod batch;
mod browser;
mod budget;
mod bulk;
mod call_gate;
mod conformance;
mod console_api;
mod console_browser;
mod controls;
mod dead_letters;
mod deploy;
mod enqueue;
mod flows;
mod genesys_client;
mod helpers;
mod hostile;
mod idempotency;
mod ingest;
mod interactions;
mod keys;
mod operations;
mod ordering;
mod plan;
mod pool;
mod presence_policies;
mod processes;
mod relay;
mod retries;
mod sandbox_api;
mod sandbox_behaviour;
mod sandbox_limits;
mod sandbox_profiles;
mod schemas;
mod tls;
mod verifiable_log;
mod worker;
