//! The audit log and per-entity history (admins only). The entries are the
//! same type the `events` subscription yields.

use std::sync::Arc;

use async_graphql::connection::{Connection, EmptyFields};
use async_graphql::{Context, InputObject, Object, ID};
use chrono::{DateTime, Utc};
use toolhub_domain::Role;
use toolhub_eventstore::Position;

use super::scalars::{AggregateType, Json};
use super::{caller, connection, page_request, parse_position, state, wait_for, Consistency};
use crate::error::ApiError;
use crate::read::{AuditEntryView, AuditFilter, Documents};

/// One event of the log, as auditors see it: who, what, when, and the
/// payload with every secret-bearing field redacted.
pub struct AuditEntry {
    /// The entry.
    entry: Arc<AuditEntryView>,
    /// Whether `entry` holds the payload: a list whose query does not
    /// select it reads the entries without.
    documents: Documents,
}

impl From<Arc<AuditEntryView>> for AuditEntry {
    fn from(entry: Arc<AuditEntryView>) -> Self {
        Self {
            entry,
            documents: Documents::Included,
        }
    }
}

/// Whether a list of audit entries must read their payloads.
fn audit_documents(node: async_graphql::Lookahead<'_>) -> Documents {
    if node.field("payload").exists() {
        Documents::Included
    } else {
        Documents::Skipped
    }
}

#[Object]
impl AuditEntry {
    /// The event's position in the log; resume a subscription after it.
    async fn position(&self) -> String {
        self.entry.position.to_string()
    }
    /// The kind of entity.
    async fn aggregate_type(&self) -> async_graphql::Result<AggregateType> {
        Ok(AggregateType::parse(&self.entry.aggregate_type)?)
    }
    /// The entity's id.
    async fn aggregate_id(&self) -> ID {
        ID(self.entry.aggregate_id.clone())
    }
    /// The event's sequence within its entity, from 1.
    async fn sequence(&self) -> u64 {
        self.entry.sequence
    }
    /// The event type, such as `WorkflowCreated`.
    async fn event_type(&self) -> &str {
        &self.entry.event_type
    }
    /// The event version.
    async fn event_version(&self) -> &str {
        &self.entry.event_version
    }
    /// Who caused it (the token's `sub`).
    async fn actor(&self) -> &str {
        &self.entry.actor
    }
    /// Groups the events of one user action.
    async fn correlation_id(&self) -> &str {
        &self.entry.correlation_id
    }
    /// The HTTP request that carried the command.
    async fn request_id(&self) -> &str {
        &self.entry.request_id
    }
    /// When it was recorded.
    async fn recorded_at(&self) -> DateTime<Utc> {
        self.entry.recorded_at
    }
    /// The payload, redacted.
    async fn payload(&self) -> async_graphql::Result<Json> {
        super::read_documents(self.documents)?;
        Ok(async_graphql::Json(self.entry.payload.clone()))
    }
}

/// Filters for `auditLog` and `events`.
#[derive(InputObject, Default, Clone)]
pub struct AuditFilterInput {
    /// Only this kind of entity.
    pub aggregate_type: Option<AggregateType>,
    /// Only this entity.
    pub aggregate_id: Option<ID>,
    /// Only events caused by this actor.
    pub actor: Option<String>,
    /// Only events recorded at or after this time.
    pub from: Option<DateTime<Utc>>,
    /// Only events recorded before this time.
    pub to: Option<DateTime<Utc>>,
}

impl From<AuditFilterInput> for AuditFilter {
    fn from(f: AuditFilterInput) -> Self {
        Self {
            aggregate_type: f.aggregate_type.map(|t| t.as_str().to_string()),
            aggregate_id: f.aggregate_id.map(|id| id.0),
            actor: f.actor,
            from: f.from,
            to: f.to,
        }
    }
}

/// Audit queries.
#[derive(Default)]
pub struct AuditQuery;

#[Object]
impl AuditQuery {
    /// The tenant's log, oldest first.
    #[graphql(
        complexity = "crate::graphql::page_cost(first, crate::read::MAX_PAGE, child_complexity)"
    )]
    async fn audit_log(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
        filter: Option<AuditFilterInput>,
        consistency: Option<Consistency>,
    ) -> async_graphql::Result<Connection<String, AuditEntry, EmptyFields, EmptyFields>> {
        let caller = caller(ctx, Role::Admin)?;
        let state = state(ctx)?;
        wait_for(state, consistency).await?;
        let had_cursor = after.is_some();
        let page = page_request(first, after)?;
        let filter: AuditFilter = filter.unwrap_or_default().into();
        let documents = super::listed_documents(ctx, audit_documents);
        let page = state
            .read
            .audit_log(&caller.tenant, &page, &filter, documents)
            .await
            .map_err(ApiError::from)?;
        Ok(connection(page, had_cursor, |v| AuditEntry {
            entry: Arc::new(v),
            documents,
        }))
    }

    /// The events of one entity, in order, at most `first` (default 20,
    /// at most 100) after the position `after`: pass the last entry's
    /// `position` to read the next page. Another tenant's entity is
    /// `NOT_FOUND`.
    #[graphql(
        complexity = "crate::graphql::page_cost(first, crate::read::MAX_PAGE, child_complexity)"
    )]
    async fn history(
        &self,
        ctx: &Context<'_>,
        aggregate_type: AggregateType,
        aggregate_id: ID,
        first: Option<i32>,
        after: Option<String>,
        consistency: Option<Consistency>,
    ) -> async_graphql::Result<Vec<AuditEntry>> {
        let caller = caller(ctx, Role::Admin)?;
        let state = state(ctx)?;
        wait_for(state, consistency).await?;
        let limit = page_request(first, None)?.first;
        let from = match &after {
            Some(text) => parse_position(text, "after")?,
            None => Position::ZERO,
        };
        let filter = AuditFilter {
            aggregate_type: Some(aggregate_type.as_str().to_string()),
            aggregate_id: Some(aggregate_id.0),
            ..AuditFilter::default()
        };
        // One entity's events are in position order what they are in
        // sequence order: each commits after the one before it.
        let entries = state
            .read
            .audit_after(&caller.tenant, from, &filter, limit)
            .await
            .map_err(ApiError::from)?;
        if entries.is_empty() && after.is_none() {
            return Err(ApiError::NotFound.into());
        }
        Ok(entries
            .into_iter()
            .map(|v| AuditEntry::from(Arc::new(v)))
            .collect())
    }
}
