//! Tests of definition parsing: one or more per [`DefinitionError`] variant,
//! the check order, the helpers, the shipped example, and a property test of
//! cycle detection against an independent implementation.

use super::*;
use proptest::prelude::*;
use serde_json::json;

/// The example shipped in the documentation; it must always be valid.
const HELLO: &str = include_str!("../../../docs/examples/hello.workflow.json");

fn parse(value: Value) -> Result<WorkflowDefinition, DefinitionError> {
    WorkflowDefinition::parse(&value)
}

fn delay(id: &str) -> Value {
    json!({"id": id, "type": "delay", "params": {"milliseconds": 10}})
}

fn transform(id: &str, template: Value) -> Value {
    json!({"id": id, "type": "transform", "params": {"template": template}})
}

fn condition(id: &str) -> Value {
    json!({"id": id, "type": "condition", "params": {"expression": "{{input.ok}}"}})
}

fn edge(from: &str, to: &str) -> Value {
    json!({"from": from, "to": to})
}

fn branch(from: &str, to: &str, label: &str) -> Value {
    json!({"from": from, "to": to, "branch": label})
}

/// Asserts the error is `InvalidParameter` for this node and parameter,
/// whatever the human-readable reason says.
fn assert_invalid_parameter(
    result: Result<WorkflowDefinition, DefinitionError>,
    id: &str,
    parameter: &str,
) {
    match result {
        Err(DefinitionError::InvalidParameter {
            id: got_id,
            parameter: got_parameter,
            ..
        }) if got_id == id && got_parameter == parameter => {}
        other => panic!("expected InvalidParameter on `{id}`.`{parameter}`, got {other:?}"),
    }
}

fn assert_malformed(result: Result<WorkflowDefinition, DefinitionError>) {
    assert!(
        matches!(result, Err(DefinitionError::Malformed { .. })),
        "expected Malformed, got {result:?}"
    );
}

#[test]
fn the_shipped_hello_example_is_valid() {
    let value: Value = serde_json::from_str(HELLO).expect("the example is JSON");
    let definition = WorkflowDefinition::parse(&value).expect("the example is valid");
    let types: BTreeSet<&str> = definition
        .nodes()
        .iter()
        .map(|n| n.kind().type_name())
        .collect();
    assert_eq!(types, NodeKind::TYPES.into_iter().collect());
    let branches: BTreeSet<Branch> = definition.edges().iter().filter_map(Edge::branch).collect();
    assert_eq!(branches, BTreeSet::from([Branch::True, Branch::False]));
    assert_eq!(
        definition.secret_references(),
        BTreeSet::from(["ALERTS_KEY".to_string(), "API_TOKEN".to_string()])
    );
    assert_eq!(
        definition.mcp_server_references(),
        BTreeSet::from(["assistant".to_string()])
    );
}

#[test]
fn a_definition_survives_a_serialization_round_trip() {
    let value: Value = serde_json::from_str(HELLO).expect("the example is JSON");
    let definition = WorkflowDefinition::parse(&value).expect("valid");
    let serialized = serde_json::to_value(&definition).expect("serializable");
    assert_eq!(serialized["nodes"][0]["type"], "http");
    assert_eq!(serialized["nodes"][0]["name"], "Fetch the greeting");
    assert_eq!(
        serialized["nodes"][0]["position"],
        json!({"x": 0.0, "y": 0.0})
    );
    assert_eq!(serialized["edges"][1]["branch"], "true");
    assert!(serialized["edges"][0].get("branch").is_none());
    assert_eq!(
        WorkflowDefinition::parse(&serialized),
        Ok(definition.clone())
    );
    let deserialized: WorkflowDefinition =
        serde_json::from_value(serialized).expect("deserializable");
    assert_eq!(deserialized, definition);
}

#[test]
fn a_recorded_definition_is_read_even_if_it_breaks_todays_rules() {
    // A delay longer than today's limit, as if the limit had been lowered
    // after this definition was recorded.
    let recorded = json!({"nodes": [{"id": "wait", "type": "delay",
        "params": {"milliseconds": MAX_DELAY_MILLISECONDS + 1}}], "edges": []});
    let definition: WorkflowDefinition =
        serde_json::from_value(recorded.clone()).expect("recorded definitions are read");
    assert_invalid_parameter(parse(recorded), "wait", "milliseconds");
    assert_invalid_parameter(
        definition.validate().map(|_| definition.clone()),
        "wait",
        "milliseconds",
    );
}

