//! Workflows as MCP tools, through `/mcp` of a real server with rmcp's
//! Streamable HTTP client: listing, calling with the output as text and
//! structured content, progress for the steps, `isError` for a failed run,
//! arguments checked against the schema, tenants apart, tokens required,
//! roles, rate limits, sessions per caller, unique tool names, and a
//! client's cancellation stopping the run. Every test runs on PostgreSQL
//! and on SQLite.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rmcp::model::{
    CallToolRequest, CallToolRequestParams, CallToolResult, ClientCapabilities, ClientConfig,
    ClientRequest, Implementation, ProgressNotificationParam, ProtocolVersion,
};
use rmcp::service::{NotificationContext, PeerRequestOptions, RunningService, ServiceError};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::{ClientHandler, RoleClient, ServiceExt};
use serde_json::{json, Map, Value};
use toolhub_domain::Role;
use toolhub_tests::{token, TestEnv, TestServer, SECRET};

fn editor(org: &str) -> String {
    token("ed", org, Role::Editor)
}

/// An MCP client that keeps the progress notifications it gets.
#[derive(Clone, Default)]
struct Client {
    /// Every progress notification, in arrival order.
    progress: Arc<Mutex<Vec<ProgressNotificationParam>>>,
}

impl ClientHandler for Client {
    fn get_info(&self) -> ClientConfig {
        ClientConfig::new(
            ClientCapabilities::default(),
            Implementation::new("toolhub-tests", "0"),
        )
        .with_protocol_version(ProtocolVersion::LATEST_WITH_INITIALIZE)
    }

    async fn on_progress(
        &self,
        params: ProgressNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        self.progress.lock().unwrap().push(params);
    }
}

/// A connected client with its recorder.
struct Connected {
    service: RunningService<RoleClient, Client>,
    progress: Arc<Mutex<Vec<ProgressNotificationParam>>>,
}

/// Connects to the server's `/mcp` with `token` (none when `None`).
async fn connect(server: &TestServer, token: Option<&str>) -> Result<Connected, String> {
    let mut config = StreamableHttpClientTransportConfig::with_uri(format!("{}/mcp", server.url));
    if let Some(token) = token {
        config = config.auth_header(token);
    }
    let transport = StreamableHttpClientTransport::with_client(reqwest::Client::new(), config);
    let client = Client::default();
    let progress = client.progress.clone();
    let service = tokio::time::timeout(Duration::from_secs(10), client.serve(transport))
        .await
        .map_err(|_| "the handshake timed out".to_string())?
        .map_err(|e| e.to_string())?;
    Ok(Connected { service, progress })
}

async fn connected(server: &TestServer, token: &str) -> Connected {
    connect(server, Some(token))
        .await
        .unwrap_or_else(|e| panic!("the client connects: {e}"))
}

fn arguments(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        other => panic!("arguments are an object, not {other}"),
    }
}

async fn call(client: &Connected, name: &str, args: Value) -> Result<CallToolResult, ServiceError> {
    client
        .service
        .call_tool(CallToolRequestParams::new(name.to_string()).with_arguments(arguments(args)))
        .await
}

/// The text of a result's first content block.
fn text(result: &CallToolResult) -> String {
    result
        .content
        .first()
        .and_then(|c| c.as_text())
        .map(|t| t.text.clone())
        .unwrap_or_else(|| panic!("a text block in {result:?}"))
}

/// The JSON-RPC error code of a refused request.
fn error_code(error: &ServiceError) -> i32 {
    match error {
        ServiceError::McpError(data) => data.code.0,
        other => panic!("expected an MCP error, got {other:?}"),
    }
}

const SET_TRIGGERS: &str = "mutation ($input: SetWorkflowTriggersInput!) { \
    setWorkflowTriggers(input: $input) { id version workflow { triggers } } }";

fn greet_schema() -> Value {
    json!({"type": "object",
           "properties": {"who": {"type": "string", "minLength": 1}},
           "required": ["who"],
           "additionalProperties": false})
}

