//! Events the commands would refuse, written by another writer below
//! validation, and events no code can read: the read side stores the first
//! escaped and keeps going, and stops visibly at the second — never a
//! silent skip, never a silent loop. And a projection held open inside a
//! batch holds no other projection back.

// The shared fixtures; this file needs only a few of them.
#[allow(dead_code)]
mod common;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use common::*;
use serde_json::json;
use sqlx::Connection;
use toolhub_domain::workflow::WorkflowCommand;
use toolhub_domain::WorkflowId;
use toolhub_eventstore::sql::Conn;
use toolhub_eventstore::testing::TestDb;
use toolhub_eventstore::{
    open, CommandContext, Db, EventStore, Position, RecordedEvent, StoreError,
};
use toolhub_projections::{
    PageRequest, Projection, ProjectorRunner, ReadModels, RunnerOptions, Stall, Tables,
    WorkflowFilter,
};

fn fast() -> RunnerOptions {
    RunnerOptions {
        batch_size: 50,
        poll_interval: Duration::from_millis(50),
        standby_interval: Duration::from_millis(50),
        ..RunnerOptions::default()
    }
}

const METADATA: &str = r#"{"actor":"other-writer","tenant":"acme","correlation_id":"c","causation_id":"","request_id":"r"}"#;

/// Appends one event row as another writer would, with plain SQL and no
/// command in front of it; returns its global position.
async fn insert_raw(db: &Db, aggregate_id: &str, event_type: &str, payload: &str) -> i64 {
    match db {
        Db::Postgres(pool) => sqlx::query_scalar(
            "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
             VALUES ('workflow', $1, 1, $2, '1.0', $3::json, $4::json) RETURNING global_position",
        )
        .bind(aggregate_id)
        .bind(event_type)
        .bind(payload)
        .bind(METADATA)
        .fetch_one(pool)
        .await
        .expect("insert a raw event"),
        Db::Sqlite(pool) => sqlx::query_scalar(
            "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
             VALUES ('workflow', ?1, 1, ?2, '1.0', ?3, ?4) RETURNING global_position",
        )
        .bind(aggregate_id)
        .bind(event_type)
        .bind(payload)
        .bind(METADATA)
        .fetch_one(pool)
        .await
        .expect("insert a raw event"),
    }
}

/// Creates a workflow for `tenant` through the command bus.
async fn create_workflow(store: &EventStore, tenant_name: &str, name: &str) -> (String, Position) {
    let writers = Writers::new(store);
    let id = WorkflowId::new().to_string();
    let committed = writers
        .workflows
        .execute(
            &id,
            WorkflowCommand::Create {
                tenant: tenant(tenant_name),
                name: name.into(),
                description: String::new(),
                definition: definition(1),
            },
            &CommandContext::new("bob", tenant(tenant_name)),
        )
        .await
        .expect("create a workflow");
    (id, committed.position.expect("a committed position"))
}

async fn listed(read: &ReadModels, tenant_name: &str) -> Vec<String> {
    read.workflows(
        &tenant(tenant_name),
        &PageRequest {
            first: 100,
            after: None,
        },
        &WorkflowFilter::default(),
        toolhub_projections::Documents::Included,
    )
    .await
    .expect("list workflows")
    .items
    .into_iter()
    .map(|(_, w)| w.name)
    .collect()
}

