//! `toolhub-replay at` and `diff`: entities as of a point, and what changed
//! between two versions of a workflow, on both backends; bad arguments
//! exit with status 2.

use std::process::Output;

use serde_json::{json, Value};
use toolhub_domain::secret::{SealedValue, Secret, SecretCommand};
use toolhub_domain::workflow::{Workflow, WorkflowCommand};
use toolhub_domain::{SecretId, TenantId, WorkflowId};
use toolhub_eventstore::testing::TestDb;
use toolhub_eventstore::{CommandBus, CommandContext};

async fn replay(url: &str, args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_toolhub-replay"))
        .args(args)
        .env("DATABASE_URL", url)
        .env_remove("TOOLHUB_LOG")
        .output()
        .await
        .expect("run toolhub-replay")
}

fn json_of(output: &Output) -> Value {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("JSON on standard output")
}

fn definition(nodes: &[&str]) -> Value {
    json!({
        "nodes": nodes.iter().map(|id| json!({"id": id, "type": "transform",
            "params": {"template": {"id": id}}})).collect::<Vec<_>>(),
        "edges": if nodes.len() > 1 { json!([{"from": nodes[0], "to": nodes[1]}]) } else { json!([]) }
    })
}

async fn at_and_diff(db: TestDb) {
    let url = db.url().to_string();
    let store = toolhub_eventstore::open(&url)
        .await
        .expect("open the store");
    let ctx = CommandContext::new("alice", TenantId::parse("acme").expect("a tenant"));
    let workflows: CommandBus<Workflow> = CommandBus::new(store.clone());
    let id = WorkflowId::new().to_string();
    let create = WorkflowCommand::Create {
        tenant: ctx.tenant.clone(),
        name: "first name".into(),
        description: String::new(),
        definition: definition(&["a"]),
    };
    let created = workflows.execute(&id, create, &ctx).await.expect("create");
    let update = WorkflowCommand::UpdateDefinition {
        definition: definition(&["a", "b"]),
        comment: None,
    };
    workflows.execute(&id, update, &ctx).await.expect("update");
    let rename = WorkflowCommand::Rename {
        name: "second name".into(),
    };
    workflows.execute(&id, rename, &ctx).await.expect("rename");

    let first = json_of(&replay(&url, &["at", "workflow", &id, "--version", "1"]).await);
    assert_eq!(first["name"], "first name");
    assert_eq!(first["version"], 1);
    assert_eq!(first["aggregateVersion"], 1);
    let position = created.position.expect("a position").to_string();
    let same = json_of(&replay(&url, &["at", "workflow", &id, "--position", &position]).await);
    assert_eq!(same, first);
    let now = json_of(
        &replay(
            &url,
            &["at", "workflow", &id, "--time", "2999-01-01T00:00:00Z"],
        )
        .await,
    );
    assert_eq!(now["name"], "second name");
    assert_eq!(now["version"], 2);
    assert_eq!(now["aggregateVersion"], 3);
    let before = replay(
        &url,
        &["at", "workflow", &id, "--time", "2000-01-01T00:00:00Z"],
    )
    .await;
    assert_eq!(before.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&before.stderr).contains("no workflow"));

    let diff = json_of(&replay(&url, &["diff", "workflow", &id, "1", "2"]).await);
    assert_eq!(diff["addedNodes"], json!(["b"]));
    assert_eq!(diff["addedEdges"], json!([{"from": "a", "to": "b"}]));
    assert!(diff["patch"].as_array().is_some_and(|ops| !ops.is_empty()));
    let missing = replay(&url, &["diff", "workflow", &id, "1", "7"]).await;
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("versions 1 to 2"));

    // A secret shows its metadata, never its sealed value.
    let secrets: CommandBus<Secret> = CommandBus::new(store.clone());
    let secret = SecretId::new().to_string();
    let create = SecretCommand::Create {
        tenant: ctx.tenant.clone(),
        name: "TOKEN".into(),
        description: "d".into(),
        value: SealedValue::new("bm9uY2U=", "Y2lwaGVydGV4dA=="),
    };
    secrets
        .execute(&secret, create, &ctx)
        .await
        .expect("create");
    let output = replay(&url, &["at", "secret", &secret, "--version", "1"]).await;
    let shown = json_of(&output);
    assert_eq!(shown["name"], "TOKEN");
    assert!(!String::from_utf8_lossy(&output.stdout).contains("Y2lwaGVydGV4dA"));

    // Bad arguments: status 2 and a message naming the fault.
    for args in [
        vec!["at", "workflow", &id],
        vec![
            "at",
            "workflow",
            &id,
            "--version",
            "1",
            "--time",
            "2026-01-01T00:00:00Z",
        ],
        vec!["at", "workflow", &id, "--version", "0"],
        vec!["at", "workflow", &id, "--time", "yesterday"],
        vec!["at", "workflow", &id, "--position", "nowhere"],
        vec!["at", "api-key", &id, "--version", "1"],
        vec!["diff", "secret", &id, "1", "2"],
        vec!["diff", "workflow", &id, "one", "2"],
        vec!["at", "workflow", "not-an-id", "--version", "1"],
        vec!["diff", "workflow", "not-an-id", "1", "2"],
        vec!["timeline", "not-an-id"],
    ] {
        let output = replay(&url, &args).await;
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        assert!(!output.stderr.is_empty(), "{args:?}");
    }
}

