//! The read models: one [`Projection`] per group of tables, each folding a
//! batch of events into its rows with a handful of multi-row statements.
//!
//! Every entity row records `seq`, the sequence of the last event applied to
//! it, and an event at or below it is skipped: applying a batch twice changes
//! nothing. Child rows (versions, steps, tools) are written only for events
//! that were not skipped, and the audit log is keyed by global position.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;
use toolhub_domain::execution::{ExecutionEvent, ExecutionStatus};
use toolhub_domain::mcp_server::McpServerEvent;
use toolhub_domain::secret::SecretEvent;
use toolhub_domain::workflow::WorkflowEvent;
use toolhub_eventstore::{RecordedEvent, StoreError};

use crate::redact::{redact_payload, redact_transport};
use crate::sql::{insert_rows, placeholders, upsert_tail, Arg, Conn, CopyRows, Row};

/// The table names a projection writes to: the live tables, or the shadow
/// tables of a rebuild.
#[derive(Debug, Clone, Default)]
pub struct Tables {
    suffix: String,
    /// Whether the tables have been given every event before the batch at
    /// hand once, and none after it (see [`Tables::replay`]).
    replay: bool,
}

/// The suffix of a rebuild's shadow tables.
pub const SHADOW_SUFFIX: &str = "__rebuild";

impl Tables {
    /// The live tables.
    pub fn live() -> Self {
        Self::default()
    }

    /// The shadow tables of a rebuild.
    pub fn shadow() -> Self {
        Self {
            suffix: SHADOW_SUFFIX.to_string(),
            replay: false,
        }
    }

    /// The shadow tables as a rebuild fills them: created empty, then given
    /// every event of the log exactly once, in order. No row keyed by an
    /// event (an audit entry) can exist before its event is applied, so
    /// such rows are loaded with `COPY` on PostgreSQL, without the
    /// `ON CONFLICT` that makes re-applying a batch harmless elsewhere.
    pub fn replay() -> Self {
        Self {
            replay: true,
            ..Self::shadow()
        }
    }

    /// Whether these are [`Tables::replay`].
    pub fn is_replay(&self) -> bool {
        self.replay
    }

    /// The name to use for the table `base`.
    pub fn name(&self, base: &str) -> String {
        format!("{base}{}", self.suffix)
    }
}

/// A read model: a group of tables kept up to date from the log.
#[async_trait]
pub trait Projection: Send + Sync {
    /// The projection's stable name (its checkpoint's key).
    fn name(&self) -> &'static str;

    /// The tables it owns, which a rebuild shadows and swaps.
    fn tables(&self) -> &'static [&'static str];

    /// Applies a batch of events, in log order, inside the caller's
    /// transaction. Must be idempotent.
    async fn apply(
        &self,
        conn: &mut Conn<'_>,
        tables: &Tables,
        events: &[RecordedEvent],
    ) -> Result<(), StoreError>;
}

/// The names of every projection, as [`all`] returns them. Read-your-writes
/// and lag consult these checkpoints on every poll, without building the
/// projections.
pub const NAMES: [&str; 5] = ["workflows", "executions", "secrets", "mcp_servers", "audit"];

/// Every projection, in the order they are run.
pub fn all() -> Vec<std::sync::Arc<dyn Projection>> {
    vec![
        std::sync::Arc::new(WorkflowsProjection),
        std::sync::Arc::new(ExecutionsProjection),
        std::sync::Arc::new(SecretsProjection),
        std::sync::Arc::new(McpServersProjection),
        std::sync::Arc::new(AuditProjection),
    ]
}

fn decode<E: serde::de::DeserializeOwned>(event: &RecordedEvent) -> Option<E> {
    // Deserialise from a borrowed value: no copy of the payload.
    match E::deserialize(&event.payload) {
        Ok(e) => Some(e),
        Err(error) => {
            tracing::error!(
                %error,
                position = %event.position,
                event_type = %event.event_type,
                "an event the read model cannot decode was skipped"
            );
            None
        }
    }
}

async fn load_rows(
    conn: &mut Conn<'_>,
    table: &str,
    key: &str,
    ids: &[String],
) -> Result<Vec<Row>, StoreError> {
    let mut rows = Vec::new();
    for chunk in ids.chunks(500) {
        let sql = format!(
            "SELECT * FROM {table} WHERE {key} IN ({})",
            placeholders(1, chunk.len())
        );
        let args: Vec<Arg> = chunk.iter().map(|id| Arg::from(id.as_str())).collect();
        rows.extend(conn.fetch(&sql, &args).await?);
    }
    Ok(rows)
}

