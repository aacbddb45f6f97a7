//! `toolhub-replay verify`'s shadow rebuild: the read models are rebuilt
//! from the log into scratch tables and compared with the live ones row by
//! row. A clean database verifies; a row edited, deleted or added with plain
//! SQL is named by table, key and column, with exit status 3; the log, the
//! live tables and the checkpoints are left as they were; a service that
//! keeps writing while `verify` runs is no mismatch. On both backends.

use std::process::Output;
use std::time::Duration;

use serde_json::json;
use toolhub_domain::definition::NodeId;
use toolhub_domain::execution::{Execution, ExecutionCommand};
use toolhub_domain::mcp_server::{McpServer, McpServerCommand, ToolInfo, Transport};
use toolhub_domain::secret::{SealedValue, Secret, SecretCommand};
use toolhub_domain::workflow::{Workflow, WorkflowCommand};
use toolhub_domain::{ExecutionId, McpServerId, SecretId, TenantId, WorkflowId};
use toolhub_eventstore::sql::{exec, fetch, Arg};
use toolhub_eventstore::testing::TestDb;
use toolhub_eventstore::{CommandBus, CommandContext, EventStore};
use toolhub_projections::{ProjectorRunner, ReadModels, RunnerHandle, RunnerOptions};

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

fn ctx() -> CommandContext {
    CommandContext::new("alice", TenantId::parse("acme").expect("a tenant"))
}

fn definition(name: &str) -> serde_json::Value {
    json!({
        "nodes": [
            {"id": "fetch", "type": "http", "name": name,
             "params": {"method": "GET", "url": "https://api.example.com/items", "headers": {}, "body": null}},
            {"id": "shape", "type": "transform",
             "params": {"template": {"items": "{{nodes.fetch.body}}"}}}
        ],
        "edges": [{"from": "fetch", "to": "shape"}]
    })
}

/// Fills every read model: two workflows (created, updated, renamed), a
/// completed run with a step, a secret, an MCP server with two tools.
/// Returns the first workflow's id.
async fn populate(store: &EventStore) -> String {
    let ctx = ctx();
    let workflows: CommandBus<Workflow> = CommandBus::new(store.clone());
    let mut ids = Vec::new();
    for i in 0..2 {
        let id = WorkflowId::new().to_string();
        let create = WorkflowCommand::Create {
            tenant: ctx.tenant.clone(),
            name: format!("workflow {i}"),
            description: "Fetches items.".into(),
            definition: definition("Fetch"),
        };
        workflows.execute(&id, create, &ctx).await.expect("create");
        let update = WorkflowCommand::UpdateDefinition {
            definition: definition("Fetch the items"),
            comment: Some("clearer".into()),
        };
        workflows.execute(&id, update, &ctx).await.expect("update");
        let rename = WorkflowCommand::Rename {
            name: format!("renamed {i}"),
        };
        workflows.execute(&id, rename, &ctx).await.expect("rename");
        ids.push(id);
    }
    let executions: CommandBus<Execution> = CommandBus::new(store.clone());
    let fetch = NodeId::parse("fetch").expect("a node id");
    let run = ExecutionId::new().to_string();
    for command in [
        ExecutionCommand::Start {
            tenant: ctx.tenant.clone(),
            workflow_id: ids[0].parse().expect("a uuid"),
            workflow_version: 2,
            input: json!({"page": 1}),
            trigger: "manual".into(),
            source: None,
            breakpoints: vec![],
            deadline: None,
        },
        ExecutionCommand::ScheduleStep {
            node_id: fetch.clone(),
            attempt: 1,
            input: json!({"url": "https://api.example.com/items"}),
        },
        ExecutionCommand::StartStep {
            node_id: fetch.clone(),
            attempt: 1,
            wake_at: None,
        },
        ExecutionCommand::SucceedStep {
            node_id: fetch.clone(),
            attempt: 1,
            output: json!({"status": 200}),
        },
        ExecutionCommand::Complete {
            output: json!({"items": []}),
        },
    ] {
        executions
            .execute(&run, command, &ctx)
            .await
            .expect("execution command");
    }
    let secrets: CommandBus<Secret> = CommandBus::new(store.clone());
    let create = SecretCommand::Create {
        tenant: ctx.tenant.clone(),
        name: "API_TOKEN".into(),
        description: "The items API token.".into(),
        value: SealedValue::new("bm9uY2U=", "Y2lwaGVy"),
    };
    secrets
        .execute(&SecretId::new().to_string(), create, &ctx)
        .await
        .expect("create the secret");
    let servers: CommandBus<McpServer> = CommandBus::new(store.clone());
    let server = McpServerId::new().to_string();
    let tool = |name: &str| ToolInfo {
        name: name.into(),
        description: Some(format!("The {name} tool.")),
        input_schema: json!({"type": "object"}),
        read_only: false,
        idempotent: false,
    };
    for command in [
        McpServerCommand::Register {
            tenant: ctx.tenant.clone(),
            name: "assistant".into(),
            transport: Transport::StreamableHttp {
                url: "https://mcp.example.com/mcp".into(),
                headers: Default::default(),
            },
        },
        McpServerCommand::DiscoverTools {
            tools: vec![tool("summarize"), tool("translate")],
        },
    ] {
        servers
            .execute(&server, command, &ctx)
            .await
            .expect("server command");
    }
    ids.swap_remove(0)
}

