//! A large, mixed event log written straight into the `events` table: real
//! domain events serialized with serde exactly as the command bus stores
//! them, with the metadata the bus writes, inserted with multi-row
//! statements so that a million events take seconds rather than the
//! minutes a million commands would.
//!
//! The log is made of blocks of about sixty events, interleaved the way
//! concurrent users interleave them: one workflow (created, four definition
//! updates, renamed), four executions of it (started, three steps scheduled,
//! started and succeeded — every tenth execution fails a step once and
//! retries it — and completed), one secret (created, rotated twice) and one
//! MCP server (registered, three tools discovered, five health checks).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use cqrs_es::DomainEvent;
use serde::Serialize;
use serde_json::json;
use sqlx::QueryBuilder;
use toolhub_domain::definition::{NodeId, WorkflowDefinition};
use toolhub_domain::execution::ExecutionEvent;
use toolhub_domain::mcp_server::{McpServerEvent, ToolInfo, Transport};
use toolhub_domain::secret::{SealedValue, SecretEvent};
use toolhub_domain::workflow::WorkflowEvent;
use toolhub_domain::{TenantId, WorkflowId};
use toolhub_eventstore::Db;
use uuid::Uuid;

/// One row of the `events` table.
pub struct Row {
    aggregate_type: &'static str,
    aggregate_id: String,
    sequence: i64,
    event_type: String,
    payload: String,
    metadata: String,
}

/// What was generated.
pub struct Generated {
    /// Events inserted.
    pub events: u64,
    /// Events per aggregate type.
    pub by_type: BTreeMap<&'static str, u64>,
    /// Wall-clock time, serialization and insertion together.
    pub elapsed: Duration,
}

/// The metadata the command bus stores with every event.
#[derive(Serialize)]
struct Metadata<'a> {
    actor: &'a str,
    tenant: &'a str,
    correlation_id: &'a str,
    causation_id: &'a str,
    request_id: &'a str,
}

/// The definition versions every generated workflow goes through.
fn definitions() -> Vec<WorkflowDefinition> {
    (1..=5)
        .map(|v| {
            let value = json!({
                "nodes": [
                    {"id": "fetch", "type": "http", "name": "Fetch the items", "position": {"x": 0, "y": 0},
                     "params": {"method": "GET", "url": format!("https://api.example.com/v{v}/items"),
                                "headers": {"Authorization": "Bearer {{secrets.API_TOKEN}}"}, "body": null}},
                    {"id": "summarize", "type": "mcp_tool", "name": "Summarize", "position": {"x": 240, "y": 0},
                     "params": {"server": "assistant", "tool": "summarize",
                                "arguments": {"text": "{{nodes.fetch.body}}", "max_words": 20 * v}}},
                    {"id": "report", "type": "transform", "name": "Build the report", "position": {"x": 480, "y": 0},
                     "params": {"template": {"summary": "{{nodes.summarize}}", "version": v}}}
                ],
                "edges": [{"from": "fetch", "to": "summarize"}, {"from": "summarize", "to": "report"}]
            });
            WorkflowDefinition::parse(&value).expect("the benchmark definition is valid")
        })
        .collect()
}

/// Builds blocks of events on demand.
struct Generator {
    definitions: Vec<WorkflowDefinition>,
    nodes: Vec<NodeId>,
    tenants: Vec<TenantId>,
    block: u64,
}

/// The events of one aggregate, in sequence order, before interleaving.
struct Stream {
    aggregate_type: &'static str,
    id: String,
    tenant: usize,
    events: Vec<(String, String)>,
}

/// A domain event's stable type and its payload, as the command bus
/// stores them.
/// A stream being interleaved: its events still to go, and the sequence of
/// the last one taken.
type Cursor = (Stream, std::vec::IntoIter<(String, String)>, i64);

fn event<E: DomainEvent>(e: E) -> (String, String) {
    (
        e.event_type(),
        serde_json::to_string(&e).expect("a domain event serializes"),
    )
}

impl Generator {
    fn new() -> Self {
        Self {
            definitions: definitions(),
            nodes: ["fetch", "summarize", "report"]
                .iter()
                .map(|n| NodeId::parse(n).expect("a node id"))
                .collect(),
            tenants: (0..8)
                .map(|t| TenantId::parse(format!("tenant-{t}")).expect("a tenant"))
                .collect(),
            block: 0,
        }
    }

