//! Workflow queries and mutations through GraphQL, on PostgreSQL.

use serde_json::{json, Value};
use toolhub_domain::Role;
use toolhub_tests::{hello_definition, tiny_definition, token, TestEnv, TestServer};

const CREATE: &str = r#"
mutation ($input: CreateWorkflowInput!) {
  createWorkflow(input: $input) {
    id version position
    workflow { id name description definitionVersion version archived definition createdBy }
  }
}"#;

const UPDATE: &str = r#"
mutation ($input: UpdateWorkflowInput!) {
  updateWorkflow(input: $input) { id version position workflow { definitionVersion version } }
}"#;

async fn create(server: &TestServer, token: &str, name: &str) -> Value {
    let data = server
        .ok(
            token,
            CREATE,
            json!({ "input": { "name": name, "description": "d", "definition": hello_definition() } }),
        )
        .await;
    data["createWorkflow"].clone()
}

#[tokio::test]
async fn creating_a_workflow_returns_it_as_the_read_model_shows_it() {
    let env = TestEnv::postgres().await;
    let server = env.server().await;
    let editor = token("ada", "acme", Role::Editor);
    let created = create(&server, &editor, "Hello").await;
    assert_eq!(created["version"], 1);
    assert!(created["position"].is_string());
    let workflow = &created["workflow"];
    assert_eq!(workflow["id"], created["id"]);
    assert_eq!(workflow["name"], "Hello");
    assert_eq!(workflow["definitionVersion"], 1);
    assert_eq!(workflow["createdBy"], "ada");
    assert_eq!(workflow["definition"]["nodes"][0]["id"], "fetch");
}

#[tokio::test]
async fn updating_a_workflow_adds_a_version_and_lists_every_version() {
    let env = TestEnv::postgres().await;
    let server = env.server().await;
    let editor = token("ada", "acme", Role::Editor);
    let created = create(&server, &editor, "Hello").await;
    let id = created["id"].as_str().unwrap();
    let updated = server
        .ok(
            &editor,
            UPDATE,
            json!({ "input": {
                "id": id,
                "definition": tiny_definition("https://example.com/v2"),
                "comment": "smaller",
                "expectedVersion": 1
            } }),
        )
        .await;
    assert_eq!(updated["updateWorkflow"]["version"], 2);
    assert_eq!(
        updated["updateWorkflow"]["workflow"]["definitionVersion"],
        2
    );
    let position = updated["updateWorkflow"]["position"].as_str().unwrap();

    let data = server
        .ok(
            &editor,
            r#"query ($id: ID!, $at: String!) {
                 workflow(id: $id, consistency: {atLeast: $at}) {
                   name
                   versions(first: 10) {
                     edges { cursor node { version comment actor definition } }
                     pageInfo { hasNextPage endCursor }
                   }
                 }
               }"#,
            json!({ "id": id, "at": position }),
        )
        .await;
    let edges = data["workflow"]["versions"]["edges"].as_array().unwrap();
    assert_eq!(edges.len(), 2, "{data}");
    // Newest first.
    assert_eq!(edges[0]["node"]["version"], 2);
    assert_eq!(edges[1]["node"]["version"], 1);
    assert_eq!(edges[0]["node"]["comment"], "smaller");
    assert_eq!(edges[0]["node"]["actor"], "ada");
    assert_eq!(
        data["workflow"]["versions"]["pageInfo"]["hasNextPage"],
        false
    );
}

