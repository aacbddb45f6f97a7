//! MCP servers through GraphQL: register, update, enable, disable,
//! deregister, and the queries with their tools.

use serde_json::json;
use toolhub_domain::mcp_server::{McpServer, McpServerCommand, ToolInfo};
use toolhub_domain::{Role, TenantId};
use toolhub_eventstore::{CommandBus, CommandContext};
use toolhub_tests::{token, TestEnv};

const REGISTER: &str = r#"mutation ($input: RegisterMcpServerInput!) {
  registerMcpServer(input: $input) { id version position mcpServer { id name enabled transport version } } }"#;
const UPDATE: &str = r#"mutation ($input: UpdateMcpServerInput!) {
  updateMcpServer(input: $input) { version mcpServer { transport } } }"#;
const ENABLE: &str = r#"mutation ($input: McpServerIdInput!) {
  enableMcpServer(input: $input) { version mcpServer { enabled } } }"#;
const DISABLE: &str = r#"mutation ($input: McpServerIdInput!) {
  disableMcpServer(input: $input) { version mcpServer { enabled } } }"#;
const DEREGISTER: &str = r#"mutation ($input: McpServerIdInput!) {
  deregisterMcpServer(input: $input) { id version position } }"#;

#[tokio::test]
async fn an_mcp_server_goes_through_its_whole_life() {
    let env = TestEnv::postgres().await;
    let server = env.server().await;
    let editor = token("ada", "acme", Role::Editor);
    let registered = server
        .ok(
            &editor,
            REGISTER,
            json!({ "input": { "name": "assistant", "transport": {
                "kind": "streamable_http",
                "url": "https://mcp.example.com/mcp",
                "headers": { "Authorization": "Bearer {{secrets.API_TOKEN}}" }
            } } }),
        )
        .await;
    let payload = &registered["registerMcpServer"];
    assert_eq!(payload["mcpServer"]["name"], "assistant");
    assert_eq!(payload["mcpServer"]["enabled"], true);
    let id = payload["id"].as_str().unwrap().to_string();

    let updated = server
        .ok(
            &editor,
            UPDATE,
            json!({ "input": { "id": id, "expectedVersion": 1, "transport": {
                "kind": "stdio", "command": "mcp-assistant", "args": ["--quiet"]
            } } }),
        )
        .await;
    assert_eq!(updated["updateMcpServer"]["version"], 2);
    assert_eq!(
        updated["updateMcpServer"]["mcpServer"]["transport"]["kind"],
        "stdio"
    );

    let stale = server
        .error_code(
            Some(&editor),
            UPDATE,
            json!({ "input": { "id": id, "expectedVersion": 1, "transport": {
                "kind": "stdio", "command": "other"
            } } }),
        )
        .await;
    assert_eq!(stale, "CONFLICT");

    let disabled = server
        .ok(&editor, DISABLE, json!({ "input": { "id": id } }))
        .await;
    assert_eq!(disabled["disableMcpServer"]["mcpServer"]["enabled"], false);
    assert_eq!(
        server
            .error_code(Some(&editor), DISABLE, json!({ "input": { "id": id } }))
            .await,
        "CONFLICT"
    );
    let enabled = server
        .ok(&editor, ENABLE, json!({ "input": { "id": id } }))
        .await;
    assert_eq!(enabled["enableMcpServer"]["mcpServer"]["enabled"], true);
    assert_eq!(
        server
            .error_code(Some(&editor), ENABLE, json!({ "input": { "id": id } }))
            .await,
        "CONFLICT"
    );

    let gone = server
        .ok(&editor, DEREGISTER, json!({ "input": { "id": id } }))
        .await;
    assert!(gone["deregisterMcpServer"]["position"].is_string());
    assert_eq!(
        server
            .error_code(Some(&editor), ENABLE, json!({ "input": { "id": id } }))
            .await,
        "NOT_FOUND"
    );
}

