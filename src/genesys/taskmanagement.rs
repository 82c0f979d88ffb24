//! Task Management: the workitem fields the worker reads, and the worktypes' status graphs.
//!
//! Status names resolve through `GET /api/v2/taskmanagement/worktypes/{worktypeId}/statuses`,
//! cached per worktype for a TTL; a name or id the cache does not know refreshes it once (a
//! status added in Genesys is found without a restart).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::Mutex;
use tokio::time::Instant;
use uuid::Uuid;

use super::{GenesysError, LaneClient};

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Reference {
    pub id: String,
    #[serde(default)]
    pub name: Option<String>,
}

/// `Workitem`, the fields the worker reads.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Workitem {
    pub id: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(rename = "type")]
    pub worktype: Reference,
    pub status: Reference,
    #[serde(default)]
    pub status_category: Option<String>,
    #[serde(default)]
    pub external_tag: Option<String>,
    #[serde(default)]
    pub queue: Option<Reference>,
    #[serde(default)]
    pub priority: Option<i64>,
    #[serde(default)]
    pub date_modified: Option<String>,
}

/// `WorkitemStatus`, the fields the worker reads.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkitemStatus {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub category: Option<String>,
    /// Empty: any status of the worktype may follow.
    #[serde(default)]
    pub destination_statuses: Vec<Reference>,
}

impl WorkitemStatus {
    /// Whether `wanted` (an id or a name, ignoring case and surrounding space) names this status.
    pub fn answers_to(&self, wanted: &str) -> bool {
        let wanted = wanted.trim();
        self.id.eq_ignore_ascii_case(wanted) || self.name.trim().eq_ignore_ascii_case(wanted)
    }

    /// Whether a workitem in this status may move to `target`.
    pub fn allows(&self, target: &WorkitemStatus) -> bool {
        self.destination_statuses.is_empty()
            || self
                .destination_statuses
                .iter()
                .any(|d| d.id.eq_ignore_ascii_case(&target.id))
    }
}

#[derive(Deserialize)]
struct StatusListing {
    entities: Vec<WorkitemStatus>,
}

#[derive(Deserialize)]
struct QueryListing {
    entities: Vec<Workitem>,
}

/// The statuses of one worktype.
#[derive(Debug, Clone)]
pub struct StatusGraph {
    pub worktype: String,
    pub statuses: Arc<Vec<WorkitemStatus>>,
}

impl StatusGraph {
    pub fn find(&self, wanted: &str) -> Option<&WorkitemStatus> {
        self.statuses.iter().find(|s| s.answers_to(wanted))
    }

    /// Names of the statuses `from` allows, for error messages.
    pub fn allowed_from(&self, from: &WorkitemStatus) -> String {
        if from.destination_statuses.is_empty() {
            return "any".into();
        }
        from.destination_statuses
            .iter()
            .map(|d| {
                self.find(&d.id)
                    .map(|s| s.name.clone())
                    .unwrap_or_else(|| d.id.clone())
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Below this age an unknown status does not trigger another listing.
const MIN_REFRESH_AGE: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct StatusDirectory {
    ttl: Duration,
    /// Per worktype: the graph and when it was listed.
    cache: Mutex<HashMap<String, (Instant, StatusGraph)>>,
}

impl StatusDirectory {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The status graph of `worktype`, refreshed first when `must_know` is not in the cached one.
    pub async fn graph(
        &self,
        client: LaneClient<'_>,
        worktype: &str,
        must_know: &[&str],
    ) -> Result<StatusGraph, GenesysError> {
        let mut cache = self.cache.lock().await;
        if let Some((fetched, graph)) = cache.get(worktype) {
            let knows_all = must_know.iter().all(|w| graph.find(w).is_some());
            let fresh = fetched.elapsed() < self.ttl;
            if fresh && (knows_all || fetched.elapsed() < MIN_REFRESH_AGE) {
                return Ok(graph.clone());
            }
        }
        let path = format!("/api/v2/taskmanagement/worktypes/{worktype}/statuses");
        let listing = client.get::<StatusListing>(&path).await?;
        let graph = StatusGraph {
            worktype: worktype.to_string(),
            statuses: Arc::new(listing.body.entities),
        };
        cache.insert(worktype.to_string(), (Instant::now(), graph.clone()));
        Ok(graph)
    }
}

/// The workitem of `type_id` carrying `external_tag`, if one exists: how a create whose answer
/// was lost is settled.
pub async fn find_by_external_tag(
    client: LaneClient<'_>,
    type_id: Uuid,
    external_tag: &str,
) -> Result<Option<Workitem>, GenesysError> {
    let filter = |name: &str, value: String| json!({"name": name, "type": "String", "operator": "EQ", "values": [value]});
    let query: Value = json!({
        "filters": [filter("typeId", type_id.to_string()), filter("externalTag", external_tag.to_string())],
        "pageSize": 2,
    });
    let reply = client
        .post::<QueryListing>("/api/v2/taskmanagement/workitems/query", &query)
        .await?;
    let mut found = reply.body.entities;
    if found.len() > 1 {
        tracing::warn!(
            external_tag,
            count = found.len(),
            "Several workitems carry one external tag; using the first."
        );
    }
    Ok((!found.is_empty()).then(|| found.remove(0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(id: &str, name: &str, destinations: &[&str]) -> WorkitemStatus {
        WorkitemStatus {
            id: id.into(),
            name: name.into(),
            category: None,
            destination_statuses: destinations
                .iter()
                .map(|d| Reference {
                    id: d.to_string(),
                    name: None,
                })
                .collect(),
        }
    }

    #[test]
    fn transitions_follow_destination_statuses_and_an_empty_list_allows_any() {
        let open = status("a", "Open", &["b"]);
        let in_progress = status("b", "In Progress", &[]);
        let closed = status("c", "Closed", &["a"]);
        assert!(open.allows(&in_progress));
        assert!(!open.allows(&closed));
        assert!(in_progress.allows(&closed) && in_progress.allows(&open));
    }

    #[test]
    fn statuses_answer_to_their_id_or_name_ignoring_case() {
        let graph = StatusGraph {
            worktype: "t".into(),
            statuses: Arc::new(vec![
                status("A1", "In Progress", &["C3"]),
                status("C3", "Closed", &[]),
            ]),
        };
        assert_eq!(graph.find(" in progress ").unwrap().id, "A1");
        assert_eq!(graph.find("a1").unwrap().name, "In Progress");
        assert!(graph.find("Waiting").is_none());
        assert_eq!(graph.allowed_from(&graph.statuses[0]), "Closed");
        assert_eq!(graph.allowed_from(&graph.statuses[1]), "any");
    }
}
