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
//!    count ([`DefinitionError::TooLarge`]).
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

use crate::common::{template_expressions, TemplateReference};
use crate::mcp_server::is_valid_mcp_server_name;
use crate::secret::is_valid_secret_name;
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

/// Why a workflow definition was refused. Each variant names the offending
/// node or edge, so that the editor can highlight it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DefinitionError {
    /// The JSON is not shaped like a definition (wrong types, unknown or
    /// missing structural fields).
    #[error("malformed definition: {reason}")]
    Malformed {
        /// What is wrong, in words.
        reason: String,
    },
    /// A size limit was exceeded.
    #[error("the definition has too many {what} (the limit is {limit})")]
    TooLarge {
        /// What was counted: `bytes`, `nodes` or `edges`.
        what: &'static str,
        /// The limit that was exceeded.
        limit: usize,
    },
    /// A node id is empty, too long, or has characters other than
    /// `[A-Za-z0-9_-]`.
    #[error("`{id}` is not a valid node id (1 to {MAX_NODE_ID_LEN} letters, digits, '_' or '-')")]
    InvalidNodeId {
        /// The id as written.
        id: String,
    },
    /// A node's `type` is not one of the known node types.
    #[error("node `{id}` has an unknown type `{node_type}`")]
    UnknownNodeType {
        /// The node.
        id: String,
        /// The type as written.
        node_type: String,
    },
    /// A required parameter is absent (or null).
    #[error("node `{id}` is missing the parameter `{parameter}`")]
    MissingParameter {
        /// The node.
        id: String,
        /// The missing parameter.
        parameter: String,
    },
    /// A parameter (or the node's `name` or `position`) has a wrong type or
    /// value, or is not a parameter of the node's type.
    #[error("node `{id}` has an invalid `{parameter}`: {reason}")]
    InvalidParameter {
        /// The node.
        id: String,
        /// The parameter.
        parameter: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Two nodes share an id.
    #[error("the node id `{id}` is used more than once")]
    DuplicateNodeId {
        /// The repeated id.
        id: String,
    },
    /// An edge refers to a node that does not exist.
    #[error("the edge from `{from}` to `{to}` refers to `{missing}`, which is not a node")]
    UnknownEdgeEndpoint {
        /// The edge's source as written.
        from: String,
        /// The edge's target as written.
        to: String,
        /// The endpoint that does not exist (`from` if both are missing).
        missing: String,
    },
    /// The same edge (same source, target and branch) appears twice.
    #[error("the edge from `{from}` to `{to}` appears more than once")]
    DuplicateEdge {
        /// The edge's source.
        from: String,
        /// The edge's target.
        to: String,
    },
    /// An edge leaving a `condition` node lacks a `"true"`/`"false"` branch,
    /// or an edge leaving another node has a branch.
    #[error("the edge from `{from}` to `{to}` has an invalid branch label ({}): edges leaving a condition carry \"true\" or \"false\", other edges none", label.as_deref().unwrap_or("none"))]
    InvalidBranchLabel {
        /// The edge's source.
        from: String,
        /// The edge's target.
        to: String,
        /// The label as written, if any.
        label: Option<String>,
    },
    /// The graph is empty, or every node has an incoming edge, so there is
    /// nowhere to start.
    #[error("the definition has no entry node (a node without incoming edges)")]
    NoEntryNode,
    /// The graph has a cycle.
    #[error("the definition has a cycle: {}", path.join(" → "))]
    Cycle {
        /// The node ids along the cycle, the first repeated at the end
        /// (`["a", "b", "a"]`).
        path: Vec<String>,
    },
    /// A `{{nodes.X}}` template refers to a node that does not exist or is
    /// not an ancestor of the node containing it, so its output cannot be
    /// available when the node runs.
    #[error("node `{id}` refers to `{{{{nodes.{referenced}}}}}`, which is not an earlier node on its path")]
    UnknownNodeReference {
        /// The node containing the template.
        id: String,
        /// The node id it refers to.
        referenced: String,
    },
    /// A `{{secrets.NAME}}` template whose NAME is not a valid secret name.
    #[error(
        "node `{id}` refers to `{{{{secrets.{reference}}}}}`, which is not a valid secret name"
    )]
    InvalidSecretReference {
        /// The node containing the template.
        id: String,
        /// The NAME as written.
        reference: String,
    },
}

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
pub struct Position {
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

/// One node of a definition.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// Unique within the definition; edges and templates refer to it.
    id: NodeId,
    /// A display label for the editor.
    name: Option<String>,
    /// Where the editor draws the node.
    position: Option<Position>,
    /// What the node does.
    kind: NodeKind,
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
    pub fn position(&self) -> Option<Position> {
        self.position
    }

