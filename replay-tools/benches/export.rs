//! `toolhub-replay export` on PostgreSQL: events per second and peak memory
//! of the real binary streaming the audit log as JSON lines, against the
//! baseline a user has without it — `COPY (SELECT … FROM rm_audit ORDER BY
//! …) TO STDOUT`, the server's own bulk export, read to the end by a client
//! — measured in one run, alternating, medians of `BENCH_ROUNDS` (default
//! 3).
//!
//! The audit read model is filled with `BENCH_EVENTS` (default 1,000,000)
//! rows of realistic size with `INSERT … SELECT generate_series` (in chunks
//! of 200,000 rows, each well within the statement timeout); the
//! export reads only that table. Peak memory (the child's maximum resident
//! set) is measured at a tenth of the events and at all of them, to show it
//! does not grow with the export.
//!
//! Run with `cargo bench -p toolhub-replay --bench export`. `BENCH_SMOKE=1`
//! (CI) runs it on 2,000 events, once. Needs PostgreSQL at `DATABASE_URL`
//! (or the default); a fresh database is created and dropped.

use std::process::Stdio;
use std::time::Instant;

use futures::StreamExt;
use toolhub_eventstore::testing::TestDb;
use toolhub_eventstore::Db;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Runs the export binary to the end, its output discarded; returns the
/// seconds it took and its peak resident memory in MiB.
async fn run_export(url: &str, args: &[&str]) -> (f64, f64) {
    let started = Instant::now();
    let status = tokio::process::Command::new(env!("CARGO_BIN_EXE_toolhub-replay"))
        .arg("export")
        .args(args)
        .env("DATABASE_URL", url)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .expect("run toolhub-replay export");
    let seconds = started.elapsed().as_secs_f64();
    assert!(status.success(), "the export failed");
    // The largest resident set of any child waited for so far: measured
    // at a tenth first, then at the whole, so the second reading is the
    // whole export's.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes into the struct it is given.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    (seconds, usage.ru_maxrss as f64 / 1024.0)
}

/// The baseline: the server's COPY of the same rows, in the same order,
/// read to the end.
async fn run_copy(pool: &sqlx::PgPool) -> (f64, u64) {
    let started = Instant::now();
    let mut conn = pool.acquire().await.expect("a connection");
    let mut stream = conn
        .copy_out_raw(
            "COPY (SELECT global_position, transaction_id, tenant, aggregate_type, aggregate_id, \
             sequence, event_type, event_version, actor, correlation_id, causation_id, request_id, \
             recorded_at, payload FROM rm_audit ORDER BY transaction_id, global_position) \
             TO STDOUT (FORMAT csv)",
        )
        .await
        .expect("COPY out");
    let mut bytes = 0u64;
    while let Some(chunk) = stream.next().await {
        bytes += chunk.expect("a chunk").len() as u64;
    }
    (started.elapsed().as_secs_f64(), bytes)
}

#[tokio::main]
async fn main() {
    let smoke = env_u64("BENCH_SMOKE", 0) == 1;
    let events = if smoke {
        2_000
    } else {
        env_u64("BENCH_EVENTS", 1_000_000).max(10)
    };
    let rounds = if smoke {
        1
    } else {
        env_u64("BENCH_ROUNDS", 3).max(1)
    };
    let db = TestDb::postgres().await;
    let store = toolhub_eventstore::open(db.url())
        .await
        .expect("open the store");
    let Db::Postgres(pool) = store.db() else {
        panic!("a PostgreSQL test database");
    };
    let filled = Instant::now();
    // In chunks, each well within the store's statement timeout on a busy
    // machine; the rows are the same as one statement would make.
    const FILL_CHUNK: u64 = 200_000;
    let mut first = 1;
    while first <= events {
        let last = (first + FILL_CHUNK - 1).min(events);
        sqlx::query(
            "INSERT INTO rm_audit (global_position, transaction_id, tenant, aggregate_type, aggregate_id, \
             sequence, event_type, event_version, actor, correlation_id, causation_id, request_id, \
             recorded_at, payload) \
             SELECT g, 1000 + g / 3, 'tenant-' || (g % 3), 'workflow', 'wf-' || (g / 10), g % 10 + 1, \
                    'WorkflowDefinitionUpdated', '1.0', 'user-' || (g % 50), md5(g::text), '', md5((g * 7)::text), \
                    now() - make_interval(secs => ($1 - g)::double precision / 100), \
                    jsonb_build_object('type', 'WorkflowDefinitionUpdated', 'version', g % 10 + 1, \
                      'comment', repeat('c', 40), 'definition', jsonb_build_object('nodes', \
                      jsonb_build_array(jsonb_build_object('id', 'fetch', 'type', 'http', 'params', \
                      jsonb_build_object('method', 'GET', 'url', 'https://api.example.com/items/' || g)), \
                      jsonb_build_object('id', 'shape', 'type', 'transform', 'params', \
                      jsonb_build_object('template', jsonb_build_object('items', '{{nodes.fetch.body}}')))), \
                      'edges', jsonb_build_array(jsonb_build_object('from', 'fetch', 'to', 'shape')))) \
               FROM generate_series($2, $3) AS g",
        )
        .bind(events as i64)
        .bind(first as i64)
        .bind(last as i64)
        .execute(pool)
        .await
        .expect("fill rm_audit");
        first = last + 1;
    }
    sqlx::query("VACUUM ANALYZE rm_audit")
        .execute(pool)
        .await
        .expect("analyze");
    println!(
        "filled rm_audit with {events} rows in {:.1} s",
        filled.elapsed().as_secs_f64()
    );

    // Peak memory at a tenth of the export, then at all of it.
    // Row `g` sits at position `{1000 + g / 3}.{g}`: the export up to that
    // of row `tenth + 1`, exclusive, is rows 1 to `tenth`.
    let tenth = (events / 10).max(1) as i64;
    let to = format!("{}.{}", 1000 + (tenth + 1) / 3, tenth + 1);
    let (_, memory_tenth) = run_export(db.url(), &["--to", &to]).await;

    let mut export_rates = Vec::new();
    let mut copy_rates = Vec::new();
    let mut memory_all = 0.0f64;
    for round in 0..rounds {
        let (seconds, memory) = run_export(db.url(), &[]).await;
        memory_all = memory_all.max(memory);
        export_rates.push(events as f64 / seconds);
        let (copy_seconds, bytes) = run_copy(pool).await;
        copy_rates.push(events as f64 / copy_seconds);
        println!(
            "round {}: export {:.0} events/s ({seconds:.2} s); COPY {:.0} events/s ({copy_seconds:.2} s, {} MiB)",
            round + 1,
            events as f64 / seconds,
            events as f64 / copy_seconds,
            bytes / (1 << 20)
        );
    }
    let export = median(export_rates);
    let copy = median(copy_rates);
    println!();
    println!("| what | events/s (median of {rounds}) | ratio to COPY |");
    println!("| --- | --- | --- |");
    println!(
        "| `toolhub-replay export` (JSON lines) | {export:.0} | {:.2}× |",
        export / copy
    );
    println!("| baseline: `COPY (SELECT … ORDER BY …) TO STDOUT` (CSV) | {copy:.0} | 1.00× |");
    println!();
    println!(
        "peak memory of the export: {memory_tenth:.0} MiB at {} events, {memory_all:.0} MiB at {events}",
        events / 10
    );
}
