//! The event store's conformance suite, run on PostgreSQL and on an SQLite
//! file. Every test takes a fresh database.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use toolhub_eventstore::testing::counter::{tenant, Counter, CounterCommand, CounterError};
use toolhub_eventstore::testing::TestDb;
use toolhub_eventstore::{
    open, BusOptions, CommandBus, CommandContext, CommandError, ConflictKind, Db, EventStore,
    Position, Upcast,
};
use uuid::Uuid;

fn ctx(tenant_name: &str) -> CommandContext {
    let mut ctx = CommandContext::new("user-1", tenant(tenant_name));
    ctx.causation_id = Some(Uuid::now_v7());
    ctx.request_id = format!("req-{}", Uuid::new_v4().simple());
    ctx
}

async fn create_counter(bus: &CommandBus<Counter>, ctx: &CommandContext) -> String {
    create_counter_at(bus, ctx).await.0
}

async fn create_counter_at(bus: &CommandBus<Counter>, ctx: &CommandContext) -> (String, Position) {
    let id = Uuid::now_v7().to_string();
    let committed = bus
        .execute(
            &id,
            CounterCommand::Create {
                tenant: ctx.tenant.clone(),
            },
            ctx,
        )
        .await
        .expect("create a counter");
    (id, committed.position.expect("a position"))
}

fn add(amount: i64) -> CounterCommand {
    CounterCommand::Add {
        amount,
        retry_safe: true,
    }
}

