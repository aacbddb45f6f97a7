//! What the read queries return: rows of the read models, as the API shows
//! them, each made from its table's row type (so a column is mapped once).
//! Secret values never appear here, sealed or not.

use chrono::{DateTime, Utc};
use serde_json::Value;
use toolhub_eventstore::Position;

use crate::projection::AuditRow;
pub use crate::projection::{
    ExecutionStepView, ExecutionView, McpServerView, McpToolView, SecretView, WebhookView,
    WorkflowVersionView, WorkflowView,
};

/// Whether a read returns the large JSON documents of its rows: a
/// workflow's definition and triggers, an execution's and a step's input
/// and output, an audit entry's payload. A list whose query selects none of
/// them reads `Skipped`: those columns are neither read nor decoded, and the
/// fields stay `null`/`None` in the view, which the API then never shows as
/// they are (it reads them when asked, see `toolhub_api::graphql`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Documents {
    /// Every column.
    #[default]
    Included,
    /// Every column but the documents.
    Skipped,
}

/// A stored count or version as the unsigned number it is.
fn unsigned(v: i64) -> u64 {
    v.max(0) as u64
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

/// One audit entry as `toolhub-replay export` writes it: the text columns
/// borrowed from the row as it arrives, and the payload as the JSON text the
/// database holds (redacted when it was stored), never decoded.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AuditExportEntry<'r> {
    /// The event's position in the global log.
    pub position: Position,
    /// The owning tenant.
    pub tenant: &'r str,
    /// `workflow`, `execution`, `secret` or `mcp_server`.
    pub aggregate_type: &'r str,
    /// The aggregate's id.
    pub aggregate_id: &'r str,
    /// The event's sequence in its aggregate.
    pub sequence: u64,
    /// The event type.
    pub event_type: &'r str,
    /// The event version.
    pub event_version: &'r str,
    /// Who caused it.
    pub actor: &'r str,
    /// The correlation id.
    pub correlation_id: &'r str,
    /// The causation id (empty when none).
    pub causation_id: &'r str,
    /// The request id.
    pub request_id: &'r str,
    /// When it was recorded.
    pub recorded_at: DateTime<Utc>,
    /// The redacted payload, as JSON text: PostgreSQL's spelling of the
    /// `jsonb` value (spaces after `:` and `,`, its own key order), or the
    /// text SQLite stores.
    pub payload: &'r str,
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
    /// Only forks of this execution.
    pub forked_from: Option<String>,
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
