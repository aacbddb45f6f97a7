//! Time-travel's benchmark: one entity as of a point of a long history.
//!
//! An MCP server gets `BENCH_EVENTS` (default 10,000) events through the
//! `CommandBus` (health checks, with a disable and an enable every ten),
//! which keeps a checkpoint every 100 events as it goes. Then, for points
//! spread over the whole history (by version, by position and by time,
//! alternating), `BENCH_ROUNDS` (default 50) rounds time:
//!
//! - **as of** — `toolhub_projections::as_of::mcp_server`, what
//!   `mcpServer(id, asOf:)` and `toolhub-replay at` run: the checkpoint
//!   before the point, the events after it, the view.
//! - **baseline** — what a user of the log could write instead: select the
//!   aggregate's events in order (`SELECT … FROM events WHERE
//!   aggregate_type = $1 AND aggregate_id = $2 ORDER BY sequence`), stop at
//!   the point, fold them with the domain's `apply`.
//!
//! Both run in alternating windows (each round: the as-of read at every
//! depth, then the baseline at every depth), so a busy moment hits both. Medians
//! and p99 in milliseconds, and the baseline's median over ours. Run with
//! `cargo bench -p toolhub-projections --bench as_of` (release). The
//! target: under 10 ms at any depth of 10,000 events. `BENCH_BACKENDS`
//! (default `postgres,sqlite`) selects the backends; `BENCH_SMOKE=1`
//! shrinks everything, which CI runs so that the benchmark keeps working.

use std::time::Instant;

use cqrs_es::Aggregate;
use toolhub_domain::mcp_server::{McpServer, McpServerCommand, Transport};
use toolhub_domain::{McpServerId, TenantId};
use toolhub_eventstore::testing::TestDb;
use toolhub_eventstore::{open, CommandBus, CommandContext, EventStore, RecordedEvent};
use toolhub_projections::as_of::{self, AsOf};

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .replace('_', "")
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// The baseline: the stream in order, folded up to the point.
async fn full_fold(store: &EventStore, id: &str, moment: AsOf) -> McpServer {
    let events = store
        .stream(McpServer::TYPE, id)
        .await
        .expect("read the stream");
    let mut state = McpServer::default();
    for event in events {
        let included = match moment {
            AsOf::Version(v) => event.sequence <= v,
            AsOf::Position(p) => event.position <= p,
            AsOf::Time(t) => event.recorded_at <= t,
        };
        if !included {
            break;
        }
        state.apply(serde_json::from_value(event.payload).expect("an event"));
    }
    state
}

