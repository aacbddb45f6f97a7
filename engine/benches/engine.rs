//! The engine's benchmark (issue 10), on PostgreSQL and on SQLite side by
//! side in one run:
//!
//! 1. **Throughput and latency.** A 5-node workflow of `transform` and
//!    `condition` nodes (one branch taken, the other skipped), 64 executions
//!    in flight at all times (a new one starts as soon as one finishes),
//!    executions per second over windows of a few thousand; then the
//!    start-to-complete latency of one such execution alone (from calling
//!    `Engine::start` to seeing it `COMPLETED` in the bus's state, which
//!    happens at the commit of its last event), p50 and p99. Windows and
//!    runs alternate between the backends, so that both see the same
//!    (shared) machine.
//! 2. **MCP tool-call overhead.** A workflow of one `echo` step on the MCP
//!    reference server (`@modelcontextprotocol/server-everything`, stdio,
//!    warm), start to complete, against a direct `rmcp` client's
//!    `tools/call` to another warm instance of the same server — what a user
//!    could write instead. Calls alternate between the two; medians. Also
//!    shown, to say where the difference goes: the same call through the
//!    engine's `McpPool` alone, the step's span in the log (from the
//!    commit of `StepStarted` to the commit of `StepSucceeded`), and one
//!    raw autocommitted `INSERT` through sqlx, timed between the calls: a
//!    run commits twice before it is complete, so two such commits are the
//!    floor of the difference on the machine at that moment.
//! 3. **Step events per second** (PostgreSQL). The events the engine
//!    recorded during each throughput window, against a hand-written
//!    baseline that inserts the very same rows (same payloads and metadata,
//!    new aggregate ids) with plain multi-row `INSERT`s through sqlx — one
//!    statement per commit the engine made, 64 executions at a time — so
//!    that both write the same rows in the same number of commits.
//!
//! Run with `cargo bench -p toolhub-engine --bench engine` (PostgreSQL at
//! `DATABASE_URL`, or 127.0.0.1:5432; the MCP reference server installed by
//! `npm ci --prefix tests/mcp`, which the first run does itself).
//! `BENCH_EXECUTIONS` (default 3000) sets the executions per window,
//! `BENCH_WINDOWS` (default 5) the windows per backend, `BENCH_ALONE`
//! (default 300) the executions timed alone per backend, `BENCH_MCP_CALLS`
//! (default 300) the calls per path and backend. `BENCH_SMOKE=1` (which CI
//! runs) makes everything tiny. Results go to `docs/benchmarks.md` by hand.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rmcp::model::{
    CallToolRequestParams, ClientCapabilities, ClientConfig, Implementation, ProtocolVersion,
};
use rmcp::transport::TokioChildProcess;
use rmcp::ServiceExt;
use serde_json::{json, Map, Value};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use toolhub_domain::execution::{Execution, ExecutionStatus};
use toolhub_domain::mcp_server::{McpServer, McpServerCommand, Transport};
use toolhub_domain::workflow::{Workflow, WorkflowCommand};
use toolhub_domain::{McpServerId, TenantId, WorkflowId};
use toolhub_engine::mcp::{McpPool, McpPoolConfig, McpTarget, ResolvedTransport};
use toolhub_engine::{Engine, EngineConfig, EngineHandle, StartRequest};
use toolhub_eventstore::testing::TestDb;
use toolhub_eventstore::{
    CommandBus, CommandContext, Db, EventStore, KeyStore, MasterKey, Position, SecretVault,
};

#[allow(dead_code)]
#[path = "../../tests/src/everything.rs"]
mod everything;

/// Executions in flight at once during a throughput window.
const CONCURRENCY: usize = 64;

/// The sizes of a run: full by default, tiny with `BENCH_SMOKE=1`.
struct Sizes {
    /// Executions per throughput window.
    executions: usize,
    /// Throughput windows per backend.
    windows: usize,
    /// Executions timed alone per backend.
    alone: usize,
    /// MCP calls per path and backend.
    mcp_calls: usize,
    /// The backends measured.
    backends: Vec<String>,
}

