//! The sealer: one replica at a time (a Redis lease) folds the events that took a log index
//! into the Merkle tree, keeping only its compact range in Redis (O(log n) hashes), and every
//! `AUDIT_CHECKPOINT_SECS` (or `AUDIT_CHECKPOINT_LEAVES` leaves), when the tree grew, signs a
//! checkpoint and publishes it on the audit exchange (docs/architecture.md, "The verifiable
//! audit log").

use std::time::{Duration, Instant};

use lapin::BasicProperties;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use super::checkpoint::{self, Checkpoint, CheckpointBody};
use super::log::leaf_of;
use super::merkle::{self, CompactRange};
use super::note::SigningKey;
use crate::broker::Publisher;
use crate::store::{Store, StoreError};

/// How often the sealer looks for new leaves (and renews its lease).
const TICK: Duration = Duration::from_millis(500);
/// The lease: another replica takes over this long after the sealer stopped renewing.
const LEASE: Duration = Duration::from_secs(5);
/// Leaves folded per Redis round trip.
const FOLD: u64 = 1_000;

/// How the log is sealed.
#[derive(Debug, Clone)]
pub struct Sealing {
    /// The checkpoints' first line: the key's name when signed.
    pub origin: String,
    /// Without it the checkpoints go out unsigned (the note is the bare body).
    pub key: Option<SigningKey>,
    pub every: Duration,
    pub leaves: u64,
    /// Where checkpoints are published (the audit exchange).
    pub exchange: String,
}

impl Sealing {
    /// The origin an unsigned log uses.
    pub const UNSIGNED_ORIGIN: &'static str = "genesys-worker";

    pub fn new(key: Option<SigningKey>, every: Duration, leaves: u64, exchange: String) -> Self {
        let origin = key
            .as_ref()
            .map_or(Self::UNSIGNED_ORIGIN.to_string(), |key| key.name().to_string());
        Self {
            origin,
            key,
            every,
            leaves,
            exchange,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the sealed tree in Redis is unreadable: {0}")]
    Tree(String),
    #[error("leaf {index} is not JSON: {cause}")]
    Leaf { index: u64, cause: String },
    #[error("could not sign the checkpoint: {0}")]
    Sign(String),
    #[error("could not publish the checkpoint: {0}")]
    Publish(#[from] crate::broker::BrokerError),
}

/// Seals until `stop`: while this replica holds the lease, folds new leaves and publishes
/// checkpoints; otherwise waits for the lease. Errors are logged and tried again next tick.
pub async fn run(store: Store, publisher: Publisher, sealing: Sealing, stop: CancellationToken) {
    let owner = uuid::Uuid::new_v4().to_string();
    let mut sealer = Sealer {
        store,
        publisher,
        sealing,
        owner,
        last_checkpoint: None,
        last_time: None,
        unpublished: None,
        checkpointed_at: Instant::now(),
    };
    let mut failing = false;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(TICK) => {}
        }
        match sealer.tick().await {
            Ok(()) => failing = false,
            Err(err) if !failing => {
                failing = true;
                tracing::error!(error.message = %err, "Could not seal the audit log; trying again.");
            }
            Err(_) => {}
        }
    }
}

struct Sealer {
    store: Store,
    publisher: Publisher,
    sealing: Sealing,
    owner: String,
    /// The tree size of the last checkpoint stored (by any sealer: read from Redis).
    last_checkpoint: Option<u64>,
    /// The time of the last checkpoint stored (by any sealer): the next one is never dated
    /// earlier, whatever this replica's clock says.
    last_time: Option<OffsetDateTime>,
    /// A checkpoint stored but not known to be published (this sealer's publication failed, or
    /// another sealer's may have: it is read back at each takeover). Published as stored, the
    /// same bytes under the same message id, before anything new is signed.
    unpublished: Option<Stored>,
    checkpointed_at: Instant,
}

/// A checkpoint as stored in Redis: its message id, text and tree size.
struct Stored {
    id: String,
    text: String,
    size: u64,
}

impl Sealer {
    async fn tick(&mut self) -> Result<(), SealError> {
        if !self.store.log_lease(&self.owner, LEASE).await? {
            // Whoever holds the lease now publishes what is stored.
            self.last_checkpoint = None;
            self.unpublished = None;
            return Ok(());
        }
        if self.last_checkpoint.is_none() {
            // Whoever stored the latest checkpoint may have died before publishing it (it is
            // stored first): publish it again. A consumer that has it already sees it twice,
            // which `audit verify` takes as one.
            let latest = self.store.log_checkpoint().await?;
            let (size, time) = match latest.as_deref().map(serde_json::from_str::<Checkpoint>) {
                Some(Ok(checkpoint)) => {
                    let time = checkpoint
                        .time
                        .as_deref()
                        .and_then(|text| OffsetDateTime::parse(text, &Rfc3339).ok());
                    self.unpublished = latest.map(|text| Stored {
                        id: message_id(&checkpoint),
                        text,
                        size: checkpoint.tree_size,
                    });
                    (checkpoint.tree_size, time)
                }
                _ => (0, None),
            };
            self.last_checkpoint = Some(size);
            self.last_time = time;
        }
        if let Some(stored) = &self.unpublished {
            self.publish(&stored.id, &stored.text).await?;
            self.last_checkpoint = Some(stored.size);
            self.unpublished = None;
        }
        let state = self.store.log_state().await?;
        let mut tree = match &state.tree {
            Some(text) => CompactRange::parse(text).map_err(|e| SealError::Tree(e.to_string()))?,
            None => CompactRange::new(),
        };
        let sealed = tree.size;
        let to = state.size.min(sealed + FOLD);
        if to > sealed {
            for (leaf, index) in self.store.log_leaves(sealed, to).await?.iter().zip(sealed..) {
                let event: serde_json::Value = serde_json::from_str(leaf).map_err(|e| SealError::Leaf {
                    index,
                    cause: e.to_string(),
                })?;
                tree.append(leaf_of(&event));
            }
            let after = tree.to_string();
            if !self
                .store
                .log_seal(&self.owner, state.tree.as_deref(), &after, sealed..to)
                .await?
            {
                // Lost the lease, or another sealer moved the tree: read again next tick.
                return Ok(());
            }
        }
        let waiting = state.size - tree.size;
        let grew = self.last_checkpoint.is_none_or(|size| tree.size > size);
        let due = self.checkpointed_at.elapsed() >= self.sealing.every
            || tree.size - self.last_checkpoint.unwrap_or(0) >= self.sealing.leaves;
        if grew && due && waiting < FOLD {
            self.checkpoint(&tree).await?;
        }
        Ok(())
    }

