//! The commit-safe reader on PostgreSQL: an event whose transaction is still
//! open holds back every event that committed after it.

use sqlx::Connection;
use toolhub_eventstore::testing::counter::{tenant, Counter, CounterCommand};
use toolhub_eventstore::testing::TestDb;
use toolhub_eventstore::{open, CommandBus, CommandContext, Position};
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reader_waits_for_a_transaction_held_open_and_then_returns_everything_in_order() {
    let db = TestDb::postgres().await;
    let store = open(db.url()).await.expect("open the store");
    let bus = CommandBus::<Counter>::new(store.clone());
    let ctx = CommandContext::new("user-1", tenant("acme"));

    let early = Uuid::now_v7().to_string();
    bus.execute(
        &early,
        CounterCommand::Create {
            tenant: ctx.tenant.clone(),
        },
        &ctx,
    )
    .await
    .expect("an early event");
    // Readable once every older transaction in the cluster has ended (other
    // tests' included).
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    let before = loop {
        let before = store.read_after(Position::ZERO, 100).await.expect("read");
        if !before.is_empty() || tokio::time::Instant::now() > deadline {
            break before;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(before.len(), 1);
    let checkpoint = before[0].position;

    // A writer appends and holds its transaction open.
    let mut held = sqlx::PgConnection::connect(db.url())
        .await
        .expect("connect");
    let mut tx = held.begin().await.expect("begin");
    let held_id = Uuid::now_v7().to_string();
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, \
         payload, metadata) VALUES ('Counter', $1, 1, 'CounterCreated', '1.0', \
         '{\"Created\":{\"tenant\":\"acme\"}}', '{\"actor\":\"slow\",\"tenant\":\"acme\"}')",
    )
    .bind(&held_id)
    .execute(&mut *tx)
    .await
    .expect("insert in the held transaction");

    // Later writers commit while it is held.
    let late = Uuid::now_v7().to_string();
    bus.execute(
        &late,
        CounterCommand::Create {
            tenant: ctx.tenant.clone(),
        },
        &ctx,
    )
    .await
    .expect("a late event");
    for i in 0..3 {
        bus.execute(
            &late,
            CounterCommand::Add {
                amount: i,
                retry_safe: true,
            },
            &ctx,
        )
        .await
        .expect("a late event");
    }

    // The later events are committed but must not be handed out past the
    // held one: a reader that took them would checkpoint beyond it.
    for _ in 0..3 {
        let during = store.read_after(checkpoint, 100).await.expect("read");
        assert!(
            during.is_empty(),
            "read past an open transaction: {during:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(store.head().await.expect("head"), checkpoint);

    tx.commit().await.expect("commit the held transaction");

    let after = store.read_after(checkpoint, 100).await.expect("read");
    let order: Vec<(&str, u64)> = after
        .iter()
        .map(|e| (e.aggregate_id.as_str(), e.sequence))
        .collect();
    assert_eq!(
        order,
        vec![
            (held_id.as_str(), 1),
            (late.as_str(), 1),
            (late.as_str(), 2),
            (late.as_str(), 3),
            (late.as_str(), 4),
        ],
        "the held event first, then the later ones in commit order"
    );
    for pair in after.windows(2) {
        assert!(pair[0].position < pair[1].position);
    }
    // Reading in small batches from the same checkpoint yields the same.
    let mut paged = Vec::new();
    let mut at = checkpoint;
    loop {
        let batch = store.read_after(at, 2).await.expect("read");
        let Some(last) = batch.last() else { break };
        at = last.position;
        paged.extend(batch);
    }
    assert_eq!(paged, after);
}
