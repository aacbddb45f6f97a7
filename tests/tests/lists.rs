//! Lists read the large JSON documents of their rows (definitions,
//! triggers, inputs, outputs, payloads) only when their query selects
//! them. What a list shows must not depend on how the query selects a
//! field: directly, through a fragment, an inline fragment, an alias, or
//! `nodes` instead of `edges`. On both backends.

use std::time::Duration;

use serde_json::{json, Value};
use toolhub_domain::Role;
use toolhub_tests::{branching_definition, token, TestEnv};

const SET_TRIGGERS: &str =
    "mutation ($input: SetWorkflowTriggersInput!) { setWorkflowTriggers(input: $input) { id } }";

/// Each node's `field` under `data.<list>`, through `edges { node }` or
/// `nodes`, by id.
fn by_id(data: &Value, list: &str, field: &str) -> Vec<(String, Value)> {
    let nodes: Vec<&Value> = match data[list]["edges"].as_array() {
        Some(edges) => edges.iter().map(|e| &e["node"]).collect(),
        None => data[list]["nodes"]
            .as_array()
            .unwrap_or_else(|| panic!("no {list} in {data}"))
            .iter()
            .collect(),
    };
    nodes
        .into_iter()
        .map(|n| {
            let key = n["id"].as_str().or(n["position"].as_str()).unwrap();
            (key.to_string(), n[field].clone())
        })
        .collect()
}

