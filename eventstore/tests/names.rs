//! Secret and MCP server names are unique within a tenant: workflows
//! reference them by name. The bus claims a name in the transaction that
//! appends the creating event, so even racing creations cannot share one.
//! A workflow's MCP tool name is unique too: it is claimed, moved and
//! released as its triggers change.

use std::collections::BTreeMap;

use toolhub_domain::mcp_server::{McpServer, McpServerCommand, Transport};
use toolhub_domain::secret::Secret;
use toolhub_domain::workflow::{Trigger, Workflow, WorkflowCommand};
use toolhub_domain::{SecretId, TenantId};
use toolhub_eventstore::testing::TestDb;
use toolhub_eventstore::{
    migrate, open, CommandBus, CommandContext, CommandError, ConflictKind, Db, KeyStore, MasterKey,
    SecretCommandError, SecretVault,
};
use uuid::Uuid;
use zeroize::Zeroizing;

fn ctx(tenant: &str) -> CommandContext {
    CommandContext::new("ada", TenantId::parse(tenant).expect("a tenant"))
}

fn register(tenant: &str, name: &str) -> McpServerCommand {
    McpServerCommand::Register {
        tenant: TenantId::parse(tenant).expect("a tenant"),
        name: name.to_string(),
        transport: Transport::StreamableHttp {
            url: "http://127.0.0.1:9/mcp".into(),
            headers: BTreeMap::new(),
        },
    }
}

fn name_taken<E: std::error::Error>(
    result: Result<toolhub_eventstore::Committed, CommandError<E>>,
) {
    match result {
        Err(CommandError::Conflict(ConflictKind::NameTaken)) => {}
        other => panic!("expected NameTaken, got {other:?}"),
    }
}

async fn claims(db: &Db) -> Vec<(String, String, String)> {
    let sql = "SELECT tenant, aggregate_type, name FROM name_claims ORDER BY 1, 2, 3";
    match db {
        Db::Postgres(pool) => sqlx::query_as(sql).fetch_all(pool).await,
        Db::Sqlite(pool) => sqlx::query_as(sql).fetch_all(pool).await,
    }
    .expect("read the claims")
}

async fn an_mcp_server_name_is_unique_within_its_tenant_until_deregistered(db: TestDb) {
    let store = open(db.url()).await.expect("open the store");
    let bus = CommandBus::<McpServer>::new(store.clone());
    let (acme, globex) = (ctx("acme"), ctx("globex"));
    let first = Uuid::new_v4().to_string();
    bus.execute(&first, register("acme", "files"), &acme)
        .await
        .expect("the first registration");

    // Another server of the same tenant may not take the name...
    let second = Uuid::new_v4().to_string();
    name_taken(bus.execute(&second, register("acme", "files"), &acme).await);
    // ...and nothing of it was written.
    let (_, version) = bus.load(&second).await.expect("load");
    assert_eq!(version, 0);
    // Another tenant may.
    bus.execute(
        &Uuid::new_v4().to_string(),
        register("globex", "files"),
        &globex,
    )
    .await
    .expect("another tenant's server of the same name");

    // Once deregistered, the name is free again.
    bus.execute(&first, McpServerCommand::Deregister, &acme)
        .await
        .expect("deregister");
    bus.execute(&second, register("acme", "files"), &acme)
        .await
        .expect("the name is free after deregistration");
    assert_eq!(
        claims(store.db()).await,
        vec![
            ("acme".into(), "mcp_server".into(), "files".into()),
            ("globex".into(), "mcp_server".into(), "files".into()),
        ]
    );
}