async fn run(backend: &str, events: u64, rounds: usize) {
    let db = match backend {
        "postgres" => TestDb::postgres().await,
        "sqlite" => TestDb::sqlite().await,
        other => panic!("unknown backend {other}"),
    };
    let store = open(db.url()).await.expect("open the store");
    let acme = TenantId::parse("acme").expect("a tenant");
    let ctx = CommandContext::new("bench", acme.clone());
    let bus = CommandBus::<McpServer>::new(store.clone());
    let id = McpServerId::new().to_string();
    bus.execute(
        &id,
        McpServerCommand::Register {
            tenant: acme.clone(),
            name: "everything".into(),
            transport: Transport::StreamableHttp {
                url: "https://mcp.example.com/mcp".into(),
                headers: Default::default(),
            },
        },
        &ctx,
    )
    .await
    .expect("register");
    for n in 1..events {
        let command = match n % 10 {
            3 => McpServerCommand::Disable,
            4 => McpServerCommand::Enable,
            _ => McpServerCommand::RecordHealth {
                healthy: n % 2 == 0,
                latency_ms: n,
                detail: Some(format!("check {n}")),
            },
        };
        bus.execute(&id, command, &ctx).await.expect("a change");
    }
    // Let the last checkpoints land (written off the command path).
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let stream: Vec<RecordedEvent> = store.stream(McpServer::TYPE, &id).await.expect("stream");
    assert_eq!(stream.len() as u64, events);
    let kept = toolhub_eventstore::sql::fetch(
        store.db(),
        "SELECT COUNT(*) AS n FROM checkpoints WHERE aggregate_type = $1 AND aggregate_id = $2",
        &[McpServer::TYPE.into(), id.as_str().into()],
    )
    .await
    .expect("count the checkpoints")[0]
        .int("n")
        .expect("a count");
    eprintln!("{backend}: {kept} checkpoints of {} kept", events / 100);

    let depths = [0.01, 0.25, 0.5, 0.75, 0.99, 1.0];
    let mut ours = Vec::new();
    let mut baseline = Vec::new();
    let mut by_depth: Vec<Vec<f64>> = vec![Vec::new(); depths.len()];
    // Alternating windows: each round times the as-of read at every depth,
    // then the baseline at every depth. (Alternating call by call put each
    // as-of read right after a fold of the whole stream, and on SQLite it
    // then paid for that fold's ten thousand freed rows in the allocator:
    // see docs/benchmarks.md.)
    let moment_at = |round: usize, d: usize, depth: f64| {
        let k = ((stream.len() as f64 * depth).ceil() as usize).clamp(1, stream.len()) - 1;
        let event = &stream[k];
        match (round + d) % 3 {
            0 => AsOf::Version(event.sequence),
            1 => AsOf::Position(event.position),
            _ => AsOf::Time(event.recorded_at),
        }
    };
    for round in 0..rounds {
        // Each window starts at another depth, so the first read after the
        // other window is not always the same depth's.
        let order: Vec<usize> = (0..depths.len())
            .map(|i| (i + round) % depths.len())
            .collect();
        let mut shown = vec![false; depths.len()];
        for &d in &order {
            let depth = depths[d];
            let moment = moment_at(round, d, depth);
            let start = Instant::now();
            let view = as_of::mcp_server(&store, Some(&acme), &id, moment)
                .await
                .expect("as of")
                .expect("it exists");
            let ms = start.elapsed().as_secs_f64() * 1e3;
            ours.push(ms);
            by_depth[d].push(ms);
            shown[d] = view.enabled;
        }
        for &d in &order {
            let moment = moment_at(round, d, depths[d]);
            let start = Instant::now();
            let state = full_fold(&store, &id, moment).await;
            baseline.push(start.elapsed().as_secs_f64() * 1e3);
            assert_eq!(shown[d], state.is_enabled(), "the same state");
        }
    }
    for v in [&mut ours, &mut baseline] {
        v.sort_by(f64::total_cmp);
    }
    let (ours_p50, base_p50) = (percentile(&ours, 0.5), percentile(&baseline, 0.5));
    println!(
        "| {backend} | {events} | {:.2} | {:.2} | {:.2} | {:.2} | {:.1}× |",
        ours_p50,
        percentile(&ours, 0.99),
        base_p50,
        percentile(&baseline, 0.99),
        base_p50 / ours_p50
    );
    let cells: Vec<String> = depths
        .iter()
        .zip(by_depth.iter_mut())
        .map(|(depth, v)| {
            v.sort_by(f64::total_cmp);
            format!("{:.0} %: {:.2}", depth * 100.0, percentile(v, 0.5))
        })
        .collect();
    println!("|   median by depth | {} |", cells.join(", "));
}

#[tokio::main]
async fn main() {
    let smoke = env_u64("BENCH_SMOKE", 0) == 1;
    let events = env_u64("BENCH_EVENTS", if smoke { 300 } else { 10_000 });
    let rounds = env_u64("BENCH_ROUNDS", if smoke { 3 } else { 50 }) as usize;
    let backends =
        std::env::var("BENCH_BACKENDS").unwrap_or_else(|_| "postgres,sqlite".to_string());
    println!("| backend | events | as of p50 ms | as of p99 ms | full fold p50 ms | full fold p99 ms | full fold / as of |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    for backend in backends.split(',') {
        run(backend.trim(), events, rounds).await;
    }
}