/// Reads the whole log, up to and including `until`. On PostgreSQL an event
/// becomes readable only once every older transaction in the cluster has
/// ended (other tests' included), so the reader may need a moment.
async fn read_all(store: &EventStore, until: Position) -> Vec<toolhub_eventstore::RecordedEvent> {
    let mut all = Vec::new();
    let mut checkpoint = Position::ZERO;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let batch = store
            .read_after(checkpoint, 500)
            .await
            .expect("read the log");
        match batch.last() {
            Some(last) => {
                checkpoint = last.position;
                all.extend(batch);
            }
            None if checkpoint >= until => break,
            None => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the log never reached {until}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    all
}

pub async fn events_and_metadata_round_trip_with_gapless_sequences(db: TestDb) {
    let store = open(db.url()).await.expect("open the store");
    let bus = CommandBus::<Counter>::new(store.clone());
    let ctx = ctx("acme");
    let a = create_counter(&bus, &ctx).await;
    let b = create_counter(&bus, &ctx).await;
    for i in 0..5 {
        bus.execute(&a, add(i), &ctx).await.expect("add to a");
        bus.execute(&b, add(10 * i), &ctx).await.expect("add to b");
    }
    let committed = bus
        .execute(
            &a,
            CounterCommand::AddMany {
                amounts: vec![1, 2, 3],
            },
            &ctx,
        )
        .await
        .expect("add many");
    assert_eq!(committed.version, 9);
    assert_eq!(committed.events, 3);

    let events = read_all(&store, committed.position.expect("a position")).await;
    assert_eq!(events.len(), 2 + 10 + 3);
    assert_eq!(events.last().map(|e| e.position), committed.position);
    let mut sequences: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for pair in events.windows(2) {
        assert!(pair[0].position < pair[1].position, "positions increase");
    }
    for event in &events {
        sequences
            .entry(event.aggregate_id.clone())
            .or_default()
            .push(event.sequence);
        assert_eq!(event.aggregate_type, "Counter");
        assert_eq!(event.metadata.actor, "user-1");
        assert_eq!(event.metadata.tenant, "acme");
        assert_eq!(
            event.metadata.correlation_id,
            ctx.correlation_id.to_string()
        );
        assert_eq!(
            event.metadata.causation_id,
            ctx.causation_id.expect("set").to_string()
        );
        assert_eq!(event.metadata.request_id, ctx.request_id);
    }
    assert_eq!(sequences[&a], (1..=9).collect::<Vec<_>>());
    assert_eq!(sequences[&b], (1..=6).collect::<Vec<_>>());
    let first = &events[0];
    assert_eq!(first.event_type, "CounterCreated");
    assert_eq!(first.event_version, "1.0");
    assert_eq!(
        first.payload,
        serde_json::json!({"Created": {"tenant": "acme"}})
    );
    let added: Vec<_> = events
        .iter()
        .filter(|e| e.aggregate_id == a && e.event_type == "CounterAdded")
        .map(|e| e.payload["Added"]["amount"].as_i64().expect("an amount"))
        .collect();
    assert_eq!(added, vec![0, 1, 2, 3, 4, 1, 2, 3]);
    assert_eq!(
        store.head().await.expect("head"),
        events.last().expect("events").position
    );
}

pub async fn two_commands_racing_on_one_version_commit_exactly_once(db: TestDb) {
    let store = open(db.url()).await.expect("open the store");
    // Two buses stand for two replicas, each with its own cache.
    let left = CommandBus::<Counter>::new(store.clone());
    let right = CommandBus::<Counter>::new(store.clone());
    let ctx = ctx("acme");
    let id = create_counter(&left, &ctx).await;
    // Both replicas now hold version 1 in their caches.
    right
        .execute(&id, CounterCommand::Touch, &ctx)
        .await
        .expect("warm the cache");
    for round in 0..5u64 {
        let expected = 1 + round;
        let (l, r) = tokio::join!(
            left.execute_expecting(&id, add(1), &ctx, Some(expected)),
            right.execute_expecting(&id, add(2), &ctx, Some(expected)),
        );
        let outcomes = [&l, &r];
        let committed = outcomes.iter().filter(|o| o.is_ok()).count();
        assert_eq!(committed, 1, "round {round}: {l:?} / {r:?}");
        let conflict = outcomes
            .iter()
            .find_map(|o| o.as_ref().err())
            .expect("a loser");
        assert!(
            matches!(
                conflict,
                CommandError::Conflict(ConflictKind::ExpectedVersion { expected: e, actual })
                    if *e == expected && *actual == expected + 1
            ),
            "round {round}: {conflict:?}"
        );
    }
    let (state, version) = left.fold(&id, None).await.expect("fold");
    assert_eq!(version, 6);
    assert_eq!(state.adds, 5);
}

pub async fn a_command_that_is_not_retry_safe_surfaces_a_lost_race(db: TestDb) {
    let store = open(db.url()).await.expect("open the store");
    let ctx = ctx("acme");
    let setup = CommandBus::<Counter>::new(store.clone());
    let id = create_counter(&setup, &ctx).await;
    // Many replicas with cold caches race with a command that must not be
    // retried; every outcome is a commit or a typed conflict, and the log
    // holds exactly the commits.
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let bus = CommandBus::<Counter>::new(store.clone());
        let id = id.clone();
        let ctx = ctx.clone();
        tasks.push(tokio::spawn(async move {
            bus.execute(
                &id,
                CounterCommand::Add {
                    amount: 1,
                    retry_safe: false,
                },
                &ctx,
            )
            .await
        }));
    }
    let mut committed = 0;
    for task in tasks {
        match task.await.expect("join") {
            Ok(_) => committed += 1,
            Err(CommandError::Conflict(ConflictKind::LostRace)) => {}
            Err(other) => panic!("unexpected outcome {other:?}"),
        }
    }
    let (state, version) = setup.fold(&id, None).await.expect("fold");
    assert!(committed >= 1);
    assert_eq!(state.adds, committed);
    assert_eq!(version, 1 + committed);
}

