//! `replayExecution`: real executions (branches, retries against a loopback
//! HTTP server, MCP tool calls to the reference server, breakpoints,
//! stops) replayed on both backends, through GraphQL and through the
//! engine's function, with no side effect; and an engine change made here
//! (a condition evaluated the other way) reported at the right node.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use toolhub_domain::definition::NodeId;
use toolhub_domain::{ExecutionId, Role, TenantId};
use toolhub_engine::egress::EgressPolicy;
use toolhub_engine::expr::{Cel, ConditionError, Conditions};
use toolhub_engine::replay::DivergenceKind;
use toolhub_tests::everything::server_everything;
use toolhub_tests::{branching_definition, token, TestEnv};

/// An HTTP server on loopback: `/flaky/{key}` answers 503 to the first two
/// requests of each key and 200 after; `/missing` answers 404. Counts every
/// request, so that a replay can be shown to send none.
struct Upstream {
    address: std::net::SocketAddr,
    requests: Arc<Mutex<HashMap<String, usize>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    async fn start() -> Self {
        use axum::extract::{Path, State};
        use axum::http::StatusCode;
        use axum::response::IntoResponse;
        use axum::routing::get;
        type Counts = Arc<Mutex<HashMap<String, usize>>>;
        let requests: Counts = Arc::default();
        let app = axum::Router::new()
            .route(
                "/flaky/{key}",
                get(
                    |State(counts): State<Counts>, Path(key): Path<String>| async move {
                        let seen = {
                            let mut counts = counts.lock().unwrap();
                            let count = counts.entry(key.clone()).or_default();
                            *count += 1;
                            *count
                        };
                        if seen <= 2 {
                            (StatusCode::SERVICE_UNAVAILABLE, "try later").into_response()
                        } else {
                            axum::Json(json!({"ok": true, "key": key})).into_response()
                        }
                    },
                ),
            )
            .route(
                "/missing",
                get(|State(counts): State<Counts>| async move {
                    *counts.lock().unwrap().entry("missing".into()).or_default() += 1;
                    (StatusCode::NOT_FOUND, "no such thing")
                }),
            )
            .with_state(requests.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            address,
            requests,
            task,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    fn total(&self) -> usize {
        self.requests.lock().unwrap().values().sum()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An HTTP request with a secret in a header, retried on 503, then a
/// transform of its answer.
fn fetching(upstream: &Upstream) -> Value {
    json!({
        "nodes": [
            {"id": "fetch", "type": "http",
             "retry": {"max_attempts": 3, "backoff_ms": 20},
             "params": {"method": "GET", "url": upstream.url("/{{input.path}}"),
                        "headers": {"X-Trace": "trace {{secrets.API_TOKEN}}"}}},
            {"id": "after", "type": "transform",
             "params": {"template": {"ok": "{{nodes.fetch.body.ok}}", "status": "{{nodes.fetch.status}}"}}}
        ],
        "edges": [{"from": "fetch", "to": "after"}]
    })
}

/// Two MCP tool calls to the reference server and a transform.
fn tooling() -> Value {
    json!({
        "nodes": [
            {"id": "echo", "type": "mcp_tool",
             "params": {"server": "everything", "tool": "echo", "arguments": {"message": "{{input.message}}"}}},
            {"id": "sum", "type": "mcp_tool",
             "params": {"server": "everything", "tool": "get-sum", "arguments": {"a": "{{input.a}}", "b": 3}}},
            {"id": "report", "type": "transform",
             "params": {"template": {"echoed": "{{nodes.echo.text}}", "sum": "{{nodes.sum.text}}"}}}
        ],
        "edges": [{"from": "echo", "to": "sum"}, {"from": "sum", "to": "report"}]
    })
}

/// A chain to pause in.
fn chain() -> Value {
    json!({
        "nodes": [
            {"id": "a", "type": "transform", "params": {"template": "{{input.n}}"}},
            {"id": "b", "type": "transform", "params": {"template": 2}},
            {"id": "c", "type": "transform", "params": {"template": 3}},
            {"id": "d", "type": "transform", "params": {"template": "{{nodes.c}}"}}
        ],
        "edges": [{"from": "a", "to": "b"}, {"from": "b", "to": "c"}, {"from": "c", "to": "d"}]
    })
}

/// A long wait to stop in.
fn waiting() -> Value {
    json!({
        "nodes": [
            {"id": "first", "type": "transform", "params": {"template": "{{input.n}}"}},
            {"id": "wait", "type": "delay", "params": {"milliseconds": 60000}},
            {"id": "after", "type": "transform", "params": {"template": "{{nodes.wait.waited_ms}}"}}
        ],
        "edges": [{"from": "first", "to": "wait"}, {"from": "wait", "to": "after"}]
    })
}

const REPLAY: &str = "query ($id: ID!) { replayExecution(id: $id) { executionId workflowVersion \
    stepsChecked deterministic divergences { sequence position nodeId kind expected recorded reason } } }";

const RESUME: &str =
    "mutation ($input: ResumeExecutionInput!) { resumeExecution(input: $input) { id } }";

const STOP: &str = "mutation ($input: ExecutionIdInput!) { stopExecution(input: $input) { id } }";

/// An engine whose conditions come out the other way: the engine change a
/// replay must catch.
struct Negated;

impl Conditions for Negated {
    fn evaluate(
        &self,
        expression: &str,
        input: &Value,
        nodes: &BTreeMap<NodeId, Value>,
    ) -> Result<bool, ConditionError> {
        Cel.evaluate(expression, input, nodes).map(|result| !result)
    }
}

/// What kind of run each recorded execution is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Branch,
    Retry,
    NotFound,
    Tool,
    Breakpoint,
    Stop,
}

async fn fifty_recorded_executions_replay_without_divergence(env: TestEnv) {
    let upstream = Upstream::start().await;
    let mut config = env.config();
    config.engine.egress = EgressPolicy::parse("127.0.0.1/32").unwrap();
    let server = env.server_with(config).await;
    let admin = token("root", "acme", Role::Admin);
    let editor = token("ada", "acme", Role::Editor);
    let viewer = token("vic", "acme", Role::Viewer);
    let secret = format!("s3cr3t-{}", uuid::Uuid::new_v4().simple());
    server
        .ok(
            &admin,
            "mutation ($input: CreateSecretInput!) { createSecret(input: $input) { id } }",
            json!({"input": {"name": "API_TOKEN", "value": secret}}),
        )
        .await;
    server
        .ok(
            &editor,
            "mutation ($input: RegisterMcpServerInput!) { registerMcpServer(input: $input) { id } }",
            json!({"input": {"name": "everything", "transport": {
                "kind": "stdio", "command": "node",
                "args": [server_everything().display().to_string(), "stdio"]}}}),
        )
        .await;
    let branch = server
        .create_workflow(&editor, "Branching", branching_definition())
        .await;
    let fetch = server
        .create_workflow(&editor, "Fetching", fetching(&upstream))
        .await;
    let tools = server.create_workflow(&editor, "Tooling", tooling()).await;
    let pausing = server.create_workflow(&editor, "Chain", chain()).await;
    let wait = server.create_workflow(&editor, "Waiting", waiting()).await;

    let mut runs: Vec<(Kind, String)> = Vec::new();
    let within = Duration::from_secs(30);
    // 30 runs down one branch or the other.
    for n in 0..30 {
        let id = server
            .start_execution(
                &editor,
                &branch,
                json!({"n": n % 6, "name": format!("n{n}")}),
            )
            .await;
        runs.push((Kind::Branch, id));
    }
    // 6 requests that fail twice with a 503 and are retried, 2 that fail
    // for good with a 404.
    for n in 0..8 {
        let (kind, path) = if n < 6 {
            (Kind::Retry, format!("flaky/key{n}"))
        } else {
            (Kind::NotFound, "missing".to_string())
        };
        let id = server
            .start_execution(&editor, &fetch, json!({"path": path}))
            .await;
        runs.push((kind, id));
    }
    // 4 runs calling MCP tools.
    for n in 0..4 {
        let id = server
            .start_execution(
                &editor,
                &tools,
                json!({"message": format!("hi {n}"), "a": n}),
            )
            .await;
        runs.push((Kind::Tool, id));
    }
    for (_, id) in &runs {
        server.wait_finished(&editor, id, within).await;
    }
    // 4 runs paused at a breakpoint, stepped over or resumed.
    for n in 0..4 {
        let id = server
            .start_execution_with(
                &editor,
                json!({"workflowId": pausing, "input": {"n": n}, "breakpoints": ["b", "d"]}),
            )
            .await;
        // Stepping over b pauses before c; d is a breakpoint either way.
        let pauses: &[(&str, bool)] = if n % 2 == 0 {
            &[("b", true), ("c", false), ("d", false)]
        } else {
            &[("b", false), ("d", false)]
        };
        for (at, step) in pauses {
            server
                .wait_execution(&editor, &id, within, |e| {
                    e["status"] == "PAUSED" && e["pausedAt"] == *at
                })
                .await;
            server
                .ok(&editor, RESUME, json!({"input": {"id": id, "step": step}}))
                .await;
        }
        let done = server.wait_finished(&editor, &id, within).await;
        assert_eq!(done["status"], "COMPLETED", "{done:#}");
        runs.push((Kind::Breakpoint, id));
    }
    // 4 runs stopped while they wait.
    for n in 0..4 {
        let id = server
            .start_execution(&editor, &wait, json!({"n": n}))
            .await;
        server
            .wait_execution(&editor, &id, within, |e| {
                e["steps"]
                    .as_array()
                    .is_some_and(|s| s.iter().any(|s| s["nodeId"] == "wait"))
            })
            .await;
        server.ok(&editor, STOP, json!({"input": {"id": id}})).await;
        let done = server.wait_finished(&editor, &id, within).await;
        assert_eq!(done["status"], "CANCELLED", "{done:#}");
        runs.push((Kind::Stop, id));
    }
    assert_eq!(runs.len(), 50);

    // What the runs did, to be sure each kind is what it claims.
    for (kind, id) in &runs {
        let run = server.execution(&editor, id).await;
        let expected = match kind {
            Kind::NotFound => "FAILED",
            Kind::Stop => "CANCELLED",
            _ => "COMPLETED",
        };
        assert_eq!(run["status"], expected, "{kind:?}: {run:#}");
        if *kind == Kind::Retry {
            let attempts = run["steps"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|s| s["nodeId"] == "fetch")
                .count();
            assert_eq!(attempts, 3, "{run:#}");
        }
    }
    let upstream_requests = upstream.total();
    assert_eq!(upstream_requests, 6 * 3 + 2);

    // Through GraphQL, as a viewer: no divergence, and nothing touched.
    let engine = server
        .running
        .as_ref()
        .and_then(|r| r.engine())
        .expect("the test server runs the engine")
        .clone();
    let acme = TenantId::parse("acme").unwrap();
    for (kind, id) in &runs {
        let report = server.ok(&viewer, REPLAY, json!({"id": id})).await["replayExecution"].clone();
        assert_eq!(report["executionId"], *id);
        assert_eq!(report["workflowVersion"], 1);
        assert_eq!(report["deterministic"], true, "{kind:?} {id}: {report:#}");
        assert_eq!(report["divergences"], json!([]), "{kind:?}: {report:#}");
        let checked = report["stepsChecked"].as_u64().unwrap();
        let least = match kind {
            Kind::Branch => 5,
            Kind::Retry => 4,
            Kind::NotFound => 1,
            Kind::Tool => 3,
            Kind::Breakpoint => 4,
            Kind::Stop => 2,
        };
        assert!(checked >= least, "{kind:?}: {checked} steps checked");

        // The engine's function, with the engine's own evaluator: the same.
        let execution = ExecutionId::from_uuid(uuid::Uuid::parse_str(id).unwrap());
        let report = engine.replay(&acme, execution, &Cel).await.unwrap();
        assert!(report.deterministic(), "{kind:?}: {report:#?}");
        assert_eq!(report.steps_checked as u64, checked);

        // An engine that evaluates conditions the other way diverges at
        // the condition, and only there.
        let changed = engine.replay(&acme, execution, &Negated).await.unwrap();
        if *kind == Kind::Branch {
            let found: Vec<(Option<&str>, DivergenceKind)> = changed
                .divergences
                .iter()
                .map(|d| (d.node_id.as_ref().map(NodeId::as_str), d.kind))
                .collect();
            assert_eq!(
                found,
                [(Some("check"), DivergenceKind::Output)],
                "{changed:#?}"
            );
            let divergence = &changed.divergences[0];
            assert_eq!(
                divergence.expected["result"],
                !divergence.recorded["result"].as_bool().unwrap()
            );
            assert!(divergence.sequence > 1);
        } else {
            assert!(changed.deterministic(), "{kind:?}: {changed:#?}");
        }
    }
    assert_eq!(
        upstream.total(),
        upstream_requests,
        "a replay sends no HTTP request"
    );

    // The secret was used, recorded masked, and compared equal masked.
    let fetched = server.execution(&editor, &runs[30].1).await;
    assert_eq!(
        fetched["steps"][0]["input"]["headers"]["X-Trace"], "trace ***",
        "{fetched:#}"
    );
    for text in env.all_event_text().await {
        assert!(!text.contains(&secret), "a secret in the log: {text}");
    }

    // Other tenants, bad ids, unknown ids.
    let other = token("eve", "globex", Role::Admin);
    let (_, body) = server
        .post(Some(&other), REPLAY, json!({"id": runs[0].1}))
        .await;
    assert_eq!(
        toolhub_tests::first_error_code(&body),
        "NOT_FOUND",
        "{body}"
    );
    let execution = ExecutionId::from_uuid(uuid::Uuid::parse_str(&runs[0].1).unwrap());
    assert!(matches!(
        engine
            .replay(&TenantId::parse("globex").unwrap(), execution, &Cel)
            .await,
        Err(toolhub_engine::EngineError::NotFound)
    ));
    let (_, body) = server
        .post(
            Some(&viewer),
            REPLAY,
            json!({"id": uuid::Uuid::new_v4().to_string()}),
        )
        .await;
    assert_eq!(
        toolhub_tests::first_error_code(&body),
        "NOT_FOUND",
        "{body}"
    );
    let (_, body) = server
        .post(Some(&viewer), REPLAY, json!({"id": "not-an-id"}))
        .await;
    assert_eq!(
        toolhub_tests::first_error_code(&body),
        "VALIDATION",
        "{body}"
    );
    let (_, body) = server.post(None, REPLAY, json!({"id": runs[0].1})).await;
    assert_eq!(
        toolhub_tests::first_error_code(&body),
        "UNAUTHENTICATED",
        "{body}"
    );
}

#[tokio::test]
async fn fifty_recorded_executions_replay_without_divergence_on_postgres() {
    fifty_recorded_executions_replay_without_divergence(TestEnv::postgres().await).await;
}

#[tokio::test]
async fn fifty_recorded_executions_replay_without_divergence_on_sqlite() {
    fifty_recorded_executions_replay_without_divergence(TestEnv::sqlite().await).await;
}
