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

impl FlowDefinition {
    /// Reads a flow from JSON, naming the offending field on error.
    pub fn from_value(value: Value) -> Result<Self, String> {
        serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            format!("{path}: {}", e.into_inner())
        })
    }
}
