//! Workflow definitions: a directed acyclic graph of typed nodes and edges,
//! and the validation that every definition passes before it is recorded.
//!
//! The JSON shape is what users send and what events store:
//!
//! ```json
//! {"nodes": [{"id": "fetch", "type": "http", "name": "Fetch", "position": {"x": 0, "y": 0},
//!             "params": {"method": "GET", "url": "https://example.com/{{secrets.API_TOKEN}}"}}],
//!  "edges": [{"from": "fetch", "to": "check"}, {"from": "check", "to": "ok", "branch": "true"}]}
//! ```
//!
//! # Two ways in
//!
//! [`WorkflowDefinition::parse`] is for new input: it checks the shape and
//! every rule below. Deserializing (`serde`) is for definitions already in the
//! log: it checks only the shape needed to build the typed value, so that
//! tightening a rule later never makes a recorded event unreadable.
//!
//! # Check order
//!
//! [`WorkflowDefinition::parse`] reports the first fault found, in this fixed
//! order, so that the same input always yields the same error:
//!
//! 1. Shape: an object with an array `nodes` and an optional array `edges`,
//!    and no other field ([`DefinitionError::Malformed`]).
//! 2. Size: the serialized definition, then the node count, then the edge
//!    count ([`DefinitionError::TooLarge`]); then text: every object key and
//!    string of the whole document, in document order, by the rules of
//!    [`crate::text`] (keys are names, other strings free text; node names
//!    are checked as names with their node) ([`DefinitionError::InvalidText`],
//!    naming the path, as `definition.nodes[1].params.body`).
//! 3. Nodes, in array order, each completely before the next: its shape
//!    (`Malformed`), its id ([`DefinitionError::InvalidNodeId`]), unknown node
//!    fields (`Malformed`), its type ([`DefinitionError::UnknownNodeType`]),
//!    its parameters in the documented order of the type
//!    ([`DefinitionError::MissingParameter`],
//!    [`DefinitionError::InvalidParameter`]), unknown parameters in name order
//!    (`InvalidParameter`), then `name` and `position` (`InvalidParameter`).
//! 4. Duplicate node ids, in array order ([`DefinitionError::DuplicateNodeId`]).
//! 5. Edges, in array order: each one's shape (`Malformed`); then, for each
//!    edge, its endpoints, `from` before `to`
//!    ([`DefinitionError::UnknownEdgeEndpoint`]); then duplicate edges
//!    ([`DefinitionError::DuplicateEdge`]).
//! 6. Branch labels, in edge order ([`DefinitionError::InvalidBranchLabel`]).
//! 7. An entry node exists ([`DefinitionError::NoEntryNode`]).
//! 8. No cycle ([`DefinitionError::Cycle`]).
//! 9. Template references, node by node in array order and, within a node,
//!    in parameter order ([`DefinitionError::InvalidSecretReference`],
//!    [`DefinitionError::UnknownNodeReference`]).
//!
//! # Templates
//!
//! Any string parameter may contain `{{secrets.NAME}}` (a tenant secret),
//! `{{nodes.ID.path}}` (the output of an ancestor node) or `{{input.path}}`
//! (the execution's input); see [`crate::common::template_expressions`].
//! Other expressions are left to the engine.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};
use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// The most nodes a definition may have. Two hundred is far more than a
/// person can arrange on a canvas, and it bounds validation and execution.
pub const MAX_NODES: usize = 200;

/// The most edges a definition may have (five per node on average).
pub const MAX_EDGES: usize = 1_000;

/// The longest node id, in characters. Ids are `[A-Za-z0-9_-]{1,64}` so that
/// they can appear in `{{nodes.ID}}` templates and URLs without escaping.
pub const MAX_NODE_ID_LEN: usize = 64;

/// The largest serialized definition, in bytes (256 KiB). Every version is
/// kept in the log and in the workflow's state, so this bounds both.
pub const MAX_DEFINITION_BYTES: usize = 256 * 1024;