    /// What the node does.
    pub fn kind(&self) -> &NodeKind {
        &self.kind
    }
}

impl Serialize for Node {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Repr<'a> {
            id: &'a NodeId,
            #[serde(rename = "type")]
            node_type: &'static str,
            #[serde(skip_serializing_if = "Option::is_none")]
            name: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            position: Option<Position>,
            params: Value,
        }
        Repr {
            id: &self.id,
            node_type: self.kind.type_name(),
            name: self.name.as_deref(),
            position: self.position,
            params: self.kind.params(),
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

    /// The graph as adjacency lists of node indices.
    fn graph(&self) -> Graph {
        let index: BTreeMap<&str, usize> = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.id.as_str(), i))
            .collect();
        let mut graph = Graph {
            successors: vec![Vec::new(); self.nodes.len()],
            predecessors: vec![Vec::new(); self.nodes.len()],
        };
        for edge in &self.edges {
            if let (Some(&from), Some(&to)) =
                (index.get(edge.from.as_str()), index.get(edge.to.as_str()))
            {
                graph.successors[from].push(to);
                graph.predecessors[to].push(from);
            }
        }
        graph
    }

    /// Steps 7 to 9 of the check order: entry node, cycles, references.
    fn validate_graph(&self) -> Result<(), DefinitionError> {
        let graph = self.graph();
        if !graph.predecessors.iter().any(Vec::is_empty) {
            return Err(DefinitionError::NoEntryNode);
        }
        let order = topological_indices(&graph);
        if order.len() < self.nodes.len() {
            return Err(DefinitionError::Cycle {
                path: self.find_cycle(&graph, &order),
            });
        }
        // A node's ancestors are its predecessors and their ancestors;
        // visiting in topological order means predecessors are complete.
        let mut ancestors: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); self.nodes.len()];
        for &node in &order {
            let mut set = BTreeSet::new();
            for &pred in &graph.predecessors[node] {
                set.insert(pred);
                set.extend(ancestors[pred].iter().copied());
            }
            ancestors[node] = set;
        }
        let index: BTreeMap<&str, usize> = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.id.as_str(), i))
            .collect();
        for (i, node) in self.nodes.iter().enumerate() {
            node.kind.visit_strings(&mut |text| {
                for template in template_expressions(text) {
                    match template.reference() {
                        TemplateReference::Secret { name } if !is_valid_secret_name(name) => {
                            return Err(DefinitionError::InvalidSecretReference {
                                id: node.id.to_string(),
                                reference: name.to_string(),
                            });
                        }
                        TemplateReference::Node {
                            node: referenced, ..
                        } if !index
                            .get(referenced)
                            .is_some_and(|r| ancestors[i].contains(r)) =>
                        {
                            return Err(DefinitionError::UnknownNodeReference {
                                id: node.id.to_string(),
                                referenced: referenced.to_string(),
                            });
                        }
                        _ => {}
                    }
                }
                Ok(())
            })?;
        }
        Ok(())
    }

    /// Finds one cycle among the nodes a topological sort could not reach.
    ///
    /// Each such node has a predecessor that is also unreached, so walking
    /// backwards from the first one (always through its first such
    /// predecessor, in edge order) must revisit a node; the walk between the
    /// two visits, reversed, is a cycle.
    fn find_cycle(&self, graph: &Graph, sorted: &[usize]) -> Vec<String> {
        let sorted: BTreeSet<usize> = sorted.iter().copied().collect();
        let Some(start) = (0..self.nodes.len()).find(|i| !sorted.contains(i)) else {
            return Vec::new();
        };
        let mut walk = vec![start];
        let mut current = start;
        loop {
            let Some(&pred) = graph.predecessors[current]
                .iter()
                .find(|p| !sorted.contains(p))
            else {
                return Vec::new();
            };
            if let Some(seen) = walk.iter().position(|&n| n == pred) {
                // The walk went against the edges; reversed, it follows them.
                let mut cycle: Vec<usize> = walk[seen..].to_vec();
                cycle.reverse();
                // Start at the node given first, and close the loop by
                // repeating it, so the same graph always reports the same path.
                let first = (0..cycle.len()).min_by_key(|&k| cycle[k]).unwrap_or(0);
                cycle.rotate_left(first);
                cycle.extend(cycle.first().copied());
                return cycle
                    .into_iter()
                    .map(|i| self.nodes[i].id.to_string())
                    .collect();
            }
            walk.push(pred);
            current = pred;
        }
    }
}

