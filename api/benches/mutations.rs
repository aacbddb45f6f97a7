//! `createWorkflow` throughput and where its time goes (issue 11), on
//! PostgreSQL.
//!
//! `createWorkflow` through `POST /graphql` on a running server, with a
//! definition of about 2.2 KB and read-your-writes (the payload's
//! `workflow` is read back once the read models hold the new events), at
//! 1, 8 and 32 concurrent clients, side by side with what a user could
//! write instead: a plain axum handler in this binary that verifies the
//! same bearer token and inserts the same name and definition into a table
//! of its own with one hand-written `INSERT … RETURNING` (what a
//! PostGraphile-style insert mutation runs). Each concurrency runs
//! `BENCH_WINDOWS` (default 5) windows of `BENCH_SECONDS` (default 2) per
//! side, alternating; the table gives the median window's rate per side,
//! the median of the paired ratios and each side's p50 and p99.
//!
//! Then the server's `toolhub_mutation_phase_duration_seconds` histogram
//! says where the mutations' time went: `command` (validate, load the
//! aggregate, append), `wait` (until the read models hold the events) and
//! `read_back` (the entity the payload shows); the rest of the request's
//! `toolhub_graphql_request_duration_seconds` is parsing, validation,
//! authentication and the response.
//!
//! Run with `cargo bench -p toolhub-api --bench mutations` (PostgreSQL at
//! `DATABASE_URL`, or 127.0.0.1:5432). `BENCH_SMOKE=1` shrinks everything
//! (CI runs it).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};
use sqlx::PgPool;
use toolhub_api::auth::Verifier;
use toolhub_api::config::Config;
use toolhub_domain::Role;
use toolhub_eventstore::testing::TestDb;

#[path = "support/token.rs"]
mod token;
#[path = "support/workflow.rs"]
mod workflow;

use token::{token, SECRET};
use workflow::definition;

/// The allocator `toolhub serve` runs with (see `src/main.rs`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn smoke() -> bool {
    std::env::var("BENCH_SMOKE").is_ok_and(|v| v == "1")
}

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

const CREATE: &str = "mutation ($input: CreateWorkflowInput!) { createWorkflow(input: $input) { id version position workflow { id name version updatedAt } } }";

/// The plain handler's state.
struct Plain {
    pool: PgPool,
    verifier: Verifier,
}

