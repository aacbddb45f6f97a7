//! The read side's benchmark, on PostgreSQL and on SQLite in one run:
//!
//! 1. **Rebuild throughput.** A log of `BENCH_EVENTS` (default one million)
//!    mixed events — real serialized domain events, inserted with multi-row
//!    statements (see `support/generate.rs`) — is rebuilt with
//!    `toolhub_projections::rebuild_many` in one pass over the log, as
//!    `toolhub-replay rebuild` does: once into all five read models, once
//!    into the four entity read models the baseline also maintains. In log
//!    events per second.
//! 2. **Where the time goes.** One extra pass reads each batch once and
//!    applies it to every projection's shadow tables, timing the read and
//!    each projection's `apply` separately.
//! 3. **The baseline.** The same read models as cqrs-es `GenericQuery`
//!    views (see `support/baseline.rs`), fed the first
//!    `BENCH_BASELINE_EVENTS` (default 10,000) events of the same log in
//!    order, one dispatch per event; on PostgreSQL once with the default
//!    durability and once with `synchronous_commit = off`.
//! 4. **Lag.** With `ProjectorRunner` running, `RecordHealth` commands go
//!    through the `CommandBus` at `BENCH_LAG_RATE` per second (default 500)
//!    for `BENCH_LAG_SECONDS` (default 10). An observer polls the
//!    projections' checkpoints every millisecond; a command's lag is the
//!    time from its commit (the bus returning) to the first observation in
//!    which every projection has applied its position — what
//!    `ReadModels::wait_for` waits for. One command in ten also calls
//!    `wait_for` itself, to show what a client waits.
//!
//! Run with `cargo bench -p toolhub-projections --bench projections`.
//! `BENCH_BACKENDS` (default `postgres,sqlite`) selects the backends.
//! PostgreSQL must be running (see `toolhub_eventstore::testing`); each
//! backend gets a fresh database, dropped afterwards. The results are
//! printed as Markdown tables for `docs/benchmarks.md`.

#[path = "support/baseline.rs"]
mod baseline;
#[path = "support/generate.rs"]
mod generate;

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::MissedTickBehavior;
use toolhub_domain::mcp_server::{McpServer, McpServerCommand, Transport};
use toolhub_domain::{McpServerId, TenantId};
use toolhub_eventstore::sql::Conn;
use toolhub_eventstore::testing::TestDb;
use toolhub_eventstore::{CommandBus, CommandContext, Db, EventStore, Position, StoreOptions};
use toolhub_projections::projection::{all, Tables, SHADOW_SUFFIX};
use toolhub_projections::{rebuild_many, ProjectorRunner, ReadModels, RunnerOptions};

/// The projections that have a `GenericQuery` counterpart in the baseline.
const ENTITY_PROJECTIONS: [&str; 4] = ["workflows", "executions", "secrets", "mcp_servers"];

/// How many MCP servers the lag measurement spreads its commands over.
const LAG_SERVERS: usize = 100;

