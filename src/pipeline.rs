//! One job through the stages: decode → dedupe → order (entity lock, sequence, expiry) → apply
//! → record → publish.
//!
//! [`Pipeline::process`] returns what to do with the delivery ([`Disposition`]); the intake acks,
//! parks it in a retry queue (a transient failure that is not final yet: no outcome recorded or
//! announced) or dead-letters it, always after the events here were confirmed. An `Err` means the
//! worker's own infrastructure (Redis, the broker) failed: the job was not finished and must be
//! delivered again.

use std::sync::Arc;
use std::time::Instant;

use lapin::BasicProperties;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::apply::bulk::BulkPresence;
use crate::apply::flow_deploy::FlowSettings;
use crate::apply::users::UserReads;
use crate::apply::{self, Verdict};
use crate::batch::{self, FanOutError, BATCH_ID_HEADER, BATCH_INDEX_HEADER};
use crate::broker::publisher::{header_count, header_text};
use crate::broker::{topology, BrokerError, Publisher};
use crate::config::Topology;
use crate::control::{Action, Control, Controls, JobTags};
use crate::events::{AuditEvent, ErrorDetails, EventError, OutboundEvent, Outcome};
use crate::genesys::{CallGate, GenesysClient};
use crate::job::{self, DecodeError, Job, Payload};
use crate::lane::Lane;
use crate::order;
use crate::record::{self, EntityHead};
use crate::retry::RetryPolicy;
use crate::store::{Claim, EntityState, Lease};
use crate::store::{Store, StoreError};
use crate::telemetry::{self, RetryStage};

/// A delivery as the pipeline sees it.
#[derive(Debug, Clone, Copy)]
pub struct Incoming<'a> {
    pub body: &'a [u8],
    pub properties: &'a BasicProperties,
    pub exchange: &'a str,
    pub routing_key: &'a str,
}

/// What the intake does with the delivery once the job is finished.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    Ack,
    /// Send to the dead-letter queue with these headers, then ack.
    DeadLetter {
        code: String,
        message: String,
        attempts: u32,
        /// Genesys' own account of the failure (the audit event's `error.details`), sent as
        /// `x-error-details`.
        details: Option<ErrorDetails>,
    },
    /// Not final yet: park in `queue` for its delay (then back to the work queue), then ack.
    Retry {
        queue: String,
        retries: u32,
        attempts: u32,
    },
    /// Paused by an operator: wait in `queue` (the lane's `.paused` queue, no delay) until
    /// `resume` moves it back ([`crate::intake::parked`]), then ack.
    Park {
        queue: String,
        /// The controls' epoch the pause was seen in: if they moved before the job was in
        /// `queue`, the unparker looks again ([`crate::intake::parked`]).
        epoch: u64,
    },
}

/// How a delivery ended: the disposition, and the outcome its audit event announced (for a
/// batch child's progress; a `Retry` is not final).
#[derive(Debug)]
struct Settled {
    disposition: Disposition,
    outcome: Outcome,
    error: Option<EventError>,
    job_id: Option<Uuid>,
    /// A kind of the contract, or `invalid` (a metric label: never the message's own text).
    kind: &'static str,
}

impl Settled {
    fn new(disposition: Disposition, outcome: Outcome) -> Self {
        Self {
            disposition,
            outcome,
            error: None,
            job_id: None,
            kind: "invalid",
        }
    }
}

/// What earlier rounds of a job spent, from the headers a retry queue hands back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Rounds {
    /// Delayed redeliveries so far (`x-retries`).
    retries: u32,
    /// Genesys attempts so far (`x-attempts`).
    attempts: u32,
    /// The lane the delivery came from, where its Genesys calls wait and its retries return.
    lane: Lane,
}

/// The worker's own infrastructure failed; the job must be delivered again.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

/// What a pipeline is made of; [`Pipeline::new`] takes it over.
#[derive(Debug)]
pub struct Stages {
    pub store: Store,
    pub genesys: Arc<GenesysClient>,
    /// Publishes the events (stage 7); the intake settles deliveries with its own.
    pub publisher: Publisher,
    pub topology: Topology,
    pub retry: RetryPolicy,
    pub flows: FlowSettings,
    pub bulk: Option<BulkPresence>,
    /// Gathers the reads of agents' state the presence policies need.
    pub users: UserReads,
    pub limits: job::Limits,
    /// What operators paused or cancelled.
    pub controls: Controls,
}

