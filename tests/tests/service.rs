//! The service around the schema: limits, hygiene, health, metrics,
//! graceful shutdown, and the embedded SQLite default.

use serde_json::{json, Value};
use toolhub_domain::Role;
use toolhub_tests::{hello_definition, token, TestEnv, TestServer};

async fn still_serves(server: &TestServer) {
    let viewer = token("vic", "acme", Role::Viewer);
    let data = server.ok(&viewer, "{ me { sub } }", json!({})).await;
    assert_eq!(data["me"]["sub"], "vic");
}

#[tokio::test]
async fn a_malformed_body_gets_a_clear_error_and_the_server_keeps_serving() {
    let env = TestEnv::postgres().await;
    let server = env.server().await;
    let viewer = token("vic", "acme", Role::Viewer);
    let response = server
        .http
        .post(format!("{}/graphql", server.url))
        .bearer_auth(&viewer)
        .header("content-type", "application/json")
        .body("{ this is not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["errors"][0]["extensions"]["code"], "VALIDATION");
    assert_eq!(body["errors"][0]["extensions"]["field"], "body");

    // A syntax error in the query is a validation error too.
    let (_, body) = server.post(Some(&viewer), "{ me { ", json!({})).await;
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "VALIDATION",
        "{body}"
    );
    still_serves(&server).await;
}

#[tokio::test]
async fn an_oversized_body_is_refused_and_the_server_keeps_serving() {
    let env = TestEnv::postgres().await;
    let server = env.server().await;
    let viewer = token("vic", "acme", Role::Viewer);
    let padding = "x".repeat(2 * 1024 * 1024);
    let response = server
        .http
        .post(format!("{}/graphql", server.url))
        .bearer_auth(&viewer)
        .json(&json!({ "query": "{ me { sub } }", "variables": { "padding": padding } }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 413);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "VALIDATION",
        "{body}"
    );
    still_serves(&server).await;
}

#[tokio::test]
async fn an_over_deep_query_is_refused_and_the_server_keeps_serving() {
    let env = TestEnv::postgres().await;
    let server = env.server().await;
    let viewer = token("vic", "acme", Role::Viewer);
    // Introspection nests arbitrarily deep: 20 levels of `ofType`.
    let mut inner = "name".to_string();
    for _ in 0..20 {
        inner = format!("ofType {{ {inner} }}");
    }
    let query = format!("{{ __type(name: \"Workflow\") {{ fields {{ type {{ {inner} }} }} }} }}");
    let (_, body) = server.post(Some(&viewer), &query, json!({})).await;
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "VALIDATION",
        "{body}"
    );
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("deep"),
        "{body}"
    );
    still_serves(&server).await;
}

#[tokio::test]
async fn every_response_carries_a_request_id() {
    let env = TestEnv::postgres().await;
    let server = env.server().await;
    let response = server
        .http
        .get(format!("{}/health/live", server.url))
        .send()
        .await
        .unwrap();
    let generated = response
        .headers()
        .get("x-request-id")
        .expect("a generated request id")
        .to_str()
        .unwrap()
        .to_string();
    assert!(!generated.is_empty());
    let response = server
        .http
        .get(format!("{}/health/live", server.url))
        .header("x-request-id", "trace-me-42")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "trace-me-42");

    // The request id is recorded with the events of its commands.
    let admin = token("root", "acme", Role::Admin);
    let response = server
        .http
        .post(format!("{}/graphql", server.url))
        .bearer_auth(&admin)
        .header("x-request-id", "req-create-1")
        .json(&json!({
            "query": "mutation ($input: CreateWorkflowInput!) { createWorkflow(input: $input) { id position } }",
            "variables": { "input": { "name": "Traced", "definition": hello_definition() } }
        }))
        .send()
        .await
        .unwrap();
    let body: Value = response.json().await.unwrap();
    let created = &body["data"]["createWorkflow"];
    let data = server
        .ok(
            &admin,
            r#"query ($id: ID!, $at: String!) { history(aggregateType: WORKFLOW, aggregateId: $id, consistency: {atLeast: $at}) { requestId } }"#,
            json!({ "id": created["id"], "at": created["position"] }),
        )
        .await;
    assert_eq!(data["history"][0]["requestId"], "req-create-1");
}