/// Adjacency lists over node indices, edges in the order given.
struct Graph {
    successors: Vec<Vec<usize>>,
    predecessors: Vec<Vec<usize>>,
}

/// Kahn's algorithm, always taking the ready node given first. Returns fewer
/// indices than there are nodes when the graph has a cycle.
fn topological_indices(graph: &Graph) -> Vec<usize> {
    let mut in_degree: Vec<usize> = graph.predecessors.iter().map(Vec::len).collect();
    let mut ready: BTreeSet<usize> = (0..in_degree.len())
        .filter(|&i| in_degree[i] == 0)
        .collect();
    let mut order = Vec::with_capacity(in_degree.len());
    while let Some(node) = ready.pop_first() {
        order.push(node);
        for &next in &graph.successors[node] {
            in_degree[next] -= 1;
            if in_degree[next] == 0 {
                ready.insert(next);
            }
        }
    }
    order
}

/// Whether parsing applies the rules or only reads the shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// New input: every rule applies.
    Validate,
    /// A recorded definition: only what is needed to build the typed value.
    Recorded,
}

impl Mode {
    fn strict(self) -> bool {
        self == Mode::Validate
    }
}

fn malformed(reason: impl Into<String>) -> DefinitionError {
    DefinitionError::Malformed {
        reason: reason.into(),
    }
}

/// An edge as written, before its label is checked against its source.
struct RawEdge {
    from: String,
    to: String,
    label: Option<String>,
}

