//! MCP servers: `mcpServers`, `mcpServer { tools }` (batched by a
//! DataLoader), tool discovery across servers (`mcpTools`), the five MCP
//! server mutations, and the two that talk to the server over MCP
//! (`refreshMcpServerTools`, `checkMcpServerHealth`).

use std::collections::HashMap;
use std::sync::Arc;

use async_graphql::connection::{Connection, EmptyFields};
use async_graphql::dataloader::Loader;
use async_graphql::{Context, InputObject, Object, SimpleObject, ID};
use chrono::{DateTime, Utc};
use toolhub_domain::mcp_server::{McpServerCommand, Transport};
use toolhub_domain::{CommandTraits, McpServerId, Role, TenantId};

use super::scalars::Json;
use super::{
    caller, connection, loaders, one, page_request, parse_id, state, wait_for, Consistency,
};
use super::{execute, written, ReadBack, Written};
use crate::error::ApiError;
use crate::read::{McpServerView, McpToolView};
use crate::read::{ReadError, ReadModels};
use crate::state::AppState;

/// An MCP server's configuration and health.
pub struct McpServer(pub McpServerView);

#[Object]
impl McpServer {
    /// The server's id.
    async fn id(&self) -> ID {
        ID(self.0.id.clone())
    }
    /// The name `mcp_tool` nodes refer to it by.
    async fn name(&self) -> &str {
        &self.0.name
    }
    /// How it is reached, with literal environment and header values
    /// redacted.
    async fn transport(&self) -> Json {
        async_graphql::Json(self.0.transport.clone())
    }
    /// Whether the engine may call it.
    async fn enabled(&self) -> bool {
        self.0.enabled
    }
    /// The latest health check's verdict.
    async fn healthy(&self) -> Option<bool> {
        self.0.healthy
    }
    /// The latest health check's latency.
    async fn latency_ms(&self) -> Option<u64> {
        self.0.latency_ms
    }
    /// The latest health check's detail.
    async fn health_detail(&self) -> Option<&str> {
        self.0.health_detail.as_deref()
    }
    /// When it was last checked.
    async fn checked_at(&self) -> Option<DateTime<Utc>> {
        self.0.checked_at
    }
    /// The entity's version, for `expectedVersion`.
    async fn version(&self) -> u64 {
        self.0.aggregate_version
    }
    /// When it was registered.
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }
    /// When it last changed.
    async fn updated_at(&self) -> DateTime<Utc> {
        self.0.updated_at
    }
    /// The tools it advertises.
    async fn tools(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<McpTool>> {
        caller(ctx, Role::Viewer)?;
        let tools = loaders(ctx)?
            .tools
            .load_one(self.0.id.clone())
            .await?
            .unwrap_or_default();
        Ok(tools)
    }
}

/// A tool an MCP server advertises.
#[derive(SimpleObject, Clone)]
pub struct McpTool {
    /// The tool's name.
    name: String,
    /// Its description.
    description: Option<String>,
    /// The JSON schema of its arguments.
    input_schema: Json,
}

impl From<McpToolView> for McpTool {
    fn from(v: McpToolView) -> Self {
        Self {
            name: v.name,
            description: v.description,
            input_schema: async_graphql::Json(v.input_schema),
        }
    }
}

/// A tool found by `mcpTools`, with the server it belongs to.
#[derive(SimpleObject)]
pub struct DiscoveredTool {
    /// The tool's name: an `mcp_tool` node's `tool`.
    name: String,
    /// Its description.
    description: Option<String>,
    /// The JSON schema of its arguments.
    input_schema: Json,
    /// The server's id.
    server_id: ID,
    /// The server's name: an `mcp_tool` node's `server`.
    server_name: String,
    /// The server's latest health check, if any.
    server_healthy: Option<bool>,
}

/// Loads the tools of many servers in one query.
pub struct ToolLoader {
    /// The read models the batch is read from.
    pub(crate) state: Arc<AppState>,
    /// The caller's tenant: every batch is read within it.
    pub(crate) tenant: TenantId,
}

impl Loader<String> for ToolLoader {
    type Value = Vec<McpTool>;
    type Error = async_graphql::Error;

    async fn load(&self, keys: &[String]) -> Result<HashMap<String, Self::Value>, Self::Error> {
        let tools = self
            .state
            .read
            .mcp_tools(&self.tenant, keys)
            .await
            .map_err(ApiError::from)?;
        let mut by_server: HashMap<String, Vec<McpTool>> = HashMap::new();
        for tool in tools {
            by_server
                .entry(tool.server_id.clone())
                .or_default()
                .push(tool.into());
        }
        Ok(by_server)
    }
}