struct Config {
    events: u64,
    baseline_events: u64,
    lag_seconds: u64,
    lag_rate: u64,
    backends: Vec<String>,
    profile: bool,
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

impl Config {
    fn from_env() -> Self {
        // `BENCH_SMOKE=1` (which CI runs) shrinks every size, so that the
        // benchmark the docs cite keeps working.
        if env_u64("BENCH_SMOKE", 0) == 1 {
            return Self {
                events: 3_000,
                baseline_events: 500,
                lag_seconds: 1,
                lag_rate: 100,
                backends: vec!["postgres".into(), "sqlite".into()],
                profile: false,
            };
        }
        Self {
            events: env_u64("BENCH_EVENTS", 1_000_000).max(1),
            baseline_events: env_u64("BENCH_BASELINE_EVENTS", 10_000).max(1),
            lag_seconds: env_u64("BENCH_LAG_SECONDS", 10).max(1),
            lag_rate: env_u64("BENCH_LAG_RATE", 500).max(1),
            backends: std::env::var("BENCH_BACKENDS")
                .unwrap_or_else(|_| "postgres,sqlite".into())
                .split(',')
                .map(|b| b.trim().to_string())
                .filter(|b| !b.is_empty())
                .collect(),
            profile: env_u64("BENCH_PROFILE", 0) != 0,
        }
    }
}

/// One projection's rebuild.
/// The single pass over all five read models.
const ALL_PASS: &str = "all 5 read models";
/// The single pass over the four entity read models.
const ENTITY_PASS: &str = "4 entity read models";

struct Rebuilt {
    name: &'static str,
    events: u64,
    elapsed: Duration,
}

/// Where a single pass over the log spends its time.
struct Profile {
    read: Duration,
    applies: Vec<(&'static str, Duration)>,
}

struct Lag {
    commands: usize,
    errors: usize,
    achieved_rate: f64,
    observed: Vec<Duration>,
    waited: Vec<Duration>,
    /// How many commands took over 100 ms to become visible, per second of
    /// the run in which they were committed.
    slow_by_second: std::collections::BTreeMap<u64, usize>,
}

struct Results {
    backend: String,
    generated: generate::Generated,
    read_alone: Duration,
    rebuilt: Vec<Rebuilt>,
    profile: Option<Profile>,
    baselines: Vec<(baseline::Durability, baseline::BaselineRun)>,
    lag: Lag,
}

impl Results {
    fn rebuild_time(&self, only_entities: bool) -> Duration {
        let name = if only_entities { ENTITY_PASS } else { ALL_PASS };
        self.rebuilt
            .iter()
            .filter(|r| r.name == name)
            .map(|r| r.elapsed)
            .sum()
    }

