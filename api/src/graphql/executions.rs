//! Executions: `executions`, `execution { steps nodes }` (steps batched by
//! a DataLoader; `nodes` planned from the execution's own state), and the
//! engine's mutations: start, stop, resume (or step), breakpoints.

use std::collections::HashMap;
use std::sync::Arc;

use async_graphql::connection::{Connection, EmptyFields};
use async_graphql::dataloader::Loader;
use async_graphql::{Context, Enum, InputObject, Object, SimpleObject, ID};
use chrono::{DateTime, Utc};
use toolhub_domain::execution::{plan, NodeState};
use toolhub_domain::{AggregateRoot, ExecutionId, Role, TenantId, WorkflowId};
use toolhub_engine::StartRequest;

use super::scalars::Json;
use super::{
    caller, command_context, connection, loaders, one, page_request, parse_id, state, wait_for,
    written, Consistency, ReadBack, Written,
};
use crate::error::ApiError;
use crate::read::{
    Documents, ExecutionFilter, ExecutionStepView, ExecutionView, ReadError, ReadModels,
};
use crate::state::AppState;

/// Where an execution stands.
#[derive(Enum, Copy, Clone, Debug, PartialEq, Eq)]
pub enum ExecutionStatus {
    /// Running.
    Running,
    /// Halted at a breakpoint.
    Paused,
    /// A stop was requested.
    Stopping,
    /// Ended early.
    Cancelled,
    /// Ended successfully.
    Completed,
    /// Ended on an error.
    Failed,
}

impl ExecutionStatus {
    /// The status as the read model spells it.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Stopping => "stopping",
            Self::Cancelled => "cancelled",
            Self::Completed => "completed",
            Self::Failed => "failed",
        }
    }

    fn parse(text: &str) -> Result<Self, ApiError> {
        Ok(match text {
            "running" => Self::Running,
            "paused" => Self::Paused,
            "stopping" => Self::Stopping,
            "cancelled" => Self::Cancelled,
            "completed" => Self::Completed,
            "failed" => Self::Failed,
            other => {
                return Err(ApiError::internal(format!(
                    "unknown execution status {other:?} in the read model"
                )))
            }
        })
    }
}

/// An execution of a workflow: as the read model shows it today, or as of
/// a point of its history (`execution(id, asOf)`), when its steps, nodes
/// and timeline are those of then too.
pub struct Execution {
    /// The execution's row (shared by every subscriber it is sent to).
    pub(crate) view: Arc<ExecutionView>,
    /// For an as-of read: the execution then, which `steps`, `nodes`,
    /// `timeline` and `at` show instead of today's.
    as_of: Option<Arc<crate::read::as_of::ExecutionAsOf>>,
    /// Whether `view` holds the input and output: a list whose query
    /// selects neither reads the rows without them.
    documents: Documents,
    /// Its steps, when they were read with it: for a subscription, once for
    /// every subscriber (see `crate::state::Fanout`).
    steps: Option<Arc<Vec<ExecutionStepView>>>,
}

impl From<ExecutionView> for Execution {
    fn from(view: ExecutionView) -> Self {
        Arc::new(view).into()
    }
}

impl From<Arc<ExecutionView>> for Execution {
    fn from(view: Arc<ExecutionView>) -> Self {
        Self {
            view,
            as_of: None,
            documents: Documents::Included,
            steps: None,
        }
    }
}

/// Whether a list of executions must read their inputs and outputs.
fn execution_documents(node: async_graphql::Lookahead<'_>) -> Documents {
    if node.field("input").exists() || node.field("output").exists() {
        Documents::Included
    } else {
        Documents::Skipped
    }
}

impl From<crate::read::as_of::ExecutionAsOf> for Execution {
    fn from(then: crate::read::as_of::ExecutionAsOf) -> Self {
        Self {
            view: Arc::new(then.view.clone()),
            as_of: Some(Arc::new(then)),
            documents: Documents::Included,
            steps: None,
        }
    }
}

