//! Subscriptions over a real graphql-transport-ws socket.

use serde_json::{json, Value};
use toolhub_domain::Role;
use toolhub_tests::{hello_definition, tiny_definition, token, TestEnv, TestServer};

const EVENTS: &str = r#"subscription ($after: String, $filter: EventFilterInput) {
  events(after: $after, filter: $filter) { position aggregateType aggregateId sequence eventType eventVersion actor recordedAt payload }
}"#;

async fn create(server: &TestServer, token: &str, name: &str) -> Value {
    server
        .ok(
            token,
            r#"mutation ($input: CreateWorkflowInput!) { createWorkflow(input: $input) { id position } }"#,
            json!({ "input": { "name": name, "definition": hello_definition() } }),
        )
        .await["createWorkflow"]
        .clone()
}

async fn update(server: &TestServer, token: &str, id: &str, n: usize) -> Value {
    server
        .ok(
            token,
            r#"mutation ($input: UpdateWorkflowInput!) { updateWorkflow(input: $input) { id position } }"#,
            json!({ "input": { "id": id, "definition": tiny_definition(&format!("https://example.com/{n}")) } }),
        )
        .await["updateWorkflow"]
        .clone()
}

#[tokio::test]
async fn events_arrive_in_order_and_resume_without_gap_or_duplicate() {
    let env = TestEnv::postgres().await;
    let server = env.server().await;
    let admin = token("root", "acme", Role::Admin);
    let created = create(&server, &admin, "Live").await;
    let id = created["id"].as_str().unwrap().to_string();

    let mut ws = server.ws_authenticated(&admin).await;
    ws.subscribe("1", EVENTS, json!({ "after": "0.0" })).await;
    let first = ws.next_data("1").await;
    assert_eq!(first["events"]["eventType"], "WorkflowCreated");
    assert_eq!(first["events"]["aggregateType"], "WORKFLOW");
    assert_eq!(first["events"]["position"], created["position"]);

    let mut written = Vec::new();
    for n in 0..5 {
        written.push(update(&server, &admin, &id, n).await["position"].clone());
    }
    let mut seen = Vec::new();
    for _ in 0..3 {
        let data = ws.next_data("1").await;
        seen.push(data["events"]["position"].clone());
    }
    assert_eq!(seen, written[..3]);
    // Disconnect, and resume after the last position seen.
    ws.close().await;
    let mut resumed = server.ws_authenticated(&admin).await;
    resumed
        .subscribe("2", EVENTS, json!({ "after": seen.last().unwrap() }))
        .await;
    for expected in &written[3..] {
        let data = resumed.next_data("2").await;
        assert_eq!(&data["events"]["position"], expected);
        assert_eq!(data["events"]["eventType"], "WorkflowDefinitionUpdated");
        assert_eq!(data["events"]["actor"], "root");
    }
    // And what happens next arrives live.
    let later = update(&server, &admin, &id, 99).await;
    let data = resumed.next_data("2").await;
    assert_eq!(data["events"]["position"], later["position"]);
}

#[tokio::test]
async fn events_are_scoped_to_the_tenant_and_the_filter() {
    let env = TestEnv::postgres().await;
    let server = env.server().await;
    let ours = token("root", "acme", Role::Admin);
    let theirs = token("eve", "globex", Role::Admin);
    let a = create(&server, &ours, "A").await;
    let b = create(&server, &ours, "B").await;
    let a_id = a["id"].as_str().unwrap().to_string();
    let b_id = b["id"].as_str().unwrap().to_string();

    let mut all = server.ws_authenticated(&ours).await;
    all.subscribe("all", EVENTS, json!({ "after": a["position"] }))
        .await;
    let mut only_a = server.ws_authenticated(&ours).await;
    only_a
        .subscribe(
            "a",
            EVENTS,
            json!({ "after": "0.0", "filter": { "aggregateType": "WORKFLOW", "aggregateId": a_id } }),
        )
        .await;
    assert_eq!(
        only_a.next_data("a").await["events"]["aggregateId"],
        a["id"]
    );

    // Another tenant's change and a change to B are not A's.
    let theirs_created = create(&server, &theirs, "Theirs").await;
    update(&server, &ours, &b_id, 1).await;
    let a_updated = update(&server, &ours, &a_id, 2).await;
    let next = only_a.next_data("a").await;
    assert_eq!(next["events"]["position"], a_updated["position"]);

    // The unfiltered subscriber sees B's creation, B's update and A's
    // update — and nothing of the other tenant.
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(all.next_data("all").await["events"]["aggregateId"].clone());
    }
    assert_eq!(
        seen,
        vec![b["id"].clone(), b["id"].clone(), a["id"].clone()]
    );
    assert!(!seen.contains(&theirs_created["id"]));
}

