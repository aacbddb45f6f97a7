//! Reading a definition from JSON: the shape and, for new input, every
//! rule, in the fixed order the module documentation of
//! [`crate::definition`] gives.
//!
//! Hand-written rather than derived with serde: serde stops at the first
//! fault with a message about Rust types, while the editor needs one typed
//! error per fault, naming the node or edge, in a stable order.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};

use super::condition::check_condition_syntax;
use super::masking::MaskingRules;
use super::*;
use crate::mcp_server::is_valid_mcp_server_name;

/// Whether parsing applies the rules or only reads the shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
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
    /// The source as written.
    from: String,
    /// The target as written.
    to: String,
    /// The branch label as written.
    label: Option<String>,
}

pub(super) fn parse_with(value: &Value, mode: Mode) -> Result<WorkflowDefinition, DefinitionError> {
    // 1. Shape.
    let object = value
        .as_object()
        .ok_or_else(|| malformed("a definition is a JSON object with `nodes` and `edges`"))?;
    if mode.strict() {
        if let Some(key) = object
            .keys()
            .find(|k| !matches!(k.as_str(), "nodes" | "edges" | "masking"))
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

    // 2. (continued) Text: nothing that no text may hold, anywhere in the
    // document.
    if mode.strict() {
        crate::text::check_json("definition", value)?;
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

    // The masking rules are read whatever the mode: rules recorded once must
    // never be dropped on reading, or what they hide would be recorded.
    let masking = MaskingRules::parse(object.get("masking").unwrap_or(&Value::Null))
        .map_err(|reason| DefinitionError::InvalidMasking { reason })?;
    let definition = WorkflowDefinition {
        nodes,
        edges,
        masking,
    };
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
        /// Bytes counted so far.
        written: usize,
        /// Where counting stops.
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
        if let Some(key) = object.keys().find(|k| {
            !matches!(
                k.as_str(),
                "id" | "type"
                    | "name"
                    | "position"
                    | "params"
                    | "retry"
                    | "timeout_ms"
                    | "idempotent"
            )
        }) {
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
            if mode.strict() {
                crate::text::check_name(&format!("definition.nodes[{position}].name"), name)?;
            }
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
                    Some(CanvasPosition { x, y })
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
    let policy = parse_policy(id, object, mode)?;
    Ok(Node {
        id: NodeId(id.to_string()),
        name,
        position,
        kind,
        policy,
    })
}

/// Reads a node's `retry`, `timeout_ms` and `idempotent` (after its
/// parameters, name and position, in that order).
fn parse_policy(
    id: &str,
    object: &Map<String, Value>,
    mode: Mode,
) -> Result<NodePolicy, DefinitionError> {
    let invalid = |parameter: &str, reason: String| DefinitionError::InvalidParameter {
        id: id.to_string(),
        parameter: parameter.to_string(),
        reason,
    };
    // A whole number within bounds; outside them only new input is refused.
    let number = |value: &Value, parameter: &str, min: u64, max: u64| match value.as_u64() {
        Some(n) if (min..=max).contains(&n) || !mode.strict() => Ok(n.clamp(min, max)),
        _ => Err(invalid(
            parameter,
            format!("must be a whole number from {min} to {max}"),
        )),
    };
    let retry = match object.get("retry") {
        None | Some(Value::Null) => None,
        Some(Value::Object(retry)) => {
            if mode.strict() {
                if let Some(key) = retry.keys().find(|k| {
                    !matches!(k.as_str(), "max_attempts" | "backoff_ms" | "max_backoff_ms")
                }) {
                    return Err(invalid(
                        "retry",
                        format!("has an unknown field `{key}` (max_attempts, backoff_ms, max_backoff_ms)"),
                    ));
                }
            }
            let max_attempts = match retry.get("max_attempts") {
                None => return Err(invalid("retry.max_attempts", "is required".into())),
                Some(v) => number(v, "retry.max_attempts", 1, u64::from(MAX_ATTEMPTS))? as u32,
            };
            let backoff_ms = match retry.get("backoff_ms") {
                None | Some(Value::Null) => DEFAULT_BACKOFF_MS,
                Some(v) => number(v, "retry.backoff_ms", 0, MAX_BACKOFF_MS)?,
            };
            let max_backoff_ms = match retry.get("max_backoff_ms") {
                None | Some(Value::Null) => MAX_BACKOFF_MS
                    .min(backoff_ms.saturating_mul(32))
                    .max(backoff_ms),
                Some(v) => number(v, "retry.max_backoff_ms", backoff_ms, MAX_BACKOFF_MS)?,
            };
            Some(RetryPolicy {
                max_attempts,
                backoff_ms,
                max_backoff_ms,
            })
        }
        Some(_) => {
            return Err(invalid(
                "retry",
                "must be an object such as {\"max_attempts\": 3}".into(),
            ))
        }
    };
    let timeout_ms = match object.get("timeout_ms") {
        None | Some(Value::Null) => None,
        Some(v) => Some(number(v, "timeout_ms", 1, MAX_TIMEOUT_MS)?),
    };
    let idempotent = match object.get("idempotent") {
        None | Some(Value::Null) => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(_) => return Err(invalid("idempotent", "must be true or false".into())),
    };
    Ok(NodePolicy {
        retry,
        timeout_ms,
        idempotent,
    })
}

/// The parameters of one node, with the context needed to report faults.
struct Params<'a> {
    /// The node, named in every error.
    id: &'a str,
    /// The node's `params` object.
    params: &'a Map<String, Value>,
    /// Whether the rules apply or only the shape.
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
            "condition" => {
                let expression = self.non_blank("expression")?;
                if self.mode.strict() {
                    check_condition_syntax(&expression)
                        .map_err(|reason| self.invalid("expression", &reason))?;
                }
                (NodeKind::Condition { expression }, &["expression"])
            }
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