    fn rebuild_rate(&self, only_entities: bool) -> f64 {
        self.generated.events as f64 / self.rebuild_time(only_entities).as_secs_f64().max(1e-9)
    }
}

#[tokio::main]
async fn main() {
    let config = Config::from_env();
    let mut results = Vec::new();
    for backend in &config.backends {
        let db = match backend.as_str() {
            "postgres" => TestDb::postgres().await,
            "sqlite" => TestDb::sqlite().await,
            other => panic!("BENCH_BACKENDS: unknown backend {other:?} (postgres or sqlite)"),
        };
        results.push(run(backend, &db, &config).await);
    }
    report(&config, &results);
}

fn rate(events: u64, elapsed: Duration) -> f64 {
    events as f64 / elapsed.as_secs_f64().max(1e-9)
}

async fn run(backend: &str, db: &TestDb, config: &Config) -> Results {
    let options = StoreOptions {
        max_connections: 16,
        acquire_timeout: Duration::from_secs(60),
        migrate: true,
        statement_timeout: None,
        ..StoreOptions::default()
    };
    let store = toolhub_eventstore::open_with(db.url(), options)
        .await
        .expect("open the benchmark database");

    eprintln!("[{backend}] generating {} events", config.events);
    let generated = generate::generate(store.db(), config.events).await;
    eprintln!(
        "[{backend}] generated {} events in {:.1} s ({:.0} events/s): {:?}",
        generated.events,
        generated.elapsed.as_secs_f64(),
        rate(generated.events, generated.elapsed),
        generated.by_type
    );

    let read_alone = read_pass(&store).await;
    eprintln!(
        "[{backend}] reading the log alone: {:.1} s ({:.0} events/s)",
        read_alone.as_secs_f64(),
        rate(generated.events, read_alone)
    );

    // Two single-pass rebuilds: every read model, and the four entity read
    // models that the GenericQuery baseline also maintains.
    let mut rebuilt = Vec::new();
    let all_projections = all();
    for (name, only_entities) in [(ALL_PASS, false), (ENTITY_PASS, true)] {
        let selected: Vec<&dyn toolhub_projections::Projection> = all_projections
            .iter()
            .map(|p| p.as_ref())
            .filter(|p| !only_entities || ENTITY_PROJECTIONS.contains(&p.name()))
            .collect();
        let summary = rebuild_many(&store, &selected, 5_000, |_| {})
            .await
            .expect("rebuild");
        eprintln!(
            "[{backend}] rebuilt {name}: {} events in {:.1} s ({:.0} events/s)",
            summary.events,
            summary.elapsed.as_secs_f64(),
            summary.rate()
        );
        rebuilt.push(Rebuilt {
            name,
            events: summary.events,
            elapsed: summary.elapsed,
        });
    }

    let profile = if config.profile {
        let profile = profile_pass(&store).await;
        eprintln!(
            "[{backend}] one pass: read {:.1} s, {}",
            profile.read.as_secs_f64(),
            profile
                .applies
                .iter()
                .map(|(name, d)| format!("{name} {:.1} s", d.as_secs_f64()))
                .collect::<Vec<_>>()
                .join(", ")
        );
        Some(profile)
    } else {
        None
    };

    let prefix = config.baseline_events.min(generated.events);
    let mut baselines = Vec::new();
    for durability in [baseline::Durability::Default, baseline::Durability::Relaxed] {
        if durability == baseline::Durability::Relaxed && !db.is_postgres() {
            continue;
        }
        eprintln!(
            "[{backend}] GenericQuery baseline ({durability:?}) over the first {prefix} events"
        );
        let run = baseline::run(&store, db.url(), prefix, durability).await;
        eprintln!(
            "[{backend}] baseline ({durability:?}): {} events in {:.1} s ({:.0} events/s, {} errors)",
            run.events,
            run.elapsed.as_secs_f64(),
            run.rate(),
            run.errors
        );
        assert_eq!(run.errors, 0, "the baseline's queries failed");
        baselines.push((durability, run));
    }

    eprintln!(
        "[{backend}] lag at {} commands/s for {} s",
        config.lag_rate, config.lag_seconds
    );
    let lag = measure_lag(&store, config.lag_seconds, config.lag_rate).await;
    eprintln!(
        "[{backend}] lag: {} commands at {:.0}/s, median {:.1} ms, p99 {:.1} ms",
        lag.commands,
        lag.achieved_rate,
        ms(percentile(&lag.observed, 0.5)),
        ms(percentile(&lag.observed, 0.99))
    );

    Results {
        backend: backend.to_string(),
        generated,
        read_alone,
        rebuilt,
        profile,
        baselines,
        lag,
    }
}

/// Reads the whole log in batches of 1,000, as a rebuild does, and does
/// nothing with it.
async fn read_pass(store: &EventStore) -> Duration {
    let started = Instant::now();
    let mut checkpoint = Position::ZERO;
    loop {
        let events = store.read_after(checkpoint, 1_000).await.expect("read");
        let Some(last) = events.last() else { break };
        checkpoint = last.position;
    }
    started.elapsed()
}

/// Shadow tables for the profile pass, made the way a rebuild makes them.
async fn create_shadows(db: &Db, create: bool) {
    for projection in all() {
        for table in projection.tables() {
            let shadow = format!("{table}{SHADOW_SUFFIX}");
            match db {
                Db::Postgres(pool) => {
                    let sql = if create {
                        format!("CREATE TABLE {shadow} (LIKE {table} INCLUDING ALL)")
                    } else {
                        format!("DROP TABLE IF EXISTS {shadow}")
                    };
                    sqlx::query(&sql).execute(pool).await.expect("shadow table");
                    if create {
                        // As in a rebuild's replay: the primary key only.
                        let secondary: Vec<String> = sqlx::query_scalar(
                            "SELECT i.indexrelid::regclass::text FROM pg_index i \
                              WHERE i.indrelid = $1::text::regclass \
                                AND NOT EXISTS (SELECT 1 FROM pg_constraint k \
                                  WHERE k.conrelid = i.indrelid AND k.conindid = i.indexrelid)",
                        )
                        .bind(&shadow)
                        .fetch_all(pool)
                        .await
                        .expect("the shadow's indexes");
                        for index in secondary {
                            sqlx::query(&format!("DROP INDEX {index}"))
                                .execute(pool)
                                .await
                                .expect("drop a secondary index");
                        }
                    }
                }
                Db::Sqlite(pool) => {
                    let sql = if create {
                        let live: String = sqlx::query_scalar(
                            "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?1",
                        )
                        .bind(table)
                        .fetch_one(pool)
                        .await
                        .expect("the live table's definition");
                        // Keep only the column list: once a rebuild has
                        // renamed a table, SQLite stores its name quoted.
                        let columns = &live[live.find('(').expect("a column list")..];
                        format!("CREATE TABLE {shadow} {columns}")
                    } else {
                        format!("DROP TABLE IF EXISTS {shadow}")
                    };
                    sqlx::query(&sql).execute(pool).await.expect("shadow table");
                }
            }
        }
    }
}

/// One pass over the log that reads each batch once and applies it to
/// every projection's shadow tables as a rebuild's replay does (primary keys
/// only, `synchronous_commit = off` on PostgreSQL), but one after the other,
/// each in its own transaction, timing the read and every projection's apply
/// apart.
async fn profile_pass(store: &EventStore) -> Profile {
    let projections = all();
    create_shadows(store.db(), false).await;
    create_shadows(store.db(), true).await;
    let shadow = Tables::replay();
    let mut read = Duration::ZERO;
    let mut applies = vec![Duration::ZERO; projections.len()];
    let mut checkpoint = Position::ZERO;
    loop {
        let started = Instant::now();
        let events = store.read_after(checkpoint, 1_000).await.expect("read");
        read += started.elapsed();
        let Some(last) = events.last() else { break };
        checkpoint = last.position;
        for (projection, spent) in projections.iter().zip(applies.iter_mut()) {
            let started = Instant::now();
            match store.db() {
                Db::Postgres(pool) => {
                    let mut tx = pool.begin().await.expect("begin");
                    sqlx::query("SET LOCAL synchronous_commit = off")
                        .execute(&mut *tx)
                        .await
                        .expect("relaxed durability");
                    projection
                        .apply(&mut Conn::Pg(&mut tx), &shadow, &events)
                        .await
                        .expect("apply");
                    tx.commit().await.expect("commit");
                }
                Db::Sqlite(pool) => {
                    let mut conn = pool.acquire().await.expect("acquire");
                    let mut tx = sqlx::Connection::begin_with(&mut *conn, "BEGIN IMMEDIATE")
                        .await
                        .expect("begin");
                    projection
                        .apply(&mut Conn::Lite(&mut tx), &shadow, &events)
                        .await
                        .expect("apply");
                    tx.commit().await.expect("commit");
                }
            }
            *spent += started.elapsed();
        }
    }
    create_shadows(store.db(), false).await;
    Profile {
        read,
        applies: projections.iter().map(|p| p.name()).zip(applies).collect(),
    }
}

fn transport() -> Transport {
    Transport::Stdio {
        command: "npx".into(),
        args: vec![
            "-y".into(),
            "@modelcontextprotocol/server-everything".into(),
        ],
        env: Default::default(),
    }
}

/// Commands at a steady rate through the bus while the projectors run; see
/// the module documentation.
async fn measure_lag(store: &EventStore, seconds: u64, per_second: u64) -> Lag {
    let tenant = TenantId::parse("bench").expect("tenant");
    let ctx = CommandContext::new("bench-user", tenant.clone());
    let bus = Arc::new(CommandBus::<McpServer>::new(store.clone()));
    let mut servers = Vec::new();
    for i in 0..LAG_SERVERS {
        let id = McpServerId::new().to_string();
        let register = McpServerCommand::Register {
            tenant: tenant.clone(),
            name: format!("lag-{i}"),
            transport: transport(),
        };
        bus.execute(&id, register, &ctx).await.expect("register");
        servers.push(id);
    }
    let servers = Arc::new(servers);

    let runner = ProjectorRunner::start(store.clone(), RunnerOptions::default());
    let reads = ReadModels::new(store);
    let head = store.head().await.expect("head");
    reads
        .wait_for(head, Duration::from_secs(300))
        .await
        .expect("the projectors catch up before the measurement");

    // The observer: when did every projection reach which position.
    let observations: Arc<Mutex<Vec<(Instant, Position)>>> = Arc::default();
    let (stop, mut stopped) = watch::channel(false);
    let observer = {
        let reads = reads.clone();
        let observations = observations.clone();
        tokio::spawn(async move {
            let mut last = Position::ZERO;
            loop {
                let applied = reads.applied().await.expect("applied");
                if applied > last {
                    observations.lock().push((Instant::now(), applied));
                    last = applied;
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(1)) => {}
                    _ = stopped.changed() => return,
                }
            }
        })
    };