#[tokio::test]
async fn workflow_changed_yields_the_workflow_after_each_change() {
    let env = TestEnv::postgres().await;
    let server = env.server().await;
    let editor = token("ada", "acme", Role::Editor);
    let created = create(&server, &editor, "Watched").await;
    let id = created["id"].as_str().unwrap().to_string();
    let mut ws = server.ws_authenticated(&editor).await;
    ws.subscribe(
        "w",
        "subscription ($id: ID!) { workflowChanged(id: $id) { id name definitionVersion } }",
        json!({ "id": id }),
    )
    .await;
    // Give the subscription a moment to start before changing the workflow.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    server
        .ok(
            &editor,
            r#"mutation ($id: ID!) { renameWorkflow(input: {id: $id, name: "Renamed"}) { id } }"#,
            json!({ "id": id }),
        )
        .await;
    let data = ws.next_data("w").await;
    assert_eq!(data["workflowChanged"]["name"], "Renamed");
    update(&server, &editor, &id, 1).await;
    let data = ws.next_data("w").await;
    assert_eq!(data["workflowChanged"]["definitionVersion"], 2);

    // A workflow that does not exist is an error on the subscription.
    ws.subscribe(
        "missing",
        "subscription ($id: ID!) { workflowChanged(id: $id) { id } }",
        json!({ "id": uuid::Uuid::new_v4().to_string() }),
    )
    .await;
    let message = ws.next_for("missing").await;
    // async-graphql reports a resolver's error as a `next` carrying errors.
    assert_eq!(message["type"], "next", "{message}");
    assert_eq!(
        message["payload"]["errors"][0]["extensions"]["code"], "NOT_FOUND",
        "{message}"
    );
}

#[tokio::test]
async fn a_mutation_on_one_server_reaches_a_subscriber_on_another() {
    let env = TestEnv::postgres().await;
    let writer = env.server().await;
    let reader = env.server().await;
    let admin = token("root", "acme", Role::Admin);
    let mut ws = reader.ws_authenticated(&admin).await;
    ws.subscribe("x", EVENTS, json!({})).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let created = create(&writer, &admin, "Across").await;
    let data = ws.next_data("x").await;
    assert_eq!(data["events"]["aggregateId"], created["id"]);
    assert_eq!(data["events"]["position"], created["position"]);
}

#[tokio::test]
async fn execution_updated_follows_an_execution() {
    use toolhub_domain::definition::NodeId;
    use toolhub_domain::execution::{Execution, ExecutionCommand};
    use toolhub_domain::{ExecutionId, TenantId, WorkflowId};
    use toolhub_eventstore::{CommandBus, CommandContext};

    let env = TestEnv::postgres().await;
    let server = env.server().await;
    let viewer = token("vic", "acme", Role::Viewer);
    let store = toolhub_eventstore::open(env.db.url()).await.unwrap();
    let bus: CommandBus<Execution> = CommandBus::new(store);
    let ctx = CommandContext::new("engine", TenantId::parse("acme").unwrap());
    let id = ExecutionId::new().to_string();
    let started = bus
        .execute(
            &id,
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
            &ctx,
        )
        .await
        .unwrap();
    // Wait until the execution is visible, then watch it.
    server
        .ok(
            &viewer,
            r#"query ($id: ID!, $at: String!) { execution(id: $id, consistency: {atLeast: $at}) { id } }"#,
            json!({ "id": id, "at": started.position.unwrap().to_string() }),
        )
        .await;
    let mut ws = server.ws_authenticated(&viewer).await;
    ws.subscribe(
        "e",
        "subscription ($id: ID!) { executionUpdated(id: $id) { id status steps { nodeId status } } }",
        json!({ "id": id }),
    )
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    bus.execute(
        &id,
        ExecutionCommand::ScheduleStep {
            node_id: NodeId::parse("fetch").unwrap(),
            attempt: 1,
            input: json!({}),
        },
        &ctx,
    )
    .await
    .unwrap();
    let data = ws.next_data("e").await;
    assert_eq!(data["executionUpdated"]["steps"][0]["nodeId"], "fetch");
    assert_eq!(data["executionUpdated"]["status"], "RUNNING");
}

