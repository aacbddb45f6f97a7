//! Workflows: `workflows`, `workflow { versions nextRuns }` and the
//! workflow mutations.

use std::collections::HashMap;
use std::sync::Arc;

use async_graphql::connection::{Connection, EmptyFields};
use async_graphql::dataloader::Loader;
use async_graphql::{Context, Enum, InputObject, Object, OneofObject, SimpleObject, ID};
use chrono::{DateTime, Utc};
use toolhub_domain::schedule::{next_runs, MissedFires};
use toolhub_domain::workflow::{Trigger, WorkflowCommand};
use toolhub_domain::{Role, TenantId, WorkflowId};

use super::scalars::Json;
use super::{
    caller, connection, loaders, one, page_request, parse_id, state, wait_for, Consistency,
};
use super::{execute, written, ReadBack, Written};
use crate::error::ApiError;
use crate::read::{
    Cursor, Documents, Page, PageRequest, WorkflowFilter, WorkflowVersionView, WorkflowView,
};
use crate::read::{ReadError, ReadModels};
use crate::state::AppState;

/// A workflow as it stands now.
pub struct Workflow {
    /// The workflow's row (shared by every subscriber it is sent to).
    view: Arc<WorkflowView>,
    /// Whether `view` holds the definition and triggers: a list whose
    /// query selects neither reads the rows without them.
    documents: Documents,
}

impl From<WorkflowView> for Workflow {
    fn from(view: WorkflowView) -> Self {
        Arc::new(view).into()
    }
}

impl From<Arc<WorkflowView>> for Workflow {
    fn from(view: Arc<WorkflowView>) -> Self {
        Self {
            view,
            documents: Documents::Included,
        }
    }
}

impl Workflow {
    /// A row a list read with or without its documents.
    fn listed(documents: Documents) -> impl Fn(WorkflowView) -> Self {
        move |view| Self {
            view: Arc::new(view),
            documents,
        }
    }

    /// The row, when it holds its documents (see
    /// [`super::read_documents`]).
    fn with_documents(&self) -> Result<&WorkflowView, ApiError> {
        super::read_documents(self.documents).map(|()| &*self.view)
    }
}

/// Whether a list of workflows must read their definitions and triggers:
/// whether the query selects a field that shows them.
pub(crate) fn workflow_documents(node: async_graphql::Lookahead<'_>) -> Documents {
    if ["definition", "triggers", "nextRuns"]
        .iter()
        .any(|field| node.field(field).exists())
    {
        Documents::Included
    } else {
        Documents::Skipped
    }
}