#[tokio::test]
async fn a_list_of_workflows_pages_each_workflows_versions_on_its_own() {
    let env = TestEnv::postgres().await;
    let server = env.server().await;
    let editor = token("ada", "acme", Role::Editor);
    // Three workflows with one, three and two versions.
    let mut ids = Vec::new();
    let mut last = String::new();
    for (name, updates) in [("One", 0), ("Three", 2), ("Two", 1)] {
        let created = create(&server, &editor, name).await;
        let id = created["id"].as_str().unwrap().to_string();
        last = created["position"].as_str().unwrap().to_string();
        for n in 0..updates {
            let updated = server
                .ok(
                    &editor,
                    UPDATE,
                    json!({ "input": { "id": id, "definition": tiny_definition(&format!("https://example.com/{n}")) } }),
                )
                .await;
            last = updated["updateWorkflow"]["position"]
                .as_str()
                .unwrap()
                .to_string();
        }
        ids.push(id);
    }
    let data = server
        .ok(
            &editor,
            r#"query ($at: String!) {
                 workflows(first: 10, consistency: {atLeast: $at}) {
                   edges { node {
                     id name
                     versions(first: 2) {
                       edges { node { workflowId version } }
                       pageInfo { hasNextPage endCursor }
                     }
                   } }
                 }
               }"#,
            json!({ "at": last }),
        )
        .await;
    let mut seen = std::collections::BTreeMap::new();
    for edge in data["workflows"]["edges"].as_array().unwrap() {
        let node = &edge["node"];
        let versions = &node["versions"];
        let numbers: Vec<u64> = versions["edges"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                assert_eq!(e["node"]["workflowId"], node["id"], "{data}");
                e["node"]["version"].as_u64().unwrap()
            })
            .collect();
        seen.insert(
            node["name"].as_str().unwrap().to_string(),
            (
                numbers,
                versions["pageInfo"]["hasNextPage"].as_bool().unwrap(),
            ),
        );
    }
    assert_eq!(seen["One"], (vec![1], false), "{data}");
    assert_eq!(seen["Two"], (vec![2, 1], false), "{data}");
    assert_eq!(seen["Three"], (vec![3, 2], true), "{data}");

    // The cursor continues where the list's page ended.
    let three = data["workflows"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["node"]["name"] == "Three")
        .unwrap();
    let cursor = three["node"]["versions"]["pageInfo"]["endCursor"].clone();
    let rest = server
        .ok(
            &editor,
            r#"query ($id: ID!, $after: String!) {
                 workflow(id: $id) { versions(first: 2, after: $after) {
                   edges { node { version } } pageInfo { hasNextPage }
                 } }
               }"#,
            json!({ "id": ids[1], "after": cursor }),
        )
        .await;
    let versions = &rest["workflow"]["versions"];
    assert_eq!(versions["edges"].as_array().unwrap().len(), 1, "{rest}");
    assert_eq!(versions["edges"][0]["node"]["version"], 1);
    assert_eq!(versions["pageInfo"]["hasNextPage"], false);
}

#[tokio::test]
async fn a_stale_expected_version_is_a_conflict() {
    let env = TestEnv::postgres().await;
    let server = env.server().await;
    let editor = token("ada", "acme", Role::Editor);
    let created = create(&server, &editor, "Hello").await;
    let id = created["id"].as_str().unwrap();
    let input = |version: u64| {
        json!({ "input": {
            "id": id,
            "definition": tiny_definition("https://example.com/x"),
            "expectedVersion": version
        } })
    };
    server.ok(&editor, UPDATE, input(1)).await;
    let code = server.error_code(Some(&editor), UPDATE, input(1)).await;
    assert_eq!(code, "CONFLICT");
}

