//! The GraphQL schema: one module per feature, merged here.
//!
//! The types in these modules are the API's own: they are built from the
//! read models' views, and the domain's types never derive GraphQL traits.
//! Every resolver checks the caller's role first (mutations take it from the
//! command's `required_role()`), reads only the caller's tenant, and returns
//! [`ApiError`]s, which carry the error codes.

pub mod api_keys;
pub mod audit;
pub mod executions;
pub mod mcp_servers;
pub mod nesting;
pub mod scalars;
pub mod secrets;
pub mod subscriptions;
pub mod webhooks;
pub mod workflows;

use std::sync::Arc;

use async_graphql::connection::{Connection, Edge, EmptyFields};
use async_graphql::dataloader::DataLoader;
use async_graphql::{
    Context, MergedObject, MergedSubscription, Object, OutputType, Schema, SimpleObject, ID,
};
use toolhub_domain::{AggregateRoot, CommandTraits, Role, TenantId};
use toolhub_eventstore::{CommandBus, CommandContext, CommandError, Committed, Position};
use uuid::Uuid;

use crate::auth::Caller;
use crate::config::Limits;
use crate::error::ApiError;
use crate::read::{Cursor, Page, PageRequest, ReadError, ReadModels, MAX_PAGE};
use crate::state::AppState;

pub use scalars::Consistency;

/// The schema type.
pub type ToolhubSchema = Schema<Query, Mutation, Subscription>;

/// Every query.
#[derive(MergedObject, Default)]
pub struct Query(
    MeQuery,
    workflows::WorkflowQuery,
    secrets::SecretQuery,
    mcp_servers::McpServerQuery,
    executions::ExecutionQuery,
    audit::AuditQuery,
    api_keys::ApiKeyQuery,
);

/// Every mutation.
#[derive(MergedObject, Default)]
pub struct Mutation(
    workflows::WorkflowMutation,
    secrets::SecretMutation,
    mcp_servers::McpServerMutation,
    executions::ExecutionMutation,
    webhooks::WebhookMutation,
    api_keys::ApiKeyMutation,
);

/// Every subscription.
#[derive(MergedSubscription, Default)]
pub struct Subscription(subscriptions::LogSubscription);

/// Builds the schema with its limits. `state` is `None` only when the schema
/// is built to print its SDL.
pub fn build_schema(state: Option<Arc<AppState>>, limits: &Limits) -> ToolhubSchema {
    let builder = Schema::build(
        Query::default(),
        Mutation::default(),
        Subscription::default(),
    )
    .limit_depth(limits.depth)
    .limit_complexity(limits.complexity)
    .limit_recursive_depth(64)
    .limit_directives(16);
    let builder = if limits.introspection {
        builder
    } else {
        builder.disable_introspection()
    };
    match state {
        Some(state) => builder.data(state).finish(),
        None => builder.finish(),
    }
}

/// The schema in SDL, as checked into `docs/schema.graphql`.
pub fn sdl() -> String {
    build_schema(None, &Limits::default()).sdl()
}

/// Data attached to each request (or WebSocket connection).
pub struct RequestData {
    /// The verified caller.
    pub caller: Caller,
    /// The request id (the `x-request-id` header).
    pub request_id: String,
}

/// The batching loaders of one request, scoped to the caller's tenant.
pub struct Loaders {
    /// Execution steps by execution id.
    pub steps: DataLoader<executions::StepLoader>,
    /// MCP tools by server id.
    pub tools: DataLoader<mcp_servers::ToolLoader>,
    /// Pages of workflow versions by workflow id and page.
    pub versions: DataLoader<workflows::VersionLoader>,
    /// Webhooks by workflow id.
    pub webhooks: DataLoader<webhooks::WebhookLoader>,
    /// Execution steps by execution id, without their inputs and outputs.
    pub step_summaries: DataLoader<executions::StepLoader>,
}