#[Object]
impl Workflow {
    /// The workflow's id.
    async fn id(&self) -> ID {
        ID(self.view.id.clone())
    }
    /// The display name.
    async fn name(&self) -> &str {
        &self.view.name
    }
    /// What the workflow is for.
    async fn description(&self) -> &str {
        &self.view.description
    }
    /// The current definition.
    async fn definition(&self) -> async_graphql::Result<Json> {
        Ok(async_graphql::Json(
            self.with_documents()?.definition.clone(),
        ))
    }
    /// The current definition's version number, from 1.
    async fn definition_version(&self) -> u64 {
        self.view.version
    }
    /// The entity's version: pass it as `expectedVersion` to change the
    /// workflow only if nobody else did in between.
    async fn version(&self) -> u64 {
        self.view.aggregate_version
    }
    /// Whether the workflow is archived.
    async fn archived(&self) -> bool {
        self.view.archived
    }
    /// The triggers (cron schedules, MCP tools), as recorded:
    /// `{"kind": "cron", "schedule", "timezone"?, "input"?, "missed"?}` or
    /// `{"kind": "mcp_tool", "name", "description", "input_schema"}`; a
    /// `{"kind": "webhook", "key"}` recorded before webhooks were made by
    /// `createWebhook` is shown as recorded and starts nothing. Webhooks are
    /// `webhooks`.
    async fn triggers(&self) -> async_graphql::Result<Json> {
        Ok(async_graphql::Json(self.with_documents()?.triggers.clone()))
    }
    /// The next times its cron triggers fire, merged and ascending
    /// (computed, not stored); none while it is archived.
    async fn next_runs(
        &self,
        #[graphql(desc = "How many (at most 100).")] count: i32,
    ) -> async_graphql::Result<Vec<DateTime<Utc>>> {
        if !(0..=100).contains(&count) {
            return Err(ApiError::validation("count", "count is from 0 to 100").into());
        }
        if self.view.archived {
            return Ok(Vec::new());
        }
        let triggers: Vec<Trigger> =
            serde_json::from_value(self.with_documents()?.triggers.clone()).unwrap_or_default();
        Ok(next_runs(&triggers, Utc::now(), count as usize))
    }
    /// Its webhooks, oldest first (never their secrets).
    async fn webhooks(
        &self,
        ctx: &Context<'_>,
    ) -> async_graphql::Result<Vec<super::webhooks::Webhook>> {
        caller(ctx, Role::Viewer)?;
        let hooks = loaders(ctx)?
            .webhooks
            .load_one(self.view.id.clone())
            .await?
            .unwrap_or_default();
        Ok(hooks.into_iter().map(super::webhooks::Webhook).collect())
    }
    /// Who created it.
    async fn created_by(&self) -> &str {
        &self.view.created_by
    }
    /// When it was created.
    async fn created_at(&self) -> DateTime<Utc> {
        self.view.created_at
    }
    /// Who changed it last.
    async fn updated_by(&self) -> &str {
        &self.view.updated_by
    }
    /// When it was changed last.
    async fn updated_at(&self) -> DateTime<Utc> {
        self.view.updated_at
    }
    /// Every version of the definition, newest first.
    #[graphql(
        complexity = "crate::graphql::page_cost(first, crate::read::MAX_PAGE, child_complexity)"
    )]
    async fn versions(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "How many versions (at most 100).")] first: Option<i32>,
        #[graphql(desc = "Continue after this cursor.")] after: Option<String>,
    ) -> async_graphql::Result<Connection<String, WorkflowVersion, EmptyFields, EmptyFields>> {
        caller(ctx, Role::Viewer)?;
        let had_cursor = after.is_some();
        let page = page_request(first, after)?;
        // In a list of workflows, every workflow's page comes from one query.
        let key = VersionsKey {
            workflow_id: self.view.id.clone(),
            first: page.first,
            after: page.after.map(|c| c.0),
        };
        let page = loaders(ctx)?.versions.load_one(key).await?.unwrap_or(Page {
            items: Vec::new(),
            has_next_page: false,
        });
        Ok(connection(page, had_cursor, WorkflowVersion::from))
    }
}

/// Which page of which workflow's versions.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct VersionsKey {
    /// The workflow whose versions are listed.
    workflow_id: String,
    /// The page size asked for.
    first: u32,
    /// The cursor to continue after, if any.
    after: Option<String>,
}

/// Loads pages of versions for many workflows at once: one query per
/// distinct page request (usually one for the whole list).
pub struct VersionLoader {
    /// The read models the batch is read from.
    pub(crate) state: Arc<AppState>,
    /// The caller's tenant: every batch is read within it.
    pub(crate) tenant: TenantId,
}

impl Loader<VersionsKey> for VersionLoader {
    type Value = Page<WorkflowVersionView>;
    type Error = async_graphql::Error;

    async fn load(
        &self,
        keys: &[VersionsKey],
    ) -> Result<HashMap<VersionsKey, Self::Value>, Self::Error> {
        let mut requests: HashMap<(u32, Option<String>), Vec<String>> = HashMap::new();
        for key in keys {
            requests
                .entry((key.first, key.after.clone()))
                .or_default()
                .push(key.workflow_id.clone());
        }
        let mut out = HashMap::new();
        for ((first, after), ids) in requests {
            let page = PageRequest {
                first,
                after: after.clone().map(Cursor),
            };
            let pages = self
                .state
                .read
                .workflow_versions_of(&self.tenant, &ids, &page)
                .await
                .map_err(ApiError::from)?;
            for (workflow_id, versions) in pages {
                let key = VersionsKey {
                    workflow_id,
                    first,
                    after: after.clone(),
                };
                out.insert(key, versions);
            }
        }
        Ok(out)
    }
}

