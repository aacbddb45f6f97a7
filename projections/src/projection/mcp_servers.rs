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
    /// A row of `rm_mcp_servers`.
    pub(crate) struct McpServerRow {
        /// The server's id.
        id: String = text,
        /// The owning tenant.
        tenant: String = text,
        /// The sequence of the last event applied.
        seq: i64 = int,
        /// The name `mcp_tool` nodes refer to.
        name: String = text,
        /// How to reach it, literal credentials redacted.
        transport: Value = json,
        /// Whether executions may use it.
        enabled: bool = bool,
        /// Whether it was deregistered.
        deregistered: bool = bool,
        /// The last health check's verdict.
        healthy: Option<bool> = opt_bool,
        /// The last health check's latency.
        latency_ms: Option<i64> = opt_int,
        /// The last health check's detail.
        health_detail: Option<String> = opt_text,
        /// When it was last checked.
        checked_at: Option<DateTime<Utc>> = opt_time,
        /// When it was registered.
        created_at: DateTime<Utc> = time,
        /// When it last changed.
        updated_at: DateTime<Utc> = time,
    }
}
entity!(McpServerRow);

table_row! {
    /// A row of `rm_mcp_tools`: one tool of one server.
    pub(crate) struct ToolRow {
        /// The server.
        server_id: String = text,
        /// The tool's name.
        name: String = text,
        /// The owning tenant.
        tenant: String = text,
        /// What the tool does.
        description: Option<String> = opt_text,
        /// The JSON Schema of its arguments.
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
            |event, payload: McpServerEvent, row: Option<&mut McpServerRow>| {
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
                        return Ok(Some(McpServerRow {
                            id: id.clone(),
                            tenant: tenant.to_string(),
                            seq: 0,
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
                                        ToolRow {
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
                                row.latency_ms = Some(latency_ms.min(i64::MAX as u64) as i64);
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
            ToolRow::COLUMNS,
            tools.into_values().flatten().collect(),
            &upsert_tail(&["server_id", "name"], ToolRow::COLUMNS),
        )
        .await?;
        Ok(())
    }
}