#[Object]
impl Execution {
    /// The execution's id.
    async fn id(&self) -> ID {
        ID(self.view.id.clone())
    }
    /// The workflow it runs.
    async fn workflow_id(&self) -> ID {
        ID(self.view.workflow_id.clone())
    }
    /// The workflow version it is pinned to.
    async fn workflow_version(&self) -> u64 {
        self.view.workflow_version
    }
    /// Where it stands.
    async fn status(&self) -> async_graphql::Result<ExecutionStatus> {
        Ok(ExecutionStatus::parse(&self.view.status)?)
    }
    /// What started it: `manual`, `cron` or `webhook`.
    async fn trigger(&self) -> &str {
        &self.view.trigger
    }
    /// Its input.
    async fn input(&self) -> async_graphql::Result<Json> {
        Ok(async_graphql::Json(self.with_documents()?.input.clone()))
    }
    /// Its output, once completed.
    async fn output(&self) -> async_graphql::Result<Option<Json>> {
        Ok(self
            .with_documents()?
            .output
            .clone()
            .map(async_graphql::Json))
    }
    /// Its error, once failed or cancelled.
    async fn error(&self) -> Option<&str> {
        self.view.error.as_deref()
    }
    /// The entity's version.
    async fn version(&self) -> u64 {
        self.view.aggregate_version
    }
    /// Who started it.
    async fn started_by(&self) -> &str {
        &self.view.started_by
    }
    /// When it started.
    async fn started_at(&self) -> DateTime<Utc> {
        self.view.started_at
    }
    /// When it ended.
    async fn finished_at(&self) -> Option<DateTime<Utc>> {
        self.view.finished_at
    }
    /// When it last changed.
    async fn updated_at(&self) -> DateTime<Utc> {
        self.view.updated_at
    }
    /// The node it is paused before, while paused.
    async fn paused_at(&self) -> Option<&str> {
        self.view.paused_at.as_deref()
    }
    /// The nodes it pauses before.
    async fn breakpoints(&self) -> Vec<String> {
        self.view
            .breakpoints
            .as_array()
            .map(|ids| {
                ids.iter()
                    .filter_map(|id| id.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }
    /// When the whole run times out, if ever.
    async fn deadline(&self) -> Option<DateTime<Utc>> {
        self.view.deadline
    }
    /// For a fork (`forkExecution`): the execution it was forked from and
    /// the node it ran live from; null otherwise.
    async fn forked_from(&self) -> Option<ForkOrigin> {
        Some(ForkOrigin {
            execution_id: self.view.forked_from.clone()?,
            from_node: self.view.forked_from_node.clone().unwrap_or_default(),
        })
    }
    /// The executions forked from this one, newest first.
    #[graphql(
        complexity = "crate::graphql::page_cost(first, crate::read::MAX_PAGE, child_complexity)"
    )]
    async fn forks(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
    ) -> async_graphql::Result<Connection<String, Execution, EmptyFields, EmptyFields>> {
        let caller = caller(ctx, Role::Viewer)?;
        let state = state(ctx)?;
        let had_cursor = after.is_some();
        let page = page_request(first, after)?;
        let filter = ExecutionFilter {
            forked_from: Some(self.view.id.clone()),
            ..ExecutionFilter::default()
        };
        let documents = super::listed_documents(ctx, execution_documents);
        let page = state
            .read
            .executions(&caller.tenant, &page, &filter, documents)
            .await
            .map_err(ApiError::from)?;
        Ok(connection(page, had_cursor, Execution::listed(documents)))
    }
    /// Every node of the pinned workflow version and where it stands — what
    /// a debugger shows at a glance: ready, running, done, skipped, failed
    /// or pending. Planned from the execution's own history, by the same
    /// code the engine decides with.
    async fn nodes(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<ExecutionNode>> {
        let caller = caller(ctx, Role::Viewer)?;
        let state = state(ctx)?;
        let execution = match &self.as_of {
            Some(then) => then.state.clone(),
            None => {
                state
                    .executions
                    .current(&self.view.id)
                    .await
                    .map_err(ApiError::from)?
                    .0
            }
        };
        if execution.tenant() != Some(&caller.tenant) {
            return Err(ApiError::NotFound.into());
        }
        let workflow_id = execution.workflow_id().ok_or(ApiError::NotFound)?;
        let (workflow, _) = state
            .workflows
            .current(&workflow_id.to_string())
            .await
            .map_err(ApiError::from)?;
        let definition = workflow
            .definition(execution.workflow_version())
            .ok_or(ApiError::NotFound)?;
        let planned = plan(definition, &execution);
        Ok(planned
            .nodes
            .into_iter()
            .map(|(id, node_state)| {
                let attempt = execution.latest_attempt(id.as_str()).map(|(a, _)| a);
                ExecutionNode {
                    id: id.to_string(),
                    state: NodeStateValue::from(node_state),
                    attempt,
                    breakpoint: execution.breakpoints().contains(id.as_str()),
                }
            })
            .collect())
    }
    /// Every event of the run, in order, each with the run as it stood
    /// right after it: status, where each node stood, the outputs so far.
    /// What a debugger's slider steps through. At most `first` (default
    /// 100, at most 500) entries from the `offset`-th (default 0).
    #[graphql(complexity = "crate::graphql::steps_cost(first, child_complexity)")]
    async fn timeline(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        offset: Option<i32>,
    ) -> async_graphql::Result<Vec<TimelineEntry>> {
        let first = match first {
            None => DEFAULT_STEPS,
            Some(n) if n >= 1 => (n as usize).min(MAX_STEPS),
            Some(_) => return Err(ApiError::validation("first", "must be at least 1").into()),
        };
        let offset = match offset {
            None => 0,
            Some(n) if n >= 0 => n as usize,
            Some(_) => return Err(ApiError::validation("offset", "must not be negative").into()),
        };
        let until = self.until();
        let entries =
            timeline(ctx, &self.view.id, self.recorded(), |e| e.sequence <= until).await?;
        Ok(entries.into_iter().skip(offset).take(first).collect())
    }
    /// The run as it stood right after its event `sequence` (from 1), or
    /// after the last event recorded at or before `time`: exactly one of
    /// the two. `null` before its first event.
    async fn at(
        &self,
        ctx: &Context<'_>,
        sequence: Option<i32>,
        time: Option<DateTime<Utc>>,
    ) -> async_graphql::Result<Option<TimelineEntry>> {
        let entries = match (sequence, time) {
            (Some(sequence), None) if sequence >= 1 => {
                let sequence = (sequence as u64).min(self.until());
                timeline(ctx, &self.view.id, self.recorded(), |e| {
                    e.sequence <= sequence
                })
                .await?
            }
            (Some(_), None) => {
                return Err(ApiError::validation("sequence", "must be at least 1").into())
            }
            (None, Some(time)) => {
                let until = self.until();
                timeline(ctx, &self.view.id, self.recorded(), |e| {
                    e.recorded_at <= time && e.sequence <= until
                })
                .await?
            }
            _ => {
                return Err(
                    ApiError::validation("at", "give exactly one of sequence or time").into(),
                )
            }
        };
        Ok(entries.into_iter().last())
    }
    /// The attempts of the nodes, in order: at most `first` (default 100,
    /// at most 500) from the `offset`-th (default 0). Steps are only ever
    /// added at the end, so paging by offset is stable.
    #[graphql(complexity = "crate::graphql::steps_cost(first, child_complexity)")]
    async fn steps(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        offset: Option<i32>,
    ) -> async_graphql::Result<Vec<ExecutionStep>> {
        caller(ctx, Role::Viewer)?;
        let first = match first {
            None => DEFAULT_STEPS,
            Some(n) if n < 1 => {
                return Err(ApiError::validation("first", "must be at least 1").into())
            }
            Some(n) => (n as usize).min(MAX_STEPS),
        };
        let offset = match offset {
            None => 0,
            Some(n) if n < 0 => {
                return Err(ApiError::validation("offset", "must not be negative").into())
            }
            Some(n) => n as usize,
        };
        let known = match (&self.as_of, &self.steps) {
            (Some(then), _) => Some(then.steps.as_slice()),
            (None, Some(steps)) => Some(steps.as_slice()),
            (None, None) => None,
        };
        if let Some(steps) = known {
            return Ok(steps
                .iter()
                .skip(offset)
                .take(first)
                .cloned()
                .map(ExecutionStep::from)
                .collect());
        }
        // Inputs and outputs are read only when the query selects them.
        let selection = ctx.look_ahead();
        let loaders = loaders(ctx)?;
        let loader = if selection.field("input").exists() || selection.field("output").exists() {
            &loaders.steps
        } else {
            &loaders.step_summaries
        };
        Ok(loader
            .load_one(self.view.id.clone())
            .await?
            .unwrap_or_default()
            .into_iter()
            .skip(offset)
            .take(first)
            .collect())
    }
}

impl Execution {
    /// An execution with its steps, read already.
    pub(crate) fn with_steps(view: Arc<ExecutionView>, steps: Arc<Vec<ExecutionStepView>>) -> Self {
        Self {
            steps: Some(steps),
            ..Self::from(view)
        }
    }

    /// A row a list read with or without its documents.
    fn listed(documents: Documents) -> impl Fn(ExecutionView) -> Self {
        move |view| Self {
            view: Arc::new(view),
            as_of: None,
            documents,
            steps: None,
        }
    }

    /// The row, when it holds its input and output (see
    /// [`super::read_documents`]).
    fn with_documents(&self) -> Result<&ExecutionView, ApiError> {
        super::read_documents(self.documents).map(|()| &*self.view)
    }

    /// For an as-of read, its events up to the point, read already.
    fn recorded(&self) -> Option<&[toolhub_eventstore::RecordedEvent]> {
        self.as_of.as_ref().map(|then| then.events.as_slice())
    }

    /// The last of its events this shows: its version (all of them, for
    /// today's; those up to the point, for an as-of read).
    fn until(&self) -> u64 {
        match &self.as_of {
            Some(_) => self.view.aggregate_version,
            None => u64::MAX,
        }
    }
}

/// How many steps `steps` returns when `first` is not given.
pub(crate) const DEFAULT_STEPS: usize = 100;

/// The most steps one `steps` returns.
pub(crate) const MAX_STEPS: usize = 500;

/// Where a node of an execution stands.
#[derive(Enum, Copy, Clone, Debug, PartialEq, Eq)]
#[graphql(name = "NodeState")]
pub enum NodeStateValue {
    /// Waiting for nodes before it.
    Pending,
    /// Its turn has come.
    Ready,
    /// Scheduled (a retry may be waiting for its time).
    Scheduled,
    /// Running.
    Running,
    /// Succeeded.
    Done,
    /// Its latest attempt failed.
    Failed,
    /// On a branch not taken.
    Skipped,
}

impl From<NodeState> for NodeStateValue {
    fn from(state: NodeState) -> Self {
        match state {
            NodeState::Pending => Self::Pending,
            NodeState::Ready => Self::Ready,
            NodeState::Scheduled => Self::Scheduled,
            NodeState::Running => Self::Running,
            NodeState::Done => Self::Done,
            NodeState::Failed => Self::Failed,
            NodeState::Skipped => Self::Skipped,
        }
    }
}

/// One event of an execution, and the execution as it stood after it.
#[derive(SimpleObject)]
pub struct TimelineEntry {
    /// The event's sequence in the execution, from 1.
    sequence: u64,
    /// Where the event is in the log.
    position: String,
    /// The event's type (`ExecutionStarted`, `StepSucceeded`, …).
    event_type: String,
    /// When it was recorded.
    recorded_at: DateTime<Utc>,
    /// Who caused it (`engine` for the engine's moves).
    actor: String,
    /// The event's payload, as recorded (secrets masked).
    payload: Json,
    /// The execution's status after it.
    status: ExecutionStatus,
    /// The node it was paused before, if it was.
    paused_at: Option<String>,
    /// Where every node stood after it.
    nodes: Vec<ExecutionNode>,
    /// The outputs of the nodes done so far, by node id.
    outputs: Json,
}

fn status_of(status: toolhub_domain::execution::ExecutionStatus) -> ExecutionStatus {
    use toolhub_domain::execution::ExecutionStatus as S;
    match status {
        S::Running => ExecutionStatus::Running,
        S::Paused => ExecutionStatus::Paused,
        S::Stopping => ExecutionStatus::Stopping,
        S::Cancelled => ExecutionStatus::Cancelled,
        S::Completed => ExecutionStatus::Completed,
        S::Failed => ExecutionStatus::Failed,
    }
}

/// The timeline of execution `id` for the caller: its events (`recorded`
/// when they were read already) that `keep` keeps (a prefix of them), each
/// with the execution folded up to it by the domain and planned by the
/// engine's own planner.
async fn timeline(
    ctx: &Context<'_>,
    id: &str,
    recorded: Option<&[toolhub_eventstore::RecordedEvent]>,
    keep: impl Fn(&toolhub_eventstore::RecordedEvent) -> bool,
) -> async_graphql::Result<Vec<TimelineEntry>> {
    use cqrs_es::Aggregate;
    let caller = caller(ctx, Role::Viewer)?;
    let state = state(ctx)?;
    let events = match recorded {
        Some(events) => events.to_vec(),
        None => state
            .store
            .stream("execution", id)
            .await
            .map_err(ApiError::from)?,
    };
    let mut execution = toolhub_domain::execution::Execution::default();
    let mut workflow: Option<toolhub_domain::workflow::Workflow> = None;
    let mut entries = Vec::new();
    for event in events {
        if !keep(&event) {
            break;
        }
        let payload = serde_json::from_value(event.payload.clone())
            .map_err(|e| ApiError::internal(format!("an execution event does not decode: {e}")))?;
        execution.apply(payload);
        if execution.tenant() != Some(&caller.tenant) {
            return Err(ApiError::NotFound.into());
        }
        if workflow.is_none() {
            let workflow_id = execution.workflow_id().ok_or(ApiError::NotFound)?;
            let (folded, _) = state
                .workflows
                .current(&workflow_id.to_string())
                .await
                .map_err(ApiError::from)?;
            workflow = Some(folded);
        }
        let definition = workflow
            .as_ref()
            .and_then(|w| w.definition(execution.workflow_version()))
            .ok_or(ApiError::NotFound)?;
        let planned = plan(definition, &execution);
        let nodes = planned
            .nodes
            .into_iter()
            .map(|(node, node_state)| ExecutionNode {
                attempt: execution.latest_attempt(node.as_str()).map(|(a, _)| a),
                breakpoint: execution.breakpoints().contains(node.as_str()),
                id: node.to_string(),
                state: NodeStateValue::from(node_state),
            })
            .collect();
        let outputs = serde_json::to_value(execution.outputs()).map_err(ApiError::internal)?;
        entries.push(TimelineEntry {
            sequence: event.sequence,
            position: event.position.to_string(),
            event_type: event.event_type,
            recorded_at: event.recorded_at,
            actor: event.metadata.actor,
            payload: async_graphql::Json(event.payload),
            status: execution
                .status()
                .map(status_of)
                .unwrap_or(ExecutionStatus::Running),
            paused_at: execution.paused_at().map(ToString::to_string),
            nodes,
            outputs: async_graphql::Json(outputs),
        });
    }
    Ok(entries)
}

/// One node of an execution, for a debugger.
#[derive(SimpleObject)]
pub struct ExecutionNode {
    /// The node's id.
    id: String,
    /// Where it stands.
    state: NodeStateValue,
    /// Its latest attempt, if any.
    attempt: Option<u32>,
    /// Whether the execution pauses before it.
    breakpoint: bool,
}

/// One attempt of one node.
#[derive(SimpleObject, Clone)]
pub struct ExecutionStep {
    /// The node's id.
    node_id: String,
    /// The attempt, from 1.
    attempt: u32,
    /// `scheduled`, `running`, `succeeded`, `failed`, or `skipped` (a node
    /// on a branch not taken, shown as attempt 0).
    status: String,
    /// The node's input, secrets masked.
    input: Json,
    /// The node's output, once succeeded.
    output: Option<Json>,
    /// The error, once failed.
    error: Option<String>,
    /// When it was scheduled.
    scheduled_at: DateTime<Utc>,
    /// When it started.
    started_at: Option<DateTime<Utc>>,
    /// When it finished.
    finished_at: Option<DateTime<Utc>>,
    /// For a step a fork copied from its original: the position of the
    /// original's event it was copied from; null for a step that ran here.
    copied_from: Option<String>,
}

impl From<ExecutionStepView> for ExecutionStep {
    fn from(v: ExecutionStepView) -> Self {
        Self {
            node_id: v.node_id,
            attempt: v.attempt,
            status: v.status,
            input: async_graphql::Json(v.input),
            output: v.output.map(async_graphql::Json),
            error: v.error,
            scheduled_at: v.scheduled_at,
            started_at: v.started_at,
            finished_at: v.finished_at,
            copied_from: v.copied_from,
        }
    }
}

/// Loads the steps of many executions in one query.
pub struct StepLoader {
    /// The read models the batch is read from.
    pub(crate) state: Arc<AppState>,
    /// The caller's tenant: every batch is read within it.
    pub(crate) tenant: TenantId,
    /// With or without the steps' inputs and outputs.
    pub(crate) documents: Documents,
}

impl Loader<String> for StepLoader {
    type Value = Vec<ExecutionStep>;
    type Error = async_graphql::Error;

    async fn load(&self, keys: &[String]) -> Result<HashMap<String, Self::Value>, Self::Error> {
        let steps = self
            .state
            .read
            .execution_steps(&self.tenant, keys, self.documents)
            .await
            .map_err(ApiError::from)?;
        let mut by_execution: HashMap<String, Vec<ExecutionStep>> = HashMap::new();
        for step in steps {
            by_execution
                .entry(step.execution_id.clone())
                .or_default()
                .push(step.into());
        }
        Ok(by_execution)
    }
}

/// Filters for `executions`.
#[derive(InputObject, Default)]
pub struct ExecutionFilterInput {
    /// Only executions of this workflow.
    workflow_id: Option<ID>,
    /// Only executions in this status.
    status: Option<ExecutionStatus>,
    /// Only the forks of this execution.
    forked_from: Option<ID>,
}

/// Execution queries.
#[derive(Default)]
pub struct ExecutionQuery;

impl ReadBack for Execution {
    const AGGREGATE: &'static str = "execution";
    const FIELD: &'static str = "execution";

    async fn read_back(
        read: &ReadModels,
        tenant: &TenantId,
        id: &str,
    ) -> Result<Option<Self>, ReadError> {
        Ok(read.execution(tenant, id).await?.map(Execution::from))
    }
}

#[Object]
impl ExecutionQuery {
    /// The tenant's executions, newest first.
    #[graphql(
        complexity = "crate::graphql::page_cost(first, crate::read::MAX_PAGE, child_complexity)"
    )]
    async fn executions(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
        filter: Option<ExecutionFilterInput>,
        consistency: Option<Consistency>,
    ) -> async_graphql::Result<Connection<String, Execution, EmptyFields, EmptyFields>> {
        let caller = caller(ctx, Role::Viewer)?;
        let state = state(ctx)?;
        wait_for(state, consistency).await?;
        let had_cursor = after.is_some();
        let page = page_request(first, after)?;
        let filter = filter.unwrap_or_default();
        let filter = ExecutionFilter {
            workflow_id: filter.workflow_id.map(|id| id.0),
            status: filter.status.map(|s| s.as_str().to_string()),
            forked_from: filter.forked_from.map(|id| id.0),
        };
        let documents = super::listed_documents(ctx, execution_documents);
        let page = state
            .read
            .executions(&caller.tenant, &page, &filter, documents)
            .await
            .map_err(ApiError::from)?;
        Ok(connection(page, had_cursor, Execution::listed(documents)))
    }