#[tokio::test]
async fn rename_archive_restore_and_revert_work_and_refuse_what_they_must() {
    let env = TestEnv::postgres().await;
    let server = env.server().await;
    let editor = token("ada", "acme", Role::Editor);
    let created = create(&server, &editor, "Hello").await;
    let id = created["id"].as_str().unwrap().to_string();

    let rename = r#"mutation ($input: RenameWorkflowInput!) {
        renameWorkflow(input: $input) { version workflow { name } } }"#;
    let renamed = server
        .ok(
            &editor,
            rename,
            json!({ "input": { "id": id, "name": "Greeter" } }),
        )
        .await;
    assert_eq!(renamed["renameWorkflow"]["workflow"]["name"], "Greeter");
    // Renaming to a blank name is a validation error on the name.
    let (_, body) = server
        .post(
            Some(&editor),
            rename,
            json!({ "input": { "id": id, "name": "  " } }),
        )
        .await;
    assert_eq!(body["errors"][0]["extensions"]["code"], "VALIDATION");
    assert_eq!(body["errors"][0]["extensions"]["field"], "input.name");

    let archive = r#"mutation ($input: WorkflowIdInput!) {
        archiveWorkflow(input: $input) { workflow { archived } } }"#;
    let restore = r#"mutation ($input: WorkflowIdInput!) {
        restoreWorkflow(input: $input) { workflow { archived } } }"#;
    let archived = server
        .ok(&editor, archive, json!({ "input": { "id": id } }))
        .await;
    assert_eq!(archived["archiveWorkflow"]["workflow"]["archived"], true);
    // Archiving twice, or changing an archived workflow, conflicts with its
    // state.
    let code = server
        .error_code(Some(&editor), archive, json!({ "input": { "id": id } }))
        .await;
    assert_eq!(code, "CONFLICT");
    let code = server
        .error_code(
            Some(&editor),
            rename,
            json!({ "input": { "id": id, "name": "Other" } }),
        )
        .await;
    assert_eq!(code, "CONFLICT");
    let restored = server
        .ok(&editor, restore, json!({ "input": { "id": id } }))
        .await;
    assert_eq!(restored["restoreWorkflow"]["workflow"]["archived"], false);

    server
        .ok(
            &editor,
            UPDATE,
            json!({ "input": { "id": id, "definition": tiny_definition("https://example.com/2") } }),
        )
        .await;
    let revert = r#"mutation ($input: RevertWorkflowInput!) {
        revertWorkflow(input: $input) { workflow { definitionVersion definition } } }"#;
    let reverted = server
        .ok(
            &editor,
            revert,
            json!({ "input": { "id": id, "toVersion": 1, "comment": "back" } }),
        )
        .await;
    assert_eq!(
        reverted["revertWorkflow"]["workflow"]["definitionVersion"],
        3
    );
    assert_eq!(
        reverted["revertWorkflow"]["workflow"]["definition"]["nodes"][0]["type"],
        "http"
    );
    let (_, body) = server
        .post(
            Some(&editor),
            revert,
            json!({ "input": { "id": id, "toVersion": 42 } }),
        )
        .await;
    assert_eq!(body["errors"][0]["extensions"]["code"], "VALIDATION");
    assert_eq!(body["errors"][0]["extensions"]["field"], "input.toVersion");
}

#[tokio::test]
async fn an_invalid_definition_is_a_validation_error_with_its_field_and_reason() {
    let env = TestEnv::postgres().await;
    let server = env.server().await;
    let editor = token("ada", "acme", Role::Editor);
    let (_, body) = server
        .post(
            Some(&editor),
            CREATE,
            json!({ "input": { "name": "Bad", "definition": {
                "nodes": [
                    {"id": "a", "type": "delay", "params": {"milliseconds": 1}},
                    {"id": "b", "type": "delay", "params": {"milliseconds": 1}}
                ],
                "edges": [{"from": "a", "to": "b"}, {"from": "b", "to": "a"}]
            } } }),
        )
        .await;
    let error = &body["errors"][0];
    assert_eq!(error["extensions"]["code"], "VALIDATION", "{body}");
    assert_eq!(error["extensions"]["field"], "input.definition");
    assert!(error["extensions"]["reason"].as_str().unwrap().len() > 5);
}

