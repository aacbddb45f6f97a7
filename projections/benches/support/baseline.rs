//! The baseline: the same read models maintained the way cqrs-es maintains
//! views out of the box, with `GenericQuery` over postgres-es's
//! `PostgresViewRepository` or sqlite-es's `SqliteViewRepository`, fed the
//! log's events in order, one `dispatch` per event (the events were
//! produced one per command, and cqrs-es dispatches each command's events
//! to its queries after the commit).
//!
//! Each view is one JSON document per aggregate: the workflow with every
//! version inside it, the execution with its steps inside it, the secret's
//! metadata, and the MCP server with its tools. `GenericQuery` loads the
//! document, applies the event and writes the document back: two
//! statements per event. The audit log has no `GenericQuery` analogue (a
//! view is keyed by aggregate, not by event), so it is not part of the
//! baseline.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cqrs_es::persist::GenericQuery;
use cqrs_es::{Aggregate, EventEnvelope, Query, View};
use postgres_es::PostgresViewRepository;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlite_es::SqliteViewRepository;
use toolhub_domain::execution::{Execution, ExecutionEvent};
use toolhub_domain::mcp_server::{McpServer, McpServerEvent};
use toolhub_domain::secret::{Secret, SecretEvent};
use toolhub_domain::workflow::{Workflow, WorkflowEvent};
use toolhub_eventstore::{Db, EventStore, Position, RecordedEvent};
use toolhub_projections::redact::redact_transport;

/// One version of a workflow's definition, inside the workflow's view.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct VersionEntry {
    version: u64,
    definition: Value,
    comment: Option<String>,
    reverted_from: Option<u64>,
    actor: String,
}

/// A workflow as it stands, with every version of its definition.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WorkflowView {
    tenant: String,
    seq: u64,
    name: String,
    description: String,
    definition: Value,
    version: u64,
    archived: bool,
    triggers: Value,
    created_by: String,
    updated_by: String,
    versions: Vec<VersionEntry>,
}

fn actor(metadata: &HashMap<String, String>) -> String {
    metadata.get("actor").cloned().unwrap_or_default()
}

impl View<Workflow> for WorkflowView {
    fn update(&mut self, event: &EventEnvelope<Workflow>) {
        let actor = actor(&event.metadata);
        self.seq = event.sequence as u64;
        self.updated_by = actor.clone();
        let push_version = |view: &mut Self, comment: Option<String>, from: Option<u64>| {
            view.versions.push(VersionEntry {
                version: view.version,
                definition: view.definition.clone(),
                comment,
                reverted_from: from,
                actor: actor.clone(),
            });
        };
        match &event.payload {
            WorkflowEvent::WorkflowCreated {
                tenant,
                name,
                description,
                definition,
            } => {
                self.tenant = tenant.to_string();
                self.name = name.clone();
                self.description = description.clone();
                self.definition = serde_json::to_value(definition).unwrap_or_default();
                self.version = 1;
                self.triggers = Value::Array(vec![]);
                self.created_by = self.updated_by.clone();
                push_version(self, None, None);
            }
            WorkflowEvent::WorkflowDefinitionUpdated {
                version,
                definition,
                comment,
            } => {
                self.version = *version;
                self.definition = serde_json::to_value(definition).unwrap_or_default();
                push_version(self, comment.clone(), None);
            }
            WorkflowEvent::WorkflowReverted {
                version,
                from_version,
                definition,
                comment,
            } => {
                self.version = *version;
                self.definition = serde_json::to_value(definition).unwrap_or_default();
                push_version(self, comment.clone(), Some(*from_version));
            }
            WorkflowEvent::WorkflowRenamed { name } => self.name = name.clone(),
            WorkflowEvent::WorkflowTriggersSet { triggers } => {
                self.triggers = serde_json::to_value(triggers).unwrap_or_default();
            }
            WorkflowEvent::WorkflowArchived => self.archived = true,
            WorkflowEvent::WorkflowRestored => self.archived = false,
            // The generated history has no webhooks.
            WorkflowEvent::WebhookCreated { .. }
            | WorkflowEvent::WebhookSecretRotated { .. }
            | WorkflowEvent::WebhookDeleted { .. } => {}
        }
    }
}

