//! Entities as of any moment: a position, a time, or their own version,
//! folded from the log by the domain and shown as the read models show
//! them; and what changed between two versions of a workflow.

use serde_json::{json, Value};
use toolhub_domain::Role;
use toolhub_tests::{first_error_code, token, TestEnv, TestServer};

const WORKFLOW_FIELDS: &str = "id name description definition definitionVersion version archived
    triggers createdBy createdAt updatedBy updatedAt";

fn node(id: &str, value: i64) -> Value {
    json!({"id": id, "type": "transform", "params": {"template": {"value": value}}})
}

/// Runs a mutation and returns its `position`.
async fn change(server: &TestServer, token: &str, field: &str, input: Value) -> String {
    let (input_type, selection) = match field {
        "createWorkflow" => ("CreateWorkflowInput", "id position"),
        "updateWorkflow" => ("UpdateWorkflowInput", "id position"),
        "renameWorkflow" => ("RenameWorkflowInput", "id position"),
        "archiveWorkflow" | "restoreWorkflow" => ("WorkflowIdInput", "id position"),
        "revertWorkflow" => ("RevertWorkflowInput", "id position"),
        "createSecret" => ("CreateSecretInput", "id position"),
        "describeSecret" => ("DescribeSecretInput", "id position"),
        "rotateSecret" => ("RotateSecretInput", "id position"),
        "deleteSecret" => ("DeleteSecretInput", "id position"),
        "registerMcpServer" => ("RegisterMcpServerInput", "id position"),
        "disableMcpServer" => ("McpServerIdInput", "id position"),
        other => panic!("no mutation {other}"),
    };
    let data = server
        .ok(
            token,
            &format!("mutation ($i: {input_type}!) {{ {field}(input: $i) {{ {selection} }} }}"),
            json!({ "i": input }),
        )
        .await;
    data[field]["position"]
        .as_str()
        .expect("a position")
        .to_string()
}

async fn live(server: &TestServer, token: &str, query: &str, id: &str, position: &str) -> Value {
    server
        .ok(token, query, json!({"id": id, "c": {"atLeast": position}}))
        .await
}

