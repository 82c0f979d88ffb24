//! IVR flow graphs as `flow.deploy` jobs carry them (docs/architecture.md, section 2.1): the model, its
//! validation ([`validate`]) and its optimisation ([`optimize`]).
//!
//! ```json
//! { "name": "Main IVR", "type": "inboundcall", "start": "start",
//!   "nodes": {
//!     "start": { "type": "start", "transitions": [ { "label": "next", "target": "menu" } ] },
//!     "menu":  { "type": "menu", "media_id": "prompt-welcome",
//!                "conditions": [ { "expression": "Call.Ani == \"+15551234\"", "priority": 10, "target": "vip" } ],
//!                "transitions": [ { "label": "default", "target": "queue" } ] },
//!     "vip":   { "type": "transfer", "transitions": [] },
//!     "queue": { "type": "transfer", "transitions": [] } } }
//! ```
//!
//! Fields the worker does not interpret (a node's `queue_id`, prompts, settings) are kept as
//! they are and deployed unchanged.

pub mod optimize;
pub mod validate;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use optimize::{optimize, Optimization};
pub use validate::{validate, FlowError, Rules};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlowDefinition {
    pub name: String,
    #[serde(rename = "type")]
    pub flow_type: String,
    pub start: String,
    /// By name; sorted, so reports list nodes in a stable order.
    pub nodes: BTreeMap<String, Node>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Node {
    #[serde(rename = "type")]
    pub node_type: String,
    #[serde(default)]
    pub transitions: Vec<Transition>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_id: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    #[serde(default)]
    pub label: String,
    pub target: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Condition {
    pub expression: String,
    #[serde(default)]
    pub priority: i64,
    pub target: String,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Node {
    /// Every node this one can lead to: conditions first, then transitions.
    pub fn targets(&self) -> impl Iterator<Item = &str> {
        self.conditions
            .iter()
            .map(|c| c.target.as_str())
            .chain(self.transitions.iter().map(|t| t.target.as_str()))
    }
}

/// Lowercase hex SHA-256 of `configuration` as canonical JSON (keys sorted, no whitespace):
/// equal for two configurations exactly when they are the same document, whatever the order of
/// their keys. A deploy compares what it would save with what is published by it, and a
/// published version read back with what was saved.
pub fn configuration_hash(configuration: &Value) -> String {
    let mut canonical = Vec::new();
    crate::canonical::append(configuration, &[], &mut canonical);
    crate::canonical::sha256_hex(&canonical)
}

impl FlowDefinition {
    /// Reads a flow from JSON, naming the offending field on error.
    pub fn from_value(value: Value) -> Result<Self, String> {
        serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            format!("{path}: {}", e.into_inner())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_configuration_hash_ignores_key_order_and_whitespace_but_not_content() {
        let a = json!({"name": "Main IVR", "nodes": {"a": {"type": "start"}, "b": {"type": "end"}}});
        let b: Value = serde_json::from_str(
            r#"{ "nodes": { "b": {"type":"end"}, "a": {"type":"start"} }, "name": "Main IVR" }"#,
        )
        .unwrap();
        assert_eq!(configuration_hash(&a), configuration_hash(&b));
        assert_eq!(
            configuration_hash(&a),
            crate::canonical::sha256_hex(crate::canonical::to_string(&a).as_bytes())
        );
        let mut c = a.clone();
        c["nodes"]["b"]["type"] = json!("transfer");
        assert_ne!(configuration_hash(&a), configuration_hash(&c));
        assert_eq!(configuration_hash(&a).len(), 64);
    }
}