    /// The next block, interleaved round-robin across its aggregates.
    fn next_block(&mut self) -> Vec<Row> {
        let b = self.block;
        self.block += 1;
        let t = (b % self.tenants.len() as u64) as usize;
        let tenant = self.tenants[t].clone();
        let mut streams = Vec::new();

        let workflow_id = WorkflowId::from_uuid(Uuid::now_v7());
        let mut workflow = vec![event(WorkflowEvent::WorkflowCreated {
            tenant: tenant.clone(),
            name: format!("workflow {b}"),
            description: "Fetches items, summarizes them and builds a report.".into(),
            definition: self.definitions[0].clone(),
        })];
        for v in 2..=5u64 {
            workflow.push(event(WorkflowEvent::WorkflowDefinitionUpdated {
                version: v,
                definition: self.definitions[v as usize - 1].clone(),
                comment: Some(format!("version {v}")),
            }));
        }
        workflow.push(event(WorkflowEvent::WorkflowRenamed {
            name: format!("workflow {b} (renamed)"),
        }));
        streams.push(Stream {
            aggregate_type: "workflow",
            id: workflow_id.to_string(),
            tenant: t,
            events: workflow,
        });

        for e in 0..4u64 {
            let run = b * 4 + e;
            let mut execution = vec![event(ExecutionEvent::ExecutionStarted {
                tenant: tenant.clone(),
                workflow_id,
                workflow_version: 1 + e,
                input: json!({"page": run % 100, "language": "en"}),
                trigger: if e == 0 { "cron" } else { "manual" }.into(),
                source: None,
                breakpoints: vec![],
                deadline: None,
            })];
            for (n, node) in self.nodes.iter().enumerate() {
                execution.push(event(ExecutionEvent::StepScheduled {
                    node_id: node.clone(),
                    attempt: 1,
                    input: json!({"node": node.as_str(), "page": run % 100}),
                }));
                execution.push(event(ExecutionEvent::StepStarted {
                    node_id: node.clone(),
                    attempt: 1,
                    wake_at: None,
                }));
                let mut attempt = 1;
                if n == 1 && run.is_multiple_of(10) {
                    execution.push(event(ExecutionEvent::StepFailed {
                        node_id: node.clone(),
                        attempt: 1,
                        error: "the MCP server timed out".into(),
                        retryable: true,
                    }));
                    attempt = 2;
                    execution.push(event(ExecutionEvent::StepRetried {
                        node_id: node.clone(),
                        attempt,
                        not_before: None,
                    }));
                    execution.push(event(ExecutionEvent::StepStarted {
                        node_id: node.clone(),
                        attempt,
                        wake_at: None,
                    }));
                }
                execution.push(event(ExecutionEvent::StepSucceeded {
                        node_id: node.clone(),
                        attempt,
                        output: json!({"status": 200, "body": {"items": [run, run + 1], "node": node.as_str()}}),
                    },
                ));
            }
            execution.push(event(ExecutionEvent::ExecutionCompleted {
                output: json!({"summary": format!("run {run}"), "ok": true}),
            }));
            streams.push(Stream {
                aggregate_type: "execution",
                id: Uuid::now_v7().to_string(),
                tenant: t,
                events: execution,
            });
        }

        let mut secret = vec![event(SecretEvent::SecretCreated {
            tenant: tenant.clone(),
            name: format!("API_TOKEN_{b}"),
            description: "The items API token.".into(),
            value: SealedValue::new("bm9uY2U=", "Y2lwaGVy"),
        })];
        for rotation in 1..=2 {
            secret.push(event(SecretEvent::SecretRotated {
                value: SealedValue::new("bm9uY2Uy", "Y2lwaGVyMg=="),
                rotation,
            }));
        }
        streams.push(Stream {
            aggregate_type: "secret",
            id: Uuid::now_v7().to_string(),
            tenant: t,
            events: secret,
        });

        let mut server = vec![event(McpServerEvent::McpServerRegistered {
            tenant,
            name: format!("assistant-{b}"),
            transport: Transport::StreamableHttp {
                url: "https://mcp.example.com/mcp".into(),
                headers: [(
                    "Authorization".to_string(),
                    "Bearer {{secrets.API_TOKEN}}".to_string(),
                )]
                .into_iter()
                .collect(),
            },
        })];
        server.push(event(McpServerEvent::McpServerToolsDiscovered {
                tools: ["summarize", "translate", "classify"]
                    .iter()
                    .map(|name| ToolInfo {
                        name: (*name).into(),
                        description: Some(format!("The {name} tool.")),
                        input_schema: json!({"type": "object", "properties": {"text": {"type": "string"}}}),
                        read_only: false,
                        idempotent: false,
                    })
                    .collect(),
            },
        ));
        for check in 0..5u64 {
            server.push(event(McpServerEvent::McpServerHealthChecked {
                healthy: check != 3,
                latency_ms: 5 + (b + check) % 200,
                detail: (check == 3).then(|| "connection reset".to_string()),
            }));
        }
        streams.push(Stream {
            aggregate_type: "mcp_server",
            id: Uuid::now_v7().to_string(),
            tenant: t,
            events: server,
        });

        self.interleave(b, streams)
    }