/// One version of a workflow's definition.
#[derive(SimpleObject)]
pub struct WorkflowVersion {
    /// The workflow's id.
    workflow_id: ID,
    /// The version number, from 1.
    version: u64,
    /// The definition of this version.
    definition: Json,
    /// The comment given with the change.
    comment: Option<String>,
    /// For a revert, the version it copied.
    reverted_from: Option<u64>,
    /// Who made this version.
    actor: String,
    /// When.
    recorded_at: DateTime<Utc>,
}

impl From<WorkflowVersionView> for WorkflowVersion {
    fn from(v: WorkflowVersionView) -> Self {
        Self {
            workflow_id: ID(v.workflow_id),
            version: v.version,
            definition: async_graphql::Json(v.definition),
            comment: v.comment,
            reverted_from: v.reverted_from,
            actor: v.actor,
            recorded_at: v.recorded_at,
        }
    }
}

/// Filters for `workflows`.
#[derive(InputObject, Default)]
pub struct WorkflowFilterInput {
    /// A case-insensitive part of the name.
    name_contains: Option<String>,
    /// Only archived (true) or only active (false) workflows; both when
    /// omitted.
    archived: Option<bool>,
}

/// What a workflow mutation did.
#[derive(SimpleObject)]
pub struct WorkflowPayload {
    /// The workflow's id.
    id: ID,
    /// The workflow's version after the mutation.
    version: u64,
    /// The position of the mutation's last event; pass it as
    /// `consistency: {atLeast: …}` to read your write.
    position: String,
    /// The workflow as the read model shows it after the mutation; null only
    /// when the read model did not catch up within the bound.
    workflow: Option<Workflow>,
}

/// `createWorkflow` input.
#[derive(InputObject)]
pub struct CreateWorkflowInput {
    /// The display name.
    name: String,
    /// What the workflow is for.
    #[graphql(default)]
    description: String,
    /// The definition: `{nodes: [...], edges: [...]}`.
    definition: Json,
}

/// `updateWorkflow` input.
#[derive(InputObject)]
pub struct UpdateWorkflowInput {
    /// The workflow.
    id: ID,
    /// The new definition.
    definition: Json,
    /// Why it changed, shown in the version history.
    comment: Option<String>,
    /// Change only if the workflow is at this version.
    expected_version: Option<u64>,
}

/// `renameWorkflow` input.
#[derive(InputObject)]
pub struct RenameWorkflowInput {
    /// The workflow.
    id: ID,
    /// The new name.
    name: String,
    /// Change only if the workflow is at this version.
    expected_version: Option<u64>,
}

/// `setWorkflowTriggers` input.
#[derive(InputObject)]
pub struct SetWorkflowTriggersInput {
    /// The workflow.
    id: ID,
    /// The complete new list (at most 20).
    triggers: Vec<TriggerInput>,
    /// Change only if the workflow is at this version.
    expected_version: Option<u64>,
}

/// One trigger: exactly one of its fields.
#[derive(OneofObject)]
pub enum TriggerInput {
    /// A cron schedule.
    Cron(CronTriggerInput),
    /// An MCP tool on Toolhub's own MCP endpoint (`/mcp`).
    McpTool(McpToolTriggerInput),
}

/// A cron schedule.
#[derive(InputObject)]
pub struct CronTriggerInput {
    /// Five fields: minute, hour, day of month, month, day of week
    /// (`0 9 * * MON-FRI`).
    schedule: String,
    /// The IANA time zone it reads in (`Europe/Paris`); UTC when absent.
    timezone: Option<String>,
    /// The input each scheduled execution starts with (a JSON object).
    input: Option<Json>,
    /// What to do with fires missed while no scheduler ran: `SKIP`
    /// (default) or `RUN_ONCE` (one execution, never a burst).
    missed: Option<MissedFiresPolicy>,
}

