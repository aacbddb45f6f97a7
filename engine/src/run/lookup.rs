//! What a step looks up on the write side: secrets by name (unsealed at the
//! moment of use), MCP servers by name with their transports and tools.
//! Names are resolved through the unique-name claims, so a renamed or
//! deleted secret or server is never used by mistake.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;
use toolhub_domain::definition::{Node, NodeKind};
use toolhub_domain::execution::Execution;
use toolhub_domain::mcp_server::{McpServer, McpServerCommand, ToolInfo, Transport};
use toolhub_domain::secret::Secret;
use toolhub_domain::{AggregateRoot, McpServerId, SecretId, TenantId};
use toolhub_eventstore::work::name_holder;
use toolhub_eventstore::{CommandContext, Committed};
use zeroize::Zeroizing;

use super::engine::{EngineError, Inner};
use crate::failure::StepFailure;
use crate::mcp::{McpCallError, McpTarget, ResolvedTransport};
use crate::template::{resolve_str, Scope, Secrets};

/// Unseals the tenant's secrets called `names`. A name that does not
/// resolve is left out: the template that uses it fails with its name.
pub(crate) async fn unseal(
    inner: &Inner,
    tenant: &TenantId,
    names: &BTreeSet<String>,
) -> Result<Secrets, StepFailure> {
    let mut secrets = Secrets::new();
    for name in names {
        let holder = name_holder(
            inner.store.db(),
            tenant.as_str(),
            <Secret as cqrs_es::Aggregate>::TYPE,
            name,
        )
        .await
        .map_err(|e| StepFailure::retryable(format!("the secrets could not be read: {e}")))?;
        let Some(id) = holder else {
            continue;
        };
        let Ok(uuid) = id.parse() else {
            continue;
        };
        let secret_id = SecretId::from_uuid(uuid);
        let (secret, _) =
            inner.secrets.bus().current(&id).await.map_err(|e| {
                StepFailure::retryable(format!("the secrets could not be read: {e}"))
            })?;
        let Some(sealed) = secret.value() else {
            continue;
        };
        match inner.secrets.keys().unseal(tenant, secret_id, sealed).await {
            Ok(plain) => {
                let Ok(text) = String::from_utf8(plain.to_vec()) else {
                    return Err(StepFailure::permanent(format!(
                        "the secret `{name}` is not text"
                    )));
                };
                secrets.insert(name.clone(), Zeroizing::new(text));
            }
            // Deleted (its key destroyed) or unreadable: not available.
            Err(_) => continue,
        }
    }
    Ok(secrets)
}

/// The tenant's MCP server called `name`: it must exist and be enabled.
pub(crate) async fn server(
    inner: &Inner,
    tenant: &TenantId,
    name: &str,
) -> Result<(McpServerId, McpServer), StepFailure> {
    let holder = name_holder(
        inner.store.db(),
        tenant.as_str(),
        <McpServer as cqrs_es::Aggregate>::TYPE,
        name,
    )
    .await
    .map_err(|e| StepFailure::retryable(format!("the MCP servers could not be read: {e}")))?;
    let Some(id) = holder else {
        return Err(StepFailure::permanent(format!(
            "there is no MCP server called `{name}`"
        )));
    };
    let (state, _) =
        inner.servers.current(&id).await.map_err(|e| {
            StepFailure::retryable(format!("the MCP servers could not be read: {e}"))
        })?;
    if !state.exists() || state.tenant() != Some(tenant) || state.is_deregistered() {
        return Err(StepFailure::permanent(format!(
            "there is no MCP server called `{name}`"
        )));
    }
    if !state.is_enabled() {
        return Err(StepFailure::permanent(format!(
            "the MCP server `{name}` is disabled"
        )));
    }
    let uuid = id
        .parse()
        .map_err(|_| StepFailure::permanent("a malformed server id"))?;
    Ok((McpServerId::from_uuid(uuid), state))
}

/// How to reach a server, with the secrets its environment or headers name
/// unsealed, and those secrets' values (to mask them in what the step
/// records: a server may echo its environment).
pub(crate) async fn target(
    inner: &Inner,
    tenant: &TenantId,
    id: McpServerId,
    server: &McpServer,
) -> Result<(McpTarget, Vec<Zeroizing<String>>), StepFailure> {
    let transport = server
        .transport()
        .ok_or_else(|| StepFailure::permanent("the MCP server has no transport"))?;
    let names = transport.secret_references();
    let secrets = unseal(inner, tenant, &names).await?;
    let empty = serde_json::Map::new();
    let outputs: std::collections::BTreeMap<String, Value> = std::collections::BTreeMap::new();
    let input = Value::Object(empty);
    let scope = Scope {
        input: &input,
        nodes: &outputs,
        secrets: &secrets,
    };
    let text = |value: &str| {
        resolve_str(value, &scope)
            .map(|r| r.value)
            .map_err(|e| StepFailure::permanent(format!("the MCP server's configuration: {e}")))
    };
    let resolved = match transport {
        Transport::Stdio { command, args, env } => Transport::Stdio {
            command: command.clone(),
            args: args.clone(),
            env: env
                .iter()
                .map(|(k, v)| Ok((k.clone(), text(v)?)))
                .collect::<Result<_, StepFailure>>()?,
        },
        Transport::StreamableHttp { url, headers } => Transport::StreamableHttp {
            url: text(url)?,
            headers: headers
                .iter()
                .map(|(k, v)| Ok((k.clone(), text(v)?)))
                .collect::<Result<_, StepFailure>>()?,
        },
    };
    let transport = ResolvedTransport::new(resolved).map_err(failure_of)?;
    let values = secrets
        .values_of(&names)
        .map(|v| Zeroizing::new(v.to_string()))
        .collect();
    Ok((
        McpTarget {
            tenant: tenant.clone(),
            server: id,
            transport,
        },
        values,
    ))
}