/// Exposes `workflow` as the tool `name`.
async fn expose(server: &TestServer, token: &str, workflow: &str, name: &str, schema: Value) {
    let (_, body) = server
        .post(
            Some(token),
            SET_TRIGGERS,
            json!({"input": {"id": workflow, "triggers": [{"mcpTool": {
                "name": name, "description": format!("Runs {name}"), "inputSchema": schema}}]}}),
        )
        .await;
    assert!(body.get("errors").is_none(), "{body:#}");
}

/// A workflow of two transforms, `name` then `greet`: its output is
/// `{"greet": {"greeting": "Hello, WHO!"}}`.
async fn greeter(server: &TestServer, token: &str) -> String {
    server
        .create_workflow(
            token,
            "greeter",
            json!({
                "nodes": [
                    {"id": "name", "type": "transform", "params": {"template": {"who": "{{input.who}}"}}},
                    {"id": "greet", "type": "transform",
                     "params": {"template": {"greeting": "Hello, {{nodes.name.who}}!"}}}
                ],
                "edges": [{"from": "name", "to": "greet"}]
            }),
        )
        .await
}

/// A workflow of one delay of `milliseconds`.
async fn sleeper(server: &TestServer, token: &str, milliseconds: u64) -> String {
    server
        .create_workflow(
            token,
            "sleeper",
            json!({"nodes": [{"id": "wait", "type": "delay", "params": {"milliseconds": milliseconds}}],
                   "edges": []}),
        )
        .await
}

/// The workflow's executions, newest first.
async fn executions(server: &TestServer, token: &str, workflow: &str) -> Vec<Value> {
    let data = server
        .ok(
            token,
            "query ($w: ID!) { executions(first: 100, filter: {workflowId: $w}) { \
               edges { node { id trigger input output status startedBy } } } }",
            json!({ "w": workflow }),
        )
        .await;
    data["executions"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["node"].clone())
        .collect()
}

/// Waits until the read models show `n` executions of the workflow.
async fn wait_for_executions(
    server: &TestServer,
    token: &str,
    workflow: &str,
    n: usize,
) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let list = executions(server, token, workflow).await;
        if list.len() >= n {
            return list;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{n} executions did not appear: {list:#?}"
        );
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
}

