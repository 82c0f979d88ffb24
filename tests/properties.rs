//! Property tests: whatever bytes or graphs arrive, the decoder and the flow validator answer
//! with a value or an error, never a panic, and what they accept is consistent.

use std::collections::BTreeMap;

use genesys_worker::flow::{optimize, validate, Condition, FlowDefinition, Node, Rules, Transition};
use genesys_worker::job;
use proptest::prelude::*;
use serde_json::{json, Value};

/// JSON values of bounded depth, to reach the decoder's branches rather than stop at parsing.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        "[a-zA-Z0-9 ._:-]{0,12}".prop_map(Value::String),
        Just(json!("0b6f7e8a-2c1d-4e5f-9a0b-1c2d3e4f5a6b")),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,12}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn kind() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!("agent.status")),
        Just(json!("interaction.status")),
        Just(json!("interaction.create")),
        Just(json!("flow.deploy")),
        Just(json!("batch")),
        json_value(),
    ]
}

/// A graph over `n` node names with arbitrary edges, some to names that do not exist.
fn graph() -> impl Strategy<Value = FlowDefinition> {
    (1usize..40)
        .prop_flat_map(|n| {
            let edges = prop::collection::vec(prop::collection::vec(0..n + 3, 0..6), n);
            let media = prop::collection::vec(prop::option::of(0u8..4), n);
            (Just(n), edges, media, 0..n + 1)
        })
        .prop_map(|(n, edges, media, start)| {
            let name = |i: usize| format!("n{i}");
            let nodes: BTreeMap<String, Node> = edges
                .into_iter()
                .zip(media)
                .enumerate()
                .map(|(i, (targets, media))| {
                    let (conditions, transitions): (Vec<_>, Vec<_>) =
                        targets.iter().enumerate().partition(|(k, _)| k % 2 == 0);
                    let node = Node {
                        node_type: "menu".into(),
                        transitions: transitions
                            .into_iter()
                            .map(|(_, t)| Transition {
                                label: String::new(),
                                target: name(*t),
                            })
                            .collect(),
                        conditions: conditions
                            .into_iter()
                            .map(|(k, t)| Condition {
                                expression: format!("e{k}"),
                                priority: (k % 3) as i64,
                                target: name(*t),
                                extra: Default::default(),
                            })
                            .collect(),
                        media_id: media.map(|m| format!("m{m}")),
                        extra: Default::default(),
                    };
                    (name(i), node)
                })
                .collect();
            FlowDefinition {
                name: "g".into(),
                flow_type: "inboundcall".into(),
                start: name(start.min(n)),
                nodes,
                extra: Default::default(),
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic_the_decoder(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = job::decode(&bytes, 1 << 20);
    }

    #[test]
    fn arbitrary_job_shaped_json_decodes_or_names_an_error(payload in json_value(), kind in kind(), key in prop::option::of("[a-z0-9-]{0,20}")) {
        let mut message = json!({"job_id": "0b6f7e8a-2c1d-4e5f-9a0b-1c2d3e4f5a6b", "kind": kind, "payload": payload});
        if let Some(key) = key {
            message["idempotency_key"] = json!(key);
        }
        match job::decode(&serde_json::to_vec(&message).unwrap(), 1 << 20) {
            Ok(job) => {
                prop_assert!(!job.idempotency_key.is_empty());
                prop_assert_eq!(job.fingerprint.len(), 64);
            }
            Err(err) => prop_assert!(!err.code.is_empty() && !err.message.is_empty()),
        }
    }

    #[test]
    fn an_oversized_value_in_any_field_gives_a_bounded_error(
        payload in json_value(),
        kind in kind(),
        path in (
            prop::sample::select(vec!["job_id", "kind", "idempotency_key", "actor", "sequence", "payload", "payload"]),
            prop::collection::vec(
                prop_oneof![
                    prop::sample::select(vec!["user_id", "presence", "routing_status", "status", "flow", "start", "name", "nodes", "jobs"]).prop_map(str::to_string),
                    "[a-z_]{1,8}",
                ],
                0..3,
            ),
        ).prop_map(|(first, rest)| std::iter::once(first.to_string()).chain(rest).collect::<Vec<_>>()),
        size in 2_000usize..200_000,
        in_key in any::<bool>(),
    ) {
        // A huge string as a field's value, or as a field's name, somewhere in the message.
        let mut message = json!({"job_id": "0b6f7e8a-2c1d-4e5f-9a0b-1c2d3e4f5a6b", "kind": kind, "payload": payload});
        let huge = "x".repeat(size);
        let mut at = &mut message;
        for (depth, segment) in path.iter().enumerate() {
            if !at.is_object() {
                *at = json!({});
            }
            let last = depth + 1 == path.len();
            let key = if last && in_key { huge.clone() } else { segment.clone() };
            at = at.as_object_mut().unwrap().entry(key).or_insert(json!({}));
            if last {
                *at = if in_key { json!(1) } else { json!(huge.clone()) };
            }
        }
        if let Err(err) = job::decode(&serde_json::to_vec(&message).unwrap(), 1 << 20) {
            prop_assert!(err.message.len() <= 1024, "{} bytes", err.message.len());
            prop_assert!(err.entity.as_ref().is_none_or(|e| e.len() <= 256));
        }
    }

    #[test]
    fn arbitrary_graphs_never_panic_the_validator(flow in graph(), allow_cycles in any::<bool>(), max_depth in 1usize..50) {
        let rules = Rules { allow_cycles, max_depth, media_registry: Some(vec!["m0".into(), "m1".into()]), ..Rules::default() };
        match validate(&flow, &rules) {
            Ok(()) => {
                // What passes has every target present and nothing unreachable.
                prop_assert!(flow.nodes.values().flat_map(|n| n.targets()).all(|t| flow.nodes.contains_key(t)));
            }
            Err(errors) => {
                prop_assert!(!errors.is_empty());
                for error in &errors {
                    prop_assert!(!error.to_string().is_empty());
                }
            }
        }
    }

    #[test]
    fn optimisation_keeps_every_target_and_orders_by_priority(flow in graph()) {
        let mut optimised = flow.clone();
        optimize(&mut optimised);
        for (name, node) in &optimised.nodes {
            let priorities: Vec<i64> = node.conditions.iter().map(|c| c.priority).collect();
            prop_assert!(priorities.windows(2).all(|w| w[0] >= w[1]), "{}: {:?}", name, priorities);
            let before: std::collections::BTreeSet<&str> = flow.nodes[name].conditions.iter().map(|c| c.target.as_str()).collect();
            let after: std::collections::BTreeSet<&str> = node.conditions.iter().map(|c| c.target.as_str()).collect();
            prop_assert_eq!(&before, &after);
            prop_assert_eq!(after.len(), node.conditions.len(), "no duplicate targets left");
        }
    }
}

mod merkle_log {
    use genesys_worker::audit::merkle::{self, CompactRange, Hash};
    use proptest::prelude::*;

    fn leaves(size: u64) -> Vec<Hash> {
        (0..size).map(|i| merkle::leaf_hash(&i.to_be_bytes())).collect()
    }

    /// A tree size 1..300 and a point below it (an index, or an old size 1..=size).
    fn size_and_point() -> impl Strategy<Value = (u64, u64)> {
        (1u64..300).prop_flat_map(|size| (Just(size), 0..size))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn the_compact_range_root_is_the_tree_root((size, _) in size_and_point()) {
            let leaves = leaves(size);
            let mut range = CompactRange::new();
            for leaf in &leaves {
                range.append(*leaf);
            }
            prop_assert_eq!(range.root(), merkle::root(&leaves));
            prop_assert_eq!(CompactRange::parse(&range.to_string()).unwrap(), range);
        }

        #[test]
        fn inclusion_proofs_verify_and_tampering_fails(
            (size, index) in size_and_point(),
            flip in any::<(usize, u8)>(),
        ) {
            let leaves = leaves(size);
            let root = merkle::root(&leaves);
            let mut proof = merkle::inclusion_proof(&leaves, index).unwrap();
            let leaf = leaves[index as usize];
            prop_assert!(merkle::verify_inclusion(&leaf, index, size, &proof, &root).is_ok());
            if size > 1 {
                let other = (index + 1 + u64::from(flip.1) % (size - 1)) % size;
                prop_assert!(merkle::verify_inclusion(&leaf, other, size, &proof, &root).is_err());
            }
            if !proof.is_empty() {
                let at = flip.0 % proof.len();
                proof[at][usize::from(flip.1) % 32] ^= 1 << (flip.1 % 8);
                prop_assert!(merkle::verify_inclusion(&leaf, index, size, &proof, &root).is_err());
            }
        }

        #[test]
        fn consistency_proofs_verify_and_tampering_fails(
            (size, old) in size_and_point(),
            flip in any::<(usize, u8)>(),
        ) {
            let old = old + 1;
            let leaves = leaves(size);
            let (old_root, new_root) = (merkle::root(&leaves[..old as usize]), merkle::root(&leaves));
            let mut proof = merkle::consistency_proof(&leaves, old, size).unwrap();
            prop_assert!(merkle::verify_consistency(old, size, &old_root, &new_root, &proof).is_ok());
            if !proof.is_empty() {
                let at = flip.0 % proof.len();
                proof[at][usize::from(flip.1) % 32] ^= 1 << (flip.1 % 8);
                prop_assert!(merkle::verify_consistency(old, size, &old_root, &new_root, &proof).is_err());
            }
        }
    }
}