    async fn checkpoint(&mut self, tree: &CompactRange) -> Result<(), SealError> {
        let body = CheckpointBody::new(
            self.sealing.origin.clone(),
            tree.size,
            tree.root(),
            signing_time(OffsetDateTime::now_utc(), self.last_time),
        );
        let message = match &self.sealing.key {
            Some(key) => Checkpoint::sign(&body, key).map_err(|e| SealError::Sign(e.to_string()))?,
            None => Checkpoint {
                origin: body.origin.clone(),
                tree_size: body.size,
                root_hash: merkle::encode(&body.root),
                time: body.time.map(checkpoint::format_time),
                note: body.to_body(),
            },
        };
        let text = serde_json::to_string(&message).expect("checkpoints serialize");
        // Stored before it is published, under the lease: a sealer taking over reads it, so
        // none of its checkpoints is dated earlier, even while this publication is under way.
        let time = message.time.as_deref().unwrap_or_default();
        if !self
            .store
            .log_set_checkpoint(&self.owner, message.tree_size, time, &text)
            .await?
        {
            // Lost the lease, or a later checkpoint is stored: read it again next tick.
            tracing::warn!(
                tree_size = message.tree_size,
                "Audit log checkpoint not published: the lease was lost or a later checkpoint is stored."
            );
            self.last_checkpoint = None;
            return Ok(());
        }
        self.last_time = body.time;
        // Until it is confirmed, the next tick publishes the stored bytes again rather than
        // signing the same size anew (two messages under one id).
        let stored = Stored {
            id: message_id(&message),
            text,
            size: message.tree_size,
        };
        if let Err(err) = self.publish(&stored.id, &stored.text).await {
            self.unpublished = Some(stored);
            return Err(err);
        }
        tracing::info!(tree_size = message.tree_size, root_hash = %message.root_hash, signed = self.sealing.key.is_some(), "Audit log checkpoint published.");
        self.last_checkpoint = Some(tree.size);
        self.checkpointed_at = Instant::now();
        Ok(())
    }
}

impl Sealer {
    async fn publish(&self, message_id: &str, text: &str) -> Result<(), SealError> {
        let properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_message_id(message_id.into());
        self.publisher
            .publish(
                &self.sealing.exchange,
                checkpoint::ROUTING_KEY,
                text.as_bytes(),
                properties,
            )
            .await?;
        Ok(())
    }
}

/// A checkpoint message's id: one per origin and tree size.
fn message_id(message: &Checkpoint) -> String {
    format!("checkpoint-{}-{}", message.origin, message.tree_size)
}

/// The time a checkpoint is signed with: now, or the last checkpoint's if that is later (the
/// replicas' clocks differ), so checkpoint times never go backwards.
fn signing_time(now: OffsetDateTime, last: Option<OffsetDateTime>) -> OffsetDateTime {
    last.map_or(now, |last| now.max(last))
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;

    #[test]
    fn a_checkpoint_is_never_dated_before_the_last_one() {
        let now = datetime!(2026-12-02 08:00:00 UTC);
        let ahead = datetime!(2026-12-02 09:00:00 UTC);
        assert_eq!(signing_time(now, None), now);
        assert_eq!(signing_time(now, Some(ahead)), ahead);
        assert_eq!(signing_time(ahead, Some(now)), ahead);
    }
}