fn sizes() -> Sizes {
    let smoke = std::env::var("BENCH_SMOKE").is_ok_and(|v| v == "1");
    let number = |name: &str, full: usize, tiny: usize| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(if smoke { tiny } else { full })
    };
    Sizes {
        executions: number("BENCH_EXECUTIONS", 3000, 2 * CONCURRENCY),
        windows: number("BENCH_WINDOWS", 5, 1),
        alone: number("BENCH_ALONE", 300, 5),
        mcp_calls: number("BENCH_MCP_CALLS", 300, 5),
        backends: std::env::var("BENCH_BACKENDS")
            .unwrap_or_else(|_| "postgres,sqlite".into())
            .split(',')
            .map(|b| b.trim().to_string())
            .filter(|b| !b.is_empty())
            .collect(),
    }
}

fn tenant() -> TenantId {
    TenantId::parse("bench").expect("tenant")
}

/// `shape` builds an object from the input, `check` branches on it, one of
/// `big` / `small` runs and the other is skipped, `done` joins them.
fn five_nodes() -> Value {
    json!({
        "nodes": [
            {"id": "shape", "type": "transform",
             "params": {"template": {"n": "{{input.n}}", "greeting": "hello {{input.name}}"}}},
            {"id": "check", "type": "condition", "params": {"expression": "nodes.shape.n > 2"}},
            {"id": "big", "type": "transform", "params": {"template": {"size": "big", "n": "{{nodes.shape.n}}"}}},
            {"id": "small", "type": "transform", "params": {"template": {"size": "small"}}},
            {"id": "done", "type": "transform",
             "params": {"template": {"greeting": "{{nodes.shape.greeting}}", "big": "{{nodes.big}}", "small": "{{nodes.small}}"}}}
        ],
        "edges": [
            {"from": "shape", "to": "check"},
            {"from": "check", "to": "big", "branch": "true"},
            {"from": "check", "to": "small", "branch": "false"},
            {"from": "big", "to": "done"},
            {"from": "small", "to": "done"}
        ]
    })
}

/// The input of the `i`th execution: both branches are taken in turn.
fn input(i: usize) -> Value {
    json!({"n": i % 5, "name": "Ada"})
}

/// One `echo` step on the server registered as `everything`.
fn echo_workflow() -> Value {
    json!({
        "nodes": [{"id": "echo", "type": "mcp_tool",
                   "params": {"server": "everything", "tool": "echo",
                              "arguments": {"message": "{{input.message}}"}}}],
        "edges": []
    })
}

/// The reference server over stdio.
fn everything_stdio() -> Transport {
    Transport::Stdio {
        command: "node".into(),
        args: vec![
            everything::server_everything().display().to_string(),
            "stdio".into(),
        ],
        env: BTreeMap::new(),
    }
}

/// An engine over a fresh database, as `toolhub serve` builds it (default
/// store options and engine configuration), with its workers running.
struct Backend {
    /// `postgres` or `sqlite`.
    name: String,
    /// Dropped last: removes the database.
    _db: TestDb,
    store: EventStore,
    engine: Engine,
    handle: Option<EngineHandle>,
    executions: Arc<CommandBus<Execution>>,
    workflows: Arc<CommandBus<Workflow>>,
    servers: Arc<CommandBus<McpServer>>,
    ctx: CommandContext,
}

impl Backend {
    async fn open(name: &str) -> Self {
        let db = match name {
            "postgres" => TestDb::postgres().await,
            "sqlite" => TestDb::sqlite().await,
            other => panic!("unknown backend `{other}` in BENCH_BACKENDS"),
        };
        let store = toolhub_eventstore::open(db.url())
            .await
            .expect("open the store");
        let executions = Arc::new(CommandBus::new(store.clone()));
        let workflows = Arc::new(CommandBus::new(store.clone()));
        let servers = Arc::new(CommandBus::new(store.clone()));
        let keys = KeyStore::new(store.db().clone(), MasterKey::generate());
        let secrets = Arc::new(SecretVault::new(CommandBus::new(store.clone()), keys));
        let engine = Engine::new(
            store.clone(),
            executions.clone(),
            workflows.clone(),
            servers.clone(),
            secrets,
            EngineConfig::default(),
        )
        .expect("build the engine");
        let handle = Some(engine.spawn());
        Self {
            name: name.to_string(),
            _db: db,
            store,
            engine,
            handle,
            executions,
            workflows,
            servers,
            ctx: CommandContext::new("bench", tenant()),
        }
    }

    async fn create_workflow(&self, name: &str, definition: Value) -> WorkflowId {
        let id = WorkflowId::new();
        self.workflows
            .execute(
                &id.to_string(),
                WorkflowCommand::Create {
                    tenant: tenant(),
                    name: name.into(),
                    description: String::new(),
                    definition,
                },
                &self.ctx,
            )
            .await
            .expect("create the workflow");
        id
    }

