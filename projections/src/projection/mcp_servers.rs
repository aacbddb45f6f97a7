//! The `mcp_servers` read model: MCP servers with their (redacted)
//! transport and health (`rm_mcp_servers`), and the tools each discovered
//! last (`rm_mcp_tools`).

use std::collections::BTreeMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;
use toolhub_domain::mcp_server::McpServerEvent;
use toolhub_eventstore::sql::{insert_rows, placeholders, upsert_tail, Arg, Conn};
use toolhub_eventstore::{RecordedEvent, StoreError};

use super::fold::{entity, fold, of_type, table_row};
use super::{Projection, Tables};
use crate::redact::redact_transport;

table_row! {
    /// An MCP server's configuration and health: a row of `rm_mcp_servers`.
    pub struct McpServerView {
        /// The server's id.
        id: String = text,
        /// The owning tenant.
        tenant: String = text,
        /// The aggregate's version.
        aggregate_version: u64 = uint as "seq",
        /// The name workflows refer to it by.
        name: String = text,
        /// The transport (`{"kind": "stdio", …}` or `{"kind":
        /// "streamable_http", …}`), with literal environment and header
        /// values redacted (values that reference secrets are kept).
        transport: Value = json,
        /// Whether the engine may call it.
        enabled: bool = bool,
        /// Whether it was deregistered; queries skip these.
        deregistered: bool = bool,
        /// The latest health check: healthy or not.
        healthy: Option<bool> = opt_bool,
        /// The latest health check's latency.
        latency_ms: Option<u64> = opt_uint,
        /// The latest health check's detail.
        health_detail: Option<String> = opt_text,
        /// When it was last checked.
        checked_at: Option<DateTime<Utc>> = opt_time,
        /// When it was registered.
        created_at: DateTime<Utc> = time,
        /// When it last changed.
        updated_at: DateTime<Utc> = time,
    }
}
entity!(McpServerView, aggregate_version);

table_row! {
    /// A tool an MCP server advertises: a row of `rm_mcp_tools`.
    pub struct McpToolView {
        /// The server's id.
        server_id: String = text,
        /// The tool's name.
        name: String = text,
        /// The owning tenant.
        tenant: String = text,
        /// Its description.
        description: Option<String> = opt_text,
        /// Its input JSON schema.
        input_schema: Value = json,
    }
}

/// The transport as the read model shows it: literal credentials redacted.
fn redacted_transport<T: serde::Serialize>(transport: &T) -> Result<Value, StoreError> {
    let mut value = serde_json::to_value(transport)?;
    redact_transport(&mut value);
    Ok(value)
}

/// MCP servers, their health and their tools.
pub struct McpServersProjection;

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
        // The last tool list discovered in this batch, per server.
        let mut tools: BTreeMap<String, Vec<Vec<Arg>>> = BTreeMap::new();
        fold(
            conn,
            &tables.name("rm_mcp_servers"),
            &events,
            |event, payload: McpServerEvent, row: Option<&mut McpServerView>| {
                let id = &event.aggregate_id;
                let at = event.recorded_at;
                let row = match (payload, row) {
                    (
                        McpServerEvent::McpServerRegistered {
                            tenant,
                            name,
                            transport,
                        },
                        _,
                    ) => {
                        return Ok(Some(McpServerView {
                            id: id.clone(),
                            tenant: tenant.to_string(),
                            aggregate_version: 0,
                            name,
                            transport: redacted_transport(&transport)?,
                            enabled: true,
                            deregistered: false,
                            healthy: None,
                            latency_ms: None,
                            health_detail: None,
                            checked_at: None,
                            created_at: at,
                            updated_at: at,
                        }))
                    }
                    (_, None) => return Ok(None),
                    (payload, Some(row)) => {
                        match payload {
                            McpServerEvent::McpServerRegistered { .. } => {}
                            McpServerEvent::McpServerConfigUpdated { transport } => {
                                row.transport = redacted_transport(&transport)?;
                            }
                            McpServerEvent::McpServerToolsDiscovered { tools: discovered } => {
                                let list = discovered
                                    .into_iter()
                                    .map(|t| {
                                        McpToolView {
                                            server_id: id.clone(),
                                            name: t.name,
                                            tenant: row.tenant.clone(),
                                            description: t.description,
                                            input_schema: t.input_schema,
                                        }
                                        .into_args()
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
                                row.latency_ms = Some(latency_ms);
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
                        row
                    }
                };
                row.updated_at = at;
                Ok(None)
            },
        )
        .await?;
        if tools.is_empty() {
            return Ok(());
        }
        let tools_table = tables.name("rm_mcp_tools");
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
            McpToolView::COLUMNS,
            tools.into_values().flatten().collect(),
            &upsert_tail(&["server_id", "name"], McpToolView::COLUMNS),
        )
        .await?;
        Ok(())
    }
}
