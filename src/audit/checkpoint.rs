//! Checkpoints: C2SP tlog-checkpoint bodies (c2sp.org/tlog-checkpoint) in signed notes, and the
//! message the worker publishes them in (routing key `audit.checkpoint`).
//!
//! A body is `<origin>\n<tree size>\n<base64 root>\n` then extension lines; ours is one,
//! `time <RFC 3339 UTC, milliseconds>` (e.g. `time 2026-12-02T08:00:00.000Z`), the moment the
//! checkpoint was sealed. Unknown extension lines are kept, as the spec asks of readers.

use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::merkle::{self, Hash};
use super::note::{self, NoteError, SigningKey, VerifierKey};

/// The routing key checkpoints are published with on the audit exchange.
pub const ROUTING_KEY: &str = "audit.checkpoint";

/// The first word of our time extension line.
const TIME_PREFIX: &str = "time ";

const TIME_FORMAT: &[time::format_description::BorrowedFormatItem<'static>] =
    time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    #[error("malformed checkpoint body: {0}")]
    Malformed(String),
    #[error(transparent)]
    Note(#[from] NoteError),
    #[error("the checkpoint's origin is {found:?}, expected {expected:?}")]
    Origin { found: String, expected: String },
    #[error("the message says {field} {unsigned}, its signed note says {signed}: refused")]
    Disagrees {
        field: &'static str,
        unsigned: String,
        signed: String,
    },
}

/// What a checkpoint states: the log `origin` had `size` leaves with root `root` at `time`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointBody {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
    /// When it was sealed (our `time` extension line), UTC, millisecond precision.
    pub time: Option<OffsetDateTime>,
    /// Extension lines other than `time`, verbatim, in order.
    pub extensions: Vec<String>,
}

impl CheckpointBody {
    pub fn new(origin: impl Into<String>, size: u64, root: Hash, time: OffsetDateTime) -> Self {
        Self {
            origin: origin.into(),
            size,
            root,
            time: Some(time),
            extensions: Vec::new(),
        }
    }

    /// The note body: `<origin>\n<size>\n<base64 root>\n[time …\n][extensions\n]`.
    pub fn to_body(&self) -> String {
        let mut body = format!("{}\n{}\n{}\n", self.origin, self.size, merkle::encode(&self.root));
        if let Some(time) = self.time {
            body.push_str(TIME_PREFIX);
            body.push_str(&format_time(time));
            body.push('\n');
        }
        for line in &self.extensions {
            body.push_str(line);
            body.push('\n');
        }
        body
    }

    /// Reads a body as [`Self::to_body`] writes it.
    pub fn parse(body: &str) -> Result<Self, CheckpointError> {
        let malformed = |why: &str| CheckpointError::Malformed(why.to_string());
        let lines = body
            .strip_suffix('\n')
            .ok_or_else(|| malformed("it does not end in a newline"))?;
        let mut lines = lines.split('\n');
        let origin = lines.next().unwrap_or_default();
        if origin.is_empty() {
            return Err(malformed("the origin line is empty"));
        }
        let size_line = lines.next().ok_or_else(|| malformed("no tree size line"))?;
        // ASCII decimal without leading zeros, as the spec requires.
        let canonical = size_line == "0"
            || (!size_line.starts_with('0')
                && !size_line.is_empty()
                && size_line.bytes().all(|b| b.is_ascii_digit()));
        let size = canonical
            .then(|| size_line.parse::<u64>().ok())
            .flatten()
            .ok_or_else(|| malformed("the tree size is not a decimal number"))?;
        let root = lines
            .next()
            .and_then(merkle::decode)
            .ok_or_else(|| malformed("the root hash is not 32 bytes of base64"))?;
        let mut time = None;
        let mut extensions = Vec::new();
        for line in lines {
            if line.is_empty() {
                return Err(malformed("an empty extension line"));
            }
            match line.strip_prefix(TIME_PREFIX) {
                Some(text) if time.is_none() => {
                    let parsed = OffsetDateTime::parse(text, &Rfc3339)
                        .map_err(|_| malformed("the time line is not an RFC 3339 time"))?;
                    time = Some(parsed);
                }
                _ => extensions.push(line.to_string()),
            }
        }
        Ok(Self {
            origin: origin.to_string(),
            size,
            root,
            time,
            extensions,
        })
    }
}

/// `2026-12-02T08:00:00.000Z`.
pub fn format_time(time: OffsetDateTime) -> String {
    time.to_offset(time::UtcOffset::UTC)
        .format(TIME_FORMAT)
        .expect("a UTC time always formats")
}

/// The checkpoint message on the audit exchange (routing key [`ROUTING_KEY`]). Only `note` is
/// signed; the other fields repeat its body for readers and must agree with it
/// ([`Checkpoint::open`] refuses a message where they do not).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub origin: String,
    pub tree_size: u64,
    /// Base64 of the root hash.
    pub root_hash: String,
    /// As in the body's time line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    /// The whole signed note.
    pub note: String,
}