/// Stages 1 to 7 for one delivery; [`Pipeline::process`] returns what to do with it.
#[derive(Debug)]
pub struct Pipeline {
    store: Store,
    genesys: Arc<GenesysClient>,
    publisher: Publisher,
    topology: Topology,
    retry: RetryPolicy,
    flows: FlowSettings,
    bulk: Option<BulkPresence>,
    users: UserReads,
    limits: job::Limits,
    controls: Controls,
}

impl Pipeline {
    pub fn new(stages: Stages) -> Self {
        let Stages {
            store,
            genesys,
            publisher,
            topology,
            retry,
            flows,
            bulk,
            users,
            limits,
            controls,
        } = stages;
        Self {
            store,
            genesys,
            publisher,
            topology,
            retry,
            flows,
            bulk,
            users,
            limits,
            controls,
        }
    }

    /// Whether Redis answers: without it no job may run (fail closed).
    pub async fn redis_answers(&self) -> bool {
        self.store.ping().await.is_ok()
    }

    /// Runs one delivery of `lane`; a batch child's final outcome is counted in its batch.
    #[tracing::instrument(skip_all, fields(
        lane = lane.as_str(),
        job_id = tracing::field::Empty,
        kind = tracing::field::Empty,
        entity = tracing::field::Empty,
        attempt = header_count(incoming.properties, "x-retries") + 1,
        traceparent = tracing::field::Empty,
    ))]
    pub async fn process(&self, incoming: Incoming<'_>, lane: Lane) -> Result<Disposition, PipelineError> {
        let started = Instant::now();
        let settled = self.run_stages(incoming, lane).await?;
        if matches!(settled.disposition, Disposition::Retry { .. }) {
            telemetry::retried(RetryStage::RetryQueue);
        } else if matches!(settled.disposition, Disposition::Park { .. }) {
            // Not final: it runs when its pause is lifted.
        } else {
            telemetry::job_finished(
                settled.kind,
                settled.outcome.as_str(),
                started.elapsed().as_secs_f64(),
            );
            if let Some(job_id) = settled.job_id {
                crate::console::recent::finished(job_id, settled.outcome);
            }
            if let Some(batch_id) = header_text(incoming.properties, BATCH_ID_HEADER) {
                self.count_in_batch(&batch_id, incoming.properties, &settled)
                    .await?;
            }
        }
        Ok(settled.disposition)
    }

    async fn run_stages(&self, incoming: Incoming<'_>, lane: Lane) -> Result<Settled, PipelineError> {
        let started = Instant::now();
        let traceparent = traceparent(incoming.properties);
        let mut job = match job::decode_with(incoming.body, &self.limits) {
            Ok(job) => job,
            Err(err) => return self.reject_undecodable(err, traceparent, started).await,
        };
        job.traceparent = traceparent;
        let span = tracing::Span::current();
        span.record("job_id", tracing::field::display(job.job_id));
        span.record("kind", job.kind.as_str());
        let entity = job.entity();
        span.record("entity", entity.as_str());
        // The console finds a job by its id through this (Redis keeps records by key).
        crate::console::recent::note(job.job_id, &job.idempotency_key, &entity);
        if let Some(traceparent) = &job.traceparent {
            span.record("traceparent", traceparent.as_str());
        }
        let rounds = Rounds {
            lane,
            retries: header_count(incoming.properties, "x-retries"),
            attempts: header_count(incoming.properties, "x-attempts"),
        };
        let batch_id = header_text(incoming.properties, BATCH_ID_HEADER).and_then(|id| id.parse().ok());
        let tags = JobTags::of(&job, lane, batch_id);
        let controls = self.controls.current();
        // A cancel wins over a pause: a paused batch that is then cancelled ends.
        let cancelled = controls.cancelling(&tags).is_some();
        if let Some(pause) = controls.pausing(&tags).filter(|_| !cancelled) {
            // Before the claim: a paused job costs no Redis record and no Genesys budget.
            tracing::info!(pause = %pause.describe(), "Paused; parked until it is resumed.");
            return Ok(self.park(lane, &job, controls.epoch));
        }
        let settled = match self
            .store
            .claim(&job.idempotency_key, &job.fingerprint, &entity)
            .await?
        {
            // A batch cancelled before it fanned out ends as one `cancelled` event, its children
            // never published.
            Claim::Owned(lease, _) if job.kind == job::Kind::Batch && !cancelled => {
                self.run_batch(&job, &entity, &lease).await
            }
            Claim::Owned(lease, locked) => {
                self.run_owned(&job, tags, &entity, &lease, locked, rounds, started)
                    .await
            }
            Claim::Done {
                mut events,
                confirmed: false,
                outcome,
            } => {
                // Finished before, but its events may not have reached the exchanges: send the
                // stored ones again (same ids, same bytes). In a Redis Cluster the stored audit
                // event has no log index (it is taken after the commit): the one it took is
                // answered again, or, after a crash before it was taken, it takes it now.
                tracing::info!(idempotency_key = %job.idempotency_key, "Re-publishing the stored events of a finished job.");
                let indexed = self.store.log_index_once(&mut events).await?;
                self.publisher.publish_events(&events).await?;
                self.store.mark_confirmed(&entity, &job.idempotency_key).await?;
                self.store.log_index_settled(indexed);
                // Another copy of the job (its own job id) is also told it was a duplicate, as
                // it would be once the events are confirmed: whoever waits for its outcome hears.
                let original = original_event(&events);
                if original.as_ref().is_some_and(|o| o.job_id != job.job_id) {
                    self.announce_duplicate(&job, original, started).await?;
                    return Ok(Settled::new(Disposition::Ack, Outcome::Duplicate));
                }
                Ok(Settled::new(Disposition::Ack, outcome))
            }
            Claim::Done {
                confirmed: true,
                events,
                ..
            } => {
                self.announce_duplicate(&job, original_event(&events), started)
                    .await?;
                Ok(Settled::new(Disposition::Ack, Outcome::Duplicate))
            }
            Claim::KeyReused => {
                let message = format!(
                    "job {}: {}: idempotency key {:?} was already used with a different payload",
                    job.job_id,
                    job.entity(),
                    job.idempotency_key
                );
                let applied = Verdict::refused(Outcome::Rejected, "idempotency_key_reused", message.clone());
                let mut draft = self.draft(&job, &applied, started);
                draft.attempts = 0;
                self.publish_unrecorded(draft).await?;
                tracing::warn!(idempotency_key = %job.idempotency_key, "Idempotency key reused with another payload; rejected.");
                Ok(Settled {
                    error: Some(EventError::new("idempotency_key_reused", message.clone())),
                    ..Settled::new(
                        Disposition::DeadLetter {
                            code: "idempotency_key_reused".into(),
                            message,
                            attempts: 0,
                            details: None,
                        },
                        Outcome::Rejected,
                    )
                })
            }
        };
        settled.map(|settled| Settled {
            job_id: Some(job.job_id),
            kind: job.kind.as_str(),
            ..settled
        })
    }

    /// A batch: its children are published to the batch lane; its own event comes with the
    /// last child's outcome ([`Pipeline::count_in_batch`]).
    async fn run_batch(&self, job: &Job, entity: &str, lease: &Lease) -> Result<Settled, PipelineError> {
        let Payload::Batch(batch) = &job.payload else {
            unreachable!("only batch jobs are fanned out")
        };
        let keeper = self.store.keep_alive(lease, entity);
        let fanned = batch::fan_out(
            &self.store,
            &self.publisher,
            &self.topology.batch_queue,
            job,
            batch,
            self.limits.max_message_bytes,
        )
        .await;
        let fanned = match fanned {
            Ok(total) => self.reject_oversized(job, batch).await.map(|()| total),
            Err(FanOutError::Store(err)) => Err(err.into()),
            Err(FanOutError::Broker(err)) => Err(err.into()),
        };
        drop(keeper);
        let total = match fanned {
            Ok(total) => total,
            Err(err) => {
                // The next delivery goes on from the published cursor (and reports the oversized
                // children again: counted once), without waiting for this claim's lease.
                if let Err(release) = self.store.release_claim(lease, entity).await {
                    tracing::warn!(error.message = %release, "Could not release the batch's claim; it expires with its lease.");
                }
                return Err(err);
            }
        };
        self.store.batch_fanned_out(lease, entity).await?;
        tracing::info!(children = total, "Batch fanned out into the batch lane.");
        Ok(Settled::new(Disposition::Ack, Outcome::Applied))
    }

    /// Counts the children too large to run as `rejected` (they were not published): after the
    /// fan-out, which set the batch's total, and before the batch is marked fanned out, so a
    /// redelivered batch reports them again (counted once) rather than never.
    async fn reject_oversized(&self, job: &Job, batch: &job::Batch) -> Result<(), PipelineError> {
        let max = self.limits.max_message_bytes;
        for child in batch::oversized_children(job, batch, max) {
            let error = EventError::new("payload_too_large", child.problem(job, max));
            self.report_child(
                job.job_id,
                child.index as u64,
                child.job_id,
                Outcome::Rejected,
                Some(&error),
            )
            .await?;
        }
        Ok(())
    }

    /// Counts a batch child's final outcome; the report that completes the batch publishes
    /// the batch's summary event.
    async fn count_in_batch(
        &self,
        batch_id: &str,
        properties: &BasicProperties,
        settled: &Settled,
    ) -> Result<(), PipelineError> {
        let Ok(batch_id) = batch_id.parse::<Uuid>() else {
            tracing::warn!(
                batch_id,
                "A batch child names a batch that is not a UUID; not counted."
            );
            return Ok(());
        };
        let index = u64::from(header_count(properties, BATCH_INDEX_HEADER));
        self.report_child(
            batch_id,
            index,
            settled.job_id,
            settled.outcome,
            settled.error.as_ref(),
        )
        .await
    }

    /// Counts child `index`'s final outcome in its batch; the report that completes the batch
    /// publishes the batch's summary event.
    async fn report_child(
        &self,
        batch_id: Uuid,
        index: u64,
        child_job: Option<Uuid>,
        outcome: Outcome,
        error: Option<&EventError>,
    ) -> Result<(), PipelineError> {
        let Some(progress) = self
            .store
            .batch_report(batch_id, index, child_job, outcome, error)
            .await?
        else {
            return Ok(());
        };
        let mut event = progress.audit_event();
        let head = self.store.entity_head(&event.entity).await?;
        record::link(&mut event, &head);
        let linked = EntityHead {
            version: event.entity_version,
            checksum: event.checksum.clone().unwrap_or_default(),
        };
        let mut messages = self
            .store
            .batch_seal(batch_id, &event.entity, &linked, &self.outbound(&event))
            .await?;
        // In a Redis Cluster the seal cannot take the log index: it is taken here, once, and
        // answered again to a later report re-publishing the stored summary.
        let indexed = self.store.log_index_once(&mut messages).await?;
        self.publisher.publish_events(&messages).await?;
        self.store.batch_summary_sent(batch_id).await?;
        self.store.log_index_settled(indexed);
        tracing::info!(batch = %batch_id, total = progress.total, counts = ?progress.counts, "Batch finished; summary published.");
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn run_owned(
        &self,
        job: &Job,
        tags: JobTags<'_>,
        entity: &str,
        lease: &Lease,
        locked: Option<EntityState>,
        rounds: Rounds,
        started: Instant,
    ) -> Result<Settled, PipelineError> {
        let result = self
            .run_locked(job, tags, lease, locked, entity, rounds, started)
            .await;
        if result.is_err() {
            // The next change of the entity may go ahead now, not only when the lock's lease
            // runs out. (A finished job released it with its last step.)
            if let Err(err) = self.store.release_entity(entity, &lease.owner).await {
                tracing::warn!(error.message = %err, entity = %entity, "Could not release the entity lock; it expires with its lease.");
            }
        }
        result
    }

    /// Runs an owned job. Redis round trips: the claim (which usually took the entity lock too),
    /// the commit, and the finish after the events are confirmed.
    #[allow(clippy::too_many_arguments)]
    async fn run_locked(
        &self,
        job: &Job,
        tags: JobTags<'_>,
        lease: &Lease,
        locked: Option<EntityState>,
        entity: &str,
        rounds: Rounds,
        started: Instant,
    ) -> Result<Settled, PipelineError> {
        let keeper = self.store.keep_alive(lease, entity);
        let state = match locked {
            Some(state) => state,
            None => self.store.lock_entity(entity, &lease.owner).await?,
        };
        // A job taken over may have made its change already: it runs to its end, neither
        // cancelled nor parked, and reads Genesys before it writes.
        let stoppable = !lease.takeover;
        let refused = order::refusal(job, entity, state.last_sequence, OffsetDateTime::now_utc())
            .or_else(|| stoppable.then(|| self.cancellation(job, &tags, entity)).flatten());
        let gate = CallGate::new();
        if !stoppable {
            gate.open();
        }
        let applied = match refused {
            Some(refused) => refused,
            None => {
                let ctx = apply::Context {
                    genesys: self.genesys.in_lane(rounds.lane).gated(&gate),
                    retry: &self.retry,
                    flows: &self.flows,
                    bulk: self.bulk.as_ref(),
                    users: &self.users,
                };
                let changed_recently = state
                    .changed_ms_ago
                    .is_some_and(|ms| u128::from(ms) < self.retry.consistency_window.as_millis());
                let known = apply::Known {
                    takeover: lease.takeover,
                    changed_recently,
                };
                let applying = apply::apply(ctx, job, known);
                match self.unless_stopped(applying, &tags, &gate).await {
                    Ok(applied) => applied,
                    Err(control) if control.action == Action::Cancel => cancelled(job, entity, &control),
                    Err(_) => {
                        drop(keeper);
                        // Nothing was sent: the job is as if it never ran, and waits for resume.
                        self.store.release_claim(lease, entity).await?;
                        let epoch = self.controls.current().epoch;
                        return Ok(self.park(rounds.lane, job, epoch));
                    }
                }
            }
        };
        drop(keeper);
        // A transient failure, or a change deferred by its policy (an agent on a live
        // interaction): tried again after a delay while retry rounds remain.
        if applied.retryable && matches!(applied.outcome, Outcome::Failed | Outcome::Conflict) {
            // Back to the lane it came from.
            let lane_queue = self.topology.lane_queue(rounds.lane);
            if let Some(queue) = self.topology.retry_queue(lane_queue, rounds.retries as usize) {
                // Not final: no outcome is recorded or announced; the next round claims afresh.
                self.store.release_claim(lease, entity).await?;
                let error = applied
                    .error
                    .as_ref()
                    .map(|e| e.message.as_str())
                    .unwrap_or_default();
                if applied.outcome == Outcome::Failed {
                    tracing::warn!(retry_queue = %queue, round = rounds.retries + 1, error.message = %error, "Transient failure; the job will be retried after a delay.");
                } else {
                    tracing::info!(retry_queue = %queue, round = rounds.retries + 1, reason = %error, "Deferred; the job will be tried again after a delay.");
                }
                let retry = Disposition::Retry {
                    queue,
                    retries: rounds.retries + 1,
                    attempts: rounds.attempts + applied.attempts,
                };
                return Ok(Settled::new(retry, applied.outcome));
            }
        }
        let draft = self.draft(job, &applied, started);
        // Only a change that was applied must never run again; other outcomes (a rolled-back
        // deploy included) release the key, so a redelivery or a DLQ replay evaluates the job
        // afresh.
        let remember = applied.outcome == Outcome::Applied;
        // The head read with the lock still holds, unless the job turned out to change another
        // entity (a created workitem).
        let known_head = (draft.entity == entity).then_some(state.head);
        let (mut event, mut messages) = self
            .store
            .commit(lease, &draft.entity, remember, job.sequence, known_head, |head| {
                let mut event = draft.clone();
                record::link(&mut event, head);
                let messages = self.outbound(&event);
                (event, messages)
            })
            .await?;
        // In a Redis Cluster the commit could not take the event's log index: taken now, in a
        // repeatable step (a crash here re-publishes the stored event on the next delivery,
        // which takes or finds the index then).
        let indexed = self.store.log_index_once(&mut messages).await?;
        if let Some(indexed) = &indexed {
            event.log_index = Some(indexed.index);
        }
        self.publisher.publish_events(&messages).await?;
        self.store.finish(lease, entity, remember).await?;
        self.store.log_index_settled(indexed);
        tracing::info!(
            outcome = %event.outcome,
            entity = %event.entity,
            entity_version = event.entity_version,
            latency_ms = event.latency_ms,
            "Job finished."
        );
        Ok(Settled {
            error: event.error.clone(),
            ..Settled::new(disposition(&event, rounds), event.outcome)
        })
    }

    /// Runs `applying` to its end, unless the job is paused or cancelled before it sent its
    /// first Genesys request: then it gives its calls up (`gate`), and the control that stopped
    /// it is returned. A job stopped after a request went out runs on to its outcome (its
    /// change may be made).
    async fn unless_stopped(
        &self,
        applying: impl std::future::Future<Output = Verdict>,
        tags: &JobTags<'_>,
        gate: &CallGate,
    ) -> Result<Verdict, Control> {
        tokio::pin!(applying);
        tokio::select! {
            applied = &mut applying => return Ok(applied),
            control = self.controls.stopped(tags) => {
                if gate.abandon() {
                    tracing::info!(control = %control.describe(), "Stopped before its first Genesys call.");
                    return Err(control);
                }
            }
        }
        Ok(applying.await)
    }

    /// The verdict of a job an operator cancelled (itself, its idempotency key or its batch).
    fn cancellation(&self, job: &Job, tags: &JobTags<'_>, entity: &str) -> Option<Verdict> {
        let current = self.controls.current();
        Some(cancelled(job, entity, current.cancelling(tags)?))
    }

    /// Where a paused job of `lane` waits; `epoch` is the controls' the pause was seen in.
    fn park(&self, lane: Lane, job: &Job, epoch: u64) -> Settled {
        let queue = topology::paused_queue(self.topology.lane_queue(lane));
        Settled {
            job_id: Some(job.job_id),
            kind: job.kind.as_str(),
            // Not final, so not counted: the outcome is not read.
            ..Settled::new(Disposition::Park { queue, epoch }, Outcome::Applied)
        }
    }

    /// A message that did not decode: announced when it names a job, always dead-lettered.
    async fn reject_undecodable(
        &self,
        err: DecodeError,
        traceparent: Option<String>,
        started: Instant,
    ) -> Result<Settled, PipelineError> {
        tracing::warn!(code = err.code, error.message = %err.message, "Rejected an invalid job message.");
        if let (Some(job_id), Some(kind)) = (err.job_id, err.kind.clone()) {
            let idempotency_key = err.idempotency_key.clone().unwrap_or_else(|| job_id.to_string());
            let entity = err.entity.clone().unwrap_or_else(|| format!("job:{job_id}"));
            let draft = AuditEvent {
                actor: err.actor.clone(),
                correlation_id: err.correlation_id.clone(),
                latency_ms: started.elapsed().as_millis() as u64,
                error: Some(EventError::new(err.code, err.message.clone())),
                traceparent,
                ..AuditEvent::new(job_id, kind, &idempotency_key, entity, Outcome::Rejected)
            };
            self.publish_unrecorded(draft).await?;
        }
        Ok(Settled {
            error: Some(EventError::new(err.code, err.message.clone())),
            job_id: err.job_id,
            kind: err
                .kind
                .as_deref()
                .and_then(job::Kind::parse)
                .map_or("invalid", job::Kind::as_str),
            ..Settled::new(
                Disposition::DeadLetter {
                    code: err.code.into(),
                    message: err.message,
                    attempts: 0,
                    details: None,
                },
                Outcome::Rejected,
            )
        })
    }

    /// Publishes an event that records nothing: it only references the entity's chain head.
    /// Announces `job` as a `duplicate` of the job whose audit event is `original`: it names
    /// the entity the original changed (a created workitem has an id only the original knows)
    /// and the state it left. Not recorded: the original's record stands.
    async fn announce_duplicate(
        &self,
        job: &Job,
        original: Option<AuditEvent>,
        started: Instant,
    ) -> Result<(), PipelineError> {
        let mut duplicate = Verdict::refused(Outcome::Duplicate, "", String::new());
        duplicate.entity = original.as_ref().map(|o| o.entity.clone());
        duplicate.new_state = original.and_then(|o| o.new_state);
        let draft = AuditEvent {
            error: None,
            genesys_status: None,
            attempts: 0,
            ..self.draft(job, &duplicate, started)
        };
        self.publish_unrecorded(draft).await?;
        tracing::info!(idempotency_key = %job.idempotency_key, "Duplicate job; no Genesys call made.");
        Ok(())
    }

    async fn publish_unrecorded(&self, mut draft: AuditEvent) -> Result<(), PipelineError> {
        let head = self.store.entity_head(&draft.entity).await?;
        record::link(&mut draft, &head);
        let mut messages = self.outbound(&draft);
        self.store.log_append(&mut draft, &mut messages).await?;
        self.publisher.publish_events(&messages).await?;
        Ok(())
    }

    fn draft(&self, job: &Job, applied: &Verdict, started: Instant) -> AuditEvent {
        let entity = applied.entity.clone().unwrap_or_else(|| job.entity());
        AuditEvent {
            actor: job.actor.clone(),
            correlation_id: job.correlation_id.clone(),
            previous_state: applied.previous_state.clone(),
            new_state: applied.new_state.clone(),
            attempts: applied.attempts,
            latency_ms: started.elapsed().as_millis() as u64,
            genesys_status: applied.genesys_status,
            error: applied.error.clone(),
            traceparent: job.traceparent.clone(),
            ..AuditEvent::new(
                job.job_id,
                job.kind.as_str(),
                &job.idempotency_key,
                entity,
                applied.outcome,
            )
        }
    }

    /// The messages an audit event produces: itself, and a CRM event when it applied a change.
    fn outbound(&self, event: &AuditEvent) -> Vec<OutboundEvent> {
        crate::events::outbound(&self.topology, event)
    }
}