    /// Replays an execution without side effects: the engine's decisions
    /// re-taken over the recorded events and step outputs, against the
    /// pinned workflow version, with no tool call, no HTTP request and no
    /// secret unsealed. Reports whether the same steps, in the same order,
    /// with the same inputs, would be taken today, and names every
    /// divergence by node and reason (see `docs/time-travel.md`). Another
    /// tenant's execution is `NOT_FOUND`.
    async fn replay_execution(
        &self,
        ctx: &Context<'_>,
        id: ID,
    ) -> async_graphql::Result<ReplayReport> {
        let caller = caller(ctx, Role::Viewer)?;
        let execution = parse_id(&id, "id").map(ExecutionId::from_uuid)?;
        let report = state(ctx)?
            .engine
            .replay(&caller.tenant, execution, &toolhub_engine::expr::Cel)
            .await
            .map_err(ApiError::from)?;
        Ok(ReplayReport::new(execution, report))
    }

    /// One execution. Another tenant's execution is `NOT_FOUND`. With
    /// `asOf`, the execution as its events up to that point made it: its
    /// status, its `steps`, its `nodes` and its `timeline` are those of
    /// then (`forks` lists today's forks).
    async fn execution(
        &self,
        ctx: &Context<'_>,
        id: ID,
        consistency: Option<Consistency>,
        as_of: Option<super::scalars::AsOf>,
    ) -> async_graphql::Result<Option<Execution>> {
        let Some(as_of) = as_of else {
            return one::<Execution>(ctx, Role::Viewer, &id, consistency).await;
        };
        let caller = caller(ctx, Role::Viewer)?;
        let moment = as_of.moment()?;
        let then =
            crate::read::as_of::execution(&state(ctx)?.store, Some(&caller.tenant), &id, moment)
                .await
                .map_err(ApiError::from)?
                .ok_or(ApiError::NotFound)?;
        Ok(Some(Execution::from(then)))
    }
}

