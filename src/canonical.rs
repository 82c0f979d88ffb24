//! Canonical JSON: object keys sorted, no insignificant whitespace.
//!
//! Used wherever bytes must be reproducible by someone else: payload fingerprints and the audit
//! hash chain (docs/architecture.md, section 2). Sorting is done here rather than relying on serde_json's map
//! type, whose ordering changes if any crate in the tree enables `preserve_order`.

use serde_json::Value;
use sha2::{Digest, Sha256};

/// Serializes `value` canonically.
pub fn to_string(value: &Value) -> String {
    let mut out = Vec::new();
    append(value, &[], &mut out);
    String::from_utf8(out).expect("JSON is written as UTF-8")
}

/// Appends `value` canonically to `out`, without the top-level members named in `skip` if it is an object
/// (an event's own `checksum`, which the checksum cannot cover).
pub fn append(value: &Value, skip: &[&str], out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map
                .iter()
                .filter(|(key, _)| !skip.contains(&key.as_str()))
                .collect();
            entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
            out.push(b'{');
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_scalar(key, out);
                out.push(b':');
                append(item, &[], out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                append(item, &[], out);
            }
            out.push(b']');
        }
        scalar => write_scalar(scalar, out),
    }
}

/// A string or scalar as compact JSON (escaped as serde_json escapes it).
fn write_scalar(value: &(impl serde::Serialize + ?Sized), out: &mut Vec<u8>) {
    serde_json::to_writer(out, value).expect("a string or scalar always serializes");
}

/// Lowercase hex SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let digest = Sha256::digest(data);
    let mut hex = String::with_capacity(64);
    for byte in digest {
        hex.push(DIGITS[usize::from(byte >> 4)] as char);
        hex.push(DIGITS[usize::from(byte & 0xf)] as char);
    }
    hex
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_are_sorted_at_every_depth_and_whitespace_dropped() {
        let value = json!({"b": 1, "a": {"z": [3, {"y": null, "x": "s"}], "c": true}});
        assert_eq!(
            to_string(&value),
            r#"{"a":{"c":true,"z":[3,{"x":"s","y":null}]},"b":1}"#
        );
    }

    #[test]
    fn strings_are_escaped_as_json() {
        assert_eq!(
            to_string(&json!({"k\"": "line\nbreak"})),
            r#"{"k\"":"line\nbreak"}"#
        );
    }

    #[test]
    fn sha256_is_lowercase_hex() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