/// What an MCP server mutation did.
#[derive(SimpleObject)]
pub struct McpServerPayload {
    /// The server's id.
    id: ID,
    /// The server's version after the mutation.
    version: u64,
    /// The position of the mutation's last event.
    position: String,
    /// The server as the read model shows it after the mutation; null after
    /// deregistration, or when the read model did not catch up in time.
    mcp_server: Option<McpServer>,
}

/// `registerMcpServer` input.
#[derive(InputObject)]
pub struct RegisterMcpServerInput {
    /// The name, `^[a-z0-9][a-z0-9_-]{0,63}$`.
    name: String,
    /// `{"kind": "stdio", "command", "args", "env"}` or
    /// `{"kind": "streamable_http", "url", "headers"}`; values may reference
    /// `{{secrets.NAME}}`.
    transport: Json,
}

/// `updateMcpServer` input.
#[derive(InputObject)]
pub struct UpdateMcpServerInput {
    /// The server.
    id: ID,
    /// The new transport.
    transport: Json,
    /// Change only if the server is at this version.
    expected_version: Option<u64>,
}

/// `enableMcpServer`, `disableMcpServer` and `deregisterMcpServer` input.
#[derive(InputObject)]
pub struct McpServerIdInput {
    /// The server.
    id: ID,
    /// Change only if the server is at this version.
    expected_version: Option<u64>,
}

/// MCP server queries.
#[derive(Default)]
pub struct McpServerQuery;

#[Object]
impl McpServerQuery {
    /// The tenant's MCP servers.
    #[graphql(
        complexity = "crate::graphql::page_cost(first, crate::read::MAX_PAGE, child_complexity)"
    )]
    async fn mcp_servers(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
        consistency: Option<Consistency>,
    ) -> async_graphql::Result<Connection<String, McpServer, EmptyFields, EmptyFields>> {
        let caller = caller(ctx, Role::Viewer)?;
        let state = state(ctx)?;
        wait_for(state, consistency).await?;
        let had_cursor = after.is_some();
        let page = page_request(first, after)?;
        let page = state
            .read
            .mcp_servers(&caller.tenant, &page)
            .await
            .map_err(ApiError::from)?;
        Ok(connection(page, had_cursor, McpServer))
    }

    /// Tool discovery across the tenant: every tool of every enabled
    /// server whose name or description contains `search` (any case), by
    /// name.
    #[graphql(
        complexity = "crate::graphql::page_cost(first, crate::read::MAX_PAGE, child_complexity)"
    )]
    async fn mcp_tools(
        &self,
        ctx: &Context<'_>,
        search: Option<String>,
        first: Option<i32>,
        after: Option<String>,
    ) -> async_graphql::Result<Connection<String, DiscoveredTool, EmptyFields, EmptyFields>> {
        let caller = caller(ctx, Role::Viewer)?;
        let state = state(ctx)?;
        let had_cursor = after.is_some();
        let page = page_request(first, after)?;
        let page = state
            .read
            .mcp_tool_search(&caller.tenant, search.as_deref(), &page)
            .await
            .map_err(ApiError::from)?;
        Ok(connection(page, had_cursor, |(tool, server)| {
            DiscoveredTool {
                name: tool.name,
                description: tool.description,
                input_schema: async_graphql::Json(tool.input_schema),
                server_id: ID(server.id),
                server_name: server.name,
                server_healthy: server.healthy,
            }
        }))
    }

    /// One MCP server. Another tenant's server is `NOT_FOUND`, and so is a
    /// deregistered one. With `asOf`, the server as its events up to that
    /// point made it (its `tools` are today's).
    async fn mcp_server(
        &self,
        ctx: &Context<'_>,
        id: ID,
        consistency: Option<Consistency>,
        as_of: Option<super::scalars::AsOf>,
    ) -> async_graphql::Result<Option<McpServer>> {
        match as_of {
            None => one::<McpServer>(ctx, Role::Viewer, &id, consistency).await,
            Some(as_of) => {
                let caller = super::caller(ctx, Role::Viewer)?;
                let moment = as_of.moment()?;
                let state = super::state(ctx)?;
                let view =
                    crate::read::as_of::mcp_server(&state.store, Some(&caller.tenant), &id, moment)
                        .await
                        .map_err(ApiError::from)?
                        .filter(|view| !view.deregistered)
                        .ok_or(ApiError::NotFound)?;
                Ok(Some(McpServer(view)))
            }
        }
    }
}

/// MCP server mutations.
#[derive(Default)]
pub struct McpServerMutation;

fn server_id(id: &ID) -> Result<McpServerId, ApiError> {
    parse_id(id, "input.id").map(McpServerId::from_uuid)
}

fn transport(json: Json) -> Result<Transport, ApiError> {
    serde_json::from_value(json.0)
        .map_err(|e| ApiError::validation("input.transport", e.to_string()))
}

