//! Bounds on the text the worker writes from what producers send.
//!
//! Error messages quote input (a `job_id`, a field name, a flow's node names) and end up in AMQP
//! headers, audit events and log lines. An AMQP frame is at most 128 KiB (RabbitMQ closes the
//! connection on a larger one, dropping every job in flight), so nothing a producer controls is
//! copied whole: texts are cut to a bound with a marker saying how long they were, and a dead
//! letter carries only the original headers that fit.

use std::borrow::Cow;

use lapin::types::{AMQPValue, FieldTable, ShortString};

/// An error message in an event, a header or a log line.
pub const MESSAGE_MAX: usize = 1024;
/// An error code, or a value quoted on its own (an entity name).
pub const VALUE_MAX: usize = 256;
/// The original headers a dead letter or a retry carries over, in all.
pub const CARRIED_HEADERS_MAX: usize = 16 * 1024;
/// One original header carried over.
pub const CARRIED_HEADER_MAX: usize = 4 * 1024;

/// `text`, or its first bytes (cut on a character boundary) and a marker, at most `max` bytes.
pub fn truncate(text: &str, max: usize) -> Cow<'_, str> {
    if text.len() <= max {
        return Cow::Borrowed(text);
    }
    let marker = format!("… [truncated: {} bytes]", text.len());
    let mut cut = max.saturating_sub(marker.len());
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    Cow::Owned(format!("{}{marker}", &text[..cut]))
}

/// `text` bounded to [`MESSAGE_MAX`], owned.
pub fn message(text: String) -> String {
    match truncate(&text, MESSAGE_MAX) {
        Cow::Borrowed(_) => text,
        Cow::Owned(cut) => cut,
    }
}

/// The headers of `headers` that fit the bounds (largest dropped first), and the names of those
/// that did not.
pub fn carried_headers(headers: &FieldTable) -> (FieldTable, Vec<String>) {
    let mut sized: Vec<(&ShortString, &AMQPValue, usize)> = headers
        .inner()
        .iter()
        .map(|(name, value)| (name, value, name.as_str().len() + encoded_size(value)))
        .collect();
    sized.sort_by_key(|(_, _, size)| *size);
    let mut kept = FieldTable::default();
    let mut dropped = Vec::new();
    let mut total = 0;
    for (name, value, size) in sized {
        if size <= CARRIED_HEADER_MAX && total + size <= CARRIED_HEADERS_MAX {
            total += size;
            kept.insert(name.clone(), value.clone());
        } else {
            dropped.push(truncate(name.as_str(), 64).into_owned());
        }
    }
    dropped.sort();
    (kept, dropped)
}

/// About how many bytes `value` takes in an AMQP frame (type tags and lengths included).
fn encoded_size(value: &AMQPValue) -> usize {
    match value {
        AMQPValue::LongString(s) => 5 + s.as_bytes().len(),
        AMQPValue::ShortString(s) => 2 + s.as_str().len(),
        AMQPValue::ByteArray(bytes) => 5 + bytes.as_slice().len(),
        AMQPValue::FieldTable(table) => {
            5 + table
                .inner()
                .iter()
                .map(|(name, value)| 1 + name.as_str().len() + encoded_size(value))
                .sum::<usize>()
        }
        AMQPValue::FieldArray(array) => 5 + array.as_slice().iter().map(encoded_size).sum::<usize>(),
        // Numbers, booleans, timestamps, void: a tag and at most 8 bytes.
        _ => 9,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::LongString;

    #[test]
    fn short_text_is_kept_and_long_text_is_cut_with_a_marker() {
        assert_eq!(truncate("short", 10), "short");
        let long = "J".repeat(300_000);
        let cut = truncate(&long, 256);
        assert!(cut.len() <= 256, "{}", cut.len());
        assert!(cut.starts_with("JJJJ"));
        assert!(cut.ends_with("[truncated: 300000 bytes]"), "{cut}");
    }

    #[test]
    fn a_cut_never_splits_a_character() {
        let long = "é".repeat(1000);
        let cut = truncate(&long, 101);
        assert!(cut.len() <= 101);
        assert!(cut.contains("[truncated"));
    }

    #[test]
    fn only_the_headers_that_fit_are_carried() {
        let mut headers = FieldTable::default();
        let text = |n: usize| AMQPValue::LongString(LongString::from("x".repeat(n)));
        headers.insert("traceparent".into(), text(55));
        headers.insert("huge".into(), text(200_000));
        for n in 0..10 {
            headers.insert(format!("big-{n}").into(), text(3_000));
        }
        let (kept, dropped) = carried_headers(&headers);
        let size: usize = kept.inner().values().map(encoded_size).sum();
        assert!(size <= CARRIED_HEADERS_MAX);
        assert!(kept.inner().contains_key("traceparent"), "small headers first");
        assert!(dropped.contains(&"huge".to_string()));
        assert_eq!(kept.inner().len() + dropped.len(), 12);
    }
}
