//! One bad string must not stop the read side: a NUL sent through GraphQL
//! is refused as `VALIDATION` naming the field; an event with a NUL that
//! another writer committed below validation is projected, escaped, and
//! other tenants' later changes still appear; a row no code can decode
//! makes `/health/ready` fail naming the projection and the position, and
//! shows in `/metrics` — never a silent skip. A document nested thousands
//! of levels deep is refused before parsing, not a stack overflow.

use std::time::Duration;

use serde_json::{json, Value};
use toolhub_domain::Role;
use toolhub_eventstore::testing::TestDb;
use toolhub_tests::{hello_definition, token, TestEnv, TestServer};

const CREATE: &str =
    "mutation ($input: CreateWorkflowInput!) { createWorkflow(input: $input) { id position } }";

async fn create(server: &TestServer, token: &str, name: &str) -> (String, String) {
    let data = server
        .ok(
            token,
            CREATE,
            json!({"input": {"name": name, "definition": hello_definition()}}),
        )
        .await;
    (
        data["createWorkflow"]["id"]
            .as_str()
            .expect("an id")
            .to_string(),
        data["createWorkflow"]["position"]
            .as_str()
            .expect("a position")
            .to_string(),
    )
}

async fn names_at(server: &TestServer, token: &str, at: &str) -> Vec<String> {
    let data = server
        .ok(
            token,
            r#"query ($at: String!) { workflows(first: 100, consistency: {atLeast: $at}) { edges { node { name } } } }"#,
            json!({ "at": at }),
        )
        .await;
    data["workflows"]["edges"]
        .as_array()
        .expect("edges")
        .iter()
        .map(|e| e["node"]["name"].as_str().unwrap_or_default().to_string())
        .collect()
}

const METADATA: &str = r#"{"actor":"other-writer","tenant":"acme","correlation_id":"c","causation_id":"","request_id":"r"}"#;

/// Appends a workflow event with plain SQL, as another writer would;
/// returns its global position.
async fn insert_raw(db: &TestDb, payload: &str) -> i64 {
    insert_raw_as(db, &uuid::Uuid::now_v7().to_string(), payload).await
}

/// [`insert_raw`] for a given aggregate id.
async fn insert_raw_as(db: &TestDb, id: &str, payload: &str) -> i64 {
    if db.url().starts_with("postgres") {
        let pool = sqlx::PgPool::connect(db.url()).await.expect("connect");
        let position = sqlx::query_scalar(
            "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
             VALUES ('workflow', $1, 1, 'WorkflowCreated', '1.0', $2::json, $3::json) RETURNING global_position",
        )
        .bind(id)
        .bind(payload)
        .bind(METADATA)
        .fetch_one(&pool)
        .await
        .expect("insert a raw event");
        pool.close().await;
        position
    } else {
        let pool = sqlx::SqlitePool::connect(db.url()).await.expect("connect");
        let position = sqlx::query_scalar(
            "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
             VALUES ('workflow', ?1, 1, 'WorkflowCreated', '1.0', ?2, ?3) RETURNING global_position",
        )
        .bind(id)
        .bind(payload)
        .bind(METADATA)
        .fetch_one(&pool)
        .await
        .expect("insert a raw event");
        pool.close().await;
        position
    }
}