/// The longest `delay` node, in milliseconds (one day). Longer waits belong in
/// a cron trigger, not in a running execution.
pub const MAX_DELAY_MILLISECONDS: u64 = 86_400_000;

/// The longest display name of a node, in characters.
pub const MAX_NODE_NAME_LEN: usize = 200;

/// The most attempts a node's retry policy may allow (the first included).
pub const MAX_ATTEMPTS: u32 = 10;

/// The first pause before a retry when the policy names none.
pub const DEFAULT_BACKOFF_MS: u64 = 1_000;

/// The longest pause between two attempts (one hour).
pub const MAX_BACKOFF_MS: u64 = 3_600_000;

/// The longest per-node timeout (one day).
pub const MAX_TIMEOUT_MS: u64 = 86_400_000;

pub mod condition;
mod error;
mod graph;
pub mod masking;
mod parse;

pub use error::DefinitionError;
use graph::topological_indices;
use masking::MaskingRules;
use parse::{parse_with, Mode};

use crate::common::{template_expressions, TemplateReference};

/// The id of a node, unique within its definition: `[A-Za-z0-9_-]{1,64}`.
///
/// It also names a step of an execution.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeId(String);

impl NodeId {
    /// Parses a node id.
    pub fn parse(id: &str) -> Result<Self, DefinitionError> {
        if Self::is_valid(id) {
            Ok(Self(id.to_string()))
        } else {
            Err(DefinitionError::InvalidNodeId { id: id.to_string() })
        }
    }

    /// True when `id` is 1 to 64 ASCII letters, digits, `_` or `-`.
    pub fn is_valid(id: &str) -> bool {
        !id.is_empty()
            && id.len() <= MAX_NODE_ID_LEN
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for NodeId {
    type Err = DefinitionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl AsRef<str> for NodeId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for NodeId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// Where the editor draws a node. The domain only keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CanvasPosition {
    /// Horizontal coordinate, in canvas units.
    pub x: f64,
    /// Vertical coordinate, in canvas units.
    pub y: f64,
}

/// The HTTP methods an `http` node may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum HttpMethod {
    /// `GET`
    Get,
    /// `POST`
    Post,
    /// `PUT`
    Put,
    /// `PATCH`
    Patch,
    /// `DELETE`
    Delete,
    /// `HEAD`
    Head,
}

impl HttpMethod {
    /// Every method, in the order the error message lists them.
    pub const ALL: [HttpMethod; 6] = [
        Self::Get,
        Self::Post,
        Self::Put,
        Self::Patch,
        Self::Delete,
        Self::Head,
    ];

    /// The method's name, uppercase.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Get => "GET",
            Self::Post => "POST",
            Self::Put => "PUT",
            Self::Patch => "PATCH",
            Self::Delete => "DELETE",
            Self::Head => "HEAD",
        }
    }

    /// Parses an uppercase method name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.as_str() == name)
    }
}

/// Which way out of a `condition` node an edge is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Branch {
    /// Taken when the expression is true.
    True,
    /// Taken when the expression is false.
    False,
}

impl Branch {
    /// `"true"` or `"false"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::True => "true",
            Self::False => "false",
        }
    }
}

/// What a node does, with its typed parameters. The JSON `type` is the
/// snake_case name of the variant and `params` holds its fields.
#[derive(Debug, Clone, PartialEq)]
pub enum NodeKind {
    /// `mcp_tool`: calls a tool of a registered MCP server.
    McpTool {
        /// The name of the MCP server, as registered by the tenant.
        server: String,
        /// The tool's name on that server.
        tool: String,
        /// The tool's arguments; string values may contain templates.
        arguments: Map<String, Value>,
    },
    /// `http`: makes an HTTP request.
    Http {
        /// The method.
        method: HttpMethod,
        /// The URL: `http://…`, `https://…`, or starting with a template.
        url: String,
        /// Request headers; values may contain templates.
        headers: BTreeMap<String, String>,
        /// The request body, if any; string values may contain templates.
        body: Option<Value>,
    },
    /// `condition`: evaluates an expression and follows the `"true"` or
    /// `"false"` edges.
    Condition {
        /// The expression, evaluated by the engine.
        expression: String,
    },
    /// `transform`: builds its output from a template.
    Transform {
        /// Any JSON; string values may contain templates.
        template: Value,
    },
    /// `delay`: waits.
    Delay {
        /// How long, at most one day.
        milliseconds: u64,
    },
}

