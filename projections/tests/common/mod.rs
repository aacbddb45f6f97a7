//! Shared fixtures for the read-side tests: a log with every kind of event,
//! and a row-by-row dump of the read-model tables.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use toolhub_domain::definition::NodeId;
use toolhub_domain::execution::{Execution, ExecutionCommand};
use toolhub_domain::mcp_server::{McpServer, McpServerCommand, ToolInfo, Transport};
use toolhub_domain::secret::Secret;
use toolhub_domain::workflow::{Workflow, WorkflowCommand};
use toolhub_domain::{ExecutionId, McpServerId, SecretId, TenantId, WorkflowId};
use toolhub_eventstore::{
    CommandBus, CommandContext, Db, EventStore, KeyStore, MasterKey, Position, SecretVault,
};
use zeroize::Zeroizing;

/// The read-model tables, in a fixed order.
pub const TABLES: &[&str] = &[
    "rm_workflows",
    "rm_workflow_versions",
    "rm_executions",
    "rm_execution_steps",
    "rm_secrets",
    "rm_mcp_servers",
    "rm_mcp_tools",
    "rm_audit",
];

/// The command buses of every aggregate on one store.
pub struct Writers {
    pub workflows: CommandBus<Workflow>,
    pub executions: CommandBus<Execution>,
    pub mcp: CommandBus<McpServer>,
    pub vault: SecretVault,
}

impl Writers {
    pub fn new(store: &EventStore) -> Arc<Self> {
        let keys = KeyStore::new(store.db().clone(), MasterKey::generate());
        Arc::new(Self {
            workflows: CommandBus::new(store.clone()),
            executions: CommandBus::new(store.clone()),
            mcp: CommandBus::new(store.clone()),
            vault: SecretVault::new(CommandBus::<Secret>::new(store.clone()), keys),
        })
    }
}

pub fn tenant(name: &str) -> TenantId {
    TenantId::parse(name).expect("a tenant")
}

pub fn definition(delay: u64) -> serde_json::Value {
    json!({
        "nodes": [
            {"id": "fetch", "type": "http", "params": {"method": "GET",
              "url": "https://example.com/items", "headers": {"Authorization": "Bearer {{secrets.API_TOKEN}}"}}},
            {"id": "wait", "type": "delay", "params": {"milliseconds": delay}}
        ],
        "edges": [{"from": "fetch", "to": "wait"}]
    })
}

/// What one round of [`populate`] created.
#[derive(Debug, Default, Clone)]
pub struct Populated {
    pub workflows: Vec<String>,
    pub executions: Vec<String>,
    pub secrets: Vec<String>,
    pub mcp_servers: Vec<String>,
    /// The plaintext values given to secrets.
    pub secret_values: Vec<String>,
    /// The position of the last event written.
    pub last: Position,
}

fn track(last: &mut Position, committed: toolhub_eventstore::Committed) {
    if let Some(p) = committed.position {
        *last = (*last).max(p);
    }
}

