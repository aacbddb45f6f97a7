//! A companion write commits with a command's events or not at all: the
//! engine's work row and `ExecutionStarted` are one commit, so a started
//! execution always has a row to be driven by and a row always has its
//! execution.

use chrono::Utc;
use toolhub_eventstore::testing::counter::{tenant, Counter, CounterCommand};
use toolhub_eventstore::testing::TestDb;
use toolhub_eventstore::{
    migrate, open, CommandBus, CommandContext, CommandError, Companion, Db, WorkQueue,
};

fn ctx() -> CommandContext {
    CommandContext::new("ada", tenant("acme"))
}

async fn work_rows(db: &Db) -> Vec<String> {
    let sql = "SELECT execution_id FROM engine_work ORDER BY 1";
    match db {
        Db::Postgres(pool) => sqlx::query_scalar(sql).fetch_all(pool).await,
        Db::Sqlite(pool) => sqlx::query_scalar(sql).fetch_all(pool).await,
    }
    .expect("read the work rows")
}

fn work(id: &str) -> Companion {
    WorkQueue::enqueue_with_start(id, "acme", Some("worker-1"), Utc::now(), Utc::now())
}

async fn a_companion_commits_with_the_events_or_not_at_all(db: TestDb) {
    let store = open(db.url()).await.expect("open");
    migrate(store.db()).await.expect("migrate");
    let bus: CommandBus<Counter> = CommandBus::new(store.clone());

    // One event: on PostgreSQL one statement, on SQLite one transaction.
    let create = CounterCommand::Create {
        tenant: tenant("acme"),
    };
    bus.execute_with("c1", create.clone(), &ctx(), &work("c1"))
        .await
        .expect("created with its row");
    assert_eq!(work_rows(store.db()).await, ["c1"]);
    assert_eq!(bus.load("c1").await.expect("load").1, 1);

    // The companion fails (its row exists already): no event either.
    let refused = bus
        .execute_with("c2", create.clone(), &ctx(), &work("c1"))
        .await;
    assert!(refused.is_err(), "{refused:?}");
    assert_eq!(bus.load("c2").await.expect("load").1, 0, "no event of c2");

    // Several events: on PostgreSQL still one statement (the companion a
    // `WITH` in front of the events' `INSERT … UNNEST`), on SQLite one
    // transaction; all or nothing as well.
    let many = CounterCommand::AddMany {
        amounts: vec![1, 2, 3],
    };
    assert!(bus
        .execute_with("c1", many.clone(), &ctx(), &work("c1"))
        .await
        .is_err());
    assert_eq!(
        bus.load("c1").await.expect("load").1,
        1,
        "no event of the three"
    );
    bus.execute_with("c1", many, &ctx(), &work("c3"))
        .await
        .expect("appended with its row");
    assert_eq!(bus.load("c1").await.expect("load").1, 4);
    assert_eq!(work_rows(store.db()).await, ["c1", "c3"]);

    // The events fail (another bus created the aggregate first): no row.
    let other: CommandBus<Counter> = CommandBus::new(store.clone());
    let again = other.execute_with("c1", create, &ctx(), &work("c4")).await;
    assert!(
        matches!(
            again,
            Err(CommandError::Domain(_) | CommandError::Conflict(_))
        ),
        "{again:?}"
    );
    assert_eq!(work_rows(store.db()).await, ["c1", "c3"]);

    // A command that appends nothing writes no companion.
    bus.execute_with("c1", CounterCommand::Touch, &ctx(), &work("c5"))
        .await
        .expect("nothing to append");
    assert_eq!(work_rows(store.db()).await, ["c1", "c3"]);
}

mod postgres {
    #[tokio::test]
    async fn a_companion_commits_with_the_events_or_not_at_all() {
        super::a_companion_commits_with_the_events_or_not_at_all(super::TestDb::postgres().await)
            .await;
    }
}

mod sqlite {
    #[tokio::test]
    async fn a_companion_commits_with_the_events_or_not_at_all() {
        super::a_companion_commits_with_the_events_or_not_at_all(super::TestDb::sqlite().await)
            .await;
    }
}
