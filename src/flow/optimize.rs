//! Condition optimisation: each node's conditions sorted by priority, highest first (stable
//! for equal priorities, so authors' order breaks ties), and conditions that lead to a target
//! an earlier (higher-priority) condition already leads to dropped: they could never be the
//! deciding one.

use std::collections::HashSet;

use serde::Serialize;

use super::FlowDefinition;

/// What optimisation changed, for the audit event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Optimization {
    /// Nodes whose conditions changed (order or count).
    pub nodes_changed: usize,
    /// Nodes whose conditions were reordered.
    pub nodes_reordered: usize,
    /// Conditions dropped as duplicates of a higher-priority one.
    pub conditions_dropped: usize,
}

/// Optimises `flow` in place.
pub fn optimize(flow: &mut FlowDefinition) -> Optimization {
    let mut report = Optimization::default();
    for node in flow.nodes.values_mut() {
        if node.conditions.len() < 2 {
            continue;
        }
        let before: Vec<(String, i64)> = node
            .conditions
            .iter()
            .map(|c| (c.target.clone(), c.priority))
            .collect();
        // `sort_by_key` is stable: equal priorities keep their order.
        node.conditions.sort_by_key(|c| std::cmp::Reverse(c.priority));
        let reordered = node
            .conditions
            .iter()
            .map(|c| (c.target.as_str(), c.priority))
            .ne(before.iter().map(|(t, p)| (t.as_str(), *p)));
        let mut seen = HashSet::new();
        let count = node.conditions.len();
        node.conditions.retain(|c| seen.insert(c.target.clone()));
        let dropped = count - node.conditions.len();
        report.conditions_dropped += dropped;
        report.nodes_reordered += usize::from(reordered);
        report.nodes_changed += usize::from(reordered || dropped > 0);
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn flow(conditions: serde_json::Value) -> FlowDefinition {
        FlowDefinition::from_value(json!({
            "name": "f", "type": "inboundcall", "start": "menu",
            "nodes": {
                "menu": {"type": "menu", "conditions": conditions, "transitions": []},
                "a": {"type": "transfer"}, "b": {"type": "transfer"}, "c": {"type": "transfer"}
            }
        }))
        .unwrap()
    }

    fn order(flow: &FlowDefinition) -> Vec<(String, i64, String)> {
        flow.nodes["menu"]
            .conditions
            .iter()
            .map(|c| (c.target.clone(), c.priority, c.expression.clone()))
            .collect()
    }

    #[test]
    fn conditions_are_sorted_by_priority_highest_first_and_stably() {
        let mut f = flow(json!([
            {"expression": "e1", "priority": 1, "target": "a"},
            {"expression": "e2", "priority": 5, "target": "b"},
            {"expression": "e3", "priority": 1, "target": "c"},
            {"expression": "e4", "priority": 9, "target": "c"}
        ]));
        let report = optimize(&mut f);
        // e4 (9) first; then e2 (5); then e1 and e3 tie at 1 and keep their order, but e3's
        // target c was already reached by e4: dropped.
        assert_eq!(
            order(&f),
            [
                ("c".into(), 9, "e4".into()),
                ("b".into(), 5, "e2".into()),
                ("a".into(), 1, "e1".into())
            ]
        );
        assert_eq!(
            report,
            Optimization {
                nodes_changed: 1,
                nodes_reordered: 1,
                conditions_dropped: 1
            }
        );
    }

    #[test]
    fn an_optimised_flow_is_left_alone() {
        let mut f = flow(json!([
            {"expression": "e1", "priority": 3, "target": "a"},
            {"expression": "e2", "priority": 2, "target": "b"}
        ]));
        let before = f.clone();
        assert_eq!(optimize(&mut f), Optimization::default());
        assert_eq!(f, before);
    }
}
