//! End-to-end tests of `toolhub-replay rebuild`: a real database is filled
//! through the command bus with real domain commands, the binary is run
//! against it, and the read-model tables are then checked with plain SQL.
//!
//! PostgreSQL must be running (see `toolhub_eventstore::testing`); a missing
//! server fails the tests with a message that says how to start one.

use std::path::PathBuf;
use std::process::Output;

use serde_json::json;
use toolhub_domain::definition::NodeId;
use toolhub_domain::execution::{Execution, ExecutionCommand};
use toolhub_domain::mcp_server::{McpServer, McpServerCommand, ToolInfo, Transport};
use toolhub_domain::secret::{SealedValue, Secret, SecretCommand};
use toolhub_domain::workflow::{Workflow, WorkflowCommand};
use toolhub_domain::{ExecutionId, McpServerId, SecretId, TenantId, WorkflowId};
use toolhub_eventstore::testing::TestDb;
use toolhub_eventstore::{CommandBus, CommandContext};

/// The ciphertext of the placeholder sealed values: it must never reach a
/// read model.
const CIPHERTEXT: &str = "Y2lwaGVy";

/// How many events [`populate`] appends.
const EVENTS: i64 = 24;

fn ctx() -> CommandContext {
    CommandContext::new("alice", TenantId::parse("acme").expect("a valid tenant"))
}

fn definition() -> serde_json::Value {
    json!({
        "nodes": [
            {"id": "fetch", "type": "http", "name": "Fetch", "position": {"x": 0, "y": 0},
             "params": {"method": "GET", "url": "https://api.example.com/items", "headers": {}, "body": null}},
            {"id": "shape", "type": "transform", "name": "Shape", "position": {"x": 200, "y": 0},
             "params": {"template": {"items": "{{nodes.fetch.body}}"}}}
        ],
        "edges": [{"from": "fetch", "to": "shape"}]
    })
}