fn parse_with(value: &Value, mode: Mode) -> Result<WorkflowDefinition, DefinitionError> {
    // 1. Shape.
    let object = value
        .as_object()
        .ok_or_else(|| malformed("a definition is a JSON object with `nodes` and `edges`"))?;
    if mode.strict() {
        if let Some(key) = object
            .keys()
            .find(|k| !matches!(k.as_str(), "nodes" | "edges"))
        {
            return Err(malformed(format!("unknown field `{key}`")));
        }
    }
    let raw_nodes = match object.get("nodes") {
        Some(Value::Array(nodes)) => nodes.as_slice(),
        Some(_) => return Err(malformed("`nodes` must be an array")),
        None => return Err(malformed("missing field `nodes`")),
    };
    let raw_edges = match object.get("edges") {
        Some(Value::Array(edges)) => edges.as_slice(),
        None | Some(Value::Null) => &[],
        Some(_) => return Err(malformed("`edges` must be an array")),
    };

    // 2. Size.
    if mode.strict() {
        if !fits_in(value, MAX_DEFINITION_BYTES) {
            return Err(DefinitionError::TooLarge {
                what: "bytes",
                limit: MAX_DEFINITION_BYTES,
            });
        }
        if raw_nodes.len() > MAX_NODES {
            return Err(DefinitionError::TooLarge {
                what: "nodes",
                limit: MAX_NODES,
            });
        }
        if raw_edges.len() > MAX_EDGES {
            return Err(DefinitionError::TooLarge {
                what: "edges",
                limit: MAX_EDGES,
            });
        }
    }

    // 3. Nodes.
    let nodes = raw_nodes
        .iter()
        .enumerate()
        .map(|(position, node)| parse_node(position, node, mode))
        .collect::<Result<Vec<_>, _>>()?;

    // 4. Duplicate ids.
    let mut kinds: BTreeMap<&str, &NodeKind> = BTreeMap::new();
    for node in &nodes {
        if kinds.insert(node.id.as_str(), &node.kind).is_some() && mode.strict() {
            return Err(DefinitionError::DuplicateNodeId {
                id: node.id.to_string(),
            });
        }
    }

    // 5. Edges: shape, endpoints, duplicates.
    let raw_edges = raw_edges
        .iter()
        .enumerate()
        .map(|(position, edge)| parse_edge_shape(position, edge, mode))
        .collect::<Result<Vec<_>, _>>()?;
    if mode.strict() {
        for edge in &raw_edges {
            let missing = [&edge.from, &edge.to]
                .into_iter()
                .find(|id| !kinds.contains_key(id.as_str()));
            if let Some(missing) = missing {
                return Err(DefinitionError::UnknownEdgeEndpoint {
                    from: edge.from.clone(),
                    to: edge.to.clone(),
                    missing: missing.clone(),
                });
            }
        }
        let mut seen = BTreeSet::new();
        for edge in &raw_edges {
            if !seen.insert((&edge.from, &edge.to, &edge.label)) {
                return Err(DefinitionError::DuplicateEdge {
                    from: edge.from.clone(),
                    to: edge.to.clone(),
                });
            }
        }
    }

    // 6. Branch labels.
    let mut edges = Vec::with_capacity(raw_edges.len());
    for edge in raw_edges {
        let from_condition = matches!(
            kinds.get(edge.from.as_str()),
            Some(NodeKind::Condition { .. })
        );
        let branch = match edge.label.as_deref() {
            Some("true") => Some(Branch::True),
            Some("false") => Some(Branch::False),
            _ => None,
        };
        let valid_label = if from_condition {
            branch.is_some()
        } else {
            edge.label.is_none()
        };
        let label_is_known = edge.label.is_none() || branch.is_some();
        if (mode.strict() && !valid_label) || !label_is_known {
            return Err(DefinitionError::InvalidBranchLabel {
                from: edge.from,
                to: edge.to,
                label: edge.label,
            });
        }
        edges.push(Edge {
            from: NodeId(edge.from),
            to: NodeId(edge.to),
            branch,
        });
    }

    let definition = WorkflowDefinition { nodes, edges };
    // 7 to 9. Entry node, cycles, references.
    if mode.strict() {
        definition.validate_graph()?;
    }
    Ok(definition)
}

/// True when `value` serializes to at most `limit` bytes. Counting stops as
/// soon as the limit is passed, so a huge input costs no more than the limit.
fn fits_in(value: &Value, limit: usize) -> bool {
    struct Counter {
        written: usize,
        limit: usize,
    }
    impl std::io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.written += buf.len();
            if self.written > self.limit {
                Err(std::io::Error::other("limit exceeded"))
            } else {
                Ok(buf.len())
            }
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter { written: 0, limit };
    serde_json::to_writer(&mut counter, value).is_ok()
}

fn parse_edge_shape(position: usize, edge: &Value, mode: Mode) -> Result<RawEdge, DefinitionError> {
    let object = edge
        .as_object()
        .ok_or_else(|| malformed(format!("edge #{position} is not an object")))?;
    if mode.strict() {
        if let Some(key) = object
            .keys()
            .find(|k| !matches!(k.as_str(), "from" | "to" | "branch"))
        {
            return Err(malformed(format!(
                "edge #{position} has an unknown field `{key}`"
            )));
        }
    }
    let endpoint = |field: &str| match object.get(field) {
        Some(Value::String(id)) => Ok(id.clone()),
        _ => Err(malformed(format!(
            "edge #{position} needs a string `{field}`"
        ))),
    };
    let from = endpoint("from")?;
    let to = endpoint("to")?;
    let label = match object.get("branch") {
        None | Some(Value::Null) => None,
        Some(Value::String(label)) => Some(label.clone()),
        Some(_) => {
            return Err(malformed(format!(
                "the `branch` of edge #{position} must be a string"
            )))
        }
    };
    Ok(RawEdge { from, to, label })
}

