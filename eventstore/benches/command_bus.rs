//! Command throughput through the command bus on PostgreSQL, against the raw
//! rate of inserting the same rows with plain SQL, and against vanilla
//! cqrs-es + postgres-es, all measured in one run.
//!
//! Creations are measured twice: a workflow's (no name to claim) and an MCP
//! server's (its name is claimed, unique in the tenant), each against
//! hand-written SQL that writes the same rows — for the claim, the event and
//! the `name_claims` row in one transaction, as a user would write it.
//!
//! Run with `cargo bench -p toolhub-eventstore --bench command_bus`.
//! `BENCH_SECONDS` (default 3) sets the length of each measurement and
//! `BENCH_ROUNDS` (default 3) how many rounds are run; the medians are
//! reported. `BENCH_SMOKE=1` runs every path briefly, once. Needs PostgreSQL at `DATABASE_URL` (or the default
//! `postgres://postgres@127.0.0.1:5432/postgres`); a fresh database is created
//! and dropped.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cqrs_es::persist::PersistedEventStore;
use cqrs_es::{CqrsFramework, DomainEvent};
use postgres_es::PostgresEventRepository;
use sqlx::PgPool;
use toolhub_domain::definition::WorkflowDefinition;
use toolhub_domain::mcp_server::{McpServer, McpServerCommand, McpServerEvent, Transport};
use toolhub_domain::workflow::{Workflow, WorkflowCommand, WorkflowEvent};
use toolhub_domain::TenantId;
use toolhub_eventstore::testing::TestDb;
use toolhub_eventstore::{open_with, CommandBus, CommandContext, Db, StoreOptions};
use uuid::Uuid;

const PRIOR_EVENTS: i64 = 1_000;

/// Must equal `McpServer::TYPE`; checked at start-up.
const AGGREGATE_TYPE: &str = "mcp_server";

fn tenant() -> TenantId {
    TenantId::parse("bench").expect("tenant")
}

/// A registration under a name no other command of the run uses: names are
/// unique within a tenant.
fn register() -> McpServerCommand {
    McpServerCommand::Register {
        tenant: tenant(),
        name: unique_name(),
        transport: Transport::Stdio {
            command: "npx".into(),
            args: vec![
                "-y".into(),
                "@modelcontextprotocol/server-everything".into(),
            ],
            env: BTreeMap::new(),
        },
    }
}

/// A fresh valid MCP server name.
fn unique_name() -> String {
    format!("s-{}", Uuid::new_v4().simple())
}

/// A workflow creation: a creation that claims no name.
fn create_workflow() -> WorkflowCommand {
    WorkflowCommand::Create {
        tenant: tenant(),
        name: "Nightly report".into(),
        description: "Fetches the numbers and posts them".into(),
        definition: workflow_definition(),
    }
}

/// A small definition of three nodes, about the size of a registration's
/// payload.
fn workflow_definition() -> serde_json::Value {
    serde_json::json!({
        "nodes": [
            {"id": "fetch", "type": "http", "params": {"method": "GET", "url": "https://example.com/numbers"}},
            {"id": "shape", "type": "transform", "params": {"template": {"n": "{{nodes.fetch.body}}"}}},
            {"id": "wait", "type": "delay", "params": {"milliseconds": 10}}
        ],
        "edges": [{"from": "fetch", "to": "shape"}, {"from": "shape", "to": "wait"}]
    })
}

fn health(i: u64) -> McpServerCommand {
    McpServerCommand::RecordHealth {
        healthy: !i.is_multiple_of(7),
        latency_ms: i % 250,
        detail: None,
    }
}

/// The row the bus writes for a `Register` command, for the raw baseline.
fn registered_row(ctx: &CommandContext) -> Row {
    let McpServerCommand::Register {
        tenant,
        name,
        transport,
    } = register()
    else {
        unreachable!("register() builds a Register command")
    };
    event_row(
        &McpServerEvent::McpServerRegistered {
            tenant,
            name,
            transport,
        },
        ctx,
    )
}