fn ids_of(events: &[&RecordedEvent]) -> Vec<String> {
    events
        .iter()
        .map(|e| e.aggregate_id.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

fn of_type<'a>(events: &'a [RecordedEvent], aggregate_type: &str) -> Vec<&'a RecordedEvent> {
    events
        .iter()
        .filter(|e| e.aggregate_type == aggregate_type)
        .collect()
}

// ---------------------------------------------------------------- workflows

/// Workflows as they stand, and every version of their definitions.
pub struct WorkflowsProjection;

#[derive(Debug, Clone)]
struct WorkflowRow {
    id: String,
    tenant: String,
    seq: i64,
    name: String,
    description: String,
    definition: Value,
    version: i64,
    archived: bool,
    triggers: Value,
    created_by: String,
    created_at: DateTime<Utc>,
    updated_by: String,
    updated_at: DateTime<Utc>,
}

const WORKFLOW_COLUMNS: &[&str] = &[
    "id",
    "tenant",
    "seq",
    "name",
    "description",
    "definition",
    "version",
    "archived",
    "triggers",
    "created_by",
    "created_at",
    "updated_by",
    "updated_at",
];

impl WorkflowRow {
    fn from_row(r: &Row) -> Result<Self, StoreError> {
        Ok(Self {
            id: r.text("id")?,
            tenant: r.text("tenant")?,
            seq: r.int("seq")?,
            name: r.text("name")?,
            description: r.text("description")?,
            definition: r.json("definition")?,
            version: r.int("version")?,
            archived: r.bool("archived")?,
            triggers: r.json("triggers")?,
            created_by: r.text("created_by")?,
            created_at: r.time("created_at")?,
            updated_by: r.text("updated_by")?,
            updated_at: r.time("updated_at")?,
        })
    }

    fn args(self) -> Vec<Arg> {
        vec![
            self.id.into(),
            self.tenant.into(),
            self.seq.into(),
            self.name.into(),
            self.description.into(),
            self.definition.into(),
            self.version.into(),
            self.archived.into(),
            self.triggers.into(),
            self.created_by.into(),
            self.created_at.into(),
            self.updated_by.into(),
            self.updated_at.into(),
        ]
    }
}