#[test]
fn a_recorded_definition_with_a_wrong_shape_is_still_refused() {
    let result: Result<WorkflowDefinition, _> =
        serde_json::from_value(json!({"nodes": [{"id": "a", "type": "teleport"}]}));
    assert!(result.is_err());
}

#[test]
fn helpers_describe_the_graph() {
    let definition = parse(json!({
        "nodes": [delay("c"), delay("a"), delay("b"), condition("d"), delay("e")],
        "edges": [edge("a", "c"), edge("b", "c"), edge("c", "d"), branch("d", "e", "false")]
    }))
    .expect("valid");
    let ids = |nodes: Vec<&Node>| nodes.iter().map(|n| n.id().to_string()).collect::<Vec<_>>();
    assert_eq!(ids(definition.entry_nodes()), ["a", "b"]);
    assert_eq!(
        ids(definition.topological_order()),
        ["a", "b", "c", "d", "e"]
    );
    assert_eq!(definition.outgoing("d").count(), 1);
    assert_eq!(definition.incoming("c").count(), 2);
    assert!(definition.node("e").is_some() && definition.node("z").is_none());
    assert_eq!(definition.nodes().len(), 5);
    assert_eq!(definition.edges().len(), 4);
}

#[test]
fn a_definition_without_edges_may_omit_them() {
    let definition = parse(json!({"nodes": [delay("only")]})).expect("valid");
    assert!(definition.edges().is_empty());
}

#[test]
fn null_http_headers_and_body_are_absent() {
    let definition = parse(json!({"nodes": [{"id": "h", "type": "http",
        "params": {"method": "HEAD", "url": "http://x.example", "headers": null, "body": null}}]}))
    .expect("valid");
    assert_eq!(
        definition.nodes()[0].kind(),
        &NodeKind::Http {
            method: HttpMethod::Head,
            url: "http://x.example".into(),
            headers: BTreeMap::new(),
            body: None,
        }
    );
}

// One test per `DefinitionError` variant, and several where a variant
// covers several faults.

#[test]
fn a_definition_that_is_not_an_object_is_malformed() {
    assert_malformed(parse(json!([1, 2])));
    assert_malformed(parse(json!({"nodes": {}})));
    assert_malformed(parse(json!({"edges": []})));
    assert_malformed(parse(json!({"nodes": [], "edges": [], "extra": 1})));
}

#[test]
fn a_node_or_edge_with_wrong_json_types_is_malformed() {
    assert_malformed(parse(json!({"nodes": ["a"]})));
    assert_malformed(parse(json!({"nodes": [{"type": "delay"}]})));
    assert_malformed(parse(json!({"nodes": [{"id": "a", "params": {}}]})));
    assert_malformed(parse(
        json!({"nodes": [{"id": "a", "type": "delay", "params": []}]}),
    ));
    assert_malformed(parse(
        json!({"nodes": [{"id": "a", "type": "delay", "params": {"milliseconds": 1}, "colour": "red"}]}),
    ));
    assert_malformed(parse(
        json!({"nodes": [delay("a"), delay("b")], "edges": [{"from": "a"}]}),
    ));
    assert_malformed(parse(
        json!({"nodes": [delay("a"), delay("b")], "edges": [{"from": "a", "to": "b", "branch": true}]}),
    ));
}

#[test]
fn a_definition_with_too_many_nodes_is_too_large() {
    let nodes: Vec<Value> = (0..=MAX_NODES).map(|i| delay(&format!("n{i}"))).collect();
    assert_eq!(
        parse(json!({"nodes": nodes})),
        Err(DefinitionError::TooLarge {
            what: "nodes",
            limit: MAX_NODES
        })
    );
}

#[test]
fn a_definition_with_too_many_edges_is_too_large() {
    let edges: Vec<Value> = (0..=MAX_EDGES).map(|_| edge("a", "b")).collect();
    assert_eq!(
        parse(json!({"nodes": [delay("a"), delay("b")], "edges": edges})),
        Err(DefinitionError::TooLarge {
            what: "edges",
            limit: MAX_EDGES
        })
    );
}