/// One attempt of one step, inside the execution's view.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StepEntry {
    node_id: String,
    attempt: u32,
    status: String,
    input: Value,
    output: Option<Value>,
    error: Option<String>,
}

/// An execution as it stands, with its steps.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ExecutionView {
    tenant: String,
    seq: u64,
    workflow_id: String,
    workflow_version: u64,
    status: String,
    trigger: String,
    input: Value,
    output: Option<Value>,
    error: Option<String>,
    started_by: String,
    steps: Vec<StepEntry>,
}

impl ExecutionView {
    fn step(&mut self, node: &str, attempt: u32) -> Option<&mut StepEntry> {
        self.steps
            .iter_mut()
            .find(|s| s.node_id == node && s.attempt == attempt)
    }
}

impl View<Execution> for ExecutionView {
    fn update(&mut self, event: &EventEnvelope<Execution>) {
        self.seq = event.sequence as u64;
        match &event.payload {
            ExecutionEvent::ExecutionStarted {
                tenant,
                workflow_id,
                workflow_version,
                input,
                trigger,
                ..
            } => {
                self.tenant = tenant.to_string();
                self.workflow_id = workflow_id.to_string();
                self.workflow_version = *workflow_version;
                self.status = "running".into();
                self.trigger = trigger.clone();
                self.input = input.clone();
                self.started_by = actor(&event.metadata);
            }
            ExecutionEvent::StepScheduled {
                node_id,
                attempt,
                input,
            } => self.steps.push(StepEntry {
                node_id: node_id.to_string(),
                attempt: *attempt,
                status: "scheduled".into(),
                input: input.clone(),
                output: None,
                error: None,
            }),
            ExecutionEvent::StepRetried {
                node_id, attempt, ..
            } => {
                let input = self
                    .steps
                    .iter()
                    .rev()
                    .find(|s| s.node_id == node_id.as_str())
                    .map(|s| s.input.clone())
                    .unwrap_or(Value::Null);
                self.steps.push(StepEntry {
                    node_id: node_id.to_string(),
                    attempt: *attempt,
                    status: "scheduled".into(),
                    input,
                    output: None,
                    error: None,
                });
            }
            ExecutionEvent::StepStarted {
                node_id, attempt, ..
            } => {
                if let Some(s) = self.step(node_id.as_str(), *attempt) {
                    s.status = "running".into();
                }
            }
            ExecutionEvent::StepSucceeded {
                node_id,
                attempt,
                output,
            } => {
                if let Some(s) = self.step(node_id.as_str(), *attempt) {
                    s.status = "succeeded".into();
                    s.output = Some(output.clone());
                }
            }
            ExecutionEvent::StepFailed {
                node_id,
                attempt,
                error,
                ..
            } => {
                if let Some(s) = self.step(node_id.as_str(), *attempt) {
                    s.status = "failed".into();
                    s.error = Some(error.clone());
                }
            }
            ExecutionEvent::StepSkipped { .. }
            | ExecutionEvent::BreakpointsSet { .. }
            | ExecutionEvent::ExecutionForked { .. }
            | ExecutionEvent::StepCopied { .. } => {}
            ExecutionEvent::ExecutionPaused { .. } => self.status = "paused".into(),
            ExecutionEvent::ExecutionResumed { .. } => self.status = "running".into(),
            ExecutionEvent::ExecutionStopRequested => self.status = "stopping".into(),
            ExecutionEvent::ExecutionCancelled { reason } => {
                self.status = "cancelled".into();
                self.error = Some(reason.clone());
            }
            ExecutionEvent::ExecutionCompleted { output } => {
                self.status = "completed".into();
                self.output = Some(output.clone());
            }
            ExecutionEvent::ExecutionFailed { error } => {
                self.status = "failed".into();
                self.error = Some(error.clone());
            }
        }
    }
}

/// A secret's metadata; never its value.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SecretView {
    tenant: String,
    seq: u64,
    name: String,
    description: String,
    rotation_count: u32,
    deleted: bool,
    created_by: String,
}

