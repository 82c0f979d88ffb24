//! genesys-worker: applies change requests to Genesys Cloud reliably and within its rate limits.
//!
//! # Layout
//!
//! Modules follow the pipeline (docs/architecture.md, section 1), in the order a job passes through them:
//!
//! - [`intake`]: consumes the two lanes' queues (single jobs, batch children) with manual acks;
//!   acks, parks in a retry queue or dead-letters each job last, and stops consuming while Redis
//!   is down.
//! - [`job`]: stage 1, decode and validate the message ([`flow`] validates IVR graphs).
//! - stage 2, dedupe: the idempotency records, leases and takeover are Redis's, in
//!   [`store`] (`store/claim.rs`, the claim script).
//! - [`order`]: stage 3, the sequence rule (`superseded`, `expired`); the per-entity lock is
//!   `store/entity.rs`.
//! - [`limit`]: stage 4, the local and fleet-wide token buckets every Genesys call waits on,
//!   shared by the lanes by weight (fair share).
//! - [`apply`]: stage 5, one module per job kind, over the [`genesys`] client; [`retry`] is the
//!   retry policy; [`apply::bulk`] coalesces presence changes. A `batch` is not applied but
//!   fanned out into the batch lane by [`batch`], which also keeps its progress and summary.
//! - [`record`]: stage 6, the hash chain link an outcome's event becomes; `store/commit.rs`
//!   records it with the entity's version in one script.
//! - [`broker`]: stage 7, the topology and confirmed publishing of events and dead letters.
//! - [`pipeline`]: runs one job through the stages and returns what to do with the delivery.
//! - [`worker`]: wires the stages together and keeps the broker connection: `run(config, shutdown)`.
//!
//! Around it: [`admin`] (`/metrics`, `/healthz`, `/readyz`), [`telemetry`] (logs and the
//! metric names), [`ingest`] (`POST /v1/jobs`), [`audit`] (`audit verify`), [`config`],
//! [`events`] (the consumers' contract), [`store`] (Redis in one room: a file per script family, claim, entity, commit, batch, budget), [`canonical`] (canonical JSON),
//! [`bounded`] (bounds on texts from producers), [`http`] (`Retry-After`),
//! [`enqueue`] (the producer CLI), [`dlq`] (`dlq list|replay`) and [`relay`] (events to webhooks).
//! [`tools`]: the binary's subcommands, one front end each (arguments, output, exit code).
//! The Genesys Cloud simulator the tests and the demo use is a crate of its own,
//! `crates/genesys-sandbox`.

pub mod admin;
pub mod apply;
pub mod audit;
pub mod batch;
pub mod bounded;
pub mod broker;
pub mod canonical;
pub mod cli;
pub mod config;
pub mod console;
pub mod control;
pub mod dlq;
pub mod enqueue;
pub mod events;
pub mod flow;
pub mod genesys;
pub mod http;
pub mod ingest;
pub mod intake;
pub mod job;
pub mod lane;
pub mod limit;
pub mod order;
pub mod pipeline;
pub mod plan;
pub mod record;
pub mod relay;
pub mod retry;
pub mod store;
pub mod telemetry;
pub mod tools;
pub mod worker;