    /// Registers the reference server as `everything` and records its tools.
    async fn register_everything(&self) {
        let id = McpServerId::new();
        self.servers
            .execute(
                &id.to_string(),
                McpServerCommand::Register {
                    tenant: tenant(),
                    name: "everything".into(),
                    transport: everything_stdio(),
                },
                &self.ctx,
            )
            .await
            .expect("register the MCP server");
        self.engine
            .refresh_tools(&self.ctx, id)
            .await
            .expect("list the server's tools");
    }

    /// Runs one execution alone; returns its start-to-complete time and id.
    async fn run_alone(&self, workflow: WorkflowId, input: Value) -> (Duration, String) {
        let mut commits = self.store.subscribe();
        let started = Instant::now();
        let id = start(&self.engine, &self.ctx, workflow, input).await;
        loop {
            let (state, _) = self.executions.current(&id).await.expect("read");
            if let Some(status) = state.status().filter(|s| s.is_terminal()) {
                assert_eq!(status, ExecutionStatus::Completed, "execution {id}");
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "execution {id} did not finish within a minute"
            );
            // Woken by the commit; the timer is only a fallback.
            tokio::select! {
                _ = commits.changed() => {}
                _ = tokio::time::sleep(Duration::from_millis(5)) => {}
            }
        }
        (started.elapsed(), id)
    }

    /// Runs `n` executions of `workflow`, `CONCURRENCY` in flight at once;
    /// returns executions per second, from the first start to the last end.
    async fn throughput(&self, workflow: WorkflowId, n: usize) -> f64 {
        let stats = self.engine.stats();
        let base = stats.finished.load(Ordering::SeqCst);
        let slots = Arc::new(Semaphore::new(CONCURRENCY));
        let ids = Arc::new(Mutex::new(Vec::with_capacity(n)));
        let started = Instant::now();
        let starter = {
            let (slots, ids) = (slots.clone(), ids.clone());
            let (engine, ctx) = (self.engine.clone(), self.ctx.clone());
            tokio::spawn(async move {
                let mut starts = JoinSet::new();
                for i in 0..n {
                    slots.clone().acquire_owned().await.expect("slots").forget();
                    let (engine, ctx, ids) = (engine.clone(), ctx.clone(), ids.clone());
                    starts.spawn(async move {
                        let id = start(&engine, &ctx, workflow, input(i)).await;
                        ids.lock().push(id);
                    });
                }
                while let Some(joined) = starts.join_next().await {
                    joined.expect("a start");
                }
            })
        };
        let mut commits = self.store.subscribe();
        let mut finished = 0usize;
        let mut progress = Instant::now();
        while finished < n {
            tokio::select! {
                _ = commits.changed() => {}
                _ = tokio::time::sleep(Duration::from_millis(1)) => {}
            }
            let now = (stats.finished.load(Ordering::SeqCst) - base) as usize;
            if now > finished {
                slots.add_permits(now - finished);
                finished = now;
                progress = Instant::now();
            }
            assert!(
                progress.elapsed() < Duration::from_secs(30),
                "{}: no execution finished for 30 s ({finished} of {n})",
                self.name
            );
        }
        let rate = n as f64 / started.elapsed().as_secs_f64();
        starter.await.expect("the starter");
        // Every one of them completed (not failed).
        let ids = std::mem::take(&mut *ids.lock());
        assert_eq!(ids.len(), n);
        for id in ids {
            let (state, _) = self.executions.current(&id).await.expect("read");
            assert_eq!(
                state.status(),
                Some(ExecutionStatus::Completed),
                "execution {id}"
            );
        }
        rate
    }

    /// The newest position in the log, and how many events it holds after
    /// `after` (all of them, and the `Step…` ones).
    async fn count_after(&self, after: i64) -> (i64, i64, i64) {
        let sql = "SELECT CAST(COALESCE(MAX(global_position), 0) AS BIGINT), COUNT(*), \
                   CAST(COALESCE(SUM(CASE WHEN event_type LIKE 'Step%' THEN 1 ELSE 0 END), 0) AS BIGINT) \
                   FROM events WHERE global_position > $1";
        match self.store.db() {
            Db::Postgres(pool) => sqlx::query_as(sql).bind(after).fetch_one(pool).await,
            Db::Sqlite(pool) => {
                sqlx::query_as(&sql.replace("$1", "?"))
                    .bind(after)
                    .fetch_one(pool)
                    .await
            }
        }
        .expect("count events")
    }

