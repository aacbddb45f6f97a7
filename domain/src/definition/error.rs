//! Why a definition was refused: one variant per fault, naming the node or
//! edge at fault so that the editor can highlight it.

use super::MAX_NODE_ID_LEN;

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
    /// The `masking` rules are malformed.
    #[error("invalid masking rules: {reason}")]
    InvalidMasking {
        /// What is wrong, naming the entry.
        reason: String,
    },
    /// A string or key holds a character no text may hold (see
    /// [`crate::text`]); the field is its path from `definition`
    /// (`definition.nodes[0].params.body`).
    #[error(transparent)]
    InvalidText(#[from] crate::text::InvalidText),
}
