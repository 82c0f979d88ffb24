//! Faults set through the control API, and the gateway errors of the behaviour profile, drawn
//! from a seeded random generator so a run can be reproduced: the same requests in the same
//! order meet the same faults.

use std::collections::BTreeMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::behaviour::{ErrorBodyKind, GatewayErrors};

/// Faults for one route template (`PATCH /api/v2/users/{userId}/presences/purecloud`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    pub route: String,
    /// Probability (0..=1) of answering each of 500, 502, 503, 504 instead of serving.
    #[serde(default)]
    pub errors: BTreeMap<u16, f64>,
    /// The body of those errors: `genesys` (the `ErrorBody`), `html` (a load balancer's page)
    /// or `empty`.
    #[serde(default)]
    pub body: ErrorBodyKind,
    /// Added before the request is served.
    #[serde(default)]
    pub latency_ms: u64,
    /// Probability of serving the request (the change is made) and then closing the
    /// connection without a response: the ambiguous case.
    #[serde(default)]
    pub drop_response: f64,
    /// Probability of closing the connection before any answer: nothing is served, so nothing
    /// changed.
    #[serde(default)]
    pub reset: f64,
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
        let probabilities = self.errors.values().chain([&self.drop_response, &self.reset]);
        if probabilities.clone().any(|p| !(0.0..=1.0).contains(p)) {
            return Some("probabilities must be between 0 and 1".into());
        }
        if probabilities.sum::<f64>() > 1.0 + f64::EPSILON {
            return Some("errors, drop_response and reset together must not exceed 1".into());
        }
        None
    }
}

/// What the gateway does with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Injection {
    Serve,
    Error(u16, ErrorBodyKind),
    /// Serve, then drop the connection instead of answering.
    DropResponse,
    /// Close the connection without serving.
    Reset,
}

/// Picks the injection `roll` (uniform in 0..1) falls on: each error's share, then the drop's,
/// then the reset's; beyond them, serve.
fn pick(
    roll: f64,
    errors: &BTreeMap<u16, f64>,
    body: ErrorBodyKind,
    drop_response: f64,
    reset: f64,
) -> Injection {
    let mut threshold = 0.0;
    for (status, probability) in errors {
        threshold += probability;
        if roll < threshold {
            return Injection::Error(*status, body);
        }
    }
    threshold += drop_response;
    if roll < threshold {
        return Injection::DropResponse;
    }
    if roll < threshold + reset {
        return Injection::Reset;
    }
    Injection::Serve
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
    ///
    /// `gateway` (the behaviour's, for API routes) is drawn when the route's own fault injected
    /// nothing or the route has none: the gateway stands in front of every route.
    pub fn draw(&mut self, route: &str, gateway: Option<&GatewayErrors>) -> (u64, Injection) {
        let (latency, injection) = self.draw_route(route);
        match gateway {
            Some(gateway) if injection == Injection::Serve => {
                let roll: f64 = self.rng.random();
                let injection = pick(roll, &gateway.errors, gateway.body, 0.0, gateway.reset);
                (latency, injection)
            }
            _ => (latency, injection),
        }
    }

    fn draw_route(&mut self, route: &str) -> (u64, Injection) {
        let Some(fault) = self.by_route.get_mut(route) else {
            return (0, Injection::Serve);
        };
        let roll: f64 = self.rng.random();
        let injection = pick(roll, &fault.errors, fault.body, fault.drop_response, fault.reset);
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
            body: ErrorBodyKind::Genesys,
            latency_ms: 0,
            drop_response,
            reset: 0.0,
            times,
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_faults() {
        let draws = |seed| {
            let mut faults = Faults::new(seed);
            faults.set(fault(&[(503, 0.3)], 0.2, None));
            (0..50).map(|_| faults.draw("GET /x", None).1).collect::<Vec<_>>()
        };
        assert_eq!(draws(7), draws(7));
        assert_ne!(draws(7), draws(8));
        let all = draws(7);
        assert!(
            all.contains(&Injection::Error(503, ErrorBodyKind::Genesys))
                && all.contains(&Injection::DropResponse)
        );
        assert!(all.contains(&Injection::Serve));
    }

    #[test]
    fn a_fault_with_times_is_removed_after_that_many_injections() {
        let mut faults = Faults::new(1);
        faults.set(fault(&[(500, 1.0)], 0.0, Some(2)));
        assert_eq!(
            faults.draw("GET /x", None).1,
            Injection::Error(500, ErrorBodyKind::Genesys)
        );
        assert_eq!(
            faults.draw("GET /x", None).1,
            Injection::Error(500, ErrorBodyKind::Genesys)
        );
        assert_eq!(faults.draw("GET /x", None).1, Injection::Serve);
        assert!(faults.list().is_empty());
    }

    #[test]
    fn other_routes_are_untouched() {
        let mut faults = Faults::new(1);
        faults.set(fault(&[], 1.0, None));
        assert_eq!(faults.draw("GET /y", None), (0, Injection::Serve));
    }

    #[test]
    fn invalid_faults_are_explained() {
        assert!(fault(&[(404, 0.5)], 0.0, None).problem().unwrap().contains("404"));
        assert!(fault(&[(500, 0.8)], 0.5, None).problem().is_some());
        assert!(fault(&[(500, 0.5)], 0.5, None).problem().is_none());
        let too_likely = Fault {
            reset: 0.6,
            ..fault(&[(500, 0.5)], 0.0, None)
        };
        assert!(too_likely.problem().unwrap().contains("reset"));
    }

    #[test]
    fn a_reset_and_the_error_body_come_from_the_fault() {
        let mut faults = Faults::new(1);
        faults.set(Fault {
            reset: 1.0,
            ..fault(&[], 0.0, Some(1))
        });
        assert_eq!(faults.draw("GET /x", None).1, Injection::Reset);
        faults.set(Fault {
            body: ErrorBodyKind::Html,
            ..fault(&[(502, 1.0)], 0.0, None)
        });
        assert_eq!(
            faults.draw("GET /x", None).1,
            Injection::Error(502, ErrorBodyKind::Html)
        );
    }

    #[test]
    fn the_gateway_errors_apply_where_the_route_fault_injected_nothing() {
        let gateway = GatewayErrors {
            errors: [(504, 1.0)].into_iter().collect(),
            body: ErrorBodyKind::Empty,
            reset: 0.0,
        };
        let mut faults = Faults::new(1);
        assert_eq!(
            faults.draw("GET /y", Some(&gateway)),
            (0, Injection::Error(504, ErrorBodyKind::Empty))
        );
        faults.set(fault(&[(500, 1.0)], 0.0, None));
        assert_eq!(
            faults.draw("GET /x", Some(&gateway)).1,
            Injection::Error(500, ErrorBodyKind::Genesys),
            "the route's own fault comes first"
        );
        let resets = GatewayErrors {
            reset: 1.0,
            ..GatewayErrors::default()
        };
        assert_eq!(faults.draw("GET /y", Some(&resets)).1, Injection::Reset);
    }
}