#[test]
fn a_definition_over_256_kib_is_too_large() {
    let big = "x".repeat(MAX_DEFINITION_BYTES);
    assert_eq!(
        parse(json!({"nodes": [transform("t", json!(big))]})),
        Err(DefinitionError::TooLarge {
            what: "bytes",
            limit: MAX_DEFINITION_BYTES
        })
    );
}

#[test]
fn a_node_id_with_forbidden_characters_is_invalid() {
    for id in [
        "has space",
        "",
        "dot.ted",
        "ünï",
        &"a".repeat(MAX_NODE_ID_LEN + 1),
    ] {
        assert_eq!(
            parse(json!({"nodes": [delay(id)]})),
            Err(DefinitionError::InvalidNodeId { id: id.to_string() })
        );
    }
    assert!(parse(json!({"nodes": [delay(&"a".repeat(MAX_NODE_ID_LEN))]})).is_ok());
    assert_eq!(
        NodeId::parse("a b"),
        Err(DefinitionError::InvalidNodeId { id: "a b".into() })
    );
}

#[test]
fn a_node_of_an_unknown_type_is_rejected() {
    assert_eq!(
        parse(json!({"nodes": [{"id": "x", "type": "teleport", "params": {}}]})),
        Err(DefinitionError::UnknownNodeType {
            id: "x".into(),
            node_type: "teleport".into()
        })
    );
}

#[test]
fn a_node_without_a_required_parameter_is_rejected() {
    let cases = [
        (
            json!({"id": "n", "type": "http", "params": {"method": "GET"}}),
            "url",
        ),
        (
            json!({"id": "n", "type": "http", "params": {"url": "https://x"}}),
            "method",
        ),
        (
            json!({"id": "n", "type": "mcp_tool", "params": {"tool": "t"}}),
            "server",
        ),
        (
            json!({"id": "n", "type": "mcp_tool", "params": {"server": "s"}}),
            "tool",
        ),
        (
            json!({"id": "n", "type": "condition", "params": {"expression": null}}),
            "expression",
        ),
        (json!({"id": "n", "type": "transform"}), "template"),
        (
            json!({"id": "n", "type": "delay", "params": {}}),
            "milliseconds",
        ),
    ];
    for (node, parameter) in cases {
        assert_eq!(
            parse(json!({"nodes": [node]})),
            Err(DefinitionError::MissingParameter {
                id: "n".into(),
                parameter: parameter.into()
            })
        );
    }
}

#[test]
fn a_node_with_an_invalid_parameter_is_rejected() {
    let cases = [
        (
            json!({"type": "http", "params": {"method": "FETCH", "url": "https://x"}}),
            "method",
        ),
        (
            json!({"type": "http", "params": {"method": "get", "url": "https://x"}}),
            "method",
        ),
        (
            json!({"type": "http", "params": {"method": "GET", "url": "ftp://x"}}),
            "url",
        ),
        (
            json!({"type": "http", "params": {"method": "GET", "url": 7}}),
            "url",
        ),
        (
            json!({"type": "http", "params": {"method": "GET", "url": "https://x", "headers": {"A": 1}}}),
            "headers",
        ),
        (
            json!({"type": "http", "params": {"method": "GET", "url": "https://x", "headers": {"A": "a\nb"}}}),
            "headers",
        ),
        (
            json!({"type": "http", "params": {"method": "GET", "url": "https://x", "headers": {"A B": "x"}}}),
            "headers",
        ),
        (
            json!({"type": "http", "params": {"method": "GET", "url": "https://x", "verb": "x"}}),
            "verb",
        ),
        (
            json!({"type": "mcp_tool", "params": {"server": "Not Valid", "tool": "t"}}),
            "server",
        ),
        (
            json!({"type": "mcp_tool", "params": {"server": "s", "tool": " "}}),
            "tool",
        ),
        (
            json!({"type": "mcp_tool", "params": {"server": "s", "tool": "t", "arguments": [1]}}),
            "arguments",
        ),
        (
            json!({"type": "condition", "params": {"expression": ""}}),
            "expression",
        ),
        (
            json!({"type": "delay", "params": {"milliseconds": MAX_DELAY_MILLISECONDS + 1}}),
            "milliseconds",
        ),
        (
            json!({"type": "delay", "params": {"milliseconds": -1}}),
            "milliseconds",
        ),
        (
            json!({"type": "delay", "params": {"milliseconds": 1.5}}),
            "milliseconds",
        ),
        (
            json!({"type": "delay", "params": {"milliseconds": "10"}}),
            "milliseconds",
        ),
        (
            json!({"type": "delay", "name": 3, "params": {"milliseconds": 1}}),
            "name",
        ),
        (
            json!({"type": "delay", "name": "n".repeat(MAX_NODE_NAME_LEN + 1), "params": {"milliseconds": 1}}),
            "name",
        ),
        (
            json!({"type": "delay", "position": {"x": 1}, "params": {"milliseconds": 1}}),
            "position",
        ),
        (
            json!({"type": "delay", "position": {"x": 1, "y": 2, "z": 3}, "params": {"milliseconds": 1}}),
            "position",
        ),
    ];
    for (mut node, parameter) in cases {
        node["id"] = json!("n");
        assert_invalid_parameter(parse(json!({"nodes": [node]})), "n", parameter);
    }
}