#[tokio::test]
async fn bad_mcp_server_input_is_a_validation_error_with_its_field() {
    let env = TestEnv::postgres().await;
    let server = env.server().await;
    let editor = token("ada", "acme", Role::Editor);
    for (input, field) in [
        (
            json!({ "name": "Bad Name", "transport": {"kind": "stdio", "command": "x"} }),
            "input.name",
        ),
        (
            json!({ "name": "ok", "transport": {"kind": "streamable_http", "url": "ftp://x"} }),
            "input.transport",
        ),
        (
            json!({ "name": "ok", "transport": {"kind": "carrier-pigeon"} }),
            "input.transport",
        ),
    ] {
        let (_, body) = server
            .post(Some(&editor), REGISTER, json!({ "input": input }))
            .await;
        assert_eq!(
            body["errors"][0]["extensions"]["code"], "VALIDATION",
            "{body}"
        );
        assert_eq!(body["errors"][0]["extensions"]["field"], field, "{body}");
    }
    assert_eq!(
        server
            .error_code(
                Some(&editor),
                ENABLE,
                json!({ "input": { "id": uuid::Uuid::new_v4().to_string() } })
            )
            .await,
        "NOT_FOUND"
    );
}

#[tokio::test]
async fn mcp_servers_are_listed_with_their_discovered_tools() {
    let env = TestEnv::postgres().await;
    let server = env.server().await;
    let editor = token("ada", "acme", Role::Editor);
    let mut ids = Vec::new();
    for name in ["one", "two"] {
        let data = server
            .ok(
                &editor,
                REGISTER,
                json!({ "input": { "name": name, "transport": {"kind": "stdio", "command": "mcp"} } }),
            )
            .await;
        ids.push(
            data["registerMcpServer"]["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    // Tools are discovered by the engine; record them as it would.
    let store = toolhub_eventstore::open(env.db.url()).await.unwrap();
    let bus: CommandBus<McpServer> = CommandBus::new(store);
    let ctx = CommandContext::new("engine", TenantId::parse("acme").unwrap());
    let mut last = None;
    for (i, id) in ids.iter().enumerate() {
        let committed = bus
            .execute(
                id,
                McpServerCommand::DiscoverTools {
                    tools: vec![ToolInfo {
                        name: format!("tool-{i}"),
                        description: Some("does things".into()),
                        input_schema: json!({"type": "object"}),
                        read_only: false,
                        idempotent: false,
                    }],
                },
                &ctx,
            )
            .await
            .unwrap();
        last = committed.position;
    }
    let data = server
        .ok(
            &editor,
            r#"query ($at: String!) { mcpServers(first: 10, consistency: {atLeast: $at}) {
                 edges { node { id name tools { name description inputSchema } } } } }"#,
            json!({ "at": last.unwrap().to_string() }),
        )
        .await;
    let edges = data["mcpServers"]["edges"].as_array().unwrap();
    assert_eq!(edges.len(), 2, "{data}");
    for edge in edges {
        let tools = edge["node"]["tools"].as_array().unwrap();
        assert_eq!(tools.len(), 1, "{data}");
        assert_eq!(tools[0]["inputSchema"]["type"], "object");
    }
    let one = server
        .ok(
            &editor,
            r#"query ($id: ID!) { mcpServer(id: $id) { name tools { name } } }"#,
            json!({ "id": ids[1] }),
        )
        .await;
    assert_eq!(one["mcpServer"]["tools"][0]["name"], "tool-1");
    let missing = server
        .error_code(
            Some(&editor),
            r#"query ($id: ID!) { mcpServer(id: $id) { name } }"#,
            json!({ "id": uuid::Uuid::new_v4().to_string() }),
        )
        .await;
    assert_eq!(missing, "NOT_FOUND");
}

#[tokio::test]
async fn a_taken_name_is_a_conflict_until_its_holder_is_gone() {
    let env = TestEnv::postgres().await;
    let server = env.server().await;
    let editor = token("ada", "acme", Role::Editor);
    let admin = token("root", "acme", Role::Admin);
    let other_tenant = token("gus", "globex", Role::Editor);
    let input = json!({ "input": { "name": "files", "transport": {
        "kind": "streamable_http", "url": "https://mcp.example.com/mcp"
    } } });
    let first = server.ok(&editor, REGISTER, input.clone()).await;
    let (_, body) = server.post(Some(&editor), REGISTER, input.clone()).await;
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "CONFLICT",
        "{body}"
    );
    assert_eq!(
        body["errors"][0]["extensions"]["reason"], "NAME_TAKEN",
        "{body}"
    );
    // Names are per organisation.
    server.ok(&other_tenant, REGISTER, input.clone()).await;
    // Deregistering frees the name.
    let id = first["registerMcpServer"]["id"].clone();
    server
        .ok(&admin, DEREGISTER, json!({ "input": { "id": id } }))
        .await;
    server.ok(&editor, REGISTER, input).await;
}
