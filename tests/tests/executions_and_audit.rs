//! Executions (started and driven by the engine, so recorded here through
//! the command bus as the engine would) and the audit log, read through
//! GraphQL.

use serde_json::json;
use toolhub_domain::definition::NodeId;
use toolhub_domain::execution::{Execution, ExecutionCommand};
use toolhub_domain::{ExecutionId, Role, TenantId, WorkflowId};
use toolhub_eventstore::{CommandBus, CommandContext, Position};
use toolhub_tests::{hello_definition, token, TestEnv};

/// Records an execution with one succeeded step; returns its id and the
/// position of its last event.
async fn record_execution(url: &str, workflow: &str, tenant: &str) -> (String, Position) {
    let store = toolhub_eventstore::open(url).await.unwrap();
    let bus: CommandBus<Execution> = CommandBus::new(store);
    let ctx = CommandContext::new("engine", TenantId::parse(tenant).unwrap());
    let id = ExecutionId::new().to_string();
    let node = NodeId::parse("fetch").unwrap();
    let commands = vec![
        ExecutionCommand::Start {
            tenant: ctx.tenant.clone(),
            workflow_id: workflow.parse::<WorkflowId>().unwrap(),
            workflow_version: 1,
            input: json!({"language": "en"}),
            trigger: "manual".into(),
            source: None,
            breakpoints: vec![],
            deadline: None,
        },
        ExecutionCommand::ScheduleStep {
            node_id: node.clone(),
            attempt: 1,
            input: json!({"url": "https://api.example.com"}),
        },
        ExecutionCommand::StartStep {
            node_id: node.clone(),
            attempt: 1,
            wake_at: None,
        },
        ExecutionCommand::SucceedStep {
            node_id: node,
            attempt: 1,
            output: json!({"status": 200}),
        },
    ];
    let mut position = Position::ZERO;
    for command in commands {
        let committed = bus.execute(&id, command, &ctx).await.unwrap();
        position = committed.position.unwrap_or(position);
    }
    (id, position)
}

#[tokio::test]
async fn executions_are_listed_filtered_and_shown_with_their_steps() {
    let env = TestEnv::postgres().await;
    let server = env.server().await;
    let editor = token("ada", "acme", Role::Editor);
    let viewer = token("vic", "acme", Role::Viewer);
    let created = server
        .ok(
            &editor,
            r#"mutation ($input: CreateWorkflowInput!) { createWorkflow(input: $input) { id } }"#,
            json!({ "input": { "name": "Hello", "definition": hello_definition() } }),
        )
        .await;
    let workflow = created["createWorkflow"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (first, _) = record_execution(env.db.url(), &workflow, "acme").await;
    let (_, at) = record_execution(env.db.url(), &workflow, "acme").await;

    let data = server
        .ok(
            &viewer,
            r#"query ($w: ID!, $at: String!) {
                 executions(first: 10, filter: {workflowId: $w, status: RUNNING}, consistency: {atLeast: $at}) {
                   edges { node { id status workflowId workflowVersion trigger input steps { nodeId attempt status output } } }
                   pageInfo { hasNextPage }
                 } }"#,
            json!({ "w": workflow, "at": at.to_string() }),
        )
        .await;
    let edges = data["executions"]["edges"].as_array().unwrap();
    assert_eq!(edges.len(), 2, "{data}");
    for edge in edges {
        let node = &edge["node"];
        assert_eq!(node["status"], "RUNNING");
        assert_eq!(node["steps"][0]["nodeId"], "fetch");
        assert_eq!(node["steps"][0]["status"], "succeeded");
        assert_eq!(node["steps"][0]["output"]["status"], 200);
    }
    let done = server
        .ok(
            &viewer,
            r#"{ executions(filter: {status: COMPLETED}) { edges { cursor } } }"#,
            json!({}),
        )
        .await;
    assert_eq!(done["executions"]["edges"], json!([]));

    let one = server
        .ok(
            &viewer,
            r#"query ($id: ID!) { execution(id: $id) { id input steps { attempt } } }"#,
            json!({ "id": first }),
        )
        .await;
    assert_eq!(one["execution"]["input"]["language"], "en");

    // Another tenant sees none of it.
    let other = token("eve", "globex", Role::Admin);
    let code = server
        .error_code(
            Some(&other),
            r#"query ($id: ID!) { execution(id: $id) { id } }"#,
            json!({ "id": first }),
        )
        .await;
    assert_eq!(code, "NOT_FOUND");
}

#[tokio::test]
async fn the_audit_log_and_history_show_who_did_what() {
    let env = TestEnv::postgres().await;
    let server = env.server().await;
    let admin = token("root", "acme", Role::Admin);
    let editor = token("ada", "acme", Role::Editor);
    let created = server
        .ok(
            &editor,
            r#"mutation ($input: CreateWorkflowInput!) { createWorkflow(input: $input) { id } }"#,
            json!({ "input": { "name": "Hello", "definition": hello_definition() } }),
        )
        .await;
    let id = created["createWorkflow"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let renamed = server
        .ok(
            &admin,
            r#"mutation ($id: ID!) { renameWorkflow(input: {id: $id, name: "Renamed"}) { position } }"#,
            json!({ "id": id }),
        )
        .await;
    let at = renamed["renameWorkflow"]["position"].clone();

    let history = server
        .ok(
            &admin,
            r#"query ($id: ID!, $at: String!) {
                 history(aggregateType: WORKFLOW, aggregateId: $id, consistency: {atLeast: $at}) {
                   position aggregateType aggregateId sequence eventType eventVersion actor recordedAt payload
                 } }"#,
            json!({ "id": id, "at": at }),
        )
        .await;
    let entries = history["history"].as_array().unwrap();
    assert_eq!(entries.len(), 2, "{history}");
    assert_eq!(entries[0]["eventType"], "WorkflowCreated");
    assert_eq!(entries[0]["actor"], "ada");
    assert_eq!(entries[0]["sequence"], 1);
    assert_eq!(entries[0]["aggregateType"], "WORKFLOW");
    assert_eq!(entries[1]["eventType"], "WorkflowRenamed");
    assert_eq!(entries[1]["actor"], "root");
    assert_eq!(entries[1]["position"], at);

    let log = server
        .ok(
            &admin,
            r#"query ($at: String!) { auditLog(first: 1, filter: {actor: "root"}, consistency: {atLeast: $at}) {
                 edges { node { eventType actor } } pageInfo { hasNextPage } } }"#,
            json!({ "at": at }),
        )
        .await;
    let edges = log["auditLog"]["edges"].as_array().unwrap();
    assert_eq!(edges.len(), 1);
    assert_eq!(edges[0]["node"]["eventType"], "WorkflowRenamed");
    assert_eq!(log["auditLog"]["pageInfo"]["hasNextPage"], false);
}