impl McpServerMutation {
    async fn run(
        ctx: &Context<'_>,
        id: McpServerId,
        command: McpServerCommand,
        expected_version: Option<u64>,
    ) -> async_graphql::Result<McpServerPayload> {
        let id = id.to_string();
        let bus = &state(ctx)?.mcp_servers;
        let result = execute(ctx, bus, &id, command, expected_version).await;
        Ok(written::<McpServer>(ctx, id, result).await?.into())
    }
}

impl ReadBack for McpServer {
    const AGGREGATE: &'static str = "mcp_server";
    const FIELD: &'static str = "mcpServer";

    async fn read_back(
        read: &ReadModels,
        tenant: &TenantId,
        id: &str,
    ) -> Result<Option<Self>, ReadError> {
        Ok(read.mcp_server(tenant, id).await?.map(McpServer))
    }
}

impl From<Written<McpServer>> for McpServerPayload {
    fn from(w: Written<McpServer>) -> Self {
        Self {
            id: w.id,
            version: w.version,
            position: w.position,
            mcp_server: w.entity,
        }
    }
}

#[Object]
impl McpServerMutation {
    /// Registers an MCP server, enabled.
    async fn register_mcp_server(
        &self,
        ctx: &Context<'_>,
        input: RegisterMcpServerInput,
    ) -> async_graphql::Result<McpServerPayload> {
        // Every MCP server command needs the same role; check it before
        // looking at the input, so a viewer learns nothing from validation.
        let tenant = caller(ctx, McpServerCommand::Enable.required_role())?
            .tenant
            .clone();
        let command = McpServerCommand::Register {
            tenant,
            name: input.name,
            transport: transport(input.transport)?,
        };
        Self::run(ctx, McpServerId::new(), command, None).await
    }

    /// Replaces how the server is reached.
    async fn update_mcp_server(
        &self,
        ctx: &Context<'_>,
        input: UpdateMcpServerInput,
    ) -> async_graphql::Result<McpServerPayload> {
        caller(ctx, McpServerCommand::Enable.required_role())?;
        let id = server_id(&input.id)?;
        let command = McpServerCommand::UpdateConfig {
            transport: transport(input.transport)?,
        };
        Self::run(ctx, id, command, input.expected_version).await
    }

    /// Lets the engine call the server again.
    async fn enable_mcp_server(
        &self,
        ctx: &Context<'_>,
        input: McpServerIdInput,
    ) -> async_graphql::Result<McpServerPayload> {
        let id = server_id(&input.id)?;
        Self::run(ctx, id, McpServerCommand::Enable, input.expected_version).await
    }

    /// Stops the engine from calling the server.
    async fn disable_mcp_server(
        &self,
        ctx: &Context<'_>,
        input: McpServerIdInput,
    ) -> async_graphql::Result<McpServerPayload> {
        let id = server_id(&input.id)?;
        Self::run(ctx, id, McpServerCommand::Disable, input.expected_version).await
    }

    /// Connects to the server, lists its tools over MCP, and records them
    /// when the list changed (nothing when it did not).
    async fn refresh_mcp_server_tools(
        &self,
        ctx: &Context<'_>,
        input: McpServerIdInput,
    ) -> async_graphql::Result<McpServerPayload> {
        let caller = caller(ctx, McpServerCommand::Enable.required_role())?;
        let id = server_id(&input.id)?;
        let context = super::command_context(ctx, caller);
        let result = state(ctx)?
            .engine
            .refresh_tools(&context, id)
            .await
            .map_err(ApiError::from);
        Ok(written::<McpServer>(ctx, id.to_string(), result)
            .await?
            .into())
    }

    /// Pings the server over MCP (with a timeout) and records its health.
    async fn check_mcp_server_health(
        &self,
        ctx: &Context<'_>,
        input: McpServerIdInput,
    ) -> async_graphql::Result<McpServerPayload> {
        let caller = caller(ctx, McpServerCommand::Enable.required_role())?;
        let id = server_id(&input.id)?;
        let context = super::command_context(ctx, caller);
        let result = state(ctx)?
            .engine
            .check_health(&context, id)
            .await
            .map_err(ApiError::from);
        Ok(written::<McpServer>(ctx, id.to_string(), result)
            .await?
            .into())
    }

    /// Removes the server for good.
    async fn deregister_mcp_server(
        &self,
        ctx: &Context<'_>,
        input: McpServerIdInput,
    ) -> async_graphql::Result<McpServerPayload> {
        let id = server_id(&input.id)?;
        Self::run(
            ctx,
            id,
            McpServerCommand::Deregister,
            input.expected_version,
        )
        .await
    }
}
