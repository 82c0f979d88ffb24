//! Architect flows: the fields of `Flow` and `Operation` the deploy lifecycle reads, and the
//! flow's consumers as dependency tracking reports them.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct EntityRef {
    pub id: String,
    #[serde(default)]
    pub name: Option<String>,
}

impl std::fmt::Display for EntityRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.name {
            Some(name) => write!(f, "{name} ({})", self.id),
            None => f.write_str(&self.id),
        }
    }
}

/// `Flow`, the fields the worker reads.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Flow {
    pub id: String,
    pub name: String,
    #[serde(rename = "type")]
    pub flow_type: String,
    #[serde(default)]
    pub locked_client: Option<EntityRef>,
    #[serde(default)]
    pub locked_user: Option<EntityRef>,
    #[serde(default)]
    pub saved_version: Option<EntityRef>,
    #[serde(default)]
    pub checked_in_version: Option<EntityRef>,
    #[serde(default)]
    pub published_version: Option<EntityRef>,
    #[serde(default)]
    pub current_operation: Option<Operation>,
}

impl Flow {
    pub fn published(&self) -> Option<&str> {
        self.published_version.as_ref().map(|v| v.id.as_str())
    }

    pub fn saved(&self) -> Option<&str> {
        self.saved_version.as_ref().map(|v| v.id.as_str())
    }

    pub fn checked_in(&self) -> Option<&str> {
        self.checked_in_version.as_ref().map(|v| v.id.as_str())
    }

    /// Who holds the lock, if anyone does: an OAuth client (`lockedClient`), else a person
    /// (`lockedUser`, typically editing the flow in Architect).
    pub fn lock_holder(&self) -> Option<LockHolder> {
        match (&self.locked_client, &self.locked_user) {
            (Some(client), _) => Some(LockHolder::Client {
                id: client.id.clone(),
                name: client.name.clone(),
            }),
            (None, Some(user)) => Some(LockHolder::User {
                id: user.id.clone(),
                name: user.name.clone(),
            }),
            (None, None) => None,
        }
    }

    /// Who holds the lock, if anyone other than `client_id` does.
    pub fn locked_by_other(&self, client_id: &str) -> Option<LockHolder> {
        self.lock_holder()
            .filter(|holder| !matches!(holder, LockHolder::Client { id, .. } if id == client_id))
    }

    pub fn locked_by(&self, client_id: &str) -> bool {
        self.locked_client.as_ref().is_some_and(|c| c.id == client_id)
    }
}

/// Who holds a flow's lock, as audit events record it (`{"type": "user", "id", "name"}`) and
/// messages name it (`user Dana Reyes (8f1c…)`, `client other-client`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum LockHolder {
    /// A person: `lockedUser`.
    User { id: String, name: Option<String> },
    /// An OAuth client: `lockedClient`.
    Client { id: String, name: Option<String> },
}

impl std::fmt::Display for LockHolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (kind, id, name) = match self {
            LockHolder::User { id, name } => ("user", id, name),
            LockHolder::Client { id, name } => ("client", id, name),
        };
        match name {
            Some(name) => write!(f, "{kind} {name} ({id})"),
            None => write!(f, "{kind} {id}"),
        }
    }
}

/// `Operation`: an asynchronous checkin or publish.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Operation {
    pub id: String,
    #[serde(default)]
    pub complete: bool,
    #[serde(default)]
    pub action_name: Option<String>,
    #[serde(default)]
    pub action_status: Option<String>,
    #[serde(default)]
    pub error_code: Option<String>,
    #[serde(default)]
    pub error_message: Option<String>,
    /// `Detail`s (`errorCode`, `fieldName`, `entityId`, `entityName`), kept as Genesys sent
    /// them: they reach the audit event and the dead letter whole.
    #[serde(default)]
    pub error_details: Option<Vec<Value>>,
    /// The values of the placeholders in `errorMessage`, as Genesys sent them.
    #[serde(default)]
    pub error_message_params: Option<Map<String, Value>>,
}

