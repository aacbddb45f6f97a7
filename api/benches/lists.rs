//! GraphQL lists at database speed (issue 11), on PostgreSQL.
//!
//! Three list queries a UI runs all day, each through `POST /graphql` on a
//! running server, side by side with what a user could write instead: a
//! plain axum handler in this binary that verifies the same bearer token,
//! runs the minimal hand-written SQL for the same fields with sqlx, and
//! answers the same JSON.
//!
//! - `workflows(first: 20) { edges { node { id name version updatedAt } } }`
//!   over 10,000 workflows of 3 tenants (3,334 in the queried one), each
//!   with a definition of about 2.2 KB, created through `createWorkflow`;
//! - `executions(first: 20)` with each execution's steps (`nodeId status`),
//!   over 100,000 executions of three steps each;
//! - `auditLog(first: 50)` over 1,000,000 audit entries.
//!
//! - and, for reference, `{ __typename }`: the fixed cost of a request
//!   (token check, parse, validation, response) with no database.
//!
//! (Executions and audit entries are written straight into their read
//! models with `INSERT … SELECT generate_series`, in the shape the
//! projectors write: running 100,000 executions or a million commands
//! would take this machine hours, and a read benchmark reads the tables.)
//!
//! 32 concurrent keep-alive clients. Each list runs `BENCH_WINDOWS`
//! (default 7) windows of `BENCH_SECONDS` (default 2) per side, GraphQL and
//! plain alternating, after a warm-up of each; the table gives the median
//! window's requests per second per side, the median of the paired ratios,
//! and each side's p50 and p99 latency over all its requests. Run with
//! `cargo bench -p toolhub-api --bench lists` (PostgreSQL at
//! `DATABASE_URL`, or 127.0.0.1:5432); `BENCH_LISTS=workflows,auditLog`
//! runs only those lists; `BENCH_PROFILE=1` runs only the GraphQL side, for
//! a profiler to watch. `BENCH_SMOKE=1` shrinks everything
//! (CI runs it, so that the benchmark the docs cite keeps working).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{json, Value};
use sqlx::PgPool;
use toolhub_api::auth::Verifier;
use toolhub_api::config::Config;
use toolhub_domain::Role;
use toolhub_eventstore::testing::TestDb;
use toolhub_eventstore::Db;

#[path = "support/token.rs"]
mod token;
#[path = "support/workflow.rs"]
mod workflow;

use token::{token, SECRET};
use workflow::definition;

/// The allocator `toolhub serve` runs with (see `src/main.rs`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const CONCURRENCY: usize = 32;
const TENANTS: [&str; 3] = ["acme", "globex", "initech"];

/// The sizes of a run: full by default, tiny with `BENCH_SMOKE=1`.
struct Sizes {
    workflows: u64,
    executions: u64,
    audit: u64,
    window: Duration,
    windows: usize,
}

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .replace('_', "")
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

fn sizes() -> Sizes {
    if std::env::var("BENCH_SMOKE").is_ok_and(|v| v == "1") {
        Sizes {
            workflows: 90,
            executions: 300,
            audit: 3_000,
            window: Duration::from_millis(200),
            windows: 1,
        }
    } else {
        Sizes {
            workflows: env_u64("BENCH_WORKFLOWS", 10_000),
            executions: env_u64("BENCH_EXECUTIONS", 100_000),
            audit: env_u64("BENCH_AUDIT", 1_000_000),
            window: Duration::from_secs(env_u64("BENCH_SECONDS", 2)),
            windows: env_u64("BENCH_WINDOWS", 7) as usize,
        }
    }
}

