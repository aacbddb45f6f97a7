//! The `workflows` read model: workflows as they stand (`rm_workflows`) and
//! every version of their definitions (`rm_workflow_versions`).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;
use toolhub_domain::workflow::WorkflowEvent;
use toolhub_eventstore::sql::{insert_rows, Arg, Conn};
use toolhub_eventstore::{RecordedEvent, StoreError};

use super::fold::{entity, fold, of_type, table_row};
use super::{Projection, Tables};

table_row! {
    /// A row of `rm_workflows`.
    pub(crate) struct WorkflowRow {
        /// The workflow's id.
        id: String = text,
        /// The owning tenant.
        tenant: String = text,
        /// The sequence of the last event applied.
        seq: i64 = int,
        /// The display name.
        name: String = text,
        /// What the workflow is for.
        description: String = text,
        /// The current definition.
        definition: Value = json,
        /// The current definition's version.
        version: i64 = int,
        /// Whether it is archived.
        archived: bool = bool,
        /// The triggers, as recorded.
        triggers: Value = json,
        /// Who created it.
        created_by: String = text,
        /// When.
        created_at: DateTime<Utc> = time,
        /// Who changed it last.
        updated_by: String = text,
        /// When.
        updated_at: DateTime<Utc> = time,
    }
}
entity!(WorkflowRow);

table_row! {
    /// A row of `rm_workflow_versions`: one per definition version.
    pub(crate) struct VersionRow {
        /// The workflow.
        workflow_id: String = text,
        /// The definition version.
        version: i64 = int,
        /// The owning tenant.
        tenant: String = text,
        /// The definition of this version.
        definition: Value = json,
        /// The comment given with the change.
        comment: Option<String> = opt_text,
        /// For a revert, the version it copied.
        reverted_from: Option<i64> = opt_int,
        /// Who made it.
        actor: String = text,
        /// When.
        recorded_at: DateTime<Utc> = time,
    }
}

/// Workflows as they stand, and every version of their definitions.
pub struct WorkflowsProjection;

#[async_trait]
impl Projection for WorkflowsProjection {
    fn name(&self) -> &'static str {
        "workflows"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["rm_workflows", "rm_workflow_versions"]
    }

    async fn apply(
        &self,
        conn: &mut Conn<'_>,
        tables: &Tables,
        events: &[RecordedEvent],
    ) -> Result<(), StoreError> {
        let events = of_type(events, "workflow");
        if events.is_empty() {
            return Ok(());
        }
        let mut versions: Vec<Vec<Arg>> = Vec::new();
        fold(
            conn,
            &tables.name("rm_workflows"),
            &events,
            |event, payload: WorkflowEvent, row: Option<&mut WorkflowRow>| {
                let actor = &event.metadata.actor;
                let at = event.recorded_at;
                let mut version_of = |row: &WorkflowRow, comment, from: Option<u64>| {
                    versions.push(
                        VersionRow {
                            workflow_id: row.id.clone(),
                            version: row.version,
                            tenant: row.tenant.clone(),
                            definition: row.definition.clone(),
                            comment,
                            reverted_from: from.map(|v| v as i64),
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
                        let row = WorkflowRow {
                            id: event.aggregate_id.clone(),
                            tenant: tenant.to_string(),
                            seq: 0,
                            name,
                            description,
                            definition: serde_json::to_value(&definition)?,
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
                                row.version = version as i64;
                                row.definition = serde_json::to_value(&definition)?;
                                version_of(row, comment, None);
                            }
                            WorkflowEvent::WorkflowReverted {
                                version,
                                from_version,
                                definition,
                                comment,
                            } => {
                                row.version = version as i64;
                                row.definition = serde_json::to_value(&definition)?;
                                version_of(row, comment, Some(from_version));
                            }
                            WorkflowEvent::WorkflowRenamed { name } => row.name = name,
                            WorkflowEvent::WorkflowTriggersSet { triggers } => {
                                row.triggers = serde_json::to_value(&triggers)?;
                            }
                            WorkflowEvent::WorkflowArchived => row.archived = true,
                            WorkflowEvent::WorkflowRestored => row.archived = false,
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
            VersionRow::COLUMNS,
            versions,
            "ON CONFLICT (workflow_id, version) DO NOTHING",
        )
        .await?;
        Ok(())
    }
}
