//! The engine's work queue: a heartbeat extends the leases a worker holds
//! and names those it lost, and only those. A worker registers a run's
//! driver before the run's start (and its work row) commits, so a heartbeat
//! that runs in between finds no row for it: that run is not lost, and its
//! driver must keep running. (Taking it for lost left the row leased to the
//! worker with no driver until the lease ran out: a run started just as a
//! heartbeat went out sat still for 30 s.)

use chrono::{Duration, Utc};
use toolhub_eventstore::testing::TestDb;
use toolhub_eventstore::{migrate, open, Db, WorkQueue};

async fn lease_of(db: &Db, id: &str) -> Option<chrono::DateTime<Utc>> {
    let sql = "SELECT lease_until FROM engine_work WHERE execution_id = $1";
    match db {
        Db::Postgres(pool) => sqlx::query_scalar(sql).bind(id).fetch_one(pool).await,
        Db::Sqlite(pool) => sqlx::query_scalar(sql).bind(id).fetch_one(pool).await,
    }
    .expect("read a lease")
}

async fn a_heartbeat_names_only_the_runs_another_worker_holds(db: TestDb) {
    let store = open(db.url()).await.expect("open");
    migrate(store.db()).await.expect("migrate");
    let work = WorkQueue::new(store.db().clone());
    let now = Utc::now();
    let soon = now + Duration::seconds(5);

    // Held here; taken over by another worker; given back (no owner).
    for (id, owner) in [
        ("held", Some("me")),
        ("taken", Some("other")),
        ("given-back", None),
    ] {
        work.enqueue(id, "acme", owner, now, soon)
            .await
            .expect("enqueue");
    }

    let later = now + Duration::seconds(30);
    let ids: Vec<String> = ["held", "taken", "given-back", "not-committed-yet"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut lost = work.heartbeat("me", &ids, later).await.expect("heartbeat");
    lost.sort();
    assert_eq!(lost, ["given-back", "taken"]);

    // The lease held here was extended; the others were not touched.
    let held = lease_of(store.db(), "held").await.expect("a lease");
    assert!(
        (held - later).num_milliseconds().abs() < 1,
        "{held} vs {later}"
    );
    let taken = lease_of(store.db(), "taken").await.expect("a lease");
    assert!(
        (taken - soon).num_milliseconds().abs() < 1,
        "{taken} vs {soon}"
    );

    // The start that had not committed commits, leased here: the next
    // heartbeat extends it like any other.
    work.enqueue("not-committed-yet", "acme", Some("me"), now, soon)
        .await
        .expect("enqueue");
    let lost = work
        .heartbeat("me", &ids[..1], later)
        .await
        .expect("heartbeat");
    assert!(lost.is_empty(), "{lost:?}");
    let lost = work
        .heartbeat("me", &ids[3..], later)
        .await
        .expect("heartbeat");
    assert!(lost.is_empty(), "{lost:?}");
    let extended = lease_of(store.db(), "not-committed-yet")
        .await
        .expect("a lease");
    assert!((extended - later).num_milliseconds().abs() < 1);

    // A run that ended (its row removed) is not lost either.
    work.finish("held").await.expect("finish");
    let lost = work
        .heartbeat("me", &ids[..1], later)
        .await
        .expect("heartbeat");
    assert!(lost.is_empty(), "{lost:?}");
}

mod postgres {
    #[tokio::test]
    async fn a_heartbeat_names_only_the_runs_another_worker_holds() {
        super::a_heartbeat_names_only_the_runs_another_worker_holds(
            super::TestDb::postgres().await,
        )
        .await;
    }
}

mod sqlite {
    #[tokio::test]
    async fn a_heartbeat_names_only_the_runs_another_worker_holds() {
        super::a_heartbeat_names_only_the_runs_another_worker_holds(super::TestDb::sqlite().await)
            .await;
    }
}