/// Appends 24 events through the command bus: three workflows with two
/// versions and a rename each (9), two completed executions with one step
/// each (10), a secret created and rotated (2), and an MCP server registered
/// with two tools and a health check (3).
async fn populate(url: &str) {
    let store = toolhub_eventstore::open(url).await.expect("open the store");
    let ctx = ctx();
    let workflows: CommandBus<Workflow> = CommandBus::new(store.clone());
    let mut first = None;
    for i in 0..3 {
        let id = WorkflowId::new().to_string();
        let create = WorkflowCommand::Create {
            tenant: ctx.tenant.clone(),
            name: format!("workflow {i}"),
            description: "Fetches and shapes items.".into(),
            definition: definition(),
        };
        workflows.execute(&id, create, &ctx).await.expect("create");
        let mut updated = definition();
        updated["nodes"][1]["name"] = json!("Shape the items");
        let update = WorkflowCommand::UpdateDefinition {
            definition: updated,
            comment: Some("clearer name".into()),
        };
        workflows.execute(&id, update, &ctx).await.expect("update");
        let rename = WorkflowCommand::Rename {
            name: format!("renamed workflow {i}"),
        };
        workflows.execute(&id, rename, &ctx).await.expect("rename");
        first.get_or_insert(id);
    }
    let workflow_id: WorkflowId = first.expect("a workflow").parse().expect("a uuid");

    let executions: CommandBus<Execution> = CommandBus::new(store.clone());
    let fetch = NodeId::parse("fetch").expect("a node id");
    for _ in 0..2 {
        let id = ExecutionId::new().to_string();
        let commands = [
            ExecutionCommand::Start {
                tenant: ctx.tenant.clone(),
                workflow_id,
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
        ];
        for command in commands {
            executions
                .execute(&id, command, &ctx)
                .await
                .expect("execution command");
        }
    }

    let secrets: CommandBus<Secret> = CommandBus::new(store.clone());
    let secret = SecretId::new().to_string();
    let create = SecretCommand::Create {
        tenant: ctx.tenant.clone(),
        name: "API_TOKEN".into(),
        description: "The items API token.".into(),
        value: SealedValue::new("bm9uY2U=", CIPHERTEXT),
    };
    secrets
        .execute(&secret, create, &ctx)
        .await
        .expect("create the secret");
    let rotate = SecretCommand::Rotate {
        value: SealedValue::new("bm9uY2Uy", CIPHERTEXT),
    };
    secrets
        .execute(&secret, rotate, &ctx)
        .await
        .expect("rotate the secret");

    let servers: CommandBus<McpServer> = CommandBus::new(store.clone());
    let server = McpServerId::new().to_string();
    let tool = |name: &str| ToolInfo {
        name: name.into(),
        description: Some(format!("The {name} tool.")),
        input_schema: json!({"type": "object"}),
        read_only: false,
        idempotent: false,
    };
    let commands = [
        McpServerCommand::Register {
            tenant: ctx.tenant.clone(),
            name: "assistant".into(),
            transport: Transport::StreamableHttp {
                url: "https://mcp.example.com/mcp".into(),
                headers: [(
                    "Authorization".to_string(),
                    "Bearer {{secrets.API_TOKEN}}".to_string(),
                )]
                .into_iter()
                .collect(),
            },
        },
        McpServerCommand::DiscoverTools {
            tools: vec![tool("summarize"), tool("translate")],
        },
        McpServerCommand::RecordHealth {
            healthy: true,
            latency_ms: 12,
            detail: None,
        },
    ];
    for command in commands {
        servers
            .execute(&server, command, &ctx)
            .await
            .expect("server command");
    }
    // The commit-safe reader shows an event once every transaction older
    // than it has ended, anywhere on the server (other tests, other
    // databases): wait until it shows them all, so that a rebuild sees the
    // whole log.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let seen = store
            .read_after(toolhub_eventstore::Position::ZERO, EVENTS as u32 + 1)
            .await
            .expect("read the log")
            .len();
        if seen as i64 == EVENTS {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the log reader shows {seen} of {EVENTS} events"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// How many rows `table` holds (`where` filters them).
async fn count(url: &str, table: &str, condition: &str) -> i64 {
    let sql = format!("SELECT count(*) FROM {table} WHERE {condition}");
    if url.starts_with("postgres") {
        let pool = sqlx::PgPool::connect(url).await.expect("connect");
        let n = sqlx::query_scalar(&sql)
            .fetch_one(&pool)
            .await
            .expect("count");
        pool.close().await;
        n
    } else {
        let pool = sqlx::SqlitePool::connect(url).await.expect("connect");
        let n = sqlx::query_scalar(&sql)
            .fetch_one(&pool)
            .await
            .expect("count");
        pool.close().await;
        n
    }
}

/// Runs the binary with `args`, with `DATABASE_URL` set to `url` or, for
/// `None`, removed.
async fn replay(database_url: Option<&str>, data_dir: Option<&PathBuf>, args: &[&str]) -> Output {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_toolhub-replay"));
    command.args(args).env_remove("TOOLHUB_LOG");
    match database_url {
        Some(url) => command.env("DATABASE_URL", url),
        None => command.env_remove("DATABASE_URL"),
    };
    if let Some(dir) = data_dir {
        command.env("TOOLHUB_DATA_DIR", dir);
    }
    command.output().await.expect("run toolhub-replay")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Every read model holds what the 24 events of [`populate`] imply.
async fn assert_read_models(url: &str) {
    assert_eq!(
        count(url, "rm_workflows", "name LIKE 'renamed workflow %'").await,
        3
    );
    assert_eq!(count(url, "rm_workflow_versions", "1 = 1").await, 6);
    assert_eq!(count(url, "rm_executions", "status = 'completed'").await, 2);
    assert_eq!(
        count(url, "rm_execution_steps", "status = 'succeeded'").await,
        2
    );
    assert_eq!(count(url, "rm_secrets", "rotation_count = 1").await, 1);
    assert_eq!(count(url, "rm_mcp_servers", "healthy IS NOT NULL").await, 1);
    assert_eq!(count(url, "rm_mcp_tools", "1 = 1").await, 2);
    assert_eq!(count(url, "rm_audit", "1 = 1").await, EVENTS);
    let leaked = format!("CAST(payload AS text) LIKE '%{CIPHERTEXT}%'");
    assert_eq!(
        count(url, "rm_audit", &leaked).await,
        0,
        "a sealed value reached the audit log"
    );
}

fn assert_summary(output: &Output, read_models: usize) {
    let stdout = text(&output.stdout);
    assert!(
        output.status.success(),
        "exit {:?}; stdout: {stdout}; stderr: {}",
        output.status,
        text(&output.stderr)
    );
    for name in ["workflows", "executions", "secrets", "mcp_servers", "audit"]
        .into_iter()
        .take(read_models)
    {
        let line = format!("{name}: rebuilt, checkpoint ");
        assert!(
            stdout.contains(&line),
            "no summary line for {name} in: {stdout}"
        );
    }
    // One pass over the log feeds every read model: each event counts once.
    let total = format!("total: {read_models} read model(s), {EVENTS} events in ");
    assert!(stdout.contains(&total), "no total line in: {stdout}");
    assert!(stdout.contains("events/s"), "no rate in: {stdout}");
}

#[tokio::test]
async fn rebuild_fills_every_read_model_on_postgres() {
    let db = TestDb::postgres().await;
    populate(db.url()).await;

    let output = replay(Some(db.url()), None, &["rebuild"]).await;
    assert_summary(&output, 5);
    // Standard error is not a terminal here, so the progress bar hides
    // itself and nothing else is printed.
    assert_eq!(text(&output.stderr), "", "unexpected standard error");
    assert_read_models(db.url()).await;

    // A second rebuild replaces the tables with identical ones.
    let output = replay(Some(db.url()), None, &["rebuild", "--batch-size", "5"]).await;
    assert_summary(&output, 5);
    assert_read_models(db.url()).await;
}

#[tokio::test]
async fn rebuilding_one_projection_leaves_the_others_alone_on_postgres() {
    let db = TestDb::postgres().await;
    populate(db.url()).await;

    let output = replay(
        Some(db.url()),
        None,
        &["rebuild", "--projection", "workflows"],
    )
    .await;
    assert_summary(&output, 1);
    assert!(
        !text(&output.stdout).contains("audit:"),
        "rebuilt more than asked"
    );
    assert_eq!(count(db.url(), "rm_workflows", "1 = 1").await, 3);
    assert_eq!(count(db.url(), "rm_workflow_versions", "1 = 1").await, 6);
    assert_eq!(count(db.url(), "rm_audit", "1 = 1").await, 0);
    assert_eq!(count(db.url(), "rm_executions", "1 = 1").await, 0);
}

#[tokio::test]
async fn rebuild_uses_the_embedded_sqlite_database_of_the_data_directory() {
    let db = TestDb::sqlite().await;
    populate(db.url()).await;
    let file = PathBuf::from(db.url().trim_start_matches("sqlite://"));
    let data_dir = file.parent().expect("a data directory").to_path_buf();

    let output = replay(None, Some(&data_dir), &["rebuild", "--batch-size", "7"]).await;
    assert_summary(&output, 5);
    assert_eq!(text(&output.stderr), "", "unexpected standard error");
    assert_read_models(db.url()).await;
}

#[tokio::test]
async fn an_unsupported_database_url_is_one_line_and_a_failure() {
    let output = replay(
        Some("mysql://app:hunter2@db.example/toolhub"),
        None,
        &["rebuild"],
    )
    .await;
    assert!(!output.status.success(), "a bad URL succeeded");
    let stderr = text(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "not one line: {stderr}");
    assert!(
        stderr.starts_with("toolhub-replay: cannot open mysql://"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("hunter2"),
        "the password was shown: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(text(&output.stdout), "");
}

#[tokio::test]
async fn an_unusable_sqlite_path_is_one_line_and_a_failure() {
    let output = replay(
        Some("sqlite:///proc/toolhub-replay/toolhub.db"),
        None,
        &["rebuild"],
    )
    .await;
    assert!(!output.status.success(), "an unusable path succeeded");
    let stderr = text(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "not one line: {stderr}");
    assert!(
        stderr.starts_with("toolhub-replay: cannot open sqlite://"),
        "{stderr}"
    );
}

#[tokio::test]
async fn an_unknown_projection_is_named_in_one_line() {
    let output = replay(
        Some("sqlite::memory:"),
        None,
        &["rebuild", "--projection", "nope"],
    )
    .await;
    assert_eq!(
        output.status.code(),
        Some(2),
        "an unknown projection is an argument error"
    );
    let stderr = text(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "not one line: {stderr}");
    assert!(
        stderr.contains("unknown projection \"nope\": expected one of workflows, executions, secrets, mcp_servers, audit"),
        "{stderr}"
    );
}

#[tokio::test]
async fn an_event_no_code_can_decode_is_shown_as_stored_and_a_stall_is_listed_on_postgres() {
    let db = TestDb::postgres().await;
    let store = toolhub_eventstore::open(db.url()).await.expect("open");
    let pool = sqlx::PgPool::connect(db.url()).await.expect("connect");
    let position: i64 = sqlx::query_scalar(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
         VALUES ('workflow', 'w-1', 1, 'WorkflowCreated', '9.9', '{\"what\": \"no decoder reads this\"}'::json, '{}'::json) \
         RETURNING global_position",
    )
    .fetch_one(&pool)
    .await
    .expect("insert a raw event");

    let output = replay(
        Some(db.url()),
        None,
        &["event", "--position", &position.to_string()],
    )
    .await;
    assert!(output.status.success(), "{}", text(&output.stderr));
    let shown: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("the event as JSON");
    assert_eq!(shown["event_type"], "WorkflowCreated");
    assert_eq!(shown["event_version"], "9.9");
    assert_eq!(shown["position"]["global"], json!(position));
    assert!(
        shown["payload"]
            .as_str()
            .unwrap_or_default()
            .contains("no decoder reads this"),
        "{shown}"
    );

    let output = replay(Some(db.url()), None, &["event", "--position", "999999"]).await;
    assert!(!output.status.success());
    assert!(text(&output.stderr).contains("no event at position 999999"));

    let output = replay(Some(db.url()), None, &["stalls"]).await;
    assert_eq!(text(&output.stdout).trim(), "no projection is stopped");
    sqlx::query(
        "INSERT INTO projector_checkpoints (projection, stalled_transaction_id, stalled_global_position, stalled_error, stalled_since) \
         VALUES ('workflows', 7, $1, 'does not decode', now())",
    )
    .bind(position)
    .execute(&pool)
    .await
    .expect("record a stall");
    let output = replay(Some(db.url()), None, &["stalls"]).await;
    let stdout = text(&output.stdout);
    assert!(
        stdout.starts_with(&format!("workflows: stopped at position {position} ")),
        "{stdout}"
    );
    assert!(stdout.contains("does not decode"), "{stdout}");
    drop(store);
}