async fn a_workflow_is_listed_and_called_as_a_tool(env: TestEnv) {
    let server = env.server().await;
    let ed = editor("acme");
    let greeter = greeter(&server, &ed).await;
    expose(&server, &ed, &greeter, "greet", greet_schema()).await;
    // Neither a workflow without the trigger nor an archived one is listed.
    let _plain = sleeper(&server, &ed, 1).await;
    let archived = sleeper(&server, &ed, 1).await;
    expose(
        &server,
        &ed,
        &archived,
        "old_tool",
        json!({"type": "object"}),
    )
    .await;
    server
        .ok(
            &ed,
            "mutation ($id: ID!) { archiveWorkflow(input: {id: $id}) { id } }",
            json!({ "id": archived }),
        )
        .await;

    let client = connected(&server, &ed).await;
    let tools = client.service.list_all_tools().await.expect("tools/list");
    let names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
    assert_eq!(names, ["greet"]);
    assert_eq!(tools[0].description.as_deref(), Some("Runs greet"));
    assert_eq!(
        Value::Object((*tools[0].input_schema).clone()),
        greet_schema()
    );

    let result = call(&client, "greet", json!({"who": "Ada"}))
        .await
        .expect("tools/call");
    let expected = json!({"greet": {"greeting": "Hello, Ada!"}});
    assert_eq!(result.is_error, Some(false), "{result:?}");
    assert_eq!(result.structured_content, Some(expected.clone()));
    let shown: Value = serde_json::from_str(&text(&result)).expect("the text is JSON");
    assert_eq!(shown, expected);

    // A progress notification for each of the two steps, in order.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while client.progress.lock().unwrap().len() < 2 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let progress = client.progress.lock().unwrap().clone();
    let seen: Vec<(f64, Option<f64>, Option<String>)> = progress
        .iter()
        .map(|p| (p.progress, p.total, p.message.clone()))
        .collect();
    assert_eq!(
        seen,
        [
            (1.0, Some(2.0), Some("node `name` succeeded".to_string())),
            (2.0, Some(2.0), Some("node `greet` succeeded".to_string())),
        ]
    );

    // The execution is an ordinary one, started by the caller with the
    // arguments as its input.
    let runs = wait_for_executions(&server, &ed, &greeter, 1).await;
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0]["trigger"], "mcp");
    assert_eq!(runs[0]["input"], json!({"who": "Ada"}));
    assert_eq!(runs[0]["status"], "COMPLETED");
    assert_eq!(runs[0]["startedBy"], "ed");
    assert_eq!(runs[0]["output"], expected);

    // Arguments that break the schema are refused, naming what is wrong,
    // and start nothing.
    for (args, named) in [
        (json!({"who": 5}), "/who"),
        (json!({}), "who"),
        (json!({"who": "Ada", "extra": true}), "extra"),
        (json!({"who": ""}), "/who"),
    ] {
        let refused = call(&client, "greet", args.clone())
            .await
            .expect("an answer");
        assert_eq!(refused.is_error, Some(true), "{args}: {refused:?}");
        let message = text(&refused);
        assert!(
            message.starts_with("invalid arguments for `greet`") && message.contains(named),
            "{args}: {message}"
        );
        assert_eq!(refused.structured_content, None);
    }
    // Unknown and archived tools are not found, nor names no tool can have.
    let long = "x".repeat(100);
    for name in ["nope", "old_tool", "a\u{0}b", "", long.as_str()] {
        let error = call(&client, name, json!({})).await.expect_err("refused");
        assert_eq!(error_code(&error), -32602, "{name}: {error:?}");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(executions(&server, &ed, &greeter).await.len(), 1);
    assert!(executions(&server, &ed, &archived).await.is_empty());

    // A viewer lists but may not call; a caller without a role may not list.
    let viewer = connected(&server, &token("vi", "acme", Role::Viewer)).await;
    let listed = viewer
        .service
        .list_all_tools()
        .await
        .expect("a viewer lists");
    assert_eq!(listed.len(), 1);
    let error = call(&viewer, "greet", json!({"who": "Bob"}))
        .await
        .expect_err("a viewer may not call");
    assert_eq!(error_code(&error), -32003, "{error:?}");
    let nobody = toolhub_tests::token_with("no", "acme", &[], Duration::from_secs(3600), None);
    let nobody = connected(&server, &nobody).await;
    let error = nobody.service.list_all_tools().await.expect_err("no role");
    assert_eq!(error_code(&error), -32003, "{error:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(executions(&server, &ed, &greeter).await.len(), 1);
    for client in [client, viewer, nobody] {
        let _ = client.service.cancel().await;
    }
}

#[tokio::test]
async fn a_workflow_is_listed_and_called_as_a_tool_on_postgres() {
    a_workflow_is_listed_and_called_as_a_tool(TestEnv::postgres().await).await;
}

#[tokio::test]
async fn a_workflow_is_listed_and_called_as_a_tool_on_sqlite() {
    a_workflow_is_listed_and_called_as_a_tool(TestEnv::sqlite().await).await;
}

async fn a_failing_workflow_answers_is_error(env: TestEnv) {
    let server = env.server().await;
    let ed = editor("acme");
    // Nothing listens on port 1: the request fails, and so does the run.
    let failing = server
        .create_workflow(
            &ed,
            "failing",
            json!({"nodes": [{"id": "post", "type": "http",
                              "params": {"method": "POST", "url": "http://127.0.0.1:1/"}}],
                   "edges": []}),
        )
        .await;
    expose(&server, &ed, &failing, "fail", json!({"type": "object"})).await;
    let client = connected(&server, &ed).await;
    let result = call(&client, "fail", json!({})).await.expect("an answer");
    assert_eq!(result.is_error, Some(true), "{result:?}");
    let message = text(&result);
    assert!(message.contains("failed"), "{message}");
    let runs = wait_for_executions(&server, &ed, &failing, 1).await;
    assert_eq!(runs[0]["status"], "FAILED");
    assert!(
        message.contains(runs[0]["id"].as_str().unwrap()),
        "the answer names the execution: {message}"
    );
    let _ = client.service.cancel().await;
}

#[tokio::test]
async fn a_failing_workflow_answers_is_error_on_postgres() {
    a_failing_workflow_answers_is_error(TestEnv::postgres().await).await;
}

#[tokio::test]
async fn a_failing_workflow_answers_is_error_on_sqlite() {
    a_failing_workflow_answers_is_error(TestEnv::sqlite().await).await;
}

async fn tenants_see_and_call_only_their_own_tools(env: TestEnv) {
    let server = env.server().await;
    let acme = editor("acme");
    let globex = editor("globex");
    let acme_greeter = greeter(&server, &acme).await;
    expose(&server, &acme, &acme_greeter, "greet", greet_schema()).await;
    let secret = sleeper(&server, &acme, 1).await;
    expose(
        &server,
        &acme,
        &secret,
        "acme_only",
        json!({"type": "object"}),
    )
    .await;
    // A tool name is unique within a tenant, not across tenants.
    let globex_greeter = greeter(&server, &globex).await;
    expose(&server, &globex, &globex_greeter, "greet", greet_schema()).await;

    let client = connected(&server, &globex).await;
    let names: Vec<String> = client
        .service
        .list_all_tools()
        .await
        .expect("tools/list")
        .iter()
        .map(|t| t.name.to_string())
        .collect();
    assert_eq!(names, ["greet"]);
    let error = call(&client, "acme_only", json!({}))
        .await
        .expect_err("another tenant's tool is unknown");
    assert_eq!(error_code(&error), -32602);
    // Their `greet` runs their workflow.
    let result = call(&client, "greet", json!({"who": "Globex"}))
        .await
        .expect("tools/call");
    assert_eq!(result.is_error, Some(false), "{result:?}");
    assert_eq!(
        wait_for_executions(&server, &globex, &globex_greeter, 1)
            .await
            .len(),
        1
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(executions(&server, &acme, &acme_greeter).await.is_empty());
    assert!(executions(&server, &acme, &secret).await.is_empty());

    let acme_client = connected(&server, &acme).await;
    let mut names: Vec<String> = acme_client
        .service
        .list_all_tools()
        .await
        .expect("tools/list")
        .iter()
        .map(|t| t.name.to_string())
        .collect();
    names.sort();
    assert_eq!(names, ["acme_only", "greet"]);
    let _ = client.service.cancel().await;
    let _ = acme_client.service.cancel().await;
}

#[tokio::test]
async fn tenants_see_and_call_only_their_own_tools_on_postgres() {
    tenants_see_and_call_only_their_own_tools(TestEnv::postgres().await).await;
}

#[tokio::test]
async fn tenants_see_and_call_only_their_own_tools_on_sqlite() {
    tenants_see_and_call_only_their_own_tools(TestEnv::sqlite().await).await;
}

/// An `initialize` request as a client sends it.
fn initialize() -> Value {
    json!({"jsonrpc": "2.0", "id": 1, "method": "initialize",
           "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                      "clientInfo": {"name": "curl", "version": "0"}}})
}

async fn a_request_without_a_valid_token_is_refused(env: TestEnv) {
    let server = env.server().await;
    let expired = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": "ed", "org": "acme", "roles": ["editor"],
                "exp": chrono::Utc::now().timestamp() - 3600}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET),
    )
    .unwrap();
    let forged = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": "ed", "org": "acme", "roles": ["editor"],
                "exp": chrono::Utc::now().timestamp() + 3600}),
        &jsonwebtoken::EncodingKey::from_secret(b"not-the-server-secret-but-long-enough"),
    )
    .unwrap();
    for (what, authorization, reason) in [
        ("no token", None, None),
        (
            "an expired token",
            Some(format!("Bearer {expired}")),
            Some("TOKEN_EXPIRED"),
        ),
        (
            "a forged token",
            Some(format!("Bearer {forged}")),
            Some("INVALID_SIGNATURE"),
        ),
        ("not a bearer", Some("Basic YTpi".to_string()), None),
    ] {
        let mut request = server
            .http
            .post(format!("{}/mcp", server.url))
            .header("accept", "application/json, text/event-stream")
            .json(&initialize());
        if let Some(authorization) = &authorization {
            request = request.header("authorization", authorization);
        }
        let response = request.send().await.expect("the server answers");
        assert_eq!(response.status().as_u16(), 401, "{what}");
        assert_eq!(
            response
                .headers()
                .get("www-authenticate")
                .and_then(|v| v.to_str().ok()),
            Some("Bearer"),
            "{what}"
        );
        let body: Value = response.json().await.expect("a JSON body");
        assert_eq!(
            body["error"]["extensions"]["code"], "UNAUTHENTICATED",
            "{what}: {body}"
        );
        if let Some(reason) = reason {
            assert_eq!(
                body["error"]["extensions"]["reason"], reason,
                "{what}: {body}"
            );
        }
    }
    // A session opened with a good token does not carry a later request
    // that has none.
    let good = editor("acme");
    let response = server
        .http
        .post(format!("{}/mcp", server.url))
        .header("accept", "application/json, text/event-stream")
        .bearer_auth(&good)
        .json(&initialize())
        .send()
        .await
        .expect("the server answers");
    assert_eq!(response.status().as_u16(), 200);
    let session = response
        .headers()
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .expect("a session id")
        .to_string();
    let response = server
        .http
        .post(format!("{}/mcp", server.url))
        .header("accept", "application/json, text/event-stream")
        .header("mcp-session-id", &session)
        .json(&json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}))
        .send()
        .await
        .expect("the server answers");
    assert_eq!(response.status().as_u16(), 401);
    // A session is its opener's: another caller, of another organisation
    // or of the same one, cannot use it; the opener can.
    let in_session = |token: &str, message: Value| {
        server
            .http
            .post(format!("{}/mcp", server.url))
            .header("accept", "application/json, text/event-stream")
            .header("mcp-session-id", &session)
            .header("mcp-protocol-version", "2025-06-18")
            .bearer_auth(token)
            .json(&message)
            .send()
    };
    let list = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"});
    for other in [editor("globex"), token("bob", "acme", Role::Editor)] {
        let response = in_session(&other, list.clone()).await.expect("an answer");
        assert_eq!(response.status().as_u16(), 404);
    }
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    let response = in_session(&good, initialized).await.expect("an answer");
    assert_eq!(response.status().as_u16(), 202);
    let response = in_session(&good, list).await.expect("an answer");
    assert_eq!(response.status().as_u16(), 200);
    let body = response.text().await.expect("a body");
    assert!(body.contains(r#""tools":[]"#), "{body}");
    // rmcp's own client gets no session without a token.
    assert!(connect(&server, None).await.is_err());
    assert!(connect(&server, Some(&expired)).await.is_err());
}

#[tokio::test]
async fn a_request_without_a_valid_token_is_refused_on_postgres() {
    a_request_without_a_valid_token_is_refused(TestEnv::postgres().await).await;
}

#[tokio::test]
async fn a_request_without_a_valid_token_is_refused_on_sqlite() {
    a_request_without_a_valid_token_is_refused(TestEnv::sqlite().await).await;
}

async fn a_cancelled_call_stops_its_execution(env: TestEnv) {
    let server = env.server().await;
    let ed = editor("acme");
    let sleeper = sleeper(&server, &ed, 60_000).await;
    expose(&server, &ed, &sleeper, "sleep", json!({"type": "object"})).await;
    let client = connected(&server, &ed).await;
    let request = ClientRequest::CallToolRequest(CallToolRequest::new(
        CallToolRequestParams::new("sleep").with_arguments(Map::new()),
    ));
    let handle = client
        .service
        .send_cancellable_request(request, PeerRequestOptions::no_options())
        .await
        .expect("the call is sent");
    // The run is under way: its delay is running.
    let runs = wait_for_executions(&server, &ed, &sleeper, 1).await;
    let id = runs[0]["id"].as_str().unwrap().to_string();
    server
        .wait_execution(&ed, &id, Duration::from_secs(10), |e| {
            e["steps"]
                .as_array()
                .is_some_and(|steps| steps.iter().any(|s| s["status"] == "running"))
        })
        .await;
    handle
        .cancel(Some("the user changed their mind".into()))
        .await
        .expect("notifications/cancelled is sent");
    let ended = server
        .wait_finished(&ed, &id, Duration::from_secs(10))
        .await;
    assert_eq!(ended["status"], "CANCELLED", "{ended:#}");
    let _ = client.service.cancel().await;
}

#[tokio::test]
async fn a_cancelled_call_stops_its_execution_on_postgres() {
    a_cancelled_call_stops_its_execution(TestEnv::postgres().await).await;
}

#[tokio::test]
async fn a_cancelled_call_stops_its_execution_on_sqlite() {
    a_cancelled_call_stops_its_execution(TestEnv::sqlite().await).await;
}

async fn a_tool_name_belongs_to_one_workflow_of_a_tenant(env: TestEnv) {
    let server = env.server().await;
    let ed = editor("acme");
    let first = greeter(&server, &ed).await;
    let second = greeter(&server, &ed).await;
    expose(&server, &ed, &first, "greet", greet_schema()).await;
    // Setting it again, or changing its schema, keeps the name.
    expose(&server, &ed, &first, "greet", json!({"type": "object"})).await;
    expose(&server, &ed, &first, "greet", greet_schema()).await;
    let set = |id: &str, name: &str| json!({"input": {"id": id, "triggers": [{"mcpTool": {"name": name, "inputSchema": {"type": "object"}}}]}});
    let (_, body) = server
        .post(Some(&ed), SET_TRIGGERS, set(&second, "greet"))
        .await;
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "CONFLICT",
        "{body:#}"
    );
    assert_eq!(
        body["errors"][0]["extensions"]["reason"], "NAME_TAKEN",
        "{body:#}"
    );
    // Renaming the first's tool frees the name for the second.
    expose(&server, &ed, &first, "hello", greet_schema()).await;
    let data = server.ok(&ed, SET_TRIGGERS, set(&second, "greet")).await;
    assert_eq!(
        data["setWorkflowTriggers"]["workflow"]["triggers"],
        json!([{"kind": "mcp_tool", "name": "greet", "description": "",
                "input_schema": {"type": "object"}}])
    );
    let client = connected(&server, &ed).await;
    let mut names: Vec<String> = client
        .service
        .list_all_tools()
        .await
        .expect("tools/list")
        .iter()
        .map(|t| t.name.to_string())
        .collect();
    names.sort();
    assert_eq!(names, ["greet", "hello"]);
    // `greet` now runs the second workflow.
    let result = call(&client, "greet", json!({"who": "Eve"}))
        .await
        .expect("a call");
    assert_eq!(result.is_error, Some(false), "{result:?}");
    assert_eq!(wait_for_executions(&server, &ed, &second, 1).await.len(), 1);
    assert!(executions(&server, &ed, &first).await.is_empty());

    // Unusable triggers are VALIDATION errors naming the field.
    for (triggers, field) in [
        (
            json!([{"mcpTool": {"name": "a b"}}]),
            "input.triggers[0].name",
        ),
        (
            json!([{"mcpTool": {"name": "t", "inputSchema": {"type": "string"}}}]),
            "input.triggers[0].input_schema",
        ),
        (
            json!([{"mcpTool": {"name": "t", "inputSchema": {"type": "object",
                    "properties": {"n": {"type": "integer", "minimum": "zero"}}}}}]),
            "input.triggers[0].input_schema",
        ),
        (
            json!([{"mcpTool": {"name": "t"}}, {"mcpTool": {"name": "u"}}]),
            "input.triggers[1]",
        ),
        (
            json!([{"mcpTool": {"name": "t", "description": "x".repeat(2001)}}]),
            "input.triggers[0].description",
        ),
    ] {
        let (_, body) = server
            .post(
                Some(&ed),
                SET_TRIGGERS,
                json!({"input": {"id": first, "triggers": triggers}}),
            )
            .await;
        assert_eq!(
            body["errors"][0]["extensions"]["code"], "VALIDATION",
            "{body:#}"
        );
        assert_eq!(body["errors"][0]["extensions"]["field"], field, "{body:#}");
    }
    let _ = client.service.cancel().await;
}