const VERSION_COLUMNS: &[&str] = &[
    "workflow_id",
    "version",
    "tenant",
    "definition",
    "comment",
    "reverted_from",
    "actor",
    "recorded_at",
];

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
        let table = tables.name("rm_workflows");
        let mut rows: HashMap<String, WorkflowRow> = HashMap::new();
        for r in load_rows(conn, &table, "id", &ids_of(&events)).await? {
            let row = WorkflowRow::from_row(&r)?;
            rows.insert(row.id.clone(), row);
        }
        let mut dirty = BTreeSet::new();
        let mut versions: Vec<Vec<Arg>> = Vec::new();
        for event in events {
            let seq = event.sequence as i64;
            if rows.get(&event.aggregate_id).is_some_and(|r| r.seq >= seq) {
                continue;
            }
            let Some(payload) = decode::<WorkflowEvent>(event) else {
                continue;
            };
            let actor = event.metadata.actor.clone();
            let at = event.recorded_at;
            let mut version_row =
                |row: &WorkflowRow, comment: Option<String>, from: Option<u64>| {
                    versions.push(vec![
                        row.id.clone().into(),
                        row.version.into(),
                        row.tenant.clone().into(),
                        row.definition.clone().into(),
                        comment.into(),
                        from.map(|v| v as i64).into(),
                        actor.clone().into(),
                        at.into(),
                    ]);
                };
            if let WorkflowEvent::WorkflowCreated {
                tenant,
                name,
                description,
                definition,
            } = &payload
            {
                let row = WorkflowRow {
                    id: event.aggregate_id.clone(),
                    tenant: tenant.to_string(),
                    seq,
                    name: name.clone(),
                    description: description.clone(),
                    definition: serde_json::to_value(definition)?,
                    version: 1,
                    archived: false,
                    triggers: Value::Array(vec![]),
                    created_by: actor.clone(),
                    created_at: at,
                    updated_by: actor.clone(),
                    updated_at: at,
                };
                version_row(&row, None, None);
                rows.insert(row.id.clone(), row);
                dirty.insert(event.aggregate_id.clone());
                continue;
            }
            let Some(row) = rows.get_mut(&event.aggregate_id) else {
                tracing::error!(position = %event.position, "a workflow event before its creation");
                continue;
            };
            match payload {
                WorkflowEvent::WorkflowCreated { .. } => {}
                WorkflowEvent::WorkflowDefinitionUpdated {
                    version,
                    definition,
                    comment,
                } => {
                    row.version = version as i64;
                    row.definition = serde_json::to_value(&definition)?;
                    version_row(row, comment, None);
                }
                WorkflowEvent::WorkflowReverted {
                    version,
                    from_version,
                    definition,
                    comment,
                } => {
                    row.version = version as i64;
                    row.definition = serde_json::to_value(&definition)?;
                    version_row(row, comment, Some(from_version));
                }
                WorkflowEvent::WorkflowRenamed { name } => row.name = name,
                WorkflowEvent::WorkflowTriggersSet { triggers } => {
                    row.triggers = serde_json::to_value(&triggers)?;
                }
                WorkflowEvent::WorkflowArchived => row.archived = true,
                WorkflowEvent::WorkflowRestored => row.archived = false,
            }
            row.seq = seq;
            row.updated_by = actor.clone();
            row.updated_at = at;
            dirty.insert(event.aggregate_id.clone());
        }
        let upserts: Vec<Vec<Arg>> = dirty
            .iter()
            .filter_map(|id| rows.remove(id))
            .map(WorkflowRow::args)
            .collect();
        insert_rows(
            conn,
            &table,
            WORKFLOW_COLUMNS,
            upserts,
            &upsert_tail(&["id"], WORKFLOW_COLUMNS),
        )
        .await?;
        insert_rows(
            conn,
            &tables.name("rm_workflow_versions"),
            VERSION_COLUMNS,
            versions,
            "ON CONFLICT (workflow_id, version) DO NOTHING",
        )
        .await
    }
}

// --------------------------------------------------------------- executions

/// Executions and their steps.
pub struct ExecutionsProjection;

#[derive(Debug, Clone)]
struct ExecutionRow {
    id: String,
    tenant: String,
    seq: i64,
    workflow_id: String,
    workflow_version: i64,
    status: String,
    trigger: String,
    input: Value,
    output: Option<Value>,
    error: Option<String>,
    started_by: String,
    started_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
    updated_at: DateTime<Utc>,
}

const EXECUTION_COLUMNS: &[&str] = &[
    "id",
    "tenant",
    "seq",
    "workflow_id",
    "workflow_version",
    "status",
    "trigger",
    "input",
    "output",
    "error",
    "started_by",
    "started_at",
    "finished_at",
    "updated_at",
];

impl ExecutionRow {
    fn from_row(r: &Row) -> Result<Self, StoreError> {
        Ok(Self {
            id: r.text("id")?,
            tenant: r.text("tenant")?,
            seq: r.int("seq")?,
            workflow_id: r.text("workflow_id")?,
            workflow_version: r.int("workflow_version")?,
            status: r.text("status")?,
            trigger: r.text("trigger")?,
            input: r.json("input")?,
            output: r.opt_json("output")?,
            error: r.opt_text("error")?,
            started_by: r.text("started_by")?,
            started_at: r.time("started_at")?,
            finished_at: r.opt_time("finished_at")?,
            updated_at: r.time("updated_at")?,
        })
    }

    fn args(self) -> Vec<Arg> {
        vec![
            self.id.into(),
            self.tenant.into(),
            self.seq.into(),
            self.workflow_id.into(),
            self.workflow_version.into(),
            self.status.into(),
            self.trigger.into(),
            self.input.into(),
            self.output.into(),
            self.error.into(),
            self.started_by.into(),
            self.started_at.into(),
            self.finished_at.into(),
            self.updated_at.into(),
        ]
    }
}

#[derive(Debug, Clone)]
struct StepRow {
    execution_id: String,
    node_id: String,
    attempt: i64,
    tenant: String,
    status: String,
    input: Value,
    output: Option<Value>,
    error: Option<String>,
    scheduled_at: DateTime<Utc>,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
}

const STEP_COLUMNS: &[&str] = &[
    "execution_id",
    "node_id",
    "attempt",
    "tenant",
    "status",
    "input",
    "output",
    "error",
    "scheduled_at",
    "started_at",
    "finished_at",
];