#[test]
fn two_nodes_with_the_same_id_are_rejected() {
    assert_eq!(
        parse(json!({"nodes": [delay("a"), delay("b"), delay("a")]})),
        Err(DefinitionError::DuplicateNodeId { id: "a".into() })
    );
}

#[test]
fn an_edge_to_an_unknown_node_is_rejected() {
    let nodes = json!([delay("a")]);
    assert_eq!(
        parse(json!({"nodes": nodes, "edges": [edge("a", "ghost")]})),
        Err(DefinitionError::UnknownEdgeEndpoint {
            from: "a".into(),
            to: "ghost".into(),
            missing: "ghost".into()
        })
    );
    assert_eq!(
        parse(json!({"nodes": nodes, "edges": [edge("ghost", "spirit")]})),
        Err(DefinitionError::UnknownEdgeEndpoint {
            from: "ghost".into(),
            to: "spirit".into(),
            missing: "ghost".into()
        })
    );
}

#[test]
fn the_same_edge_twice_is_rejected() {
    assert_eq!(
        parse(
            json!({"nodes": [delay("a"), delay("b")], "edges": [edge("a", "b"), edge("a", "b")]})
        ),
        Err(DefinitionError::DuplicateEdge {
            from: "a".into(),
            to: "b".into()
        })
    );
}

#[test]
fn both_branches_of_a_condition_may_lead_to_the_same_node() {
    assert!(parse(json!({"nodes": [condition("c"), delay("d")],
        "edges": [branch("c", "d", "true"), branch("c", "d", "false")]}))
    .is_ok());
}

#[test]
fn an_edge_leaving_a_condition_without_a_branch_is_rejected() {
    assert_eq!(
        parse(json!({"nodes": [condition("c"), delay("d")], "edges": [edge("c", "d")]})),
        Err(DefinitionError::InvalidBranchLabel {
            from: "c".into(),
            to: "d".into(),
            label: None
        })
    );
}

#[test]
fn an_edge_leaving_a_condition_with_an_unknown_branch_is_rejected() {
    assert_eq!(
        parse(json!({"nodes": [condition("c"), delay("d")], "edges": [branch("c", "d", "maybe")]})),
        Err(DefinitionError::InvalidBranchLabel {
            from: "c".into(),
            to: "d".into(),
            label: Some("maybe".into())
        })
    );
}

#[test]
fn an_edge_leaving_another_node_with_a_branch_is_rejected() {
    assert_eq!(
        parse(json!({"nodes": [delay("a"), delay("b")], "edges": [branch("a", "b", "true")]})),
        Err(DefinitionError::InvalidBranchLabel {
            from: "a".into(),
            to: "b".into(),
            label: Some("true".into())
        })
    );
}

#[test]
fn an_empty_definition_has_no_entry_node() {
    assert_eq!(
        parse(json!({"nodes": [], "edges": []})),
        Err(DefinitionError::NoEntryNode)
    );
}