impl NodeKind {
    /// Every node type name, as written in JSON.
    pub const TYPES: [&'static str; 5] = ["mcp_tool", "http", "condition", "transform", "delay"];

    /// The node type name, as written in JSON.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::McpTool { .. } => "mcp_tool",
            Self::Http { .. } => "http",
            Self::Condition { .. } => "condition",
            Self::Transform { .. } => "transform",
            Self::Delay { .. } => "delay",
        }
    }

    /// The parameters as JSON, in the shape users send.
    pub fn params(&self) -> Value {
        let mut params = Map::new();
        match self {
            Self::McpTool {
                server,
                tool,
                arguments,
            } => {
                params.insert("server".into(), Value::String(server.clone()));
                params.insert("tool".into(), Value::String(tool.clone()));
                params.insert("arguments".into(), Value::Object(arguments.clone()));
            }
            Self::Http {
                method,
                url,
                headers,
                body,
            } => {
                params.insert("method".into(), Value::String(method.as_str().into()));
                params.insert("url".into(), Value::String(url.clone()));
                let headers = headers
                    .iter()
                    .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                    .collect();
                params.insert("headers".into(), Value::Object(headers));
                params.insert("body".into(), body.clone().unwrap_or(Value::Null));
            }
            Self::Condition { expression } => {
                params.insert("expression".into(), Value::String(expression.clone()));
            }
            Self::Transform { template } => {
                params.insert("template".into(), template.clone());
            }
            Self::Delay { milliseconds } => {
                params.insert("milliseconds".into(), Value::from(*milliseconds));
            }
        }
        Value::Object(params)
    }

    /// Calls `visit` on every string in the parameters, in parameter order
    /// (object members in key order), stopping at the first error.
    fn visit_strings<E>(&self, visit: &mut impl FnMut(&str) -> Result<(), E>) -> Result<(), E> {
        match self {
            Self::McpTool {
                server,
                tool,
                arguments,
            } => {
                visit(server)?;
                visit(tool)?;
                arguments.values().try_for_each(|v| visit_value(v, visit))
            }
            Self::Http {
                url, headers, body, ..
            } => {
                visit(url)?;
                headers.values().try_for_each(|v| visit(v))?;
                body.iter().try_for_each(|v| visit_value(v, visit))
            }
            Self::Condition { expression } => visit(expression),
            Self::Transform { template } => visit_value(template, visit),
            Self::Delay { .. } => Ok(()),
        }
    }
}

fn visit_value<E>(value: &Value, visit: &mut impl FnMut(&str) -> Result<(), E>) -> Result<(), E> {
    match value {
        Value::String(s) => visit(s),
        Value::Array(items) => items.iter().try_for_each(|v| visit_value(v, visit)),
        Value::Object(members) => members.values().try_for_each(|v| visit_value(v, visit)),
        Value::Null | Value::Bool(_) | Value::Number(_) => Ok(()),
    }
}

/// How a node's failures are retried: up to `max_attempts` attempts in
/// all, the pause before each retry doubling from `backoff_ms` up to
/// `max_backoff_ms` (the engine adds jitter). Only failures the executor
/// judges retryable are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RetryPolicy {
    /// Attempts in all, the first included: 1 to [`MAX_ATTEMPTS`].
    pub max_attempts: u32,
    /// The pause before the first retry.
    pub backoff_ms: u64,
    /// The longest pause.
    pub max_backoff_ms: u64,
}

