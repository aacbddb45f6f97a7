//! The `workflows` read model: workflows as they stand (`rm_workflows`),
//! every version of their definitions (`rm_workflow_versions`), and their
//! webhooks (`rm_webhooks`, never a secret; the time of the last delivery
//! comes from the `ExecutionStarted` events a webhook caused).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;
use toolhub_domain::execution::ExecutionEvent;
use toolhub_domain::workflow::WorkflowEvent;
use toolhub_eventstore::sql::{insert_rows, Arg, Conn};
use toolhub_eventstore::{RecordedEvent, StoreError};

use super::fold::{decode, entity, fold, of_type, table_row};
use super::{Projection, Tables};

table_row! {
    /// A workflow as it stands now: a row of `rm_workflows`.
    pub struct WorkflowView {
        /// The workflow's id (a UUID).
        id: String = text,
        /// The owning tenant.
        tenant: String = text,
        /// The aggregate's version: the sequence of its latest event. This is
        /// what `expectedVersion` is compared with.
        aggregate_version: u64 = uint as "seq",
        /// The display name.
        name: String = text,
        /// The description.
        description: String = text,
        /// The current definition (the JSON shape users send).
        definition: Value = json [document],
        /// The current definition version, from 1.
        version: u64 = uint,
        /// Whether the workflow is archived.
        archived: bool = bool,
        /// The triggers (cron schedules, webhooks), as JSON.
        triggers: Value = json [document],
        /// Who created it.
        created_by: String = text,
        /// When it was created.
        created_at: DateTime<Utc> = time,
        /// Who changed it last.
        updated_by: String = text,
        /// When it was changed last.
        updated_at: DateTime<Utc> = time,
    }
}
entity!(WorkflowView, aggregate_version);

table_row! {
    /// One version of a workflow's definition: a row of
    /// `rm_workflow_versions`.
    pub struct WorkflowVersionView {
        /// The workflow's id.
        workflow_id: String = text,
        /// The definition version, from 1.
        version: u64 = uint,
        /// The owning tenant.
        tenant: String = text,
        /// The full definition of this version.
        definition: Value = json [document],
        /// The comment given with the change, if any.
        comment: Option<String> = opt_text,
        /// For a revert, the version it copied.
        reverted_from: Option<u64> = opt_uint,
        /// Who made this version.
        actor: String = text,
        /// When.
        recorded_at: DateTime<Utc> = time,
    }
}

table_row! {
    /// A webhook of a workflow: a row of `rm_webhooks`. Holds no secret.
    pub struct WebhookView {
        /// The webhook's id: the last segment of its URL.
        id: String = text,
        /// The owning tenant.
        tenant: String = text,
        /// The workflow it starts.
        workflow_id: String = text,
        /// What it is for.
        description: String = text,
        /// Who created it.
        created_by: String = text,
        /// When.
        created_at: DateTime<Utc> = time,
        /// When its secret was last rotated.
        secret_rotated_at: Option<DateTime<Utc>> = opt_time,
        /// When a delivery last started an execution.
        last_delivery_at: Option<DateTime<Utc>> = opt_time,
    }
}

/// Workflows as they stand, every version of their definitions, and their
/// webhooks.
pub struct WorkflowsProjection;