fn parse_node(position: usize, node: &Value, mode: Mode) -> Result<Node, DefinitionError> {
    let object = node
        .as_object()
        .ok_or_else(|| malformed(format!("node #{position} is not an object")))?;
    let id = match object.get("id") {
        Some(Value::String(id)) => id.as_str(),
        _ => return Err(malformed(format!("node #{position} needs a string `id`"))),
    };
    if mode.strict() && !NodeId::is_valid(id) {
        return Err(DefinitionError::InvalidNodeId { id: id.to_string() });
    }
    if mode.strict() {
        if let Some(key) = object
            .keys()
            .find(|k| !matches!(k.as_str(), "id" | "type" | "name" | "position" | "params"))
        {
            return Err(malformed(format!(
                "node `{id}` has an unknown field `{key}`"
            )));
        }
    }
    let node_type = match object.get("type") {
        Some(Value::String(node_type)) => node_type.as_str(),
        _ => return Err(malformed(format!("node `{id}` needs a string `type`"))),
    };
    let empty = Map::new();
    let params = match object.get("params") {
        Some(Value::Object(params)) => params,
        None | Some(Value::Null) => &empty,
        Some(_) => {
            return Err(malformed(format!(
                "the `params` of node `{id}` must be an object"
            )))
        }
    };
    let kind = Params { id, params, mode }.parse_kind(node_type)?;
    let invalid = |parameter: &str, reason: &str| DefinitionError::InvalidParameter {
        id: id.to_string(),
        parameter: parameter.to_string(),
        reason: reason.to_string(),
    };
    let name = match object.get("name") {
        None | Some(Value::Null) => None,
        Some(Value::String(name)) => {
            if mode.strict() && name.chars().count() > MAX_NODE_NAME_LEN {
                return Err(invalid(
                    "name",
                    &format!("must be at most {MAX_NODE_NAME_LEN} characters"),
                ));
            }
            Some(name.clone())
        }
        Some(_) => return Err(invalid("name", "must be a string")),
    };
    let position = match object.get("position") {
        None | Some(Value::Null) => None,
        Some(value) => {
            let coordinate = |axis: &str| value.get(axis).and_then(Value::as_f64);
            match (value.as_object(), coordinate("x"), coordinate("y")) {
                (Some(members), Some(x), Some(y)) if members.len() == 2 || !mode.strict() => {
                    Some(Position { x, y })
                }
                _ => {
                    return Err(invalid(
                        "position",
                        "must be an object with numeric `x` and `y` only",
                    ))
                }
            }
        }
    };
    Ok(Node {
        id: NodeId(id.to_string()),
        name,
        position,
        kind,
    })
}

/// The parameters of one node, with the context needed to report faults.
struct Params<'a> {
    id: &'a str,
    params: &'a Map<String, Value>,
    mode: Mode,
}