    async fn stop(mut self) {
        if let Some(handle) = self.handle.take() {
            handle.stop().await;
        }
    }
}

/// Starts an execution; returns its id.
async fn start(
    engine: &Engine,
    ctx: &CommandContext,
    workflow: WorkflowId,
    input: Value,
) -> String {
    engine
        .start(
            ctx,
            StartRequest {
                workflow_id: workflow,
                input,
                breakpoints: Vec::new(),
                idempotency_key: None,
                trigger: "manual".into(),
                source: None,
            },
        )
        .await
        .expect("start an execution")
        .execution_id
        .to_string()
}

/// One row of the log, as stored.
#[derive(sqlx::FromRow)]
struct RawRow {
    aggregate_type: String,
    aggregate_id: String,
    sequence: i64,
    event_type: String,
    event_version: String,
    payload: String,
    metadata: String,
    transaction: String,
}

/// The rows after `after`, as stored (payload and metadata as their text),
/// grouped by execution and, within it, by the commit that wrote them.
async fn rows_after(pool: &sqlx::PgPool, after: i64) -> Vec<Vec<Vec<RawRow>>> {
    let rows: Vec<RawRow> = sqlx::query_as(
        "SELECT aggregate_type, aggregate_id, sequence, event_type, event_version, \
                payload::text AS payload, metadata::text AS metadata, \
                transaction_id::text AS transaction \
           FROM events WHERE global_position > $1 ORDER BY global_position",
    )
    .bind(after)
    .fetch_all(pool)
    .await
    .expect("read the rows back");
    let mut executions: HashMap<String, Vec<Vec<RawRow>>> = HashMap::new();
    for row in rows {
        let commits = executions.entry(row.aggregate_id.clone()).or_default();
        match commits.last_mut() {
            Some(last) if last[0].transaction == row.transaction => last.push(row),
            _ => commits.push(vec![row]),
        }
    }
    executions.into_values().collect()
}

/// Inserts `executions` again under new ids with plain SQL: one multi-row
/// `INSERT` per commit of the original, each execution's commits in order,
/// `CONCURRENCY` executions at a time. Returns rows per second.
async fn raw_insert(pool: &sqlx::PgPool, executions: Vec<Vec<Vec<RawRow>>>) -> f64 {
    let rows: usize = executions.iter().flatten().map(Vec::len).sum();
    let queue = Arc::new(Mutex::new(executions));
    let started = Instant::now();
    let mut writers = JoinSet::new();
    for _ in 0..CONCURRENCY {
        let (queue, pool) = (queue.clone(), pool.clone());
        writers.spawn(async move {
            loop {
                let Some(commits) = queue.lock().pop() else {
                    return;
                };
                let id = uuid::Uuid::new_v4().to_string();
                for commit in commits {
                    let mut sql = String::from(
                        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, \
                         event_version, payload, metadata) VALUES ",
                    );
                    for i in 0..commit.len() {
                        let p = i * 7;
                        if i > 0 {
                            sql.push_str(", ");
                        }
                        sql.push_str(&format!(
                            "(${}, ${}, ${}, ${}, ${}, ${}::json, ${}::json)",
                            p + 1,
                            p + 2,
                            p + 3,
                            p + 4,
                            p + 5,
                            p + 6,
                            p + 7
                        ));
                    }
                    let mut query = sqlx::query(&sql);
                    for row in &commit {
                        query = query
                            .bind(&row.aggregate_type)
                            .bind(&id)
                            .bind(row.sequence)
                            .bind(&row.event_type)
                            .bind(&row.event_version)
                            .bind(&row.payload)
                            .bind(&row.metadata);
                    }
                    query.execute(&pool).await.expect("raw insert");
                }
            }
        });
    }
    while let Some(joined) = writers.join_next().await {
        joined.expect("a raw writer");
    }
    rows as f64 / started.elapsed().as_secs_f64()
}

/// The wall-clock times of a one-step execution run alone: when `start`
/// was called and when its completion was seen.
type Ends = (chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>);

