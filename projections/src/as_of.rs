//! Entities as of any moment: folded from the log up to a position, a time
//! or one of their own versions, by the domain's own `apply` (the code that
//! handles commands), and shown as the read models show them today.
//!
//! - **Position**: the events at or before a position of the log, in the
//!   commit-safe order positions follow (what a mutation returned, what
//!   the audit log shows).
//! - **Time**: the events recorded at or before an instant (the commit's
//!   clock when the event was stored).
//! - **Version**: the entity's first `version` events (its own sequence).
//!
//! Before its first event an entity does not exist (`None`), and another
//! tenant's entity never exists for the caller, at any point.

use chrono::{DateTime, Utc};
use serde_json::Value;
use toolhub_domain::execution::Execution;
use toolhub_domain::mcp_server::McpServer;
use toolhub_domain::secret::Secret;
use toolhub_domain::workflow::Workflow;
use toolhub_domain::{AggregateRoot, TenantId};
pub use toolhub_eventstore::history::Folded;
use toolhub_eventstore::{EventStore, Position, RecordedEvent, StoreError, Until};

use crate::projection::{
    fold_execution, ExecutionStepView, ExecutionView, McpServerView, SecretView, WorkflowView,
};

/// A point in an entity's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AsOf {
    /// The events at or before this position of the log.
    Position(Position),
    /// The events recorded at or before this instant.
    Time(DateTime<Utc>),
    /// The entity's first `n` events.
    Version(u64),
}

impl AsOf {
    /// Whether `event`, of the entity's stream, is at or before this point.
    pub fn includes(self, event: &RecordedEvent) -> bool {
        match self {
            Self::Position(position) => event.position <= position,
            Self::Time(time) => event.recorded_at <= time,
            Self::Version(version) => event.sequence <= version,
        }
    }

    /// The same point, as the event store bounds a stream.
    fn until(self) -> Until {
        match self {
            Self::Position(position) => Until::Position(position),
            Self::Time(time) => Until::Time(time),
            Self::Version(version) => Until::Sequence(version),
        }
    }
}

/// Folds the aggregate `id` of type `A` up to `as_of`, for `tenant`: `None`
/// when it did not exist then, or is another tenant's.
pub async fn fold<A>(
    store: &EventStore,
    tenant: &TenantId,
    id: &str,
    as_of: AsOf,
) -> Result<Option<Folded<A>>, StoreError>
where
    A: AggregateRoot,
{
    fold_for(store, Some(tenant), id, as_of).await
}

/// [`fold`] for an operator's tool, which sees every tenant: `None` only
/// when the aggregate did not exist then.
pub async fn fold_any_tenant<A>(
    store: &EventStore,
    id: &str,
    as_of: AsOf,
) -> Result<Option<Folded<A>>, StoreError>
where
    A: AggregateRoot,
{
    fold_for(store, None, id, as_of).await
}

/// Folds from the checkpoint before the point (kept every
/// `snapshot_every` events by the command bus), so the cost is a few
/// indexed reads and at most one checkpoint interval of events, at any
/// depth of the history ([`EventStore::fold_until`]).
async fn fold_for<A>(
    store: &EventStore,
    tenant: Option<&TenantId>,
    id: &str,
    as_of: AsOf,
) -> Result<Option<Folded<A>>, StoreError>
where
    A: AggregateRoot,
{
    let Some(folded) = store.fold_until::<A>(id, as_of.until()).await? else {
        return Ok(None);
    };
    match folded.state.tenant() {
        None => Ok(None),
        Some(owner) if tenant.is_some_and(|tenant| tenant != owner) => Ok(None),
        Some(_) => Ok(Some(folded)),
    }
}

