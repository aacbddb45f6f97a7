//! `toolhub-replay verify`: the log's hash chain catches an edited, a
//! removed and a moved event, and an edit of the stored metadata that its
//! parser would not see, names the position, and holds a head recorded
//! earlier; on both backends.

use std::process::Output;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use toolhub_domain::workflow::{Workflow, WorkflowCommand};
use toolhub_domain::{TenantId, WorkflowId};
use toolhub_eventstore::testing::TestDb;
use toolhub_eventstore::{CommandBus, CommandContext, EventStore, Position};
use toolhub_projections::chain::ChainProjection;
use toolhub_projections::{ProjectorRunner, RunnerOptions};

async fn replay(url: &str, args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_toolhub-replay"))
        .args(args)
        .env("DATABASE_URL", url)
        .env_remove("TOOLHUB_LOG")
        .output()
        .await
        .expect("run toolhub-replay")
}

fn out(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn err(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Appends `n` workflow events and returns their positions.
async fn append(store: &EventStore, n: usize) -> Vec<Position> {
    let ctx = CommandContext::new("alice", TenantId::parse("acme").expect("a tenant"));
    let bus: CommandBus<Workflow> = CommandBus::new(store.clone());
    let mut positions = Vec::new();
    let id = WorkflowId::new().to_string();
    let create = WorkflowCommand::Create {
        tenant: ctx.tenant.clone(),
        name: "chained".into(),
        description: String::new(),
        definition: json!({"nodes": [{"id": "a", "type": "transform",
            "params": {"template": {}}}], "edges": []}),
    };
    let committed = bus.execute(&id, create, &ctx).await.expect("create");
    positions.push(committed.position.expect("a position"));
    for i in 1..n {
        let rename = WorkflowCommand::Rename {
            name: format!("name {i}"),
        };
        let committed = bus.execute(&id, rename, &ctx).await.expect("rename");
        positions.push(committed.position.expect("a position"));
    }
    positions
}

/// Runs the chain pass until it has chained every event.
async fn chain(store: &EventStore) {
    let runner = ProjectorRunner::start_with(
        store.clone(),
        vec![Arc::new(ChainProjection)],
        RunnerOptions::default(),
    );
    let head = store.head().await.expect("the head");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let rows = toolhub_eventstore::sql::fetch(
            store.db(),
            "SELECT count(*) AS n FROM event_chain WHERE global_position = $1",
            &[toolhub_eventstore::sql::Arg::from(head.global)],
        )
        .await
        .expect("count");
        if rows[0].int("n").expect("a count") == 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the chain never reached the head"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    runner.stop().await;
}

async fn exec(store: &EventStore, sql: &str, args: &[toolhub_eventstore::sql::Arg]) {
    toolhub_eventstore::sql::exec(store.db(), sql, args)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

async fn payload_of(store: &EventStore, global: i64) -> String {
    let rows = toolhub_eventstore::sql::fetch(
        store.db(),
        "SELECT CAST(payload AS TEXT) AS p FROM events WHERE global_position = $1",
        &[toolhub_eventstore::sql::Arg::from(global)],
    )
    .await
    .expect("read the payload");
    rows[0].text("p").expect("text")
}

async fn set_payload(store: &EventStore, global: i64, payload: &str) {
    exec(
        store,
        "UPDATE events SET payload = $1::json WHERE global_position = $2",
        &[
            toolhub_eventstore::sql::Arg::JsonText(Some(payload.to_string())),
            toolhub_eventstore::sql::Arg::from(global),
        ],
    )
    .await;
}

async fn metadata_of(store: &EventStore, global: i64) -> String {
    let rows = toolhub_eventstore::sql::fetch(
        store.db(),
        "SELECT CAST(metadata AS TEXT) AS m FROM events WHERE global_position = $1",
        &[toolhub_eventstore::sql::Arg::from(global)],
    )
    .await
    .expect("read the metadata");
    rows[0].text("m").expect("text")
}

async fn set_metadata(store: &EventStore, global: i64, metadata: &str) {
    exec(
        store,
        "UPDATE events SET metadata = $1::json WHERE global_position = $2",
        &[
            toolhub_eventstore::sql::Arg::JsonText(Some(metadata.to_string())),
            toolhub_eventstore::sql::Arg::from(global),
        ],
    )
    .await;
}

async fn tampering_is_caught(db: TestDb) {
    let url = db.url().to_string();
    let store = toolhub_eventstore::open(&url)
        .await
        .expect("open the store");
    let positions = append(&store, 12).await;
    chain(&store).await;

    let clean = replay(&url, &["verify"]).await;
    assert!(clean.status.success(), "{}", err(&clean));
    assert!(
        out(&clean).contains("verified: 12 events"),
        "{}",
        out(&clean)
    );
    let head = out(&clean)
        .lines()
        .find_map(|l| l.strip_prefix("head: "))
        .expect("the head is printed")
        .to_string();
    assert!(head.starts_with(&format!("{}=", positions[11])), "{head}");

    // More events later: the recorded head still holds.
    append(&store, 3).await;
    let behind = replay(&url, &["verify"]).await;
    assert!(behind.status.success(), "{}", err(&behind));
    assert!(
        out(&behind).contains("not chained yet: 3 events"),
        "{}",
        out(&behind)
    );
    chain(&store).await;
    let later = replay(&url, &["verify", "--expect", &head]).await;
    assert!(later.status.success(), "{}", err(&later));
    assert!(
        out(&later).contains("verified: 15 events"),
        "{}",
        out(&later)
    );

    // An edited payload is caught at its position, and only while edited.
    let edited = positions[4];
    let original = payload_of(&store, edited.global).await;
    set_payload(
        &store,
        edited.global,
        &original.replace("name 4", "name four"),
    )
    .await;
    let caught = replay(&url, &["verify"]).await;
    assert_eq!(caught.status.code(), Some(1), "{}", out(&caught));
    assert!(
        err(&caught).contains(&format!("position {} (", edited.global))
            && err(&caught).contains("altered"),
        "{}",
        err(&caught)
    );
    // A head recorded before the edit no longer holds either.
    let stale = replay(&url, &["verify", "--expect", &head]).await;
    assert_eq!(stale.status.code(), Some(1));
    set_payload(&store, edited.global, &original).await;
    assert!(replay(&url, &["verify"]).await.status.success());

    // A field added to the stored metadata, which the parser drops: the
    // chain seals the stored text, so it is caught all the same.
    let edited = positions[2];
    let original = metadata_of(&store, edited.global).await;
    assert!(original.starts_with('{'), "{original}");
    set_metadata(
        &store,
        edited.global,
        &original.replacen('{', r#"{"approved_by": "mallory", "#, 1),
    )
    .await;
    assert!(
        metadata_of(&store, edited.global).await.contains("mallory"),
        "the edit is stored"
    );
    let caught = replay(&url, &["verify"]).await;
    assert_eq!(caught.status.code(), Some(1), "{}", out(&caught));
    assert!(
        err(&caught).contains(&format!("position {} (", edited.global))
            && err(&caught).contains("altered")
            && err(&caught).contains("(2 events before it verified)"),
        "{}",
        err(&caught)
    );
    set_metadata(&store, edited.global, &original).await;
    assert!(replay(&url, &["verify"]).await.status.success());

    // Two events swapped: caught at the first of them.
    let (a, b) = (positions[6].global, positions[7].global);
    exec(
        &store,
        "UPDATE events SET global_position = -1 WHERE global_position = $1",
        &[a.into()],
    )
    .await;
    exec(
        &store,
        "UPDATE events SET global_position = $1 WHERE global_position = $2",
        &[a.into(), b.into()],
    )
    .await;
    exec(
        &store,
        "UPDATE events SET global_position = $1 WHERE global_position = -1",
        &[b.into()],
    )
    .await;
    let moved = replay(&url, &["verify"]).await;
    assert_eq!(moved.status.code(), Some(1), "{}", out(&moved));
    assert!(
        err(&moved).contains(&format!("position {a} ("))
            || err(&moved).contains(&format!("position {b} (")),
        "{}",
        err(&moved)
    );
    exec(
        &store,
        "UPDATE events SET global_position = -1 WHERE global_position = $1",
        &[a.into()],
    )
    .await;
    exec(
        &store,
        "UPDATE events SET global_position = $1 WHERE global_position = $2",
        &[a.into(), b.into()],
    )
    .await;
    exec(
        &store,
        "UPDATE events SET global_position = $1 WHERE global_position = -1",
        &[b.into()],
    )
    .await;
    assert!(replay(&url, &["verify"]).await.status.success());

    // A removed event, in the middle and at the end.
    exec(
        &store,
        "DELETE FROM events WHERE global_position = $1",
        &[positions[9].global.into()],
    )
    .await;
    let removed = replay(&url, &["verify"]).await;
    assert_eq!(removed.status.code(), Some(1));
    assert!(
        err(&removed).contains(&format!("position {} (", positions[9].global))
            && err(&removed).contains("removed"),
        "{}",
        err(&removed)
    );

    // Bad arguments.
    for args in [
        vec!["verify", "--expect", "nonsense"],
        vec!["verify", "--expect", "1.2=abc"],
        vec!["verify", "--batch-size", "0"],
    ] {
        assert_eq!(replay(&url, &args).await.status.code(), Some(2), "{args:?}");
    }
}

#[tokio::test]
async fn tampering_is_caught_on_postgres() {
    tampering_is_caught(TestDb::postgres().await).await;
}

#[tokio::test]
async fn tampering_is_caught_on_sqlite() {
    tampering_is_caught(TestDb::sqlite().await).await;
}