impl Checkpoint {
    /// Signs `body` with `key` into the message to publish.
    pub fn sign(body: &CheckpointBody, key: &SigningKey) -> Result<Self, CheckpointError> {
        let note = note::sign(&body.to_body(), key)?;
        Ok(Self {
            origin: body.origin.clone(),
            tree_size: body.size,
            root_hash: merkle::encode(&body.root),
            time: body.time.map(format_time),
            note,
        })
    }

    /// Verifies the note with `key`, checks its origin (`origin`, or else the key's name) and
    /// that the unsigned fields agree with the signed body; returns the body.
    pub fn open(&self, key: &VerifierKey, origin: Option<&str>) -> Result<CheckpointBody, CheckpointError> {
        let body = open_note(&self.note, key, origin)?;
        self.agrees_with(&body)?;
        Ok(body)
    }

    /// Refuses unsigned fields that say something else than the signed `body`.
    pub fn agrees_with(&self, body: &CheckpointBody) -> Result<(), CheckpointError> {
        let disagrees = |field, unsigned: String, signed: String| {
            Err(CheckpointError::Disagrees {
                field,
                unsigned,
                signed,
            })
        };
        if self.tree_size != body.size {
            return disagrees("tree_size", self.tree_size.to_string(), body.size.to_string());
        }
        if merkle::decode(&self.root_hash) != Some(body.root) {
            return disagrees("root_hash", self.root_hash.clone(), merkle::encode(&body.root));
        }
        if self.origin != body.origin {
            return disagrees("origin", self.origin.clone(), body.origin.clone());
        }
        // Absent is not a disagreement: the field only repeats the note's time line.
        let signed_time = body.time.map(format_time);
        if self.time.is_some() && self.time != signed_time {
            return disagrees(
                "time",
                self.time.clone().unwrap_or_default(),
                signed_time.unwrap_or_else(|| "none".into()),
            );
        }
        Ok(())
    }
}

/// Verifies a checkpoint note with `key` and reads its body, checking the origin (`origin`, or
/// else the key's name).
pub fn open_note(
    note: &str,
    key: &VerifierKey,
    origin: Option<&str>,
) -> Result<CheckpointBody, CheckpointError> {
    let body = CheckpointBody::parse(note::open(note, key)?)?;
    let expected = origin.unwrap_or(key.name());
    if body.origin != expected {
        return Err(CheckpointError::Origin {
            found: body.origin,
            expected: expected.to_string(),
        });
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn a_body_round_trips_and_signs() {
        let (key, _, verifier) = SigningKey::generate("genesys.example/audit").unwrap();
        let verifier = VerifierKey::parse(&verifier).unwrap();
        let body = CheckpointBody::new(
            "genesys.example/audit",
            8,
            merkle::leaf_hash(b""),
            datetime!(2026-12-02 08:00:00 UTC),
        );
        let text = body.to_body();
        assert_eq!(
            text,
            "genesys.example/audit\n8\nbjQLnP+zepicpUTmu3gKLHiQHT+zNzh2hRGjBhevoB0=\n\
             time 2026-12-02T08:00:00.000Z\n"
        );
        assert_eq!(CheckpointBody::parse(&text).unwrap(), body);
        let message = Checkpoint::sign(&body, &key).unwrap();
        assert_eq!(message.open(&verifier, None).unwrap(), body);
        let json = serde_json::to_string(&message).unwrap();
        assert_eq!(serde_json::from_str::<Checkpoint>(&json).unwrap(), message);
        let lying = Checkpoint {
            tree_size: 9,
            ..message.clone()
        };
        assert!(matches!(
            lying.open(&verifier, None),
            Err(CheckpointError::Disagrees {
                field: "tree_size",
                ..
            })
        ));
        let backdated = Checkpoint {
            time: Some("2026-12-01T08:00:00.000Z".into()),
            ..message.clone()
        };
        assert!(matches!(
            backdated.open(&verifier, None),
            Err(CheckpointError::Disagrees { field: "time", .. })
        ));
        assert!(Checkpoint {
            time: None,
            ..message.clone()
        }
        .open(&verifier, None)
        .is_ok());
        assert!(matches!(
            message.open(&verifier, Some("other")),
            Err(CheckpointError::Origin { .. })
        ));
    }

    #[test]
    fn malformed_bodies_are_refused() {
        for body in [
            "o\n08\nbjQLnP+zepicpUTmu3gKLHiQHT+zNzh2hRGjBhevoB0=\n",
            "o\n8\nbjQL\n",
            "o\n8\nbjQLnP+zepicpUTmu3gKLHiQHT+zNzh2hRGjBhevoB0=",
            "\n8\nbjQLnP+zepicpUTmu3gKLHiQHT+zNzh2hRGjBhevoB0=\n",
            "o\n8\nbjQLnP+zepicpUTmu3gKLHiQHT+zNzh2hRGjBhevoB0=\ntime yesterday\n",
        ] {
            assert!(CheckpointBody::parse(body).is_err(), "{body:?}");
        }
    }
}
