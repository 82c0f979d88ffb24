//! Flow graph validation: linear in nodes plus edges, iterative (no recursion, so a chain of a
//! million nodes cannot overflow the stack), and every problem reported at once.
//!
//! Rules (docs/architecture.md, section 2.1): the start node exists; every transition and condition target
//! exists; at most `max_nodes` nodes; no cycle unless `allow_cycles` (each cycle reported with
//! its path, `a → b → c → a`); the longest path from the start at most `max_depth` nodes; no node
//! unreachable from the start; every `media_id` in the registry, when one is given.
//!
//! Depth counts nodes: a flow that is only its start node has depth 1, `start → a → b` has
//! depth 3. With cycles allowed, the longest path is measured on the graph without the edges
//! that close a cycle (each loop is walked once).

use std::collections::{HashMap, HashSet};

use foldhash::fast::RandomState;

use serde::{Deserialize, Serialize};

use super::FlowDefinition;

/// Limits a flow must meet; `flow.deploy` jobs may override each.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rules {
    #[serde(default = "Rules::default_max_nodes")]
    pub max_nodes: usize,
    #[serde(default = "Rules::default_max_depth")]
    pub max_depth: usize,
    #[serde(default)]
    pub allow_cycles: bool,
    /// Known media ids; `None` means media ids are not checked.
    #[serde(default)]
    pub media_registry: Option<Vec<String>>,
}

impl Rules {
    fn default_max_nodes() -> usize {
        10_000
    }

    fn default_max_depth() -> usize {
        1_000
    }
}

impl Default for Rules {
    fn default() -> Self {
        Self {
            max_nodes: Self::default_max_nodes(),
            max_depth: Self::default_max_depth(),
            allow_cycles: false,
            media_registry: None,
        }
    }
}

/// One problem with a flow; `Display` names the node(s).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "code", rename_all = "snake_case")]
pub enum FlowError {
    MissingStart {
        start: String,
    },
    MissingTarget {
        node: String,
        target: String,
    },
    TooManyNodes {
        count: usize,
        max_nodes: usize,
    },
    Cycle {
        path: Vec<String>,
    },
    TooDeep {
        depth: usize,
        max_depth: usize,
        path: Vec<String>,
    },
    Unreachable {
        nodes: Vec<String>,
    },
    UnknownMedia {
        node: String,
        media_id: String,
    },
}

/// How many names a message lists before it summarises.
const LISTED: usize = 10;

fn list(names: &[String], separator: &str) -> String {
    if names.len() <= LISTED * 2 {
        return names.join(separator);
    }
    let head = names[..LISTED].join(separator);
    let tail = names[names.len() - LISTED..].join(separator);
    format!(
        "{head}{separator}… ({} more) …{separator}{tail}",
        names.len() - 2 * LISTED
    )
}

impl std::fmt::Display for FlowError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FlowError::MissingStart { start } => write!(f, "start node {start:?} does not exist"),
            FlowError::MissingTarget { node, target } => {
                write!(f, "node {node:?} leads to {target:?}, which does not exist")
            }
            FlowError::TooManyNodes { count, max_nodes } => {
                write!(f, "{count} nodes, more than max_nodes {max_nodes}")
            }
            FlowError::Cycle { path } => write!(f, "cycle: {}", list(path, " → ")),
            FlowError::TooDeep {
                depth,
                max_depth,
                path,
            } => {
                write!(
                    f,
                    "longest path from the start has {depth} nodes, more than max_depth {max_depth}: {}",
                    list(path, " → ")
                )
            }
            FlowError::Unreachable { nodes } => {
                write!(f, "unreachable from the start: {}", list(nodes, ", "))
            }
            FlowError::UnknownMedia { node, media_id } => write!(
                f,
                "node {node:?} uses media {media_id:?}, which is not in the registry"
            ),
        }
    }
}

impl FlowError {
    pub fn code(&self) -> &'static str {
        match self {
            FlowError::MissingStart { .. } => "missing_start",
            FlowError::MissingTarget { .. } => "missing_target",
            FlowError::TooManyNodes { .. } => "too_many_nodes",
            FlowError::Cycle { .. } => "cycle",
            FlowError::TooDeep { .. } => "too_deep",
            FlowError::Unreachable { .. } => "unreachable",
            FlowError::UnknownMedia { .. } => "unknown_media",
        }
    }
}

/// At most this many cycles are reported: each costs its path's length to describe.
const MAX_REPORTED_CYCLES: usize = 10;