impl Loaders {
    /// Loaders for `caller`'s tenant.
    pub fn new(state: &Arc<AppState>, caller: &Caller) -> Self {
        Self {
            steps: DataLoader::new(
                executions::StepLoader {
                    state: state.clone(),
                    tenant: caller.tenant.clone(),
                    documents: crate::read::Documents::Included,
                },
                tokio::spawn,
            ),
            step_summaries: DataLoader::new(
                executions::StepLoader {
                    state: state.clone(),
                    tenant: caller.tenant.clone(),
                    documents: crate::read::Documents::Skipped,
                },
                tokio::spawn,
            ),
            tools: DataLoader::new(
                mcp_servers::ToolLoader {
                    state: state.clone(),
                    tenant: caller.tenant.clone(),
                },
                tokio::spawn,
            ),
            versions: DataLoader::new(
                workflows::VersionLoader {
                    state: state.clone(),
                    tenant: caller.tenant.clone(),
                },
                tokio::spawn,
            ),
            webhooks: DataLoader::new(
                webhooks::WebhookLoader {
                    state: state.clone(),
                    tenant: caller.tenant.clone(),
                },
                tokio::spawn,
            ),
        }
    }
}

/// The request's shared state.
pub(crate) fn state<'a>(ctx: &Context<'a>) -> Result<&'a Arc<AppState>, ApiError> {
    ctx.data_opt::<Arc<AppState>>()
        .ok_or_else(|| ApiError::internal("the schema has no state"))
}

/// The caller, after checking that they have at least `role`.
pub(crate) fn caller<'a>(ctx: &Context<'a>, role: Role) -> Result<&'a Caller, ApiError> {
    let data = ctx
        .data_opt::<RequestData>()
        .ok_or(ApiError::Unauthenticated("a bearer token is required"))?;
    data.caller.require(role)?;
    Ok(&data.caller)
}

/// The request's batching loaders.
pub(crate) fn loaders<'a>(ctx: &Context<'a>) -> Result<&'a Loaders, ApiError> {
    ctx.data_opt::<Loaders>()
        .ok_or_else(|| ApiError::internal("the request has no loaders"))
}

/// The context recorded with the events of a command issued by this request.
pub(crate) fn command_context(ctx: &Context<'_>, caller: &Caller) -> CommandContext {
    let mut context = CommandContext::new(caller.sub.clone(), caller.tenant.clone());
    if let Some(data) = ctx.data_opt::<RequestData>() {
        context.request_id = data.request_id.clone();
    }
    context
}

/// Waits for `consistency.atLeast`, when given (read-your-writes).
pub(crate) async fn wait_for(
    state: &AppState,
    consistency: Option<Consistency>,
) -> Result<(), ApiError> {
    let Some(consistency) = consistency else {
        return Ok(());
    };
    let position = parse_position(&consistency.at_least, "consistency.atLeast")?;
    state
        .read
        .wait_for(position, state.limits.consistency_wait)
        .await?;
    Ok(())
}

/// Parses a position given by a client.
pub(crate) fn parse_position(text: &str, field: &str) -> Result<Position, ApiError> {
    text.parse::<Position>()
        .map_err(|_| ApiError::validation(field, "not a position returned by this API"))
}

/// The cost of a list field that returns `first` items (the default page
/// when absent), each costing `child`: what `#[graphql(complexity)]` on
/// every paginated field computes, so that the complexity limit counts what
/// a query can really return. `first` is clamped as [`page_request`] clamps
/// it, so that a refused value costs no more than the largest page.
pub(crate) fn page_cost(first: Option<i32>, max: u32, child: usize) -> usize {
    let items = first.unwrap_or(DEFAULT_PAGE as i32).clamp(1, max as i32) as usize;
    items.saturating_mul(child).saturating_add(1)
}

/// The cost of an execution's `steps(first:)`.
pub(crate) fn steps_cost(first: Option<i32>, child: usize) -> usize {
    let items = first
        .unwrap_or(executions::DEFAULT_STEPS as i32)
        .clamp(1, executions::MAX_STEPS as i32) as usize;
    items.saturating_mul(child).saturating_add(1)
}

/// How many items a page has when `first` is not given.
pub(crate) const DEFAULT_PAGE: u32 = 20;

/// Checks and converts `first` / `after`.
pub(crate) fn page_request(
    first: Option<i32>,
    after: Option<String>,
) -> Result<PageRequest, ApiError> {
    let first = match first {
        None => DEFAULT_PAGE,
        Some(n) if n < 1 => {
            return Err(ApiError::validation("first", "must be at least 1"));
        }
        // `first` is capped, not refused: asking for more gets a full page.
        Some(n) => (n as u32).min(MAX_PAGE),
    };
    Ok(PageRequest {
        first,
        after: after.map(Cursor),
    })
}

