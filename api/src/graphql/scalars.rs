//! Scalars and small shared types.
//!
//! - `ID`: entity ids (UUIDs).
//! - `JSON`: free-form values such as workflow definitions
//!   ([`async_graphql::Json`]).
//! - `DateTime`: RFC 3339 timestamps (chrono's `DateTime<Utc>`).
//! - Positions in the log are opaque `String`s: both halves outgrow 2^53 and
//!   must never pass through a JSON number.

use async_graphql::{Enum, InputObject};
use chrono::{DateTime, Utc};

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

/// A point in an entity's history: exactly one of a position of the log, an
/// instant, or the entity's own version. The entity is shown as its events
/// up to that point make it.
#[derive(InputObject, Clone, Debug)]
pub struct AsOf {
    /// The events at or before this position (as mutations and the audit
    /// log return them).
    pub position: Option<String>,
    /// The events recorded at or before this instant.
    pub time: Option<DateTime<Utc>>,
    /// The entity's first `version` events (its `version` field then).
    pub version: Option<i32>,
}

impl AsOf {
    /// The point this input names; `VALIDATION` unless exactly one field is
    /// given, and valid.
    pub fn moment(&self) -> Result<crate::read::Moment, ApiError> {
        use crate::read::Moment;
        match (&self.position, self.time, self.version) {
            (Some(position), None, None) => position.parse().map(Moment::Position).map_err(|_| {
                ApiError::validation("asOf.position", "not a position returned by this API")
            }),
            (None, Some(time), None) => Ok(Moment::Time(time)),
            (None, None, Some(version)) if version >= 1 => Ok(Moment::Version(version as u64)),
            (None, None, Some(_)) => {
                Err(ApiError::validation("asOf.version", "must be at least 1"))
            }
            _ => Err(ApiError::validation(
                "asOf",
                "give exactly one of position, time or version",
            )),
        }
    }
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