async fn a_nul_in_a_committed_event_is_stored_escaped_and_the_read_side_keeps_going(db: TestDb) {
    let store = open(db.url()).await.expect("open");
    let read = ReadModels::new(&store);
    let runner = ProjectorRunner::start(store.clone(), fast());

    let nul_id = WorkflowId::new().to_string();
    let payload = json!({
        "type": "WorkflowCreated", "tenant": "acme", "name": "With a NUL",
        "description": "a\u{0}b", "definition": definition(5)
    });
    // serde_json writes the NUL as the escape `\u0000`, which `json` keeps
    // and `jsonb` refuses.
    assert!(payload.to_string().contains("\\u0000"));
    insert_raw(store.db(), &nul_id, "WorkflowCreated", &payload.to_string()).await;

    // Another tenant's later change appears in its list.
    let (_, position) = create_workflow(&store, "globex", "Later").await;
    read.wait_for(position, Duration::from_secs(30))
        .await
        .expect("the read side goes past the event with a NUL");
    assert_eq!(listed(&read, "globex").await, vec!["Later".to_string()]);

    let stored = read
        .workflow(&tenant("acme"), &nul_id)
        .await
        .expect("read")
        .expect("the workflow with a NUL is in the read model, not dropped");
    let expected = match store.db() {
        Db::Postgres(_) => "a\\u0000b",
        Db::Sqlite(_) => "a\u{0}b",
    };
    assert_eq!(stored.description, expected);
    assert!(read.stalls().await.expect("stalls").is_empty());
    runner.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nul_in_a_committed_event_is_stored_escaped_and_the_read_side_keeps_going_on_postgres() {
    a_nul_in_a_committed_event_is_stored_escaped_and_the_read_side_keeps_going(
        TestDb::postgres().await,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nul_in_a_committed_event_is_stored_escaped_and_the_read_side_keeps_going_on_sqlite() {
    a_nul_in_a_committed_event_is_stored_escaped_and_the_read_side_keeps_going(
        TestDb::sqlite().await,
    )
    .await;
}

async fn wait_for_stall(read: &ReadModels) -> Vec<Stall> {
    for _ in 0..300 {
        let stalls = read.stalls().await.expect("stalls");
        if !stalls.is_empty() {
            return stalls;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no projector reported a stall");
}

async fn an_undecodable_event_stops_its_projector_visibly_until_it_can_be_read(db: TestDb) {
    let store = open(db.url()).await.expect("open");
    let read = ReadModels::new(&store);
    let (_, before) = create_workflow(&store, "acme", "Before").await;
    let runner = ProjectorRunner::start(store.clone(), fast());
    read.wait_for(before, Duration::from_secs(30))
        .await
        .expect("caught up");

    let bad_id = WorkflowId::new().to_string();
    let bad = insert_raw(
        store.db(),
        &bad_id,
        "WorkflowCreated",
        r#"{"type":"WorkflowCreated","what":"no decoder reads this"}"#,
    )
    .await;
    let (_, after) = create_workflow(&store, "globex", "After").await;

    let stalls = wait_for_stall(&read).await;
    let workflows = stalls
        .iter()
        .find(|s| s.projection == "workflows")
        .unwrap_or_else(|| panic!("the workflows projection is not reported stopped: {stalls:?}"));
    assert_eq!(workflows.position.global, bad, "{workflows:?}");
    assert!(!workflows.error.is_empty());
    // Never a skip: the event after the bad one is not applied.
    assert!(
        read.wait_for(after, Duration::from_millis(500))
            .await
            .is_err(),
        "the read side claims to have passed an event it cannot read"
    );
    assert!(listed(&read, "globex").await.is_empty());
    // Still stopped at the same place on later retries.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let again = read.stalls().await.expect("stalls");
    assert!(again
        .iter()
        .any(|s| s.projection == "workflows" && s.position.global == bad));

    // The way out an upgrade gives (a decoder, an upcaster): here the row
    // is made readable, and the projector resumes by itself.
    let fixed = json!({
        "type": "WorkflowCreated", "tenant": "acme", "name": "Fixed",
        "description": "", "definition": definition(5)
    })
    .to_string();
    match store.db() {
        Db::Postgres(pool) => {
            sqlx::query("UPDATE events SET payload = $1::json WHERE global_position = $2")
                .bind(&fixed)
                .bind(bad)
                .execute(pool)
                .await
                .expect("fix the row");
        }
        Db::Sqlite(pool) => {
            sqlx::query("UPDATE events SET payload = ?1 WHERE global_position = ?2")
                .bind(&fixed)
                .bind(bad)
                .execute(pool)
                .await
                .expect("fix the row");
        }
    }
    read.wait_for(after, Duration::from_secs(30))
        .await
        .expect("the projector resumes once the event can be read");
    assert_eq!(listed(&read, "globex").await, vec!["After".to_string()]);
    assert!(read.stalls().await.expect("stalls").is_empty());
    runner.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_event_stops_its_projector_visibly_until_it_can_be_read_on_postgres() {
    an_undecodable_event_stops_its_projector_visibly_until_it_can_be_read(TestDb::postgres().await)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_event_stops_its_projector_visibly_until_it_can_be_read_on_sqlite() {
    an_undecodable_event_stops_its_projector_visibly_until_it_can_be_read(TestDb::sqlite().await)
        .await;
}

/// A projection whose batches wait, inside their transaction and before
/// any write, until the test lets them go.
struct HeldOpen {
    gate: Arc<tokio::sync::Semaphore>,
    entered: Arc<tokio::sync::Notify>,
}

#[async_trait]
impl Projection for HeldOpen {
    fn name(&self) -> &'static str {
        "held_open"
    }

    fn tables(&self) -> &'static [&'static str] {
        &[]
    }

    async fn apply(
        &self,
        _conn: &mut Conn<'_>,
        _tables: &Tables,
        _events: &[RecordedEvent],
    ) -> Result<(), StoreError> {
        self.entered.notify_one();
        let permit = self
            .gate
            .acquire()
            .await
            .map_err(|_| StoreError::Corrupt("the gate closed".into()))?;
        permit.forget();
        Ok(())
    }
}

/// On PostgreSQL each projection has its own leader and transaction (on
/// SQLite one transaction holds them all, by design: one writer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projection_held_open_in_its_batch_holds_back_no_other_projection_on_postgres() {
    let db = TestDb::postgres().await;
    let store = open(db.url()).await.expect("open");
    let read = ReadModels::new(&store);
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let entered = Arc::new(tokio::sync::Notify::new());
    let held = ProjectorRunner::start_with(
        store.clone(),
        vec![Arc::new(HeldOpen {
            gate: gate.clone(),
            entered: entered.clone(),
        })],
        fast(),
    );
    let live = ProjectorRunner::start(store.clone(), fast());

    // The held projection starts a batch on the first event and stays in it.
    create_workflow(&store, "acme", "First").await;
    tokio::time::timeout(Duration::from_secs(30), entered.notified())
        .await
        .expect("the held projection enters its batch");

    // Later commits reach the other read models, and read-your-writes sees
    // them, while that batch is still open.
    let (_, later) = create_workflow(&store, "globex", "Later").await;
    read.wait_for(later, Duration::from_secs(20))
        .await
        .expect("a batch held open holds back neither the other projections nor wait_for");
    assert_eq!(listed(&read, "globex").await, vec!["Later".to_string()]);

    gate.add_permits(1_000);
    held.stop().await;
    live.stop().await;
    // The held projection's own transaction ended with it; make sure the
    // connection to the database is still usable for the cleanup.
    if let Db::Postgres(pool) = store.db() {
        let mut conn = pool.acquire().await.expect("acquire");
        conn.ping().await.expect("ping");
    }
}