/// An MCP server as of a point, shown as the `mcp_servers` read model shows
/// it (with when its last health check up to then was recorded).
pub async fn mcp_server(
    store: &EventStore,
    tenant: Option<&TenantId>,
    id: &str,
    as_of: AsOf,
) -> Result<Option<McpServerView>, StoreError> {
    let Some(folded) = fold_for::<McpServer>(store, tenant, id, as_of).await? else {
        return Ok(None);
    };
    let checked_at = store
        .last_recorded(
            type_name::<McpServer>(),
            id,
            "McpServerHealthChecked",
            folded.version(),
        )
        .await?;
    mcp_server_view(id, &folded, checked_at).map(Some)
}

/// An execution as of a point.
#[derive(Debug, Clone)]
pub struct ExecutionAsOf {
    /// The execution as the `executions` read model showed it then.
    pub view: ExecutionView,
    /// Its steps as the read model showed them then, in its order.
    pub steps: Vec<ExecutionStepView>,
    /// The domain's state of it then: what the engine plans from.
    pub state: Execution,
    /// Its events up to then, in order.
    pub events: Vec<RecordedEvent>,
}

/// An execution as of a point, for `tenant` (`None`: an operator's tool,
/// every tenant): its events up to then folded both by the domain's own
/// `apply` (the state the engine plans from) and by the `executions` read
/// model's own fold (the row and the steps, as `execution(id)` shows
/// them). A run's history is short and its steps need every event, so it
/// is folded from its first event. `None` when it did not exist then, or
/// is another tenant's.
pub async fn execution(
    store: &EventStore,
    tenant: Option<&TenantId>,
    id: &str,
    as_of: AsOf,
) -> Result<Option<ExecutionAsOf>, StoreError> {
    use cqrs_es::Aggregate;
    let mut events = store.stream(type_name::<Execution>(), id).await?;
    events.retain(|event| as_of.includes(event));
    let mut state = Execution::default();
    for event in &events {
        state.apply(serde_json::from_value(event.payload.clone())?);
    }
    match state.tenant() {
        None => return Ok(None),
        Some(owner) if tenant.is_some_and(|tenant| tenant != owner) => return Ok(None),
        Some(_) => {}
    }
    let Some((view, steps)) = fold_execution(&events)? else {
        return Ok(None);
    };
    Ok(Some(ExecutionAsOf {
        view,
        steps,
        state,
        events,
    }))
}

/// A workflow as the `workflows` read model shows it, from its folded
/// state: the same fields, the same redaction.
pub fn workflow_view(id: &str, folded: &Folded<Workflow>) -> Result<WorkflowView, StoreError> {
    let state = &folded.state;
    let mut definition = match state.current_definition() {
        Some(definition) => serde_json::to_value(definition)?,
        None => Value::Null,
    };
    crate::redact::redact_definition(&mut definition);
    Ok(WorkflowView {
        id: id.to_string(),
        tenant: tenant_of(state),
        aggregate_version: folded.version(),
        name: state.name().to_string(),
        description: state.description().to_string(),
        definition,
        version: state.current_version(),
        archived: state.is_archived(),
        triggers: serde_json::to_value(state.triggers())?,
        created_by: folded.first.metadata.actor.clone(),
        created_at: folded.first.recorded_at,
        updated_by: folded.last.metadata.actor.clone(),
        updated_at: folded.last.recorded_at,
    })
}

/// A secret's metadata as the `secrets` read model shows it.
pub fn secret_view(id: &str, folded: &Folded<Secret>) -> SecretView {
    let state = &folded.state;
    SecretView {
        id: id.to_string(),
        tenant: tenant_of(state),
        aggregate_version: folded.version(),
        name: state.name().to_string(),
        description: state.description().to_string(),
        rotation_count: state.rotation(),
        deleted: state.is_deleted(),
        created_by: folded.first.metadata.actor.clone(),
        created_at: folded.first.recorded_at,
        updated_at: folded.last.recorded_at,
    }
}