async fn history_is_queryable_as_of_any_moment(env: TestEnv) {
    let server = env.server().await;
    let editor = token("ada", "acme", Role::Editor);
    let other = token("mallory", "globex", Role::Admin);
    let live_query = format!(
        "query ($id: ID!, $c: Consistency) {{ workflow(id: $id, consistency: $c) {{ {WORKFLOW_FIELDS} }} }}"
    );
    let as_of_query = format!(
        "query ($id: ID!, $a: AsOf!) {{ workflow(id: $id, asOf: $a) {{ {WORKFLOW_FIELDS} }} }}"
    );

    // Something older than the workflow, for "before it existed".
    let before = change(
        &server,
        &editor,
        "createWorkflow",
        json!({"name": "older", "definition": {"nodes": [node("x", 0)], "edges": []}}),
    )
    .await;
    let created = server
        .ok(
            &editor,
            "mutation ($i: CreateWorkflowInput!) { createWorkflow(input: $i) { id position } }",
            json!({"i": {"name": "Report", "description": "first",
                          "definition": {"nodes": [node("a", 1)], "edges": []}}}),
        )
        .await;
    let id = created["createWorkflow"]["id"]
        .as_str()
        .expect("an id")
        .to_string();
    let first = created["createWorkflow"]["position"]
        .as_str()
        .expect("a position")
        .to_string();
    // What the read models show right after each change ...
    let mut shown = vec![live(&server, &editor, &live_query, &id, &first).await];
    let mut positions = vec![first];
    let two = json!({"nodes": [node("a", 2), node("b", 3)], "edges": [{"from": "a", "to": "b"}]});
    for (field, input) in [
        (
            "updateWorkflow",
            json!({"id": id, "definition": two, "comment": "add b"}),
        ),
        ("renameWorkflow", json!({"id": id, "name": "Weekly report"})),
        ("archiveWorkflow", json!({"id": id})),
        ("restoreWorkflow", json!({"id": id})),
        (
            "revertWorkflow",
            json!({"id": id, "toVersion": 1, "comment": "undo"}),
        ),
        ("renameWorkflow", json!({"id": id, "name": "Report again"})),
    ] {
        let position = change(&server, &editor, field, input).await;
        shown.push(live(&server, &editor, &live_query, &id, &position).await);
        positions.push(position);
    }
    // ... is what the workflow is as of that change, by position, by its
    // version and by the time it was recorded.
    for (n, (position, live)) in positions.iter().zip(&shown).enumerate() {
        let version = live["workflow"]["version"].as_i64().expect("a version");
        assert_eq!(version, n as i64 + 1, "one event per change");
        for as_of in [
            json!({"position": position}),
            json!({"version": version}),
            json!({"time": live["workflow"]["updatedAt"]}),
        ] {
            let then = server
                .ok(&editor, &as_of_query, json!({"id": id, "a": as_of}))
                .await;
            assert_eq!(then, *live, "as of {as_of}");
            // Another tenant finds nothing at any point.
            let (_, body) = server
                .post(Some(&other), &as_of_query, json!({"id": id, "a": as_of}))
                .await;
            assert_eq!(first_error_code(&body), "NOT_FOUND", "{body}");
        }
    }
    // Spot checks of what the fold shows.
    assert_eq!(shown[1]["workflow"]["definitionVersion"], 2);
    assert_eq!(shown[3]["workflow"]["archived"], true);
    assert_eq!(shown[5]["workflow"]["definitionVersion"], 3);
    assert_eq!(
        shown[5]["workflow"]["definition"], shown[0]["workflow"]["definition"],
        "the revert brought version 1 back"
    );
    // Before it existed, it does not exist.
    for as_of in [
        json!({"position": before}),
        json!({"time": "2000-01-01T00:00:00Z"}),
    ] {
        let (_, body) = server
            .post(Some(&editor), &as_of_query, json!({"id": id, "a": as_of}))
            .await;
        assert_eq!(first_error_code(&body), "NOT_FOUND", "{body}");
    }
    // Past its last event, it is as it is now.
    let far = server
        .ok(
            &editor,
            &as_of_query,
            json!({"id": id, "a": {"version": 1000}}),
        )
        .await;
    assert_eq!(far, shown[shown.len() - 1]);
    // Exactly one way to name the moment.
    for as_of in [
        json!({}),
        json!({"version": 1, "position": positions[0]}),
        json!({"version": 0}),
        json!({"position": "nonsense"}),
    ] {
        let (_, body) = server
            .post(Some(&editor), &as_of_query, json!({"id": id, "a": as_of}))
            .await;
        assert_eq!(first_error_code(&body), "VALIDATION", "{as_of}: {body}");
    }

    // What changed from definition version 1 to 2, and back in 3.
    let diff_query =
        "query ($id: ID!, $from: Int!, $to: Int!) { workflowDiff(id: $id, from: $from, to: $to) {
        patch addedNodes removedNodes changedNodes addedEdges removedEdges } }";
    let diff = server
        .ok(&editor, diff_query, json!({"id": id, "from": 1, "to": 2}))
        .await["workflowDiff"]
        .clone();
    assert_eq!(diff["addedNodes"], json!(["b"]));
    assert_eq!(diff["removedNodes"], json!([]));
    assert_eq!(diff["changedNodes"], json!(["a"]));
    assert_eq!(diff["addedEdges"], json!([{"from": "a", "to": "b"}]));
    assert_eq!(diff["removedEdges"], json!([]));
    let ops: Vec<&str> = diff["patch"]
        .as_array()
        .expect("a JSON Patch")
        .iter()
        .filter_map(|op| op["op"].as_str())
        .collect();
    assert!(ops.contains(&"add") && ops.contains(&"replace"), "{diff}");
    let back = server
        .ok(&editor, diff_query, json!({"id": id, "from": 2, "to": 3}))
        .await["workflowDiff"]
        .clone();
    assert_eq!(back["removedNodes"], json!(["b"]));
    assert_eq!(back["removedEdges"], json!([{"from": "a", "to": "b"}]));
    let same = server
        .ok(&editor, diff_query, json!({"id": id, "from": 1, "to": 3}))
        .await["workflowDiff"]
        .clone();
    assert_eq!(same["patch"], json!([]), "version 3 is version 1 again");
    let (_, body) = server
        .post(
            Some(&editor),
            diff_query,
            json!({"id": id, "from": 1, "to": 9}),
        )
        .await;
    assert_eq!(first_error_code(&body), "VALIDATION", "{body}");
    let (_, body) = server
        .post(
            Some(&other),
            diff_query,
            json!({"id": id, "from": 1, "to": 2}),
        )
        .await;
    assert_eq!(first_error_code(&body), "NOT_FOUND", "{body}");
}

