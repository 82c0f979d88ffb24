//! Flow validation time on generated graphs of 1k to 1M nodes, about 5 edges per node.
//!
//!     cargo bench --bench flow_validation
//!
//! Each graph is a DAG (every edge leads to a later node, so nothing is unreachable and the
//! longest path runs through every node: the worst case for the depth pass). Building the graph
//! is not timed; each size is validated several times and the median reported.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use genesys_worker::flow::{validate, Condition, FlowDefinition, Node, Rules, Transition};

/// Node `i` leads to `i+1`, `i+2`, `i+3` (transitions) and `i+5`, `i+8` (conditions).
fn generate(n: usize) -> FlowDefinition {
    let name = |i: usize| format!("node-{i:07}");
    let nodes: BTreeMap<String, Node> = (0..n)
        .map(|i| {
            let transitions = [1, 2, 3]
                .iter()
                .filter(|d| i + **d < n)
                .map(|d| Transition {
                    label: format!("t{d}"),
                    target: name(i + d),
                })
                .collect();
            let conditions = [5, 8]
                .iter()
                .filter(|d| i + **d < n)
                .map(|d| Condition {
                    expression: format!("x == {d}"),
                    priority: *d as i64,
                    target: name(i + d),
                    extra: Default::default(),
                })
                .collect();
            (
                name(i),
                Node {
                    node_type: "menu".into(),
                    transitions,
                    conditions,
                    media_id: None,
                    extra: Default::default(),
                },
            )
        })
        .collect();
    FlowDefinition {
        name: "generated".into(),
        flow_type: "inboundcall".into(),
        start: name(0),
        nodes,
        extra: Default::default(),
    }
}

fn main() {
    println!("{:>9} {:>9} {:>6} {:>12}", "nodes", "edges", "runs", "median");
    for n in [1_000, 10_000, 100_000, 1_000_000] {
        let flow = generate(n);
        let edges: usize = flow
            .nodes
            .values()
            .map(|node| node.transitions.len() + node.conditions.len())
            .sum();
        let rules = Rules {
            max_nodes: n,
            max_depth: n,
            ..Rules::default()
        };
        let runs = if n >= 1_000_000 { 5 } else { 15 };
        let mut times: Vec<Duration> = (0..runs)
            .map(|_| {
                let started = Instant::now();
                let result = validate(black_box(&flow), black_box(&rules));
                let elapsed = started.elapsed();
                assert!(result.is_ok(), "generated graphs are valid");
                elapsed
            })
            .collect();
        times.sort();
        let median = times[times.len() / 2];
        println!(
            "{n:>9} {edges:>9} {runs:>6} {:>9.2} ms",
            median.as_secs_f64() * 1000.0
        );
    }
}