/// An MCP server as the `mcp_servers` read model shows it, given when its
/// last health check was recorded.
pub fn mcp_server_view(
    id: &str,
    folded: &Folded<McpServer>,
    checked_at: Option<DateTime<Utc>>,
) -> Result<McpServerView, StoreError> {
    let state = &folded.state;
    let mut transport = match state.transport() {
        Some(transport) => serde_json::to_value(transport)?,
        None => Value::Null,
    };
    crate::redact::redact_transport(&mut transport);
    let health = state.health();
    Ok(McpServerView {
        id: id.to_string(),
        tenant: tenant_of(state),
        aggregate_version: folded.version(),
        name: state.name().to_string(),
        transport,
        enabled: state.is_enabled(),
        deregistered: state.is_deregistered(),
        healthy: health.map(|h| h.healthy),
        latency_ms: health.map(|h| h.latency_ms),
        health_detail: health.and_then(|h| h.detail.clone()),
        checked_at,
        created_at: folded.first.recorded_at,
        updated_at: folded.last.recorded_at,
    })
}

/// The stored aggregate type of `A`.
fn type_name<A: AggregateRoot>() -> &'static str {
    A::TYPE
}

fn tenant_of<A: AggregateRoot>(state: &A) -> String {
    state.tenant().map(ToString::to_string).unwrap_or_default()
}

/// What changed in a workflow's definition between two of its definition
/// versions.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkflowDiff {
    /// An RFC 6902 JSON Patch that turns version `from` into `to` (both as
    /// shown: literal credentials redacted).
    pub patch: Value,
    /// Ids of the nodes in `to` and not in `from`.
    pub added_nodes: Vec<String>,
    /// Ids of the nodes in `from` and not in `to`.
    pub removed_nodes: Vec<String>,
    /// Ids of the nodes in both whose JSON differs.
    pub changed_nodes: Vec<String>,
    /// Edges in `to` and not in `from`.
    pub added_edges: Vec<Value>,
    /// Edges in `from` and not in `to`.
    pub removed_edges: Vec<Value>,
}

/// The difference between definition versions `from` and `to` of a
/// workflow; `None` when either version does not exist.
pub fn workflow_diff(
    workflow: &Workflow,
    from: u64,
    to: u64,
) -> Result<Option<WorkflowDiff>, StoreError> {
    let shown = |version: u64| -> Result<Option<Value>, StoreError> {
        let Some(definition) = workflow.definition(version) else {
            return Ok(None);
        };
        let mut value = serde_json::to_value(definition)?;
        crate::redact::redact_definition(&mut value);
        Ok(Some(value))
    };
    let (Some(before), Some(after)) = (shown(from)?, shown(to)?) else {
        return Ok(None);
    };
    let patch = serde_json::to_value(json_patch::diff(&before, &after))?;
    let nodes = |definition: &Value| -> std::collections::BTreeMap<String, Value> {
        definition["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|n| Some((n["id"].as_str()?.to_string(), n.clone())))
            .collect()
    };
    let edges = |definition: &Value| -> Vec<Value> {
        definition["edges"].as_array().cloned().unwrap_or_default()
    };
    let (old_nodes, new_nodes) = (nodes(&before), nodes(&after));
    let (old_edges, new_edges) = (edges(&before), edges(&after));
    Ok(Some(WorkflowDiff {
        patch,
        added_nodes: new_nodes
            .keys()
            .filter(|id| !old_nodes.contains_key(*id))
            .cloned()
            .collect(),
        removed_nodes: old_nodes
            .keys()
            .filter(|id| !new_nodes.contains_key(*id))
            .cloned()
            .collect(),
        changed_nodes: new_nodes
            .iter()
            .filter(|(id, node)| old_nodes.get(*id).is_some_and(|old| old != *node))
            .map(|(id, _)| id.clone())
            .collect(),
        added_edges: new_edges
            .iter()
            .filter(|e| !old_edges.contains(e))
            .cloned()
            .collect(),
        removed_edges: old_edges
            .iter()
            .filter(|e| !new_edges.contains(e))
            .cloned()
            .collect(),
    }))
}