/// Creates `n` workflows spread over the tenants, through `createWorkflow`,
/// eight at a time.
async fn create_workflows(client: &reqwest::Client, url: &str, n: u64) {
    let tokens: Vec<String> = TENANTS.iter().map(|t| token(t, Role::Editor)).collect();
    let tokens = Arc::new(tokens);
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (client, url, tokens, next) = (
            client.clone(),
            url.to_string(),
            tokens.clone(),
            next.clone(),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let body = json!({
                    "query": "mutation ($input: CreateWorkflowInput!) { createWorkflow(input: $input) { id } }",
                    "variables": { "input": {
                        "name": format!("Order digest {i:05}"),
                        "description": "Collects a customer's open orders, summarises them and files the digest",
                        "definition": definition(i) } }
                });
                let r: Value = client
                    .post(format!("{url}/graphql"))
                    .bearer_auth(&tokens[(i % 3) as usize])
                    .json(&body)
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                assert!(r.get("errors").is_none(), "{r}");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// Fills `rm_executions` (three steps each) and `rm_audit`, in chunks.
async fn fill(pool: &PgPool, executions: u64, audit: u64) {
    const CHUNK: u64 = 100_000;
    let mut first = 1;
    while first <= executions {
        let last = (first + CHUNK - 1).min(executions);
        sqlx::query(
            "INSERT INTO rm_executions (id, tenant, seq, workflow_id, workflow_version, status, trigger, \
               input, output, error, started_by, started_at, finished_at, updated_at) \
             SELECT md5('e' || g)::uuid::text, (ARRAY['acme','globex','initech'])[g % 3 + 1], 9, \
                    md5('w' || (g % 3000))::uuid::text, 1, 'completed', 'manual', \
                    jsonb_build_object('customer', g, 'since', '2026-11-01'), \
                    jsonb_build_object('orders', g % 17, 'filed', true), NULL, 'user-' || (g % 50), \
                    now() - make_interval(secs => g), now() - make_interval(secs => g) + interval '2 seconds', \
                    now() - make_interval(secs => g) + interval '2 seconds' \
               FROM generate_series($1::bigint, $2::bigint) AS g",
        )
        .bind(first as i64)
        .bind(last as i64)
        .execute(pool)
        .await
        .expect("fill rm_executions");
        sqlx::query(
            "INSERT INTO rm_execution_steps (execution_id, node_id, attempt, tenant, status, input, \
               output, error, scheduled_at, started_at, finished_at) \
             SELECT md5('e' || g)::uuid::text, n.node, 1, (ARRAY['acme','globex','initech'])[g % 3 + 1], \
                    'succeeded', \
                    jsonb_build_object('url', 'https://api.example.com/v2/customers/' || g || '/orders', 'method', 'GET'), \
                    jsonb_build_object('status', 200, 'body', jsonb_build_object('items', \
                      jsonb_build_array(jsonb_build_object('id', g, 'total', 129.5, 'currency', 'EUR', \
                        'note', repeat('x', 120))))), \
                    NULL, now() - make_interval(secs => g), now() - make_interval(secs => g), \
                    now() - make_interval(secs => g) + interval '1 second' \
               FROM generate_series($1::bigint, $2::bigint) AS g, \
                    (VALUES ('fetch'), ('shape'), ('store')) AS n(node)",
        )
        .bind(first as i64)
        .bind(last as i64)
        .execute(pool)
        .await
        .expect("fill rm_execution_steps");
        first = last + 1;
    }
    // After the workflows' own entries: positions above theirs.
    let base: i64 = sqlx::query_scalar("SELECT coalesce(max(global_position), 0) FROM rm_audit")
        .fetch_one(pool)
        .await
        .unwrap();
    let mut first = 1;
    while first <= audit {
        let last = (first + CHUNK * 2 - 1).min(audit);
        sqlx::query(
            "INSERT INTO rm_audit (global_position, transaction_id, tenant, aggregate_type, aggregate_id, \
             sequence, event_type, event_version, actor, correlation_id, causation_id, request_id, \
             recorded_at, payload) \
             SELECT $1 + g, 1000000 + $1 + g, (ARRAY['acme','globex','initech'])[g % 3 + 1], 'workflow', \
                    md5('w' || (g / 10))::uuid::text, g % 10 + 1, \
                    'WorkflowDefinitionUpdated', '1.0', 'user-' || (g % 50), md5(g::text), '', md5((g * 7)::text), \
                    now() - make_interval(secs => g), \
                    jsonb_build_object('type', 'WorkflowDefinitionUpdated', 'version', g % 10 + 1, \
                      'comment', repeat('c', 40), 'definition', jsonb_build_object('nodes', \
                      jsonb_build_array(jsonb_build_object('id', 'fetch', 'type', 'http', 'params', \
                      jsonb_build_object('method', 'GET', 'url', 'https://api.example.com/items/' || g)), \
                      jsonb_build_object('id', 'shape', 'type', 'transform', 'params', \
                      jsonb_build_object('template', jsonb_build_object('items', '{{nodes.fetch.body}}')))), \
                      'edges', jsonb_build_array(jsonb_build_object('from', 'fetch', 'to', 'shape')))) \
               FROM generate_series($2::bigint, $3::bigint) AS g",
        )
        .bind(base)
        .bind(first as i64)
        .bind(last as i64)
        .execute(pool)
        .await
        .expect("fill rm_audit");
        first = last + 1;
    }
    for table in [
        "rm_workflows",
        "rm_executions",
        "rm_execution_steps",
        "rm_audit",
    ] {
        sqlx::query(&format!("VACUUM ANALYZE {table}"))
            .execute(pool)
            .await
            .expect("analyze");
    }
}

/// The plain handlers' state: their own pool and the same token check.
struct Plain {
    pool: PgPool,
    verifier: Verifier,
}

fn tenant_of(plain: &Plain, headers: &HeaderMap) -> String {
    plain
        .verifier
        .verify_header(headers.get("authorization").and_then(|v| v.to_str().ok()))
        .map_err(|_| ())
        .expect("a valid token")
        .tenant
        .as_str()
        .to_string()
}

fn json_response<T: Serialize>(value: &T) -> Response {
    (
        [("content-type", "application/json")],
        serde_json::to_vec(value).unwrap(),
    )
        .into_response()
}

#[derive(Serialize)]
struct Data<T> {
    data: T,
}
#[derive(Serialize)]
struct Edges<T> {
    edges: Vec<Edge<T>>,
}
#[derive(Serialize)]
struct Edge<T> {
    node: T,
}

#[derive(Serialize, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
struct WorkflowNode {
    id: String,
    name: String,
    version: i64,
    updated_at: DateTime<Utc>,
}

/// `workflows(first: 20) { edges { node { id name version updatedAt } } }`,
/// by hand.
async fn plain_workflows(State(plain): State<Arc<Plain>>, headers: HeaderMap) -> Response {
    let tenant = tenant_of(&plain, &headers);
    let rows: Vec<WorkflowNode> = sqlx::query_as(
        "SELECT id, name, seq AS version, updated_at FROM rm_workflows \
         WHERE tenant = $1 ORDER BY id DESC LIMIT 21",
    )
    .bind(tenant)
    .fetch_all(&plain.pool)
    .await
    .expect("read");
    #[derive(Serialize)]
    struct Workflows {
        workflows: Edges<WorkflowNode>,
    }
    json_response(&Data {
        data: Workflows {
            workflows: Edges {
                edges: rows
                    .into_iter()
                    .take(20)
                    .map(|node| Edge { node })
                    .collect(),
            },
        },
    })
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ExecutionNode {
    id: String,
    status: String,
    started_at: DateTime<Utc>,
    steps: Vec<StepNode>,
}
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct StepNode {
    node_id: String,
    status: String,
}

/// `executions(first: 20) { edges { node { id status startedAt steps {
/// nodeId status } } } }`, by hand: the page, then its steps in one query.
async fn plain_executions(State(plain): State<Arc<Plain>>, headers: HeaderMap) -> Response {
    let tenant = tenant_of(&plain, &headers);
    let rows: Vec<(String, String, DateTime<Utc>)> = sqlx::query_as(
        "SELECT id, status, started_at FROM rm_executions \
         WHERE tenant = $1 ORDER BY id DESC LIMIT 21",
    )
    .bind(&tenant)
    .fetch_all(&plain.pool)
    .await
    .expect("read");
    let ids: Vec<&str> = rows.iter().take(20).map(|r| r.0.as_str()).collect();
    let steps: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT execution_id, node_id, status FROM rm_execution_steps \
         WHERE tenant = $1 AND execution_id = ANY($2) ORDER BY execution_id, scheduled_at, node_id, attempt",
    )
    .bind(&tenant)
    .bind(&ids)
    .fetch_all(&plain.pool)
    .await
    .expect("read steps");
    let mut by_execution: std::collections::HashMap<String, Vec<StepNode>> = Default::default();
    for (execution, node_id, status) in steps {
        by_execution
            .entry(execution)
            .or_default()
            .push(StepNode { node_id, status });
    }
    #[derive(Serialize)]
    struct Executions {
        executions: Edges<ExecutionNode>,
    }
    json_response(&Data {
        data: Executions {
            executions: Edges {
                edges: rows
                    .into_iter()
                    .take(20)
                    .map(|(id, status, started_at)| Edge {
                        node: ExecutionNode {
                            steps: by_execution.remove(&id).unwrap_or_default(),
                            id,
                            status: status.to_uppercase(),
                            started_at,
                        },
                    })
                    .collect(),
            },
        },
    })
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AuditNode {
    position: String,
    event_type: String,
    aggregate_id: String,
    actor: String,
    recorded_at: DateTime<Utc>,
}

/// `auditLog(first: 50) { edges { node { position eventType aggregateId
/// actor recordedAt } } }`, by hand.
async fn plain_audit(State(plain): State<Arc<Plain>>, headers: HeaderMap) -> Response {
    let tenant = tenant_of(&plain, &headers);
    let rows: Vec<(i64, i64, String, String, String, DateTime<Utc>)> = sqlx::query_as(
        "SELECT transaction_id, global_position, event_type, aggregate_id, actor, recorded_at \
         FROM rm_audit WHERE tenant = $1 ORDER BY transaction_id, global_position LIMIT 51",
    )
    .bind(tenant)
    .fetch_all(&plain.pool)
    .await
    .expect("read");
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Audit {
        audit_log: Edges<AuditNode>,
    }
    json_response(&Data {
        data: Audit {
            audit_log: Edges {
                edges: rows
                    .into_iter()
                    .take(50)
                    .map(
                        |(tx, global, event_type, aggregate_id, actor, recorded_at)| Edge {
                            node: AuditNode {
                                position: format!("{tx}.{global}"),
                                event_type,
                                aggregate_id,
                                actor,
                                recorded_at,
                            },
                        },
                    )
                    .collect(),
            },
        },
    })
}

/// `{ __typename }`, by hand: the token check and a constant answer, the
/// fixed cost of a request without a database.
async fn plain_typename(State(plain): State<Arc<Plain>>, headers: HeaderMap) -> Response {
    let _tenant = tenant_of(&plain, &headers);
    json_response(&json!({"data": {"__typename": "Query"}}))
}

/// One window: `CONCURRENCY` clients sending `make()` for `window`.
/// Requests per second and every request's latency.
async fn window(
    make: &(dyn Fn() -> reqwest::RequestBuilder + Sync),
    length: Duration,
) -> (f64, Vec<Duration>) {
    let deadline = Instant::now() + length;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CONCURRENCY {
        let request = make();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let sent = Instant::now();
                let r = request.try_clone().unwrap().send().await.unwrap();
                assert!(r.status().is_success());
                r.bytes().await.unwrap();
                latencies.push(sent.elapsed());
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    (all.len() as f64 / started.elapsed().as_secs_f64(), all)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)].as_secs_f64() * 1e3
}

/// The two answers must carry the same nodes: the comparison is fair only
/// if both sides return the same page.
fn same_page(graphql: &Value, plain: &Value, list: &str) {
    let ids = |v: &Value, key: &str| -> Vec<Value> {
        v["data"][list]["edges"]
            .as_array()
            .unwrap_or_else(|| panic!("no {list} edges in {v}"))
            .iter()
            .map(|e| e["node"][key].clone())
            .collect()
    };
    let key = if list == "auditLog" { "position" } else { "id" };
    assert_eq!(ids(graphql, key), ids(plain, key), "the pages differ");
    let fields = |v: &Value| -> Vec<String> {
        let mut keys: Vec<String> = v["data"][list]["edges"][0]["node"]
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default();
        keys.sort();
        keys
    };
    assert_eq!(fields(graphql), fields(plain), "the fields differ");
}

#[tokio::main]
async fn main() {
    let sizes = sizes();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(CONCURRENCY * 2)
        .build()
        .unwrap();
    let db = TestDb::postgres().await;
    let mut config = Config::for_tests(db.url(), SECRET);
    // A benchmark measures throughput: no rate limit of one caller.
    config.limits.rate.per_subject = Default::default();
    config.limits.rate.per_address = Default::default();
    let pool_size = config.database.max_connections;
    let running = toolhub_api::spawn(config).await.unwrap();
    let url = running.url();

    let seeded = Instant::now();
    create_workflows(&client, &url, sizes.workflows).await;
    let store = toolhub_eventstore::open(db.url()).await.unwrap();
    let Db::Postgres(store_pool) = store.db() else {
        panic!("a PostgreSQL test database");
    };
    fill(store_pool, sizes.executions, sizes.audit).await;
    println!(
        "seeded {} workflows, {} executions, {} audit entries in {:.0} s",
        sizes.workflows,
        sizes.executions,
        sizes.audit,
        seeded.elapsed().as_secs_f64()
    );
    let definition_bytes: i64 =
        sqlx::query_scalar("SELECT avg(length(definition::text))::bigint FROM rm_workflows")
            .fetch_one(store_pool)
            .await
            .unwrap();
    println!("average stored definition: {definition_bytes} bytes");

    let plain = Arc::new(Plain {
        pool: sqlx::postgres::PgPoolOptions::new()
            .max_connections(pool_size)
            .connect(db.url())
            .await
            .unwrap(),
        verifier: Verifier::new(&Config::for_tests(db.url(), SECRET).jwt).unwrap(),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let plain_url = format!("http://{}", listener.local_addr().unwrap());
    let app = Router::new()
        .route("/typename", get(plain_typename))
        .route("/workflows", get(plain_workflows))
        .route("/executions", get(plain_executions))
        .route("/audit", get(plain_audit))
        .with_state(plain);
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let viewer = token("acme", Role::Viewer);
    let admin = token("acme", Role::Admin);
    let lists = [
        (
            "__typename",
            "{ __typename } (no database)",
            "{ __typename }",
            "/typename",
            &viewer,
        ),
        (
            "workflows",
            "workflows(first: 20)",
            "{ workflows(first: 20) { edges { node { id name version updatedAt } } } }",
            "/workflows",
            &viewer,
        ),
        (
            "executions",
            "executions(first: 20) + steps",
            "{ executions(first: 20) { edges { node { id status startedAt steps { nodeId status } } } } }",
            "/executions",
            &viewer,
        ),
        (
            "auditLog",
            "auditLog(first: 50)",
            "{ auditLog(first: 50) { edges { node { position eventType aggregateId actor recordedAt } } } }",
            "/audit",
            &admin,
        ),
    ];
    println!(
        "{CONCURRENCY} concurrent clients, {} alternating windows of {:?} per side",
        sizes.windows, sizes.window
    );
    println!(
        "| list | GraphQL req/s | plain req/s | GraphQL / plain | GraphQL p50 / p99 ms | plain p50 / p99 ms |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    // `BENCH_PROFILE=1`: only the GraphQL side, for a profiler.
    let profile_graphql = std::env::var("BENCH_PROFILE").is_ok_and(|v| v == "1");
    // `BENCH_LISTS=workflows,auditLog` runs only those.
    let only = std::env::var("BENCH_LISTS").ok();
    for (list, label, query, path, token) in lists {
        if only
            .as_deref()
            .is_some_and(|only| !only.split(',').any(|l| l == list))
        {
            continue;
        }
        let graphql_request = || {
            client
                .post(format!("{url}/graphql"))
                .bearer_auth(token)
                .json(&json!({ "query": query }))
        };
        let plain_request = || client.get(format!("{plain_url}{path}")).bearer_auth(token);
        let g: Value = graphql_request()
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let p: Value = plain_request().send().await.unwrap().json().await.unwrap();
        assert!(g.get("errors").is_none(), "{g}");
        if list == "__typename" {
            assert_eq!(g, p, "the answers differ");
        } else {
            same_page(&g, &p, list);
        }
        // Warm up both.
        window(&graphql_request, sizes.window / 2).await;
        window(&plain_request, sizes.window / 2).await;
        let (mut graphql, mut plain, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        let (mut graphql_latency, mut plain_latency) = (Vec::new(), Vec::new());
        for _ in 0..sizes.windows {
            let (g, l) = window(&graphql_request, sizes.window).await;
            graphql_latency.extend(l);
            if profile_graphql {
                // Only GraphQL, for a profiler to watch it alone.
                graphql.push(g);
                continue;
            }
            let (p, l) = window(&plain_request, sizes.window).await;
            plain_latency.extend(l);
            graphql.push(g);
            plain.push(p);
            ratios.push(g / p);
        }
        graphql_latency.sort();
        plain_latency.sort();
        if profile_graphql {
            println!(
                "| `{label}` | {:.0} | | | {:.1} / {:.1} | |",
                median(graphql),
                pct(&graphql_latency, 0.5),
                pct(&graphql_latency, 0.99)
            );
            continue;
        }
        println!(
            "| `{label}` | {:.0} | {:.0} | **{:.2}** | {:.1} / {:.1} | {:.1} / {:.1} |",
            median(graphql),
            median(plain),
            median(ratios),
            pct(&graphql_latency, 0.5),
            pct(&graphql_latency, 0.99),
            pct(&plain_latency, 0.5),
            pct(&plain_latency, 0.99),
        );
    }
    running.stop().await;
}
