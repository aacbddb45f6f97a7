//! The engine's public face and its worker loop.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use serde_json::Value;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use toolhub_domain::definition::{NodeId, WorkflowDefinition};
use toolhub_domain::execution::{
    Execution, ExecutionCommand, ExecutionError, ExecutionEvent, StepStatus,
};
use toolhub_domain::mcp_server::{McpServer, McpServerError};
use toolhub_domain::workflow::Workflow;
use toolhub_domain::{AggregateRoot, ExecutionId, McpServerId, TenantId, WorkflowId};
use toolhub_eventstore::work::{release_key, reserve_key, KeyReservation};
use toolhub_eventstore::{
    CommandBus, CommandContext, CommandError, Committed, ConflictKind, EventStore, SecretVault,
    StoreError, WorkQueue,
};

use super::driver::Driver;
use super::health::run_health_checks;
use crate::config::EngineConfig;
use crate::mcp::{McpCallError, McpPool};

/// The longest idempotency key, in characters.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 200;

/// The largest execution input, in bytes of JSON.
pub const MAX_INPUT_BYTES: usize = 1024 * 1024;

/// Why the engine refused or failed a request.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The workflow, execution or server does not exist, or is another
    /// tenant's. Present it exactly like a missing entity.
    #[error("not found")]
    NotFound,
    /// The workflow is archived: it cannot start.
    #[error("the workflow is archived")]
    Archived,
    /// A field of the request is unusable.
    #[error("{field}: {reason}")]
    Validation {
        /// The field, as the API names it.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// An execution command was refused or conflicted.
    #[error(transparent)]
    Execution(#[from] CommandError<ExecutionError>),
    /// An MCP server command was refused or conflicted.
    #[error(transparent)]
    McpServer(#[from] CommandError<McpServerError>),
    /// The MCP server could not be reached or answered badly.
    #[error(transparent)]
    Mcp(#[from] McpCallError),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What `startExecution` asks.
#[derive(Debug, Clone)]
pub struct StartRequest {
    /// The workflow to run, at its current version.
    pub workflow_id: WorkflowId,
    /// The input, available to templates as `{{input…}}`.
    pub input: Value,
    /// The nodes to pause before.
    pub breakpoints: Vec<String>,
    /// The same key within the idempotency window returns the first
    /// execution instead of starting another.
    pub idempotency_key: Option<String>,
    /// What started it: `manual`, `cron`, `webhook` or `mcp`.
    pub trigger: String,
    /// Which one of its kind: the webhook's id for `webhook`, the tool's
    /// name for `mcp`.
    pub source: Option<String>,
}

/// What `forkExecution` asks.
#[derive(Debug, Clone)]
pub struct ForkRequest {
    /// The execution to fork.
    pub execution_id: ExecutionId,
    /// The node the fork runs live from; the nodes before it are copied.
    pub from_node: String,
    /// Replaces the execution's input, when given.
    pub input_override: Option<Value>,
    /// Replaces copied outputs: a JSON object of node id to output.
    pub output_overrides: Option<Value>,
}

/// Refuses a caller's JSON larger than [`MAX_INPUT_BYTES`].
fn check_size(field: &'static str, value: &Value) -> Result<(), EngineError> {
    if serde_json::to_vec(value).map_or(true, |b| b.len() > MAX_INPUT_BYTES) {
        return Err(EngineError::Validation {
            field,
            reason: format!("larger than {MAX_INPUT_BYTES} bytes"),
        });
    }
    Ok(())
}

/// What a start did.
#[derive(Debug, Clone)]
pub struct Started {
    /// The execution.
    pub execution_id: ExecutionId,
    /// The start's commit; for an idempotent repeat, nothing appended.
    pub committed: Committed,
    /// True when the idempotency key returned an earlier execution.
    pub existing: bool,
}

/// Counters the service exports as metrics and tests read.
#[derive(Debug, Default)]
pub struct EngineStats {
    /// Executions this process started.
    pub started: AtomicU64,
    /// Executions that reached an end while this process drove them.
    pub finished: AtomicU64,
    /// Steps whose side effects this process ran.
    pub steps_run: AtomicU64,
    /// Batches recorded.
    pub batches: AtomicU64,
    /// Commands that lost a race and were decided again.
    pub conflicts: AtomicU64,
    /// Cron fires this process started.
    pub cron_fires: AtomicU64,
    /// Whether this process leads the cron scheduler now.
    pub scheduling: std::sync::atomic::AtomicBool,
    /// The latest health-check latency of each server, in milliseconds
    /// (server id → latency), and whether it was healthy.
    pub health: Mutex<HashMap<String, (u64, bool)>>,
}

/// A driver running in this process, so that notifications reach it.
pub(crate) struct Running {
    /// Wakes the driver: something changed (a stop, a resume).
    pub(crate) notify: Arc<Notify>,
    /// Stops the driver: its lease was lost, or the process stops.
    pub(crate) cancel: CancellationToken,
}

/// What the engine shares with its drivers.
pub(crate) struct Inner {
    /// The log.
    pub(crate) store: EventStore,
    /// Execution commands (shared with the API, so that both see one cache).
    pub(crate) executions: Arc<CommandBus<Execution>>,
    /// Workflows, read for their pinned definitions.
    pub(crate) workflows: Arc<CommandBus<Workflow>>,
    /// MCP servers, read for their transports and tools, and written for
    /// discovered tools and health.
    pub(crate) servers: Arc<CommandBus<McpServer>>,
    /// Secrets, unsealed at the moment of use.
    pub(crate) secrets: Arc<SecretVault>,
    /// The work queue.
    pub(crate) work: WorkQueue,
    /// The egress-checked HTTP client of `http` nodes and MCP servers.
    pub(crate) http: reqwest::Client,
    /// Connections to MCP servers.
    pub(crate) mcp: McpPool,
    /// Settings.
    pub(crate) config: EngineConfig,
    /// The drivers running here, by execution id.
    pub(crate) running: Mutex<HashMap<String, Running>>,
    /// Bounds the drivers running at once.
    pub(crate) slots: Arc<Semaphore>,
    /// Counters.
    pub(crate) stats: Arc<EngineStats>,
    /// Stops everything.
    pub(crate) shutdown: CancellationToken,
    /// Whether this process runs workers ([`Engine::spawn`]): when it does
    /// not, a start is left to the queue (and announced) rather than driven
    /// here.
    pub(crate) working: std::sync::atomic::AtomicBool,
}

/// The engine. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    /// Shared with the drivers.
    pub(crate) inner: Arc<Inner>,
}

/// The engine's background tasks; [`EngineHandle::stop`] ends them.
pub struct EngineHandle {
    /// The engine they serve.
    engine: Engine,
    /// The worker loop, the heartbeat and the health checker.
    tasks: Vec<JoinHandle<()>>,
}

impl EngineHandle {
    /// The engine the tasks serve.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Stops the workers: drivers give their executions back to the queue
    /// (due at once, for another worker), MCP connections close.
    pub async fn stop(self) {
        self.engine.inner.shutdown.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
        // Drivers notice the shutdown and give their leases back.
        for _ in 0..50 {
            if self.engine.inner.running.lock().is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.engine.inner.mcp.shutdown().await;
    }

    /// Stops at once, as a crash would: leases stay until they run out.
    pub fn abort(self) {
        for task in &self.tasks {
            task.abort();
        }
        for running in self.engine.inner.running.lock().values() {
            running.cancel.cancel();
        }
    }
}

impl Engine {
    /// An engine over the given buses and store.
    pub fn new(
        store: EventStore,
        executions: Arc<CommandBus<Execution>>,
        workflows: Arc<CommandBus<Workflow>>,
        servers: Arc<CommandBus<McpServer>>,
        secrets: Arc<SecretVault>,
        config: EngineConfig,
    ) -> Result<Self, crate::egress::ClientBuildError> {
        let http = config.egress.client(config.http)?;
        let mcp = McpPool::new(config.mcp_pool.clone(), http.clone());
        Ok(Self {
            inner: Arc::new(Inner {
                work: WorkQueue::new(store.db().clone()),
                store,
                executions,
                workflows,
                servers,
                secrets,
                http,
                mcp,
                slots: Arc::new(Semaphore::new(config.max_executions.max(1))),
                config,
                running: Mutex::new(HashMap::new()),
                stats: Arc::new(EngineStats::default()),
                shutdown: CancellationToken::new(),
                working: std::sync::atomic::AtomicBool::new(false),
            }),
        })
    }

    /// The counters.
    pub fn stats(&self) -> Arc<EngineStats> {
        self.inner.stats.clone()
    }

    /// How long a whole execution may run before it fails: the longest a
    /// caller waiting for one needs to wait.
    pub fn execution_timeout(&self) -> Duration {
        self.inner.config.execution_timeout
    }

    /// The MCP connection pool (its counters, for metrics and tests).
    pub fn mcp(&self) -> &McpPool {
        &self.inner.mcp
    }

    /// Starts the background work: the worker loop (claims and drives due
    /// executions), the lease heartbeat, and the health checker (which runs
    /// on one leader across replicas).
    pub fn spawn(&self) -> EngineHandle {
        self.inner.working.store(true, Ordering::SeqCst);
        let tasks = vec![
            tokio::spawn(worker_loop(self.clone())),
            tokio::spawn(heartbeat(self.clone())),
            tokio::spawn(run_health_checks(self.clone())),
            tokio::spawn(super::schedule::run_scheduler(self.clone())),
        ];
        EngineHandle {
            engine: self.clone(),
            tasks,
        }
    }

    /// Replays execution `id` over its recorded events against its pinned
    /// workflow version ([`crate::replay`]): no step runs, no secret is
    /// unsealed. Another tenant's execution is [`EngineError::NotFound`].
    pub async fn replay(
        &self,
        tenant: &TenantId,
        id: ExecutionId,
        conditions: &dyn crate::expr::Conditions,
    ) -> Result<crate::replay::ReplayReport, EngineError> {
        let (definition, events) = self.recorded(tenant, id).await?;
        Ok(crate::replay::replay(&definition, &events, conditions))
    }

    /// Execution `id`'s events, decoded, and its pinned definition; for the
    /// caller's tenant only.
    pub async fn recorded(
        &self,
        tenant: &TenantId,
        id: ExecutionId,
    ) -> Result<(WorkflowDefinition, Vec<crate::replay::ReplayEvent>), EngineError> {
        let inner = &self.inner;
        let rows = inner.store.stream("execution", &id.to_string()).await?;
        let mut events = Vec::with_capacity(rows.len());
        for row in rows {
            let event: ExecutionEvent = serde_json::from_value(row.payload).map_err(|e| {
                StoreError::Corrupt(format!("execution event {}: {e}", row.sequence))
            })?;
            events.push(crate::replay::ReplayEvent {
                sequence: row.sequence,
                position: row.position.to_string(),
                event,
            });
        }
        let Some(ExecutionEvent::ExecutionStarted {
            tenant: owner,
            workflow_id,
            workflow_version,
            ..
        }) = events.first().map(|e| &e.event)
        else {
            return Err(EngineError::NotFound);
        };
        if owner != tenant {
            return Err(EngineError::NotFound);
        }
        let (workflow, _) = inner.workflows.current(&workflow_id.to_string()).await?;
        let definition = workflow
            .definition(*workflow_version)
            .cloned()
            .ok_or(EngineError::NotFound)?;
        Ok((definition, events))
    }

    /// Starts an execution of the workflow's current version.
    pub async fn start(
        &self,
        ctx: &CommandContext,
        request: StartRequest,
    ) -> Result<Started, EngineError> {
        let inner = &self.inner;
        let (workflow, _) = inner
            .workflows
            .current(&request.workflow_id.to_string())
            .await?;
        if workflow.tenant() != Some(&ctx.tenant) {
            return Err(EngineError::NotFound);
        }
        if workflow.is_archived() {
            return Err(EngineError::Archived);
        }
        let version = workflow.current_version();
        let definition = workflow.current_definition().ok_or(EngineError::NotFound)?;
        let mut breakpoints = Vec::with_capacity(request.breakpoints.len());
        for id in &request.breakpoints {
            match NodeId::parse(id) {
                Ok(node) if definition.node(node.as_str()).is_some() => breakpoints.push(node),
                _ => {
                    return Err(EngineError::Validation {
                        field: "input.breakpoints",
                        reason: format!(
                            "`{}` is not a node of version {version} of the workflow",
                            id.chars().take(64).collect::<String>()
                        ),
                    })
                }
            }
        }
        if serde_json::to_vec(&request.input).map_or(true, |b| b.len() > MAX_INPUT_BYTES) {
            return Err(EngineError::Validation {
                field: "input.input",
                reason: format!("the input is larger than {MAX_INPUT_BYTES} bytes"),
            });
        }
        let id = ExecutionId::new();
        let id_text = id.to_string();
        let now = Utc::now();
        if let Some(key) = &request.idempotency_key {
            check_idempotency_key(key)?;
            if let Some(started) = self.reserve(ctx, key, &id_text, now).await? {
                return Ok(started);
            }
        }
        let start = ExecutionCommand::Start {
            tenant: ctx.tenant.clone(),
            workflow_id: request.workflow_id,
            workflow_version: version,
            input: request.input,
            trigger: request.trigger,
            source: request.source,
            breakpoints,
            deadline: Some(now + chrono_duration(inner.config.execution_timeout)),
        };
        let committed = match self.begin(ctx, &id_text, vec![start], definition).await {
            Ok(committed) => committed,
            Err(error) => {
                if let Some(key) = &request.idempotency_key {
                    let _ = release_key(inner.store.db(), ctx.tenant.as_str(), key, &id_text).await;
                }
                return Err(error);
            }
        };
        Ok(Started {
            execution_id: id,
            committed,
            existing: false,
        })
    }

    /// Appends a new run's first commands (`prefix`: its start, and for a
    /// fork what it copies) with its work row, and has it driven.
    async fn begin(
        &self,
        ctx: &CommandContext,
        id_text: &str,
        prefix: Vec<ExecutionCommand>,
        definition: &WorkflowDefinition,
    ) -> Result<Committed, EngineError> {
        let inner = &self.inner;
        let now = Utc::now();
        // The work row commits with the start, leased to this worker when
        // it runs executions: an execution is started exactly when it has a
        // row to be driven by, and the start costs one commit.
        let lease_until = now + chrono_duration(inner.config.lease);
        let here = inner.working.load(Ordering::SeqCst);
        let work = WorkQueue::enqueue_with_start(
            id_text,
            ctx.tenant.as_str(),
            here.then_some(inner.config.worker_id.as_str()),
            now,
            lease_until,
        );
        let unmoved = |prefix: &[ExecutionCommand]| match prefix {
            [single] => single.clone(),
            _ => ExecutionCommand::Batch(prefix.to_vec()),
        };
        // When this worker runs it, the run's first move (its first steps
        // scheduled and started, instant ones done) is decided now and
        // commits with the start: one commit less before the first step
        // touches the world. Its side effects are launched only after.
        let mut claim = if here {
            self.claim_driver(id_text, ctx.tenant.clone())
        } else {
            Claim::NoSlot
        };
        let (command, launches) = match &mut claim {
            Claim::Driver(driver, _) => match driver.first_move(&prefix, definition).await {
                Ok((commands, launches)) => (ExecutionCommand::Batch(commands), launches),
                Err(error) => {
                    tracing::debug!(execution = %id_text, %error, "the first move is left to the driver");
                    (unmoved(&prefix), Vec::new())
                }
            },
            _ => (unmoved(&prefix), Vec::new()),
        };
        let committed = match inner
            .executions
            .execute_with(id_text, command, ctx, &work)
            .await
        {
            Ok(committed) => committed,
            Err(error) => {
                if let Claim::Driver(..) = claim {
                    inner.running.lock().remove(id_text);
                }
                return Err(error.into());
            }
        };
        inner.stats.started.fetch_add(1, Ordering::Relaxed);
        match claim {
            Claim::Driver(mut driver, permit) => {
                // The steps are in the log: now they may touch the world.
                for prepared in launches {
                    driver.launch(prepared);
                }
                self.spawn_driver(*driver, permit, true);
            }
            // No slot here: the queue hands it out.
            _ if here => self.drive(id_text.to_string(), ctx.tenant.clone(), true),
            // Workers elsewhere claim it; tell them now.
            _ => inner.store.announce_work(id_text),
        }
        Ok(committed)
    }

    /// Forks execution `request.execution_id`: a new execution of the same
    /// pinned workflow version that copies, from the original, the steps of
    /// every node that is neither `from_node` nor after it and that
    /// succeeded or was skipped there (with their recorded inputs, their
    /// outputs or the overrides, and the positions of the original's
    /// events), then runs live from there. The original may be in any
    /// status, running included: what it has recorded so far is copied.
    pub async fn fork(
        &self,
        ctx: &CommandContext,
        request: ForkRequest,
    ) -> Result<Started, EngineError> {
        use cqrs_es::Aggregate;
        let inner = &self.inner;
        let (definition, events) = self.recorded(&ctx.tenant, request.execution_id).await?;
        let mut original = Execution::default();
        // Each node's recorded input, and the event that settled it (its
        // success, its skip, or its copy).
        let mut inputs: HashMap<NodeId, Value> = HashMap::new();
        let mut settled: HashMap<NodeId, (u64, String)> = HashMap::new();
        for recorded in &events {
            let at = (recorded.sequence, recorded.position.clone());
            match &recorded.event {
                ExecutionEvent::StepScheduled { node_id, input, .. } => {
                    inputs.insert(node_id.clone(), input.clone());
                }
                ExecutionEvent::StepCopied { node_id, input, .. } => {
                    inputs.insert(node_id.clone(), input.clone());
                    settled.insert(node_id.clone(), at);
                }
                ExecutionEvent::StepSucceeded { node_id, .. }
                | ExecutionEvent::StepSkipped { node_id } => {
                    settled.insert(node_id.clone(), at);
                }
                _ => {}
            }
            original.apply(recorded.event.clone());
        }
        let workflow_id = original.workflow_id().ok_or(EngineError::NotFound)?;
        let (workflow, _) = inner.workflows.current(&workflow_id.to_string()).await?;
        if workflow.is_archived() {
            return Err(EngineError::Archived);
        }
        let version = original.workflow_version();
        let from_node = NodeId::parse(&request.from_node)
            .ok()
            .filter(|n| definition.node(n.as_str()).is_some())
            .ok_or_else(|| EngineError::Validation {
                field: "input.fromNode",
                reason: format!(
                    "`{}` is not a node of version {version} of the workflow",
                    request.from_node.chars().take(64).collect::<String>()
                ),
            })?;
        // `from_node` and every node after it run live.
        let mut live: BTreeSet<NodeId> = BTreeSet::from([from_node.clone()]);
        let mut frontier = vec![from_node.clone()];
        while let Some(node) = frontier.pop() {
            for edge in definition.edges() {
                if edge.from() == &node && live.insert(edge.to().clone()) {
                    frontier.push(edge.to().clone());
                }
            }
        }
        let mut copies: Vec<(NodeId, u32, bool)> = Vec::new();
        for node in definition.topological_order() {
            let id = node.id();
            if live.contains(id) || !settled.contains_key(id) {
                continue;
            }
            if original.is_skipped(id.as_str()) {
                copies.push((id.clone(), 0, true));
            } else if let Some((attempt, StepStatus::Succeeded)) =
                original.latest_attempt(id.as_str())
            {
                copies.push((id.clone(), attempt, false));
            }
        }
        let mut overrides = match request.output_overrides {
            None | Some(Value::Null) => serde_json::Map::new(),
            Some(Value::Object(map)) => map,
            Some(_) => {
                return Err(EngineError::Validation {
                    field: "input.outputOverrides",
                    reason: "an object of node id to output".into(),
                })
            }
        };
        for (node, output) in &overrides {
            let copied = copies
                .iter()
                .any(|(id, _, skipped)| id.as_str() == node && !skipped);
            if !copied {
                let node: String = node.chars().take(64).collect();
                let reason = if definition.node(&node).is_none() {
                    format!("`{node}` is not a node of version {version} of the workflow")
                } else {
                    format!(
                        "`{node}` is not a step the fork copies: only the nodes before \
                         `{from_node}` that succeeded in the original are"
                    )
                };
                return Err(EngineError::Validation {
                    field: "input.outputOverrides",
                    reason,
                });
            }
            check_size("input.outputOverrides", output)?;
            toolhub_domain::text::check_json(&format!("input.outputOverrides.{node}"), output)
                .map_err(|e| EngineError::Validation {
                    field: "input.outputOverrides",
                    reason: e.to_string(),
                })?;
        }
        let input = request
            .input_override
            .unwrap_or_else(|| original.input().clone());
        check_size("input.inputOverride", &input)?;
        toolhub_domain::text::check_json("input.inputOverride", &input).map_err(|e| {
            EngineError::Validation {
                field: "input.inputOverride",
                reason: e.to_string(),
            }
        })?;
        let id = ExecutionId::new();
        let id_text = id.to_string();
        let mut prefix = vec![
            ExecutionCommand::Start {
                tenant: ctx.tenant.clone(),
                workflow_id,
                workflow_version: version,
                input,
                trigger: "manual".into(),
                source: None,
                breakpoints: Vec::new(),
                deadline: Some(Utc::now() + chrono_duration(inner.config.execution_timeout)),
            },
            ExecutionCommand::RecordFork {
                forked_from: request.execution_id,
                from_node,
            },
        ];
        for (node_id, attempt, skipped) in copies {
            let (original_sequence, original_position) =
                settled.get(&node_id).cloned().unwrap_or_default();
            let output = if skipped {
                Value::Null
            } else {
                overrides
                    .remove(node_id.as_str())
                    .or_else(|| original.output(node_id.as_str()).cloned())
                    .unwrap_or(Value::Null)
            };
            prefix.push(ExecutionCommand::CopyStep {
                input: inputs.get(&node_id).cloned().unwrap_or(Value::Null),
                node_id,
                attempt,
                output,
                skipped,
                original_sequence,
                original_position,
            });
        }
        let committed = self.begin(ctx, &id_text, prefix, &definition).await?;
        Ok(Started {
            execution_id: id,
            committed,
            existing: false,
        })
    }

    /// Reserves an idempotency key for a new execution; returns the earlier
    /// execution when the key is taken.
    async fn reserve(
        &self,
        ctx: &CommandContext,
        key: &str,
        id: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<Started>, EngineError> {
        let inner = &self.inner;
        let window_start = now - chrono_duration(inner.config.idempotency_window);
        for _ in 0..2 {
            let reservation = reserve_key(
                inner.store.db(),
                ctx.tenant.as_str(),
                key,
                id,
                now,
                window_start,
            )
            .await?;
            let KeyReservation::Taken {
                execution_id,
                reserved_at,
            } = reservation
            else {
                return Ok(None);
            };
            let (execution, version) = inner.executions.current(&execution_id).await?;
            if version > 0 && execution.tenant() == Some(&ctx.tenant) {
                let execution_id = execution_id
                    .parse()
                    .map(ExecutionId::from_uuid)
                    .map_err(|_| StoreError::Corrupt("an execution id".into()))?;
                return Ok(Some(Started {
                    execution_id,
                    committed: Committed {
                        version,
                        position: None,
                        events: 0,
                    },
                    existing: true,
                }));
            }
            // The start that reserved it never happened (a crash between
            // the two writes): take the key over once it is clearly stale.
            if now - reserved_at < chrono::Duration::seconds(60) {
                return Err(
                    CommandError::<ExecutionError>::Conflict(ConflictKind::LostRace).into(),
                );
            }
            release_key(inner.store.db(), ctx.tenant.as_str(), key, &execution_id).await?;
        }
        Err(CommandError::<ExecutionError>::Conflict(ConflictKind::LostRace).into())
    }

    /// Asks an execution to stop: nothing new starts, steps in flight are
    /// cancelled (MCP calls on the wire), and the execution is cancelled.
    pub async fn stop(
        &self,
        ctx: &CommandContext,
        id: ExecutionId,
    ) -> Result<Committed, EngineError> {
        self.command(ctx, id, ExecutionCommand::RequestStop, None)
            .await
    }

    /// Resumes a paused execution; with `step`, runs the ready nodes and
    /// pauses again.
    pub async fn resume(
        &self,
        ctx: &CommandContext,
        id: ExecutionId,
        step: bool,
    ) -> Result<Committed, EngineError> {
        self.command(ctx, id, ExecutionCommand::Resume { step }, None)
            .await
    }

    /// Replaces an execution's breakpoints.
    pub async fn set_breakpoints(
        &self,
        ctx: &CommandContext,
        id: ExecutionId,
        breakpoints: Vec<String>,
    ) -> Result<Committed, EngineError> {
        let (execution, _) = self.inner.executions.current(&id.to_string()).await?;
        if execution.tenant() != Some(&ctx.tenant) {
            return Err(EngineError::NotFound);
        }
        let workflow_id = execution.workflow_id().ok_or(EngineError::NotFound)?;
        let (workflow, _) = self
            .inner
            .workflows
            .current(&workflow_id.to_string())
            .await?;
        let definition = workflow
            .definition(execution.workflow_version())
            .ok_or(EngineError::NotFound)?;
        let mut nodes = Vec::with_capacity(breakpoints.len());
        for id in &breakpoints {
            match NodeId::parse(id) {
                Ok(node) if definition.node(node.as_str()).is_some() => nodes.push(node),
                _ => {
                    return Err(EngineError::Validation {
                        field: "input.breakpoints",
                        reason: format!(
                            "`{}` is not a node of the execution's workflow version",
                            id.chars().take(64).collect::<String>()
                        ),
                    })
                }
            }
        }
        self.command(
            ctx,
            id,
            ExecutionCommand::SetBreakpoints { breakpoints: nodes },
            None,
        )
        .await
    }

    /// Runs one command on an execution for a caller, then wakes whichever
    /// worker drives it (here or on another replica).
    async fn command(
        &self,
        ctx: &CommandContext,
        id: ExecutionId,
        command: ExecutionCommand,
        expected_version: Option<u64>,
    ) -> Result<Committed, EngineError> {
        let id = id.to_string();
        let committed = self
            .inner
            .executions
            .execute_expecting(&id, command, ctx, expected_version)
            .await?;
        self.wake(&id).await?;
        Ok(committed)
    }

    /// Makes an execution due now and tells the workers.
    pub async fn wake(&self, id: &str) -> Result<(), EngineError> {
        self.inner.work.wake(id, Utc::now()).await?;
        self.inner.store.announce_work(id);
        Ok(())
    }

    /// Lists a server's tools over MCP and records them when they changed.
    pub async fn refresh_tools(
        &self,
        ctx: &CommandContext,
        id: McpServerId,
    ) -> Result<Committed, EngineError> {
        super::lookup::refresh_tools(&self.inner, ctx, id).await
    }

    /// Pings a server over MCP and records its health.
    pub async fn check_health(
        &self,
        ctx: &CommandContext,
        id: McpServerId,
    ) -> Result<Committed, EngineError> {
        super::health::check_one(&self.inner, ctx, id, true).await
    }

    /// Runs a driver for an execution this worker holds, if a slot is free;
    /// otherwise gives it back to the queue, due now.
    pub(crate) fn drive(&self, id: String, tenant: TenantId, fresh_start: bool) {
        match self.claim_driver(&id, tenant) {
            Claim::Driver(driver, permit) => self.spawn_driver(*driver, permit, fresh_start),
            Claim::Busy => {}
            Claim::NoSlot => {
                let inner = self.inner.clone();
                tokio::spawn(async move {
                    let _ = inner
                        .work
                        .release(&id, &inner.config.worker_id, Some(Utc::now()))
                        .await;
                });
            }
        }
    }

    /// A driver for `id` on this worker, holding one of its slots and
    /// registered as running it.
    fn claim_driver(&self, id: &str, tenant: TenantId) -> Claim {
        let inner = &self.inner;
        let Ok(permit) = inner.slots.clone().try_acquire_owned() else {
            return Claim::NoSlot;
        };
        let notify = Arc::new(Notify::new());
        let cancel = inner.shutdown.child_token();
        {
            let mut running = inner.running.lock();
            if running.contains_key(id) {
                return Claim::Busy;
            }
            running.insert(
                id.to_string(),
                Running {
                    notify: notify.clone(),
                    cancel: cancel.clone(),
                },
            );
        }
        Claim::Driver(
            Box::new(Driver::new(
                self.clone(),
                id.to_string(),
                tenant,
                notify,
                cancel,
            )),
            permit,
        )
    }

    /// Runs a claimed driver until it is done, then gives its slot back.
    fn spawn_driver(&self, driver: Driver, permit: OwnedSemaphorePermit, fresh_start: bool) {
        let engine = self.clone();
        tokio::spawn(async move {
            let id = driver.id().to_string();
            driver.run(fresh_start).await;
            engine.inner.running.lock().remove(&id);
            drop(permit);
        });
    }
}

/// What [`Engine::claim_driver`] found.
enum Claim {
    /// A driver, with its slot.
    Driver(Box<Driver>, OwnedSemaphorePermit),
    /// A driver runs it here already.
    Busy,
    /// Every slot is taken.
    NoSlot,
}

/// An idempotency key is 1 to 200 printable characters.
fn check_idempotency_key(key: &str) -> Result<(), EngineError> {
    if key.is_empty()
        || key.chars().count() > MAX_IDEMPOTENCY_KEY_LEN
        || key.chars().any(char::is_control)
    {
        return Err(EngineError::Validation {
            field: "input.idempotencyKey",
            reason: format!(
                "an idempotency key is 1 to {MAX_IDEMPOTENCY_KEY_LEN} printable characters"
            ),
        });
    }
    Ok(())
}

/// A `std` duration as chrono's, saturating.
pub(crate) fn chrono_duration(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

/// Claims due executions and starts their drivers: woken by work
/// notifications (a start, a stop, a resume, from any replica), polling as
/// the fallback.
async fn worker_loop(engine: Engine) {
    let inner = engine.inner.clone();
    let mut notifications = inner.store.work();
    loop {
        let wait = match inner.work.next_due().await {
            Ok(Some(due)) => (due - Utc::now())
                .to_std()
                .unwrap_or(Duration::ZERO)
                .min(inner.config.poll_interval),
            _ => inner.config.poll_interval,
        };
        tokio::select! {
            _ = inner.shutdown.cancelled() => return,
            received = notifications.recv() => match received {
                Ok(id) => {
                    // A driver here: tell it; it reads the news itself.
                    let woke = inner.running.lock().get(&id).map(|r| r.notify.notify_one()).is_some();
                    if woke {
                        continue;
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    // Missed some: wake every driver here to be safe.
                    for running in inner.running.lock().values() {
                        running.notify.notify_one();
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            },
            _ = tokio::time::sleep(wait) => {}
        }
        claim(&engine).await;
    }
}

/// Claims as many due executions as there are free slots.
async fn claim(engine: &Engine) {
    let inner = &engine.inner;
    let free = inner.slots.available_permits();
    if free == 0 {
        return;
    }
    let now = Utc::now();
    let lease_until = now + chrono_duration(inner.config.lease);
    match inner
        .work
        .claim(
            &inner.config.worker_id,
            now,
            lease_until,
            free.min(64) as u32,
        )
        .await
    {
        Ok(claimed) => {
            for work in claimed {
                let Ok(tenant) = TenantId::parse(work.tenant) else {
                    let _ = inner.work.finish(&work.execution_id).await;
                    continue;
                };
                engine.drive(work.execution_id, tenant, false);
            }
        }
        Err(error) => tracing::warn!(%error, "could not claim executions"),
    }
}

/// Extends the leases of the executions this worker drives; a driver whose
/// lease was lost (taken over after it ran out) stops.
async fn heartbeat(engine: Engine) {
    let inner = engine.inner.clone();
    let every = (inner.config.lease / 3).max(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = inner.shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let ids: Vec<String> = inner.running.lock().keys().cloned().collect();
        if ids.is_empty() {
            continue;
        }
        let lease_until = Utc::now() + chrono_duration(inner.config.lease);
        match inner
            .work
            .heartbeat(&inner.config.worker_id, &ids, lease_until)
            .await
        {
            Ok(lost) => {
                let running = inner.running.lock();
                for id in &lost {
                    if let Some(r) = running.get(id) {
                        tracing::warn!(execution = %id, "lost the lease on an execution; stopping its driver");
                        r.cancel.cancel();
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "could not extend the engine's leases"),
        }
    }
}