/// The workflow as an MCP tool: MCP clients of the organisation list it on
/// `/mcp` and call it with arguments that match `inputSchema`; each call
/// runs the workflow with the arguments as its input.
#[derive(InputObject)]
pub struct McpToolTriggerInput {
    /// The tool's name, `[A-Za-z0-9_-]{1,64}`, unique in the organisation
    /// (another workflow's name is `CONFLICT` `NAME_TAKEN`).
    name: String,
    /// What the tool does, for the model that decides to call it.
    description: Option<String>,
    /// The JSON Schema the arguments must match: an object schema
    /// (`{"type": "object", "properties": …}`), self-contained, at most
    /// 64 KiB; `{"type": "object"}` when absent.
    input_schema: Option<Json>,
}

/// What the scheduler does with fires missed while no scheduler ran.
#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
pub enum MissedFiresPolicy {
    /// Skip them; resume with the next fire.
    Skip,
    /// Run one execution for the latest of them.
    RunOnce,
}

impl From<TriggerInput> for Trigger {
    fn from(input: TriggerInput) -> Self {
        match input {
            TriggerInput::Cron(cron) => Trigger::Cron {
                schedule: cron.schedule,
                timezone: cron.timezone,
                input: cron.input.map(|j| j.0),
                missed: match cron.missed {
                    Some(MissedFiresPolicy::RunOnce) => MissedFires::RunOnce,
                    Some(MissedFiresPolicy::Skip) | None => MissedFires::Skip,
                },
            },
            TriggerInput::McpTool(tool) => Trigger::McpTool {
                name: tool.name,
                description: tool.description.unwrap_or_default(),
                input_schema: tool
                    .input_schema
                    .map(|j| j.0)
                    .unwrap_or_else(|| serde_json::json!({"type": "object"})),
            },
        }
    }
}

/// `archiveWorkflow` and `restoreWorkflow` input.
#[derive(InputObject)]
pub struct WorkflowIdInput {
    /// The workflow.
    id: ID,
    /// Change only if the workflow is at this version.
    expected_version: Option<u64>,
}

/// `revertWorkflow` input.
#[derive(InputObject)]
pub struct RevertWorkflowInput {
    /// The workflow.
    id: ID,
    /// The version to copy as the new current version.
    to_version: u64,
    /// Why.
    comment: Option<String>,
    /// Change only if the workflow is at this version.
    expected_version: Option<u64>,
}

/// Workflow queries.
#[derive(Default)]
pub struct WorkflowQuery;