#[tokio::test]
async fn on_postgres_history_is_queryable_as_of_any_moment() {
    history_is_queryable_as_of_any_moment(TestEnv::postgres().await).await;
}

#[tokio::test]
async fn on_sqlite_history_is_queryable_as_of_any_moment() {
    history_is_queryable_as_of_any_moment(TestEnv::sqlite().await).await;
}

async fn secrets_and_servers_as_of(env: TestEnv) {
    let server = env.server().await;
    let admin = token("grace", "acme", Role::Admin);
    let other = token("mallory", "globex", Role::Admin);
    let secret_fields = "id name description rotationCount version createdBy createdAt updatedAt";
    let live_secret = format!(
        "query ($id: ID!, $c: Consistency) {{ secret(id: $id, consistency: $c) {{ {secret_fields} }} }}"
    );
    let secret_then = format!(
        "query ($id: ID!, $a: AsOf!) {{ secret(id: $id, asOf: $a) {{ {secret_fields} }} }}"
    );
    let created = server
        .ok(
            &admin,
            "mutation ($i: CreateSecretInput!) { createSecret(input: $i) { id position } }",
            json!({"i": {"name": "TOKEN", "description": "v1", "value": "first-value"}}),
        )
        .await;
    let id = created["createSecret"]["id"]
        .as_str()
        .expect("an id")
        .to_string();
    let first = created["createSecret"]["position"]
        .as_str()
        .expect("a position")
        .to_string();
    let mut shown = vec![live(&server, &admin, &live_secret, &id, &first).await];
    let mut positions = vec![first];
    for (field, input) in [
        ("describeSecret", json!({"id": id, "description": "v2"})),
        ("rotateSecret", json!({"id": id, "value": "second-value"})),
    ] {
        let position = change(&server, &admin, field, input).await;
        shown.push(live(&server, &admin, &live_secret, &id, &position).await);
        positions.push(position);
    }
    let deleted = change(&server, &admin, "deleteSecret", json!({"id": id})).await;
    for (position, live) in positions.iter().zip(&shown) {
        let then = server
            .ok(
                &admin,
                &secret_then,
                json!({"id": id, "a": {"position": position}}),
            )
            .await;
        assert_eq!(then, *live);
        assert!(!then.to_string().contains("value"), "never a value: {then}");
        let (_, body) = server
            .post(
                Some(&other),
                &secret_then,
                json!({"id": id, "a": {"position": position}}),
            )
            .await;
        assert_eq!(first_error_code(&body), "NOT_FOUND", "{body}");
    }
    assert_eq!(shown[2]["secret"]["rotationCount"], 1);
    // Deleted, it is gone as of then, as it is now.
    let (_, body) = server
        .post(
            Some(&admin),
            &secret_then,
            json!({"id": id, "a": {"position": deleted}}),
        )
        .await;
    assert_eq!(first_error_code(&body), "NOT_FOUND", "{body}");

    let server_fields = "id name transport enabled version createdAt updatedAt";
    let registered = server
        .ok(
            &admin,
            "mutation ($i: RegisterMcpServerInput!) { registerMcpServer(input: $i) { id position } }",
            json!({"i": {"name": "tools", "transport": {"kind": "streamable_http",
                "url": "https://bot:hunter2@mcp.example.com/mcp", "headers": {"Authorization": "Bearer abc"}}}}),
        )
        .await;
    let server_id = registered["registerMcpServer"]["id"]
        .as_str()
        .expect("an id")
        .to_string();
    let first = registered["registerMcpServer"]["position"]
        .as_str()
        .expect("a position")
        .to_string();
    let live_server = format!(
        "query ($id: ID!, $c: Consistency) {{ mcpServer(id: $id, consistency: $c) {{ {server_fields} }} }}"
    );
    let server_then = format!(
        "query ($id: ID!, $a: AsOf!) {{ mcpServer(id: $id, asOf: $a) {{ {server_fields} }} }}"
    );
    let registered_live = live(&server, &admin, &live_server, &server_id, &first).await;
    let disabled = change(
        &server,
        &admin,
        "disableMcpServer",
        json!({"id": server_id}),
    )
    .await;
    let disabled_live = live(&server, &admin, &live_server, &server_id, &disabled).await;
    for (position, now, enabled) in [
        (&first, registered_live, true),
        (&disabled, disabled_live, false),
    ] {
        let then = server
            .ok(
                &admin,
                &server_then,
                json!({"id": server_id, "a": {"position": position}}),
            )
            .await;
        assert_eq!(then, now);
        assert_eq!(then["mcpServer"]["enabled"], enabled);
        assert!(!then.to_string().contains("hunter2") && !then.to_string().contains("abc\""));
    }
}