impl StepRow {
    fn from_row(r: &Row) -> Result<Self, StoreError> {
        Ok(Self {
            execution_id: r.text("execution_id")?,
            node_id: r.text("node_id")?,
            attempt: r.int("attempt")?,
            tenant: r.text("tenant")?,
            status: r.text("status")?,
            input: r.json("input")?,
            output: r.opt_json("output")?,
            error: r.opt_text("error")?,
            scheduled_at: r.time("scheduled_at")?,
            started_at: r.opt_time("started_at")?,
            finished_at: r.opt_time("finished_at")?,
        })
    }

    fn args(self) -> Vec<Arg> {
        vec![
            self.execution_id.into(),
            self.node_id.into(),
            self.attempt.into(),
            self.tenant.into(),
            self.status.into(),
            self.input.into(),
            self.output.into(),
            self.error.into(),
            self.scheduled_at.into(),
            self.started_at.into(),
            self.finished_at.into(),
        ]
    }
}

type StepKey = (String, String, i64);

#[async_trait]
impl Projection for ExecutionsProjection {
    fn name(&self) -> &'static str {
        "executions"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["rm_executions", "rm_execution_steps"]
    }

    async fn apply(
        &self,
        conn: &mut Conn<'_>,
        tables: &Tables,
        events: &[RecordedEvent],
    ) -> Result<(), StoreError> {
        let events = of_type(events, "execution");
        if events.is_empty() {
            return Ok(());
        }
        let table = tables.name("rm_executions");
        let steps_table = tables.name("rm_execution_steps");
        let ids = ids_of(&events);
        let mut rows: HashMap<String, ExecutionRow> = HashMap::new();
        for r in load_rows(conn, &table, "id", &ids).await? {
            let row = ExecutionRow::from_row(&r)?;
            rows.insert(row.id.clone(), row);
        }
        let mut steps: BTreeMap<StepKey, StepRow> = BTreeMap::new();
        for r in load_rows(conn, &steps_table, "execution_id", &ids).await? {
            let step = StepRow::from_row(&r)?;
            steps.insert(
                (
                    step.execution_id.clone(),
                    step.node_id.clone(),
                    step.attempt,
                ),
                step,
            );
        }
        let mut dirty = BTreeSet::new();
        let mut dirty_steps = BTreeSet::new();
        for event in events {
            let seq = event.sequence as i64;
            let id = &event.aggregate_id;
            if rows.get(id).is_some_and(|r| r.seq >= seq) {
                continue;
            }
            let Some(payload) = decode::<ExecutionEvent>(event) else {
                continue;
            };
            let at = event.recorded_at;
            if let ExecutionEvent::ExecutionStarted {
                tenant,
                workflow_id,
                workflow_version,
                input,
                trigger,
                ..
            } = &payload
            {
                rows.insert(
                    id.clone(),
                    ExecutionRow {
                        id: id.clone(),
                        tenant: tenant.to_string(),
                        seq,
                        workflow_id: workflow_id.to_string(),
                        workflow_version: *workflow_version as i64,
                        status: ExecutionStatus::Running.as_str().into(),
                        trigger: trigger.clone(),
                        input: input.clone(),
                        output: None,
                        error: None,
                        started_by: event.metadata.actor.clone(),
                        started_at: at,
                        finished_at: None,
                        updated_at: at,
                    },
                );
                dirty.insert(id.clone());
                continue;
            }
            let Some(row) = rows.get_mut(id) else {
                tracing::error!(position = %event.position, "an execution event before its start");
                continue;
            };
            let step = |node: &str, attempt: u32| -> StepKey {
                (id.clone(), node.to_string(), i64::from(attempt))
            };
            let finish = |row: &mut ExecutionRow, status: ExecutionStatus| {
                row.status = status.as_str().into();
                row.finished_at = Some(at);
            };
            match payload {
                ExecutionEvent::ExecutionStarted { .. } => {}
                ExecutionEvent::StepScheduled {
                    node_id,
                    attempt,
                    input,
                } => {
                    let key = step(node_id.as_str(), attempt);
                    steps.insert(
                        key.clone(),
                        StepRow {
                            execution_id: id.clone(),
                            node_id: node_id.to_string(),
                            attempt: i64::from(attempt),
                            tenant: row.tenant.clone(),
                            status: "scheduled".into(),
                            input,
                            output: None,
                            error: None,
                            scheduled_at: at,
                            started_at: None,
                            finished_at: None,
                        },
                    );
                    dirty_steps.insert(key);
                }
                ExecutionEvent::StepRetried { node_id, attempt } => {
                    let key = step(node_id.as_str(), attempt);
                    let input = steps
                        .range(step(node_id.as_str(), 0)..key.clone())
                        .next_back()
                        .map(|(_, s)| s.input.clone())
                        .unwrap_or(Value::Null);
                    steps.insert(
                        key.clone(),
                        StepRow {
                            execution_id: id.clone(),
                            node_id: node_id.to_string(),
                            attempt: i64::from(attempt),
                            tenant: row.tenant.clone(),
                            status: "scheduled".into(),
                            input,
                            output: None,
                            error: None,
                            scheduled_at: at,
                            started_at: None,
                            finished_at: None,
                        },
                    );
                    dirty_steps.insert(key);
                }
                ExecutionEvent::StepStarted { node_id, attempt } => {
                    let key = step(node_id.as_str(), attempt);
                    if let Some(s) = steps.get_mut(&key) {
                        s.status = "running".into();
                        s.started_at = Some(at);
                        dirty_steps.insert(key);
                    }
                }
                ExecutionEvent::StepSucceeded {
                    node_id,
                    attempt,
                    output,
                } => {
                    let key = step(node_id.as_str(), attempt);
                    if let Some(s) = steps.get_mut(&key) {
                        s.status = "succeeded".into();
                        s.output = Some(output);
                        s.finished_at = Some(at);
                        dirty_steps.insert(key);
                    }
                }
                ExecutionEvent::StepFailed {
                    node_id,
                    attempt,
                    error,
                    ..
                } => {
                    let key = step(node_id.as_str(), attempt);
                    if let Some(s) = steps.get_mut(&key) {
                        s.status = "failed".into();
                        s.error = Some(error);
                        s.finished_at = Some(at);
                        dirty_steps.insert(key);
                    }
                }
                ExecutionEvent::ExecutionPaused { .. } => {
                    row.status = ExecutionStatus::Paused.as_str().into();
                }
                ExecutionEvent::ExecutionResumed => {
                    row.status = ExecutionStatus::Running.as_str().into();
                }
                ExecutionEvent::ExecutionStopRequested => {
                    row.status = ExecutionStatus::Stopping.as_str().into();
                }
                ExecutionEvent::ExecutionCancelled { reason } => {
                    row.error = Some(reason);
                    finish(row, ExecutionStatus::Cancelled);
                }
                ExecutionEvent::ExecutionCompleted { output } => {
                    row.output = Some(output);
                    finish(row, ExecutionStatus::Completed);
                }
                ExecutionEvent::ExecutionFailed { error } => {
                    row.error = Some(error);
                    finish(row, ExecutionStatus::Failed);
                }
            }
            row.seq = seq;
            row.updated_at = at;
            dirty.insert(id.clone());
        }
        let upserts: Vec<Vec<Arg>> = dirty
            .iter()
            .filter_map(|id| rows.remove(id))
            .map(ExecutionRow::args)
            .collect();
        insert_rows(
            conn,
            &table,
            EXECUTION_COLUMNS,
            upserts,
            &upsert_tail(&["id"], EXECUTION_COLUMNS),
        )
        .await?;
        let step_upserts: Vec<Vec<Arg>> = dirty_steps
            .iter()
            .filter_map(|key| steps.remove(key))
            .map(StepRow::args)
            .collect();
        insert_rows(
            conn,
            &steps_table,
            STEP_COLUMNS,
            step_upserts,
            &upsert_tail(&["execution_id", "node_id", "attempt"], STEP_COLUMNS),
        )
        .await
    }
}