/// The row the bus writes for a workflow's `Create` command.
fn created_row(ctx: &CommandContext) -> Row {
    let event = WorkflowEvent::WorkflowCreated {
        tenant: tenant(),
        name: "Nightly report".into(),
        description: "Fetches the numbers and posts them".into(),
        definition: WorkflowDefinition::parse(&workflow_definition()).expect("valid"),
    };
    event_row(&event, ctx)
}

/// An event's type, version, payload and metadata, as the bus stores them.
type Row = (String, String, String, String);

/// The row of `event` with the metadata of `ctx`.
fn event_row<E: DomainEvent>(event: &E, ctx: &CommandContext) -> Row {
    let mut metadata = std::collections::HashMap::new();
    metadata.insert("actor", ctx.actor.clone());
    metadata.insert("tenant", ctx.tenant.to_string());
    metadata.insert("correlation_id", ctx.correlation_id.to_string());
    metadata.insert("causation_id", String::new());
    metadata.insert("request_id", ctx.request_id.clone());
    (
        event.event_type(),
        event.event_version(),
        serde_json::to_string(&event).expect("serialise"),
        serde_json::to_string(&metadata).expect("serialise"),
    )
}

/// The insert the raw baselines run: one event row, autocommit.
const INSERT_EVENT: &str =
    "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, \
     event_version, payload, metadata) VALUES ($1, $2, 1, $3, $4, $5::json, $6::json)";

/// Inserts `row` as the first event of a new aggregate of `aggregate_type`.
fn raw_insert(
    pool: &PgPool,
    row: Arc<Row>,
    aggregate_type: &'static str,
) -> impl Fn(usize, u64) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
       + Send
       + Sync
       + 'static {
    let pool = pool.clone();
    move |_, _| {
        let (pool, row) = (pool.clone(), row.clone());
        Box::pin(async move {
            sqlx::query(INSERT_EVENT)
                .bind(aggregate_type)
                .bind(Uuid::now_v7().to_string())
                .bind(&row.0)
                .bind(&row.1)
                .bind(&row.2)
                .bind(&row.3)
                .execute(&pool)
                .await
                .expect("raw insert");
        })
    }
}

/// Runs `op` from `writers` tasks for `seconds`; returns operations per second.
async fn measure<F, Fut>(writers: usize, seconds: f64, op: F) -> f64
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let op = Arc::new(op);
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (op, stop, done) = (op.clone(), stop.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                op(w, i).await;
                i += 1;
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.expect("writer");
    }
    done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

