//! What the hash chain costs the write path: command throughput with the
//! read models' projectors running, with and without the `chain` pass.
//!
//! Two fresh databases per backend, each with 100 registered MCP servers
//! and a `ProjectorRunner`: one runs the five read models only (the log as
//! it was before the chain), the other the same plus the chain pass (what
//! `toolhub serve` runs). `BENCH_WRITERS` (default 8) tasks send
//! `RecordHealth` commands through the `CommandBus` as fast as they commit,
//! for windows of `BENCH_SECONDS` (default 3) that alternate between the
//! two databases, `BENCH_ROUNDS` (default 6) times each. Reported: the
//! median commands per second of each, and their ratio (the target: at
//! least 0.9), and how far behind the log the chain was at the end of its
//! windows.
//!
//! Run with `cargo bench -p toolhub-projections --bench chain`.
//! `BENCH_BACKENDS` (default `postgres,sqlite`) selects the backends;
//! `BENCH_SMOKE=1` shrinks everything, which CI runs.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use toolhub_domain::mcp_server::{McpServer, McpServerCommand, Transport};
use toolhub_domain::{McpServerId, TenantId};
use toolhub_eventstore::sql::fetch;
use toolhub_eventstore::testing::TestDb;
use toolhub_eventstore::{open, CommandBus, CommandContext, EventStore};
use toolhub_projections::projection::all;
use toolhub_projections::{ProjectorRunner, RunnerHandle, RunnerOptions};

const SERVERS: usize = 100;

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .replace('_', "")
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

struct Side {
    _db: TestDb,
    store: EventStore,
    bus: Arc<CommandBus<McpServer>>,
    ids: Vec<String>,
    runner: Option<RunnerHandle>,
    rates: Vec<f64>,
}

async fn side(backend: &str, chain: bool) -> Side {
    let db = match backend {
        "postgres" => TestDb::postgres().await,
        "sqlite" => TestDb::sqlite().await,
        other => panic!("unknown backend {other}"),
    };
    let store = open(db.url()).await.expect("open the store");
    let acme = TenantId::parse("acme").expect("a tenant");
    let ctx = CommandContext::new("bench", acme.clone());
    let bus = Arc::new(CommandBus::<McpServer>::new(store.clone()));
    let mut ids = Vec::new();
    for n in 0..SERVERS {
        let id = McpServerId::new().to_string();
        bus.execute(
            &id,
            McpServerCommand::Register {
                tenant: acme.clone(),
                name: format!("server-{n}"),
                transport: Transport::StreamableHttp {
                    url: "https://mcp.example.com/mcp".into(),
                    headers: Default::default(),
                },
            },
            &ctx,
        )
        .await
        .expect("register");
        ids.push(id);
    }
    let runner = if chain {
        ProjectorRunner::start(store.clone(), RunnerOptions::default())
    } else {
        ProjectorRunner::start_with(store.clone(), all(), RunnerOptions::default())
    };
    Side {
        _db: db,
        store,
        bus,
        ids,
        runner: Some(runner),
        rates: Vec::new(),
    }
}

/// Runs the writers on `side` for `window`; commands per second.
async fn window(side: &Side, writers: usize, window: Duration) -> f64 {
    let done = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let ctx = CommandContext::new("bench", TenantId::parse("acme").expect("a tenant"));
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (bus, ids, done, count, ctx) = (
            side.bus.clone(),
            side.ids.clone(),
            done.clone(),
            count.clone(),
            ctx.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut n = w;
            while !done.load(Ordering::Relaxed) {
                let id = &ids[n % ids.len()];
                n += writers;
                bus.execute(
                    id,
                    McpServerCommand::RecordHealth {
                        healthy: true,
                        latency_ms: n as u64,
                        detail: None,
                    },
                    &ctx,
                )
                .await
                .expect("record health");
                count.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let start = Instant::now();
    tokio::time::sleep(window).await;
    done.store(true, Ordering::Relaxed);
    let sent = count.load(Ordering::Relaxed);
    let elapsed = start.elapsed();
    for task in tasks {
        task.await.expect("a writer");
    }
    sent as f64 / elapsed.as_secs_f64()
}

/// How many events the chain has not sealed yet.
async fn chain_behind(store: &EventStore) -> i64 {
    let rows = fetch(
        store.db(),
        "SELECT (SELECT COUNT(*) FROM events) - (SELECT COUNT(*) FROM event_chain) AS behind",
        &[],
    )
    .await
    .expect("count");
    rows[0].int("behind").expect("a count")
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    let smoke = env_u64("BENCH_SMOKE", 0) == 1;
    let seconds = env_u64("BENCH_SECONDS", if smoke { 1 } else { 3 });
    let rounds = env_u64("BENCH_ROUNDS", if smoke { 1 } else { 6 });
    let writers = env_u64("BENCH_WRITERS", 8) as usize;
    let backends =
        std::env::var("BENCH_BACKENDS").unwrap_or_else(|_| "postgres,sqlite".to_string());
    println!(
        "| backend | writers | without chain, commands/s | with chain, commands/s | ratio | chain behind at window ends (max) |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    for backend in backends.split(',').map(str::trim) {
        let mut without = side(backend, false).await;
        let mut with = side(backend, true).await;
        let mut behind = 0;
        for round in 0..rounds {
            // Alternate which goes first, so neither always follows the
            // other's leftover work.
            let order = if round % 2 == 0 {
                [false, true]
            } else {
                [true, false]
            };
            for chained in order {
                let side = if chained { &mut with } else { &mut without };
                let rate = window(side, writers, Duration::from_secs(seconds)).await;
                side.rates.push(rate);
                if chained {
                    behind = behind.max(chain_behind(&side.store).await);
                }
                // Let both sides' projectors drain before the next window.
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        let (a, b) = (median(&mut without.rates), median(&mut with.rates));
        println!(
            "| {backend} | {writers} | {a:.0} | {b:.0} | {:.2} | {behind} |",
            b / a
        );
        for side in [&mut without, &mut with] {
            if let Some(runner) = side.runner.take() {
                runner.stop().await;
            }
        }
    }
}