#[Object]
impl WorkflowQuery {
    /// The tenant's workflows, by name.
    #[graphql(
        complexity = "crate::graphql::page_cost(first, crate::read::MAX_PAGE, child_complexity)"
    )]
    async fn workflows(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
        filter: Option<WorkflowFilterInput>,
        consistency: Option<Consistency>,
    ) -> async_graphql::Result<Connection<String, Workflow, EmptyFields, EmptyFields>> {
        let caller = caller(ctx, Role::Viewer)?;
        let state = state(ctx)?;
        wait_for(state, consistency).await?;
        let had_cursor = after.is_some();
        let page = page_request(first, after)?;
        let filter = filter.unwrap_or_default();
        let filter = WorkflowFilter {
            name_contains: filter.name_contains,
            archived: filter.archived,
        };
        let documents = super::listed_documents(ctx, workflow_documents);
        let page = state
            .read
            .workflows(&caller.tenant, &page, &filter, documents)
            .await
            .map_err(ApiError::from)?;
        Ok(connection(page, had_cursor, Workflow::listed(documents)))
    }

    /// One workflow. Another tenant's workflow is `NOT_FOUND`. With
    /// `asOf`, the workflow as its events up to that point made it (its
    /// nested lists, `versions` and `webhooks`, are today's).
    async fn workflow(
        &self,
        ctx: &Context<'_>,
        id: ID,
        consistency: Option<Consistency>,
        as_of: Option<super::scalars::AsOf>,
    ) -> async_graphql::Result<Option<Workflow>> {
        match as_of {
            None => one::<Workflow>(ctx, Role::Viewer, &id, consistency).await,
            Some(as_of) => {
                super::at::<toolhub_domain::workflow::Workflow, _>(
                    ctx,
                    Role::Viewer,
                    &id,
                    &as_of,
                    |id, folded| {
                        Ok(Some(Workflow::from(crate::read::as_of::workflow_view(
                            id, folded,
                        )?)))
                    },
                )
                .await
            }
        }
    }

    /// What changed in a workflow's definition from definition version
    /// `from` to `to`: an RFC 6902 patch, and the nodes and edges added,
    /// removed or changed. Literal credentials are redacted on both sides.
    async fn workflow_diff(
        &self,
        ctx: &Context<'_>,
        id: ID,
        from: i32,
        to: i32,
    ) -> async_graphql::Result<Option<WorkflowDiff>> {
        let caller = super::caller(ctx, Role::Viewer)?;
        let state = super::state(ctx)?;
        let version = |v: i32, field: &str| {
            u64::try_from(v)
                .ok()
                .filter(|v| *v >= 1)
                .ok_or_else(|| ApiError::validation(field, "a definition version, from 1"))
        };
        let (from, to) = (version(from, "from")?, version(to, "to")?);
        let folded = crate::read::as_of::fold::<toolhub_domain::workflow::Workflow>(
            &state.store,
            &caller.tenant,
            &id,
            crate::read::Moment::Version(u64::MAX),
        )
        .await
        .map_err(ApiError::from)?
        .ok_or(ApiError::NotFound)?;
        let latest = folded.state.current_version();
        for (v, field) in [(from, "from"), (to, "to")] {
            if v > latest {
                return Err(ApiError::validation(
                    field,
                    format!("the workflow has definition versions 1 to {latest}"),
                )
                .into());
            }
        }
        let diff = crate::read::as_of::workflow_diff(&folded.state, from, to)
            .map_err(ApiError::from)?
            .ok_or(ApiError::NotFound)?;
        Ok(Some(WorkflowDiff {
            patch: async_graphql::Json(diff.patch),
            added_nodes: diff.added_nodes,
            removed_nodes: diff.removed_nodes,
            changed_nodes: diff.changed_nodes,
            added_edges: diff
                .added_edges
                .into_iter()
                .map(async_graphql::Json)
                .collect(),
            removed_edges: diff
                .removed_edges
                .into_iter()
                .map(async_graphql::Json)
                .collect(),
        }))
    }
}

/// What changed between two definition versions of a workflow.
#[derive(async_graphql::SimpleObject)]
pub struct WorkflowDiff {
    /// An RFC 6902 JSON Patch from `from` to `to`.
    patch: async_graphql::Json<serde_json::Value>,
    /// Ids of nodes in `to` only.
    added_nodes: Vec<String>,
    /// Ids of nodes in `from` only.
    removed_nodes: Vec<String>,
    /// Ids of nodes in both whose definition differs.
    changed_nodes: Vec<String>,
    /// Edges in `to` only.
    added_edges: Vec<async_graphql::Json<serde_json::Value>>,
    /// Edges in `from` only.
    removed_edges: Vec<async_graphql::Json<serde_json::Value>>,
}

/// Workflow mutations.
#[derive(Default)]
pub struct WorkflowMutation;

impl WorkflowMutation {
    async fn run(
        ctx: &Context<'_>,
        id: WorkflowId,
        command: WorkflowCommand,
        expected_version: Option<u64>,
    ) -> async_graphql::Result<WorkflowPayload> {
        let id = id.to_string();
        let bus = &state(ctx)?.workflows;
        let result = execute(ctx, bus, &id, command, expected_version).await;
        Ok(written::<Workflow>(ctx, id, result).await?.into())
    }
}

impl ReadBack for Workflow {
    const AGGREGATE: &'static str = "workflow";
    const FIELD: &'static str = "workflow";

    async fn read_back(
        read: &ReadModels,
        tenant: &TenantId,
        id: &str,
    ) -> Result<Option<Self>, ReadError> {
        Ok(read.workflow(tenant, id).await?.map(Workflow::from))
    }
}

impl From<Written<Workflow>> for WorkflowPayload {
    fn from(w: Written<Workflow>) -> Self {
        Self {
            id: w.id,
            version: w.version,
            position: w.position,
            workflow: w.entity,
        }
    }
}

