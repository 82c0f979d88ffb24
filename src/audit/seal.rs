//! The sealer: one replica at a time (a Redis lease) folds the events that took a log index
//! into the Merkle tree, keeping only its compact range in Redis (O(log n) hashes), and every
//! `AUDIT_CHECKPOINT_SECS` (or `AUDIT_CHECKPOINT_LEAVES` leaves), when the tree grew, signs a
//! checkpoint and publishes it on the audit exchange (docs/architecture.md, "The verifiable
//! audit log").

use std::time::{Duration, Instant};

use lapin::BasicProperties;
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
    /// The tree size of the last checkpoint published (by any sealer: read from Redis).
    last_checkpoint: Option<u64>,
    checkpointed_at: Instant,
}

impl Sealer {
    async fn tick(&mut self) -> Result<(), SealError> {
        if !self.store.log_lease(&self.owner, LEASE).await? {
            self.last_checkpoint = None;
            return Ok(());
        }
        if self.last_checkpoint.is_none() {
            self.last_checkpoint = Some(self.checkpointed_size().await?);
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

    /// The size of the latest checkpoint any sealer published (0: none yet).
    async fn checkpointed_size(&self) -> Result<u64, SealError> {
        Ok(self
            .store
            .log_checkpoint()
            .await?
            .and_then(|text| serde_json::from_str::<Checkpoint>(&text).ok())
            .map_or(0, |checkpoint| checkpoint.tree_size))
    }

    async fn checkpoint(&mut self, tree: &CompactRange) -> Result<(), SealError> {
        let body = CheckpointBody::new(
            self.sealing.origin.clone(),
            tree.size,
            tree.root(),
            OffsetDateTime::now_utc(),
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
        let properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_message_id(format!("checkpoint-{}-{}", message.origin, message.tree_size).into());
        self.publisher
            .publish(
                &self.sealing.exchange,
                checkpoint::ROUTING_KEY,
                text.as_bytes(),
                properties,
            )
            .await?;
        self.store.log_set_checkpoint(&text).await?;
        tracing::info!(tree_size = message.tree_size, root_hash = %message.root_hash, signed = self.sealing.key.is_some(), "Audit log checkpoint published.");
        self.last_checkpoint = Some(tree.size);
        self.checkpointed_at = Instant::now();
        Ok(())
    }
}