/// Starts every projector and waits until the read models have applied the
/// whole log.
async fn project(store: &EventStore) -> RunnerHandle {
    let runner = ProjectorRunner::start_with(
        store.clone(),
        toolhub_projections::projection::all(),
        RunnerOptions {
            poll_interval: Duration::from_millis(20),
            ..RunnerOptions::default()
        },
    );
    let head = store.head().await.expect("the head");
    ReadModels::new(store)
        .wait_for(head, Duration::from_secs(30))
        .await
        .expect("the read models catch up");
    runner
}

async fn sql(store: &EventStore, statement: &str, args: &[Arg]) {
    exec(store.db(), statement, args)
        .await
        .unwrap_or_else(|e| panic!("{statement}: {e}"));
}

/// What `verify` must leave alone: the log and the checkpoints.
async fn untouched(store: &EventStore) -> String {
    let mut seen = String::new();
    for query in [
        "SELECT count(*) AS n FROM events",
        "SELECT count(*) AS n FROM projector_checkpoints",
        "SELECT CAST(coalesce(sum(global_position), 0) AS BIGINT) AS n FROM projector_checkpoints",
    ] {
        let rows = fetch(store.db(), query, &[]).await.expect(query);
        seen.push_str(&format!("{} ", rows[0].int("n").expect("a number")));
    }
    seen
}

