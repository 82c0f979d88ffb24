//! Presence definitions: the names jobs use (`Available`, `On Queue`, org labels) resolved to the
//! definition ids the API takes, through a cached `GET /api/v2/presence/definitions`.
//!
//! Names match a definition's `systemPresence` or any of its language labels, ignoring case and
//! spaces (`On Queue` = `OnQueue`); system definitions win over org-defined ones of the same name.
//! An unknown name refreshes the cache once before it is reported, so a presence added in
//! Genesys is found without a restart.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::Mutex;
use tokio::time::Instant;
use uuid::Uuid;

use super::{GenesysError, LaneClient};

/// A presence definition as the API lists it (`OrganizationPresenceDefinition`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PresenceDefinition {
    pub id: String,
    #[serde(rename = "type", default)]
    pub definition_type: String,
    #[serde(default)]
    pub system_presence: String,
    #[serde(default)]
    pub language_labels: HashMap<String, String>,
    #[serde(default)]
    pub deactivated: bool,
}

impl PresenceDefinition {
    /// The name shown in events: the English label, else the system presence.
    pub fn display_name(&self) -> String {
        self.language_labels
            .get("en_US")
            .cloned()
            .unwrap_or_else(|| self.system_presence.clone())
    }

    fn is_system(&self) -> bool {
        self.definition_type.eq_ignore_ascii_case("System")
    }

    /// Whether `wanted` (a name or an id) names this definition.
    pub fn answers_to(&self, wanted: &str) -> bool {
        if self.id.eq_ignore_ascii_case(wanted.trim()) {
            return true;
        }
        let wanted = normalize(wanted);
        normalize(&self.system_presence) == wanted
            || self
                .language_labels
                .values()
                .any(|label| normalize(label) == wanted)
    }
}

#[derive(Deserialize)]
struct Listing {
    entities: Vec<PresenceDefinition>,
}

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("unknown presence {wanted:?} (known: {known})")]
    Unknown { wanted: String, known: String },
    #[error("presence {wanted:?} is deactivated")]
    Deactivated { wanted: String },
    #[error(transparent)]
    Genesys(#[from] GenesysError),
}

/// Case- and space-insensitive form of a presence name.
pub fn normalize(name: &str) -> String {
    name.chars()
        .filter(|c| !c.is_whitespace())
        .flat_map(char::to_lowercase)
        .collect()
}

#[derive(Debug)]
pub struct PresenceDirectory {
    ttl: Duration,
    cache: Mutex<Option<(Instant, Arc<Vec<PresenceDefinition>>)>>,
}

/// Below this age an unknown name does not trigger another listing.
const MIN_REFRESH_AGE: Duration = Duration::from_secs(10);

impl PresenceDirectory {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            cache: Mutex::new(None),
        }
    }

    /// The definition `wanted` names: a definition id, a system presence or a label.
    pub async fn resolve(
        &self,
        client: LaneClient<'_>,
        wanted: &str,
    ) -> Result<PresenceDefinition, ResolveError> {
        let (definitions, age) = self.definitions(client, false).await?;
        if let Some(found) = find(&definitions, wanted) {
            return check_active(found, wanted);
        }
        if age >= MIN_REFRESH_AGE {
            let (definitions, _) = self.definitions(client, true).await?;
            if let Some(found) = find(&definitions, wanted) {
                return check_active(found, wanted);
            }
        }
        let known = definitions
            .iter()
            .filter(|d| !d.deactivated)
            .map(PresenceDefinition::display_name)
            .collect::<Vec<_>>()
            .join(", ");
        Err(ResolveError::Unknown {
            wanted: wanted.to_string(),
            known,
        })
    }

    /// The definition with `id`, if listed.
    pub async fn by_id(
        &self,
        client: LaneClient<'_>,
        id: &str,
    ) -> Result<Option<PresenceDefinition>, GenesysError> {
        let (definitions, _) = self.definitions(client, false).await?;
        Ok(definitions
            .iter()
            .find(|d| d.id.eq_ignore_ascii_case(id))
            .cloned())
    }

    async fn definitions(
        &self,
        client: LaneClient<'_>,
        force: bool,
    ) -> Result<(Arc<Vec<PresenceDefinition>>, Duration), GenesysError> {
        let mut cache = self.cache.lock().await;
        if let Some((fetched, definitions)) = cache.as_ref() {
            if !force && fetched.elapsed() < self.ttl {
                return Ok((definitions.clone(), fetched.elapsed()));
            }
        }
        let listing = client.get::<Listing>("/api/v2/presence/definitions").await?;
        let definitions = Arc::new(listing.body.entities);
        *cache = Some((Instant::now(), definitions.clone()));
        Ok((definitions, Duration::ZERO))
    }
}

