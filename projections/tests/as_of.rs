//! As-of folding starts from the checkpoint before the point (kept by the
//! command bus with each snapshot) and reads only the events after it: at
//! every point of a history several checkpoint intervals long, by version,
//! position and time, the answer equals a fold of the stream from its
//! first event. And the checkpoints are really what it starts from.

use std::time::{Duration, Instant};

use cqrs_es::Aggregate;
use toolhub_domain::mcp_server::{McpServer, McpServerCommand, Transport};
use toolhub_domain::{McpServerId, TenantId};
use toolhub_eventstore::sql::{exec, fetch, Arg};
use toolhub_eventstore::testing::TestDb;
use toolhub_eventstore::{open, BusOptions, CommandBus, CommandContext, RecordedEvent};
use toolhub_projections::as_of::{self, AsOf, Folded};
use toolhub_projections::McpServerView;

/// The view a fold of `events` (a prefix of the stream, from the first)
/// gives: the reference the checkpointed path must agree with.
fn reference(id: &str, events: &[RecordedEvent]) -> McpServerView {
    let mut state = McpServer::default();
    for event in events {
        state.apply(serde_json::from_value(event.payload.clone()).expect("an event"));
    }
    let checked_at = events
        .iter()
        .rev()
        .find(|e| e.event_type == "McpServerHealthChecked")
        .map(|e| e.recorded_at);
    let folded = Folded {
        state,
        first: events[0].clone(),
        last: events[events.len() - 1].clone(),
    };
    as_of::mcp_server_view(id, &folded, checked_at).expect("a view")
}

async fn checkpoints(db: &toolhub_eventstore::Db, id: &str) -> Vec<i64> {
    fetch(
        db,
        "SELECT sequence FROM checkpoints WHERE aggregate_id = $1 ORDER BY sequence",
        &[Arg::from(id)],
    )
    .await
    .expect("read the checkpoints")
    .iter()
    .map(|row| row.int("sequence").expect("a sequence"))
    .collect()
}

async fn as_of_equals_a_fold_from_the_first_event(db: TestDb) {
    let store = open(db.url()).await.expect("open the store");
    let acme = TenantId::parse("acme").expect("a tenant");
    let ctx = CommandContext::new("ada", acme.clone());
    let bus = CommandBus::<McpServer>::with_options(
        store.clone(),
        BusOptions {
            snapshot_every: 20,
            ..BusOptions::default()
        },
    );
    let id = McpServerId::new().to_string();
    bus.execute(
        &id,
        McpServerCommand::Register {
            tenant: acme.clone(),
            name: "everything".into(),
            transport: Transport::StreamableHttp {
                url: "https://mcp.example.com/mcp".into(),
                headers: Default::default(),
            },
        },
        &ctx,
    )
    .await
    .expect("register");
    for n in 1..110u64 {
        let command = match n % 10 {
            3 => McpServerCommand::Disable,
            4 => McpServerCommand::Enable,
            _ => McpServerCommand::RecordHealth {
                healthy: n % 2 == 0,
                latency_ms: n,
                detail: Some(format!("check {n}")),
            },
        };
        bus.execute(&id, command, &ctx).await.expect("a change");
    }
    // Checkpoints are written off the command path.
    let deadline = Instant::now() + Duration::from_secs(10);
    while checkpoints(store.db(), &id).await.len() < 5 {
        assert!(
            Instant::now() < deadline,
            "the checkpoints were not written"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        checkpoints(store.db(), &id).await,
        [20, 40, 60, 80, 100],
        "one checkpoint per interval, kept"
    );

    let events = store
        .stream(McpServer::TYPE, &id)
        .await
        .expect("the stream");
    assert_eq!(events.len(), 110);
    let other = TenantId::parse("globex").expect("a tenant");
    for (k, event) in events.iter().enumerate() {
        let moments = [
            AsOf::Version(event.sequence),
            AsOf::Position(event.position),
            AsOf::Time(event.recorded_at),
        ];
        for moment in moments {
            // The events at or before the moment: a prefix of the stream
            // (events recorded within one clock tick share a time).
            let included = match moment {
                AsOf::Time(t) => events.iter().take_while(|e| e.recorded_at <= t).count(),
                _ => k + 1,
            };
            let want = reference(&id, &events[..included]);
            let got = as_of::mcp_server(&store, Some(&acme), &id, moment)
                .await
                .expect("as of")
                .expect("it exists then");
            assert_eq!(got, want, "as of {moment:?}");
            assert!(
                as_of::mcp_server(&store, Some(&other), &id, moment)
                    .await
                    .expect("as of")
                    .is_none(),
                "another tenant's server does not exist for the caller at {moment:?}"
            );
        }
    }
    assert!(
        as_of::mcp_server(&store, Some(&acme), &id, AsOf::Version(0))
            .await
            .expect("as of")
            .is_none()
    );

    // The fold starts from the checkpoint: one edited to hold another name
    // changes the answers after it, and only those.
    let stored: String = fetch(
        store.db(),
        "SELECT CAST(payload AS TEXT) AS payload FROM checkpoints \
          WHERE aggregate_id = $1 AND sequence = 40",
        &[Arg::from(id.as_str())],
    )
    .await
    .expect("read a checkpoint")[0]
        .text("payload")
        .expect("a payload");
    assert!(stored.contains("\"everything\""));
    exec(
        store.db(),
        "UPDATE checkpoints SET payload = $1::json WHERE aggregate_id = $2 AND sequence = 40",
        &[
            Arg::JsonText(Some(stored.replace("\"everything\"", "\"edited\""))),
            Arg::from(id.as_str()),
        ],
    )
    .await
    .expect("edit a checkpoint");
    let at = |v: u64| as_of::mcp_server(&store, Some(&acme), &id, AsOf::Version(v));
    for v in [40, 45, 59] {
        assert_eq!(
            at(v).await.expect("as of").expect("exists").name,
            "edited",
            "the answer at {v} comes from the checkpoint at 40"
        );
    }
    assert_eq!(
        at(39).await.expect("as of").expect("exists"),
        reference(&id, &events[..39]),
        "nor before it"
    );
    assert_eq!(
        at(61).await.expect("as of").expect("exists"),
        reference(&id, &events[..61]),
        "nor past the next checkpoint"
    );

    // A checkpoint of another shape of the state is passed over, and with
    // none left the fold starts from the first event: the same answers.
    exec(
        store.db(),
        "UPDATE checkpoints SET payload = $1::json WHERE aggregate_id = $2 AND sequence = 40",
        &[
            Arg::JsonText(Some(r#"{"stateVersion": 999, "state": {}}"#.into())),
            Arg::from(id.as_str()),
        ],
    )
    .await
    .expect("age a checkpoint");
    assert_eq!(
        at(45).await.expect("as of").expect("exists"),
        reference(&id, &events[..45]),
        "with the checkpoint at 40 unusable, the one at 20 is used"
    );
    exec(store.db(), "DELETE FROM checkpoints", &[])
        .await
        .expect("drop the checkpoints");
    for v in [1, 45, 99, 110] {
        assert_eq!(
            at(v).await.expect("as of").expect("exists"),
            reference(&id, &events[..v as usize])
        );
    }
}

#[tokio::test]
async fn on_postgres_as_of_equals_a_fold_from_the_first_event() {
    as_of_equals_a_fold_from_the_first_event(TestDb::postgres().await).await;
}

#[tokio::test]
async fn on_sqlite_as_of_equals_a_fold_from_the_first_event() {
    as_of_equals_a_fold_from_the_first_event(TestDb::sqlite().await).await;
}