/// Whether a list must read its rows' documents: `needs` asked of the
/// node selection, through `edges { node }` and through `nodes`.
pub(crate) fn listed_documents(
    ctx: &Context<'_>,
    needs: fn(async_graphql::Lookahead<'_>) -> crate::read::Documents,
) -> crate::read::Documents {
    let list = ctx.look_ahead();
    if needs(list.field("edges").field("node")) == crate::read::Documents::Included
        || needs(list.field("nodes")) == crate::read::Documents::Included
    {
        crate::read::Documents::Included
    } else {
        crate::read::Documents::Skipped
    }
}

/// Whether a field may show a row's documents: yes when the row was read
/// with them. [`listed_documents`] has a list read them whenever its query
/// selects a field that shows them (look-ahead follows fragments, inline
/// fragments and aliases), so a row read without them is never asked for
/// them; if one were, that is a fault, answered as one instead of with
/// `null` for a document that exists.
pub(crate) fn read_documents(documents: crate::read::Documents) -> Result<(), ApiError> {
    match documents {
        crate::read::Documents::Included => Ok(()),
        crate::read::Documents::Skipped => Err(ApiError::internal(
            "a field asked for a document its list did not read",
        )),
    }
}

/// A Relay connection from a page of views.
pub(crate) fn connection<V, N: OutputType>(
    page: Page<V>,
    had_cursor: bool,
    node: impl Fn(V) -> N,
) -> Connection<String, N, EmptyFields, EmptyFields> {
    let mut connection = Connection::new(had_cursor, page.has_next_page);
    connection.edges.extend(
        page.items
            .into_iter()
            .map(|(cursor, view)| Edge::new(cursor.0, node(view))),
    );
    connection
}

/// Runs `command` on the aggregate `id` through `bus` for the caller,
/// after checking the role the command requires: the first half of every
/// mutation.
pub(crate) async fn execute<A>(
    ctx: &Context<'_>,
    bus: &CommandBus<A>,
    id: &str,
    command: A::Command,
    expected_version: Option<u64>,
) -> Result<Committed, ApiError>
where
    A: AggregateRoot<Services = ()> + 'static,
    A::Command: CommandTraits + Clone,
    ApiError: From<CommandError<A::Error>>,
{
    let caller = caller(ctx, command.required_role())?;
    let context = command_context(ctx, caller);
    let started = std::time::Instant::now();
    let committed = bus
        .execute_expecting(id, command, &context, expected_version)
        .await;
    if let Ok(state) = state(ctx) {
        state.metrics.phase("command", started);
    }
    Ok(committed?)
}

/// An entity a mutation answers with, read back from the read models.
pub(crate) trait ReadBack: Sized {
    /// The aggregate's name in the metrics.
    const AGGREGATE: &'static str;
    /// The payload's field that shows the entity.
    const FIELD: &'static str;

    /// The entity `id` of `tenant` as the read models show it.
    fn read_back(
        read: &ReadModels,
        tenant: &TenantId,
        id: &str,
    ) -> impl std::future::Future<Output = Result<Option<Self>, ReadError>> + Send;
}

/// One entity by id, for a caller with at least `role`, after waiting for
/// `consistency`: another tenant's entity, or none, is `NOT_FOUND`.
pub(crate) async fn one<V: ReadBack>(
    ctx: &Context<'_>,
    role: Role,
    id: &str,
    consistency: Option<Consistency>,
) -> async_graphql::Result<Option<V>> {
    let caller = caller(ctx, role)?;
    let state = state(ctx)?;
    wait_for(state, consistency).await?;
    let entity = V::read_back(&state.read, &caller.tenant, id)
        .await
        .map_err(ApiError::from)?
        .ok_or(ApiError::NotFound)?;
    Ok(Some(entity))
}

/// One entity by id as of a point of its history, for a caller with at
/// least `role`: folded from the log by the domain, shown by `view`. Before
/// it existed, or for another tenant, it is `NOT_FOUND`.
pub(crate) async fn at<A, V>(
    ctx: &Context<'_>,
    role: Role,
    id: &str,
    as_of: &scalars::AsOf,
    view: impl FnOnce(
        &str,
        &crate::read::Folded<A>,
    ) -> Result<Option<V>, toolhub_eventstore::StoreError>,
) -> async_graphql::Result<Option<V>>
where
    A: AggregateRoot,
{
    let caller = caller(ctx, role)?;
    let moment = as_of.moment()?;
    let state = state(ctx)?;
    let folded = crate::read::as_of::fold::<A>(&state.store, &caller.tenant, id, moment)
        .await
        .map_err(ApiError::from)?
        .ok_or(ApiError::NotFound)?;
    let shown = view(id, &folded)
        .map_err(ApiError::from)?
        .ok_or(ApiError::NotFound)?;
    Ok(Some(shown))
}

/// What every mutation answers: the entity's id, its version after the
/// command, the position of the command's last event, and the entity as the
/// read models show it once they reach that position (`None` when they did
/// not within the bound).
pub(crate) struct Written<V> {
    /// The entity's id.
    pub id: ID,
    /// The aggregate's version after the command.
    pub version: u64,
    /// Where the command's last event is in the log.
    pub position: String,
    /// The entity, read after the read models reached `position`.
    pub entity: Option<V>,
}

/// The second half of every mutation: counts the command's outcome, waits
/// (boundedly) for the read models to reach its position, and reads the
/// entity back.
pub(crate) async fn written<V: ReadBack>(
    ctx: &Context<'_>,
    id: String,
    result: Result<Committed, ApiError>,
) -> async_graphql::Result<Written<V>> {
    let state = state(ctx)?;
    let committed = observe(state, V::AGGREGATE, result)?;
    let position = payload_position(state, &committed).await?;
    let waited = std::time::Instant::now();
    let reached = state.wait_for(position).await;
    state.metrics.phase("wait", waited);
    // The entity is read back only when the payload shows it.
    let shown = ctx.look_ahead().field(V::FIELD).exists();
    let entity = match ctx.data_opt::<RequestData>() {
        Some(data) if reached && shown => {
            let read = std::time::Instant::now();
            let entity = V::read_back(&state.read, &data.caller.tenant, &id)
                .await
                .map_err(ApiError::from)?;
            state.metrics.phase("read_back", read);
            entity
        }
        _ => None,
    };
    Ok(Written {
        id: ID(id),
        version: committed.version,
        position: position.to_string(),
        entity,
    })
}

/// Records a command's outcome in the metrics and passes it on.
pub(crate) fn observe(
    state: &AppState,
    aggregate: &str,
    result: Result<Committed, ApiError>,
) -> Result<Committed, ApiError> {
    let outcome = match &result {
        Ok(_) => "ok",
        Err(ApiError::Conflict { .. }) => "conflict",
        Err(ApiError::Validation { .. }) => "rejected",
        Err(ApiError::NotFound) => "not_found",
        Err(_) => "error",
    };
    let events = result.as_ref().map_or(0, |c| c.events);
    state.metrics.command(aggregate, outcome, events);
    if let Some(position) = result.as_ref().ok().and_then(|c| c.position) {
        state.standing.saw_head(position);
    }
    result
}

/// The position a payload reports: the command's last event, or the log
/// head when the command appended nothing.
pub(crate) async fn payload_position(
    state: &AppState,
    committed: &Committed,
) -> Result<Position, ApiError> {
    match committed.position {
        Some(position) => Ok(position),
        None => Ok(state.store.head().await?),
    }
}

/// Parses an entity id given by a client.
pub(crate) fn parse_id(id: &str, field: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(id).map_err(|_| ApiError::validation(field, "not a valid id"))
}

/// Who is calling.
#[derive(SimpleObject)]
pub struct Me {
    /// The token's `sub`.
    sub: String,
    /// The token's `org`: the tenant.
    org: String,
    /// The roles the token grants.
    roles: Vec<String>,
}

/// `me`.
#[derive(Default)]
pub struct MeQuery;

#[Object]
impl MeQuery {
    /// The caller, as the token says.
    async fn me(&self, ctx: &Context<'_>) -> async_graphql::Result<Me> {
        let data = ctx
            .data_opt::<RequestData>()
            .ok_or(ApiError::Unauthenticated("a bearer token is required"))?;
        Ok(Me {
            sub: data.caller.sub.clone(),
            org: data.caller.tenant.to_string(),
            roles: data
                .caller
                .roles
                .iter()
                .map(|r| r.as_str().to_string())
                .collect(),
        })
    }
}