/// What an execution mutation did.
#[derive(SimpleObject)]
pub struct ExecutionPayload {
    /// The execution's id.
    id: ID,
    /// The execution's version after the mutation.
    version: u64,
    /// The position of the mutation's last event; pass it as
    /// `consistency: {atLeast: …}` to read your write.
    position: String,
    /// The execution as the read model shows it after the mutation; null
    /// only when the read model did not catch up within the bound.
    execution: Option<Execution>,
}

impl From<Written<Execution>> for ExecutionPayload {
    fn from(w: Written<Execution>) -> Self {
        Self {
            id: w.id,
            version: w.version,
            position: w.position,
            execution: w.entity,
        }
    }
}

/// `startExecution` input.
#[derive(InputObject)]
pub struct StartExecutionInput {
    /// The workflow to run, at its current version.
    workflow_id: ID,
    /// The input, read by templates as `{{input…}}`.
    input: Option<Json>,
    /// Nodes to pause before, for debugging.
    breakpoints: Option<Vec<String>>,
    /// The same key within 24 hours returns the first execution instead of
    /// starting another.
    idempotency_key: Option<String>,
}

/// Where a fork comes from.
#[derive(SimpleObject)]
#[graphql(complex)]
pub struct ForkOrigin {
    /// The id of the execution it was forked from.
    execution_id: String,
    /// The node it ran live from: the nodes before it were copied.
    from_node: String,
}

