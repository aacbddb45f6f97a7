//! The read side's guarantees: never miss, double or invent an event, across
//! held transactions, crashes, restarts, standby takeovers, rebuilds under
//! load, re-applied batches; tenants never see each other; no secret value
//! reaches a read model.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use common::*;
use sqlx::Connection;
use toolhub_domain::workflow::WorkflowCommand;
use toolhub_domain::WorkflowId;
use toolhub_eventstore::sql::Conn;
use toolhub_eventstore::testing::TestDb;
use toolhub_eventstore::{open, CommandContext, Db, Position, RecordedEvent, StoreError};
use toolhub_projections::{
    AuditFilter, Documents, Projection, ProjectorRunner, ReadModels, RunnerOptions, Tables,
};

fn fast() -> RunnerOptions {
    RunnerOptions {
        batch_size: 50,
        poll_interval: Duration::from_millis(50),
        standby_interval: Duration::from_millis(50),
        ..RunnerOptions::default()
    }
}

async fn audit_count(db: &Db) -> i64 {
    let sql = "SELECT count(*) FROM rm_audit";
    match db {
        Db::Postgres(pool) => sqlx::query_scalar(sql)
            .fetch_one(pool)
            .await
            .expect("count"),
        Db::Sqlite(pool) => sqlx::query_scalar(sql)
            .fetch_one(pool)
            .await
            .expect("count"),
    }
}