#[tokio::test]
async fn on_postgres_secrets_and_servers_as_of() {
    secrets_and_servers_as_of(TestEnv::postgres().await).await;
}

#[tokio::test]
async fn on_sqlite_secrets_and_servers_as_of() {
    secrets_and_servers_as_of(TestEnv::sqlite().await).await;
}

async fn an_execution_steps_back_through_its_timeline(env: TestEnv) {
    let server = env.server().await;
    let editor = token("ada", "acme", Role::Editor);
    let workflow = server
        .create_workflow(
            &editor,
            "Two steps",
            json!({"nodes": [node("a", 1), node("b", 2)], "edges": [{"from": "a", "to": "b"}]}),
        )
        .await;
    let execution = server.start_execution(&editor, &workflow, json!({})).await;
    let finished = server
        .wait_finished(&editor, &execution, std::time::Duration::from_secs(15))
        .await;
    assert_eq!(finished["status"], "COMPLETED", "{finished:#}");
    let entry = "sequence position eventType recordedAt actor status pausedAt
        nodes { id state attempt } outputs";
    let data = server
        .ok(
            &editor,
            &format!(
                "query ($id: ID!) {{ execution(id: $id) {{
                    timeline {{ {entry} }}
                    first: at(sequence: 1) {{ {entry} }}
                    never: at(time: \"2000-01-01T00:00:00Z\") {{ sequence }} }} }}"
            ),
            json!({"id": execution}),
        )
        .await;
    let timeline = data["execution"]["timeline"]
        .as_array()
        .expect("a timeline");
    assert!(timeline.len() >= 4, "{data:#}");
    for (n, entry) in timeline.iter().enumerate() {
        assert_eq!(entry["sequence"], n as u64 + 1, "{data:#}");
    }
    assert_eq!(timeline[0]["eventType"], "ExecutionStarted");
    assert_eq!(timeline[0]["actor"], "ada");
    assert_eq!(timeline[0]["status"], "RUNNING");
    assert_eq!(data["execution"]["first"], timeline[0]);
    assert_eq!(data["execution"]["never"], Value::Null);
    let last = &timeline[timeline.len() - 1];
    assert_eq!(last["status"], "COMPLETED");
    assert_eq!(
        last["nodes"],
        json!([{"id": "a", "state": "DONE", "attempt": 1}, {"id": "b", "state": "DONE", "attempt": 1}])
    );
    assert_eq!(
        last["outputs"],
        json!({"a": {"value": 1}, "b": {"value": 2}})
    );
    // The slider in between: a is done before b is, and outputs only grow.
    let a_done = timeline
        .iter()
        .position(|e| e["outputs"].get("a").is_some())
        .expect("a finishes");
    let b_done = timeline
        .iter()
        .position(|e| e["outputs"].get("b").is_some())
        .expect("b finishes");
    assert!(a_done < b_done, "{data:#}");
    assert_eq!(timeline[a_done]["nodes"][0]["state"], "DONE");
    assert_ne!(timeline[a_done]["nodes"][1]["state"], "DONE");
    // Positions follow the log.
    let positions: Vec<&str> = timeline
        .iter()
        .filter_map(|e| e["position"].as_str())
        .collect();
    assert_eq!(positions.len(), timeline.len());
    // Bad arguments and other tenants.
    for (args, field) in [
        ("sequence: 0", "sequence"),
        ("sequence: 1, time: \"2026-01-01T00:00:00Z\"", "at"),
    ] {
        let (_, body) = server
            .post(
                Some(&editor),
                &format!(
                    "query ($id: ID!) {{ execution(id: $id) {{ at({args}) {{ sequence }} }} }}"
                ),
                json!({"id": execution}),
            )
            .await;
        assert_eq!(first_error_code(&body), "VALIDATION", "{body}");
        assert_eq!(body["errors"][0]["extensions"]["field"], field, "{body}");
    }
    let other = token("mallory", "globex", Role::Admin);
    let (_, body) = server
        .post(
            Some(&other),
            "query ($id: ID!) { execution(id: $id) { timeline { sequence } } }",
            json!({"id": execution}),
        )
        .await;
    assert_eq!(first_error_code(&body), "NOT_FOUND", "{body}");
}

#[tokio::test]
async fn on_postgres_an_execution_steps_back_through_its_timeline() {
    an_execution_steps_back_through_its_timeline(TestEnv::postgres().await).await;
}

#[tokio::test]
async fn on_sqlite_an_execution_steps_back_through_its_timeline() {
    an_execution_steps_back_through_its_timeline(TestEnv::sqlite().await).await;
}

/// Every field of an execution as of a point, and of today's.
const EXECUTION_AS_OF: &str = "id workflowId workflowVersion status trigger input output error
    version startedBy startedAt finishedAt updatedAt pausedAt breakpoints deadline
    forkedFrom { executionId fromNode }
    steps { nodeId attempt status input output error scheduledAt startedAt finishedAt copiedFrom }
    nodes { id state attempt breakpoint }";

async fn an_execution_as_of_any_moment(env: TestEnv) {
    let server = env.server().await;
    let editor = token("ada", "acme", Role::Editor);
    let workflow = server
        .create_workflow(&editor, "Branching", toolhub_tests::branching_definition())
        .await;
    // A run that branches, skips a node, pauses at a breakpoint and is
    // resumed: every kind of state a debugger steps through.
    let execution = server
        .start_execution_with(
            &editor,
            json!({"workflowId": workflow, "input": {"n": 5, "name": "Ada"}, "breakpoints": ["done"]}),
        )
        .await;
    server
        .wait_execution(
            &editor,
            &execution,
            std::time::Duration::from_secs(15),
            |e| e["status"] == "PAUSED",
        )
        .await;
    server
        .ok(
            &editor,
            "mutation ($i: ResumeExecutionInput!) { resumeExecution(input: $i) { id } }",
            json!({"i": {"id": execution}}),
        )
        .await;
    let finished = server
        .wait_finished(&editor, &execution, std::time::Duration::from_secs(15))
        .await;
    assert_eq!(finished["status"], "COMPLETED", "{finished:#}");

    let data = server
        .ok(
            &editor,
            &format!(
                "query ($id: ID!) {{ execution(id: $id) {{ {EXECUTION_AS_OF}
                    timeline(first: 500) {{ sequence position recordedAt status pausedAt
                        nodes {{ id state attempt breakpoint }} outputs }} }} }}"
            ),
            json!({"id": execution}),
        )
        .await;
    let mut now = data["execution"].clone();
    let timeline = now["timeline"].as_array().expect("a timeline").clone();
    now.as_object_mut().expect("an object").remove("timeline");
    let last = timeline.len();
    assert!(last >= 10, "{timeline:#?}");
    assert!(
        timeline.iter().any(|e| e["status"] == "PAUSED"),
        "{timeline:#?}"
    );

    let as_of = |at: Value| {
        let server = &server;
        let editor = &editor;
        let execution = &execution;
        async move {
            server
                .ok(
                    editor,
                    &format!(
                        "query ($id: ID!, $at: AsOf!) {{ execution(id: $id, asOf: $at) {{
                            {EXECUTION_AS_OF} timeline(first: 500) {{ sequence }} }} }}"
                    ),
                    json!({"id": execution, "at": at}),
                )
                .await["execution"]
                .clone()
        }
    };
    let other = token("mallory", "globex", Role::Admin);
    let mut steps_before = 0;
    for entry in &timeline {
        let k = entry["sequence"].as_u64().expect("a sequence");
        let mut then = as_of(json!({"version": k})).await;
        // The timeline as of then ends then.
        let seen: Vec<u64> = then["timeline"]
            .as_array()
            .expect("a timeline")
            .iter()
            .map(|e| e["sequence"].as_u64().expect("a sequence"))
            .collect();
        assert_eq!(seen, (1..=k).collect::<Vec<_>>());
        then.as_object_mut().expect("an object").remove("timeline");
        // What the timeline says of that moment, the as-of read says too.
        assert_eq!(then["version"], k);
        assert_eq!(then["status"], entry["status"], "at {k}: {then:#}");
        assert_eq!(then["pausedAt"], entry["pausedAt"], "at {k}: {then:#}");
        assert_eq!(then["nodes"], entry["nodes"], "at {k}: {then:#}");
        let steps = then["steps"].as_array().expect("steps");
        assert!(steps.len() >= steps_before, "steps only grow: at {k}");
        steps_before = steps.len();
        for step in steps {
            let node = step["nodeId"].as_str().expect("a node");
            if step["status"] == "succeeded" {
                assert_eq!(step["output"], entry["outputs"][node], "at {k}: {then:#}");
            } else {
                assert!(entry["outputs"].get(node).is_none(), "at {k}: {then:#}");
            }
        }
        assert_eq!(then["updatedAt"], entry["recordedAt"], "at {k}");
        // By position, the same point.
        let by_position = as_of(json!({"position": entry["position"]})).await;
        let mut by_position = by_position;
        by_position
            .as_object_mut()
            .expect("an object")
            .remove("timeline");
        assert_eq!(by_position, then, "at {k}");
        // By time: the last event recorded at or before it.
        let at_time = timeline
            .iter()
            .rev()
            .find(|e| e["recordedAt"] == entry["recordedAt"])
            .expect("this entry");
        let mut by_time = as_of(json!({"time": entry["recordedAt"]})).await;
        by_time
            .as_object_mut()
            .expect("an object")
            .remove("timeline");
        assert_eq!(by_time["version"], at_time["sequence"], "at {k}");
        // Another tenant's run does not exist, at any point.
        let (_, body) = server
            .post(
                Some(&other),
                "query ($id: ID!, $at: AsOf!) { execution(id: $id, asOf: $at) { id } }",
                json!({"id": execution, "at": {"version": k}}),
            )
            .await;
        assert_eq!(first_error_code(&body), "NOT_FOUND", "{body}");
        if k as usize == last {
            // At its last event, exactly what the read model shows today:
            // the in-memory fold and the projection agree field by field.
            assert_eq!(then, now);
        }
    }
    assert_eq!(timeline[0]["status"], "RUNNING");
    // Past the end, as today; before the start, nothing.
    let mut later = as_of(json!({"version": 10_000})).await;
    later.as_object_mut().expect("an object").remove("timeline");
    assert_eq!(later, now);
    let (_, body) = server
        .post(
            Some(&editor),
            "query ($id: ID!) { execution(id: $id, asOf: {time: \"2000-01-01T00:00:00Z\"}) { id } }",
            json!({"id": execution}),
        )
        .await;
    assert_eq!(first_error_code(&body), "NOT_FOUND", "{body}");
    // Bad points.
    for (at, field) in [
        (json!({}), "asOf"),
        (json!({"version": 0}), "asOf.version"),
        (
            json!({"version": 1, "time": "2026-01-01T00:00:00Z"}),
            "asOf",
        ),
        (json!({"position": "not a position"}), "asOf.position"),
    ] {
        let (_, body) = server
            .post(
                Some(&editor),
                "query ($id: ID!, $at: AsOf!) { execution(id: $id, asOf: $at) { id } }",
                json!({"id": execution, "at": at}),
            )
            .await;
        assert_eq!(first_error_code(&body), "VALIDATION", "{body}");
        assert_eq!(body["errors"][0]["extensions"]["field"], field, "{body}");
    }
}

#[tokio::test]
async fn on_postgres_an_execution_as_of_any_moment() {
    an_execution_as_of_any_moment(TestEnv::postgres().await).await;
}

#[tokio::test]
async fn on_sqlite_an_execution_as_of_any_moment() {
    an_execution_as_of_any_moment(TestEnv::sqlite().await).await;
}