/// Inserts `PRIOR_EVENTS` health-check events (after a registration) for
/// each id, directly.
async fn preload(pool: &PgPool, ids: &[String], ctx: &CommandContext) {
    let (rt, rv, rp, meta) = registered_row(ctx);
    let health = McpServerEvent::McpServerHealthChecked {
        healthy: true,
        latency_ms: 12,
        detail: None,
    };
    let hp = serde_json::to_string(&health).expect("serialise");
    for id in ids {
        sqlx::query(
            "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
             VALUES ('mcp_server', $1, 1, $2, $3, $4::json, $5::json)",
        )
        .bind(id)
        .bind(&rt)
        .bind(&rv)
        .bind(&rp)
        .bind(&meta)
        .execute(pool)
        .await
        .expect("preload registration");
        sqlx::query(
            "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
             SELECT 'mcp_server', $1, s, $2, $3, $4::json, $5::json FROM generate_series(2, $6) s",
        )
        .bind(id)
        .bind(health.event_type())
        .bind(health.event_version())
        .bind(&hp)
        .bind(&meta)
        .bind(PRIOR_EVENTS + 1)
        .execute(pool)
        .await
        .expect("preload health checks");
    }
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    xs[xs.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    assert_eq!(<McpServer as cqrs_es::Aggregate>::TYPE, AGGREGATE_TYPE);
    // `BENCH_SMOKE=1` (which CI runs) makes a run take a few seconds.
    let smoke = std::env::var("BENCH_SMOKE").is_ok_and(|v| v == "1");
    let seconds: f64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if smoke { 0.2 } else { 3.0 });
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if smoke { 1 } else { 3 });
    let db = TestDb::postgres().await;
    let options = StoreOptions {
        max_connections: 16,
        ..StoreOptions::default()
    };
    let store = open_with(db.url(), options).await.expect("open");
    let Db::Postgres(pool) = store.db().clone() else {
        unreachable!("the bench runs on PostgreSQL")
    };
    let ctx = CommandContext::new("bench", tenant());
    let raw_row = Arc::new(registered_row(&ctx));
    let workflow_row = Arc::new(created_row(&ctx));

    let mut results: BTreeMap<(usize, &str), Vec<f64>> = BTreeMap::new();
    for round in 0..rounds {
        for writers in [1usize, 8] {
            // Raw: the same rows as a Register command, plain INSERTs.
            let raw = measure(
                writers,
                seconds,
                raw_insert(&pool, raw_row.clone(), "mcp_server"),
            )
            .await;
            results
                .entry((writers, "raw insert"))
                .or_default()
                .push(raw);

            // Raw with the name claim a registration makes, in one
            // transaction, as a user would write it.
            let (pool2, row) = (pool.clone(), raw_row.clone());
            let claimed = measure(writers, seconds, move |_, _| {
                let (pool, row) = (pool2.clone(), row.clone());
                async move {
                    let id = Uuid::now_v7().to_string();
                    let mut tx = pool.begin().await.expect("begin");
                    sqlx::query(INSERT_EVENT)
                        .bind("mcp_server")
                        .bind(&id)
                        .bind(&row.0)
                        .bind(&row.1)
                        .bind(&row.2)
                        .bind(&row.3)
                        .execute(&mut *tx)
                        .await
                        .expect("raw insert");
                    sqlx::query(
                        "INSERT INTO name_claims (tenant, aggregate_type, name, aggregate_id) \
                         VALUES ('bench', 'mcp_server', $1, $2)",
                    )
                    .bind(unique_name())
                    .bind(&id)
                    .execute(&mut *tx)
                    .await
                    .expect("raw claim");
                    tx.commit().await.expect("commit");
                }
            })
            .await;
            results
                .entry((writers, "raw insert + name claim"))
                .or_default()
                .push(claimed);

            // The bus, new aggregates: one Register per command.
            let bus = Arc::new(CommandBus::<McpServer>::new(store.clone()));
            let (b, c) = (bus.clone(), ctx.clone());
            let new = measure(writers, seconds, move |_, _| {
                let (bus, ctx) = (b.clone(), c.clone());
                async move {
                    bus.execute(&Uuid::now_v7().to_string(), register(), &ctx)
                        .await
                        .expect("register");
                }
            })
            .await;
            results
                .entry((writers, "bus, new aggregates (name claimed)"))
                .or_default()
                .push(new);

            // A creation that claims no name, and its raw baseline.
            let raw = measure(
                writers,
                seconds,
                raw_insert(&pool, workflow_row.clone(), "workflow"),
            )
            .await;
            results
                .entry((writers, "raw insert, workflow"))
                .or_default()
                .push(raw);
            let bus = Arc::new(CommandBus::<Workflow>::new(store.clone()));
            let (b, c) = (bus.clone(), ctx.clone());
            let created = measure(writers, seconds, move |_, _| {
                let (bus, ctx) = (b.clone(), c.clone());
                async move {
                    bus.execute(&Uuid::now_v7().to_string(), create_workflow(), &ctx)
                        .await
                        .expect("create workflow");
                }
            })
            .await;
            results
                .entry((writers, "bus, new workflows (no claim)"))
                .or_default()
                .push(created);

            // The bus, aggregates with 1,000 prior events: one per writer,
            // loaded cold (snapshot-less) on its first command.
            let ids: Vec<String> = (0..writers).map(|_| Uuid::now_v7().to_string()).collect();
            preload(&pool, &ids, &ctx).await;
            let bus = Arc::new(CommandBus::<McpServer>::new(store.clone()));
            let (b, c, ids2) = (bus.clone(), ctx.clone(), Arc::new(ids));
            let old = measure(writers, seconds, move |w, i| {
                let (bus, ctx, ids) = (b.clone(), c.clone(), ids2.clone());
                async move {
                    bus.execute(&ids[w], health(i), &ctx).await.expect("health");
                }
            })
            .await;
            results
                .entry((writers, "bus, 1,000 prior events"))
                .or_default()
                .push(old);

            // Vanilla cqrs-es + postgres-es, for reference.
            let vanilla = Arc::new(CqrsFramework::new(
                PersistedEventStore::<_, McpServer>::new_event_store(PostgresEventRepository::new(
                    pool.clone(),
                )),
                vec![],
                (),
            ));
            let v = vanilla.clone();
            let vnew = measure(writers, seconds, move |_, _| {
                let v = v.clone();
                async move {
                    v.execute(&Uuid::now_v7().to_string(), register())
                        .await
                        .expect("vanilla register");
                }
            })
            .await;
            results
                .entry((writers, "vanilla cqrs-es, new aggregates"))
                .or_default()
                .push(vnew);
            let ids: Vec<String> = (0..writers).map(|_| Uuid::now_v7().to_string()).collect();
            preload(&pool, &ids, &ctx).await;
            let (v, ids2) = (vanilla.clone(), Arc::new(ids));
            let vold = measure(writers, seconds, move |w, i| {
                let (v, ids) = (v.clone(), ids2.clone());
                async move {
                    v.execute(&ids[w], health(i)).await.expect("vanilla health");
                }
            })
            .await;
            results
                .entry((writers, "vanilla cqrs-es, 1,000 prior events"))
                .or_default()
                .push(vold);
            eprintln!("round {} at {writers} writer(s) done", round + 1);
        }
    }

    println!("| writers | path | median commands/s | × its raw baseline (median of per-round ratios) | rounds (commands/s) |");
    println!("|---:|---|---:|---:|---|");
    // Each path and the hand-written SQL that writes the same rows.
    let paths = [
        ("raw insert", "raw insert"),
        ("raw insert + name claim", "raw insert"),
        ("bus, new aggregates (name claimed)", "raw insert"),
        (
            "bus, new aggregates (name claimed)",
            "raw insert + name claim",
        ),
        ("raw insert, workflow", "raw insert, workflow"),
        ("bus, new workflows (no claim)", "raw insert, workflow"),
        ("bus, 1,000 prior events", "raw insert"),
        ("vanilla cqrs-es, new aggregates", "raw insert"),
        ("vanilla cqrs-es, 1,000 prior events", "raw insert"),
    ];
    for writers in [1usize, 8] {
        for (path, baseline) in paths {
            let xs = results[&(writers, path)].clone();
            let base = &results[&(writers, baseline)];
            let ratios: Vec<f64> = xs.iter().zip(base).map(|(x, r)| x / r).collect();
            let rounds: Vec<String> = xs.iter().map(|x| format!("{x:.0}")).collect();
            println!(
                "| {writers} | {path} | {:.0} | {:.2} × {baseline} | {} |",
                median(xs.clone()),
                median(ratios),
                rounds.join(", ")
            );
        }
    }
    for writers in [1usize, 8] {
        let ratio = |path: &str, baseline: &str| {
            let xs = &results[&(writers, path)];
            let base = &results[&(writers, baseline)];
            median(xs.iter().zip(base).map(|(x, r)| x / r).collect())
        };
        let claimed = ratio("bus, new aggregates (name claimed)", "raw insert");
        let unclaimed = ratio("bus, new workflows (no claim)", "raw insert, workflow");
        println!(
            "\n{writers} writer(s): a creation that claims a name runs at {claimed:.2}× a raw insert of its event, one that claims none at {unclaimed:.2}×: the claim costs {:.0} %",
            (1.0 - claimed / unclaimed) * 100.0
        );
        println!(
            "{writers} writer(s): bus on 1,000-event aggregates runs at {:.2}× its rate on new aggregates",
            ratio("bus, 1,000 prior events", "bus, new aggregates (name claimed)")
        );
    }
}