#[tokio::test]
async fn workflows_are_listed_with_filters_and_pagination() {
    let env = TestEnv::postgres().await;
    let server = env.server().await;
    let editor = token("ada", "acme", Role::Editor);
    let mut last_position = String::new();
    for name in ["Alpha", "Beta", "Gamma"] {
        let created = create(&server, &editor, name).await;
        last_position = created["position"].as_str().unwrap().to_string();
    }
    let list = r#"query ($first: Int, $after: String, $filter: WorkflowFilterInput, $at: String!) {
        workflows(first: $first, after: $after, filter: $filter, consistency: {atLeast: $at}) {
          edges { cursor node { name } }
          pageInfo { hasNextPage endCursor }
        } }"#;
    let page1 = server
        .ok(&editor, list, json!({ "first": 2, "at": last_position }))
        .await;
    let edges = page1["workflows"]["edges"].as_array().unwrap();
    assert_eq!(edges.len(), 2);
    assert_eq!(page1["workflows"]["pageInfo"]["hasNextPage"], true);
    let after = page1["workflows"]["pageInfo"]["endCursor"].clone();
    let page2 = server
        .ok(
            &editor,
            list,
            json!({ "first": 2, "after": after, "at": last_position }),
        )
        .await;
    let rest = page2["workflows"]["edges"].as_array().unwrap();
    assert_eq!(rest.len(), 1);
    let mut names: Vec<String> = edges
        .iter()
        .chain(rest)
        .map(|e| e["node"]["name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    assert_eq!(names, ["Alpha", "Beta", "Gamma"]);

    let filtered = server
        .ok(
            &editor,
            list,
            json!({ "filter": { "nameContains": "amm" }, "at": last_position }),
        )
        .await;
    let edges = filtered["workflows"]["edges"].as_array().unwrap();
    assert_eq!(edges.len(), 1);
    assert_eq!(edges[0]["node"]["name"], "Gamma");

    // `first` above 100 is capped, not refused; below 1 is refused.
    server
        .ok(&editor, list, json!({ "first": 1000, "at": last_position }))
        .await;
    let code = server
        .error_code(
            Some(&editor),
            list,
            json!({ "first": 0, "at": last_position }),
        )
        .await;
    assert_eq!(code, "VALIDATION");
    // A cursor this API never handed out is refused.
    let code = server
        .error_code(
            Some(&editor),
            list,
            json!({ "after": "not-a-cursor", "at": last_position }),
        )
        .await;
    assert_eq!(code, "VALIDATION");
}

#[tokio::test]
async fn a_missing_workflow_is_not_found() {
    let env = TestEnv::postgres().await;
    let server = env.server().await;
    let viewer = token("vic", "acme", Role::Viewer);
    let code = server
        .error_code(
            Some(&viewer),
            "query ($id: ID!) { workflow(id: $id) { id } }",
            json!({ "id": uuid::Uuid::new_v4().to_string() }),
        )
        .await;
    assert_eq!(code, "NOT_FOUND");
    let editor = token("ada", "acme", Role::Editor);
    let code = server
        .error_code(
            Some(&editor),
            UPDATE,
            json!({ "input": { "id": uuid::Uuid::new_v4().to_string(), "definition": tiny_definition("https://e.com") } }),
        )
        .await;
    assert_eq!(code, "NOT_FOUND");
}

#[tokio::test]
async fn a_query_that_waits_for_a_mutations_position_sees_the_mutation() {
    let env = TestEnv::postgres().await;
    let server = env.server().await;
    let editor = token("ada", "acme", Role::Editor);
    for i in 0..5 {
        let created = create(&server, &editor, &format!("W{i}")).await;
        let data = server
            .ok(
                &editor,
                r#"query ($at: String!) { workflows(first: 100, consistency: {atLeast: $at}) { edges { node { id } } } }"#,
                json!({ "at": created["position"] }),
            )
            .await;
        let ids: Vec<&Value> = data["workflows"]["edges"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| &e["node"]["id"])
            .collect();
        assert!(
            ids.contains(&&created["id"]),
            "read-your-writes failed at {i}"
        );
    }
    // A position that is not one is a validation error.
    let code = server
        .error_code(
            Some(&editor),
            r#"{ workflows(consistency: {atLeast: "soon"}) { edges { cursor } } }"#,
            json!({}),
        )
        .await;
    assert_eq!(code, "VALIDATION");
}