#[test]
fn a_definition_where_every_node_has_a_predecessor_has_no_entry_node() {
    assert_eq!(
        parse(
            json!({"nodes": [delay("a"), delay("b")], "edges": [edge("a", "b"), edge("b", "a")]})
        ),
        Err(DefinitionError::NoEntryNode)
    );
}

#[test]
fn a_cycle_is_rejected_with_its_path() {
    assert_eq!(
        parse(
            json!({"nodes": [delay("start"), delay("a"), delay("b"), delay("c")],
            "edges": [edge("start", "a"), edge("a", "b"), edge("b", "c"), edge("c", "a")]})
        ),
        Err(DefinitionError::Cycle {
            path: vec!["a".into(), "b".into(), "c".into(), "a".into()]
        })
    );
}

#[test]
fn a_self_loop_is_a_cycle() {
    assert_eq!(
        parse(
            json!({"nodes": [delay("start"), delay("a")], "edges": [edge("start", "a"), edge("a", "a")]})
        ),
        Err(DefinitionError::Cycle {
            path: vec!["a".into(), "a".into()]
        })
    );
}

#[test]
fn a_reference_to_a_missing_node_is_rejected() {
    assert_eq!(
        parse(json!({"nodes": [transform("t", json!("{{nodes.ghost.value}}"))]})),
        Err(DefinitionError::UnknownNodeReference {
            id: "t".into(),
            referenced: "ghost".into()
        })
    );
}

#[test]
fn a_reference_to_a_node_that_is_not_an_ancestor_is_rejected() {
    // `b` and `c` are siblings: `c` may not read `b`'s output, which may not
    // exist yet when `c` runs. Neither may a node read its own output.
    let nodes = json!([
        delay("a"),
        delay("b"),
        transform("c", json!({"x": ["{{ nodes.b }}"]}))
    ]);
    assert_eq!(
        parse(json!({"nodes": nodes, "edges": [edge("a", "b"), edge("a", "c")]})),
        Err(DefinitionError::UnknownNodeReference {
            id: "c".into(),
            referenced: "b".into()
        })
    );
    assert_eq!(
        parse(json!({"nodes": [transform("t", json!("{{nodes.t}}"))]})),
        Err(DefinitionError::UnknownNodeReference {
            id: "t".into(),
            referenced: "t".into()
        })
    );
}

#[test]
fn a_reference_to_a_distant_ancestor_is_accepted() {
    let nodes = json!([
        delay("a"),
        delay("b"),
        transform("c", json!("{{nodes.a.output}}"))
    ]);
    assert!(parse(json!({"nodes": nodes, "edges": [edge("a", "b"), edge("b", "c")]})).is_ok());
}

#[test]
fn a_reference_to_an_invalid_secret_name_is_rejected() {
    let node = json!({"id": "h", "type": "http", "params": {"method": "GET",
        "url": "https://x.example", "headers": {"Authorization": "Bearer {{secrets.api_token}}"}}});
    assert_eq!(
        parse(json!({"nodes": [node]})),
        Err(DefinitionError::InvalidSecretReference {
            id: "h".into(),
            reference: "api_token".into()
        })
    );
}

#[test]
fn faults_are_reported_in_the_documented_order() {
    // An unknown type (step 3) wins over a duplicate id (step 4).
    assert!(matches!(
        parse(json!({"nodes": [delay("a"), delay("a"), {"id": "x", "type": "nope"}]})),
        Err(DefinitionError::UnknownNodeType { .. })
    ));
    // A duplicate id (step 4) wins over an unknown edge endpoint (step 5).
    assert!(matches!(
        parse(json!({"nodes": [delay("a"), delay("a")], "edges": [edge("a", "z")]})),
        Err(DefinitionError::DuplicateNodeId { .. })
    ));
    // An unknown endpoint (step 5) wins over a branch label (step 6), even
    // when the label is on an earlier edge.
    assert!(matches!(
        parse(
            json!({"nodes": [delay("a"), delay("b")], "edges": [branch("a", "b", "true"), edge("a", "z")]})
        ),
        Err(DefinitionError::UnknownEdgeEndpoint { .. })
    ));
    // A cycle (step 8) wins over a bad reference (step 9).
    let nodes = json!([
        delay("s"),
        transform("a", json!("{{secrets.bad}}")),
        delay("b")
    ]);
    assert!(matches!(
        parse(json!({"nodes": nodes, "edges": [edge("s", "a"), edge("a", "b"), edge("b", "a")]})),
        Err(DefinitionError::Cycle { .. })
    ));
    // The size limits (step 2) win over everything in the nodes.
    let nodes: Vec<Value> = (0..=MAX_NODES).map(|_| json!({"id": "bad id"})).collect();
    assert!(matches!(
        parse(json!({"nodes": nodes})),
        Err(DefinitionError::TooLarge { what: "nodes", .. })
    ));
}