async fn lists_show_their_documents_however_a_query_selects_them(env: TestEnv) {
    let server = env.server().await;
    let editor = token("ada", "acme", Role::Editor);
    let admin = token("root", "acme", Role::Admin);

    let mut workflows = Vec::new();
    for i in 0..3 {
        let id = server
            .create_workflow(&editor, &format!("Branches {i}"), branching_definition())
            .await;
        workflows.push(id);
    }
    server
        .ok(
            &editor,
            SET_TRIGGERS,
            json!({"input": {"id": workflows[1], "triggers": [
                {"cron": {"schedule": "0 9 * * MON-FRI", "timezone": "Europe/Paris"}}]}}),
        )
        .await;
    let mut executions = Vec::new();
    for n in [1, 5] {
        let id = server
            .start_execution(&editor, &workflows[0], json!({"n": n, "name": "Ada"}))
            .await;
        server
            .wait_finished(&editor, &id, Duration::from_secs(20))
            .await;
        executions.push(id);
    }

    // The documents as the single-entity reads show them.
    let mut definitions = Vec::new();
    for id in &workflows {
        let data = server
            .ok(
                &editor,
                "query ($id: ID!) { workflow(id: $id) { id definition triggers nextRuns(count: 2) } }",
                json!({"id": id}),
            )
            .await;
        definitions.push((id.clone(), data["workflow"].clone()));
    }
    assert_ne!(definitions[1].1["triggers"], json!([]));
    assert_eq!(definitions[1].1["nextRuns"].as_array().unwrap().len(), 2);

    let workflow_queries = [
        "{ workflows(first: 10) { edges { node { id definition triggers nextRuns(count: 2) } } } }",
        "{ workflows(first: 10) { edges { node { id ...Documents } } } } fragment Documents on Workflow { definition triggers nextRuns(count: 2) }",
        "{ workflows(first: 10) { edges { node { id ... on Workflow { definition triggers nextRuns(count: 2) } } } } }",
        "{ workflows(first: 10) { nodes { id definition triggers nextRuns(count: 2) } } }",
        "{ workflows(first: 10) { edges { node { id d: definition definition: name triggers nextRuns(count: 2) } } } }",
    ];
    for (i, query) in workflow_queries.iter().enumerate() {
        let data = server.ok(&editor, query, json!({})).await;
        for (id, expected) in &definitions {
            let shown = |field: &str| {
                by_id(&data, "workflows", field)
                    .into_iter()
                    .find(|(shown, _)| shown == id)
                    .map(|(_, v)| v)
                    .unwrap_or_else(|| panic!("query {i}: {id} is not listed: {data}"))
            };
            let definition = if i == 4 {
                shown("d")
            } else {
                shown("definition")
            };
            assert_eq!(definition, expected["definition"], "query {i}: {query}");
            assert_eq!(shown("triggers"), expected["triggers"], "query {i}");
            assert_eq!(shown("nextRuns"), expected["nextRuns"], "query {i}");
        }
    }
    // Without them, the rest is the same as with them.
    let lean = server
        .ok(
            &editor,
            "{ workflows(first: 10) { edges { node { id name version archived createdBy updatedAt } } } }",
            json!({}),
        )
        .await;
    let full = server
        .ok(
            &editor,
            "{ workflows(first: 10) { edges { node { id name version archived createdBy updatedAt definition } } } }",
            json!({}),
        )
        .await;
    let strip = |data: &Value| -> Vec<Value> {
        data["workflows"]["edges"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                let mut node = e["node"].clone();
                node.as_object_mut().unwrap().remove("definition");
                node
            })
            .collect()
    };
    assert_eq!(strip(&lean), strip(&full));
    assert_eq!(strip(&lean).len(), 3);

    // Executions: their input and output, and their steps' (read by their
    // own loader, with or without them).
    let mut runs = Vec::new();
    for id in &executions {
        let data = server
            .ok(
                &editor,
                "query ($id: ID!) { execution(id: $id) { id input output steps { nodeId status input output } } }",
                json!({"id": id}),
            )
            .await;
        assert_eq!(data["execution"]["steps"].as_array().unwrap().len(), 5);
        runs.push((id.clone(), data["execution"].clone()));
    }
    let execution_queries = [
        "{ executions(first: 10) { edges { node { id input output steps { nodeId status input output } } } } }",
        "{ executions(first: 10) { edges { node { id ...Run } } } } fragment Run on Execution { input output steps { nodeId status ...Step } } fragment Step on ExecutionStep { input output }",
        "{ executions(first: 10) { nodes { id input output steps { nodeId status input output } } } }",
    ];
    for (i, query) in execution_queries.iter().enumerate() {
        let data = server.ok(&editor, query, json!({})).await;
        for (id, expected) in &runs {
            for field in ["input", "output", "steps"] {
                let shown = by_id(&data, "executions", field)
                    .into_iter()
                    .find(|(shown, _)| shown == id)
                    .map(|(_, v)| v)
                    .unwrap();
                assert_eq!(shown, expected[field], "query {i}, {field}: {query}");
            }
        }
    }
    let lean = server
        .ok(
            &editor,
            "{ executions(first: 10) { edges { node { id status steps { nodeId status } } } } }",
            json!({}),
        )
        .await;
    for (id, expected) in &runs {
        let steps = by_id(&lean, "executions", "steps")
            .into_iter()
            .find(|(shown, _)| shown == id)
            .map(|(_, v)| v)
            .unwrap();
        let expected: Vec<Value> = expected["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| json!({"nodeId": s["nodeId"], "status": s["status"]}))
            .collect();
        assert_eq!(steps, json!(expected));
    }

    // Audit entries: their payloads.
    let full = server
        .ok(
            &admin,
            "{ auditLog(first: 100) { edges { node { position eventType payload } } } }",
            json!({}),
        )
        .await;
    let entries = by_id(&full, "auditLog", "payload");
    assert!(entries.len() > 10, "{full}");
    assert!(entries.iter().all(|(_, p)| p.is_object()), "{full}");
    for query in [
        "{ auditLog(first: 100) { edges { node { position eventType ... on AuditEntry { payload } } } } }",
        "{ auditLog(first: 100) { nodes { position payload } } }",
    ] {
        let data = server.ok(&admin, query, json!({})).await;
        assert_eq!(by_id(&data, "auditLog", "payload"), entries, "{query}");
    }
    let lean = server
        .ok(
            &admin,
            "{ auditLog(first: 100) { edges { node { position eventType } } } }",
            json!({}),
        )
        .await;
    assert_eq!(
        by_id(&lean, "auditLog", "eventType"),
        by_id(&full, "auditLog", "eventType")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_show_their_documents_however_a_query_selects_them_on_postgres() {
    lists_show_their_documents_however_a_query_selects_them(TestEnv::postgres().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_show_their_documents_however_a_query_selects_them_on_sqlite() {
    lists_show_their_documents_however_a_query_selects_them(TestEnv::sqlite().await).await;
}

/// A mutation reads its entity back only when its payload shows it; the
/// write is there either way.
async fn a_mutation_reads_back_what_its_payload_shows(env: TestEnv) {
    let server = env.server().await;
    let editor = token("ada", "acme", Role::Editor);
    let data = server
        .ok(
            &editor,
            "mutation ($input: CreateWorkflowInput!) { createWorkflow(input: $input) { id version position } }",
            json!({"input": {"name": "Bare", "definition": branching_definition()}}),
        )
        .await;
    let id = data["createWorkflow"]["id"].as_str().unwrap().to_string();
    assert_eq!(data["createWorkflow"]["version"], 1);
    // Read your write, right after the bare payload.
    let read = server
        .ok(
            &editor,
            "query ($id: ID!) { workflow(id: $id) { name } }",
            json!({"id": id}),
        )
        .await;
    assert_eq!(read["workflow"]["name"], "Bare");
    let data = server
        .ok(
            &editor,
            "mutation ($input: RenameWorkflowInput!) { renameWorkflow(input: $input) { id workflow { name definition } } }",
            json!({"input": {"id": id, "name": "Renamed"}}),
        )
        .await;
    assert_eq!(data["renameWorkflow"]["workflow"]["name"], "Renamed");
    assert_eq!(
        data["renameWorkflow"]["workflow"]["definition"]["nodes"]
            .as_array()
            .unwrap()
            .len(),
        5
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mutation_reads_back_what_its_payload_shows_on_postgres() {
    a_mutation_reads_back_what_its_payload_shows(TestEnv::postgres().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mutation_reads_back_what_its_payload_shows_on_sqlite() {
    a_mutation_reads_back_what_its_payload_shows(TestEnv::sqlite().await).await;
}