#[tokio::test]
async fn health_and_metrics_answer() {
    let env = TestEnv::postgres().await;
    let server = env.server().await;
    let (status, body) = server.get("/health/live").await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = server.get("/health/ready").await;
    assert_eq!(status, 200, "{body}");
    let ready: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ready["status"], "ready");
    assert_eq!(ready["checks"]["database"]["ok"], true);
    assert_eq!(ready["checks"]["projections"]["ok"], true);

    let editor = token("ada", "acme", Role::Editor);
    server
        .ok(
            &editor,
            "mutation ($input: CreateWorkflowInput!) { createWorkflow(input: $input) { id } }",
            json!({ "input": { "name": "Counted", "definition": hello_definition() } }),
        )
        .await;
    let (status, metrics) = server.get("/metrics").await;
    assert_eq!(status, 200);
    for name in [
        "toolhub_http_requests_total",
        "toolhub_graphql_request_duration_seconds",
        "toolhub_commands_total",
        "toolhub_events_appended_total",
        "toolhub_active_subscriptions",
    ] {
        assert!(metrics.contains(name), "{name} missing from\n{metrics}");
    }
    assert!(
        metrics.contains(r#"toolhub_commands_total{aggregate="workflow",outcome="ok"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn readiness_names_the_failed_check_when_projectors_lag() {
    let env = TestEnv::postgres().await;
    let mut config = env.config();
    // No projectors in this process, and no lag tolerated: the first event
    // makes the service unready.
    config.run_projectors = false;
    config.limits.ready_max_lag_events = 0;
    config.limits.consistency_wait = std::time::Duration::from_millis(200);
    let server = env.server_with(config).await;
    let editor = token("ada", "acme", Role::Editor);
    let data = server
        .ok(
            &editor,
            "mutation ($input: CreateWorkflowInput!) { createWorkflow(input: $input) { id position workflow { id } } }",
            json!({ "input": { "name": "Unprojected", "definition": hello_definition() } }),
        )
        .await;
    // The mutation committed; the payload says the read model has not caught up.
    assert!(data["createWorkflow"]["workflow"].is_null());
    // A query waiting for it gets an error the UI can act on.
    let (_, body) = server
        .post(
            Some(&editor),
            r#"query ($at: String!) { workflows(consistency: {atLeast: $at}) { edges { cursor } } }"#,
            json!({ "at": data["createWorkflow"]["position"] }),
        )
        .await;
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "CONFLICT",
        "{body}"
    );
    assert_eq!(body["errors"][0]["extensions"]["reason"], "NOT_CAUGHT_UP");
    let (status, body) = server.get("/health/ready").await;
    assert_eq!(status, 503, "{body}");
    let ready: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ready["failed"], json!(["projections"]), "{body}");
}

#[tokio::test]
async fn graphiql_is_served_on_get() {
    let env = TestEnv::sqlite().await;
    let server = env.server().await;
    let (status, body) = server.get("/graphql").await;
    assert_eq!(status, 200);
    assert!(body.to_lowercase().contains("graphiql"));
}

#[tokio::test]
async fn the_embedded_default_serves_mutations_queries_and_subscriptions() {
    let env = TestEnv::sqlite().await;
    let server = env.server().await;
    let admin = token("root", "acme", Role::Admin);
    let mut ws = server.ws_authenticated(&admin).await;
    ws.subscribe(
        "s",
        "subscription { events(after: \"0.0\") { position eventType } }",
        json!({}),
    )
    .await;
    let created = server
        .ok(
            &admin,
            "mutation ($input: CreateWorkflowInput!) { createWorkflow(input: $input) { id position workflow { name } } }",
            json!({ "input": { "name": "Embedded", "definition": hello_definition() } }),
        )
        .await;
    assert_eq!(created["createWorkflow"]["workflow"]["name"], "Embedded");
    let event = ws.next_data("s").await;
    assert_eq!(
        event["events"]["position"],
        created["createWorkflow"]["position"]
    );
    let id = created["createWorkflow"]["id"].clone();
    let updated = server
        .ok(
            &admin,
            r#"mutation ($id: ID!) { updateWorkflow(input: {id: $id, definition: {nodes: [{id: "d", type: "delay", params: {milliseconds: 5}}], edges: []}, expectedVersion: 1}) { version } }"#,
            json!({ "id": id }),
        )
        .await;
    assert_eq!(updated["updateWorkflow"]["version"], 2);
    let versions = server
        .ok(
            &admin,
            r#"query ($id: ID!) { workflow(id: $id) { versions { edges { node { version } } } } }"#,
            json!({ "id": id }),
        )
        .await;
    assert_eq!(
        versions["workflow"]["versions"]["edges"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
}

#[tokio::test]
async fn a_stopped_server_ends_its_subscriptions_and_a_new_one_resumes() {
    let env = TestEnv::sqlite().await;
    let mut server = env.server().await;
    let admin = token("root", "acme", Role::Admin);
    let created = server
        .ok(
            &admin,
            "mutation ($input: CreateWorkflowInput!) { createWorkflow(input: $input) { id position } }",
            json!({ "input": { "name": "Before", "definition": hello_definition() } }),
        )
        .await;
    let mut ws = server.ws_authenticated(&admin).await;
    ws.subscribe("s", "subscription { events { position } }", json!({}))
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    server.stop().await;
    // The subscription was completed (or the socket closed) by the shutdown.
    let _ = ws.next_json().await;

    let again = env.server().await;
    let data = again
        .ok(
            &admin,
            "query ($id: ID!) { workflow(id: $id) { name } }",
            json!({ "id": created["createWorkflow"]["id"] }),
        )
        .await;
    assert_eq!(data["workflow"]["name"], "Before");
}

#[tokio::test]
async fn cors_allows_only_the_configured_origins() {
    let env = TestEnv::sqlite().await;
    let mut config = env.config();
    config.cors_origins = vec!["https://app.example.com".into()];
    let server = env.server_with(config).await;
    let preflight = |origin: &'static str| {
        server
            .http
            .request(reqwest::Method::OPTIONS, format!("{}/graphql", server.url))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization,content-type",
            )
            .send()
    };
    let allowed = preflight("https://app.example.com").await.unwrap();
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    let refused = preflight("https://evil.example.com").await.unwrap();
    assert!(refused
        .headers()
        .get("access-control-allow-origin")
        .is_none());
}