// ------------------------------------------------------------------ secrets

/// Secrets' metadata: never a value, sealed or not.
pub struct SecretsProjection;

#[derive(Debug, Clone)]
struct SecretRow {
    id: String,
    tenant: String,
    seq: i64,
    name: String,
    description: String,
    rotation_count: i64,
    deleted: bool,
    created_by: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

const SECRET_COLUMNS: &[&str] = &[
    "id",
    "tenant",
    "seq",
    "name",
    "description",
    "rotation_count",
    "deleted",
    "created_by",
    "created_at",
    "updated_at",
];

impl SecretRow {
    fn from_row(r: &Row) -> Result<Self, StoreError> {
        Ok(Self {
            id: r.text("id")?,
            tenant: r.text("tenant")?,
            seq: r.int("seq")?,
            name: r.text("name")?,
            description: r.text("description")?,
            rotation_count: r.int("rotation_count")?,
            deleted: r.bool("deleted")?,
            created_by: r.text("created_by")?,
            created_at: r.time("created_at")?,
            updated_at: r.time("updated_at")?,
        })
    }

    fn args(self) -> Vec<Arg> {
        vec![
            self.id.into(),
            self.tenant.into(),
            self.seq.into(),
            self.name.into(),
            self.description.into(),
            self.rotation_count.into(),
            self.deleted.into(),
            self.created_by.into(),
            self.created_at.into(),
            self.updated_at.into(),
        ]
    }
}

#[async_trait]
impl Projection for SecretsProjection {
    fn name(&self) -> &'static str {
        "secrets"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["rm_secrets"]
    }