async fn of_racing_registrations_with_one_name_exactly_one_commits(db: TestDb) {
    let store = open(db.url()).await.expect("open the store");
    let bus = std::sync::Arc::new(CommandBus::<McpServer>::new(store.clone()));
    let mut racers = Vec::new();
    for _ in 0..8 {
        let bus = bus.clone();
        racers.push(tokio::spawn(async move {
            bus.execute(
                &Uuid::new_v4().to_string(),
                register("acme", "db"),
                &ctx("acme"),
            )
            .await
        }));
    }
    let mut won = 0;
    for racer in racers {
        match racer.await.expect("the racer runs") {
            Ok(_) => won += 1,
            Err(CommandError::Conflict(ConflictKind::NameTaken)) => {}
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(won, 1);
    let registered: i64 = match store.db() {
        Db::Postgres(pool) => sqlx::query_scalar(
            "SELECT count(*) FROM events WHERE event_type = 'McpServerRegistered'",
        )
        .fetch_one(pool)
        .await
        .expect("count"),
        Db::Sqlite(pool) => sqlx::query_scalar(
            "SELECT count(*) FROM events WHERE event_type = 'McpServerRegistered'",
        )
        .fetch_one(pool)
        .await
        .expect("count"),
    };
    assert_eq!(registered, 1);
}

async fn a_secret_name_is_unique_and_a_refused_secret_leaves_no_key(db: TestDb) {
    let store = open(db.url()).await.expect("open the store");
    let keys = KeyStore::new(store.db().clone(), MasterKey::generate());
    let vault = SecretVault::new(CommandBus::<Secret>::new(store.clone()), keys.clone());
    let acme = ctx("acme");
    let create = |id: SecretId| {
        vault.create(
            &acme,
            id,
            "API_TOKEN".into(),
            String::new(),
            Zeroizing::new("s3cr3t-value".into()),
        )
    };
    let first = SecretId::new();
    create(first).await.expect("the first secret");
    let second = SecretId::new();
    match create(second).await {
        Err(SecretCommandError::Command(CommandError::Conflict(ConflictKind::NameTaken))) => {}
        other => panic!("expected NameTaken, got {other:?}"),
    }
    let orphan_keys: i64 = match store.db() {
        Db::Postgres(pool) => {
            sqlx::query_scalar("SELECT count(*) FROM secret_keys WHERE secret_id = $1")
                .bind(second.to_string())
                .fetch_one(pool)
                .await
        }
        Db::Sqlite(pool) => {
            sqlx::query_scalar("SELECT count(*) FROM secret_keys WHERE secret_id = ?1")
                .bind(second.to_string())
                .fetch_one(pool)
                .await
        }
    }
    .expect("count keys");
    assert_eq!(orphan_keys, 0, "a refused secret left its key behind");

    vault.delete(&acme, first, None).await.expect("delete");
    create(second)
        .await
        .expect("the name is free after deletion");
}

async fn the_migration_claims_the_names_already_in_the_log(db: TestDb) {
    let store = open(db.url()).await.expect("open the store");
    let bus = CommandBus::<McpServer>::new(store.clone());
    let acme = ctx("acme");
    let gone = Uuid::new_v4().to_string();
    bus.execute(&gone, register("acme", "old"), &acme)
        .await
        .expect("register");
    bus.execute(&gone, McpServerCommand::Deregister, &acme)
        .await
        .expect("deregister");
    bus.execute(&Uuid::new_v4().to_string(), register("acme", "kept"), &acme)
        .await
        .expect("register");
    // Undo the migration, as if the log had been written before it.
    let undo = [
        "DROP TABLE name_claims",
        "DELETE FROM _sqlx_migrations WHERE version = 5",
    ];
    for sql in undo {
        match store.db() {
            Db::Postgres(pool) => sqlx::query(sql).execute(pool).await.map(|_| ()),
            Db::Sqlite(pool) => sqlx::query(sql).execute(pool).await.map(|_| ()),
        }
        .expect("undo the migration");
    }
    migrate(store.db()).await.expect("migrate again");
    assert_eq!(
        claims(store.db()).await,
        vec![("acme".into(), "mcp_server".into(), "kept".into())]
    );
    name_taken(
        bus.execute(&Uuid::new_v4().to_string(), register("acme", "kept"), &acme)
            .await,
    );
}

fn create_workflow() -> WorkflowCommand {
    WorkflowCommand::Create {
        tenant: TenantId::parse("acme").expect("a tenant"),
        name: "w".into(),
        description: String::new(),
        definition: serde_json::json!({
            "nodes": [{"id": "wait", "type": "delay", "params": {"milliseconds": 1}}],
            "edges": []
        }),
    }
}

fn expose(names: &[&str]) -> WorkflowCommand {
    WorkflowCommand::SetTriggers {
        triggers: names
            .iter()
            .map(|name| Trigger::McpTool {
                name: (*name).to_string(),
                description: String::new(),
                input_schema: serde_json::json!({"type": "object"}),
            })
            .collect(),
    }
}

async fn a_tool_name_moves_with_its_trigger_and_belongs_to_one_workflow(db: TestDb) {
    let store = open(db.url()).await.expect("open the store");
    let bus = std::sync::Arc::new(CommandBus::<Workflow>::new(store.clone()));
    let acme = ctx("acme");
    let (first, second) = (Uuid::new_v4().to_string(), Uuid::new_v4().to_string());
    for id in [&first, &second] {
        bus.execute(id, create_workflow(), &acme)
            .await
            .expect("create");
    }
    bus.execute(&first, expose(&["greet"]), &acme)
        .await
        .expect("claim");
    // Setting the same name again keeps it; another workflow may not take it.
    bus.execute(&first, expose(&["greet"]), &acme)
        .await
        .expect("set again");
    name_taken(bus.execute(&second, expose(&["greet"]), &acme).await);
    // Renaming moves the claim, freeing the old name.
    bus.execute(&first, expose(&["hello"]), &acme)
        .await
        .expect("rename");
    bus.execute(&second, expose(&["greet"]), &acme)
        .await
        .expect("the old name is free");
    let tools = |names: &[&str]| -> Vec<(String, String, String)> {
        names
            .iter()
            .map(|n| ("acme".into(), "workflow".into(), (*n).to_string()))
            .collect()
    };
    assert_eq!(claims(store.db()).await, tools(&["greet", "hello"]));
    // Triggers without a tool release it.
    bus.execute(&first, expose(&[]), &acme)
        .await
        .expect("release");
    assert_eq!(claims(store.db()).await, tools(&["greet"]));
    let names = toolhub_eventstore::work::names_in(store.db(), "acme", "workflow", None, 10)
        .await
        .expect("list");
    assert_eq!(names, vec![("greet".to_string(), second.clone())]);

    // Of workflows racing for one name, exactly one gets it.
    let mut racers = Vec::new();
    for _ in 0..6 {
        let id = Uuid::new_v4().to_string();
        bus.execute(&id, create_workflow(), &acme)
            .await
            .expect("create");
        let bus = bus.clone();
        racers.push(tokio::spawn(async move {
            bus.execute(&id, expose(&["race"]), &ctx("acme")).await
        }));
    }
    let mut won = 0;
    for racer in racers {
        match racer.await.expect("the racer runs") {
            Ok(_) => won += 1,
            Err(CommandError::Conflict(ConflictKind::NameTaken)) => {}
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(won, 1);
    assert_eq!(claims(store.db()).await, tools(&["greet", "race"]));
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
    an_mcp_server_name_is_unique_within_its_tenant_until_deregistered,
    of_racing_registrations_with_one_name_exactly_one_commits,
    a_secret_name_is_unique_and_a_refused_secret_leaves_no_key,
    the_migration_claims_the_names_already_in_the_log,
    a_tool_name_moves_with_its_trigger_and_belongs_to_one_workflow,
);