/// A plain insert of the same name and definition, answering the same
/// fields.
async fn plain_create(
    State(plain): State<Arc<Plain>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Json<Value> {
    let caller = plain
        .verifier
        .verify_header(headers.get("authorization").and_then(|v| v.to_str().ok()))
        .map_err(|_| ())
        .expect("a valid token");
    let input = &body["variables"]["input"];
    let row: (String, String, chrono::DateTime<chrono::Utc>) = sqlx::query_as(
        "INSERT INTO plain_workflows (id, tenant, name, definition) \
         VALUES (gen_random_uuid()::text, $1, $2, $3) RETURNING id, name, updated_at",
    )
    .bind(caller.tenant.as_str())
    .bind(input["name"].as_str().unwrap_or_default())
    .bind(&input["definition"])
    .fetch_one(&plain.pool)
    .await
    .expect("insert");
    Json(
        json!({"data": {"createWorkflow": {"id": row.0, "version": 1, "workflow": {
        "id": row.0, "name": row.1, "version": 1, "updatedAt": row.2 }}}}),
    )
}

/// One window: `clients` clients creating workflows for `length`. The rate
/// and every request's latency.
async fn window(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    clients: usize,
    length: Duration,
    next: &Arc<AtomicU64>,
) -> (f64, Vec<Duration>) {
    let deadline = Instant::now() + length;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (client, url, token, next) = (
            client.clone(),
            url.to_string(),
            token.to_string(),
            next.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let body = json!({"query": CREATE, "variables": {"input": {
                    "name": format!("Order digest {i:07}"), "definition": definition(i) }}});
                let sent = Instant::now();
                let r: Value = client
                    .post(&url)
                    .bearer_auth(&token)
                    .json(&body)
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                assert!(r.get("errors").is_none(), "{r}");
                assert!(
                    r["data"]["createWorkflow"]["workflow"]["id"].is_string(),
                    "the payload shows the workflow: {r}"
                );
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

/// The sum and count of a histogram in a Prometheus scrape, by its name
/// and one label.
fn histogram(scrape: &str, name: &str, label: &str) -> (f64, f64) {
    let value = |suffix: &str| {
        scrape
            .lines()
            .find(|l| l.starts_with(&format!("{name}_{suffix}{{")) && l.contains(label))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (value("sum"), value("count"))
}

#[tokio::main]
async fn main() {
    let windows = if smoke() {
        1
    } else {
        env_u64("BENCH_WINDOWS", 5) as usize
    };
    let length = if smoke() {
        Duration::from_millis(300)
    } else {
        Duration::from_secs(env_u64("BENCH_SECONDS", 2))
    };
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .unwrap();
    let db = TestDb::postgres().await;
    let mut config = Config::for_tests(db.url(), SECRET);
    config.limits.rate.per_subject = Default::default();
    config.limits.rate.per_address = Default::default();
    let pool_size = config.database.max_connections;
    let running = toolhub_api::spawn(config).await.unwrap();
    let url = format!("{}/graphql", running.url());

    let plain_pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(pool_size)
        .connect(db.url())
        .await
        .unwrap();
    sqlx::query(
        "CREATE TABLE plain_workflows (id text PRIMARY KEY, tenant text NOT NULL, \
         name text NOT NULL, definition jsonb NOT NULL, \
         created_at timestamptz NOT NULL DEFAULT now(), updated_at timestamptz NOT NULL DEFAULT now())",
    )
    .execute(&plain_pool)
    .await
    .unwrap();
    sqlx::query("CREATE INDEX plain_workflows_tenant ON plain_workflows (tenant, id)")
        .execute(&plain_pool)
        .await
        .unwrap();
    let plain = Arc::new(Plain {
        pool: plain_pool,
        verifier: Verifier::new(&Config::for_tests(db.url(), SECRET).jwt).unwrap(),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let plain_url = format!("http://{}/workflows", listener.local_addr().unwrap());
    let app = Router::new()
        .route("/workflows", post(plain_create))
        .with_state(plain);
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let token = token("acme", Role::Editor);
    let next = Arc::new(AtomicU64::new(0));
    // Warm up both.
    window(&client, &url, &token, 8, length / 2, &next).await;
    window(&client, &plain_url, &token, 8, length / 2, &next).await;

    println!("{windows} alternating windows of {length:?} per side");
    println!("| clients | createWorkflow /s | plain insert /s | createWorkflow / plain | createWorkflow p50 / p99 ms | plain p50 / p99 ms |");
    println!("| ---: | ---: | ---: | ---: | ---: | ---: |");
    for clients in [1, 8, 32] {
        let (mut ours, mut theirs, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        let (mut our_latency, mut their_latency) = (Vec::new(), Vec::new());
        for _ in 0..windows {
            let (o, l) = window(&client, &url, &token, clients, length, &next).await;
            our_latency.extend(l);
            let (t, l) = window(&client, &plain_url, &token, clients, length, &next).await;
            their_latency.extend(l);
            ours.push(o);
            theirs.push(t);
            ratios.push(o / t);
        }
        our_latency.sort();
        their_latency.sort();
        println!(
            "| {clients} | {:.0} | {:.0} | **{:.2}** | {:.1} / {:.1} | {:.1} / {:.1} |",
            median(ours),
            median(theirs),
            median(ratios),
            pct(&our_latency, 0.5),
            pct(&our_latency, 0.99),
            pct(&their_latency, 0.5),
            pct(&their_latency, 0.99),
        );
    }

    let scrape = client
        .get(format!("{}/metrics", running.url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let (total, requests) = histogram(
        &scrape,
        "toolhub_graphql_request_duration_seconds",
        "operation=\"mutation\"",
    );
    println!(
        "where a mutation's time went, mean over all {requests} (every window, every concurrency):"
    );
    let mut phases = 0.0;
    for phase in ["command", "wait", "read_back"] {
        let (sum, count) = histogram(
            &scrape,
            "toolhub_mutation_phase_duration_seconds",
            &format!("phase=\"{phase}\""),
        );
        let mean = if count > 0.0 { sum / count } else { 0.0 };
        phases += mean;
        println!("  {phase:<10} {:6.2} ms", mean * 1e3);
    }
    let mean_total = if requests > 0.0 {
        total / requests
    } else {
        0.0
    };
    println!(
        "  {:<10} {:6.2} ms (the request's time in the server, less the phases)",
        "the rest",
        (mean_total - phases) * 1e3
    );
    println!("  {:<10} {:6.2} ms", "in all", mean_total * 1e3);
    running.stop().await;
}