pub async fn fifty_concurrent_writers_lose_no_event(db: TestDb) {
    let store = open(db.url()).await.expect("open the store");
    let ctx = ctx("acme");
    let replicas = [
        Arc::new(CommandBus::<Counter>::new(store.clone())),
        Arc::new(CommandBus::<Counter>::new(store.clone())),
    ];
    let mut ids = Vec::new();
    for _ in 0..10 {
        ids.push(create_counter(&replicas[0], &ctx).await);
    }
    let mut tasks = Vec::new();
    for writer in 0..50usize {
        let bus = replicas[writer % 2].clone();
        let id = ids[writer % ids.len()].clone();
        let ctx = ctx.clone();
        tasks.push(tokio::spawn(async move {
            let mut positions = Vec::new();
            let mut conflicts = 0u64;
            for i in 0..100i64 {
                match bus.execute(&id, add(i), &ctx).await {
                    Ok(c) => positions.push(c.position.expect("one event")),
                    Err(CommandError::Conflict(ConflictKind::LostRace)) => conflicts += 1,
                    Err(other) => panic!("writer {writer}: {other:?}"),
                }
            }
            (id, positions, conflicts)
        }));
    }
    let mut committed: BTreeMap<String, u64> = BTreeMap::new();
    let mut positions = HashSet::new();
    let mut attempts = 0;
    for task in tasks {
        let (id, ps, conflicts) = task.await.expect("join");
        attempts += ps.len() as u64 + conflicts;
        *committed.entry(id).or_default() += ps.len() as u64;
        for p in ps {
            assert!(positions.insert(p), "a position was handed out twice");
        }
    }
    assert_eq!(attempts, 5000);
    let until = positions.iter().max().copied().unwrap_or_default();
    let events = read_all(&store, until).await;
    let adds: Vec<_> = events
        .iter()
        .filter(|e| e.event_type == "CounterAdded")
        .collect();
    assert_eq!(
        adds.len(),
        positions.len(),
        "every committed command is stored once"
    );
    for event in &adds {
        assert!(
            positions.contains(&event.position),
            "an event nobody committed"
        );
    }
    for id in &ids {
        let mut seqs: Vec<u64> = events
            .iter()
            .filter(|e| &e.aggregate_id == id)
            .map(|e| e.sequence)
            .collect();
        seqs.sort_unstable();
        let n = 1 + committed.get(id).copied().unwrap_or(0);
        assert_eq!(
            seqs,
            (1..=n).collect::<Vec<_>>(),
            "gapless sequences for {id}"
        );
    }
}

