//! What an execution does next, decided from its state and its workflow's
//! definition alone: which nodes are ready, which can never run (a branch
//! not taken), whether it is finished and with what output.
//!
//! The engine acts on a [`Plan`]; a debugger shows one at any point of the
//! history; a replay compares the plans of recorded states with what was
//! recorded. Pure: the same state and definition always give the same plan.
//!
//! # Edges and branches
//!
//! An edge from a node is *satisfied* once the node succeeded — for an edge
//! leaving a `condition`, only when the condition's `result` equals the
//! edge's branch — and *dead* once the node is skipped, or succeeded on the
//! other branch. A node is ready when it has not run, none of its incoming
//! edges is still open, and at least one is satisfied (an entry node, with
//! no incoming edge, is ready at once). A node all of whose incoming edges
//! are dead is skipped. So a node after a join runs when any branch into it
//! ran, once every branch into it is decided.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};

use super::{Execution, StepStatus};
use crate::definition::{Branch, NodeId, NodeKind, WorkflowDefinition};

/// Where one node of an execution is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NodeState {
    /// Waiting for nodes before it.
    Pending,
    /// Its turn has come; no attempt is scheduled yet.
    Ready,
    /// Its latest attempt is scheduled (maybe waiting for a retry's time).
    Scheduled,
    /// Its latest attempt is running.
    Running,
    /// It succeeded.
    Done,
    /// Its latest attempt failed.
    Failed,
    /// It will not run: a branch not taken.
    Skipped,
}

impl NodeState {
    /// The state's name, as the API shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Ready => "ready",
            Self::Scheduled => "scheduled",
            Self::Running => "running",
            Self::Done => "done",
            Self::Failed => "failed",
            Self::Skipped => "skipped",
        }
    }
}

/// What an execution does next.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Every node's state, in the definition's order.
    pub nodes: Vec<(NodeId, NodeState)>,
    /// The nodes whose turn has come, in topological order.
    pub ready: Vec<NodeId>,
    /// The nodes to record as skipped, in topological order.
    pub skip: Vec<NodeId>,
    /// Whether every node is done or skipped.
    pub finished: bool,
}

impl Plan {
    /// The nodes in a given state, in the definition's order.
    pub fn in_state(&self, state: NodeState) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|(_, s)| *s == state)
            .map(|(id, _)| id.clone())
            .collect()
    }
}

/// The branch a condition's output took: its `result`, when it is a
/// boolean.
pub fn branch_taken(output: &Value) -> Option<Branch> {
    match output.get("result") {
        Some(Value::Bool(true)) => Some(Branch::True),
        Some(Value::Bool(false)) => Some(Branch::False),
        _ => None,
    }
}

/// Plans the next move of `execution`, which runs `definition`.
///
/// Skips are applied as the walk goes, so a whole branch not taken is
/// skipped in one plan, and the nodes after it may be ready in the same one.
pub fn plan(definition: &WorkflowDefinition, execution: &Execution) -> Plan {
    let order = definition.topological_order();
    let mut state: BTreeMap<&str, NodeState> = BTreeMap::new();
    let mut ready = Vec::new();
    let mut skip = Vec::new();
    for node in &order {
        let id = node.id().as_str();
        let recorded = if execution.is_skipped(id) {
            Some(NodeState::Skipped)
        } else {
            execution
                .latest_attempt(id)
                .map(|(_, status)| match status {
                    StepStatus::Scheduled => NodeState::Scheduled,
                    StepStatus::Running => NodeState::Running,
                    StepStatus::Succeeded => NodeState::Done,
                    StepStatus::Failed { .. } => NodeState::Failed,
                })
        };
        let current = match recorded {
            Some(recorded) => recorded,
            None => {
                // Decide from the edges into the node.
                let mut open = false;
                let mut satisfied = false;
                let mut any = false;
                for edge in definition.incoming(id) {
                    any = true;
                    let from = edge.from().as_str();
                    match state.get(from).copied().unwrap_or(NodeState::Pending) {
                        NodeState::Skipped => {}
                        NodeState::Done => {
                            let taken = match edge.branch() {
                                None => true,
                                Some(branch) => execution
                                    .output(from)
                                    .and_then(branch_taken)
                                    .is_some_and(|b| b == branch),
                            };
                            satisfied |= taken;
                        }
                        _ => open = true,
                    }
                }
                if !any || (!open && satisfied) {
                    ready.push(node.id().clone());
                    NodeState::Ready
                } else if !open {
                    skip.push(node.id().clone());
                    NodeState::Skipped
                } else {
                    NodeState::Pending
                }
            }
        };
        state.insert(id, current);
    }
    let finished = state
        .values()
        .all(|s| matches!(s, NodeState::Done | NodeState::Skipped));
    let nodes = definition
        .nodes()
        .iter()
        .map(|n| {
            let s = state
                .get(n.id().as_str())
                .copied()
                .unwrap_or(NodeState::Pending);
            (n.id().clone(), s)
        })
        .collect();
    Plan {
        nodes,
        ready,
        skip,
        finished,
    }
}