#[tokio::test]
async fn at_and_diff_on_postgres() {
    at_and_diff(TestDb::postgres().await).await;
}

#[tokio::test]
async fn at_and_diff_on_sqlite() {
    at_and_diff(TestDb::sqlite().await).await;
}

async fn a_timeline_is_a_table(db: TestDb) {
    use toolhub_domain::definition::NodeId;
    use toolhub_domain::execution::{Execution, ExecutionCommand};
    use toolhub_domain::ExecutionId;
    let url = db.url().to_string();
    let store = toolhub_eventstore::open(&url)
        .await
        .expect("open the store");
    let ctx = CommandContext::new("alice", TenantId::parse("acme").expect("a tenant"));
    let executions: CommandBus<Execution> = CommandBus::new(store.clone());
    let fetch = NodeId::parse("fetch").expect("a node id");
    let id = ExecutionId::new().to_string();
    for command in [
        ExecutionCommand::Start {
            tenant: ctx.tenant.clone(),
            workflow_id: WorkflowId::new(),
            workflow_version: 1,
            input: json!({}),
            trigger: "manual".into(),
            source: None,
            breakpoints: vec![],
            deadline: None,
        },
        ExecutionCommand::ScheduleStep {
            node_id: fetch.clone(),
            attempt: 1,
            input: json!({}),
        },
        ExecutionCommand::StartStep {
            node_id: fetch.clone(),
            attempt: 1,
            wake_at: None,
        },
        ExecutionCommand::FailStep {
            node_id: fetch.clone(),
            attempt: 1,
            error: "HTTP 503 from\nupstream".into(),
            retryable: false,
        },
    ] {
        executions
            .execute(&id, command, &ctx)
            .await
            .expect("execution command");
    }
    let output = replay(&url, &["timeline", &id]).await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 5, "a header and one line per event: {text}");
    assert!(
        lines[0].contains("event") && lines[0].contains("node"),
        "{text}"
    );
    assert!(lines[1].contains("ExecutionStarted"), "{text}");
    assert!(
        lines[4].contains("StepFailed")
            && lines[4].contains("fetch")
            && lines[4].contains("HTTP 503 from upstream"),
        "{text}"
    );
    // The run and its steps as of a point: scheduled after its second
    // event, failed after its fourth.
    let scheduled = json_of(&replay(&url, &["at", "execution", &id, "--version", "2"]).await);
    assert_eq!(scheduled["status"], "running", "{scheduled:#}");
    assert_eq!(scheduled["aggregateVersion"], 2, "{scheduled:#}");
    assert_eq!(scheduled["steps"][0]["nodeId"], "fetch", "{scheduled:#}");
    assert_eq!(
        scheduled["steps"][0]["status"], "scheduled",
        "{scheduled:#}"
    );
    let failed = json_of(&replay(&url, &["at", "execution", &id, "--version", "4"]).await);
    assert_eq!(failed["steps"][0]["status"], "failed", "{failed:#}");
    assert_eq!(
        failed["steps"][0]["error"], "HTTP 503 from\nupstream",
        "{failed:#}"
    );
    let before = replay(
        &url,
        &["at", "execution", &id, "--time", "2000-01-01T00:00:00Z"],
    )
    .await;
    assert_eq!(before.status.code(), Some(1));
    let missing = replay(&url, &["timeline", &WorkflowId::new().to_string()]).await;
    assert_eq!(missing.status.code(), Some(1));
    assert_eq!(replay(&url, &["timeline"]).await.status.code(), Some(2));
}

#[tokio::test]
async fn a_timeline_is_a_table_on_postgres() {
    a_timeline_is_a_table(TestDb::postgres().await).await;
}

#[tokio::test]
async fn a_timeline_is_a_table_on_sqlite() {
    a_timeline_is_a_table(TestDb::sqlite().await).await;
}