#[async_trait]
impl Projection for WorkflowsProjection {
    fn name(&self) -> &'static str {
        "workflows"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["rm_workflows", "rm_workflow_versions", "rm_webhooks"]
    }

    async fn apply(
        &self,
        conn: &mut Conn<'_>,
        tables: &Tables,
        events: &[RecordedEvent],
    ) -> Result<(), StoreError> {
        apply_webhooks(conn, tables, events).await?;
        let events = of_type(events, "workflow");
        if events.is_empty() {
            return Ok(());
        }
        let mut versions: Vec<Vec<Arg>> = Vec::new();
        fold(
            conn,
            &tables.name("rm_workflows"),
            &events,
            |event, payload: WorkflowEvent, row: Option<&mut WorkflowView>| {
                let actor = &event.metadata.actor;
                let at = event.recorded_at;
                let mut version_of = |row: &WorkflowView, comment, from: Option<u64>| {
                    versions.push(
                        WorkflowVersionView {
                            workflow_id: row.id.clone(),
                            version: row.version,
                            tenant: row.tenant.clone(),
                            definition: row.definition.clone(),
                            comment,
                            reverted_from: from,
                            actor: actor.clone(),
                            recorded_at: at,
                        }
                        .into_args(),
                    );
                };
                let row = match (payload, row) {
                    (
                        WorkflowEvent::WorkflowCreated {
                            tenant,
                            name,
                            description,
                            definition,
                        },
                        _,
                    ) => {
                        let row = WorkflowView {
                            id: event.aggregate_id.clone(),
                            tenant: tenant.to_string(),
                            aggregate_version: 0,
                            name,
                            description,
                            definition: shown_definition(&definition)?,
                            version: 1,
                            archived: false,
                            triggers: Value::Array(vec![]),
                            created_by: actor.clone(),
                            created_at: at,
                            updated_by: actor.clone(),
                            updated_at: at,
                        };
                        version_of(&row, None, None);
                        return Ok(Some(row));
                    }
                    (_, None) => return Ok(None),
                    (payload, Some(row)) => {
                        match payload {
                            WorkflowEvent::WorkflowCreated { .. } => {}
                            WorkflowEvent::WorkflowDefinitionUpdated {
                                version,
                                definition,
                                comment,
                            } => {
                                row.version = version;
                                row.definition = shown_definition(&definition)?;
                                version_of(row, comment, None);
                            }
                            WorkflowEvent::WorkflowReverted {
                                version,
                                from_version,
                                definition,
                                comment,
                            } => {
                                row.version = version;
                                row.definition = shown_definition(&definition)?;
                                version_of(row, comment, Some(from_version));
                            }
                            WorkflowEvent::WorkflowRenamed { name } => row.name = name,
                            WorkflowEvent::WorkflowTriggersSet { triggers } => {
                                row.triggers = serde_json::to_value(&triggers)?;
                            }
                            WorkflowEvent::WorkflowArchived => row.archived = true,
                            WorkflowEvent::WorkflowRestored => row.archived = false,
                            // Their rows are written by `apply_webhooks`.
                            WorkflowEvent::WebhookCreated { .. }
                            | WorkflowEvent::WebhookSecretRotated { .. }
                            | WorkflowEvent::WebhookDeleted { .. } => {}
                        }
                        row
                    }
                };
                row.updated_by = actor.clone();
                row.updated_at = at;
                Ok(None)
            },
        )
        .await?;
        insert_rows(
            conn,
            &tables.name("rm_workflow_versions"),
            WorkflowVersionView::COLUMNS,
            versions,
            "ON CONFLICT (workflow_id, version) DO NOTHING",
        )
        .await?;
        Ok(())
    }
}

/// Writes `rm_webhooks` for the webhook events of a batch, and the time of
/// each webhook's last delivery from the executions webhooks started.
/// Statements per event, in log order: webhooks change rarely.
async fn apply_webhooks(
    conn: &mut Conn<'_>,
    tables: &Tables,
    events: &[RecordedEvent],
) -> Result<(), StoreError> {
    let table = tables.name("rm_webhooks");
    for event in events {
        match (event.aggregate_type.as_str(), event.event_type.as_str()) {
            ("workflow", "WebhookCreated" | "WebhookSecretRotated" | "WebhookDeleted") => {}
            ("execution", "ExecutionStarted") => {
                // Cheap test before decoding: only webhook starts matter.
                if event.payload.get("trigger").and_then(Value::as_str) != Some("webhook") {
                    continue;
                }
            }
            _ => continue,
        }
        if event.aggregate_type == "execution" {
            if let ExecutionEvent::ExecutionStarted {
                source: Some(hook), ..
            } = decode(event)?
            {
                conn.exec(
                    &format!(
                        "UPDATE {table} SET last_delivery_at = $1 WHERE id = $2 \
                         AND (last_delivery_at IS NULL OR last_delivery_at < $1)"
                    ),
                    &[event.recorded_at.into(), hook.into()],
                )
                .await?;
            }
            continue;
        }
        match decode::<WorkflowEvent>(event)? {
            WorkflowEvent::WebhookCreated {
                webhook_id,
                description,
            } => {
                let row = WebhookView {
                    id: webhook_id.to_string(),
                    tenant: event.metadata.tenant.clone(),
                    workflow_id: event.aggregate_id.clone(),
                    description,
                    created_by: event.metadata.actor.clone(),
                    created_at: event.recorded_at,
                    secret_rotated_at: None,
                    last_delivery_at: None,
                };
                insert_rows(
                    conn,
                    &table,
                    WebhookView::COLUMNS,
                    vec![row.into_args()],
                    "ON CONFLICT (id) DO NOTHING",
                )
                .await?;
            }
            WorkflowEvent::WebhookSecretRotated { webhook_id, .. } => {
                conn.exec(
                    &format!("UPDATE {table} SET secret_rotated_at = $1 WHERE id = $2"),
                    &[event.recorded_at.into(), webhook_id.to_string().into()],
                )
                .await?;
            }
            WorkflowEvent::WebhookDeleted { webhook_id } => {
                conn.exec(
                    &format!("DELETE FROM {table} WHERE id = $1"),
                    &[webhook_id.to_string().into()],
                )
                .await?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// A definition as the read models show it: literal credentials of its
/// `http` nodes redacted (see [`crate::redact`]).
fn shown_definition<T: serde::Serialize>(definition: &T) -> Result<Value, StoreError> {
    let mut value = serde_json::to_value(definition)?;
    crate::redact::redact_definition(&mut value);
    Ok(value)
}
