//! The engine through the service: executions that really run, on both
//! backends.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use toolhub_domain::Role;
use toolhub_engine::egress::EgressPolicy;
use toolhub_tests::everything::{server_everything, HttpServer};
use toolhub_tests::{branching_definition, captured_logs, step, token, TestEnv};

async fn conditions_take_each_branch(env: TestEnv) {
    let server = env.server().await;
    let editor = token("ada", "acme", Role::Editor);
    let workflow = server
        .create_workflow(&editor, "Branching", branching_definition())
        .await;

    let big = server
        .start_execution(&editor, &workflow, json!({"n": 5, "name": "Ada"}))
        .await;
    let small = server
        .start_execution(&editor, &workflow, json!({"n": 1, "name": "Bo"}))
        .await;
    let big = server
        .wait_finished(&editor, &big, Duration::from_secs(10))
        .await;
    let small = server
        .wait_finished(&editor, &small, Duration::from_secs(10))
        .await;

    assert_eq!(big["status"], "COMPLETED", "{big:#}");
    assert_eq!(step(&big, "check")["output"], json!({"result": true}));
    assert_eq!(step(&big, "small")["status"], "skipped");
    assert_eq!(
        big["output"],
        json!({"done": {"greeting": "hello Ada", "big": {"size": "big", "n": 5}, "small": null}})
    );
    assert_eq!(small["status"], "COMPLETED", "{small:#}");
    assert_eq!(step(&small, "big")["status"], "skipped");
    assert_eq!(small["output"]["done"]["small"], json!({"size": "small"}));
    let states: Vec<(&str, &str)> = small["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["id"].as_str().unwrap(), n["state"].as_str().unwrap()))
        .collect();
    assert_eq!(
        states,
        [
            ("shape", "DONE"),
            ("check", "DONE"),
            ("big", "SKIPPED"),
            ("small", "DONE"),
            ("done", "DONE")
        ]
    );
}

#[tokio::test]
async fn conditions_take_each_branch_on_postgres() {
    conditions_take_each_branch(TestEnv::postgres().await).await;
}

#[tokio::test]
async fn conditions_take_each_branch_on_sqlite() {
    conditions_take_each_branch(TestEnv::sqlite().await).await;
}

// ------------------------------------------------------------------ MCP

const REGISTER: &str =
    "mutation ($input: RegisterMcpServerInput!) { registerMcpServer(input: $input) { id } }";

/// Registers the reference server under `name`; returns its id.
async fn register(
    server: &toolhub_tests::TestServer,
    token: &str,
    name: &str,
    transport: Value,
) -> String {
    let data = server
        .ok(
            token,
            REGISTER,
            json!({"input": {"name": name, "transport": transport}}),
        )
        .await;
    data["registerMcpServer"]["id"]
        .as_str()
        .unwrap()
        .to_string()
}

fn stdio(env: Value) -> Value {
    json!({
        "kind": "stdio",
        "command": "node",
        "args": [server_everything().display().to_string(), "stdio"],
        "env": env
    })
}

/// `echo → sum → report`, and `env` beside them, reading the server's
/// environment.
fn mcp_workflow(server: &str) -> Value {
    json!({
        "nodes": [
            {"id": "echo", "type": "mcp_tool",
             "params": {"server": server, "tool": "echo", "arguments": {"message": "{{input.message}}"}}},
            {"id": "sum", "type": "mcp_tool",
             "params": {"server": server, "tool": "get-sum", "arguments": {"a": "{{input.a}}", "b": 3}}},
            {"id": "report", "type": "transform",
             "params": {"template": {"echoed": "{{nodes.echo.text}}", "sum": "{{nodes.sum.text}}"}}},
            {"id": "env", "type": "mcp_tool", "params": {"server": server, "tool": "get-env"}}
        ],
        "edges": [{"from": "echo", "to": "sum"}, {"from": "sum", "to": "report"}]
    })
}

async fn an_mcp_workflow_runs_with_secrets_masked(env: TestEnv, http: bool) {
    let logs = captured_logs();
    let mut config = env.config();
    // The Streamable HTTP server listens on loopback.
    config.engine.egress = EgressPolicy::parse("127.0.0.1/32").unwrap();
    let server = env.server_with(config).await;
    let admin = token("root", "acme", Role::Admin);
    let editor = token("ada", "acme", Role::Editor);
    let secret = format!("s3cr3t-{}", uuid::Uuid::new_v4().simple());
    server
        .ok(
            &admin,
            "mutation ($input: CreateSecretInput!) { createSecret(input: $input) { id } }",
            json!({"input": {"name": "API_TOKEN", "value": secret}}),
        )
        .await;
    let reference = HttpServer::start().await;
    let transport = if http {
        json!({"kind": "streamable_http", "url": reference.url(),
               "headers": {"X-Api-Key": "{{secrets.API_TOKEN}}"}})
    } else {
        stdio(json!({"API_TOKEN": "{{secrets.API_TOKEN}}"}))
    };
    let id = register(&server, &editor, "everything", transport).await;

    // Discovery: the tools of the server, then across the tenant.
    let refreshed = server
        .ok(
            &editor,
            "mutation ($input: McpServerIdInput!) { refreshMcpServerTools(input: $input) { mcpServer { tools { name } } } }",
            json!({"input": {"id": id}}),
        )
        .await;
    let names: Vec<&str> = refreshed["refreshMcpServerTools"]["mcpServer"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    for tool in [
        "echo",
        "get-sum",
        "get-env",
        "trigger-long-running-operation",
    ] {
        assert!(names.contains(&tool), "{tool} in {names:?}");
    }
    let found = server
        .ok(
            &editor,
            "{ mcpTools(search: \"SUM\") { edges { node { name serverName serverId } } } }",
            json!({}),
        )
        .await;
    assert_eq!(
        found["mcpTools"]["edges"],
        json!([{"node": {"name": "get-sum", "serverName": "everything", "serverId": id}}])
    );
    let health = server
        .ok(
            &editor,
            "mutation ($input: McpServerIdInput!) { checkMcpServerHealth(input: $input) { mcpServer { healthy latencyMs } } }",
            json!({"input": {"id": id}}),
        )
        .await;
    assert_eq!(
        health["checkMcpServerHealth"]["mcpServer"]["healthy"], true,
        "{health}"
    );

    // The run.
    let workflow = server
        .create_workflow(&editor, "MCP", mcp_workflow("everything"))
        .await;
    let execution = server
        .start_execution(&editor, &workflow, json!({"message": "hi there", "a": 2}))
        .await;
    let done = server
        .wait_finished(&editor, &execution, Duration::from_secs(30))
        .await;
    assert_eq!(done["status"], "COMPLETED", "{done:#}");
    assert_eq!(step(&done, "echo")["output"]["text"], "Echo: hi there");
    assert_eq!(
        step(&done, "sum")["output"]["text"],
        "The sum of 2 and 3 is 5."
    );
    assert_eq!(
        done["output"]["report"],
        json!({"echoed": "Echo: hi there", "sum": "The sum of 2 and 3 is 5."})
    );
    let recorded = step(&done, "env")["output"].to_string();
    assert!(
        !recorded.contains(&secret),
        "the secret is masked: {recorded}"
    );
    if !http {
        // The stdio server got the value in its environment, and the
        // recorded output shows the mask in its place.
        assert!(recorded.contains("API_TOKEN"), "{recorded}");
        assert!(recorded.contains("***"), "{recorded}");
    }
    // Nowhere: not in the database, the data directory, or the logs.
    let stored = if env.db.is_postgres() {
        toolhub_tests::pg_dump(env.db.url())
    } else {
        toolhub_tests::sqlite_bytes(env.db.url())
    };
    assert!(stored.contains("StepSucceeded"), "the log was read");
    assert!(!stored.contains(&secret), "the secret is stored somewhere");
    let logs = String::from_utf8_lossy(&logs.lock().unwrap()).to_string();
    assert!(!logs.contains(&secret), "the secret is in the logs");
}

#[tokio::test]
async fn an_mcp_workflow_runs_over_stdio_with_secrets_masked_on_postgres() {
    an_mcp_workflow_runs_with_secrets_masked(TestEnv::postgres().await, false).await;
}

#[tokio::test]
async fn an_mcp_workflow_runs_over_stdio_with_secrets_masked_on_sqlite() {
    an_mcp_workflow_runs_with_secrets_masked(TestEnv::sqlite().await, false).await;
}

#[tokio::test]
async fn an_mcp_workflow_runs_over_streamable_http_on_postgres() {
    an_mcp_workflow_runs_with_secrets_masked(TestEnv::postgres().await, true).await;
}

#[tokio::test]
async fn an_mcp_workflow_runs_over_streamable_http_on_sqlite() {
    an_mcp_workflow_runs_with_secrets_masked(TestEnv::sqlite().await, true).await;
}

// ----------------------------------------------------------------- HTTP

/// A local HTTP server for `http` nodes: `/flaky` answers 503 until its
/// third request, `/slow` takes two seconds, `/json` answers JSON,
/// `/redirect?to=URL` redirects.
struct Upstream {
    /// Where it listens.
    address: std::net::SocketAddr,
    /// Requests to `/flaky` so far.
    flaky: Arc<AtomicUsize>,
    /// The server task.
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    async fn start() -> Self {
        use axum::extract::{Query, State};
        use axum::http::{header, StatusCode};
        use axum::response::IntoResponse;
        use axum::routing::get;
        let flaky = Arc::new(AtomicUsize::new(0));
        let app = axum::Router::new()
            .route(
                "/flaky",
                get(|State(count): State<Arc<AtomicUsize>>| async move {
                    if count.fetch_add(1, Ordering::SeqCst) < 2 {
                        (StatusCode::SERVICE_UNAVAILABLE, "try later").into_response()
                    } else {
                        axum::Json(json!({"ok": true})).into_response()
                    }
                }),
            )
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    "late"
                }),
            )
            .route(
                "/json",
                get(|| async { axum::Json(json!({"greeting": "hi"})) }),
            )
            .route(
                "/redirect",
                get(
                    |Query(q): Query<std::collections::HashMap<String, String>>| async move {
                        (
                            StatusCode::FOUND,
                            [(header::LOCATION, q.get("to").cloned().unwrap_or_default())],
                        )
                    },
                ),
            )
            .with_state(flaky.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            address,
            flaky,
            task,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn http_node(id: &str, url: &str) -> Value {
    json!({"id": id, "type": "http", "params": {"method": "GET", "url": url}})
}

/// A server whose engine may reach loopback (where the test's upstream
/// listens).
async fn loopback_server(env: &TestEnv) -> toolhub_tests::TestServer {
    let mut config = env.config();
    config.engine.egress = EgressPolicy::parse("127.0.0.1/32").unwrap();
    env.server_with(config).await
}

async fn http_retries_then_succeeds(env: TestEnv) {
    let upstream = Upstream::start().await;
    let server = loopback_server(&env).await;
    let editor = token("ada", "acme", Role::Editor);
    let mut node = http_node("fetch", &upstream.url("/flaky"));
    node["retry"] = json!({"max_attempts": 3, "backoff_ms": 50});
    let workflow = server
        .create_workflow(&editor, "Flaky", json!({"nodes": [node], "edges": []}))
        .await;
    let execution = server.start_execution(&editor, &workflow, json!({})).await;
    let done = server
        .wait_finished(&editor, &execution, Duration::from_secs(15))
        .await;
    assert_eq!(done["status"], "COMPLETED", "{done:#}");
    let attempts: Vec<(u64, &str)> = done["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["attempt"].as_u64().unwrap(),
                s["status"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(attempts, [(1, "failed"), (2, "failed"), (3, "succeeded")]);
    assert!(
        done["steps"][0]["error"].as_str().unwrap().contains("503"),
        "{done:#}"
    );
    assert_eq!(step(&done, "fetch")["output"]["status"], 200);
    assert_eq!(step(&done, "fetch")["output"]["body"], json!({"ok": true}));
    assert_eq!(upstream.flaky.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn an_http_step_retries_a_503_with_backoff_then_succeeds_on_postgres() {
    http_retries_then_succeeds(TestEnv::postgres().await).await;
}

#[tokio::test]
async fn an_http_step_retries_a_503_with_backoff_then_succeeds_on_sqlite() {
    http_retries_then_succeeds(TestEnv::sqlite().await).await;
}

#[tokio::test]
async fn a_step_longer_than_its_timeout_fails_the_execution() {
    let env = TestEnv::postgres().await;
    let upstream = Upstream::start().await;
    let server = loopback_server(&env).await;
    let editor = token("ada", "acme", Role::Editor);
    let mut node = http_node("fetch", &upstream.url("/slow"));
    node["timeout_ms"] = json!(300);
    let workflow = server
        .create_workflow(&editor, "Slow", json!({"nodes": [node], "edges": []}))
        .await;
    let started = std::time::Instant::now();
    let execution = server.start_execution(&editor, &workflow, json!({})).await;
    let done = server
        .wait_finished(&editor, &execution, Duration::from_secs(10))
        .await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the timeout cut it short"
    );
    assert_eq!(done["status"], "FAILED", "{done:#}");
    let error = step(&done, "fetch")["error"].as_str().unwrap();
    assert!(
        error.contains("timed out") || error.contains("timeout"),
        "{error}"
    );
    assert!(
        done["error"].as_str().unwrap().contains("fetch"),
        "{done:#}"
    );
}

/// Runs a one-node workflow against `url` and returns the ended execution.
async fn fetch_once(server: &toolhub_tests::TestServer, token: &str, url: &str) -> Value {
    let workflow = server
        .create_workflow(
            token,
            "Fetch",
            json!({"nodes": [http_node("fetch", url)], "edges": []}),
        )
        .await;
    let execution = server.start_execution(token, &workflow, json!({})).await;
    server
        .wait_finished(token, &execution, Duration::from_secs(15))
        .await
}

#[tokio::test]
async fn the_egress_policy_refuses_internal_addresses_and_redirects_to_them() {
    let env = TestEnv::postgres().await;
    let upstream = Upstream::start().await;
    let editor = token("ada", "acme", Role::Editor);
    {
        // No allow-list: every internal address is refused before any
        // connection, the test's own upstream on loopback included.
        let server = env.server().await;
        let port = upstream.address.port();
        for url in [
            format!("http://127.0.0.1:{port}/json"),
            "http://10.0.0.1/".to_string(),
            "http://169.254.169.254/latest/meta-data/".to_string(),
            format!("http://[::1]:{port}/json"),
            format!("http://localhost:{port}/json"),
        ] {
            let done = fetch_once(&server, &editor, &url).await;
            assert_eq!(done["status"], "FAILED", "{url}: {done:#}");
            let error = step(&done, "fetch")["error"].as_str().unwrap().to_string();
            assert!(error.contains("egress policy"), "{url}: {error}");
        }
    }
    // Loopback allowed: the upstream answers, and a redirect from it to a
    // private address is still refused.
    let server = loopback_server(&env).await;
    let done = fetch_once(&server, &editor, &upstream.url("/json")).await;
    assert_eq!(done["status"], "COMPLETED", "{done:#}");
    assert_eq!(
        step(&done, "fetch")["output"]["body"],
        json!({"greeting": "hi"})
    );
    let done = fetch_once(
        &server,
        &editor,
        &upstream.url("/redirect?to=http://10.0.0.1/secret"),
    )
    .await;
    assert_eq!(done["status"], "FAILED", "{done:#}");
    let error = step(&done, "fetch")["error"].as_str().unwrap();
    assert!(error.contains("egress policy"), "{error}");
}

// ------------------------------------------------- concurrency and size

#[tokio::test]
async fn independent_branches_run_at_the_same_time() {
    let env = TestEnv::postgres().await;
    let upstream = Upstream::start().await;
    let server = loopback_server(&env).await;
    let editor = token("ada", "acme", Role::Editor);
    // Three two-second requests side by side, then a join.
    let slow = upstream.url("/slow");
    let workflow = server
        .create_workflow(
            &editor,
            "Parallel",
            json!({
                "nodes": [
                    http_node("a", &slow), http_node("b", &slow), http_node("c", &slow),
                    {"id": "join", "type": "transform",
                     "params": {"template": ["{{nodes.a.body}}", "{{nodes.b.body}}", "{{nodes.c.body}}"]}}
                ],
                "edges": [{"from": "a", "to": "join"}, {"from": "b", "to": "join"}, {"from": "c", "to": "join"}]
            }),
        )
        .await;
    let started = std::time::Instant::now();
    let execution = server.start_execution(&editor, &workflow, json!({})).await;
    let done = server
        .wait_finished(&editor, &execution, Duration::from_secs(20))
        .await;
    let took = started.elapsed();
    assert_eq!(done["status"], "COMPLETED", "{done:#}");
    assert_eq!(done["output"]["join"], json!(["late", "late", "late"]));
    assert!(
        took < Duration::from_millis(5_000),
        "three 2 s branches took {took:?}: they did not run side by side"
    );
}

#[tokio::test]
async fn a_thirty_node_workflow_completes() {
    let env = TestEnv::sqlite().await;
    let server = env.server().await;
    let editor = token("ada", "acme", Role::Editor);
    // A chain of ten, fanning out to nineteen that each read the chain's
    // end, joined by the last.
    let mut nodes = Vec::new();
    let mut edges = Vec::new();
    for i in 0..10 {
        let template = if i == 0 {
            json!("{{input.seed}}")
        } else {
            json!({"prev": format!("{{{{nodes.c{}}}}}", i - 1)})
        };
        nodes.push(
            json!({"id": format!("c{i}"), "type": "transform", "params": {"template": template}}),
        );
        if i > 0 {
            edges.push(json!({"from": format!("c{}", i - 1), "to": format!("c{i}")}));
        }
    }
    for i in 0..19 {
        nodes.push(json!({"id": format!("f{i}"), "type": "transform",
                          "params": {"template": {"i": i, "seed": "{{input.seed}}"}}}));
        edges.push(json!({"from": "c9", "to": format!("f{i}")}));
        edges.push(json!({"from": format!("f{i}"), "to": "end"}));
    }
    nodes
        .push(json!({"id": "end", "type": "transform", "params": {"template": "{{nodes.f18.i}}"}}));
    assert_eq!(nodes.len(), 30);
    let workflow = server
        .create_workflow(&editor, "Thirty", json!({"nodes": nodes, "edges": edges}))
        .await;
    let execution = server
        .start_execution(&editor, &workflow, json!({"seed": 7}))
        .await;
    let done = server
        .wait_finished(&editor, &execution, Duration::from_secs(20))
        .await;
    assert_eq!(done["status"], "COMPLETED", "{done:#}");
    assert_eq!(done["output"], json!({"end": 18}));
    assert_eq!(done["steps"].as_array().unwrap().len(), 30);
}

// ------------------------------------------------------- control: debug

const UPDATED: &str = "subscription ($id: ID!, $after: String) { executionUpdated(id: $id, after: $after) { status pausedAt nodes { id state } } }";
const RESUME: &str = "mutation ($input: ResumeExecutionInput!) { resumeExecution(input: $input) { execution { status } } }";

/// Waits on the subscription until the execution is in `status` (pausedAt
/// `at`, when given); returns what it saw last.
async fn until(ws: &mut toolhub_tests::WsClient, status: &str, at: Option<&str>) -> Value {
    loop {
        let data = ws.next_data("run").await;
        let execution = &data["executionUpdated"];
        if execution["status"] == status && at.is_none_or(|node| execution["pausedAt"] == node) {
            return execution.clone();
        }
    }
}

async fn breakpoints_pause_step_and_resume(env: TestEnv) {
    let server = env.server().await;
    let editor = token("ada", "acme", Role::Editor);
    let chain = json!({
        "nodes": [
            {"id": "a", "type": "transform", "params": {"template": 1}},
            {"id": "b", "type": "transform", "params": {"template": 2}},
            {"id": "c", "type": "transform", "params": {"template": 3}},
            {"id": "d", "type": "transform", "params": {"template": "{{nodes.c}}"}}
        ],
        "edges": [{"from": "a", "to": "b"}, {"from": "b", "to": "c"}, {"from": "c", "to": "d"}]
    });
    let created = server
        .ok(
            &editor,
            "mutation ($input: CreateWorkflowInput!) { createWorkflow(input: $input) { id position } }",
            json!({"input": {"name": "Chain", "definition": chain}}),
        )
        .await;
    let workflow = created["createWorkflow"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let before = created["createWorkflow"]["position"]
        .as_str()
        .unwrap()
        .to_string();
    let execution = server
        .start_execution_with(
            &editor,
            json!({"workflowId": workflow, "breakpoints": ["b"]}),
        )
        .await;
    let mut ws = server.ws_authenticated(&editor).await;
    // From before the start, so that no change is missed.
    ws.subscribe("run", UPDATED, json!({"id": execution, "after": before}))
        .await;
    let paused = until(&mut ws, "PAUSED", Some("b")).await;
    let states: Vec<&str> = paused["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["DONE", "READY", "PENDING", "PENDING"]);

    // Step over: b runs, and the run pauses before c.
    server
        .ok(
            &editor,
            RESUME,
            json!({"input": {"id": execution, "step": true}}),
        )
        .await;
    let stepped = until(&mut ws, "PAUSED", Some("c")).await;
    assert_eq!(stepped["nodes"][1]["state"], "DONE");
    assert_eq!(stepped["nodes"][2]["state"], "READY");

    // Resume: past c (not paused at it again), to the end.
    server
        .ok(&editor, RESUME, json!({"input": {"id": execution}}))
        .await;
    let finished = until(&mut ws, "COMPLETED", None).await;
    assert!(finished["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .all(|n| n["state"] == "DONE"));
    let done = server.execution(&editor, &execution).await;
    assert_eq!(done["output"], json!({"d": 3}));
}

#[tokio::test]
async fn breakpoints_pause_step_and_resume_seen_live_on_postgres() {
    breakpoints_pause_step_and_resume(TestEnv::postgres().await).await;
}

#[tokio::test]
async fn breakpoints_pause_step_and_resume_seen_live_on_sqlite() {
    breakpoints_pause_step_and_resume(TestEnv::sqlite().await).await;
}

// --------------------------------------------------------- control: stop

async fn a_stop_cancels_a_long_tool_call_within_a_second(env: TestEnv) {
    let server = env.server().await;
    let editor = token("ada", "acme", Role::Editor);
    register(&server, &editor, "everything", stdio(json!({}))).await;
    let workflow = server
        .create_workflow(
            &editor,
            "Long",
            json!({"nodes": [{"id": "long", "type": "mcp_tool", "params": {
                "server": "everything", "tool": "trigger-long-running-operation",
                "arguments": {"duration": 30, "steps": 30}}}], "edges": []}),
        )
        .await;
    let execution = server.start_execution(&editor, &workflow, json!({})).await;
    server
        .wait_execution(&editor, &execution, Duration::from_secs(30), |e| {
            e["steps"].as_array().is_some_and(|s| !s.is_empty())
                && step(e, "long")["status"] == "running"
        })
        .await;
    // Let the call reach the server.
    tokio::time::sleep(Duration::from_millis(500)).await;
    server
        .ok(
            &editor,
            "mutation ($input: ExecutionIdInput!) { stopExecution(input: $input) { id } }",
            json!({"input": {"id": execution}}),
        )
        .await;
    let stopped = std::time::Instant::now();
    let done = server
        .wait_execution(&editor, &execution, Duration::from_secs(10), |e| {
            e["status"] == "CANCELLED"
        })
        .await;
    let took = stopped.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "cancelled {took:?} after the stop"
    );
    assert_eq!(step(&done, "long")["status"], "failed");
    assert!(step(&done, "long")["error"]
        .as_str()
        .unwrap()
        .contains("cancelled"));
}

#[tokio::test]
async fn a_stop_cancels_a_long_tool_call_within_a_second_on_postgres() {
    a_stop_cancels_a_long_tool_call_within_a_second(TestEnv::postgres().await).await;
}

#[tokio::test]
async fn a_stop_cancels_a_long_tool_call_within_a_second_on_sqlite() {
    a_stop_cancels_a_long_tool_call_within_a_second(TestEnv::sqlite().await).await;
}

// ------------------------------------------------------- durable timers

async fn a_delay_survives_a_restart(env: TestEnv) {
    let editor = token("ada", "acme", Role::Editor);
    let mut server = env.server().await;
    let workflow = server
        .create_workflow(
            &editor,
            "Wait",
            json!({
                "nodes": [
                    {"id": "wait", "type": "delay", "params": {"milliseconds": 4000}},
                    {"id": "after", "type": "transform", "params": {"template": "{{nodes.wait.waited_ms}}"}}
                ],
                "edges": [{"from": "wait", "to": "after"}]
            }),
        )
        .await;
    let started = std::time::Instant::now();
    let execution = server.start_execution(&editor, &workflow, json!({})).await;
    server
        .wait_execution(&editor, &execution, Duration::from_secs(10), |e| {
            e["steps"].as_array().is_some_and(|s| !s.is_empty())
        })
        .await;
    // The service goes away while the delay runs; another one, on the same
    // database, finishes the run when the delay is due.
    server.stop().await;
    let server = env.server().await;
    let done = server
        .wait_finished(&editor, &execution, Duration::from_secs(20))
        .await;
    assert_eq!(done["status"], "COMPLETED", "{done:#}");
    assert_eq!(done["output"], json!({"after": 4000}));
    assert!(
        started.elapsed() >= Duration::from_millis(4000),
        "the delay was kept"
    );
}

#[tokio::test]
async fn a_delay_survives_a_restart_on_postgres() {
    a_delay_survives_a_restart(TestEnv::postgres().await).await;
}

#[tokio::test]
async fn a_delay_survives_a_restart_on_sqlite() {
    a_delay_survives_a_restart(TestEnv::sqlite().await).await;
}

// ------------------------------------------------------------ bad input

const START: &str =
    "mutation ($input: StartExecutionInput!) { startExecution(input: $input) { id } }";

#[tokio::test]
async fn starting_refuses_what_cannot_start_with_a_clear_code() {
    let env = TestEnv::postgres().await;
    let server = env.server().await;
    let editor = token("ada", "acme", Role::Editor);
    let other = token("eve", "globex", Role::Editor);
    let viewer = token("vic", "acme", Role::Viewer);
    let workflow = server
        .create_workflow(&editor, "Branching", branching_definition())
        .await;
    let start = |input: Value| json!({ "input": input });

    let unknown = uuid::Uuid::now_v7().to_string();
    assert_eq!(
        server
            .error_code(Some(&editor), START, start(json!({"workflowId": unknown})))
            .await,
        "NOT_FOUND"
    );
    assert_eq!(
        server
            .error_code(Some(&other), START, start(json!({"workflowId": workflow})))
            .await,
        "NOT_FOUND",
        "another tenant's workflow is not found"
    );
    assert_eq!(
        server
            .error_code(Some(&viewer), START, start(json!({"workflowId": workflow})))
            .await,
        "FORBIDDEN"
    );
    assert_eq!(
        server
            .error_code(
                Some(&editor),
                START,
                start(json!({"workflowId": "not-an-id"}))
            )
            .await,
        "VALIDATION"
    );
    let (_, body) = server
        .post(
            Some(&editor),
            START,
            start(json!({"workflowId": workflow, "breakpoints": ["nope"]})),
        )
        .await;
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "VALIDATION",
        "{body}"
    );
    assert_eq!(
        body["errors"][0]["extensions"]["field"],
        "input.breakpoints"
    );
    let (_, body) = server
        .post(
            Some(&editor),
            START,
            start(json!({"workflowId": workflow, "idempotencyKey": "a\u{0}b"})),
        )
        .await;
    assert_eq!(
        body["errors"][0]["extensions"]["field"],
        "input.idempotencyKey"
    );

    server
        .ok(
            &editor,
            "mutation ($input: WorkflowIdInput!) { archiveWorkflow(input: $input) { id } }",
            json!({"input": {"id": workflow}}),
        )
        .await;
    let (_, body) = server
        .post(Some(&editor), START, start(json!({"workflowId": workflow})))
        .await;
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "CONFLICT",
        "{body}"
    );
    assert_eq!(body["errors"][0]["extensions"]["reason"], "ARCHIVED");
}

#[tokio::test]
async fn the_same_idempotency_key_returns_the_first_execution() {
    let env = TestEnv::sqlite().await;
    let server = env.server().await;
    let editor = token("ada", "acme", Role::Editor);
    let other = token("eve", "globex", Role::Editor);
    let workflow = server
        .create_workflow(&editor, "Branching", branching_definition())
        .await;
    let input = json!({"workflowId": workflow, "input": {"n": 1, "name": "x"}, "idempotencyKey": "order-42"});
    let first = server.start_execution_with(&editor, input.clone()).await;
    let again = server.start_execution_with(&editor, input).await;
    assert_eq!(first, again);
    let listed = server
        .ok(
            &editor,
            "query ($w: ID!) { executions(filter: {workflowId: $w}, consistency: null) { edges { node { id } } } }",
            json!({"w": workflow}),
        )
        .await;
    assert_eq!(listed["executions"]["edges"].as_array().unwrap().len(), 1);
    // Keys are the tenant's own.
    let theirs = server
        .create_workflow(&other, "Theirs", branching_definition())
        .await;
    let different = server
        .start_execution_with(
            &other,
            json!({"workflowId": theirs, "input": {"n": 1, "name": "y"}, "idempotencyKey": "order-42"}),
        )
        .await;
    assert_ne!(different, first);
}

/// Runs a one-node `mcp_tool` workflow on `server_name` and returns the
/// ended execution.
async fn call_once(
    server: &toolhub_tests::TestServer,
    token: &str,
    server_name: &str,
    tool: &str,
) -> Value {
    let workflow = server
        .create_workflow(
            token,
            "Call",
            json!({"nodes": [{"id": "call", "type": "mcp_tool",
                              "params": {"server": server_name, "tool": tool}}], "edges": []}),
        )
        .await;
    let execution = server.start_execution(token, &workflow, json!({})).await;
    server
        .wait_finished(token, &execution, Duration::from_secs(40))
        .await
}

#[tokio::test]
async fn broken_mcp_servers_and_tools_fail_their_step_with_a_clear_error() {
    let env = TestEnv::postgres().await;
    let mut config = env.config();
    // A server that never answers `initialize` is given up on quickly.
    config.engine.mcp_pool.initialize_timeout = Duration::from_secs(3);
    let server = env.server_with(config).await;
    let editor = token("ada", "acme", Role::Editor);
    let dir = tempfile::tempdir().unwrap();
    let script = |name: &str, body: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, body).unwrap();
        path.display().to_string()
    };
    let garbage = script(
        "garbage.js",
        "setInterval(() => console.log('not json'), 50);",
    );
    let exits = script("exits.js", "process.exit(3);");
    register(&server, &editor, "everything", stdio(json!({}))).await;
    let disabled = register(&server, &editor, "off", stdio(json!({}))).await;
    server
        .ok(
            &editor,
            "mutation ($input: McpServerIdInput!) { disableMcpServer(input: $input) { id } }",
            json!({"input": {"id": disabled}}),
        )
        .await;
    register(
        &server,
        &editor,
        "missing",
        json!({"kind": "stdio", "command": "no-such-command-here"}),
    )
    .await;
    register(
        &server,
        &editor,
        "garbage",
        json!({"kind": "stdio", "command": "node", "args": [garbage]}),
    )
    .await;
    register(
        &server,
        &editor,
        "exits",
        json!({"kind": "stdio", "command": "node", "args": [exits]}),
    )
    .await;

    for (name, tool, expected) in [
        ("everything", "no-such-tool", "has no tool"),
        ("off", "echo", "disabled"),
        ("nowhere", "echo", "no MCP server"),
        ("missing", "echo", "no-such-command-here"),
        ("garbage", "echo", ""),
        ("exits", "echo", ""),
    ] {
        let done = call_once(&server, &editor, name, tool).await;
        assert_eq!(done["status"], "FAILED", "{name}: {done:#}");
        let error = step(&done, "call")["error"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(!error.is_empty(), "{name}: a step error says why");
        assert!(error.contains(expected), "{name}: {error}");
        assert!(
            done["error"].as_str().unwrap().contains("call"),
            "{name}: {done:#}"
        );
    }
}

// ------------------------------------------------ masking, timeouts, health

#[tokio::test]
async fn masking_rules_keep_personal_data_out_of_what_is_recorded() {
    let env = TestEnv::sqlite().await;
    let server = env.server().await;
    let editor = token("ada", "acme", Role::Editor);
    let workflow = server
        .create_workflow(
            &editor,
            "Customer",
            json!({
                "nodes": [{"id": "shape", "type": "transform", "params": {"template": {
                    "customer": {"email": "{{input.email}}", "ssn": "{{input.ssn}}", "name": "{{input.name}}"},
                    "note": "write to {{input.email}} or call +44 20 7946 0958"
                }}}],
                "edges": [],
                "masking": {"paths": ["$..ssn"], "detectors": ["email", "phone"]}
            }),
        )
        .await;
    let execution = server
        .start_execution(
            &editor,
            &workflow,
            json!({"email": "ada@example.com", "ssn": "078-05-1120", "name": "Ada"}),
        )
        .await;
    let done = server
        .wait_finished(&editor, &execution, Duration::from_secs(10))
        .await;
    assert_eq!(done["status"], "COMPLETED", "{done:#}");
    let output = &step(&done, "shape")["output"];
    assert_eq!(output["customer"]["ssn"], "***");
    assert_eq!(output["customer"]["email"], "***");
    assert_eq!(output["customer"]["name"], "Ada");
    assert_eq!(output["note"], "write to *** or call ***");
    // No step recorded any of it (the run's own input is recorded as the
    // caller sent it; the rules cover what the steps record).
    let steps = done["steps"].to_string();
    for personal in ["078-05-1120", "ada@example.com", "+44 20 7946 0958"] {
        assert!(!steps.contains(personal), "{personal} in {steps}");
    }
}

#[tokio::test]
async fn a_run_longer_than_the_execution_timeout_fails() {
    let env = TestEnv::postgres().await;
    let mut config = env.config();
    config.engine.execution_timeout = Duration::from_secs(1);
    let server = env.server_with(config).await;
    let editor = token("ada", "acme", Role::Editor);
    let workflow = server
        .create_workflow(
            &editor,
            "Too long",
            json!({"nodes": [{"id": "wait", "type": "delay", "params": {"milliseconds": 5000}}], "edges": []}),
        )
        .await;
    let execution = server.start_execution(&editor, &workflow, json!({})).await;
    let done = server
        .wait_finished(&editor, &execution, Duration::from_secs(10))
        .await;
    assert_eq!(done["status"], "FAILED", "{done:#}");
    assert!(
        done["error"].as_str().unwrap().contains("timeout"),
        "{done:#}"
    );
    assert_eq!(step(&done, "wait")["status"], "failed");
}

#[tokio::test]
async fn the_leader_checks_every_enabled_server_s_health_on_its_own() {
    let env = TestEnv::postgres().await;
    let mut config = env.config();
    config.engine.health_interval = Duration::from_millis(500);
    let server = env.server_with(config).await;
    let editor = token("ada", "acme", Role::Editor);
    let healthy = register(&server, &editor, "everything", stdio(json!({}))).await;
    let broken = register(
        &server,
        &editor,
        "broken",
        json!({"kind": "stdio", "command": "no-such-command-here"}),
    )
    .await;
    let query = "query ($id: ID!) { mcpServer(id: $id) { healthy healthDetail checkedAt } }";
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let a = server.ok(&editor, query, json!({"id": healthy})).await;
        let b = server.ok(&editor, query, json!({"id": broken})).await;
        if a["mcpServer"]["healthy"] == true && b["mcpServer"]["healthy"] == false {
            assert!(b["mcpServer"]["healthDetail"].as_str().is_some());
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no health recorded: {a} {b}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A second round changes nothing, so it records nothing.
    let versions = |v: &Value| v["mcpServer"]["version"].as_u64().unwrap_or(0);
    let before = server
        .ok(
            &editor,
            "query ($id: ID!) { mcpServer(id: $id) { version } }",
            json!({"id": healthy}),
        )
        .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = server
        .ok(
            &editor,
            "query ($id: ID!) { mcpServer(id: $id) { version } }",
            json!({"id": healthy}),
        )
        .await;
    assert_eq!(versions(&before), versions(&after));
}

/// The events of one execution as stored: type, transaction, actor.
async fn stored_events(url: &str, execution: &str) -> Vec<(String, String, String)> {
    let pool = sqlx::PgPool::connect(url).await.expect("connect");
    let rows: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT event_type, CAST(transaction_id AS TEXT), metadata->>'actor' FROM events \
         WHERE aggregate_id = $1 ORDER BY sequence",
    )
    .bind(execution)
    .fetch_all(&pool)
    .await
    .expect("read the events");
    pool.close().await;
    rows
}

#[tokio::test]
async fn a_run_s_first_move_commits_with_its_start() {
    let env = TestEnv::postgres().await;
    let server = env.server().await;
    let editor = token("ada", "acme", Role::Editor);
    let workflow = server
        .create_workflow(
            &editor,
            "Wait, then shape",
            json!({"nodes": [
                {"id": "shape", "type": "transform", "params": {"template": {"n": "{{input.n}}"}}},
                {"id": "wait", "type": "delay", "params": {"milliseconds": 60000}}],
              "edges": [{"from": "shape", "to": "wait"}]}),
        )
        .await;
    let id = server
        .start_execution(&editor, &workflow, json!({"n": 1}))
        .await;
    let events = stored_events(env.db.url(), &id).await;
    let kinds: Vec<&str> = events.iter().map(|e| e.0.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "ExecutionStarted",
            "StepScheduled",
            "StepStarted",
            "StepSucceeded",
            "StepScheduled",
            "StepStarted"
        ],
        "the transform ran and the delay started with the start"
    );
    assert!(
        events.iter().all(|e| e.1 == events[0].1),
        "one transaction: {events:?}"
    );
    assert!(
        events.iter().all(|e| e.2 == "ada"),
        "recorded as the starter's: {events:?}"
    );
    // Without a worker in the process, the start is the start alone.
    let mut config = env.config();
    config.run_engine = false;
    let idle = env.server_with(config).await;
    let id = idle
        .start_execution(&editor, &workflow, json!({"n": 2}))
        .await;
    // (The other server's worker may drive it since: in commits of its own.)
    let events = stored_events(env.db.url(), &id).await;
    assert_eq!(events[0].0, "ExecutionStarted");
    let with_start: Vec<_> = events.iter().filter(|e| e.1 == events[0].1).collect();
    assert_eq!(with_start.len(), 1, "{events:?}");
    let stop = "mutation ($i: ExecutionIdInput!) { stopExecution(input: $i) { id } }";
    server.ok(&editor, stop, json!({"i": {"id": id}})).await;
}

/// What an upstream received: the `authorization` header of its last
/// request.
type Received = std::sync::Arc<std::sync::Mutex<Option<String>>>;

async fn recording_upstream() -> (std::net::SocketAddr, Received, tokio::task::JoinHandle<()>) {
    use axum::http::HeaderMap;
    let received: Received = Default::default();
    let app = axum::Router::new()
        .route(
            "/hook",
            axum::routing::get(
                |axum::extract::State(received): axum::extract::State<Received>,
                 headers: HeaderMap| async move {
                    *received.lock().unwrap() = headers
                        .get("authorization")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                    axum::Json(json!({"ok": true}))
                },
            ),
        )
        .with_state(received.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (address, received, task)
}

async fn literal_credentials_are_sent_but_never_shown(env: TestEnv) {
    let (address, received, upstream) = recording_upstream().await;
    let server = loopback_server(&env).await;
    let editor = token("ada", "acme", Role::Editor);
    let admin = token("grace", "acme", Role::Admin);
    let url = format!("http://{address}/hook?api_key=abc123literal&page=2");
    let workflow = server
        .create_workflow(
            &editor,
            "Credentials typed in",
            json!({"nodes": [{"id": "call", "type": "http", "params": {"method": "GET", "url": url,
                "headers": {"Authorization": "Bearer s3cr3t-literal", "X-Trace": "visible"}}}],
                "edges": []}),
        )
        .await;
    let execution = server.start_execution(&editor, &workflow, json!({})).await;
    let finished = server
        .wait_finished(&editor, &execution, Duration::from_secs(15))
        .await;
    assert_eq!(finished["status"], "COMPLETED", "{finished:#}");
    // Sent as written.
    assert_eq!(
        received.lock().unwrap().as_deref(),
        Some("Bearer s3cr3t-literal")
    );
    // Shown nowhere: the workflow, its versions, the run's steps, the audit log.
    let step = step(&finished, "call");
    assert_eq!(step["input"]["headers"]["Authorization"], "[redacted]");
    assert_eq!(step["input"]["headers"]["X-Trace"], "visible");
    assert_eq!(
        step["input"]["url"],
        format!("http://{address}/hook?api_key=[redacted]&page=2")
    );
    let shown = server
        .ok(
            &admin,
            "query ($id: ID!) { workflow(id: $id) { definition
                versions(first: 5) { edges { node { definition } } } }
              auditLog(first: 50) { edges { node { eventType payload } } } }",
            json!({"id": workflow}),
        )
        .await;
    let node = &shown["workflow"]["definition"]["nodes"][0]["params"];
    assert_eq!(node["headers"]["Authorization"], "[redacted]");
    assert_eq!(node["headers"]["X-Trace"], "visible");
    let created = shown["auditLog"]["edges"]
        .as_array()
        .and_then(|edges| {
            edges
                .iter()
                .find(|e| e["node"]["eventType"] == "WorkflowCreated")
        })
        .unwrap_or_else(|| panic!("the creation is audited: {shown:#}"));
    assert_eq!(
        created["node"]["payload"]["definition"]["nodes"][0]["params"]["headers"]["Authorization"],
        "[redacted]"
    );
    let text = format!("{shown}{finished}");
    for literal in ["s3cr3t-literal", "abc123literal"] {
        assert!(!text.contains(literal), "{literal} is shown: {text}");
    }
    // The run recorded no copy either; the definition's event keeps what
    // was written (the log is immutable), and only it.
    let holding: Vec<String> = env
        .all_event_text()
        .await
        .into_iter()
        .filter(|row| row.contains("s3cr3t-literal") || row.contains("abc123literal"))
        .collect();
    assert_eq!(holding.len(), 1, "{holding:#?}");
    assert!(holding[0].contains("WorkflowCreated"), "{holding:#?}");
    upstream.abort();
}

#[tokio::test]
async fn literal_credentials_are_sent_but_never_shown_on_postgres() {
    literal_credentials_are_sent_but_never_shown(TestEnv::postgres().await).await;
}

#[tokio::test]
async fn literal_credentials_are_sent_but_never_shown_on_sqlite() {
    literal_credentials_are_sent_but_never_shown(TestEnv::sqlite().await).await;
}