    async fn apply(
        &self,
        conn: &mut Conn<'_>,
        tables: &Tables,
        events: &[RecordedEvent],
    ) -> Result<(), StoreError> {
        let events = of_type(events, "secret");
        if events.is_empty() {
            return Ok(());
        }
        let table = tables.name("rm_secrets");
        let mut rows: HashMap<String, SecretRow> = HashMap::new();
        for r in load_rows(conn, &table, "id", &ids_of(&events)).await? {
            let row = SecretRow::from_row(&r)?;
            rows.insert(row.id.clone(), row);
        }
        let mut dirty = BTreeSet::new();
        for event in events {
            let seq = event.sequence as i64;
            let id = &event.aggregate_id;
            if rows.get(id).is_some_and(|r| r.seq >= seq) {
                continue;
            }
            let Some(payload) = decode::<SecretEvent>(event) else {
                continue;
            };
            let at = event.recorded_at;
            if let SecretEvent::SecretCreated {
                tenant,
                name,
                description,
                ..
            } = &payload
            {
                rows.insert(
                    id.clone(),
                    SecretRow {
                        id: id.clone(),
                        tenant: tenant.to_string(),
                        seq,
                        name: name.clone(),
                        description: description.clone(),
                        rotation_count: 0,
                        deleted: false,
                        created_by: event.metadata.actor.clone(),
                        created_at: at,
                        updated_at: at,
                    },
                );
                dirty.insert(id.clone());
                continue;
            }
            let Some(row) = rows.get_mut(id) else {
                tracing::error!(position = %event.position, "a secret event before its creation");
                continue;
            };
            match payload {
                SecretEvent::SecretCreated { .. } => {}
                SecretEvent::SecretRotated { rotation, .. } => {
                    row.rotation_count = i64::from(rotation);
                }
                SecretEvent::SecretDescribed { description } => row.description = description,
                SecretEvent::SecretDeleted => row.deleted = true,
            }
            row.seq = seq;
            row.updated_at = at;
            dirty.insert(id.clone());
        }
        let upserts: Vec<Vec<Arg>> = dirty
            .iter()
            .filter_map(|id| rows.remove(id))
            .map(SecretRow::args)
            .collect();
        insert_rows(
            conn,
            &table,
            SECRET_COLUMNS,
            upserts,
            &upsert_tail(&["id"], SECRET_COLUMNS),
        )
        .await
    }
}

// -------------------------------------------------------------- MCP servers

/// MCP servers, their health and their tools.
pub struct McpServersProjection;

#[derive(Debug, Clone)]
struct McpServerRow {
    id: String,
    tenant: String,
    seq: i64,
    name: String,
    transport: Value,
    enabled: bool,
    deregistered: bool,
    healthy: Option<bool>,
    latency_ms: Option<i64>,
    health_detail: Option<String>,
    checked_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

const MCP_COLUMNS: &[&str] = &[
    "id",
    "tenant",
    "seq",
    "name",
    "transport",
    "enabled",
    "deregistered",
    "healthy",
    "latency_ms",
    "health_detail",
    "checked_at",
    "created_at",
    "updated_at",
];

impl McpServerRow {
    fn from_row(r: &Row) -> Result<Self, StoreError> {
        Ok(Self {
            id: r.text("id")?,
            tenant: r.text("tenant")?,
            seq: r.int("seq")?,
            name: r.text("name")?,
            transport: r.json("transport")?,
            enabled: r.bool("enabled")?,
            deregistered: r.bool("deregistered")?,
            healthy: r.opt_bool("healthy")?,
            latency_ms: r.opt_int("latency_ms")?,
            health_detail: r.opt_text("health_detail")?,
            checked_at: r.opt_time("checked_at")?,
            created_at: r.time("created_at")?,
            updated_at: r.time("updated_at")?,
        })
    }

