//! Architect flows: the fields of `Flow` and `Operation` the deploy lifecycle reads.

use serde::Deserialize;

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

    /// Who holds the lock, if anyone other than `client_id` does.
    pub fn locked_by_other(&self, client_id: &str) -> Option<String> {
        match (&self.locked_client, &self.locked_user) {
            (Some(client), _) if client.id != client_id => Some(format!("client {client}")),
            // A person, typically editing the flow in Architect.
            (None, Some(user)) => Some(format!("user {user}")),
            _ => None,
        }
    }

    pub fn locked_by(&self, client_id: &str) -> bool {
        self.locked_client.as_ref().is_some_and(|c| c.id == client_id)
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
    #[serde(default)]
    pub error_details: Vec<OperationDetail>,
}

impl Operation {
    /// What a failed operation says about itself: its message and every detail.
    pub fn failure_text(&self) -> String {
        let mut text = self.error_message.clone().unwrap_or_else(|| "no message".into());
        for detail in &self.error_details {
            let parts: Vec<&str> = [&detail.error_code, &detail.field_name, &detail.entity_name]
                .into_iter()
                .filter_map(|part| part.as_deref())
                .collect();
            if !parts.is_empty() {
                text.push_str(&format!("; {}", parts.join(" ")));
            }
        }
        text
    }
}

/// `Detail`, an entry of an operation's `errorDetails`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OperationDetail {
    #[serde(default)]
    pub error_code: Option<String>,
    #[serde(default)]
    pub field_name: Option<String>,
    #[serde(default)]
    pub entity_name: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct FlowListing {
    pub entities: Vec<Flow>,
}

/// `FlowVersion`, the fields the worker reads.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct FlowVersion {
    pub id: String,
}