impl RetryPolicy {
    /// The pause before attempt `next` (2 for the first retry), before
    /// jitter: `backoff_ms · 2^(next − 2)`, capped.
    pub fn backoff_before(&self, next: u32) -> u64 {
        let doublings = next.saturating_sub(2).min(32);
        self.backoff_ms
            .saturating_mul(1u64 << doublings)
            .min(self.max_backoff_ms)
    }
}

/// What the engine needs to know about running a node beyond its
/// parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NodePolicy {
    /// Retries of retryable failures; none when absent.
    pub retry: Option<RetryPolicy>,
    /// The longest one attempt may run, in milliseconds; the executor's
    /// default when absent.
    pub timeout_ms: Option<u64>,
    /// Whether running the node twice does no more harm than once. When
    /// absent the engine decides from the node type (and an MCP tool's
    /// annotations). Decides whether an attempt interrupted by a crash is
    /// retried or failed.
    pub idempotent: Option<bool>,
}

/// One node of a definition.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// Unique within the definition; edges and templates refer to it.
    id: NodeId,
    /// A display label for the editor.
    name: Option<String>,
    /// Where the editor draws the node.
    position: Option<CanvasPosition>,
    /// What the node does.
    kind: NodeKind,
    /// Retries, timeout and idempotence.
    policy: NodePolicy,
}

impl Node {
    /// The node's id.
    pub fn id(&self) -> &NodeId {
        &self.id
    }

    /// The node's display label, if any.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// Where the editor draws the node, if known.
    pub fn position(&self) -> Option<CanvasPosition> {
        self.position
    }

    /// What the node does.
    pub fn kind(&self) -> &NodeKind {
        &self.kind
    }

    /// Retries, timeout and idempotence.
    pub fn policy(&self) -> &NodePolicy {
        &self.policy
    }
}

impl Serialize for Node {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Repr<'a> {
            /// The node's id.
            id: &'a NodeId,
            /// The node type's name.
            #[serde(rename = "type")]
            node_type: &'static str,
            /// The display label, omitted when absent.
            #[serde(skip_serializing_if = "Option::is_none")]
            name: Option<&'a str>,
            /// Where the editor draws it, omitted when absent.
            #[serde(skip_serializing_if = "Option::is_none")]
            position: Option<CanvasPosition>,
            /// The parameters in the shape users send.
            params: Value,
            /// The retry policy, omitted when absent.
            #[serde(skip_serializing_if = "Option::is_none")]
            retry: Option<RetryPolicy>,
            /// The timeout, omitted when absent.
            #[serde(skip_serializing_if = "Option::is_none")]
            timeout_ms: Option<u64>,
            /// The idempotence override, omitted when absent.
            #[serde(skip_serializing_if = "Option::is_none")]
            idempotent: Option<bool>,
        }
        Repr {
            id: &self.id,
            node_type: self.kind.type_name(),
            name: self.name.as_deref(),
            position: self.position,
            params: self.kind.params(),
            retry: self.policy.retry,
            timeout_ms: self.policy.timeout_ms,
            idempotent: self.policy.idempotent,
        }
        .serialize(serializer)
    }
}

/// A directed edge: `to` runs after `from`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Edge {
    /// The node that runs first.
    from: NodeId,
    /// The node that runs after it.
    to: NodeId,
    /// For an edge leaving a `condition`, the outcome that takes it.
    #[serde(skip_serializing_if = "Option::is_none")]
    branch: Option<Branch>,
}

impl Edge {
    /// The node that runs first.
    pub fn from(&self) -> &NodeId {
        &self.from
    }

    /// The node that runs after it.
    pub fn to(&self) -> &NodeId {
        &self.to
    }

    /// The branch label, present exactly on edges leaving a `condition`.
    pub fn branch(&self) -> Option<Branch> {
        self.branch
    }
}