#[async_graphql::ComplexObject]
impl ForkOrigin {
    /// The execution it was forked from.
    async fn execution(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<Execution>> {
        one::<Execution>(ctx, Role::Viewer, &self.execution_id, None).await
    }
}

/// `forkExecution` input.
#[derive(InputObject)]
pub struct ForkExecutionInput {
    /// The execution to fork.
    id: ID,
    /// The node to run live from. Every node that is neither this one nor
    /// after it, and that succeeded or was skipped in the original, is
    /// copied from it.
    from_node: String,
    /// Replaces the execution's input; the original's when absent.
    input_override: Option<Json>,
    /// Replaces copied outputs: an object of node id to output. Only
    /// copied (succeeded) nodes may be named.
    output_overrides: Option<Json>,
}

/// `stopExecution` input.
#[derive(InputObject)]
pub struct ExecutionIdInput {
    /// The execution.
    id: ID,
}

/// `resumeExecution` input.
#[derive(InputObject)]
pub struct ResumeExecutionInput {
    /// The execution.
    id: ID,
    /// Run the nodes that are ready and pause again before the next ones
    /// (step over) instead of continuing.
    step: Option<bool>,
}

/// `setExecutionBreakpoints` input.
#[derive(InputObject)]
pub struct SetExecutionBreakpointsInput {
    /// The execution.
    id: ID,
    /// The nodes to pause before, replacing the current ones.
    breakpoints: Vec<String>,
}

/// Execution mutations (editors and admins).
#[derive(Default)]
pub struct ExecutionMutation;

fn execution_id(id: &ID) -> Result<ExecutionId, ApiError> {
    parse_id(id, "input.id").map(ExecutionId::from_uuid)
}

/// Answers an execution mutation.
async fn payload(
    ctx: &Context<'_>,
    id: ExecutionId,
    result: Result<toolhub_eventstore::Committed, ApiError>,
) -> async_graphql::Result<ExecutionPayload> {
    Ok(written::<Execution>(ctx, id.to_string(), result)
        .await?
        .into())
}

#[Object]
impl ExecutionMutation {
    /// Starts an execution of a workflow's current version, and returns at
    /// once; watch it with `executionUpdated`.
    async fn start_execution(
        &self,
        ctx: &Context<'_>,
        input: StartExecutionInput,
    ) -> async_graphql::Result<ExecutionPayload> {
        let caller = caller(ctx, Role::Editor)?;
        let state = state(ctx)?;
        let workflow_id =
            parse_id(&input.workflow_id, "input.workflowId").map(WorkflowId::from_uuid)?;
        let request = StartRequest {
            workflow_id,
            input: input
                .input
                .map(|j| j.0)
                .unwrap_or(serde_json::Value::Object(Default::default())),
            breakpoints: input.breakpoints.unwrap_or_default(),
            idempotency_key: input.idempotency_key,
            trigger: "manual".into(),
            source: None,
        };
        let context = command_context(ctx, caller);
        let started = state
            .engine
            .start(&context, request)
            .await
            .map_err(ApiError::from)?;
        payload(ctx, started.execution_id, Ok(started.committed)).await
    }