/// The output of a finished execution: the outputs of its sink nodes (those
/// without outgoing edges) that ran, by node id.
pub fn final_output(definition: &WorkflowDefinition, execution: &Execution) -> Value {
    let sources: BTreeSet<&str> = definition
        .edges()
        .iter()
        .map(|e| e.from().as_str())
        .collect();
    let mut output = Map::new();
    for node in definition.nodes() {
        let id = node.id().as_str();
        if sources.contains(id) {
            continue;
        }
        if let Some(value) = execution.output(id) {
            output.insert(id.to_string(), value.clone());
        }
    }
    Value::Object(output)
}

/// Whether running `node` twice does no more harm than once, judged from
/// its type alone (the engine may know better for MCP tools, from their
/// annotations): conditions, transforms and delays are; `GET`, `HEAD`,
/// `PUT` and `DELETE` requests are, as HTTP defines them; a node's own
/// `idempotent` overrides.
pub fn is_idempotent(definition: &WorkflowDefinition, node_id: &str) -> bool {
    use crate::definition::HttpMethod;
    let Some(node) = definition.node(node_id) else {
        return false;
    };
    if let Some(idempotent) = node.policy().idempotent {
        return idempotent;
    }
    match node.kind() {
        NodeKind::Condition { .. } | NodeKind::Transform { .. } | NodeKind::Delay { .. } => true,
        NodeKind::Http { method, .. } => matches!(
            method,
            HttpMethod::Get | HttpMethod::Head | HttpMethod::Put | HttpMethod::Delete
        ),
        NodeKind::McpTool { .. } => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::common::{TenantId, WorkflowId};
    use crate::execution::ExecutionEvent;
    use cqrs_es::Aggregate;
    use serde_json::json;

    fn definition(value: Value) -> WorkflowDefinition {
        WorkflowDefinition::parse(&value).expect("a valid definition")
    }

    fn started() -> Execution {
        let mut e = Execution::default();
        e.apply(ExecutionEvent::ExecutionStarted {
            tenant: TenantId::parse("acme").unwrap(),
            workflow_id: WorkflowId::new(),
            workflow_version: 1,
            input: json!({}),
            trigger: "manual".into(),
            source: None,
            breakpoints: vec![],
            deadline: None,
        });
        e
    }

    fn succeed(e: &mut Execution, node: &str, output: Value) {
        let node_id = NodeId::parse(node).unwrap();
        e.apply(ExecutionEvent::StepScheduled {
            node_id: node_id.clone(),
            attempt: 1,
            input: json!({}),
        });
        e.apply(ExecutionEvent::StepStarted {
            node_id: node_id.clone(),
            attempt: 1,
            wake_at: None,
        });
        e.apply(ExecutionEvent::StepSucceeded {
            node_id,
            attempt: 1,
            output,
        });
    }

    fn ids(nodes: &[NodeId]) -> Vec<&str> {
        nodes.iter().map(NodeId::as_str).collect()
    }

    fn branching() -> WorkflowDefinition {
        definition(json!({
            "nodes": [
                {"id": "check", "type": "condition", "params": {"expression": "input.ok"}},
                {"id": "yes", "type": "transform", "params": {"template": 1}},
                {"id": "after_yes", "type": "transform", "params": {"template": 2}},
                {"id": "no", "type": "transform", "params": {"template": 3}},
                {"id": "join", "type": "transform", "params": {"template": 4}}
            ],
            "edges": [
                {"from": "check", "to": "yes", "branch": "true"},
                {"from": "yes", "to": "after_yes"},
                {"from": "check", "to": "no", "branch": "false"},
                {"from": "after_yes", "to": "join"},
                {"from": "no", "to": "join"}
            ]
        }))
    }

    #[test]
    fn entry_nodes_are_ready_at_the_start() {
        let plan = plan(&branching(), &started());
        assert_eq!(ids(&plan.ready), ["check"]);
        assert!(plan.skip.is_empty());
        assert!(!plan.finished);
    }

    #[test]
    fn a_condition_readies_its_branch_and_skips_the_other_whole() {
        let d = branching();
        let mut e = started();
        succeed(&mut e, "check", json!({"result": false}));
        let p = plan(&d, &e);
        assert_eq!(ids(&p.ready), ["no"]);
        assert_eq!(ids(&p.skip), ["yes", "after_yes"]);
        for node in ["yes", "after_yes"] {
            e.apply(ExecutionEvent::StepSkipped {
                node_id: NodeId::parse(node).unwrap(),
            });
        }
        succeed(&mut e, "no", json!(3));
        let p = plan(&d, &e);
        assert_eq!(ids(&p.ready), ["join"], "a join runs when one branch ran");
        succeed(&mut e, "join", json!(4));
        let p = plan(&d, &e);
        assert!(p.finished);
        assert_eq!(final_output(&d, &e), json!({"join": 4}));
    }

    #[test]
    fn a_join_waits_for_every_branch_into_it_to_be_decided() {
        let d = definition(json!({
            "nodes": [
                {"id": "a", "type": "transform", "params": {"template": 1}},
                {"id": "b", "type": "transform", "params": {"template": 2}},
                {"id": "c", "type": "transform", "params": {"template": 3}}
            ],
            "edges": [{"from": "a", "to": "c"}, {"from": "b", "to": "c"}]
        }));
        let mut e = started();
        assert_eq!(
            ids(&plan(&d, &e).ready),
            ["a", "b"],
            "independent nodes are ready together"
        );
        succeed(&mut e, "a", json!(1));
        assert_eq!(ids(&plan(&d, &e).ready), ["b"]);
        succeed(&mut e, "b", json!(2));
        assert_eq!(ids(&plan(&d, &e).ready), ["c"]);
    }

    #[test]
    fn a_condition_without_a_boolean_result_takes_no_branch() {
        let d = branching();
        let mut e = started();
        succeed(&mut e, "check", json!({"result": "yes"}));
        let p = plan(&d, &e);
        assert!(p.ready.is_empty());
        assert_eq!(ids(&p.skip), ["yes", "after_yes", "no", "join"]);
    }

    #[test]
    fn running_and_failed_nodes_are_reported_and_nothing_after_them_is_ready() {
        let d = branching();
        let mut e = started();
        let check = NodeId::parse("check").unwrap();
        e.apply(ExecutionEvent::StepScheduled {
            node_id: check.clone(),
            attempt: 1,
            input: json!({}),
        });
        e.apply(ExecutionEvent::StepStarted {
            node_id: check.clone(),
            attempt: 1,
            wake_at: None,
        });
        let p = plan(&d, &e);
        assert_eq!(p.in_state(NodeState::Running), std::slice::from_ref(&check));
        assert!(p.ready.is_empty() && p.skip.is_empty());
        e.apply(ExecutionEvent::StepFailed {
            node_id: check.clone(),
            attempt: 1,
            error: "boom".into(),
            retryable: false,
        });
        let p = plan(&d, &e);
        assert_eq!(p.in_state(NodeState::Failed), [check]);
        assert!(p.ready.is_empty() && !p.finished);
    }

    #[test]
    fn idempotence_follows_the_node_type_unless_the_node_says_otherwise() {
        let d = definition(json!({
            "nodes": [
                {"id": "get", "type": "http", "params": {"method": "GET", "url": "https://x.example"}},
                {"id": "post", "type": "http", "params": {"method": "POST", "url": "https://x.example"}},
                {"id": "post_safe", "type": "http", "idempotent": true,
                 "params": {"method": "POST", "url": "https://x.example"}},
                {"id": "tool", "type": "mcp_tool", "params": {"server": "s", "tool": "t"}},
                {"id": "wait", "type": "delay", "params": {"milliseconds": 5}}
            ],
            "edges": []
        }));
        assert!(is_idempotent(&d, "get"));
        assert!(!is_idempotent(&d, "post"));
        assert!(is_idempotent(&d, "post_safe"));
        assert!(!is_idempotent(&d, "tool"));
        assert!(is_idempotent(&d, "wait"));
        assert!(!is_idempotent(&d, "missing"));
    }
}