async fn a_nul_is_refused_and_one_committed_below_validation_stops_nothing(env: TestEnv) {
    let server = env.server().await;
    let editor = token("ed", "acme", Role::Editor);

    // The exact request of the report: a NUL in the description.
    let (_, body) = server
        .post(
            Some(&editor),
            CREATE,
            json!({"input": {"name": "Nul", "description": "a\u{0}b", "definition": hello_definition()}}),
        )
        .await;
    let error = &body["errors"][0]["extensions"];
    assert_eq!(error["code"], "VALIDATION", "{body}");
    assert_eq!(error["field"], "input.description", "{body}");

    // Deep in a node's parameters, the path is named.
    let mut definition = hello_definition();
    definition["nodes"][0]["name"] = json!("bell\u{7}");
    let (_, body) = server
        .post(
            Some(&editor),
            CREATE,
            json!({"input": {"name": "Deep", "definition": definition}}),
        )
        .await;
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "VALIDATION",
        "{body}"
    );
    assert_eq!(
        body["errors"][0]["extensions"]["field"], "input.definition.nodes[0].name",
        "{body}"
    );

    // The same NUL, committed by another writer below validation.
    let payload = json!({
        "type": "WorkflowCreated", "tenant": "acme", "name": "Committed with a NUL",
        "description": "a\u{0}b", "definition": hello_definition()
    });
    insert_raw(&env.db, &payload.to_string()).await;

    // Later changes of every tenant still appear in their lists.
    let other = token("gil", "globex", Role::Editor);
    let (_, at) = create(&server, &other, "Later").await;
    assert_eq!(names_at(&server, &other, &at).await, vec!["Later"]);
    let (_, at) = create(&server, &editor, "Acme later").await;
    let mut names = names_at(&server, &editor, &at).await;
    names.sort();
    assert_eq!(names, vec!["Acme later", "Committed with a NUL"]);

    let (status, body) = server.get("/health/ready").await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nul_is_refused_and_one_committed_below_validation_stops_nothing_on_postgres() {
    a_nul_is_refused_and_one_committed_below_validation_stops_nothing(TestEnv::postgres().await)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nul_is_refused_and_one_committed_below_validation_stops_nothing_on_sqlite() {
    a_nul_is_refused_and_one_committed_below_validation_stops_nothing(TestEnv::sqlite().await)
        .await;
}

async fn an_undecodable_row_makes_readiness_fail_naming_projection_and_position(env: TestEnv) {
    let logs = toolhub_tests::captured_logs();
    let server = env.server().await;
    let editor = token("ed", "acme", Role::Editor);
    let (_, at) = create(&server, &editor, "Before").await;
    names_at(&server, &editor, &at).await;
    let (status, _) = server.get("/health/ready").await;
    assert_eq!(status, 200);

    // The log names the aggregate, which tells this test's lines apart from
    // the other backend's.
    let marker = uuid::Uuid::now_v7().to_string();
    let bad = insert_raw_as(
        &env.db,
        &marker,
        r#"{"type":"WorkflowCreated","what":"no decoder reads this"}"#,
    )
    .await;

    let mut ready: Option<Value> = None;
    for _ in 0..300 {
        let (status, body) = server.get("/health/ready").await;
        if status == 503 {
            let body: Value = serde_json::from_str(&body).expect("JSON");
            if body["failed"]
                .as_array()
                .is_some_and(|f| f.iter().any(|c| c == "stalled"))
            {
                ready = Some(body);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ready = ready.expect("readiness fails once a projector cannot read an event");
    let stalled = ready["checks"]["stalled"]["stalled"]
        .as_array()
        .expect("the stalled projections");
    assert!(
        stalled
            .iter()
            .any(|s| s["projection"] == "workflows" && s["position"] == json!(bad)),
        "{ready}"
    );
    let detail = ready["checks"]["stalled"]["detail"]
        .as_str()
        .unwrap_or_default();
    assert!(
        detail.contains("workflows") && detail.contains(&bad.to_string()),
        "{detail}"
    );

    let (_, metrics) = server.get("/metrics").await;
    assert!(
        metrics.contains("toolhub_projection_stalled{projection=\"workflows\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "toolhub_projection_stalled_position{{projection=\"workflows\"}} {bad}"
        )),
        "{metrics}"
    );
    // The projector keeps retrying, and says so once, not once per retry.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let logged = String::from_utf8_lossy(&logs.lock().expect("logs")).into_owned();
    let stopped = logged
        .lines()
        .filter(|l| l.contains("projector stopped") && l.contains(&marker))
        .count();
    assert_eq!(stopped, 1, "{logged}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_row_makes_readiness_fail_naming_projection_and_position_on_postgres() {
    an_undecodable_row_makes_readiness_fail_naming_projection_and_position(
        TestEnv::postgres().await,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_row_makes_readiness_fail_naming_projection_and_position_on_sqlite() {
    an_undecodable_row_makes_readiness_fail_naming_projection_and_position(TestEnv::sqlite().await)
        .await;
}

/// `[{a: [{a: … 1 …}]}]`, `levels` deep, as a GraphQL literal.
fn nested_literal(levels: usize) -> String {
    let mut value = "1".to_string();
    for level in 0..levels {
        value = if level % 2 == 0 {
            format!("{{a: {value}}}")
        } else {
            format!("[{value}]")
        };
    }
    value
}

/// The document is parsed the same way on both backends, so SQLite is
/// enough here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_literal_nested_thousands_deep_is_refused_and_the_service_keeps_serving() {
    // The environment owns the database file: it lives as long as the
    // server uses it.
    let env = TestEnv::sqlite().await;
    let server = env.server().await;
    let editor = token("ed", "acme", Role::Editor);
    let refused = |body: &Value| {
        assert_eq!(
            body["errors"][0]["extensions"]["code"], "VALIDATION",
            "{body}"
        );
        assert!(
            body["errors"][0]["message"]
                .as_str()
                .is_some_and(|m| m.contains("nests deeper than 128 levels")),
            "{body}"
        );
    };

    // As a JSON argument: this once overflowed the stack after parsing.
    let query = format!(
        "mutation {{ createWorkflow(input: {{name: \"Deep\", definition: {}}}) {{ id }} }}",
        nested_literal(600)
    );
    let (status, body) = server.post(Some(&editor), &query, json!({})).await;
    assert_eq!(status, 200, "{body}");
    refused(&body);

    // Anywhere in the document: this once overflowed the parser's stack.
    let query = format!(
        "{{ workflow(id: \"x\", unknown: {}) {{ id }} }}",
        nested_literal(5_000)
    );
    let (status, body) = server.post(Some(&editor), &query, json!({})).await;
    assert_eq!(status, 200, "{body}");
    refused(&body);

    // Brackets inside strings and comments do not count.
    let query = format!("# {}\n{{ me {{ sub }} }}", "[".repeat(1_000));
    let data = server.ok(&editor, &query, json!({})).await;
    assert_eq!(data["me"]["sub"], "ed");

    // A literal a hundred levels deep still reaches the resolver.
    let query = format!(
        "mutation {{ createWorkflow(input: {{name: \"Nested\", definition: {{nodes: [{{id: \"t\", type: \"transform\", params: {{template: {}}}}}], edges: []}}}}) {{ id }} }}",
        nested_literal(100)
    );
    let data = server.ok(&editor, &query, json!({})).await;
    assert!(data["createWorkflow"]["id"].is_string(), "{data}");

    let (status, body) = server.get("/health/ready").await;
    assert_eq!(status, 200, "{body}");
}

/// Over the WebSocket too, a document nested deeper than the bound is
/// refused before it is parsed, with an `error` for its id, and the socket
/// and its other subscriptions go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_nested_thousands_deep_is_refused_and_the_socket_goes_on() {
    // The environment owns the database file: it lives as long as the
    // server uses it.
    let env = TestEnv::sqlite().await;
    let server = env.server().await;
    let editor = token("ed", "acme", Role::Editor);
    let mut ws = server.ws_authenticated(&editor).await;
    let query = format!(
        "subscription {{ workflowChanged(id: \"x\", unknown: {}) {{ id }} }}",
        nested_literal(5_000)
    );
    ws.subscribe("deep", &query, json!({})).await;
    let message = ws.next_for("deep").await;
    assert_eq!(message["type"], "error", "{message}");
    assert_eq!(
        message["payload"][0]["extensions"]["code"], "VALIDATION",
        "{message}"
    );
    assert!(
        message["payload"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("nests deeper than 128 levels")),
        "{message}"
    );
    // The socket still serves.
    let id = server
        .create_workflow(&editor, "Still here", hello_definition())
        .await;
    ws.subscribe(
        "ok",
        "subscription ($id: ID!) { workflowChanged(id: $id) { name } }",
        json!({"id": id}),
    )
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    server
        .ok(
            &editor,
            r#"mutation ($id: ID!) { renameWorkflow(input: {id: $id, name: "Renamed"}) { id } }"#,
            json!({"id": id}),
        )
        .await;
    assert_eq!(
        ws.next_data("ok").await["workflowChanged"]["name"],
        "Renamed"
    );
}