    fn interleave(&self, b: u64, streams: Vec<Stream>) -> Vec<Row> {
        let mut rows = Vec::new();
        let mut cursors: Vec<Cursor> = streams
            .into_iter()
            .map(|mut s| {
                let events = std::mem::take(&mut s.events).into_iter();
                (s, events, 0)
            })
            .collect();
        let actor = format!("user-{}", b % 50);
        loop {
            let mut any = false;
            for (stream, events, sequence) in &mut cursors {
                let Some((event_type, payload)) = events.next() else {
                    continue;
                };
                any = true;
                *sequence += 1;
                let correlation = Uuid::new_v4().to_string();
                let metadata = serde_json::to_string(&Metadata {
                    actor: &actor,
                    tenant: self.tenants[stream.tenant].as_str(),
                    correlation_id: &correlation,
                    causation_id: "",
                    request_id: &correlation,
                })
                .expect("metadata serializes");
                rows.push(Row {
                    aggregate_type: stream.aggregate_type,
                    aggregate_id: stream.id.clone(),
                    sequence: *sequence,
                    event_type,
                    payload,
                    metadata,
                });
            }
            if !any {
                return rows;
            }
        }
    }
}

/// Inserts `total` generated events into the (empty) log.
pub async fn generate(db: &Db, total: u64) -> Generated {
    let started = Instant::now();
    let mut generator = Generator::new();
    let mut by_type: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut done = 0u64;
    let chunk = 4_000usize;
    let mut buffer: Vec<Row> = Vec::with_capacity(chunk + 100);
    while done < total {
        while buffer.len() < chunk {
            buffer.extend(generator.next_block());
        }
        let take = chunk.min((total - done) as usize);
        let rest = buffer.split_off(take);
        for row in &buffer {
            *by_type.entry(row.aggregate_type).or_default() += 1;
        }
        insert(db, &buffer).await;
        done += buffer.len() as u64;
        buffer = rest;
    }
    if let Db::Postgres(pool) = db {
        sqlx::query("ANALYZE events")
            .execute(pool)
            .await
            .expect("analyze the log");
    }
    Generated {
        events: done,
        by_type,
        elapsed: started.elapsed(),
    }
}

/// Inserts rows with one statement, in their order (so that global
/// positions follow it).
async fn insert(db: &Db, rows: &[Row]) {
    match db {
        Db::Postgres(pool) => {
            let types: Vec<&str> = rows.iter().map(|r| r.aggregate_type).collect();
            let ids: Vec<&str> = rows.iter().map(|r| r.aggregate_id.as_str()).collect();
            let sequences: Vec<i64> = rows.iter().map(|r| r.sequence).collect();
            let event_types: Vec<&str> = rows.iter().map(|r| r.event_type.as_str()).collect();
            let payloads: Vec<&str> = rows.iter().map(|r| r.payload.as_str()).collect();
            let metadata: Vec<&str> = rows.iter().map(|r| r.metadata.as_str()).collect();
            sqlx::query(
                "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
                 SELECT t, i, s, e, '1.0', p::json, m::json \
                   FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[], $6::text[]) \
                        WITH ORDINALITY AS u(t, i, s, e, p, m, n) \
                  ORDER BY n",
            )
            .bind(&types)
            .bind(&ids)
            .bind(&sequences)
            .bind(&event_types)
            .bind(&payloads)
            .bind(&metadata)
            .execute(pool)
            .await
            .expect("insert generated events");
        }
        Db::Sqlite(pool) => {
            // Under SQLite's limit of 32,766 bound parameters per statement.
            let mut tx = pool.begin().await.expect("begin");
            for part in rows.chunks(4_000) {
                let mut builder = QueryBuilder::new(
                    "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) ",
                );
                builder.push_values(part, |mut b, r| {
                    b.push_bind(r.aggregate_type)
                        .push_bind(&r.aggregate_id)
                        .push_bind(r.sequence)
                        .push_bind(&r.event_type)
                        .push_bind("1.0")
                        .push_bind(&r.payload)
                        .push_bind(&r.metadata);
                });
                builder
                    .build()
                    .execute(&mut *tx)
                    .await
                    .expect("insert generated events");
            }
            tx.commit().await.expect("commit");
        }
    }
}
