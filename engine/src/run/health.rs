//! MCP server health: a periodic `ping` of every enabled server, run by one
//! leader across replicas, recording `McpServerHealthChecked` when a
//! server's health changes (its latency goes to the metrics every time), and
//! the on-demand check behind `checkMcpServerHealth`.

use std::time::Duration;

use toolhub_domain::mcp_server::{McpServer, McpServerCommand};
use toolhub_domain::{AggregateRoot, McpServerId, TenantId};
use toolhub_eventstore::work::named;
use toolhub_eventstore::{CommandContext, Committed, Leadership};

use super::engine::{Engine, EngineError, Inner};
use super::lookup::target;

/// The longest health detail kept.
const MAX_DETAIL: usize = 500;

/// Runs the periodic checks while this process leads them.
pub(crate) async fn run_health_checks(engine: Engine) {
    let inner = engine.inner.clone();
    loop {
        let leadership = match Leadership::try_take(inner.store.db(), "engine-health").await {
            Ok(leadership) => leadership,
            Err(error) => {
                tracing::warn!(%error, "could not contend for the health checker's leadership");
                None
            }
        };
        let Some(mut leadership) = leadership else {
            tokio::select! {
                _ = inner.shutdown.cancelled() => return,
                _ = tokio::time::sleep(inner.config.health_interval.min(Duration::from_secs(30))) => continue,
            }
        };
        loop {
            tokio::select! {
                _ = inner.shutdown.cancelled() => {
                    leadership.release().await;
                    return;
                }
                _ = tokio::time::sleep(inner.config.health_interval) => {}
            }
            if !leadership.is_held().await {
                break;
            }
            check_all(&inner).await;
        }
    }
}

/// Checks every registered server of every tenant once.
async fn check_all(inner: &Inner) {
    let servers = match named(inner.store.db(), <McpServer as cqrs_es::Aggregate>::TYPE).await {
        Ok(servers) => servers,
        Err(error) => {
            tracing::warn!(%error, "could not list the MCP servers to check");
            return;
        }
    };
    for (tenant, id) in servers {
        let (Ok(tenant), Ok(uuid)) = (TenantId::parse(tenant), id.parse()) else {
            continue;
        };
        let ctx = CommandContext::new(super::driver::ENGINE_ACTOR, tenant);
        if let Err(error) = check_one(inner, &ctx, McpServerId::from_uuid(uuid), false).await {
            tracing::debug!(server = %id, %error, "a health check could not be recorded");
        }
    }
}

/// Pings one server of the caller's tenant; records the outcome always
/// (`always`) or only when the server's health changed.
pub(crate) async fn check_one(
    inner: &Inner,
    ctx: &CommandContext,
    id: McpServerId,
    always: bool,
) -> Result<Committed, EngineError> {
    let id_text = id.to_string();
    let (state, version) = inner.servers.current(&id_text).await?;
    if !state.exists() || state.tenant() != Some(&ctx.tenant) || state.is_deregistered() {
        return Err(EngineError::NotFound);
    }
    let unchanged = Committed {
        version,
        position: None,
        events: 0,
    };
    if !state.is_enabled() && !always {
        return Ok(unchanged);
    }
    let (healthy, latency_ms, detail) = match target(inner, &ctx.tenant, id, &state).await {
        Err(failure) => (false, 0, Some(failure.message)),
        Ok((target, _)) => match inner.mcp.ping(&target, inner.config.health_timeout).await {
            Ok(latency) => (true, latency.as_millis() as u64, None),
            Err(error) => (false, 0, Some(error.to_string())),
        },
    };
    inner
        .stats
        .health
        .lock()
        .insert(id_text.clone(), (latency_ms, healthy));
    let changed = state.health().map(|h| h.healthy) != Some(healthy);
    if !always && !changed {
        return Ok(unchanged);
    }
    let detail = detail.map(|d| d.chars().take(MAX_DETAIL).collect());
    Ok(inner
        .servers
        .execute(
            &id_text,
            McpServerCommand::RecordHealth {
                healthy,
                latency_ms,
                detail,
            },
            ctx,
        )
        .await?)
}