/// A validated workflow graph.
///
/// Build one with [`WorkflowDefinition::parse`]. It serializes to the JSON
/// shape users send (HTTP nodes always carry `headers` and `body`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WorkflowDefinition {
    /// The nodes, in the order the user gave them; that order breaks ties
    /// wherever the domain must choose (topological order, errors).
    nodes: Vec<Node>,
    /// The edges, in the order the user gave them.
    edges: Vec<Edge>,
    /// What executions must not record (personal data), omitted when none.
    #[serde(
        skip_serializing_if = "MaskingRules::is_empty",
        serialize_with = "serialize_masking"
    )]
    masking: MaskingRules,
}

/// Writes masking rules in the shape users send them.
fn serialize_masking<S: serde::Serializer>(
    rules: &MaskingRules,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    rules.to_value().serialize(serializer)
}

impl<'de> Deserialize<'de> for WorkflowDefinition {
    /// Reads a recorded definition, checking its shape but not the rules,
    /// which may have been tightened since it was recorded.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        parse_with(&value, Mode::Recorded).map_err(serde::de::Error::custom)
    }
}

impl WorkflowDefinition {
    /// Parses and validates a definition as a user sent it. See the module
    /// documentation for the rules and the order in which they are checked.
    pub fn parse(value: &Value) -> Result<Self, DefinitionError> {
        parse_with(value, Mode::Validate)
    }

    /// Checks this definition against today's rules, as [`Self::parse`]
    /// would. Used when an old version is brought back (revert).
    pub fn validate(&self) -> Result<(), DefinitionError> {
        let value = serde_json::to_value(self).map_err(|e| DefinitionError::Malformed {
            reason: e.to_string(),
        })?;
        Self::parse(&value).map(|_| ())
    }

    /// What executions must not record.
    pub fn masking(&self) -> &MaskingRules {
        &self.masking
    }

    /// The nodes, in the order given.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// The edges, in the order given.
    pub fn edges(&self) -> &[Edge] {
        &self.edges
    }

    /// The node with this id.
    pub fn node(&self, id: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.id.as_str() == id)
    }

    /// The edges leaving a node, in the order given.
    pub fn outgoing<'a>(&'a self, id: &'a str) -> impl Iterator<Item = &'a Edge> + 'a {
        self.edges.iter().filter(move |e| e.from.as_str() == id)
    }

    /// The edges entering a node, in the order given.
    pub fn incoming<'a>(&'a self, id: &'a str) -> impl Iterator<Item = &'a Edge> + 'a {
        self.edges.iter().filter(move |e| e.to.as_str() == id)
    }

    /// The nodes without incoming edges, where an execution starts, in the
    /// order given.
    pub fn entry_nodes(&self) -> Vec<&Node> {
        let targets: BTreeSet<&str> = self.edges.iter().map(|e| e.to.as_str()).collect();
        self.nodes
            .iter()
            .filter(|n| !targets.contains(n.id.as_str()))
            .collect()
    }

    /// Every node, each after all of its ancestors. Among nodes that are
    /// ready at the same time, the one given first comes first, so the order
    /// is deterministic.
    pub fn topological_order(&self) -> Vec<&Node> {
        topological_indices(&self.graph())
            .into_iter()
            .map(|i| &self.nodes[i])
            .collect()
    }

    /// Every secret name referenced anywhere, as `{{secrets.NAME}}`.
    pub fn secret_references(&self) -> BTreeSet<String> {
        let mut names = BTreeSet::new();
        for node in &self.nodes {
            let _ = node.kind.visit_strings(&mut |text| -> Result<(), ()> {
                for template in template_expressions(text) {
                    if let TemplateReference::Secret { name } = template.reference() {
                        names.insert(name.to_string());
                    }
                }
                Ok(())
            });
        }
        names
    }

    /// Every MCP server name used by an `mcp_tool` node.
    pub fn mcp_server_references(&self) -> BTreeSet<String> {
        self.nodes
            .iter()
            .filter_map(|n| match &n.kind {
                NodeKind::McpTool { server, .. } => Some(server.clone()),
                _ => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