/// Where the time of one-step executions went, from the log's commit times
/// (PostgreSQL stamps them with `clock_timestamp()`, SQLite to the
/// millisecond) and the wall clock of the same machine: from calling
/// `start` to the commit of `ExecutionStarted`, from there to the commit of
/// `StepStarted`, from there to the commit of `StepSucceeded` (with the
/// execution's end), and from there until the completion was seen.
async fn phases(
    store: &EventStore,
    after: Position,
    runs: &HashMap<String, Ends>,
) -> [Vec<Duration>; 4] {
    let mut seen: HashMap<String, HashMap<String, chrono::DateTime<chrono::Utc>>> = HashMap::new();
    let mut checkpoint = after;
    // The reader only returns what no open transaction can still precede
    // (on PostgreSQL, across the whole server): wait until it has it all.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let events = store.read_after(checkpoint, 1000).await.expect("read");
        let Some(last) = events.last() else {
            let complete = seen.len() == runs.len()
                && seen
                    .values()
                    .all(|times| times.contains_key("StepSucceeded"));
            if complete {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the log did not show every echo execution within a minute"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        checkpoint = last.position;
        for event in events {
            if runs.contains_key(&event.aggregate_id) {
                seen.entry(event.aggregate_id)
                    .or_default()
                    .insert(event.event_type, event.recorded_at);
            }
        }
    }
    let gap = |from: chrono::DateTime<chrono::Utc>, to: chrono::DateTime<chrono::Utc>| {
        (to - from).to_std().unwrap_or_default()
    };
    let mut phases: [Vec<Duration>; 4] = Default::default();
    for (id, times) in &seen {
        let (called, completed) = runs[id];
        phases[0].push(gap(called, times["ExecutionStarted"]));
        phases[1].push(gap(times["ExecutionStarted"], times["StepStarted"]));
        phases[2].push(gap(times["StepStarted"], times["StepSucceeded"]));
        phases[3].push(gap(times["StepSucceeded"], completed));
    }
    phases
}

/// The table [`raw_commit`] writes to.
async fn create_probe_table(db: &Db) {
    let sql = "CREATE TABLE bench_commits (id TEXT PRIMARY KEY, payload TEXT NOT NULL)";
    match db {
        Db::Postgres(pool) => sqlx::query(sql).execute(pool).await.map(|_| ()),
        Db::Sqlite(pool) => sqlx::query(sql).execute(pool).await.map(|_| ()),
    }
    .expect("create the probe table");
}

/// One autocommitted one-row `INSERT` through sqlx on the store's pool:
/// what one commit costs on this machine right now, timed between the
/// calls it is compared with.
async fn raw_commit(db: &Db, message: &str) -> Duration {
    let sql = "INSERT INTO bench_commits (id, payload) VALUES ($1, $2)";
    let id = uuid::Uuid::new_v4().to_string();
    let t = Instant::now();
    match db {
        Db::Postgres(pool) => sqlx::query(sql)
            .bind(&id)
            .bind(message)
            .execute(pool)
            .await
            .map(|_| ()),
        Db::Sqlite(pool) => sqlx::query(sql)
            .bind(&id)
            .bind(message)
            .execute(pool)
            .await
            .map(|_| ()),
    }
    .expect("a raw insert");
    t.elapsed()
}

/// A direct rmcp client to a fresh instance of the reference server.
async fn direct_client() -> rmcp::service::RunningService<rmcp::service::RoleClient, ClientConfig> {
    let mut command = tokio::process::Command::new("node");
    command
        .arg(everything::server_everything())
        .arg("stdio")
        .stderr(std::process::Stdio::null());
    let transport = TokioChildProcess::new(command).expect("spawn the reference server");
    ClientConfig::new(
        ClientCapabilities::default(),
        Implementation::new("bench", "0"),
    )
    .with_protocol_version(ProtocolVersion::LATEST_WITH_INITIALIZE)
    .serve(transport)
    .await
    .expect("initialize")
}

fn echo_arguments(message: &str) -> Map<String, Value> {
    let Value::Object(map) = json!({"message": message}) else {
        unreachable!("an object")
    };
    map
}

fn median_f(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// The `q` quantile (nearest rank) of `xs`, in milliseconds.
fn quantile_ms(xs: &[Duration], q: f64) -> f64 {
    let mut sorted: Vec<Duration> = xs.to_vec();
    sorted.sort();
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1].as_secs_f64() * 1000.0
}

fn list(xs: &[f64], digits: usize) -> String {
    xs.iter()
        .map(|x| format!("{x:.digits$}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[tokio::main]
async fn main() {
    let sizes = sizes();
    let mut backends = Vec::new();
    for name in &sizes.backends {
        backends.push(Backend::open(name).await);
    }
    let mut five = Vec::new();
    for backend in &backends {
        five.push(backend.create_workflow("Five nodes", five_nodes()).await);
    }

    // 1. Throughput: windows alternate between the backends. On PostgreSQL
    // each window's rows are then inserted again by the raw baseline.
    eprintln!("warming up");
    for (backend, workflow) in backends.iter().zip(&five) {
        backend.throughput(*workflow, CONCURRENCY).await;
    }
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); backends.len()];
    let mut events: Vec<Vec<(f64, f64)>> = vec![Vec::new(); backends.len()];
    let mut raw: Vec<f64> = Vec::new();
    let mut event_ratios: Vec<f64> = Vec::new();
    for window in 0..sizes.windows {
        for (i, (backend, workflow)) in backends.iter().zip(&five).enumerate() {
            let (before, _, _) = backend.count_after(0).await;
            let started = Instant::now();
            let rate = backend.throughput(*workflow, sizes.executions).await;
            let seconds = started.elapsed().as_secs_f64();
            let (_, all, steps) = backend.count_after(before).await;
            rates[i].push(rate);
            events[i].push((all as f64 / seconds, steps as f64 / seconds));
            eprintln!(
                "window {}: {} {rate:.0} executions/s, {:.0} events/s",
                window + 1,
                backend.name,
                all as f64 / seconds
            );
            if let Db::Postgres(pool) = backend.store.db() {
                let rows = rows_after(pool, before).await;
                let baseline = raw_insert(pool, rows).await;
                raw.push(baseline);
                event_ratios.push(all as f64 / seconds / baseline);
                eprintln!("window {}: raw insert {baseline:.0} rows/s", window + 1);
            }
        }
    }

    // Latency of one execution alone, alternating between the backends.
    let mut alone: Vec<Vec<Duration>> = vec![Vec::new(); backends.len()];
    for (backend, workflow) in backends.iter().zip(&five) {
        for i in 0..5 {
            backend.run_alone(*workflow, input(i)).await;
        }
    }
    for i in 0..sizes.alone {
        for (b, (backend, workflow)) in backends.iter().zip(&five).enumerate() {
            alone[b].push(backend.run_alone(*workflow, input(i)).await.0);
        }
    }

    // 2. MCP: through the engine, through its pool alone, and with a direct
    // rmcp client, each on a warm server of its own; calls alternate.
    let mut mcp_rows = Vec::new();
    let direct = direct_client().await;
    let pool = McpPool::new(McpPoolConfig::default(), reqwest::Client::new());
    let target = McpTarget {
        tenant: tenant(),
        server: McpServerId::new(),
        transport: ResolvedTransport::new(everything_stdio()).expect("a resolved transport"),
    };
    for backend in &backends {
        backend.register_everything().await;
        let workflow = backend.create_workflow("Echo", echo_workflow()).await;
        let before = backend.store.head().await.expect("head");
        let (mut engine_calls, mut pool_calls, mut direct_calls) = (vec![], vec![], vec![]);
        let mut commits = vec![];
        create_probe_table(backend.store.db()).await;
        let mut runs = HashMap::new();
        for i in 0..sizes.mcp_calls + 5 {
            let message = format!("hello {i}");
            let called = chrono::Utc::now();
            let (through_engine, id) = backend
                .run_alone(workflow, json!({"message": message}))
                .await;
            let completed = chrono::Utc::now();
            let t = Instant::now();
            let output = pool
                .call_tool(
                    &target,
                    "echo",
                    echo_arguments(&message),
                    Duration::from_secs(30),
                    CancellationToken::new(),
                )
                .await
                .expect("a pool call");
            let through_pool = t.elapsed();
            assert!(output.text.contains(&message), "{}", output.text);
            let t = Instant::now();
            let result = direct
                .call_tool(
                    CallToolRequestParams::new("echo").with_arguments(echo_arguments(&message)),
                )
                .await
                .expect("a direct call");
            let through_rmcp = t.elapsed();
            assert_ne!(result.is_error, Some(true));
            let commit = raw_commit(backend.store.db(), &message).await;
            // The first few warm up all four.
            if i >= 5 {
                engine_calls.push(through_engine);
                pool_calls.push(through_pool);
                direct_calls.push(through_rmcp);
                commits.push(commit);
                runs.insert(id, (called, completed));
            }
        }
        let conflicts = backend.engine.stats().conflicts.load(Ordering::SeqCst);
        let phases = phases(&backend.store, before, &runs).await;
        assert_eq!(phases[0].len(), runs.len(), "one echo step per execution");
        mcp_rows.push((
            backend.name.clone(),
            engine_calls,
            pool_calls,
            direct_calls,
            phases,
            conflicts,
            commits,
        ));
    }
    let _ = direct.cancel().await;
    pool.shutdown().await;

    // Results.
    println!(
        "\n1. A 5-node workflow (transform/condition), {CONCURRENCY} in flight, {} windows of {} executions per backend, alternating:\n",
        sizes.windows, sizes.executions
    );
    println!("| backend | executions/s, median window | windows | alone p50 (ms) | alone p99 (ms) | alone max (ms) |");
    println!("|---|---:|---|---:|---:|---:|");
    for (b, backend) in backends.iter().enumerate() {
        println!(
            "| {} | {:.0} | {} | {:.1} | {:.1} | {:.1} |",
            backend.name,
            median_f(rates[b].clone()),
            list(&rates[b], 0),
            quantile_ms(&alone[b], 0.5),
            quantile_ms(&alone[b], 0.99),
            quantile_ms(&alone[b], 1.0),
        );
    }
    println!(
        "\n({} executions timed alone per backend, one at a time, alternating.)",
        sizes.alone
    );

    println!(
        "\n2. MCP `echo` on a warm stdio server, {} calls per path, alternating, medians (ms):\n",
        sizes.mcp_calls
    );
    println!("| backend | through the engine (start → COMPLETED) | McpPool::call_tool | direct rmcp client | engine − direct | engine p99 | direct p99 | one raw autocommitted INSERT | failed moves (whole run) |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (name, engine_calls, pool_calls, direct_calls, _, conflicts, commits) in &mcp_rows {
        let (e, d) = (
            quantile_ms(engine_calls, 0.5),
            quantile_ms(direct_calls, 0.5),
        );
        println!(
            "| {name} | {e:.2} | {:.2} | {d:.2} | **{:+.2}** | {:.2} | {:.2} | {:.2} | {conflicts} |",
            quantile_ms(pool_calls, 0.5),
            e - d,
            quantile_ms(engine_calls, 0.99),
            quantile_ms(direct_calls, 0.99),
            quantile_ms(commits, 0.5),
        );
    }
    println!(
        "\n(A run records two commits before it is complete — its start with the step started, then the result with the end — so two raw commits are the floor of engine − direct.)"
    );

    println!(
        "\nWhere the time through the engine goes (medians, ms; commit times from the log):\n"
    );
    println!("| backend | start called → ExecutionStarted committed | → StepStarted committed | → StepSucceeded and the end committed | → completion seen |");
    println!("|---|---:|---:|---:|---:|");
    for (name, _, _, _, phases, _, _) in &mcp_rows {
        println!(
            "| {name} | {:.2} | {:.2} | {:.2} | {:.2} |",
            quantile_ms(&phases[0], 0.5),
            quantile_ms(&phases[1], 0.5),
            quantile_ms(&phases[2], 0.5),
            quantile_ms(&phases[3], 0.5),
        );
    }

    println!("\n3. Events recorded during the throughput windows (per second, median window):\n");
    println!("| backend | all execution events/s | step events/s | raw INSERT of the same rows (rows/s) | engine ÷ raw (median of per-window ratios) |");
    println!("|---|---:|---:|---:|---:|");
    for (b, backend) in backends.iter().enumerate() {
        let all = median_f(events[b].iter().map(|e| e.0).collect());
        let steps = median_f(events[b].iter().map(|e| e.1).collect());
        if backend.name == "postgres" && !raw.is_empty() {
            println!(
                "| {} | {all:.0} | {steps:.0} | {:.0} ({}) | {:.2} ({}) |",
                backend.name,
                median_f(raw.clone()),
                list(&raw, 0),
                median_f(event_ratios.clone()),
                list(&event_ratios, 2)
            );
        } else {
            println!("| {} | {all:.0} | {steps:.0} | | |", backend.name);
        }
    }

    for backend in backends {
        backend.stop().await;
    }
}