#[tokio::test]
async fn a_tool_name_belongs_to_one_workflow_of_a_tenant_on_postgres() {
    a_tool_name_belongs_to_one_workflow_of_a_tenant(TestEnv::postgres().await).await;
}

#[tokio::test]
async fn a_tool_name_belongs_to_one_workflow_of_a_tenant_on_sqlite() {
    a_tool_name_belongs_to_one_workflow_of_a_tenant(TestEnv::sqlite().await).await;
}

async fn calls_count_against_the_callers_rate_of_mutations(env: TestEnv) {
    let mut config = env.config();
    config.limits.rate.per_subject.mutations = Some(toolhub_api::config::Rate::per_minute(3));
    let server = env.server_with(config).await;
    let ed = editor("acme");
    let greeter = greeter(&server, &ed).await;
    // Creating the workflow and setting its triggers are two mutations of
    // the three.
    expose(&server, &ed, &greeter, "greet", greet_schema()).await;
    let client = connected(&server, &ed).await;
    let first = call(&client, "greet", json!({"who": "Ada"}))
        .await
        .expect("within the rate");
    assert_eq!(first.is_error, Some(false), "{first:?}");
    let error = call(&client, "greet", json!({"who": "Bob"}))
        .await
        .expect_err("over the rate");
    assert_eq!(error_code(&error), -32029, "{error:?}");
    let ServiceError::McpError(data) = &error else {
        unreachable!("error_code checked it")
    };
    let data = data.data.clone().unwrap_or_default();
    assert_eq!(data["code"], "RATE_LIMITED", "{data}");
    assert!(
        data["retryAfter"].as_u64().is_some_and(|s| s >= 1),
        "{data}"
    );
    // Listing is a query: it has its own budget.
    assert_eq!(
        client.service.list_all_tools().await.expect("listed").len(),
        1
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(executions(&server, &ed, &greeter).await.len(), 1);
    let _ = client.service.cancel().await;
}

#[tokio::test]
async fn calls_count_against_the_callers_rate_of_mutations_on_postgres() {
    calls_count_against_the_callers_rate_of_mutations(TestEnv::postgres().await).await;
}

#[tokio::test]
async fn calls_count_against_the_callers_rate_of_mutations_on_sqlite() {
    calls_count_against_the_callers_rate_of_mutations(TestEnv::sqlite().await).await;
}

async fn a_caller_holds_a_bounded_number_of_sessions(env: TestEnv) {
    let server = env.server().await;
    let many = token("many", "acme", Role::Viewer);
    let open = |token: String| {
        server
            .http
            .post(format!("{}/mcp", server.url))
            .header("accept", "application/json, text/event-stream")
            .bearer_auth(token)
            .json(&initialize())
            .send()
    };
    let mut sessions = Vec::new();
    for _ in 0..64 {
        let response = open(many.clone()).await.expect("an answer");
        assert_eq!(response.status().as_u16(), 200);
        let id = response.headers()["mcp-session-id"]
            .to_str()
            .unwrap()
            .to_string();
        sessions.push(id);
    }
    let refused = open(many.clone()).await.expect("an answer");
    assert_eq!(refused.status().as_u16(), 429);
    let body: Value = refused.json().await.expect("a JSON body");
    assert_eq!(
        body["error"]["extensions"]["reason"], "SESSIONS_PER_CALLER",
        "{body}"
    );
    // Another caller has sessions of their own.
    let other = open(token("other", "acme", Role::Viewer))
        .await
        .expect("an answer");
    assert_eq!(other.status().as_u16(), 200);
    // Closing one makes room for another.
    let closed = server
        .http
        .delete(format!("{}/mcp", server.url))
        .header("mcp-session-id", &sessions[0])
        .header("mcp-protocol-version", "2025-06-18")
        .bearer_auth(&many)
        .send()
        .await
        .expect("an answer");
    assert!(closed.status().is_success(), "{}", closed.status());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let again = open(many.clone()).await.expect("an answer");
        if again.status().as_u16() == 200 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{}", again.status());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_caller_holds_a_bounded_number_of_sessions_on_postgres() {
    a_caller_holds_a_bounded_number_of_sessions(TestEnv::postgres().await).await;
}

#[tokio::test]
async fn a_caller_holds_a_bounded_number_of_sessions_on_sqlite() {
    a_caller_holds_a_bounded_number_of_sessions(TestEnv::sqlite().await).await;
}