pub async fn state_from_snapshot_and_tail_equals_the_full_fold(db: TestDb) {
    let store = open(db.url()).await.expect("open the store");
    let bus = CommandBus::<Counter>::with_options(
        store.clone(),
        BusOptions {
            cache_capacity: 100,
            snapshot_every: 10,
            ..BusOptions::default()
        },
    );
    let ctx = ctx("acme");
    let id = create_counter(&bus, &ctx).await;
    for i in 0..34 {
        bus.execute(&id, add(i * 3 - 7), &ctx).await.expect("add");
    }
    // Snapshots are written off the command path; wait for the one at 30.
    let mut snapshot_at = 0;
    for _ in 0..200 {
        snapshot_at = snapshot_sequence(store.db(), &id).await;
        if snapshot_at == 30 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(snapshot_at, 30, "the snapshot at version 30 was written");
    bus.clear_cache();
    let (from_snapshot, v1) = bus.load(&id).await.expect("load");
    let (folded, v2) = bus.fold(&id, None).await.expect("fold");
    assert_eq!(v1, 35);
    assert_eq!(v2, 35);
    assert_eq!(from_snapshot, folded);
    assert_eq!(folded.adds, 34);
    assert_eq!(folded.value, (0..34).map(|i| i * 3 - 7).sum::<i64>());
    // The cached path, too: the next command lands at the right sequence.
    let next = bus
        .execute(&id, add(1), &ctx)
        .await
        .expect("add after load");
    assert_eq!(next.version, 36);
    // Time travel: the state at version 10.
    let (at_ten, v) = bus.fold(&id, Some(10)).await.expect("fold to 10");
    assert_eq!(v, 10);
    assert_eq!(at_ten.adds, 9);
}

async fn snapshot_sequence(db: &Db, id: &str) -> i64 {
    let sql = "SELECT last_sequence FROM snapshots WHERE aggregate_id = ";
    match db {
        Db::Postgres(pool) => sqlx::query_scalar(&format!("{sql} $1"))
            .bind(id)
            .fetch_optional(pool)
            .await
            .expect("query snapshots")
            .unwrap_or(0),
        Db::Sqlite(pool) => sqlx::query_scalar(&format!("{sql} ?1"))
            .bind(id)
            .fetch_optional(pool)
            .await
            .expect("query snapshots")
            .unwrap_or(0),
    }
}

pub async fn an_event_stored_at_an_old_version_is_upcast_on_load(db: TestDb) {
    let store = open(db.url()).await.expect("open the store");
    let ctx = ctx("acme");
    let bus = CommandBus::<Counter>::new(store.clone());
    let id = create_counter(&bus, &ctx).await;
    // Plant an event as version 1.0 of CounterAdded wrote it.
    let insert = "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, \
                  event_version, payload, metadata) VALUES ";
    let payload = r#"{"Added":{"n":41}}"#;
    let metadata = r#"{"actor":"legacy","tenant":"acme"}"#;
    match store.db() {
        Db::Postgres(pool) => {
            sqlx::query(&format!(
                "{insert} ('Counter', $1, 2, 'CounterAdded', '1.0', $2::json, $3::json)"
            ))
            .bind(&id)
            .bind(payload)
            .bind(metadata)
            .execute(pool)
            .await
            .expect("plant");
        }
        Db::Sqlite(pool) => {
            sqlx::query(&format!(
                "{insert} ('Counter', ?1, 2, 'CounterAdded', '1.0', ?2, ?3)"
            ))
            .bind(&id)
            .bind(payload)
            .bind(metadata)
            .execute(pool)
            .await
            .expect("plant");
        }
    }
    let upcaster = Upcast::new(
        "CounterAdded",
        "1.0",
        "2.0",
        Box::new(|mut payload| {
            let n = payload["Added"]["n"].take();
            serde_json::json!({"Added": {"amount": n}})
        }),
    );
    let store = store.add_upcaster(Arc::new(upcaster));
    let bus = CommandBus::<Counter>::new(store.clone());
    let (state, version) = bus.load(&id).await.expect("load through the upcaster");
    assert_eq!((state.value, state.adds, version), (41, 1, 2));
    let committed = bus
        .execute(&id, add(1), &ctx)
        .await
        .expect("add after upcast");
    assert_eq!(committed.version, 3);
    let events = read_all(&store, committed.position.expect("a position")).await;
    assert_eq!(events[1].event_version, "2.0");
    assert_eq!(
        events[1].payload,
        serde_json::json!({"Added": {"amount": 41}})
    );
    // The stored row is never rewritten.
    let stored: String = match store.db() {
        Db::Postgres(pool) => sqlx::query_scalar(
            "SELECT event_version FROM events WHERE aggregate_id = $1 AND sequence = 2",
        )
        .bind(&id)
        .fetch_one(pool)
        .await
        .expect("select"),
        Db::Sqlite(pool) => sqlx::query_scalar(
            "SELECT event_version FROM events WHERE aggregate_id = ?1 AND sequence = 2",
        )
        .bind(&id)
        .fetch_one(pool)
        .await
        .expect("select"),
    };
    assert_eq!(stored, "1.0");
}

pub async fn another_tenants_aggregate_is_not_found(db: TestDb) {
    let store = open(db.url()).await.expect("open the store");
    let bus = CommandBus::<Counter>::new(store.clone());
    let (id, created) = create_counter_at(&bus, &ctx("acme")).await;
    let other = ctx("globex");
    let result = bus.execute(&id, add(1), &other).await;
    assert!(matches!(result, Err(CommandError::NotFound)), "{result:?}");
    // Recreating it under another tenant is just as invisible.
    let result = bus
        .execute(
            &id,
            CounterCommand::Create {
                tenant: other.tenant.clone(),
            },
            &other,
        )
        .await;
    assert!(matches!(result, Err(CommandError::NotFound)), "{result:?}");
    // A creation command that names another tenant than the caller's.
    let result = bus
        .execute(
            &Uuid::now_v7().to_string(),
            CounterCommand::Create {
                tenant: tenant("globex"),
            },
            &ctx("acme"),
        )
        .await;
    assert!(matches!(result, Err(CommandError::NotFound)), "{result:?}");
    assert_eq!(read_all(&store, created).await.len(), 1);
}

pub async fn creating_an_existing_aggregate_is_rejected_by_the_domain(db: TestDb) {
    let store = open(db.url()).await.expect("open the store");
    let ctx = ctx("acme");
    let bus = CommandBus::<Counter>::new(store.clone());
    let id = create_counter(&bus, &ctx).await;
    // A second replica, whose cache knows nothing of it, tries again.
    let other = CommandBus::<Counter>::new(store.clone());
    let result = other
        .execute(
            &id,
            CounterCommand::Create {
                tenant: ctx.tenant.clone(),
            },
            &ctx,
        )
        .await;
    assert!(
        matches!(
            result,
            Err(CommandError::Domain(CounterError::AlreadyExists))
        ),
        "{result:?}"
    );
    let result = other
        .execute(&Uuid::now_v7().to_string(), add(1), &ctx)
        .await;
    assert!(
        matches!(result, Err(CommandError::Domain(CounterError::NotFound))),
        "{result:?}"
    );
}

pub async fn a_stale_cache_is_corrected_by_the_optimistic_insert(db: TestDb) {
    let store = open(db.url()).await.expect("open the store");
    let ctx = ctx("acme");
    let left = CommandBus::<Counter>::new(store.clone());
    let right = CommandBus::<Counter>::new(store.clone());
    let id = create_counter(&left, &ctx).await;
    right.execute(&id, add(1), &ctx).await.expect("right adds");
    // Left's cache still says version 1; its command must land at 3 anyway,
    // even though it is not retry-safe: the stale guess is not a race.
    let committed = left
        .execute(
            &id,
            CounterCommand::Add {
                amount: 5,
                retry_safe: false,
            },
            &ctx,
        )
        .await
        .expect("left adds");
    assert_eq!(committed.version, 3);
    let (state, _) = left.fold(&id, None).await.expect("fold");
    assert_eq!(state.value, 6);
}

pub async fn a_commit_wakes_subscribers(db: TestDb) {
    let writer = open(db.url()).await.expect("open the store");
    // On PostgreSQL a second store stands for another process.
    let reader = if db.is_postgres() {
        open(db.url()).await.expect("open a second store")
    } else {
        writer.clone()
    };
    let mut notifications = reader.subscribe();
    // Give LISTEN a moment to be in place.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let bus = CommandBus::<Counter>::new(writer.clone());
    let ctx = ctx("acme");
    let id = create_counter(&bus, &ctx).await;
    let committed = bus.execute(&id, add(1), &ctx).await.expect("add");
    let target = committed.position.expect("a position");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let seen = tokio::time::timeout_at(deadline, notifications.changed())
            .await
            .expect("a notification within 10 s")
            .expect("the store is alive");
        if seen >= target {
            break;
        }
    }
}

