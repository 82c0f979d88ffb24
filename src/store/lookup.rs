//! Reads for the admin console's job lookup (`crate::console`): an idempotency record as it is
//! kept (`idem:<idempotency key>`), without claiming anything.

use super::{Store, StoreError};
use crate::events::{OutboundEvent, Outcome};

/// An idempotency record as Redis keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// `in_progress` or `done`.
    pub state: String,
    /// The outcome of a done job (only `applied` jobs' records are kept once done).
    pub outcome: Option<Outcome>,
    /// The events the job announced, as published.
    pub events: Vec<OutboundEvent>,
    /// Whether those events were confirmed by the broker.
    pub confirmed: bool,
}

/// A record's `state`, `outcome`, `events`, `confirmed` and `log_index` fields.
type RecordFields = (
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<u64>,
);

impl Store {
    /// Whether an idempotency record's key names its job's entity (a Redis Cluster, where the
    /// record lives in the entity's hash slot): then [`Store::idempotency_record`] needs it.
    pub fn records_keyed_by_entity(&self) -> bool {
        self.tagged
    }

    /// The idempotency record of `idempotency_key`, whose job changes `entity` (the entity is
    /// part of the key only in a Redis Cluster, see [`Store::records_keyed_by_entity`]); None
    /// when there is none (never claimed, expired, or released after an outcome that is not
    /// kept).
    pub async fn idempotency_record(
        &self,
        entity: &str,
        idempotency_key: &str,
    ) -> Result<Option<Record>, StoreError> {
        let key = self.record_key(entity, idempotency_key);
        let mut conn = self.conn.clone();
        let (state, outcome, events, confirmed, log_index): RecordFields = redis::cmd("HMGET")
            .arg(&key)
            .arg("state")
            .arg("outcome")
            .arg("events")
            .arg("confirmed")
            .arg("log_index")
            .query_async(&mut conn)
            .await?;
        let Some(state) = state else {
            return Ok(None);
        };
        let corrupt = |problem: String| StoreError::Corrupt {
            key: key.clone(),
            problem,
        };
        let outcome = outcome
            .filter(|o| !o.is_empty())
            .map(|o| {
                serde_json::from_value(serde_json::Value::String(o.clone()))
                    .map_err(|_| corrupt(format!("unknown outcome {o:?}")))
            })
            .transpose()?;
        let mut events = match events {
            Some(events) => serde_json::from_str(&events).map_err(|e| corrupt(format!("events: {e}")))?,
            None => Vec::new(),
        };
        if let Some(index) = log_index {
            super::claim::fill_log_index(&mut events, index);
        }
        Ok(Some(Record {
            state,
            outcome,
            events,
            confirmed: confirmed.as_deref() == Some("1"),
        }))
    }
}