/// An MCP error as a step failure.
pub(crate) fn failure_of(error: McpCallError) -> StepFailure {
    StepFailure {
        retryable: error.is_retryable(),
        message: error.to_string(),
    }
}

/// Calls a tool; when the server does not list it, refreshes the tool list
/// once (it may be new) before failing.
pub(crate) async fn call_tool(
    inner: &Inner,
    target: &McpTarget,
    server: &str,
    tool: &str,
    arguments: Map<String, Value>,
    timeout: Duration,
    cancel: CancellationToken,
) -> Result<Value, StepFailure> {
    let (state, _) = inner
        .servers
        .current(&target.server.to_string())
        .await
        .map_err(|e| StepFailure::retryable(format!("the MCP servers could not be read: {e}")))?;
    if !state.tools().iter().any(|t| t.name == tool) {
        let ctx = CommandContext::new(super::driver::ENGINE_ACTOR, target.tenant.clone());
        let listed = record_tools(inner, &ctx, target)
            .await
            .map_err(|e| match e {
                EngineError::Mcp(e) => failure_of(e),
                other => StepFailure::retryable(other.to_string()),
            })?;
        if !listed.iter().any(|t| t.name == tool) {
            return Err(StepFailure::permanent(format!(
                "the MCP server `{server}` has no tool `{tool}`"
            )));
        }
    }
    match inner
        .mcp
        .call_tool(target, tool, arguments, timeout, cancel)
        .await
    {
        Ok(output) => Ok(output.to_json()),
        Err(error) => Err(failure_of(error)),
    }
}

/// Lists a server's tools over MCP and records them (the domain records
/// nothing when the list did not change); returns the list.
async fn record_tools(
    inner: &Inner,
    ctx: &CommandContext,
    target: &McpTarget,
) -> Result<Vec<ToolInfo>, EngineError> {
    let tools: Vec<ToolInfo> = inner
        .mcp
        .list_tools(target, inner.config.mcp_call_timeout)
        .await?
        .into_iter()
        .map(|t| t.info)
        .collect();
    inner
        .servers
        .execute(
            &target.server.to_string(),
            McpServerCommand::DiscoverTools {
                tools: tools.clone(),
            },
            ctx,
        )
        .await?;
    Ok(tools)
}

/// `refreshMcpServerTools`: the caller's server, listed and recorded.
pub(crate) async fn refresh_tools(
    inner: &Inner,
    ctx: &CommandContext,
    id: McpServerId,
) -> Result<Committed, EngineError> {
    let (state, _) = inner.servers.current(&id.to_string()).await?;
    if !state.exists() || state.tenant() != Some(&ctx.tenant) || state.is_deregistered() {
        return Err(EngineError::NotFound);
    }
    let (target, _) =
        target(inner, &ctx.tenant, id, &state)
            .await
            .map_err(|f| EngineError::Validation {
                field: "input.id",
                reason: f.message,
            })?;
    let tools: Vec<ToolInfo> = inner
        .mcp
        .list_tools(&target, inner.config.mcp_call_timeout)
        .await?
        .into_iter()
        .map(|t| t.info)
        .collect();
    Ok(inner
        .servers
        .execute(
            &id.to_string(),
            McpServerCommand::DiscoverTools { tools },
            ctx,
        )
        .await?)
}

/// Whether an `mcp_tool` node's tool says it may run twice (its server's
/// `readOnlyHint` or `idempotentHint`).
pub(crate) async fn tool_is_idempotent(inner: &Inner, state: &Execution, node: &Node) -> bool {
    let NodeKind::McpTool { server, tool, .. } = node.kind() else {
        return false;
    };
    let Some(tenant) = state.tenant() else {
        return false;
    };
    match self::server(inner, tenant, server).await {
        Ok((_, server)) => server
            .tools()
            .iter()
            .any(|t| t.name == *tool && (t.read_only || t.idempotent)),
        Err(_) => false,
    }
}