impl Params<'_> {
    fn missing(&self, parameter: &str) -> DefinitionError {
        DefinitionError::MissingParameter {
            id: self.id.to_string(),
            parameter: parameter.to_string(),
        }
    }

    fn invalid(&self, parameter: &str, reason: impl Into<String>) -> DefinitionError {
        DefinitionError::InvalidParameter {
            id: self.id.to_string(),
            parameter: parameter.to_string(),
            reason: reason.into(),
        }
    }

    /// A parameter that may be absent; JSON null counts as absent.
    fn optional(&self, parameter: &str) -> Option<&Value> {
        self.params.get(parameter).filter(|v| !v.is_null())
    }

    fn string(&self, parameter: &str) -> Result<String, DefinitionError> {
        match self.optional(parameter) {
            None => Err(self.missing(parameter)),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(self.invalid(parameter, "must be a string")),
        }
    }

    /// A string that, under the rules, must not be blank.
    fn non_blank(&self, parameter: &str) -> Result<String, DefinitionError> {
        let s = self.string(parameter)?;
        if self.mode.strict() && s.trim().is_empty() {
            return Err(self.invalid(parameter, "must not be empty"));
        }
        Ok(s)
    }

    fn parse_kind(&self, node_type: &str) -> Result<NodeKind, DefinitionError> {
        let (kind, known): (NodeKind, &[&str]) = match node_type {
            "mcp_tool" => {
                let server = self.string("server")?;
                if self.mode.strict() && !is_valid_mcp_server_name(&server) {
                    return Err(self.invalid(
                        "server",
                        "must be the name of a registered MCP server (lowercase letters, digits, '_' and '-')",
                    ));
                }
                let tool = self.non_blank("tool")?;
                let arguments = match self.optional("arguments") {
                    None => Map::new(),
                    Some(Value::Object(arguments)) => arguments.clone(),
                    Some(_) => return Err(self.invalid("arguments", "must be an object")),
                };
                (
                    NodeKind::McpTool {
                        server,
                        tool,
                        arguments,
                    },
                    &["server", "tool", "arguments"],
                )
            }
            "http" => {
                let method = self.string("method")?;
                let method = HttpMethod::parse(&method).ok_or_else(|| {
                    self.invalid(
                        "method",
                        "must be one of GET, POST, PUT, PATCH, DELETE, HEAD",
                    )
                })?;
                let url = self.non_blank("url")?;
                if self.mode.strict()
                    && !(url.starts_with("https://")
                        || url.starts_with("http://")
                        || url.starts_with("{{"))
                {
                    return Err(
                        self.invalid("url", "must start with http://, https:// or a template")
                    );
                }
                let headers = self.headers()?;
                let body = self.optional("body").cloned();
                (
                    NodeKind::Http {
                        method,
                        url,
                        headers,
                        body,
                    },
                    &["method", "url", "headers", "body"],
                )
            }
            "condition" => (
                NodeKind::Condition {
                    expression: self.non_blank("expression")?,
                },
                &["expression"],
            ),
            "transform" => {
                // Null is a legitimate template (the output is null), so
                // only a truly absent parameter is missing.
                let template = self
                    .params
                    .get("template")
                    .cloned()
                    .ok_or_else(|| self.missing("template"))?;
                (NodeKind::Transform { template }, &["template"])
            }
            "delay" => {
                let milliseconds = self
                    .optional("milliseconds")
                    .ok_or_else(|| self.missing("milliseconds"))?
                    .as_u64()
                    .ok_or_else(|| {
                        self.invalid("milliseconds", "must be a whole, non-negative number")
                    })?;
                if self.mode.strict() && milliseconds > MAX_DELAY_MILLISECONDS {
                    return Err(self.invalid(
                        "milliseconds",
                        format!("must be at most {MAX_DELAY_MILLISECONDS} (one day)"),
                    ));
                }
                (NodeKind::Delay { milliseconds }, &["milliseconds"])
            }
            other => {
                return Err(DefinitionError::UnknownNodeType {
                    id: self.id.to_string(),
                    node_type: other.to_string(),
                })
            }
        };
        if self.mode.strict() {
            // Map keys iterate in a fixed order, and the first unknown one
            // is reported.
            let mut unknown: Vec<&String> = self
                .params
                .keys()
                .filter(|k| !known.contains(&k.as_str()))
                .collect();
            unknown.sort();
            if let Some(parameter) = unknown.first() {
                return Err(self.invalid(
                    parameter,
                    format!("is not a parameter of a `{node_type}` node"),
                ));
            }
        }
        Ok(kind)
    }

    fn headers(&self) -> Result<BTreeMap<String, String>, DefinitionError> {
        let members = match self.optional("headers") {
            None => return Ok(BTreeMap::new()),
            Some(Value::Object(members)) => members,
            Some(_) => return Err(self.invalid("headers", "must be an object of strings")),
        };
        let mut headers = BTreeMap::new();
        for (name, value) in members {
            let Value::String(value) = value else {
                return Err(self.invalid("headers", format!("header `{name}` must be a string")));
            };
            if self.mode.strict() {
                let token = !name.is_empty()
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
                if !token {
                    return Err(
                        self.invalid("headers", format!("`{name}` is not a valid header name"))
                    );
                }
                if value.contains(['\r', '\n', '\0']) {
                    return Err(self.invalid(
                        "headers",
                        format!("header `{name}` must not contain line breaks"),
                    ));
                }
            }
            headers.insert(name.clone(), value.clone());
        }
        Ok(headers)
    }
}

#[cfg(test)]
mod tests;
