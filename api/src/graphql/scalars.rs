//! Scalars and small shared types.
//!
//! - `ID`: entity ids (UUIDs).
//! - `JSON`: free-form values such as workflow definitions
//!   ([`async_graphql::Json`]).
//! - `DateTime`: RFC 3339 timestamps (chrono's `DateTime<Utc>`).
//! - Positions in the log are opaque `String`s: both halves outgrow 2^53 and
//!   must never pass through a JSON number.

use async_graphql::{Enum, InputObject};

use crate::error::ApiError;

/// The JSON scalar.
pub type Json = async_graphql::Json<serde_json::Value>;

/// Read-your-writes: wait until the read models reach a position.
#[derive(InputObject, Clone, Debug)]
pub struct Consistency {
    /// A position returned by a mutation. The query waits (boundedly) until
    /// the read models have applied it, then answers; on a timeout it fails
    /// with `CONFLICT` and `reason: NOT_CAUGHT_UP`.
    pub at_least: String,
}

/// The kinds of aggregate in the log.
#[derive(Enum, Copy, Clone, Debug, PartialEq, Eq)]
pub enum AggregateType {
    /// A workflow.
    Workflow,
    /// An execution.
    Execution,
    /// A secret.
    Secret,
    /// An MCP server.
    McpServer,
    /// An API key.
    ApiKey,
}

impl AggregateType {
    /// The name the log and the read models use.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Workflow => "workflow",
            Self::Execution => "execution",
            Self::Secret => "secret",
            Self::McpServer => "mcp_server",
            Self::ApiKey => "api_key",
        }
    }

    /// The enum value for a stored name.
    pub fn parse(name: &str) -> Result<Self, ApiError> {
        match name {
            "workflow" => Ok(Self::Workflow),
            "execution" => Ok(Self::Execution),
            "secret" => Ok(Self::Secret),
            "mcp_server" => Ok(Self::McpServer),
            "api_key" => Ok(Self::ApiKey),
            other => Err(ApiError::internal(format!(
                "unknown aggregate type {other:?} in the read model"
            ))),
        }
    }
}