    /// Forks an execution: a new execution of the same pinned workflow
    /// version that copies the original's steps before `fromNode` (those
    /// that succeeded or were skipped; recorded as copied, with the
    /// original's positions), then runs live from there, with
    /// `inputOverride` and `outputOverrides` replacing the input and copied
    /// outputs. The original may be in any status: what it recorded so far
    /// is copied. Returns at once; watch it with `executionUpdated`.
    async fn fork_execution(
        &self,
        ctx: &Context<'_>,
        input: ForkExecutionInput,
    ) -> async_graphql::Result<ExecutionPayload> {
        let caller = caller(ctx, Role::Editor)?;
        let state = state(ctx)?;
        let request = toolhub_engine::ForkRequest {
            execution_id: execution_id(&input.id)?,
            from_node: input.from_node,
            input_override: input.input_override.map(|j| j.0),
            output_overrides: input.output_overrides.map(|j| j.0),
        };
        let context = command_context(ctx, caller);
        let started = state
            .engine
            .fork(&context, request)
            .await
            .map_err(ApiError::from)?;
        payload(ctx, started.execution_id, Ok(started.committed)).await
    }

    /// Stops an execution: nothing new starts, steps in flight are
    /// cancelled, and it ends `cancelled`.
    async fn stop_execution(
        &self,
        ctx: &Context<'_>,
        input: ExecutionIdInput,
    ) -> async_graphql::Result<ExecutionPayload> {
        let caller = caller(ctx, Role::Editor)?;
        let id = execution_id(&input.id)?;
        let context = command_context(ctx, caller);
        let result = state(ctx)?
            .engine
            .stop(&context, id)
            .await
            .map_err(ApiError::from);
        payload(ctx, id, result).await
    }