async fn log_count(db: &Db) -> i64 {
    let sql = "SELECT count(*) FROM events";
    match db {
        Db::Postgres(pool) => sqlx::query_scalar(sql)
            .fetch_one(pool)
            .await
            .expect("count"),
        Db::Sqlite(pool) => sqlx::query_scalar(sql)
            .fetch_one(pool)
            .await
            .expect("count"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_transaction_holds_the_projector_back_and_then_every_event_is_applied_once() {
    let db = TestDb::postgres().await;
    let store = open(db.url()).await.expect("open");
    let writers = Writers::new(&store);
    let read = ReadModels::new(&store);
    let runner = ProjectorRunner::start(store.clone(), fast());
    let before = populate(&writers, "acme", 1).await;
    settle(&read, before.last).await;
    let applied_before = audit_count(store.db()).await;

    // A writer appends a workflow and holds its transaction open.
    let mut held = sqlx::PgConnection::connect(db.url())
        .await
        .expect("connect");
    let mut tx = held.begin().await.expect("begin");
    let held_id = WorkflowId::new().to_string();
    let created = serde_json::json!({
        "type": "WorkflowCreated", "tenant": "acme", "name": "Held", "description": "",
        "definition": definition(5)
    });
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
         VALUES ('workflow', $1, 1, 'WorkflowCreated', '1.0', $2::json, \
         '{\"actor\":\"slow\",\"tenant\":\"acme\",\"correlation_id\":\"c\",\"causation_id\":\"\",\"request_id\":\"r\"}')",
    )
    .bind(&held_id)
    .bind(created.to_string())
    .execute(&mut *tx)
    .await
    .expect("insert in the held transaction");

    // Later commands commit and the projector runs meanwhile.
    let later = populate(&writers, "acme", 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        audit_count(store.db()).await,
        applied_before,
        "no event that committed after the held one may be applied before it"
    );
    let acme = tenant("acme");
    assert!(read
        .workflow(&acme, &later.workflows[0])
        .await
        .expect("read")
        .is_none());

    tx.commit().await.expect("commit the held transaction");
    settle(&read, later.last).await;
    assert_eq!(audit_count(store.db()).await, log_count(store.db()).await);
    let held_view = read
        .workflow(&acme, &held_id)
        .await
        .expect("read")
        .expect("the held workflow");
    assert_eq!(held_view.name, "Held");
    assert!(read
        .workflow(&acme, &later.workflows[0])
        .await
        .expect("read")
        .is_some());
    // The audit log holds each event once, in commit-safe order.
    let page = read
        .audit_after(&acme, Position::ZERO, &AuditFilter::default(), 1000)
        .await
        .expect("audit");
    let positions: Vec<Position> = page.iter().map(|e| e.position).collect();
    let mut sorted = positions.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(positions, sorted);
    runner.stop().await;
}

/// Applies half of a batch and then fails, once: a crash in the middle of a
/// batch.
struct FailsOnce {
    inner: Arc<dyn Projection>,
    failed: AtomicBool,
}

#[async_trait]
impl Projection for FailsOnce {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn tables(&self) -> &'static [&'static str] {
        self.inner.tables()
    }

    async fn apply(
        &self,
        conn: &mut Conn<'_>,
        tables: &Tables,
        events: &[RecordedEvent],
    ) -> Result<(), StoreError> {
        if events.len() > 1 && !self.failed.swap(true, Ordering::SeqCst) {
            self.inner
                .apply(conn, tables, &events[..events.len() / 2])
                .await?;
            return Err(StoreError::Corrupt(
                "injected failure in the middle of a batch".into(),
            ));
        }
        self.inner.apply(conn, tables, events).await
    }
}

/// `crash` stops the first runner by aborting its tasks, as a dying process
/// would. That is faithful on PostgreSQL, where the leader's own connection
/// dies with it; an SQLite process that dies takes its locks with it, which
/// an aborted task in a living process cannot imitate, so there the first
/// runner is stopped (its failed batch is the crash in the middle).
async fn a_failed_batch_and_a_crash_leave_the_same_tables_as_a_rebuild(db: TestDb, crash: bool) {
    let store = open(db.url()).await.expect("open");
    let writers = Writers::new(&store);
    let read = ReadModels::new(&store);
    let first = populate(&writers, "acme", 3).await;
    let failing: Vec<Arc<dyn Projection>> = toolhub_projections::projection::all()
        .into_iter()
        .map(|inner| {
            Arc::new(FailsOnce {
                inner,
                failed: AtomicBool::new(false),
            }) as Arc<dyn Projection>
        })
        .collect();
    let runner = ProjectorRunner::start_with(store.clone(), failing, fast());
    settle(&read, first.last).await;
    let more = populate(&writers, "globex", 2).await;
    if crash {
        // No graceful stop: open transactions are lost.
        runner.abort();
    } else {
        runner.stop().await;
    }
    let restarted = ProjectorRunner::start(store.clone(), fast());
    settle(&read, more.last).await;
    restarted.stop().await;
    let live = dump(store.db()).await;
    assert!(live["rm_audit"].len() as i64 == log_count(store.db()).await);
    rebuild_all(&store).await;
    assert_eq!(
        dump(store.db()).await,
        live,
        "live tables equal a rebuild from scratch"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_a_failed_batch_and_a_crash_leave_the_same_tables_as_a_rebuild() {
    a_failed_batch_and_a_crash_leave_the_same_tables_as_a_rebuild(TestDb::postgres().await, true)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_sqlite_a_failed_batch_and_a_crash_leave_the_same_tables_as_a_rebuild() {
    a_failed_batch_and_a_crash_leave_the_same_tables_as_a_rebuild(TestDb::sqlite().await, false)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_takes_over_when_the_leader_dies_and_the_result_equals_a_rebuild() {
    let db = TestDb::postgres().await;
    // Two stores with their own pools stand for two processes.
    let one = open(db.url()).await.expect("open");
    let two = open(db.url()).await.expect("open");
    let writers = Writers::new(&one);
    let read = ReadModels::new(&one);
    let a = ProjectorRunner::start(one.clone(), fast());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let b = ProjectorRunner::start(two.clone(), fast());
    let first = populate(&writers, "acme", 2).await;
    settle(&read, first.last).await;
    for name in ["workflows", "executions", "secrets", "mcp_servers", "audit"] {
        assert!(a.is_leader(name), "the first runner leads {name}");
        assert!(!b.is_leader(name), "the second runner stands by for {name}");
    }
    // The leader dies without a word.
    a.abort();
    let more = populate(&writers, "acme", 2).await;
    settle(&read, more.last).await;
    for name in ["workflows", "executions", "secrets", "mcp_servers", "audit"] {
        assert!(b.is_leader(name), "the standby took over {name}");
    }
    b.stop().await;
    let live = dump(one.db()).await;
    assert_eq!(live["rm_audit"].len() as i64, log_count(one.db()).await);
    rebuild_all(&one).await;
    assert_eq!(dump(one.db()).await, live);
}

async fn a_rebuild_under_eight_writers_catches_up_to_a_fresh_rebuild(db: TestDb) {
    let store = open(db.url()).await.expect("open");
    let writers = Writers::new(&store);
    let read = ReadModels::new(&store);
    populate(&writers, "acme", 2).await;
    let runner = ProjectorRunner::start(store.clone(), fast());
    let mut tasks = Vec::new();
    for w in 0..8 {
        let writers = writers.clone();
        tasks.push(tokio::spawn(async move {
            let ctx = CommandContext::new("writer", tenant("acme"));
            let id = WorkflowId::new().to_string();
            let mut last = writers
                .workflows
                .execute(
                    &id,
                    WorkflowCommand::Create {
                        tenant: ctx.tenant.clone(),
                        name: format!("writer {w}"),
                        description: String::new(),
                        definition: definition(1),
                    },
                    &ctx,
                )
                .await
                .expect("create")
                .position
                .expect("a position");
            for i in 0..25u64 {
                let c = writers
                    .workflows
                    .execute(
                        &id,
                        WorkflowCommand::UpdateDefinition {
                            definition: definition(i + 2),
                            comment: Some(format!("step {i}")),
                        },
                        &ctx,
                    )
                    .await
                    .expect("update");
                last = last.max(c.position.expect("a position"));
            }
            last
        }));
    }
    // Rebuild every read model while the writers write.
    rebuild_all(&store).await;
    let mut last = Position::ZERO;
    for task in tasks {
        last = last.max(task.await.expect("writer"));
    }
    settle(&read, last).await;
    runner.stop().await;
    let live = dump(store.db()).await;
    assert_eq!(live["rm_audit"].len() as i64, log_count(store.db()).await);
    assert_eq!(live["rm_workflow_versions"].len(), 2 * 3 + 8 * 26);
    rebuild_all(&store).await;
    assert_eq!(dump(store.db()).await, live);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_a_rebuild_under_eight_writers_catches_up_to_a_fresh_rebuild() {
    a_rebuild_under_eight_writers_catches_up_to_a_fresh_rebuild(TestDb::postgres().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_sqlite_a_rebuild_under_eight_writers_catches_up_to_a_fresh_rebuild() {
    a_rebuild_under_eight_writers_catches_up_to_a_fresh_rebuild(TestDb::sqlite().await).await;
}

async fn reapplying_an_applied_batch_changes_nothing(db: TestDb) {
    let store = open(db.url()).await.expect("open");
    let writers = Writers::new(&store);
    let read = ReadModels::new(&store);
    let populated = populate(&writers, "acme", 2).await;
    let runner = ProjectorRunner::start(store.clone(), fast());
    settle(&read, populated.last).await;
    runner.stop().await;
    let before = dump(store.db()).await;
    let events = store
        .read_after(Position::ZERO, 10_000)
        .await
        .expect("read");
    assert!(!events.is_empty());
    for projection in toolhub_projections::projection::all() {
        // The whole log, then its second half again: both already applied.
        for batch in [&events[..], &events[events.len() / 2..]] {
            match store.db() {
                Db::Postgres(pool) => {
                    let mut tx = pool.begin().await.expect("begin");
                    projection
                        .apply(&mut Conn::Pg(&mut tx), &Tables::live(), batch)
                        .await
                        .expect("apply again");
                    tx.commit().await.expect("commit");
                }
                Db::Sqlite(pool) => {
                    let mut tx = pool.begin().await.expect("begin");
                    projection
                        .apply(&mut Conn::Lite(&mut tx), &Tables::live(), batch)
                        .await
                        .expect("apply again");
                    tx.commit().await.expect("commit");
                }
            }
        }
    }
    assert_eq!(dump(store.db()).await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_reapplying_an_applied_batch_changes_nothing() {
    reapplying_an_applied_batch_changes_nothing(TestDb::postgres().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_sqlite_reapplying_an_applied_batch_changes_nothing() {
    reapplying_an_applied_batch_changes_nothing(TestDb::sqlite().await).await;
}

async fn no_query_returns_anything_of_another_tenant(db: TestDb) {
    use toolhub_projections::{ExecutionFilter, PageRequest, WorkflowFilter};
    let store = open(db.url()).await.expect("open");
    let writers = Writers::new(&store);
    let read = ReadModels::new(&store);
    let acme = populate(&writers, "acme", 2).await;
    let globex = populate(&writers, "globex", 2).await;
    let runner = ProjectorRunner::start(store.clone(), fast());
    settle(&read, acme.last.max(globex.last)).await;
    runner.stop().await;

    let me = tenant("acme");
    let page = PageRequest {
        first: 100,
        after: None,
    };
    let workflows = read
        .workflows(&me, &page, &WorkflowFilter::default(), Documents::Included)
        .await
        .expect("list");
    assert_eq!(workflows.items.len(), 2);
    assert!(workflows.items.iter().all(|(_, w)| w.tenant == "acme"));
    let executions = read
        .executions(&me, &page, &ExecutionFilter::default(), Documents::Included)
        .await
        .expect("list");
    assert_eq!(executions.items.len(), 2);
    assert!(executions.items.iter().all(|(_, e)| e.tenant == "acme"));
    let secrets = read.secrets(&me, &page).await.expect("list");
    assert!(secrets.items.iter().all(|(_, s)| s.tenant == "acme"));
    assert!(!secrets.items.is_empty());
    let servers = read.mcp_servers(&me, &page).await.expect("list");
    assert_eq!(servers.items.len(), 2);
    assert!(servers.items.iter().all(|(_, s)| s.tenant == "acme"));
    let audit = read
        .audit_log(&me, &page, &AuditFilter::default(), Documents::Included)
        .await
        .expect("audit");
    assert!(!audit.items.is_empty());
    assert!(audit.items.iter().all(|(_, e)| e.tenant == "acme"));

    // Globex's entities, asked for by id, do not exist for acme.
    for id in &globex.workflows {
        assert!(read.workflow(&me, id).await.expect("read").is_none());
        let versions = read
            .workflow_versions(&me, id, &page)
            .await
            .expect("versions");
        assert!(versions.items.is_empty());
        assert!(read
            .history(&me, "workflow", id)
            .await
            .expect("history")
            .is_empty());
    }
    for id in &globex.executions {
        assert!(read.execution(&me, id).await.expect("read").is_none());
    }
    assert!(read
        .execution_steps(&me, &globex.executions, Documents::Included)
        .await
        .expect("steps")
        .is_empty());
    for id in &globex.secrets {
        assert!(read.secret(&me, id).await.expect("read").is_none());
    }
    for id in &globex.mcp_servers {
        assert!(read.mcp_server(&me, id).await.expect("read").is_none());
    }
    assert!(read
        .mcp_tools(&me, &globex.mcp_servers)
        .await
        .expect("tools")
        .is_empty());
    assert!(read
        .workflow_versions_of(&me, &globex.workflows, &page)
        .await
        .expect("versions")
        .is_empty());
    let after = read
        .audit_after(&me, Position::ZERO, &AuditFilter::default(), 1000)
        .await
        .expect("audit");
    assert!(after.iter().all(|e| e.tenant == "acme"));

    // And acme's own are there, in full.
    let w = read
        .workflow(&me, &acme.workflows[0])
        .await
        .expect("read")
        .expect("acme's workflow");
    assert_eq!(
        (w.version, w.name.as_str(), w.archived),
        (3, "Renamed 0", false)
    );
    let versions = read
        .workflow_versions(&me, &acme.workflows[0], &page)
        .await
        .expect("versions");
    let numbers: Vec<u64> = versions.items.iter().map(|(_, v)| v.version).collect();
    assert_eq!(numbers, vec![3, 2, 1]);
    assert_eq!(versions.items[0].1.reverted_from, Some(1));
    let steps = read
        .execution_steps(&me, &acme.executions[..1], Documents::Included)
        .await
        .expect("steps");
    let summary: Vec<(String, u32, String)> = steps
        .iter()
        .map(|s| (s.node_id.clone(), s.attempt, s.status.clone()))
        .collect();
    assert_eq!(
        summary,
        vec![
            ("fetch".into(), 1, "failed".into()),
            ("fetch".into(), 2, "succeeded".into()),
            ("wait".into(), 1, "succeeded".into()),
        ]
    );
    let tools = read
        .mcp_tools(&me, &acme.mcp_servers[..1])
        .await
        .expect("tools");
    assert_eq!(tools.len(), 1, "the last discovery replaces the tool list");
    let server = read
        .mcp_server(&me, &acme.mcp_servers[0])
        .await
        .expect("read")
        .expect("server");
    assert!(!server.enabled);
    assert_eq!(server.healthy, Some(true));
    // Keyset pagination walks the whole list without repeats.
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = read
            .audit_log(
                &me,
                &PageRequest {
                    first: 7,
                    after: after.clone(),
                },
                &AuditFilter::default(),
                Documents::Included,
            )
            .await
            .expect("page");
        seen.extend(page.items.iter().map(|(_, e)| e.position));
        if !page.has_next_page {
            break;
        }
        after = page.items.last().map(|(c, _)| c.clone());
    }
    assert_eq!(seen.len(), audit.items.len().max(seen.len()));
    let mut unique = seen.clone();
    unique.dedup();
    assert_eq!(unique, seen);
    let bad = read
        .workflows(
            &me,
            &PageRequest {
                first: 5,
                after: Some(toolhub_projections::Cursor("nonsense".into())),
            },
            &WorkflowFilter::default(),
            Documents::Included,
        )
        .await;
    assert!(matches!(
        bad,
        Err(toolhub_projections::ReadError::InvalidCursor)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_no_query_returns_anything_of_another_tenant() {
    no_query_returns_anything_of_another_tenant(TestDb::postgres().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_sqlite_no_query_returns_anything_of_another_tenant() {
    no_query_returns_anything_of_another_tenant(TestDb::sqlite().await).await;
}

async fn no_secret_value_reaches_a_read_model(db: TestDb) {
    let store = open(db.url()).await.expect("open");
    let writers = Writers::new(&store);
    let read = ReadModels::new(&store);
    let populated = populate(&writers, "acme", 3).await;
    let runner = ProjectorRunner::start(store.clone(), fast());
    settle(&read, populated.last).await;
    runner.stop().await;
    let tables = dump(store.db()).await;
    let all: String = tables
        .values()
        .flatten()
        .cloned()
        .collect::<Vec<_>>()
        .join("\n");
    assert!(all.contains("TOKEN_0"), "the dump covers the secrets table");
    // The sealed values as the log holds them.
    let events = store
        .read_after(Position::ZERO, 10_000)
        .await
        .expect("read");
    let mut sealed = Vec::new();
    for e in events.iter().filter(|e| e.aggregate_type == "secret") {
        if let Some(v) = e.payload.get("value") {
            sealed.push(v["ciphertext"].as_str().expect("ciphertext").to_string());
            sealed.push(v["nonce"].as_str().expect("nonce").to_string());
        }
    }
    assert_eq!(sealed.len(), 2 * 2 * 3);
    for secret in populated.secret_values.iter().chain(sealed.iter()) {
        assert!(
            !all.contains(secret.as_str()),
            "a secret value reached a read model"
        );
    }
    assert!(
        !all.contains("literal-token-do-not-leak"),
        "a literal credential reached a read model"
    );
    assert!(
        all.contains("{{secrets.TOKEN_0}}"),
        "secret references are kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_no_secret_value_reaches_a_read_model() {
    no_secret_value_reaches_a_read_model(TestDb::postgres().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_sqlite_no_secret_value_reaches_a_read_model() {
    no_secret_value_reaches_a_read_model(TestDb::sqlite().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_for_a_position_the_projectors_never_reach_times_out() {
    let db = TestDb::sqlite().await;
    let store = open(db.url()).await.expect("open");
    let read = ReadModels::new(&store);
    let far = Position::new(0, 1_000_000);
    let waited = read.wait_for(far, Duration::from_millis(100)).await;
    assert!(
        matches!(waited, Err(toolhub_projections::WaitError::Timeout { position }) if position == far)
    );
}

async fn lag_counts_the_events_a_projector_has_not_applied(db: TestDb) {
    let store = open(db.url()).await.expect("open");
    let writers = Writers::new(&store);
    let read = ReadModels::new(&store);
    let populated = populate(&writers, "acme", 1).await;
    let total = log_count(store.db()).await as u64;
    // Nothing has run yet: every projection is behind by the whole log.
    let lag = read.lag().await.expect("lag");
    assert_eq!(lag.len(), 5);
    for l in &lag {
        assert_eq!(l.behind, total, "{l:?}");
        assert!(l.oldest_unapplied_ms.is_some(), "{l:?}");
    }
    let runner = ProjectorRunner::start(store.clone(), fast());
    settle(&read, populated.last).await;
    runner.stop().await;
    for l in read.lag().await.expect("lag") {
        assert_eq!((l.behind, l.oldest_unapplied_ms), (0, None), "{l:?}");
        assert_eq!(l.checkpoint, populated.last);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_lag_counts_the_events_a_projector_has_not_applied() {
    lag_counts_the_events_a_projector_has_not_applied(TestDb::postgres().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_sqlite_lag_counts_the_events_a_projector_has_not_applied() {
    lag_counts_the_events_a_projector_has_not_applied(TestDb::sqlite().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_keeps_the_index_names_the_migrations_gave() {
    let db = TestDb::postgres().await;
    let store = open(db.url()).await.expect("open");
    let writers = Writers::new(&store);
    populate(&writers, "acme", 1).await;
    let Db::Postgres(pool) = store.db() else {
        unreachable!("a PostgreSQL test database")
    };
    let names = || async {
        sqlx::query_scalar::<_, String>(
            "SELECT tablename || '.' || indexname FROM pg_indexes \
             WHERE schemaname = current_schema() AND tablename LIKE 'rm\\_%' ORDER BY 1",
        )
        .fetch_all(pool)
        .await
        .expect("indexes")
    };
    let before = names().await;
    assert!(
        before.contains(&"rm_audit.rm_audit_tenant_order".to_string()),
        "{before:?}"
    );
    rebuild_all(&store).await;
    assert_eq!(names().await, before);
    rebuild_all(&store).await;
    assert_eq!(names().await, before, "and again after a second rebuild");
}

/// Every index and constraint of the read-model tables: table, name and
/// definition.
async fn pg_schema(pool: &sqlx::PgPool) -> Vec<(String, String, String)> {
    sqlx::query_as(
        "SELECT tablename::text, indexname::text, indexdef FROM pg_indexes \
          WHERE schemaname = current_schema() AND tablename LIKE 'rm\\_%' \
         UNION ALL \
         SELECT conrelid::regclass::text, conname::text, pg_get_constraintdef(oid) \
           FROM pg_constraint WHERE conrelid::regclass::text LIKE 'rm\\_%' \
         ORDER BY 1, 2, 3",
    )
    .fetch_all(pool)
    .await
    .expect("the schema")
}

/// Records, at its first batch of a rebuild's replay, the indexes its
/// shadow tables carry.
struct IndexSpy {
    inner: Arc<dyn Projection>,
    seen: parking_lot::Mutex<Option<Vec<String>>>,
}

#[async_trait]
impl Projection for IndexSpy {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn tables(&self) -> &'static [&'static str] {
        self.inner.tables()
    }

    async fn apply(
        &self,
        conn: &mut Conn<'_>,
        tables: &Tables,
        events: &[RecordedEvent],
    ) -> Result<(), StoreError> {
        if tables.is_replay() && self.seen.lock().is_none() {
            let mut names = Vec::new();
            for table in self.inner.tables() {
                let rows = conn
                    .fetch(
                        "SELECT indexname FROM pg_indexes \
                          WHERE schemaname = current_schema() AND tablename = $1",
                        &[tables.name(table).into()],
                    )
                    .await?;
                for row in rows {
                    names.push(row.text("indexname")?);
                }
            }
            *self.seen.lock() = Some(names);
        }
        self.inner.apply(conn, tables, events).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_replays_into_primary_keys_only_and_ends_with_every_index_and_constraint_of_the_migrations(
) {
    let db = TestDb::postgres().await;
    let store = open(db.url()).await.expect("open");
    let writers = Writers::new(&store);
    populate(&writers, "acme", 2).await;
    let Db::Postgres(pool) = store.db() else {
        unreachable!("a PostgreSQL test database")
    };
    // The replay must see the events, not only the swap's catch-up: wait
    // until transactions elsewhere in the cluster no longer hold them back.
    let total = log_count(store.db()).await as usize;
    while store
        .read_after(Position::ZERO, 10_000)
        .await
        .expect("read")
        .len()
        < total
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = pg_schema(pool).await;
    let secondary = [
        "rm_workflows_tenant",
        "rm_executions_tenant",
        "rm_executions_workflow",
        "rm_secrets_tenant",
        "rm_mcp_servers_tenant",
        "rm_audit_tenant_order",
        "rm_audit_aggregate",
    ];
    for name in secondary {
        assert!(
            before.iter().any(|(_, n, _)| n == name),
            "{name} in {before:?}"
        );
    }
    for round in 0..2 {
        let spies: Vec<IndexSpy> = toolhub_projections::projection::all()
            .into_iter()
            .map(|inner| IndexSpy {
                inner,
                seen: parking_lot::Mutex::new(None),
            })
            .collect();
        let projections: Vec<&dyn Projection> =
            spies.iter().map(|s| s as &dyn Projection).collect();
        toolhub_projections::rebuild_many(&store, &projections, 7, |_| {})
            .await
            .expect("rebuild");
        for spy in &spies {
            let seen = spy.seen.lock().clone().expect("the replay applied batches");
            let mut expected: Vec<String> = spy
                .tables()
                .iter()
                .map(|t| format!("{t}__rebuild_pkey"))
                .collect();
            let mut seen_sorted = seen.clone();
            seen_sorted.sort();
            expected.sort();
            assert_eq!(
                seen_sorted,
                expected,
                "during the replay {}'s shadow tables have their primary keys only",
                spy.name()
            );
        }
        assert_eq!(
            pg_schema(pool).await,
            before,
            "after rebuild {round}, the indexes and constraints are the migrations' own"
        );
    }
}

/// Fails at its third batch of a rebuild's replay.
struct FailsInReplay {
    inner: Arc<dyn Projection>,
    batches: std::sync::atomic::AtomicUsize,
}

#[async_trait]
impl Projection for FailsInReplay {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn tables(&self) -> &'static [&'static str] {
        self.inner.tables()
    }

    async fn apply(
        &self,
        conn: &mut Conn<'_>,
        tables: &Tables,
        events: &[RecordedEvent],
    ) -> Result<(), StoreError> {
        if tables.is_replay() && self.batches.fetch_add(1, Ordering::SeqCst) == 2 {
            return Err(StoreError::Corrupt("injected failure in a replay".into()));
        }
        self.inner.apply(conn, tables, events).await
    }
}

async fn a_rebuild_that_fails_midway_leaves_the_live_tables_and_checkpoints_as_they_were(
    db: TestDb,
) {
    let store = open(db.url()).await.expect("open");
    let writers = Writers::new(&store);
    let read = ReadModels::new(&store);
    let populated = populate(&writers, "acme", 2).await;
    let runner = ProjectorRunner::start(store.clone(), fast());
    settle(&read, populated.last).await;
    runner.stop().await;
    let live = dump(store.db()).await;
    let checkpoints: Vec<Position> = read
        .lag()
        .await
        .expect("lag")
        .iter()
        .map(|l| l.checkpoint)
        .collect();
    let all = toolhub_projections::projection::all();
    let failing = FailsInReplay {
        inner: all[1].clone(),
        batches: Default::default(),
    };
    let mut projections: Vec<&dyn Projection> = all.iter().map(|p| p.as_ref()).collect();
    projections[1] = &failing;
    let failed = toolhub_projections::rebuild_many(&store, &projections, 5, |_| {}).await;
    assert!(
        matches!(&failed, Err(StoreError::Corrupt(m)) if m.contains("injected")),
        "the projection's own error is reported: {failed:?}"
    );
    assert_eq!(dump(store.db()).await, live);
    let after: Vec<Position> = read
        .lag()
        .await
        .expect("lag")
        .iter()
        .map(|l| l.checkpoint)
        .collect();
    assert_eq!(after, checkpoints);
    rebuild_all(&store).await;
    assert_eq!(
        dump(store.db()).await,
        live,
        "the next rebuild starts over and succeeds"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_a_rebuild_that_fails_midway_leaves_the_live_tables_and_checkpoints_as_they_were(
) {
    a_rebuild_that_fails_midway_leaves_the_live_tables_and_checkpoints_as_they_were(
        TestDb::postgres().await,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_sqlite_a_rebuild_that_fails_midway_leaves_the_live_tables_and_checkpoints_as_they_were()
{
    a_rebuild_that_fails_midway_leaves_the_live_tables_and_checkpoints_as_they_were(
        TestDb::sqlite().await,
    )
    .await;
}
