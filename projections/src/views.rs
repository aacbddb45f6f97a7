//! What the read queries return: rows of the read models, as the API shows
//! them, each made from its table's row type (so a column is mapped once).
//! Secret values never appear here, sealed or not.

use chrono::{DateTime, Utc};
use serde_json::Value;
use toolhub_eventstore::Position;

use crate::projection::{
    AuditRow, ExecutionRow, McpServerRow, SecretRow, StepRow, ToolRow, VersionRow, WorkflowRow,
};

/// A stored count or version as the unsigned number it is.
fn unsigned(v: i64) -> u64 {
    v.max(0) as u64
}

/// A stored attempt or rotation count as the `u32` the domain uses.
fn small(v: i64) -> u32 {
    u32::try_from(v.max(0)).unwrap_or(u32::MAX)
}

impl From<WorkflowRow> for WorkflowView {
    fn from(r: WorkflowRow) -> Self {
        Self {
            id: r.id,
            tenant: r.tenant,
            name: r.name,
            description: r.description,
            definition: r.definition,
            version: unsigned(r.version),
            aggregate_version: unsigned(r.seq),
            archived: r.archived,
            triggers: r.triggers,
            created_by: r.created_by,
            created_at: r.created_at,
            updated_by: r.updated_by,
            updated_at: r.updated_at,
        }
    }
}

impl From<VersionRow> for WorkflowVersionView {
    fn from(r: VersionRow) -> Self {
        Self {
            workflow_id: r.workflow_id,
            version: unsigned(r.version),
            definition: r.definition,
            comment: r.comment,
            reverted_from: r.reverted_from.map(unsigned),
            actor: r.actor,
            recorded_at: r.recorded_at,
        }
    }
}

impl From<ExecutionRow> for ExecutionView {
    fn from(r: ExecutionRow) -> Self {
        Self {
            id: r.id,
            tenant: r.tenant,
            workflow_id: r.workflow_id,
            workflow_version: unsigned(r.workflow_version),
            status: r.status,
            trigger: r.trigger,
            input: r.input,
            output: r.output,
            error: r.error,
            aggregate_version: unsigned(r.seq),
            started_by: r.started_by,
            started_at: r.started_at,
            finished_at: r.finished_at,
            updated_at: r.updated_at,
        }
    }
}

impl From<StepRow> for ExecutionStepView {
    fn from(r: StepRow) -> Self {
        Self {
            execution_id: r.execution_id,
            node_id: r.node_id,
            attempt: small(r.attempt),
            status: r.status,
            input: r.input,
            output: r.output,
            error: r.error,
            scheduled_at: r.scheduled_at,
            started_at: r.started_at,
            finished_at: r.finished_at,
        }
    }
}

impl From<SecretRow> for SecretView {
    fn from(r: SecretRow) -> Self {
        Self {
            id: r.id,
            tenant: r.tenant,
            name: r.name,
            description: r.description,
            rotation_count: small(r.rotation_count),
            aggregate_version: unsigned(r.seq),
            created_by: r.created_by,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

impl From<McpServerRow> for McpServerView {
    fn from(r: McpServerRow) -> Self {
        Self {
            id: r.id,
            tenant: r.tenant,
            name: r.name,
            transport: r.transport,
            enabled: r.enabled,
            healthy: r.healthy,
            latency_ms: r.latency_ms.map(unsigned),
            health_detail: r.health_detail,
            checked_at: r.checked_at,
            aggregate_version: unsigned(r.seq),
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

impl From<ToolRow> for McpToolView {
    fn from(r: ToolRow) -> Self {
        Self {
            server_id: r.server_id,
            name: r.name,
            description: r.description,
            input_schema: r.input_schema,
        }
    }
}

impl From<AuditRow> for AuditEntryView {
    fn from(r: AuditRow) -> Self {
        Self {
            position: Position::new(unsigned(r.transaction_id), r.global_position),
            tenant: r.tenant,
            aggregate_type: r.aggregate_type,
            aggregate_id: r.aggregate_id,
            sequence: unsigned(r.sequence),
            event_type: r.event_type,
            event_version: r.event_version,
            actor: r.actor,
            correlation_id: r.correlation_id,
            causation_id: r.causation_id,
            request_id: r.request_id,
            recorded_at: r.recorded_at,
            payload: r.payload,
        }
    }
}

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
pub struct AuditEntryView {
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