    let total = seconds * per_second;
    let mut ticks = tokio::time::interval(Duration::from_nanos(1_000_000_000 / per_second));
    ticks.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let mut tasks = JoinSet::new();
    let started = Instant::now();
    for i in 0..total {
        ticks.tick().await;
        let bus = bus.clone();
        let ctx = ctx.clone();
        let servers = servers.clone();
        let reads = reads.clone();
        tasks.spawn(async move {
            let id = &servers[i as usize % servers.len()];
            let command = McpServerCommand::RecordHealth {
                healthy: i % 13 != 0,
                latency_ms: i % 300,
                detail: None,
            };
            let committed = bus.execute(id, command, &ctx).await.ok()?;
            let at = Instant::now();
            let position = committed.position?;
            let waited = if i % 10 == 0 {
                let t = Instant::now();
                reads
                    .wait_for(position, Duration::from_secs(10))
                    .await
                    .ok()
                    .map(|()| t.elapsed())
            } else {
                None
            };
            Some((position, at, waited))
        });
    }
    let issued = started.elapsed();
    let mut done = Vec::new();
    let mut errors = 0;
    while let Some(joined) = tasks.join_next().await {
        match joined.ok().flatten() {
            Some(result) => done.push(result),
            None => errors += 1,
        }
    }
    let newest = done
        .iter()
        .map(|(p, _, _)| *p)
        .max()
        .unwrap_or(Position::ZERO);
    reads
        .wait_for(newest, Duration::from_secs(60))
        .await
        .expect("the projectors catch up after the measurement");
    let _ = stop.send(true);
    let _ = observer.await;
    runner.stop().await;