/// An independent acyclicity check: repeatedly remove nodes without
/// incoming edges; the graph is acyclic exactly when all get removed.
fn is_acyclic(node_count: usize, edges: &[(usize, usize)]) -> bool {
    let mut alive = vec![true; node_count];
    loop {
        let removable = (0..node_count)
            .find(|&n| alive[n] && !edges.iter().any(|&(from, to)| to == n && alive[from]));
        match removable {
            Some(n) => alive[n] = false,
            None => return alive.iter().all(|a| !a),
        }
    }
}

/// A node of a random non-condition type with valid parameters.
fn arbitrary_node(id: String, kind: u8) -> Value {
    match kind % 4 {
        0 => json!({"id": id, "type": "delay", "params": {"milliseconds": 1}}),
        1 => json!({"id": id, "type": "transform", "params": {"template": {"k": "v"}}}),
        2 => {
            json!({"id": id, "type": "http", "params": {"method": "POST", "url": "https://x.example"}})
        }
        _ => json!({"id": id, "type": "mcp_tool", "params": {"server": "srv", "tool": "t"}}),
    }
}

fn arbitrary_graph() -> impl Strategy<Value = (Vec<u8>, Vec<(usize, usize)>)> {
    (1usize..12).prop_flat_map(|n| {
        (
            proptest::collection::vec(any::<u8>(), n),
            proptest::collection::btree_set((0..n, 0..n), 0..(2 * n + 2))
                .prop_map(|edges| edges.into_iter().collect::<Vec<_>>()),
        )
    })
}

proptest! {
    #[test]
    fn parse_accepts_exactly_the_acyclic_graphs((kinds, edges) in arbitrary_graph()) {
        let nodes: Vec<Value> = kinds
            .iter()
            .enumerate()
            .map(|(i, kind)| arbitrary_node(format!("n{i}"), *kind))
            .collect();
        let edge_values: Vec<Value> = edges
            .iter()
            .map(|(from, to)| edge(&format!("n{from}"), &format!("n{to}")))
            .collect();
        let result = parse(json!({"nodes": nodes, "edges": edge_values}));
        if is_acyclic(kinds.len(), &edges) {
            let definition = result.expect("an acyclic graph is accepted");
            // The topological order puts every edge forwards.
            let order: Vec<&str> = definition.topological_order().iter().map(|n| n.id().as_str()).collect();
            prop_assert_eq!(order.len(), kinds.len());
            for (from, to) in &edges {
                let at = |i: usize| order.iter().position(|o| *o == format!("n{i}"));
                prop_assert!(at(*from) < at(*to));
            }
        } else {
            match result {
                Err(DefinitionError::NoEntryNode) => {}
                Err(DefinitionError::Cycle { path }) => {
                    // The reported path is a real cycle of the graph.
                    prop_assert!(path.len() >= 2);
                    prop_assert_eq!(path.first(), path.last());
                    for pair in path.windows(2) {
                        let step = (pair[0][1..].parse::<usize>().ok(), pair[1][1..].parse::<usize>().ok());
                        prop_assert!(edges.iter().any(|&(f, t)| (Some(f), Some(t)) == step));
                    }
                }
                other => prop_assert!(false, "expected Cycle or NoEntryNode, got {:?}", other),
            }
        }
    }
}

// Node policies, masking rules and conditions.