/// The outcome of a job `cancel` ended before it called Genesys.
fn cancelled(job: &Job, entity: &str, cancel: &Control) -> Verdict {
    tracing::info!(cancel = %cancel.describe(), "Cancelled by an operator.");
    let mut verdict = Verdict::refused(
        Outcome::Cancelled,
        "cancelled",
        format!("job {}: {entity}: {}", job.job_id, cancel.describe()),
    );
    verdict.attempts = 0;
    verdict
}

/// The audit event among a finished job's stored events.
fn original_event(events: &[OutboundEvent]) -> Option<AuditEvent> {
    events
        .iter()
        .find_map(|e| serde_json::from_str::<AuditEvent>(&e.body).ok())
}

fn disposition(event: &AuditEvent, rounds: Rounds) -> Disposition {
    if !event.outcome.dead_letters() {
        return Disposition::Ack;
    }
    let error = event
        .error
        .clone()
        .unwrap_or(EventError::new(event.outcome.as_str(), String::new()));
    Disposition::DeadLetter {
        code: error.code,
        message: error.message,
        attempts: rounds.attempts + event.attempts,
        details: error.details,
    }
}

/// The W3C `traceparent` header of a delivery, when well-formed
/// (`00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`), to carry into the job's events.
fn traceparent(properties: &BasicProperties) -> Option<String> {
    let value = header_text(properties, "traceparent")?;
    let parts: Vec<&str> = value.trim().split('-').collect();
    let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
    let valid = matches!(parts.as_slice(), [version, trace, parent, flags]
        if hex(version, 2) && *version != "ff" && hex(trace, 32) && hex(parent, 16) && hex(flags, 2)
            && trace.bytes().any(|b| b != b'0') && parent.bytes().any(|b| b != b'0'));
    valid.then(|| value.trim().to_ascii_lowercase())
}
