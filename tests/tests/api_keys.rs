//! API keys: made by admins, shown once, stored as a hash, accepted
//! wherever a JWT is, refused once revoked or expired, invisible to other
//! tenants, and never in the log, a read model or a response but the one
//! that made them.

use std::time::Duration;

use serde_json::{json, Value};
use toolhub_domain::Role;
use toolhub_tests::{first_error_code, token, TestEnv, TestServer};

const CREATE: &str = "mutation ($i: CreateApiKeyInput!) { createApiKey(input: $i) {
    id key version position apiKey { id name role createdBy expiresAt revokedAt lastUsedAt active actor } } }";
const REVOKE: &str = "mutation ($i: ApiKeyIdInput!) { revokeApiKey(input: $i) {
    id key apiKey { active revokedAt } } }";
const ME: &str = "{ me { sub org roles } }";

async fn create(server: &TestServer, admin: &str, input: Value) -> Value {
    server.ok(admin, CREATE, json!({ "i": input })).await["createApiKey"].clone()
}

fn reason(body: &Value) -> String {
    body["errors"][0]["extensions"]["reason"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn field(body: &Value) -> String {
    body["errors"][0]["extensions"]["field"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

async fn api_keys_work_end_to_end(env: TestEnv) {
    let server = env.server().await;
    let admin = token("grace", "acme", Role::Admin);
    let editor = token("ada", "acme", Role::Editor);

    // Only admins make keys.
    let (_, body) = server
        .post(
            Some(&editor),
            CREATE,
            json!({"i": {"name": "ci", "role": "EDITOR"}}),
        )
        .await;
    assert_eq!(first_error_code(&body), "FORBIDDEN", "{body}");

    let created = create(
        &server,
        &admin,
        json!({"name": "deploy job", "role": "EDITOR"}),
    )
    .await;
    let id = created["id"].as_str().expect("an id").to_string();
    let key = created["key"].as_str().expect("the key, once").to_string();
    assert!(key.starts_with("thk_") && key.len() == 47, "{key}");
    assert_eq!(created["version"], 1);
    let shown = &created["apiKey"];
    assert_eq!(shown["name"], "deploy job");
    assert_eq!(shown["role"], "EDITOR");
    assert_eq!(shown["createdBy"], "grace");
    assert_eq!(shown["active"], true);
    assert_eq!(shown["actor"], format!("apikey:{id}"));
    assert_eq!(shown["lastUsedAt"], Value::Null);

    // The key works on POST /graphql as the key's own caller, in its tenant,
    // with its role.
    let me = server.ok(&key, ME, json!({})).await;
    assert_eq!(
        me["me"],
        json!({"sub": format!("apikey:{id}"), "org": "acme", "roles": ["editor"]})
    );
    // An editor's key may write, and the log records the key as the actor.
    let made = server
        .ok(
            &key,
            "mutation ($i: CreateWorkflowInput!) { createWorkflow(input: $i) { id position } }",
            json!({"i": {"name": "by a machine", "definition": {"nodes": [
                {"id": "t", "type": "transform", "params": {"template": {"a": 1}}}], "edges": []}}}),
        )
        .await;
    let position = made["createWorkflow"]["position"]
        .as_str()
        .expect("a position");
    let audit = server
        .ok(
            &admin,
            "query ($p: String!) { auditLog(first: 50, consistency: {atLeast: $p}) {
                edges { node { aggregateType eventType actor payload } } } }",
            json!({ "p": position }),
        )
        .await;
    let entries = audit["auditLog"]["edges"]
        .as_array()
        .expect("entries")
        .clone();
    assert!(
        entries
            .iter()
            .any(|e| e["node"]["eventType"] == "WorkflowCreated"
                && e["node"]["actor"] == format!("apikey:{id}")),
        "{audit}"
    );
    assert!(
        entries
            .iter()
            .any(|e| e["node"]["eventType"] == "ApiKeyCreated"
                && e["node"]["aggregateType"] == "API_KEY"
                && e["node"]["actor"] == "grace"),
        "{audit}"
    );
    // ... and in a WebSocket's connection_init.
    let socket = server.ws_authenticated(&key).await;
    socket.close().await;
    // A viewer's key may not write.
    let viewer = create(
        &server,
        &admin,
        json!({"name": "dashboards", "role": "VIEWER"}),
    )
    .await;
    let viewer_key = viewer["key"].as_str().expect("a key");
    let (_, body) = server
        .post(
            Some(viewer_key),
            "mutation ($i: CreateWorkflowInput!) { createWorkflow(input: $i) { id } }",
            json!({"i": {"name": "x", "definition": {"nodes": [], "edges": []}}}),
        )
        .await;
    assert_eq!(first_error_code(&body), "FORBIDDEN", "{body}");

    // Listed without the key, with the last use.
    let listed = server
        .ok(
            &admin,
            "{ apiKeys(first: 1) { pageInfo { hasNextPage endCursor }
                 edges { node { id name lastUsedAt } } } }",
            json!({}),
        )
        .await;
    let page = &listed["apiKeys"];
    assert_eq!(page["pageInfo"]["hasNextPage"], true, "{listed}");
    assert_eq!(
        page["edges"][0]["node"]["name"], "dashboards",
        "newest first"
    );
    let rest = server
        .ok(
            &admin,
            "query ($after: String) { apiKeys(first: 10, after: $after) {
                edges { node { id name lastUsedAt } } } }",
            json!({"after": page["pageInfo"]["endCursor"]}),
        )
        .await;
    let deploy = &rest["apiKeys"]["edges"][0]["node"];
    assert_eq!(deploy["id"], id.as_str());
    assert!(
        deploy["lastUsedAt"].is_string(),
        "the use is visible: {rest}"
    );
    assert!(!listed.to_string().contains("thk_") && !rest.to_string().contains("thk_"));

    // Another tenant sees nothing and revokes nothing.
    let other = token("mallory", "globex", Role::Admin);
    let theirs = server
        .ok(&other, "{ apiKeys { edges { node { id } } } }", json!({}))
        .await;
    assert_eq!(theirs["apiKeys"]["edges"], json!([]));
    let (_, body) = server
        .post(Some(&other), REVOKE, json!({"i": {"id": id}}))
        .await;
    assert_eq!(first_error_code(&body), "NOT_FOUND", "{body}");
    let (_, body) = server
        .post(
            Some(&other),
            "query ($id: ID!) { apiKey(id: $id) { id } }",
            json!({"id": id}),
        )
        .await;
    assert_eq!(first_error_code(&body), "NOT_FOUND", "{body}");

    // Revoked: refused at once, everywhere; revoking again is a conflict.
    let revoked = server.ok(&admin, REVOKE, json!({"i": {"id": id}})).await;
    assert_eq!(revoked["revokeApiKey"]["key"], Value::Null);
    assert_eq!(revoked["revokeApiKey"]["apiKey"]["active"], false);
    assert!(revoked["revokeApiKey"]["apiKey"]["revokedAt"].is_string());
    let (status, body) = server.post(Some(&key), ME, json!({})).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(first_error_code(&body), "UNAUTHENTICATED");
    assert_eq!(reason(&body), "API_KEY_REVOKED");
    let mut refused = server
        .ws(json!({ "authorization": format!("Bearer {key}") }))
        .await;
    assert!(
        refused
            .next_json()
            .await
            .is_none_or(|m| m["type"] != "connection_ack"),
        "a revoked key opened a socket"
    );
    let (_, body) = server
        .post(Some(&admin), REVOKE, json!({"i": {"id": id}}))
        .await;
    assert_eq!(first_error_code(&body), "CONFLICT", "{body}");
    assert_eq!(reason(&body), "ALREADY_REVOKED");

    // Unknown keys, and keys that have expired.
    let (status, body) = server
        .post(Some(&format!("thk_{}", "A".repeat(43))), ME, json!({}))
        .await;
    assert_eq!(
        (status, reason(&body)),
        (401, "UNKNOWN_API_KEY".to_string()),
        "{body}"
    );
    let soon = chrono::Utc::now() + chrono::Duration::milliseconds(1_500);
    let brief = create(
        &server,
        &admin,
        json!({"name": "brief", "role": "VIEWER", "expiresAt": soon.to_rfc3339()}),
    )
    .await;
    let brief_key = brief["key"].as_str().expect("a key");
    server.ok(brief_key, ME, json!({})).await;
    tokio::time::sleep(Duration::from_millis(1_700)).await;
    let (status, body) = server.post(Some(brief_key), ME, json!({})).await;
    assert_eq!(
        (status, reason(&body)),
        (401, "API_KEY_EXPIRED".to_string()),
        "{body}"
    );

    // Bad input is a typed error naming the field.
    for (input, expected) in [
        (json!({"name": "", "role": "EDITOR"}), "input.name"),
        (
            json!({"name": "a\u{0000}b", "role": "EDITOR"}),
            "input.name",
        ),
        (
            json!({"name": "x".repeat(101), "role": "EDITOR"}),
            "input.name",
        ),
        (
            json!({"name": "late", "role": "EDITOR", "expiresAt": "2001-01-01T00:00:00Z"}),
            "input.expiresAt",
        ),
    ] {
        let (_, body) = server
            .post(Some(&admin), CREATE, json!({ "i": input }))
            .await;
        assert_eq!(first_error_code(&body), "VALIDATION", "{body}");
        assert_eq!(field(&body), expected, "{body}");
    }
    let (_, body) = server
        .post(Some(&admin), REVOKE, json!({"i": {"id": "not-an-id"}}))
        .await;
    assert_eq!(first_error_code(&body), "VALIDATION", "{body}");

    // No key is in the log, and no hash either.
    let keys = [key.as_str(), viewer_key, brief_key];
    for row in env.all_event_text().await {
        for key in keys {
            assert!(!row.contains(key), "a key is in the log");
            assert!(!row.contains(&key[4..]), "a key is in the log");
        }
    }
}

#[tokio::test]
async fn on_postgres_api_keys_work_end_to_end() {
    api_keys_work_end_to_end(TestEnv::postgres().await).await;
}

#[tokio::test]
async fn on_sqlite_api_keys_work_end_to_end() {
    api_keys_work_end_to_end(TestEnv::sqlite().await).await;
}