#[test]
fn a_node_may_carry_a_retry_policy_a_timeout_and_an_idempotence_override() {
    let mut node = delay("wait");
    node["retry"] = json!({"max_attempts": 3, "backoff_ms": 200});
    node["timeout_ms"] = json!(5000);
    node["idempotent"] = json!(false);
    let definition = parse(json!({"nodes": [node], "edges": []})).unwrap();
    let policy = definition.nodes()[0].policy();
    let retry = policy.retry.unwrap();
    assert_eq!((retry.max_attempts, retry.backoff_ms), (3, 200));
    assert_eq!(retry.backoff_before(2), 200);
    assert_eq!(retry.backoff_before(3), 400);
    assert!(retry.backoff_before(30) <= retry.max_backoff_ms);
    assert_eq!(policy.timeout_ms, Some(5000));
    assert_eq!(policy.idempotent, Some(false));
    // The policy survives a round trip through the recorded form.
    let recorded = serde_json::to_value(&definition).unwrap();
    assert_eq!(recorded["nodes"][0]["retry"]["max_attempts"], 3);
    let read: WorkflowDefinition = serde_json::from_value(recorded).unwrap();
    assert_eq!(read, definition);
}

#[test]
fn retry_policies_and_timeouts_out_of_bounds_are_refused() {
    for (field, value, parameter) in [
        ("retry", json!({"max_attempts": 0}), "retry.max_attempts"),
        ("retry", json!({"max_attempts": 11}), "retry.max_attempts"),
        ("retry", json!({}), "retry.max_attempts"),
        (
            "retry",
            json!({"max_attempts": 2, "backoff_ms": -1}),
            "retry.backoff_ms",
        ),
        (
            "retry",
            json!({"max_attempts": 2, "backoff_ms": 100, "max_backoff_ms": 50}),
            "retry.max_backoff_ms",
        ),
        ("retry", json!({"max_attempts": 2, "jitter": true}), "retry"),
        ("retry", json!(3), "retry"),
        ("timeout_ms", json!(0), "timeout_ms"),
        ("timeout_ms", json!(86_400_001u64), "timeout_ms"),
        ("idempotent", json!("yes"), "idempotent"),
    ] {
        let mut node = delay("wait");
        node[field] = value;
        assert_invalid_parameter(parse(json!({"nodes": [node]})), "wait", parameter);
    }
}

#[test]
fn masking_rules_are_validated_and_kept() {
    let definition = parse(json!({
        "nodes": [delay("wait")],
        "masking": {"paths": ["$.customer.email"], "detectors": ["email", "card"]}
    }))
    .unwrap();
    assert_eq!(definition.masking().paths(), ["$.customer.email"]);
    let recorded = serde_json::to_value(&definition).unwrap();
    assert_eq!(recorded["masking"]["detectors"], json!(["email", "card"]));
    for masking in [
        json!({"paths": ["$["]}),
        json!({"detectors": ["dna"]}),
        json!({"paths": "x"}),
        json!({"other": []}),
    ] {
        assert!(
            matches!(
                parse(json!({"nodes": [delay("wait")], "masking": masking})),
                Err(DefinitionError::InvalidMasking { .. })
            ),
            "{masking} should be refused"
        );
    }
    // Without rules, nothing is written.
    let plain = serde_json::to_value(parse(json!({"nodes": [delay("w")]})).unwrap()).unwrap();
    assert!(plain.get("masking").is_none());
}

#[test]
fn a_condition_that_is_not_valid_cel_is_refused() {
    let node = json!({"id": "check", "type": "condition", "params": {"expression": "input.a =="}});
    assert_invalid_parameter(parse(json!({"nodes": [node]})), "check", "expression");
}

#[test]
fn a_condition_reading_a_node_that_is_not_an_ancestor_is_refused() {
    let check = json!({"id": "check", "type": "condition",
                       "params": {"expression": "nodes.later.ok == true"}});
    let result = parse(json!({
        "nodes": [check, delay("later"), delay("yes")],
        "edges": [branch("check", "later", "true"), branch("check", "yes", "false")]
    }));
    assert_eq!(
        result,
        Err(DefinitionError::UnknownNodeReference {
            id: "check".into(),
            referenced: "later".into()
        })
    );
    let check = json!({"id": "check", "type": "condition",
                       "params": {"expression": "nodes.first.ok == true"}});
    parse(json!({
        "nodes": [delay("first"), check, delay("yes")],
        "edges": [edge("first", "check"), branch("check", "yes", "true")]
    }))
    .unwrap();
}