/// Writes every kind of event for `tenant`: `n` of each entity.
pub async fn populate(w: &Writers, tenant_name: &str, n: usize) -> Populated {
    let ctx = CommandContext::new(format!("user-of-{tenant_name}"), tenant(tenant_name));
    let mut out = Populated::default();
    // Names are unique within a tenant, and a test may populate one tenant
    // more than once.
    let call = uuid::Uuid::new_v4().simple().to_string()[..8].to_uppercase();
    for i in 0..n {
        let wid = WorkflowId::new().to_string();
        let c = w
            .workflows
            .execute(
                &wid,
                WorkflowCommand::Create {
                    tenant: ctx.tenant.clone(),
                    name: format!("Workflow {i}"),
                    description: "made by a test".into(),
                    definition: definition(10),
                },
                &ctx,
            )
            .await
            .expect("create a workflow");
        track(&mut out.last, c);
        for (k, cmd) in [
            WorkflowCommand::UpdateDefinition {
                definition: definition(20),
                comment: Some("slower".into()),
            },
            WorkflowCommand::Rename {
                name: format!("Renamed {i}"),
            },
            WorkflowCommand::Revert {
                to_version: 1,
                comment: None,
            },
            WorkflowCommand::Archive,
        ]
        .into_iter()
        .enumerate()
        {
            if k == 3 && i % 2 == 0 {
                continue;
            }
            let c = w
                .workflows
                .execute(&wid, cmd, &ctx)
                .await
                .expect("change a workflow");
            track(&mut out.last, c);
        }

        let eid = ExecutionId::new().to_string();
        let fetch = NodeId::parse("fetch").expect("node id");
        let wait = NodeId::parse("wait").expect("node id");
        let commands = vec![
            ExecutionCommand::Start {
                tenant: ctx.tenant.clone(),
                workflow_id: wid.parse().expect("an id"),
                workflow_version: 3,
                input: json!({"n": i}),
                trigger: "manual".into(),
                source: None,
                breakpoints: vec![],
                deadline: None,
            },
            ExecutionCommand::ScheduleStep {
                node_id: fetch.clone(),
                attempt: 1,
                input: json!({"url": "x"}),
            },
            ExecutionCommand::StartStep {
                node_id: fetch.clone(),
                attempt: 1,
                wake_at: None,
            },
            ExecutionCommand::FailStep {
                node_id: fetch.clone(),
                attempt: 1,
                error: "timeout".into(),
                retryable: true,
            },
            ExecutionCommand::RetryStep {
                node_id: fetch.clone(),
                attempt: 2,
                not_before: None,
            },
            ExecutionCommand::StartStep {
                node_id: fetch.clone(),
                attempt: 2,
                wake_at: None,
            },
            ExecutionCommand::SucceedStep {
                node_id: fetch,
                attempt: 2,
                output: json!({"status": 200}),
            },
            ExecutionCommand::ScheduleStep {
                node_id: wait.clone(),
                attempt: 1,
                input: json!({}),
            },
            ExecutionCommand::StartStep {
                node_id: wait.clone(),
                attempt: 1,
                wake_at: None,
            },
            ExecutionCommand::SucceedStep {
                node_id: wait,
                attempt: 1,
                output: json!(null),
            },
            if i % 2 == 0 {
                ExecutionCommand::Complete {
                    output: json!({"ok": true}),
                }
            } else {
                ExecutionCommand::Fail {
                    error: "boom".into(),
                }
            },
        ];
        for cmd in commands {
            let c = w
                .executions
                .execute(&eid, cmd, &ctx)
                .await
                .expect("execution command");
            track(&mut out.last, c);
        }

        let sid = SecretId::new();
        let value = format!("plain-{tenant_name}-{i}-{}", uuid::Uuid::new_v4().simple());
        let rotated = format!(
            "rotated-{tenant_name}-{i}-{}",
            uuid::Uuid::new_v4().simple()
        );
        let c = w
            .vault
            .create(
                &ctx,
                sid,
                format!("TOKEN_{i}_{call}"),
                "a token".into(),
                Zeroizing::new(value.clone()),
            )
            .await
            .expect("create a secret");
        track(&mut out.last, c);
        let c = w
            .vault
            .rotate(&ctx, sid, Zeroizing::new(rotated.clone()), None)
            .await
            .expect("rotate a secret");
        track(&mut out.last, c);
        if i % 3 == 2 {
            let c = w
                .vault
                .delete(&ctx, sid, None)
                .await
                .expect("delete a secret");
            track(&mut out.last, c);
        }
        out.secret_values.push(value);
        out.secret_values.push(rotated);

        let mid = McpServerId::new().to_string();
        let mut headers = BTreeMap::new();
        headers.insert(
            "Authorization".to_string(),
            "Bearer literal-token-do-not-leak".to_string(),
        );
        headers.insert("X-Api-Key".to_string(), "{{secrets.TOKEN_0}}".to_string());
        for cmd in [
            McpServerCommand::Register {
                tenant: ctx.tenant.clone(),
                name: format!("server-{i}-{}", call.to_lowercase()),
                transport: Transport::StreamableHttp {
                    url: "https://mcp.example.com/mcp".into(),
                    headers,
                },
            },
            McpServerCommand::DiscoverTools {
                tools: vec![
                    ToolInfo {
                        name: "echo".into(),
                        description: Some("Echoes".into()),
                        input_schema: json!({"type": "object"}),
                        read_only: false,
                        idempotent: false,
                    },
                    ToolInfo {
                        name: "add".into(),
                        description: None,
                        input_schema: json!({"type": "object"}),
                        read_only: false,
                        idempotent: false,
                    },
                ],
            },
            McpServerCommand::RecordHealth {
                healthy: true,
                latency_ms: 12,
                detail: None,
            },
            McpServerCommand::DiscoverTools {
                tools: vec![ToolInfo {
                    name: "echo".into(),
                    description: None,
                    input_schema: json!({}),
                    read_only: false,
                    idempotent: false,
                }],
            },
            McpServerCommand::Disable,
        ] {
            let c = w.mcp.execute(&mid, cmd, &ctx).await.expect("mcp command");
            track(&mut out.last, c);
        }

        out.workflows.push(wid);
        out.executions.push(eid);
        out.secrets.push(sid.to_string());
        out.mcp_servers.push(mid);
    }
    out
}

/// Every row of every read-model table, as text, in a stable order.
pub async fn dump(db: &Db) -> BTreeMap<&'static str, Vec<String>> {
    let mut out = BTreeMap::new();
    for table in TABLES {
        let rows: Vec<String> = match db {
            Db::Postgres(pool) => sqlx::query_scalar(&format!(
                "SELECT row_to_json(t)::text AS r FROM {table} t ORDER BY 1"
            ))
            .fetch_all(pool)
            .await
            .expect("dump a table"),
            Db::Sqlite(pool) => {
                let columns: Vec<String> =
                    sqlx::query_scalar(&format!("SELECT name FROM pragma_table_info('{table}')"))
                        .fetch_all(pool)
                        .await
                        .expect("columns");
                sqlx::query_scalar(&format!(
                    "SELECT json_array({}) AS r FROM {table} ORDER BY 1",
                    columns.join(", ")
                ))
                .fetch_all(pool)
                .await
                .expect("dump a table")
            }
        };
        out.insert(*table, rows);
    }
    out
}

/// Waits until every projector has applied `position`.
pub async fn settle(read: &toolhub_projections::ReadModels, position: Position) {
    read.wait_for(position, Duration::from_secs(30))
        .await
        .expect("the projectors catch up");
}

/// Rebuilds every projection from scratch, in one pass.
pub async fn rebuild_all(store: &EventStore) {
    let all = toolhub_projections::projection::all();
    let projections: Vec<&dyn toolhub_projections::Projection> =
        all.iter().map(|p| p.as_ref()).collect();
    toolhub_projections::rebuild_many(store, &projections, 500, |_| {})
        .await
        .expect("rebuild");
}