fn find<'a>(definitions: &'a [PresenceDefinition], wanted: &str) -> Option<&'a PresenceDefinition> {
    if Uuid::parse_str(wanted.trim()).is_ok() {
        return definitions
            .iter()
            .find(|d| d.id.eq_ignore_ascii_case(wanted.trim()));
    }
    let matching = || definitions.iter().filter(|d| d.answers_to(wanted));
    // Prefer an active system definition, then any active one, then report the deactivated one.
    matching()
        .find(|d| d.is_system() && !d.deactivated)
        .or_else(|| matching().find(|d| !d.deactivated))
        .or_else(|| matching().next())
}

fn check_active(found: &PresenceDefinition, wanted: &str) -> Result<PresenceDefinition, ResolveError> {
    if found.deactivated {
        return Err(ResolveError::Deactivated {
            wanted: wanted.to_string(),
        });
    }
    Ok(found.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(id: &str, ty: &str, system: &str, label: &str, deactivated: bool) -> PresenceDefinition {
        PresenceDefinition {
            id: id.into(),
            definition_type: ty.into(),
            system_presence: system.into(),
            language_labels: HashMap::from([("en_US".to_string(), label.to_string())]),
            deactivated,
        }
    }

    fn defs() -> Vec<PresenceDefinition> {
        vec![
            def(
                "e08eaf1b-ee47-4fa9-a231-1200e284798f",
                "System",
                "On Queue",
                "On Queue",
                false,
            ),
            def(
                "6a3af858-942f-489d-9700-5f9bcdcdae9b",
                "System",
                "Available",
                "Available",
                false,
            ),
            def(
                "11111111-1111-4111-8111-111111111111",
                "User",
                "Meal",
                "Lunch",
                false,
            ),
            def(
                "22222222-2222-4222-8222-222222222222",
                "User",
                "Away",
                "Old Away",
                true,
            ),
        ]
    }

    #[test]
    fn names_match_ignoring_case_and_spaces() {
        let d = defs();
        assert_eq!(
            find(&d, "OnQueue").unwrap().id,
            "e08eaf1b-ee47-4fa9-a231-1200e284798f"
        );
        assert_eq!(
            find(&d, "on queue").unwrap().id,
            "e08eaf1b-ee47-4fa9-a231-1200e284798f"
        );
        assert_eq!(find(&d, "AVAILABLE").unwrap().system_presence, "Available");
    }

    #[test]
    fn org_labels_and_ids_resolve() {
        let d = defs();
        assert_eq!(
            find(&d, "lunch").unwrap().id,
            "11111111-1111-4111-8111-111111111111"
        );
        assert_eq!(
            find(&d, "6A3AF858-942F-489D-9700-5F9BCDCDAE9B")
                .unwrap()
                .system_presence,
            "Available"
        );
        assert!(find(&d, "33333333-3333-4333-8333-333333333333").is_none());
    }

    #[test]
    fn deactivated_definitions_are_found_but_refused() {
        let d = defs();
        let found = find(&d, "Old Away").unwrap();
        assert!(matches!(
            check_active(found, "Old Away"),
            Err(ResolveError::Deactivated { .. })
        ));
    }
}