    /// Resumes a paused execution; with `step: true`, runs the ready nodes
    /// and pauses again before the next ones.
    async fn resume_execution(
        &self,
        ctx: &Context<'_>,
        input: ResumeExecutionInput,
    ) -> async_graphql::Result<ExecutionPayload> {
        let caller = caller(ctx, Role::Editor)?;
        let id = execution_id(&input.id)?;
        let context = command_context(ctx, caller);
        let result = state(ctx)?
            .engine
            .resume(&context, id, input.step.unwrap_or(false))
            .await
            .map_err(ApiError::from);
        payload(ctx, id, result).await
    }

    /// Replaces an execution's breakpoints (for example while it is
    /// paused).
    async fn set_execution_breakpoints(
        &self,
        ctx: &Context<'_>,
        input: SetExecutionBreakpointsInput,
    ) -> async_graphql::Result<ExecutionPayload> {
        let caller = caller(ctx, Role::Editor)?;
        let id = execution_id(&input.id)?;
        let context = command_context(ctx, caller);
        let result = state(ctx)?
            .engine
            .set_breakpoints(&context, id, input.breakpoints)
            .await
            .map_err(ApiError::from);
        payload(ctx, id, result).await
    }
}

/// What kind of decision differs between the record and the engine now.
#[derive(Enum, Copy, Clone, Debug, PartialEq, Eq)]
pub enum DivergenceKind {
    /// A step was recorded that the engine would not schedule now.
    UnexpectedStep,
    /// The run completed without a step the engine would run.
    MissingStep,
    /// A step was scheduled before one the engine schedules first.
    Order,
    /// A step's recorded input is not the one the engine computes.
    Input,
    /// A condition's or a transform's recorded result is not the one the
    /// engine computes.
    Output,
    /// A node skipped that the engine would not skip, or scheduled where
    /// the engine skips it.
    Skip,
    /// A retry the node's retry policy does not allow, or one it asks for
    /// that was not made.
    Retry,
    /// A pause before a node that was not ready.
    Pause,
    /// The run's recorded output differs.
    End,
}

impl From<toolhub_engine::replay::DivergenceKind> for DivergenceKind {
    fn from(kind: toolhub_engine::replay::DivergenceKind) -> Self {
        use toolhub_engine::replay::DivergenceKind as K;
        match kind {
            K::UnexpectedStep => Self::UnexpectedStep,
            K::MissingStep => Self::MissingStep,
            K::Order => Self::Order,
            K::Input => Self::Input,
            K::Output => Self::Output,
            K::Skip => Self::Skip,
            K::Retry => Self::Retry,
            K::Pause => Self::Pause,
            K::End => Self::End,
        }
    }
}

/// One decision that differs between the record and the engine now.
#[derive(SimpleObject)]
pub struct Divergence {
    /// The sequence (from 1) of the recorded event where it shows.
    sequence: u64,
    /// That event's position in the log.
    position: String,
    /// The node concerned; null for the run as a whole.
    node_id: Option<String>,
    /// What differs.
    kind: DivergenceKind,
    /// What the engine decides now (secrets stand as `***`).
    expected: Json,
    /// What was recorded.
    recorded: Json,
    /// Why they differ, in words.
    reason: String,
}

/// What `replayExecution` found.
#[derive(SimpleObject)]
pub struct ReplayReport {
    /// The execution replayed.
    execution_id: ID,
    /// The pinned workflow version it was replayed against.
    workflow_version: u64,
    /// How many step decisions were compared: every attempt scheduled,
    /// retried or skipped.
    steps_checked: u32,
    /// Whether the engine would take every recorded decision again.
    deterministic: bool,
    /// Every decision that differs, in the order of the record.
    divergences: Vec<Divergence>,
}

impl ReplayReport {
    fn new(id: ExecutionId, report: toolhub_engine::replay::ReplayReport) -> Self {
        Self {
            execution_id: ID(id.to_string()),
            workflow_version: report.workflow_version,
            steps_checked: report.steps_checked,
            deterministic: report.deterministic(),
            divergences: report
                .divergences
                .into_iter()
                .map(|d| Divergence {
                    sequence: d.sequence,
                    position: d.position,
                    node_id: d.node_id.map(|n| n.to_string()),
                    kind: d.kind.into(),
                    expected: async_graphql::Json(d.expected),
                    recorded: async_graphql::Json(d.recorded),
                    reason: d.reason,
                })
                .collect(),
        }
    }
}