pub async fn a_projector_batch_wakes_read_your_writes_waiters(db: TestDb) {
    let projector = open(db.url()).await.expect("open the store");
    // On PostgreSQL a second store stands for another process.
    let waiter = if db.is_postgres() {
        open(db.url()).await.expect("open a second store")
    } else {
        projector.clone()
    };
    let mut moved = waiter.projected();
    let mut own = projector.projected();
    // Give LISTEN a moment to be in place.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!moved.has_changed().expect("the store is alive"));
    projector.announce_projected();
    // The announcing store wakes its own waiters at once...
    assert!(own.has_changed().expect("the store is alive"));
    own.borrow_and_update();
    tokio::time::timeout(Duration::from_secs(10), moved.changed())
        .await
        .expect("an announcement within 10 s")
        .expect("the store is alive");
    // ...and not again when its own notification comes back.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!own.has_changed().expect("the store is alive"));
}

macro_rules! on_both_backends {
    ($($test:ident),* $(,)?) => {
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(super::TestDb::postgres().await).await;
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(super::TestDb::sqlite().await).await;
                }
            )*
        }
    };
}

on_both_backends!(
    events_and_metadata_round_trip_with_gapless_sequences,
    two_commands_racing_on_one_version_commit_exactly_once,
    a_command_that_is_not_retry_safe_surfaces_a_lost_race,
    fifty_concurrent_writers_lose_no_event,
    state_from_snapshot_and_tail_equals_the_full_fold,
    an_event_stored_at_an_old_version_is_upcast_on_load,
    another_tenants_aggregate_is_not_found,
    creating_an_existing_aggregate_is_rejected_by_the_domain,
    a_stale_cache_is_corrected_by_the_optimistic_insert,
    a_commit_wakes_subscribers,
    a_projector_batch_wakes_read_your_writes_waiters,
);