impl View<Secret> for SecretView {
    fn update(&mut self, event: &EventEnvelope<Secret>) {
        self.seq = event.sequence as u64;
        match &event.payload {
            SecretEvent::SecretCreated {
                tenant,
                name,
                description,
                ..
            } => {
                self.tenant = tenant.to_string();
                self.name = name.clone();
                self.description = description.clone();
                self.created_by = actor(&event.metadata);
            }
            SecretEvent::SecretRotated { rotation, .. } => self.rotation_count = *rotation,
            SecretEvent::SecretDescribed { description } => self.description = description.clone(),
            SecretEvent::SecretDeleted => self.deleted = true,
        }
    }
}

/// A tool, inside its MCP server's view.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ToolEntry {
    name: String,
    description: Option<String>,
    input_schema: Value,
}

/// An MCP server with its health and tools.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct McpServerView {
    tenant: String,
    seq: u64,
    name: String,
    transport: Value,
    enabled: bool,
    deregistered: bool,
    healthy: Option<bool>,
    latency_ms: Option<u64>,
    health_detail: Option<String>,
    tools: Vec<ToolEntry>,
}

fn redacted<T: Serialize>(transport: &T) -> Value {
    let mut value = serde_json::to_value(transport).unwrap_or_default();
    redact_transport(&mut value);
    value
}

impl View<McpServer> for McpServerView {
    fn update(&mut self, event: &EventEnvelope<McpServer>) {
        self.seq = event.sequence as u64;
        match &event.payload {
            McpServerEvent::McpServerRegistered {
                tenant,
                name,
                transport,
            } => {
                self.tenant = tenant.to_string();
                self.name = name.clone();
                self.transport = redacted(transport);
                self.enabled = true;
            }
            McpServerEvent::McpServerConfigUpdated { transport } => {
                self.transport = redacted(transport);
            }
            McpServerEvent::McpServerToolsDiscovered { tools } => {
                self.tools = tools
                    .iter()
                    .map(|t| ToolEntry {
                        name: t.name.clone(),
                        description: t.description.clone(),
                        input_schema: t.input_schema.clone(),
                    })
                    .collect();
            }
            McpServerEvent::McpServerHealthChecked {
                healthy,
                latency_ms,
                detail,
            } => {
                self.healthy = Some(*healthy);
                self.latency_ms = Some(*latency_ms);
                self.health_detail = detail.clone();
            }
            McpServerEvent::McpServerEnabled => self.enabled = true,
            McpServerEvent::McpServerDisabled => self.enabled = false,
            McpServerEvent::McpServerDeregistered => {
                self.enabled = false;
                self.deregistered = true;
            }
        }
    }
}

/// The view tables of one baseline run, one per `GenericQuery`, in the
/// layout postgres-es and sqlite-es document.
fn views(run: &str) -> [String; 4] {
    ["workflows", "executions", "secrets", "mcp_servers"].map(|v| format!("gq_{run}_{v}"))
}

async fn create_tables(db: &Db, views: &[String]) {
    for view in views {
        match db {
            Db::Postgres(pool) => {
                sqlx::query(&format!(
                    "CREATE TABLE {view} (view_id text NOT NULL PRIMARY KEY, \
                     version bigint CHECK (version >= 0) NOT NULL, payload json NOT NULL)"
                ))
                .execute(pool)
                .await
                .expect("create a view table");
            }
            Db::Sqlite(pool) => {
                sqlx::query(&format!(
                    "CREATE TABLE {view} (view_id text NOT NULL PRIMARY KEY, \
                     version integer CHECK (version >= 0) NOT NULL, payload text NOT NULL) STRICT"
                ))
                .execute(pool)
                .await
                .expect("create a view table");
            }
        }
    }
}

fn query<V, A>(db: &Db, view: &str, errors: &Arc<AtomicU64>) -> Arc<dyn Query<A>>
where
    V: View<A> + 'static,
    A: Aggregate + 'static,
{
    let counter = errors.clone();
    let handler = Box::new(move |error: cqrs_es::persist::PersistenceError| {
        if counter.fetch_add(1, Ordering::Relaxed) < 3 {
            eprintln!("GenericQuery error: {error}");
        }
    });
    match db {
        Db::Postgres(pool) => {
            let repo = Arc::new(PostgresViewRepository::<V, A>::new(view, pool.clone()));
            let mut query = GenericQuery::<_, V, A>::new(repo);
            query.use_error_handler(handler);
            Arc::new(query)
        }
        Db::Sqlite(pool) => {
            let repo = Arc::new(SqliteViewRepository::<V, A>::new(view, pool.clone()));
            let mut query = GenericQuery::<_, V, A>::new(repo);
            query.use_error_handler(handler);
            Arc::new(query)
        }
    }
}