/// The graph with nodes numbered in name order; edges to missing targets left out. Edges are
/// one flat array (node `i`'s are `targets[offsets[i]..offsets[i + 1]]`): one allocation, not
/// one per node.
struct Indexed<'a> {
    names: Vec<&'a str>,
    offsets: Vec<u32>,
    targets: Vec<u32>,
}

impl Indexed<'_> {
    fn edges(&self, node: u32) -> &[u32] {
        &self.targets[self.offsets[node as usize] as usize..self.offsets[node as usize + 1] as usize]
    }
}

/// Validates `flow` against `rules`; all problems at once, in a stable order.
pub fn validate(flow: &FlowDefinition, rules: &Rules) -> Result<(), Vec<FlowError>> {
    let mut errors = Vec::new();
    if flow.nodes.len() > rules.max_nodes {
        errors.push(FlowError::TooManyNodes {
            count: flow.nodes.len(),
            max_nodes: rules.max_nodes,
        });
    }
    let mut index: HashMap<&str, u32, RandomState> =
        HashMap::with_capacity_and_hasher(flow.nodes.len(), RandomState::default());
    index.extend(
        flow.nodes
            .keys()
            .enumerate()
            .map(|(i, name)| (name.as_str(), i as u32)),
    );
    let edge_count: usize = flow
        .nodes
        .values()
        .map(|n| n.transitions.len() + n.conditions.len())
        .sum();
    let mut graph = Indexed {
        names: flow.nodes.keys().map(String::as_str).collect(),
        offsets: Vec::with_capacity(flow.nodes.len() + 1),
        targets: Vec::with_capacity(edge_count),
    };
    graph.offsets.push(0);
    let media: Option<HashSet<&str>> = rules
        .media_registry
        .as_ref()
        .map(|r| r.iter().map(String::as_str).collect());
    for (name, node) in &flow.nodes {
        for target in node.targets() {
            match index.get(target) {
                Some(&to) => graph.targets.push(to),
                None => errors.push(FlowError::MissingTarget {
                    node: name.clone(),
                    target: target.to_string(),
                }),
            }
        }
        graph.offsets.push(graph.targets.len() as u32);
        if let (Some(registry), Some(media_id)) = (&media, &node.media_id) {
            if !registry.contains(media_id.as_str()) {
                errors.push(FlowError::UnknownMedia {
                    node: name.clone(),
                    media_id: media_id.clone(),
                });
            }
        }
    }
    let Some(&start) = index.get(flow.start.as_str()) else {
        errors.insert(
            0,
            FlowError::MissingStart {
                start: flow.start.clone(),
            },
        );
        return Err(errors);
    };
    let walk = depth_first(&graph, start);
    if !rules.allow_cycles {
        errors.extend(walk.cycles.into_iter().map(|path| FlowError::Cycle { path }));
    }
    let unreachable: Vec<String> = walk
        .reached
        .iter()
        .enumerate()
        .filter(|(_, r)| !**r)
        .map(|(i, _)| graph.names[i].to_string())
        .collect();
    if !unreachable.is_empty() {
        errors.push(FlowError::Unreachable { nodes: unreachable });
    }
    let (depth, path) = longest_path(&graph, start, &walk.postorder, &walk.back_edges);
    if depth > rules.max_depth {
        errors.push(FlowError::TooDeep {
            depth,
            max_depth: rules.max_depth,
            path,
        });
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

struct Walk {
    /// Nodes reachable from the start.
    reached: Vec<bool>,
    /// Reachable nodes, each after everything it leads to (reverse topological order once the
    /// back edges are ignored).
    postorder: Vec<u32>,
    /// Edges (from, position in from's list) that close a cycle.
    back_edges: HashSet<(u32, u32)>,
    cycles: Vec<Vec<String>>,
}

/// Iterative depth-first search from `start` with an explicit stack of (node, next edge).
fn depth_first(graph: &Indexed<'_>, start: u32) -> Walk {
    const NEW: u8 = 0;
    const ON_PATH: u8 = 1;
    const DONE: u8 = 2;
    let n = graph.names.len();
    let mut state = vec![NEW; n];
    let mut walk = Walk {
        reached: vec![false; n],
        postorder: Vec::with_capacity(n),
        back_edges: HashSet::new(),
        cycles: Vec::new(),
    };
    let mut stack: Vec<(u32, u32)> = vec![(start, 0)];
    state[start as usize] = ON_PATH;
    walk.reached[start as usize] = true;
    while let Some(&mut (node, ref mut next)) = stack.last_mut() {
        let edges = graph.edges(node);
        if (*next as usize) < edges.len() {
            let position = *next;
            let to = edges[position as usize];
            *next += 1;
            match state[to as usize] {
                NEW => {
                    state[to as usize] = ON_PATH;
                    walk.reached[to as usize] = true;
                    stack.push((to, 0));
                }
                ON_PATH => {
                    walk.back_edges.insert((node, position));
                    if walk.cycles.len() < MAX_REPORTED_CYCLES {
                        // The cycle is the stack from `to` up to here, then back to `to`.
                        let from = stack
                            .iter()
                            .rposition(|(n, _)| *n == to)
                            .expect("a node on the path is on the stack");
                        let mut path: Vec<String> = stack[from..]
                            .iter()
                            .map(|(n, _)| graph.names[*n as usize].to_string())
                            .collect();
                        path.push(graph.names[to as usize].to_string());
                        walk.cycles.push(path);
                    }
                }
                _ => {}
            }
        } else {
            state[node as usize] = DONE;
            walk.postorder.push(node);
            stack.pop();
        }
    }
    walk
}

/// The longest path from `start` in nodes, ignoring `back_edges`, and the path itself.
fn longest_path(
    graph: &Indexed<'_>,
    start: u32,
    postorder: &[u32],
    back_edges: &HashSet<(u32, u32)>,
) -> (usize, Vec<String>) {
    // In postorder every successor comes first, so one pass computes each node's longest tail.
    let n = graph.names.len();
    let mut tail = vec![0u32; n];
    let mut next_on_path = vec![u32::MAX; n];
    for &node in postorder {
        let mut best = 0;
        for (position, &to) in graph.edges(node).iter().enumerate() {
            if !back_edges.is_empty() && back_edges.contains(&(node, position as u32)) {
                continue;
            }
            if tail[to as usize] > best {
                best = tail[to as usize];
                next_on_path[node as usize] = to;
            }
        }
        tail[node as usize] = best + 1;
    }
    let mut path = Vec::new();
    let mut at = start;
    while at != u32::MAX && path.len() < n {
        path.push(graph.names[at as usize].to_string());
        at = next_on_path[at as usize];
    }
    (tail[start as usize] as usize, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::{Node, Transition};
    use serde_json::json;
    use std::collections::BTreeMap;

    fn flow(start: &str, nodes: serde_json::Value) -> FlowDefinition {
        FlowDefinition::from_value(
            json!({"name": "f", "type": "inboundcall", "start": start, "nodes": nodes}),
        )
        .unwrap()
    }

    fn errors(flow: &FlowDefinition, rules: &Rules) -> Vec<String> {
        validate(flow, rules)
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    /// A chain n0 → n1 → … built directly, without JSON.
    fn chain(n: usize) -> FlowDefinition {
        let name = |i: usize| format!("n{i:07}");
        let nodes: BTreeMap<String, Node> = (0..n)
            .map(|i| {
                let transitions = if i + 1 < n {
                    vec![Transition {
                        label: "next".into(),
                        target: name(i + 1),
                    }]
                } else {
                    vec![]
                };
                (
                    name(i),
                    Node {
                        node_type: "step".into(),
                        transitions,
                        conditions: vec![],
                        media_id: None,
                        extra: Default::default(),
                    },
                )
            })
            .collect();
        FlowDefinition {
            name: "chain".into(),
            flow_type: "inboundcall".into(),
            start: name(0),
            nodes,
            extra: Default::default(),
        }
    }

    #[test]
    fn the_documented_example_is_valid() {
        let f = flow(
            "start",
            json!({
                "start": {"type": "start", "transitions": [{"label": "next", "target": "menu"}]},
                "menu": {"type": "menu", "media_id": "prompt-welcome",
                         "conditions": [{"expression": "x", "priority": 10, "target": "vip"}],
                         "transitions": [{"label": "default", "target": "queue"}]},
                "vip": {"type": "transfer", "queue_id": "q1", "transitions": []},
                "queue": {"type": "transfer", "transitions": []}
            }),
        );
        let rules = Rules {
            media_registry: Some(vec!["prompt-welcome".into()]),
            ..Rules::default()
        };
        assert_eq!(validate(&f, &rules), Ok(()));
    }

    #[test]
    fn a_missing_start_is_reported() {
        let f = flow("begin", json!({"a": {"type": "start"}}));
        assert_eq!(
            errors(&f, &Rules::default()),
            ["start node \"begin\" does not exist"]
        );
    }

    #[test]
    fn every_missing_target_names_its_node() {
        let f = flow(
            "a",
            json!({
                "a": {"type": "start", "transitions": [{"target": "ghost"}],
                      "conditions": [{"expression": "x", "priority": 1, "target": "phantom"}]}
            }),
        );
        let found = errors(&f, &Rules::default());
        assert!(
            found.contains(&"node \"a\" leads to \"ghost\", which does not exist".to_string()),
            "{found:?}"
        );
        assert!(
            found.contains(&"node \"a\" leads to \"phantom\", which does not exist".to_string()),
            "{found:?}"
        );
    }

    #[test]
    fn a_cycle_is_reported_with_its_path_unless_allowed() {
        let f = flow(
            "a",
            json!({
                "a": {"type": "start", "transitions": [{"target": "b"}]},
                "b": {"type": "menu", "transitions": [{"target": "c"}]},
                "c": {"type": "menu", "transitions": [{"target": "a"}, {"target": "d"}]},
                "d": {"type": "transfer"}
            }),
        );
        assert_eq!(errors(&f, &Rules::default()), ["cycle: a → b → c → a"]);
        let allowed = Rules {
            allow_cycles: true,
            ..Rules::default()
        };
        assert_eq!(validate(&f, &allowed), Ok(()));
    }

    #[test]
    fn unreachable_nodes_and_unknown_media_are_named() {
        let f = flow(
            "a",
            json!({
                "a": {"type": "start", "media_id": "hello"},
                "island": {"type": "menu", "media_id": "bye"}
            }),
        );
        let rules = Rules {
            media_registry: Some(vec!["hello".into()]),
            ..Rules::default()
        };
        let found = errors(&f, &rules);
        assert!(
            found.contains(&"unreachable from the start: island".to_string()),
            "{found:?}"
        );
        assert!(
            found.contains(&"node \"island\" uses media \"bye\", which is not in the registry".to_string()),
            "{found:?}"
        );
    }

    #[test]
    fn depth_counts_nodes_on_the_longest_path_not_the_shortest() {
        // start reaches end directly and through a → b: the longest path has 4 nodes.
        let f = flow(
            "start",
            json!({
                "start": {"type": "start", "transitions": [{"target": "end"}, {"target": "a"}]},
                "a": {"type": "menu", "transitions": [{"target": "b"}]},
                "b": {"type": "menu", "transitions": [{"target": "end"}]},
                "end": {"type": "transfer"}
            }),
        );
        assert_eq!(
            validate(
                &f,
                &Rules {
                    max_depth: 4,
                    ..Rules::default()
                }
            ),
            Ok(())
        );
        assert_eq!(
            errors(
                &f,
                &Rules {
                    max_depth: 3,
                    ..Rules::default()
                }
            ),
            ["longest path from the start has 4 nodes, more than max_depth 3: start → a → b → end"]
        );
    }

    #[test]
    fn too_many_nodes_is_reported_with_the_other_errors() {
        let found = errors(
            &chain(5),
            &Rules {
                max_nodes: 4,
                max_depth: 2,
                ..Rules::default()
            },
        );
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[0].contains("5 nodes, more than max_nodes 4"));
        assert!(found[1].contains("has 5 nodes, more than max_depth 2"));
    }

    #[test]
    fn a_million_node_chain_validates_without_overflowing_the_stack() {
        let long = chain(1_000_000);
        let rules = Rules {
            max_nodes: 2_000_000,
            max_depth: 2_000_000,
            ..Rules::default()
        };
        assert_eq!(validate(&long, &rules), Ok(()));
        let shallow = Rules {
            max_depth: 1_000,
            ..rules
        };
        let found = errors(&long, &shallow);
        assert!(
            found[0].contains("1000000 nodes, more than max_depth 1000"),
            "{}",
            &found[0][..120]
        );
        assert!(found[0].contains("more)"), "long paths are summarised");
    }

    #[test]
    fn a_wide_fan_out_is_fine() {
        let mut nodes = serde_json::Map::new();
        let targets: Vec<_> = (0..10_000)
            .map(|i| json!({"target": format!("leaf{i}")}))
            .collect();
        nodes.insert("root".into(), json!({"type": "start", "transitions": targets}));
        for i in 0..10_000 {
            nodes.insert(format!("leaf{i}"), json!({"type": "transfer"}));
        }
        let f = flow("root", serde_json::Value::Object(nodes));
        assert_eq!(
            validate(
                &f,
                &Rules {
                    max_nodes: 20_000,
                    ..Rules::default()
                }
            ),
            Ok(())
        );
    }
}
