//! What the read queries return: rows of the read models, as the API shows
//! them. Secret values never appear here, sealed or not.

use chrono::{DateTime, Utc};
use serde_json::Value;
use toolhub_eventstore::Position;

/// A workflow as it stands now.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkflowView {
    /// The workflow's id (a UUID).
    pub id: String,
    /// The owning tenant.
    pub tenant: String,
    /// The display name.
    pub name: String,
    /// The description.
    pub description: String,
    /// The current definition (the JSON shape users send).
    pub definition: Value,
    /// The current definition version, from 1.
    pub version: u64,
    /// The aggregate's version: the sequence of its latest event. This is
    /// what `expectedVersion` is compared with.
    pub aggregate_version: u64,
    /// Whether the workflow is archived.
    pub archived: bool,
    /// The triggers (cron schedules, webhooks), as JSON.
    pub triggers: Value,
    /// Who created it.
    pub created_by: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// Who changed it last.
    pub updated_by: String,
    /// When it was changed last.
    pub updated_at: DateTime<Utc>,
}

/// One version of a workflow's definition.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkflowVersionView {
    /// The workflow's id.
    pub workflow_id: String,
    /// The definition version, from 1.
    pub version: u64,
    /// The full definition of this version.
    pub definition: Value,
    /// The comment given with the change, if any.
    pub comment: Option<String>,
    /// For a revert, the version it copied.
    pub reverted_from: Option<u64>,
    /// Who made this version.
    pub actor: String,
    /// When.
    pub recorded_at: DateTime<Utc>,
}

/// An execution as it stands now.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecutionView {
    /// The execution's id.
    pub id: String,
    /// The owning tenant.
    pub tenant: String,
    /// The workflow it runs.
    pub workflow_id: String,
    /// The workflow version it is pinned to.
    pub workflow_version: u64,
    /// `running`, `paused`, `stopping`, `cancelled`, `completed` or `failed`.
    pub status: String,
    /// `manual`, `cron` or `webhook`.
    pub trigger: String,
    /// The input it was started with.
    pub input: Value,
    /// The output, once completed.
    pub output: Option<Value>,
    /// The error, once failed or cancelled.
    pub error: Option<String>,
    /// The aggregate's version.
    pub aggregate_version: u64,
    /// Who started it.
    pub started_by: String,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// When it reached a terminal status.
    pub finished_at: Option<DateTime<Utc>>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

/// One attempt of one node of an execution.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecutionStepView {
    /// The execution's id.
    pub execution_id: String,
    /// The node's id in the definition.
    pub node_id: String,
    /// The attempt, from 1.
    pub attempt: u32,
    /// `scheduled`, `running`, `succeeded` or `failed`.
    pub status: String,
    /// The node's input (secret values masked by the engine).
    pub input: Value,
    /// The node's output, once succeeded.
    pub output: Option<Value>,
    /// The error, once failed.
    pub error: Option<String>,
    /// When it was scheduled.
    pub scheduled_at: DateTime<Utc>,
    /// When it started.
    pub started_at: Option<DateTime<Utc>>,
    /// When it finished.
    pub finished_at: Option<DateTime<Utc>>,
}

/// A secret's metadata. There is no value field, on purpose.
#[derive(Debug, Clone, PartialEq)]
pub struct SecretView {
    /// The secret's id.
    pub id: String,
    /// The owning tenant.
    pub tenant: String,
    /// The name used in `{{secrets.NAME}}`.
    pub name: String,
    /// The description.
    pub description: String,
    /// How many times the value was rotated.
    pub rotation_count: u32,
    /// The aggregate's version.
    pub aggregate_version: u64,
    /// Who created it.
    pub created_by: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

/// An MCP server's configuration and health.
#[derive(Debug, Clone, PartialEq)]
pub struct McpServerView {
    /// The server's id.
    pub id: String,
    /// The owning tenant.
    pub tenant: String,
    /// The name workflows refer to it by.
    pub name: String,
    /// The transport (`{"kind": "stdio", …}` or `{"kind":
    /// "streamable_http", …}`), with literal environment and header values
    /// redacted (values that reference secrets are kept).
    pub transport: Value,
    /// Whether the engine may call it.
    pub enabled: bool,
    /// The latest health check: healthy or not.
    pub healthy: Option<bool>,
    /// The latest health check's latency.
    pub latency_ms: Option<u64>,
    /// The latest health check's detail.
    pub health_detail: Option<String>,
    /// When it was last checked.
    pub checked_at: Option<DateTime<Utc>>,
    /// The aggregate's version.
    pub aggregate_version: u64,
    /// When it was registered.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

/// A tool an MCP server advertises.
#[derive(Debug, Clone, PartialEq)]
pub struct McpToolView {
    /// The server's id.
    pub server_id: String,
    /// The tool's name.
    pub name: String,
    /// Its description.
    pub description: Option<String>,
    /// Its input JSON schema.
    pub input_schema: Value,
}

/// One event, as auditors see it.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEntry {
    /// The event's position in the global log.
    pub position: Position,
    /// The owning tenant.
    pub tenant: String,
    /// `workflow`, `execution`, `secret` or `mcp_server`.
    pub aggregate_type: String,
    /// The aggregate's id.
    pub aggregate_id: String,
    /// The event's sequence in its aggregate.
    pub sequence: u64,
    /// The event type.
    pub event_type: String,
    /// The event version.
    pub event_version: String,
    /// Who caused it.
    pub actor: String,
    /// The correlation id.
    pub correlation_id: String,
    /// The causation id (empty when none).
    pub causation_id: String,
    /// The request id.
    pub request_id: String,
    /// When it was recorded.
    pub recorded_at: DateTime<Utc>,
    /// The payload with sealed values and secret-bearing fields redacted.
    pub payload: Value,
}

/// A page of a keyset-paginated list.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    /// The items, at most the requested number.
    pub items: Vec<(Cursor, T)>,
    /// Whether more items follow the last one.
    pub has_next_page: bool,
}

/// An opaque cursor: pass it back as `after` to continue after its item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor(pub String);

/// The largest page the queries return.
pub const MAX_PAGE: u32 = 100;

/// Which page to read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PageRequest {
    /// How many items (capped at [`MAX_PAGE`]; 0 means the default, 20).
    pub first: u32,
    /// Continue after this cursor.
    pub after: Option<Cursor>,
}

/// Filters for the workflow list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkflowFilter {
    /// Case-insensitive substring of the name.
    pub name_contains: Option<String>,
    /// Only archived (true) or only active (false) workflows.
    pub archived: Option<bool>,
}

/// Filters for the execution list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecutionFilter {
    /// Only executions of this workflow.
    pub workflow_id: Option<String>,
    /// Only executions with this status.
    pub status: Option<String>,
}

/// Filters for the audit log.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AuditFilter {
    /// Only this aggregate type.
    pub aggregate_type: Option<String>,
    /// Only this aggregate.
    pub aggregate_id: Option<String>,
    /// Only events caused by this actor.
    pub actor: Option<String>,
    /// Only events recorded at or after this time.
    pub from: Option<DateTime<Utc>>,
    /// Only events recorded before this time.
    pub to: Option<DateTime<Utc>>,
}