    let observations = observations.lock();
    let mut slow_by_second = std::collections::BTreeMap::new();
    let observed = done
        .iter()
        .filter_map(|(position, at, _)| {
            let i = observations.partition_point(|(_, p)| p < position);
            let lag = observations
                .get(i)
                .map(|(seen, _)| seen.saturating_duration_since(*at))?;
            if lag > Duration::from_millis(100) {
                let second = at.saturating_duration_since(started).as_secs();
                *slow_by_second.entry(second).or_insert(0) += 1;
            }
            Some(lag)
        })
        .collect();
    Lag {
        commands: done.len(),
        errors,
        achieved_rate: done.len() as f64 / issued.as_secs_f64().max(1e-9),
        observed,
        waited: done.iter().filter_map(|(_, _, w)| *w).collect(),
        slow_by_second,
    }
}

fn percentile(samples: &[Duration], q: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    let mut sorted = samples.to_vec();
    sorted.sort();
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1_000.0
}

fn thousands(n: f64) -> String {
    let n = n.round() as u64;
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn report(config: &Config, results: &[Results]) {
    println!();
    println!(
        "### Rebuild throughput ({} events; baseline over the first {})",
        thousands(config.events as f64),
        thousands(config.baseline_events.min(config.events) as f64)
    );
    println!();
    println!("| backend | generation (events/s) | log read alone (events/s) | rebuild, 4 entity read models (events/s) | rebuild, all 5 read models (events/s) | GenericQuery baseline (events/s) | entity rebuild ÷ baseline |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for r in results {
        let entities = r.rebuild_rate(true);
        let baselines: Vec<String> = r
            .baselines
            .iter()
            .map(|(d, b)| format!("{} ({d:?})", thousands(b.rate())))
            .collect();
        let ratios: Vec<String> = r
            .baselines
            .iter()
            .map(|(d, b)| format!("{:.1}× ({d:?})", entities / b.rate().max(1e-9)))
            .collect();
        println!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            r.backend,
            thousands(rate(r.generated.events, r.generated.elapsed)),
            thousands(rate(r.generated.events, r.read_alone)),
            thousands(entities),
            thousands(r.rebuild_rate(false)),
            baselines.join("; "),
            ratios.join("; ")
        );
    }
    println!();
    println!("### Rebuild passes (each reads the log once for all its read models)");
    println!();
    println!("| backend | projection | rebuild (s) | rebuild (log events/s) | apply alone in one shared pass (s) |");
    println!("|---|---|---:|---:|---:|");
    for r in results {
        for rebuilt in &r.rebuilt {
            let apply = r
                .profile
                .as_ref()
                .and_then(|p| p.applies.iter().find(|(n, _)| *n == rebuilt.name))
                .map(|(_, d)| format!("{:.1}", d.as_secs_f64()))
                .unwrap_or_else(|| "–".into());
            println!(
                "| {} | {} | {:.1} | {} | {} |",
                r.backend,
                rebuilt.name,
                rebuilt.elapsed.as_secs_f64(),
                thousands(rate(rebuilt.events, rebuilt.elapsed)),
                apply
            );
        }
        if let Some(p) = &r.profile {
            let applies: Duration = p.applies.iter().map(|(_, d)| *d).sum();
            let one_pass = p.read + applies;
            println!(
                "| {} | *one shared pass: read {:.1} s + applies {:.1} s* | {:.1} | {} | |",
                r.backend,
                p.read.as_secs_f64(),
                applies.as_secs_f64(),
                one_pass.as_secs_f64(),
                thousands(rate(r.generated.events, one_pass))
            );
        }
    }
    println!();
    println!(
        "### Lag from commit to read-model visibility ({} commands/s for {} s)",
        config.lag_rate, config.lag_seconds
    );
    println!();
    println!("| backend | commands | achieved rate (/s) | errors | lag median (ms) | lag p99 (ms) | lag max (ms) | `wait_for` median (ms) | `wait_for` p99 (ms) |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in results {
        let l = &r.lag;
        println!(
            "| {} | {} | {:.0} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
            r.backend,
            l.commands,
            l.achieved_rate,
            l.errors,
            ms(percentile(&l.observed, 0.5)),
            ms(percentile(&l.observed, 0.99)),
            ms(percentile(&l.observed, 1.0)),
            ms(percentile(&l.waited, 0.5)),
            ms(percentile(&l.waited, 0.99))
        );
    }
    println!();
    for r in results {
        println!(
            "{}: {} events generated in {:.1} s ({:?}); rebuild of all read models {:.1} s; baseline{}",
            r.backend,
            r.generated.events,
            r.generated.elapsed.as_secs_f64(),
            r.generated.by_type,
            r.rebuild_time(false).as_secs_f64(),
            r.baselines
                .iter()
                .map(|(d, b)| format!(" ({d:?}) {} events in {:.1} s", b.events, b.elapsed.as_secs_f64()))
                .collect::<String>()
        );
        let slow: Vec<String> = r
            .lag
            .slow_by_second
            .iter()
            .map(|(s, n)| format!("{s} s: {n}"))
            .collect();
        println!(
            "{}: commands whose lag exceeded 100 ms, by second of the run: {}",
            r.backend,
            if slow.is_empty() {
                "none".to_string()
            } else {
                slow.join(", ")
            }
        );
    }
}
