//! Executions: `executions` and `execution { steps }` (steps batched by a
//! DataLoader). Executions are started and driven by the engine, so this
//! module has no mutations yet.

use std::collections::HashMap;
use std::sync::Arc;

use async_graphql::connection::{Connection, EmptyFields};
use async_graphql::dataloader::Loader;
use async_graphql::{Context, Enum, InputObject, Object, SimpleObject, ID};
use chrono::{DateTime, Utc};
use toolhub_domain::{Role, TenantId};

use super::scalars::Json;
use super::{
    caller, connection, loaders, one, page_request, state, wait_for, Consistency, ReadBack,
};
use crate::error::ApiError;
use crate::read::{ExecutionFilter, ExecutionStepView, ExecutionView, ReadError, ReadModels};
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
    fn as_str(self) -> &'static str {
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

/// An execution of a workflow.
pub struct Execution(pub ExecutionView);

#[Object]
impl Execution {
    /// The execution's id.
    async fn id(&self) -> ID {
        ID(self.0.id.clone())
    }
    /// The workflow it runs.
    async fn workflow_id(&self) -> ID {
        ID(self.0.workflow_id.clone())
    }
    /// The workflow version it is pinned to.
    async fn workflow_version(&self) -> u64 {
        self.0.workflow_version
    }
    /// Where it stands.
    async fn status(&self) -> async_graphql::Result<ExecutionStatus> {
        Ok(ExecutionStatus::parse(&self.0.status)?)
    }
    /// What started it: `manual`, `cron` or `webhook`.
    async fn trigger(&self) -> &str {
        &self.0.trigger
    }
    /// Its input.
    async fn input(&self) -> Json {
        async_graphql::Json(self.0.input.clone())
    }
    /// Its output, once completed.
    async fn output(&self) -> Option<Json> {
        self.0.output.clone().map(async_graphql::Json)
    }
    /// Its error, once failed or cancelled.
    async fn error(&self) -> Option<&str> {
        self.0.error.as_deref()
    }
    /// The entity's version.
    async fn version(&self) -> u64 {
        self.0.aggregate_version
    }
    /// Who started it.
    async fn started_by(&self) -> &str {
        &self.0.started_by
    }
    /// When it started.
    async fn started_at(&self) -> DateTime<Utc> {
        self.0.started_at
    }
    /// When it ended.
    async fn finished_at(&self) -> Option<DateTime<Utc>> {
        self.0.finished_at
    }
    /// When it last changed.
    async fn updated_at(&self) -> DateTime<Utc> {
        self.0.updated_at
    }
    /// Every attempt of every node, in order.
    async fn steps(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<ExecutionStep>> {
        caller(ctx, Role::Viewer)?;
        Ok(loaders(ctx)?
            .steps
            .load_one(self.0.id.clone())
            .await?
            .unwrap_or_default())
    }
}

/// One attempt of one node.
#[derive(SimpleObject, Clone)]
pub struct ExecutionStep {
    /// The node's id.
    node_id: String,
    /// The attempt, from 1.
    attempt: u32,
    /// `scheduled`, `running`, `succeeded` or `failed`.
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
        }
    }
}

/// Loads the steps of many executions in one query.
pub struct StepLoader {
    /// The read models the batch is read from.
    pub(crate) state: Arc<AppState>,
    /// The caller's tenant: every batch is read within it.
    pub(crate) tenant: TenantId,
}

impl Loader<String> for StepLoader {
    type Value = Vec<ExecutionStep>;
    type Error = async_graphql::Error;

    async fn load(&self, keys: &[String]) -> Result<HashMap<String, Self::Value>, Self::Error> {
        let steps = self
            .state
            .read
            .execution_steps(&self.tenant, keys)
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
}

/// Execution queries.
#[derive(Default)]
pub struct ExecutionQuery;

impl ReadBack for Execution {
    const AGGREGATE: &'static str = "execution";

    async fn read_back(
        read: &ReadModels,
        tenant: &TenantId,
        id: &str,
    ) -> Result<Option<Self>, ReadError> {
        Ok(read.execution(tenant, id).await?.map(Execution))
    }
}

#[Object]
impl ExecutionQuery {
    /// The tenant's executions, newest first.
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
        };
        let page = state
            .read
            .executions(&caller.tenant, &page, &filter)
            .await
            .map_err(ApiError::from)?;
        Ok(connection(page, had_cursor, Execution))
    }

    /// One execution. Another tenant's execution is `NOT_FOUND`.
    async fn execution(
        &self,
        ctx: &Context<'_>,
        id: ID,
        consistency: Option<Consistency>,
    ) -> async_graphql::Result<Option<Execution>> {
        one::<Execution>(ctx, Role::Viewer, &id, consistency).await
    }
}