fn workflow_id(id: &ID) -> Result<WorkflowId, ApiError> {
    parse_id(id, "input.id").map(WorkflowId::from_uuid)
}

#[Object]
impl WorkflowMutation {
    /// Creates a workflow; its definition becomes version 1.
    async fn create_workflow(
        &self,
        ctx: &Context<'_>,
        input: CreateWorkflowInput,
    ) -> async_graphql::Result<WorkflowPayload> {
        let tenant = caller(ctx, Role::Viewer)?.tenant.clone();
        let command = WorkflowCommand::Create {
            tenant,
            name: input.name,
            description: input.description,
            definition: input.definition.0,
        };
        Self::run(ctx, WorkflowId::new(), command, None).await
    }

    /// Records a new version of the definition.
    async fn update_workflow(
        &self,
        ctx: &Context<'_>,
        input: UpdateWorkflowInput,
    ) -> async_graphql::Result<WorkflowPayload> {
        let command = WorkflowCommand::UpdateDefinition {
            definition: input.definition.0,
            comment: input.comment,
        };
        Self::run(
            ctx,
            workflow_id(&input.id)?,
            command,
            input.expected_version,
        )
        .await
    }

    /// Changes the display name.
    async fn rename_workflow(
        &self,
        ctx: &Context<'_>,
        input: RenameWorkflowInput,
    ) -> async_graphql::Result<WorkflowPayload> {
        let command = WorkflowCommand::Rename { name: input.name };
        Self::run(
            ctx,
            workflow_id(&input.id)?,
            command,
            input.expected_version,
        )
        .await
    }

    /// Replaces the workflow's triggers with `triggers` (an empty list
    /// removes them all). Cron triggers fire on one scheduler across
    /// replicas; see `nextRuns`. An MCP tool's name is unique in the
    /// organisation: another workflow's is `CONFLICT` (`NAME_TAKEN`).
    async fn set_workflow_triggers(
        &self,
        ctx: &Context<'_>,
        input: SetWorkflowTriggersInput,
    ) -> async_graphql::Result<WorkflowPayload> {
        let triggers = input.triggers.into_iter().map(Trigger::from).collect();
        let command = WorkflowCommand::SetTriggers { triggers };
        let id = workflow_id(&input.id)?.to_string();
        let bus = &state(ctx)?.workflows;
        // The one unique name a workflow claims is its MCP tool's.
        let result = execute(ctx, bus, &id, command, input.expected_version)
            .await
            .map_err(|error| match error {
                ApiError::Conflict {
                    reason: "NAME_TAKEN",
                    ..
                } => ApiError::conflict(
                    "NAME_TAKEN",
                    "another workflow of this organisation is exposed as an MCP tool \
                     with that name; choose another",
                ),
                other => other,
            });
        Ok(written::<Workflow>(ctx, id, result).await?.into())
    }

    /// Hides and freezes the workflow.
    async fn archive_workflow(
        &self,
        ctx: &Context<'_>,
        input: WorkflowIdInput,
    ) -> async_graphql::Result<WorkflowPayload> {
        let id = workflow_id(&input.id)?;
        Self::run(ctx, id, WorkflowCommand::Archive, input.expected_version).await
    }

    /// Undoes `archiveWorkflow`.
    async fn restore_workflow(
        &self,
        ctx: &Context<'_>,
        input: WorkflowIdInput,
    ) -> async_graphql::Result<WorkflowPayload> {
        let id = workflow_id(&input.id)?;
        Self::run(ctx, id, WorkflowCommand::Restore, input.expected_version).await
    }

    /// Records a new version that copies an earlier one.
    async fn revert_workflow(
        &self,
        ctx: &Context<'_>,
        input: RevertWorkflowInput,
    ) -> async_graphql::Result<WorkflowPayload> {
        let command = WorkflowCommand::Revert {
            to_version: input.to_version,
            comment: input.comment,
        };
        Self::run(
            ctx,
            workflow_id(&input.id)?,
            command,
            input.expected_version,
        )
        .await
    }
}