async fn the_read_models_are_compared_with_a_rebuild(db: TestDb) {
    let url = db.url().to_string();
    let store = toolhub_eventstore::open(&url)
        .await
        .expect("open the store");
    let workflow = populate(&store).await;
    let runner = project(&store).await;
    runner.stop().await;
    let before = untouched(&store).await;

    let clean = replay(&url, &["verify"]).await;
    assert!(clean.status.success(), "{}\n{}", out(&clean), err(&clean));
    for projection in ["workflows", "executions", "secrets", "mcp_servers", "audit"] {
        assert!(
            out(&clean).contains(&format!("read model {projection} at "))
                && !out(&clean).contains("does not match"),
            "{}",
            out(&clean)
        );
    }
    assert!(
        out(&clean).contains("3 table(s), 6 row(s), matches the log"),
        "{}",
        out(&clean)
    );
    assert_eq!(untouched(&store).await, before, "verify wrote something");

    // A workflow's name edited in the read model.
    sql(
        &store,
        "UPDATE rm_workflows SET name = 'tampered' WHERE id = $1",
        &[Arg::from(workflow.as_str())],
    )
    .await;
    let edited = replay(&url, &["verify"]).await;
    assert_eq!(edited.status.code(), Some(3), "{}", err(&edited));
    assert!(
        out(&edited).contains(&format!(
            "rm_workflows id={workflow}: name: live \"tampered\", rebuilt \"renamed 0\""
        )),
        "{}",
        out(&edited)
    );
    assert!(
        out(&edited).contains("rm_workflows: 1 row(s) differ, 0 missing, 0 extra"),
        "{}",
        out(&edited)
    );
    assert!(
        err(&edited).contains("the read models do not match the log: rm_workflows (1 row(s))"),
        "{}",
        err(&edited)
    );
    // Only the read models are in question: the chain alone still holds,
    // and the read models alone do not.
    assert!(replay(&url, &["verify", "--skip-read-models"])
        .await
        .status
        .success());
    let only = replay(&url, &["verify", "--read-models-only"]).await;
    assert_eq!(only.status.code(), Some(3), "{}", err(&only));
    assert!(!out(&only).contains("verified:"), "{}", out(&only));
    sql(
        &store,
        "UPDATE rm_workflows SET name = 'renamed 0' WHERE id = $1",
        &[Arg::from(workflow.as_str())],
    )
    .await;
    assert!(replay(&url, &["verify"]).await.status.success());

    // A version deleted from the read model.
    sql(
        &store,
        "DELETE FROM rm_workflow_versions WHERE workflow_id = $1 AND version = 2",
        &[Arg::from(workflow.as_str())],
    )
    .await;
    // An audit entry that no event made.
    sql(
        &store,
        "INSERT INTO rm_audit (global_position, transaction_id, tenant, aggregate_type, \
         aggregate_id, sequence, event_type, event_version, actor, correlation_id, \
         causation_id, request_id, recorded_at, payload) \
         SELECT 999999, transaction_id, tenant, aggregate_type, aggregate_id, sequence, \
         event_type, event_version, 'mallory', correlation_id, causation_id, request_id, \
         recorded_at, payload FROM rm_audit WHERE global_position = \
         (SELECT min(global_position) FROM rm_audit)",
        &[],
    )
    .await;
    let both = replay(&url, &["verify"]).await;
    assert_eq!(both.status.code(), Some(3), "{}", err(&both));
    assert!(
        out(&both).contains(&format!(
            "rm_workflow_versions workflow_id={workflow}, version=2: missing from the live table"
        )),
        "{}",
        out(&both)
    );
    assert!(
        out(&both).contains("rm_audit global_position=999999: extra in the live table"),
        "{}",
        out(&both)
    );
    assert!(
        err(&both).contains("rm_workflow_versions (1 row(s)), rm_audit (1 row(s))"),
        "{}",
        err(&both)
    );
    // The output is bounded per table; every mismatch is still counted.
    sql(&store, "UPDATE rm_audit SET actor = 'mallory'", &[]).await;
    let many = replay(&url, &["verify", "--max-mismatches", "2"]).await;
    assert_eq!(many.status.code(), Some(3), "{}", err(&many));
    let shown = out(&many)
        .lines()
        .filter(|l| l.starts_with("    rm_audit "))
        .count();
    assert_eq!(shown, 2, "{}", out(&many));
    let audit_rows = fetch(store.db(), "SELECT count(*) AS n FROM events", &[])
        .await
        .expect("count")[0]
        .int("n")
        .expect("a count");
    assert!(
        out(&many).contains(&format!(
            "rm_audit: {audit_rows} row(s) differ, 0 missing, 1 extra"
        )) && out(&many).contains(&format!("… and {} more", audit_rows - 1)),
        "{}",
        out(&many)
    );

    // A rebuild repairs the read models; verify agrees again.
    let rebuilt = replay(&url, &["rebuild"]).await;
    assert!(rebuilt.status.success(), "{}", err(&rebuilt));
    assert!(replay(&url, &["verify"]).await.status.success());

    // Read models behind the log are compared as far as they have read it.
    let bus: CommandBus<Workflow> = CommandBus::new(store.clone());
    for i in 0..3 {
        let rename = WorkflowCommand::Rename {
            name: format!("later {i}"),
        };
        bus.execute(&workflow, rename, &ctx())
            .await
            .expect("rename");
    }
    let behind = replay(&url, &["verify", "--read-models-only"]).await;
    assert!(behind.status.success(), "{}", err(&behind));

    // A service that keeps writing and projecting while verify runs.
    let runner = project(&store).await;
    let writer = {
        let store = store.clone();
        let workflow = workflow.clone();
        tokio::spawn(async move {
            let bus: CommandBus<Workflow> = CommandBus::new(store.clone());
            for i in 0.. {
                let rename = WorkflowCommand::Rename {
                    name: format!("busy {i}"),
                };
                bus.execute(&workflow, rename, &ctx())
                    .await
                    .expect("rename");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    for _ in 0..3 {
        let busy = replay(&url, &["verify", "--read-models-only"]).await;
        assert!(busy.status.success(), "{}\n{}", out(&busy), err(&busy));
    }
    writer.abort();
    runner.stop().await;

    // Bad arguments.
    for args in [
        vec!["verify", "--skip-read-models", "--read-models-only"],
        vec!["verify", "--read-models-only", "--expect", "0.1=00"],
        vec!["verify", "--max-mismatches", "0"],
        vec!["verify", "--max-mismatches", "many"],
    ] {
        let output = replay(&url, &args).await;
        assert_eq!(output.status.code(), Some(2), "{args:?}: {}", err(&output));
    }
}

#[tokio::test]
async fn the_read_models_are_compared_with_a_rebuild_on_postgres() {
    the_read_models_are_compared_with_a_rebuild(TestDb::postgres().await).await;
}

#[tokio::test]
async fn the_read_models_are_compared_with_a_rebuild_on_sqlite() {
    the_read_models_are_compared_with_a_rebuild(TestDb::sqlite().await).await;
}