fn envelope<A: Aggregate>(event: &RecordedEvent) -> EventEnvelope<A> {
    let m = &event.metadata;
    let metadata = HashMap::from([
        ("actor".to_string(), m.actor.clone()),
        ("tenant".to_string(), m.tenant.clone()),
        ("correlation_id".to_string(), m.correlation_id.clone()),
        ("causation_id".to_string(), m.causation_id.clone()),
        ("request_id".to_string(), m.request_id.clone()),
    ]);
    EventEnvelope {
        aggregate_id: event.aggregate_id.clone(),
        sequence: event.sequence as usize,
        payload: serde_json::from_value(event.payload.clone()).expect("a generated event decodes"),
        metadata,
    }
}

/// What the baseline did.
pub struct BaselineRun {
    /// Events dispatched.
    pub events: u64,
    /// Wall-clock time, reading the log included.
    pub elapsed: Duration,
    /// Errors the queries reported (must be 0).
    pub errors: u64,
}

impl BaselineRun {
    /// Events per second.
    pub fn rate(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// How the baseline's view repositories commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// The database's defaults: on PostgreSQL every view update waits for
    /// its commit to reach the disk, as in a default deployment of cqrs-es.
    Default,
    /// PostgreSQL with `synchronous_commit = off` on the views' own pool, so
    /// that the baseline is not merely a measure of the disk's flush
    /// latency. (SQLite in WAL mode with `synchronous = NORMAL` already does
    /// not flush on commit.)
    Relaxed,
}

/// Feeds the first `limit` events of the log, in order, to the four
/// `GenericQuery` views, one dispatch per event. `url` is the database's
/// URL, for the relaxed run's own pool.
pub async fn run(store: &EventStore, url: &str, limit: u64, durability: Durability) -> BaselineRun {
    let db = match (store.db(), durability) {
        (Db::Postgres(_), Durability::Relaxed) => {
            let options = url
                .parse::<sqlx::postgres::PgConnectOptions>()
                .expect("the database URL")
                .options([("synchronous_commit", "off")]);
            Db::Postgres(
                sqlx::postgres::PgPoolOptions::new()
                    .max_connections(4)
                    .connect_with(options)
                    .await
                    .expect("connect the relaxed pool"),
            )
        }
        (db, _) => db.clone(),
    };
    let db = &db;
    let views = views(match durability {
        Durability::Default => "default",
        Durability::Relaxed => "relaxed",
    });
    create_tables(db, &views).await;
    let errors = Arc::new(AtomicU64::new(0));
    let workflows = query::<WorkflowView, Workflow>(db, &views[0], &errors);
    let executions = query::<ExecutionView, Execution>(db, &views[1], &errors);
    let secrets = query::<SecretView, Secret>(db, &views[2], &errors);
    let servers = query::<McpServerView, McpServer>(db, &views[3], &errors);
    let started = Instant::now();
    let mut checkpoint = Position::ZERO;
    let mut done = 0u64;
    while done < limit {
        let batch = (limit - done).min(1_000) as u32;
        let events = store
            .read_after(checkpoint, batch)
            .await
            .expect("read the log");
        let Some(last) = events.last() else { break };
        checkpoint = last.position;
        for event in &events {
            let id = event.aggregate_id.as_str();
            match event.aggregate_type.as_str() {
                "workflow" => workflows.dispatch(id, &[envelope(event)]).await,
                "execution" => executions.dispatch(id, &[envelope(event)]).await,
                "secret" => secrets.dispatch(id, &[envelope(event)]).await,
                "mcp_server" => servers.dispatch(id, &[envelope(event)]).await,
                other => panic!("unexpected aggregate type {other}"),
            }
        }
        done += events.len() as u64;
    }
    BaselineRun {
        events: done,
        elapsed: started.elapsed(),
        errors: errors.load(Ordering::Relaxed),
    }
}