    fn args(self) -> Vec<Arg> {
        vec![
            self.id.into(),
            self.tenant.into(),
            self.seq.into(),
            self.name.into(),
            self.transport.into(),
            self.enabled.into(),
            self.deregistered.into(),
            self.healthy.into(),
            self.latency_ms.into(),
            self.health_detail.into(),
            self.checked_at.into(),
            self.created_at.into(),
            self.updated_at.into(),
        ]
    }
}

const TOOL_COLUMNS: &[&str] = &["server_id", "name", "tenant", "description", "input_schema"];

fn redacted_transport<T: serde::Serialize>(transport: &T) -> Result<Value, StoreError> {
    let mut value = serde_json::to_value(transport)?;
    redact_transport(&mut value);
    Ok(value)
}

#[async_trait]
impl Projection for McpServersProjection {
    fn name(&self) -> &'static str {
        "mcp_servers"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["rm_mcp_servers", "rm_mcp_tools"]
    }

    async fn apply(
        &self,
        conn: &mut Conn<'_>,
        tables: &Tables,
        events: &[RecordedEvent],
    ) -> Result<(), StoreError> {
        let events = of_type(events, "mcp_server");
        if events.is_empty() {
            return Ok(());
        }
        let table = tables.name("rm_mcp_servers");
        let tools_table = tables.name("rm_mcp_tools");
        let mut rows: HashMap<String, McpServerRow> = HashMap::new();
        for r in load_rows(conn, &table, "id", &ids_of(&events)).await? {
            let row = McpServerRow::from_row(&r)?;
            rows.insert(row.id.clone(), row);
        }
        let mut dirty = BTreeSet::new();
        // The last tool list discovered in this batch, per server.
        let mut tools: BTreeMap<String, Vec<Vec<Arg>>> = BTreeMap::new();
        for event in events {
            let seq = event.sequence as i64;
            let id = &event.aggregate_id;
            if rows.get(id).is_some_and(|r| r.seq >= seq) {
                continue;
            }
            let Some(payload) = decode::<McpServerEvent>(event) else {
                continue;
            };
            let at = event.recorded_at;
            if let McpServerEvent::McpServerRegistered {
                tenant,
                name,
                transport,
            } = &payload
            {
                rows.insert(
                    id.clone(),
                    McpServerRow {
                        id: id.clone(),
                        tenant: tenant.to_string(),
                        seq,
                        name: name.clone(),
                        transport: redacted_transport(transport)?,
                        enabled: true,
                        deregistered: false,
                        healthy: None,
                        latency_ms: None,
                        health_detail: None,
                        checked_at: None,
                        created_at: at,
                        updated_at: at,
                    },
                );
                dirty.insert(id.clone());
                continue;
            }
            let Some(row) = rows.get_mut(id) else {
                tracing::error!(position = %event.position, "an MCP server event before its registration");
                continue;
            };
            match payload {
                McpServerEvent::McpServerRegistered { .. } => {}
                McpServerEvent::McpServerConfigUpdated { transport } => {
                    row.transport = redacted_transport(&transport)?;
                }
                McpServerEvent::McpServerToolsDiscovered { tools: discovered } => {
                    let list = discovered
                        .into_iter()
                        .map(|t| {
                            vec![
                                id.clone().into(),
                                t.name.into(),
                                row.tenant.clone().into(),
                                t.description.into(),
                                t.input_schema.into(),
                            ]
                        })
                        .collect();
                    tools.insert(id.clone(), list);
                }
                McpServerEvent::McpServerHealthChecked {
                    healthy,
                    latency_ms,
                    detail,
                } => {
                    row.healthy = Some(healthy);
                    row.latency_ms = Some(latency_ms.min(i64::MAX as u64) as i64);
                    row.health_detail = detail;
                    row.checked_at = Some(at);
                }
                McpServerEvent::McpServerEnabled => row.enabled = true,
                McpServerEvent::McpServerDisabled => row.enabled = false,
                McpServerEvent::McpServerDeregistered => {
                    row.enabled = false;
                    row.deregistered = true;
                }
            }
            row.seq = seq;
            row.updated_at = at;
            dirty.insert(id.clone());
        }
        let upserts: Vec<Vec<Arg>> = dirty
            .iter()
            .filter_map(|id| rows.remove(id))
            .map(McpServerRow::args)
            .collect();
        insert_rows(
            conn,
            &table,
            MCP_COLUMNS,
            upserts,
            &upsert_tail(&["id"], MCP_COLUMNS),
        )
        .await?;
        if !tools.is_empty() {
            let servers: Vec<String> = tools.keys().cloned().collect();
            for chunk in servers.chunks(500) {
                let sql = format!(
                    "DELETE FROM {tools_table} WHERE server_id IN ({})",
                    placeholders(1, chunk.len())
                );
                let args: Vec<Arg> = chunk.iter().map(|s| Arg::from(s.as_str())).collect();
                conn.exec(&sql, &args).await?;
            }
            insert_rows(
                conn,
                &tools_table,
                TOOL_COLUMNS,
                tools.into_values().flatten().collect(),
                &upsert_tail(&["server_id", "name"], TOOL_COLUMNS),
            )
            .await?;
        }
        Ok(())
    }
}

