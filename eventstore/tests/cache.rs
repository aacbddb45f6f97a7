//! The command bus's cache is bounded in bytes, not only in entries, and
//! snapshots carry the state's schema version: one of another version is
//! ignored.

use toolhub_domain::secret::{SealedValue, Secret, SecretCommand};
use toolhub_domain::{SecretId, TenantId};
use toolhub_eventstore::testing::TestDb;
use toolhub_eventstore::{open, BusOptions, CommandBus, CommandContext};

fn create(name: &str, description: String) -> SecretCommand {
    SecretCommand::Create {
        tenant: TenantId::parse("acme").expect("a tenant"),
        name: name.into(),
        description,
        value: SealedValue::new("bm9uY2U=", "Y2lwaGVy"),
    }
}

async fn the_cache_is_bounded_in_bytes(db: TestDb) {
    let store = open(db.url()).await.expect("open the store");
    let ctx = CommandContext::new("ada", TenantId::parse("acme").expect("a tenant"));
    let budget = 10_000;
    let bus = CommandBus::<Secret>::with_options(
        store.clone(),
        BusOptions {
            cache_capacity: 1_000,
            cache_bytes: budget,
            ..BusOptions::default()
        },
    );
    for n in 0..20 {
        bus.execute(
            &SecretId::new().to_string(),
            create(&format!("S{n}"), "d".repeat(1_500)),
            &ctx,
        )
        .await
        .expect("create");
        let (entries, bytes) = bus.cached();
        assert!(
            bytes <= budget,
            "{bytes} bytes cached over a budget of {budget}"
        );
        assert!(entries >= 1, "the latest state is cached");
    }
    let (entries, bytes) = bus.cached();
    assert!(
        (4..=6).contains(&entries),
        "about {budget} / 1,600 states fit: {entries} cached, {bytes} bytes"
    );
    // A state larger than the whole budget is not cached at all.
    let small = CommandBus::<Secret>::with_options(
        store.clone(),
        BusOptions {
            cache_bytes: 1_000,
            ..BusOptions::default()
        },
    );
    small
        .execute(
            &SecretId::new().to_string(),
            create("BIG", "d".repeat(1_500)),
            &ctx,
        )
        .await
        .expect("create");
    assert_eq!(small.cached(), (0, 0));
}

#[tokio::test]
async fn on_postgres_the_cache_is_bounded_in_bytes() {
    the_cache_is_bounded_in_bytes(TestDb::postgres().await).await;
}

#[tokio::test]
async fn on_sqlite_the_cache_is_bounded_in_bytes() {
    the_cache_is_bounded_in_bytes(TestDb::sqlite().await).await;
}

async fn write_snapshot(
    store: &toolhub_eventstore::EventStore,
    id: &str,
    payload: serde_json::Value,
) {
    toolhub_eventstore::sql::exec(
        store.db(),
        "INSERT INTO snapshots (aggregate_type, aggregate_id, last_sequence, current_snapshot, \
         payload) VALUES ('secret', $1, 1, 0, $2::json) ON CONFLICT (aggregate_type, aggregate_id) \
         DO UPDATE SET payload = excluded.payload",
        &[
            id.into(),
            toolhub_eventstore::sql::Arg::JsonText(Some(payload.to_string())),
        ],
    )
    .await
    .expect("write a snapshot");
}

async fn stale_snapshots_are_ignored(db: TestDb) {
    let store = open(db.url()).await.expect("open the store");
    let ctx = CommandContext::new("ada", TenantId::parse("acme").expect("a tenant"));
    let bus = CommandBus::<Secret>::new(store.clone());
    let id = SecretId::new().to_string();
    bus.execute(&id, create("REAL", "the real one".into()), &ctx)
        .await
        .expect("create");
    let (state, _) = bus.load(&id).await.expect("load");
    // The same state under another name: a snapshot that would be believed.
    let mut forged = serde_json::to_value(&state).expect("a state is JSON");
    forged["name"] = "FORGED".into();

    let name_after = |payload: serde_json::Value| {
        let store = store.clone();
        let id = id.clone();
        async move {
            write_snapshot(&store, &id, payload).await;
            let bus = CommandBus::<Secret>::new(store);
            bus.load(&id).await.expect("load").0.name().to_string()
        }
    };
    // Of the current version: used (the name shows it was read).
    assert_eq!(
        name_after(serde_json::json!({"stateVersion": 1, "state": forged})).await,
        "FORGED"
    );
    // Of another version, or without one: ignored, folded from the events.
    assert_eq!(
        name_after(serde_json::json!({"stateVersion": 0, "state": forged})).await,
        "REAL"
    );
    assert_eq!(name_after(forged.clone()).await, "REAL");
}

#[tokio::test]
async fn on_postgres_stale_snapshots_are_ignored() {
    stale_snapshots_are_ignored(TestDb::postgres().await).await;
}

#[tokio::test]
async fn on_sqlite_stale_snapshots_are_ignored() {
    stale_snapshots_are_ignored(TestDb::sqlite().await).await;
}