impl Operation {
    /// What a failed operation says about itself: its message and every detail.
    pub fn failure_text(&self) -> String {
        let mut text = self.error_message.clone().unwrap_or_else(|| "no message".into());
        for detail in self.error_details.iter().flatten() {
            let parts: Vec<&str> = ["errorCode", "fieldName", "entityName"]
                .into_iter()
                .filter_map(|field| detail.get(field).and_then(Value::as_str))
                .collect();
            if !parts.is_empty() {
                text.push_str(&format!("; {}", parts.join(" ")));
            }
        }
        text
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct FlowListing {
    pub entities: Vec<Flow>,
}

/// `ConsumingResourcesEntityListing`, one page of what uses an object.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConsumingResources {
    #[serde(default)]
    pub entities: Vec<Consumer>,
    #[serde(default)]
    pub page_count: Option<u32>,
    #[serde(default)]
    pub total: Option<u64>,
}

/// A `Dependency` that consumes a flow (another flow, a queue, a schedule …): the fields the
/// audit event records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Consumer {
    pub id: String,
    #[serde(default)]
    pub name: Option<String>,
    /// A dependency type, e.g. `INBOUNDCALLFLOW`, `COMMONMODULEFLOW`, `QUEUE`.
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub version: Option<String>,
}

/// The dependency-tracking object type of a flow of type `flow_type` (`INBOUNDCALL` →
/// `INBOUNDCALLFLOW`; `WORKFLOW` is one already).
pub fn dependency_type(flow_type: &str) -> String {
    let flow_type = flow_type.to_ascii_uppercase();
    if flow_type.ends_with("FLOW") {
        flow_type
    } else {
        format!("{flow_type}FLOW")
    }
}

/// `FlowVersion`, the fields the worker reads.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct FlowVersion {
    pub id: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn flow(locks: Value) -> Flow {
        let mut value = json!({"id": "f", "name": "Main IVR", "type": "INBOUNDCALL"});
        for (k, v) in locks.as_object().unwrap() {
            value[k] = v.clone();
        }
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn the_lock_holder_is_the_client_else_the_person_and_is_named_in_messages_and_events() {
        let person = flow(json!({"lockedUser": {"id": "u-1", "name": "Dana Reyes"}}));
        let holder = person.lock_holder().unwrap();
        assert_eq!(holder.to_string(), "user Dana Reyes (u-1)");
        assert_eq!(
            serde_json::to_value(&holder).unwrap(),
            json!({"type": "user", "id": "u-1", "name": "Dana Reyes"})
        );
        let client = flow(json!({"lockedClient": {"id": "other-client"}, "lockedUser": {"id": "u-1"}}));
        assert_eq!(client.lock_holder().unwrap().to_string(), "client other-client");
        assert_eq!(client.locked_by_other("other-client"), None);
        assert!(client.locked_by_other("me").is_some());
        assert_eq!(flow(json!({})).lock_holder(), None);
    }

    #[test]
    fn a_failed_operation_keeps_its_details_as_genesys_sent_them() {
        let op: Operation = serde_json::from_value(json!({
            "id": "op", "complete": true, "actionName": "PUBLISH", "actionStatus": "FAILURE",
            "errorCode": "architect.publish.failed", "errorMessage": "Version 2.0 failed",
            "errorDetails": [{"errorCode": "architect.flow.validation.error", "fieldName": "startUpRef", "entityId": "f", "entityName": "Main IVR"}],
            "errorMessageParams": {"version": "2.0"}
        }))
        .unwrap();
        assert_eq!(op.error_details.as_ref().unwrap()[0]["entityId"], "f");
        assert_eq!(op.error_message_params.as_ref().unwrap()["version"], "2.0");
        assert_eq!(
            op.failure_text(),
            "Version 2.0 failed; architect.flow.validation.error startUpRef Main IVR"
        );
    }

    #[test]
    fn a_flows_dependency_type_ends_in_flow() {
        assert_eq!(dependency_type("INBOUNDCALL"), "INBOUNDCALLFLOW");
        assert_eq!(dependency_type("inboundcall"), "INBOUNDCALLFLOW");
        assert_eq!(dependency_type("WORKFLOW"), "WORKFLOW");
        assert_eq!(dependency_type("COMMONMODULE"), "COMMONMODULEFLOW");
    }
}