// -------------------------------------------------------------------- audit

/// One row per event, with its metadata and its redacted payload.
pub struct AuditProjection;

const AUDIT_COLUMNS: &[&str] = &[
    "global_position",
    "transaction_id",
    "tenant",
    "aggregate_type",
    "aggregate_id",
    "sequence",
    "event_type",
    "event_version",
    "actor",
    "correlation_id",
    "causation_id",
    "request_id",
    "recorded_at",
    "payload",
];

#[async_trait]
impl Projection for AuditProjection {
    fn name(&self) -> &'static str {
        "audit"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["rm_audit"]
    }

    async fn apply(
        &self,
        conn: &mut Conn<'_>,
        tables: &Tables,
        events: &[RecordedEvent],
    ) -> Result<(), StoreError> {
        let table = tables.name("rm_audit");
        if let (Conn::Pg(c), true) = (&mut *conn, tables.is_replay()) {
            // Straight from the events, without an owned copy of each.
            let mut rows = CopyRows::new(AUDIT_COLUMNS.len());
            for e in events {
                rows.row();
                rows.int(Some(e.position.global));
                rows.int(Some(e.position.transaction.min(i64::MAX as u64) as i64));
                rows.text(Some(&e.metadata.tenant))?;
                rows.text(Some(&e.aggregate_type))?;
                rows.text(Some(&e.aggregate_id))?;
                rows.int(Some(e.sequence as i64));
                rows.text(Some(&e.event_type))?;
                rows.text(Some(&e.event_version))?;
                rows.text(Some(&e.metadata.actor))?;
                rows.text(Some(&e.metadata.correlation_id))?;
                rows.text(Some(&e.metadata.causation_id))?;
                rows.text(Some(&e.metadata.request_id))?;
                rows.time(Some(&e.recorded_at))?;
                rows.json(Some(&redact_payload(&e.aggregate_type, &e.payload)))?;
            }
            return rows.copy_into(c, &table, AUDIT_COLUMNS).await;
        }
        let rows = events
            .iter()
            .map(|e| {
                vec![
                    e.position.global.into(),
                    (e.position.transaction.min(i64::MAX as u64) as i64).into(),
                    e.metadata.tenant.clone().into(),
                    e.aggregate_type.clone().into(),
                    e.aggregate_id.clone().into(),
                    (e.sequence as i64).into(),
                    e.event_type.clone().into(),
                    e.event_version.clone().into(),
                    e.metadata.actor.clone().into(),
                    e.metadata.correlation_id.clone().into(),
                    e.metadata.causation_id.clone().into(),
                    e.metadata.request_id.clone().into(),
                    e.recorded_at.into(),
                    redact_payload(&e.aggregate_type, &e.payload)
                        .into_owned()
                        .into(),
                ]
            })
            .collect();
        insert_rows(
            conn,
            &table,
            AUDIT_COLUMNS,
            rows,
            "ON CONFLICT (global_position) DO NOTHING",
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_names_are_those_of_every_projection_in_order() {
        let names: Vec<&str> = super::all().iter().map(|p| p.name()).collect();
        assert_eq!(names, super::NAMES);
    }
}