/// The `next` messages a socket receives next, `count` of them, as
/// (subscription id, value at `pointer` in its data), in arrival order.
async fn next_messages(
    ws: &mut toolhub_tests::WsClient,
    count: usize,
    pointer: &str,
) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    while out.len() < count {
        let message = ws.next_json().await.expect("the socket is open");
        if message["type"] != "next" {
            continue;
        }
        assert!(message["payload"].get("errors").is_none(), "{message}");
        let id = message["id"].as_str().unwrap().to_string();
        let value = message["payload"]["data"].pointer(pointer).cloned();
        out.push((id, value.unwrap_or(Value::Null)));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Subscribers of many workflows share the server's reads of the log and of
/// each workflow; each still sees its own workflow's changes and nothing
/// else, and every subscriber of a workflow sees each of its changes.
async fn subscribers_of_many_workflows_each_see_their_own_changes(env: TestEnv) {
    let server = env.server().await;
    let editor = token("ada", "acme", Role::Editor);
    let other = token("eve", "globex", Role::Editor);
    let a = create(&server, &editor, "A").await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let b = create(&server, &editor, "B").await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let theirs = create(&server, &other, "Theirs").await["id"]
        .as_str()
        .unwrap()
        .to_string();
    const CHANGED: &str = "subscription ($id: ID!) { workflowChanged(id: $id) { id name } }";
    let mut one = server.ws_authenticated(&editor).await;
    let mut two = server.ws_authenticated(&editor).await;
    let mut three = server.ws_authenticated(&other).await;
    one.subscribe("a1", CHANGED, json!({"id": a})).await;
    one.subscribe("b1", CHANGED, json!({"id": b})).await;
    two.subscribe("a2", CHANGED, json!({"id": a})).await;
    two.subscribe("a3", CHANGED, json!({"id": a})).await;
    three.subscribe("t", CHANGED, json!({"id": theirs})).await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let rename = |id: String, name: &'static str| {
        let server = &server;
        let token = if id == theirs {
            other.clone()
        } else {
            editor.clone()
        };
        async move {
            server
                .ok(
                    &token,
                    r#"mutation ($id: ID!, $name: String!) { renameWorkflow(input: {id: $id, name: $name}) { id } }"#,
                    json!({"id": id, "name": name}),
                )
                .await;
        }
    };

    rename(a.clone(), "A1").await;
    assert_eq!(
        next_messages(&mut one, 1, "/workflowChanged/name").await,
        [("a1".to_string(), json!("A1"))]
    );
    assert_eq!(
        next_messages(&mut two, 2, "/workflowChanged/name").await,
        [
            ("a2".to_string(), json!("A1")),
            ("a3".to_string(), json!("A1"))
        ]
    );
    rename(b.clone(), "B1").await;
    rename(theirs.clone(), "T1").await;
    rename(a.clone(), "A2").await;
    // Socket one sees B1 for b1, then A2 for a1, and nothing of the other
    // tenant; socket two sees only A2, twice.
    let seen = next_messages(&mut one, 2, "/workflowChanged/name").await;
    assert_eq!(
        seen,
        [
            ("a1".to_string(), json!("A2")),
            ("b1".to_string(), json!("B1"))
        ]
    );
    assert_eq!(
        next_messages(&mut two, 2, "/workflowChanged/name").await,
        [
            ("a2".to_string(), json!("A2")),
            ("a3".to_string(), json!("A2"))
        ]
    );
    assert_eq!(
        next_messages(&mut three, 1, "/workflowChanged/name").await,
        [("t".to_string(), json!("T1"))]
    );
    // Nothing else was queued for socket three: its next message is its
    // next change.
    rename(theirs.clone(), "T2").await;
    assert_eq!(
        next_messages(&mut three, 1, "/workflowChanged/name").await,
        [("t".to_string(), json!("T2"))]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_of_many_workflows_each_see_their_own_changes_on_postgres() {
    subscribers_of_many_workflows_each_see_their_own_changes(TestEnv::postgres().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_of_many_workflows_each_see_their_own_changes_on_sqlite() {
    subscribers_of_many_workflows_each_see_their_own_changes(TestEnv::sqlite().await).await;
}
