//! Faults set through the control API, drawn from a seeded random generator so a run can be
//! reproduced: the same requests in the same order meet the same faults.

use std::collections::BTreeMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// Faults for one route template (`PATCH /api/v2/users/{userId}/presences/purecloud`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    pub route: String,
    /// Probability (0..=1) of answering each of 500, 502, 503, 504 instead of serving.
    #[serde(default)]
    pub errors: BTreeMap<u16, f64>,
    /// Added before the request is served.
    #[serde(default)]
    pub latency_ms: u64,
    /// Probability of serving the request (the change is made) and then closing the
    /// connection without a response: the ambiguous case.
    #[serde(default)]
    pub drop_response: f64,
    /// Injections left (errors and drops); none means unlimited. The fault is removed at 0.
    #[serde(default)]
    pub times: Option<u32>,
}

impl Fault {
    /// Why this fault cannot be installed.
    pub fn problem(&self) -> Option<String> {
        if let Some(status) = self.errors.keys().find(|s| ![500, 502, 503, 504].contains(*s)) {
            return Some(format!(
                "errors: status {status} is not one of 500, 502, 503, 504"
            ));
        }
        let probabilities = self.errors.values().chain(std::iter::once(&self.drop_response));
        if probabilities.clone().any(|p| !(0.0..=1.0).contains(p)) {
            return Some("probabilities must be between 0 and 1".into());
        }
        if probabilities.sum::<f64>() > 1.0 + f64::EPSILON {
            return Some("errors and drop_response together must not exceed 1".into());
        }
        None
    }
}

/// What the gateway does with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Injection {
    Serve,
    Error(u16),
    /// Serve, then drop the connection instead of answering.
    DropResponse,
}

#[derive(Debug)]
pub struct Faults {
    by_route: BTreeMap<String, Fault>,
    rng: StdRng,
}

impl Faults {
    pub fn new(seed: u64) -> Self {
        Self {
            by_route: BTreeMap::new(),
            rng: StdRng::seed_from_u64(seed),
        }
    }

    pub fn set(&mut self, fault: Fault) {
        self.by_route.insert(fault.route.clone(), fault);
    }

    pub fn clear(&mut self) {
        self.by_route.clear();
    }

    pub fn list(&self) -> Vec<Fault> {
        self.by_route.values().cloned().collect()
    }

    /// Latency and injection for a request on `route`; consumes one of `times` on injection.
    pub fn draw(&mut self, route: &str) -> (u64, Injection) {
        let Some(fault) = self.by_route.get_mut(route) else {
            return (0, Injection::Serve);
        };
        let roll: f64 = self.rng.random();
        let mut threshold = 0.0;
        let mut injection = Injection::Serve;
        for (status, probability) in &fault.errors {
            threshold += probability;
            if roll < threshold {
                injection = Injection::Error(*status);
                break;
            }
        }
        if injection == Injection::Serve && roll < threshold + fault.drop_response {
            injection = Injection::DropResponse;
        }
        let latency = fault.latency_ms;
        if injection != Injection::Serve {
            if let Some(times) = fault.times.as_mut() {
                *times = times.saturating_sub(1);
                if *times == 0 {
                    self.by_route.remove(route);
                }
            }
        }
        (latency, injection)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fault(errors: &[(u16, f64)], drop_response: f64, times: Option<u32>) -> Fault {
        Fault {
            route: "GET /x".into(),
            errors: errors.iter().copied().collect(),
            latency_ms: 0,
            drop_response,
            times,
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_faults() {
        let draws = |seed| {
            let mut faults = Faults::new(seed);
            faults.set(fault(&[(503, 0.3)], 0.2, None));
            (0..50).map(|_| faults.draw("GET /x").1).collect::<Vec<_>>()
        };
        assert_eq!(draws(7), draws(7));
        assert_ne!(draws(7), draws(8));
        let all = draws(7);
        assert!(all.contains(&Injection::Error(503)) && all.contains(&Injection::DropResponse));
        assert!(all.contains(&Injection::Serve));
    }

    #[test]
    fn a_fault_with_times_is_removed_after_that_many_injections() {
        let mut faults = Faults::new(1);
        faults.set(fault(&[(500, 1.0)], 0.0, Some(2)));
        assert_eq!(faults.draw("GET /x").1, Injection::Error(500));
        assert_eq!(faults.draw("GET /x").1, Injection::Error(500));
        assert_eq!(faults.draw("GET /x").1, Injection::Serve);
        assert!(faults.list().is_empty());
    }

    #[test]
    fn other_routes_are_untouched() {
        let mut faults = Faults::new(1);
        faults.set(fault(&[], 1.0, None));
        assert_eq!(faults.draw("GET /y"), (0, Injection::Serve));
    }

    #[test]
    fn invalid_faults_are_explained() {
        assert!(fault(&[(404, 0.5)], 0.0, None).problem().unwrap().contains("404"));
        assert!(fault(&[(500, 0.8)], 0.5, None).problem().is_some());
        assert!(fault(&[(500, 0.5)], 0.5, None).problem().is_none());
    }
}
