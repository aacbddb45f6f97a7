//! `forkExecution`: a failed run forked from its middle, with an output
//! overridden, completes; its copied steps are the original's, with the
//! original's positions; lineage both ways; a paused run forked; validation
//! and tenants; on both backends.

use std::time::Duration;

use serde_json::{json, Value};
use toolhub_domain::Role;
use toolhub_engine::egress::EgressPolicy;
use toolhub_tests::{first_error_code, step, token, TestEnv, TestServer};

/// An HTTP server on loopback: `/json` answers JSON, anything else 404.
struct Upstream {
    address: std::net::SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    async fn start() -> Self {
        use axum::http::StatusCode;
        use axum::routing::get;
        let app = axum::Router::new()
            .route(
                "/json",
                get(|| async { axum::Json(json!({"greeting": "hi"})) }),
            )
            .fallback(|| async { (StatusCode::NOT_FOUND, "no such thing") });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { address, task }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `shape` reads the input, `check` branches, `big` or `small` runs, then
/// `fetch` requests the path `shape` chose and `report` sums it all up.
fn definition(upstream: &Upstream) -> Value {
    json!({
        "nodes": [
            {"id": "shape", "type": "transform",
             "params": {"template": {"path": "{{input.path}}", "n": "{{input.n}}"}}},
            {"id": "check", "type": "condition", "params": {"expression": "nodes.shape.n > 2"}},
            {"id": "big", "type": "transform", "params": {"template": {"size": "big"}}},
            {"id": "small", "type": "transform", "params": {"template": {"size": "small"}}},
            {"id": "fetch", "type": "http",
             "params": {"method": "GET", "url": format!("http://{}/{{{{nodes.shape.path}}}}", upstream.address)}},
            {"id": "report", "type": "transform",
             "params": {"template": {"body": "{{nodes.fetch.body}}", "size": "{{nodes.big.size}}{{nodes.small.size}}"}}}
        ],
        "edges": [
            {"from": "shape", "to": "check"},
            {"from": "check", "to": "big", "branch": "true"},
            {"from": "check", "to": "small", "branch": "false"},
            {"from": "big", "to": "fetch"},
            {"from": "small", "to": "fetch"},
            {"from": "fetch", "to": "report"}
        ]
    })
}

const FORK: &str = "mutation ($input: ForkExecutionInput!) { forkExecution(input: $input) { \
    id version position execution { id status forkedFrom { executionId fromNode } } } }";

const LINEAGE: &str = "query ($id: ID!) { execution(id: $id) { id \
    forkedFrom { executionId fromNode execution { id status } } \
    forks { edges { node { id forkedFrom { fromNode } } } } \
    steps { nodeId attempt status input output error copiedFrom } \
    timeline(first: 500) { sequence position eventType payload } } }";

const REPLAY: &str =
    "query ($id: ID!) { replayExecution(id: $id) { deterministic divergences { nodeId kind reason } } }";

/// The steps of an execution by node (latest attempt), as `LINEAGE` reads
/// them.
fn steps_of(execution: &Value, node: &str) -> Vec<Value> {
    execution["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["nodeId"] == node)
        .cloned()
        .collect()
}

/// The position of the original's event `event_type` about `node`.
fn position_of(execution: &Value, event_type: &str, node: &str) -> String {
    execution["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["eventType"] == event_type && e["payload"]["node_id"] == node)
        .and_then(|e| e["position"].as_str())
        .unwrap_or_else(|| panic!("no {event_type} of {node} in {execution:#}"))
        .to_string()
}

async fn validation_field(server: &TestServer, token: &str, input: Value) -> (String, String) {
    let (_, body) = server
        .post(Some(token), FORK, json!({"input": input}))
        .await;
    let code = first_error_code(&body);
    let field = body["errors"][0]["extensions"]["field"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    (code, field)
}

async fn a_failed_run_forked_from_its_middle_completes_with_the_override(env: TestEnv) {
    let upstream = Upstream::start().await;
    let mut config = env.config();
    config.engine.egress = EgressPolicy::parse("127.0.0.1/32").unwrap();
    let server = env.server_with(config).await;
    let editor = token("ada", "acme", Role::Editor);
    let viewer = token("vic", "acme", Role::Viewer);
    let workflow = server
        .create_workflow(&editor, "Forkable", definition(&upstream))
        .await;
    let within = Duration::from_secs(20);

    // The original fails at `fetch`: its path answers 404.
    let original = server
        .start_execution(&editor, &workflow, json!({"path": "missing", "n": 5}))
        .await;
    let failed = server.wait_finished(&editor, &original, within).await;
    assert_eq!(failed["status"], "FAILED", "{failed:#}");
    assert_eq!(step(&failed, "fetch")["status"], "failed");

    // Forked from `fetch`, with `shape`'s output overridden to a path that
    // answers.
    let forked = server
        .ok(
            &editor,
            FORK,
            json!({"input": {"id": original, "fromNode": "fetch",
                   "outputOverrides": {"shape": {"path": "json", "n": 5}}}}),
        )
        .await["forkExecution"]
        .clone();
    let fork = forked["id"].as_str().unwrap().to_string();
    assert_ne!(fork, original);
    assert!(forked["position"].is_string(), "{forked:#}");
    assert!(forked["version"].as_u64().unwrap() >= 6, "{forked:#}");
    assert_eq!(forked["execution"]["forkedFrom"]["executionId"], original);
    assert_eq!(forked["execution"]["forkedFrom"]["fromNode"], "fetch");
    let done = server.wait_finished(&editor, &fork, within).await;
    assert_eq!(done["status"], "COMPLETED", "{done:#}");
    assert_eq!(
        done["output"],
        json!({"report": {"body": {"greeting": "hi"}, "size": "big"}})
    );

    // Copied steps are the original's, recorded as copied with the
    // original's positions; `fetch` and `report` ran live.
    let before = server.ok(&editor, LINEAGE, json!({"id": original})).await["execution"].clone();
    let after = server.ok(&editor, LINEAGE, json!({"id": fork})).await["execution"].clone();
    for node in ["check", "big", "small"] {
        let theirs = steps_of(&before, node);
        let ours = steps_of(&after, node);
        assert_eq!(ours.len(), 1, "{node}: {after:#}");
        for field in ["nodeId", "attempt", "status", "input", "output", "error"] {
            assert_eq!(
                ours[0][field],
                theirs.last().unwrap()[field],
                "{node}.{field}"
            );
        }
        let copied_event = if node == "small" {
            "StepSkipped"
        } else {
            "StepSucceeded"
        };
        assert_eq!(
            ours[0]["copiedFrom"],
            position_of(&before, copied_event, node),
            "{node}"
        );
    }
    let shape = &steps_of(&after, "shape")[0];
    assert_eq!(shape["input"], steps_of(&before, "shape")[0]["input"]);
    assert_eq!(shape["output"], json!({"path": "json", "n": 5}));
    assert_eq!(
        shape["copiedFrom"],
        position_of(&before, "StepSucceeded", "shape")
    );
    for node in ["fetch", "report"] {
        let ours = steps_of(&after, node);
        assert_eq!(ours.len(), 1, "{node}");
        assert_eq!(ours[0]["copiedFrom"], Value::Null, "{node} ran live");
        assert_eq!(ours[0]["status"], "succeeded", "{node}");
    }
    assert!(steps_of(&after, "fetch")[0]["input"]["url"]
        .as_str()
        .unwrap()
        .ends_with("/json"));
    let types: Vec<&str> = after["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["eventType"].as_str().unwrap())
        .collect();
    assert_eq!(
        &types[..6],
        [
            "ExecutionStarted",
            "ExecutionForked",
            "StepCopied",
            "StepCopied",
            "StepCopied",
            "StepCopied"
        ]
    );

    // Lineage, both ways.
    assert_eq!(after["forkedFrom"]["executionId"], original);
    assert_eq!(after["forkedFrom"]["fromNode"], "fetch");
    assert_eq!(after["forkedFrom"]["execution"]["id"], original);
    assert_eq!(after["forkedFrom"]["execution"]["status"], "FAILED");
    assert_eq!(before["forkedFrom"], Value::Null);
    assert_eq!(
        before["forks"]["edges"],
        json!([{"node": {"id": fork, "forkedFrom": {"fromNode": "fetch"}}}])
    );
    assert_eq!(after["forks"]["edges"], json!([]));
    let listed = server
        .ok(
            &viewer,
            "query ($id: ID!) { executions(filter: {forkedFrom: $id}) { edges { node { id } } } }",
            json!({"id": original}),
        )
        .await;
    assert_eq!(
        listed["executions"]["edges"],
        json!([{"node": {"id": fork}}])
    );

    // The engine would take the fork's decisions again.
    let replayed = server.ok(&viewer, REPLAY, json!({"id": fork})).await;
    assert_eq!(
        replayed["replayExecution"],
        json!({"deterministic": true, "divergences": []})
    );

    // A fork with another input, from the first node: all of it runs live,
    // down the other branch.
    let again = server
        .ok(
            &editor,
            FORK,
            json!({"input": {"id": original, "fromNode": "shape",
                   "inputOverride": {"path": "json", "n": 1}}}),
        )
        .await["forkExecution"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let again_done = server.wait_finished(&editor, &again, within).await;
    assert_eq!(again_done["status"], "COMPLETED", "{again_done:#}");
    assert_eq!(
        again_done["output"],
        json!({"report": {"body": {"greeting": "hi"}, "size": "small"}})
    );
    let again_steps = server.ok(&editor, LINEAGE, json!({"id": again})).await["execution"].clone();
    assert!(again_steps["steps"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["copiedFrom"].is_null()));
    let before = server.ok(&editor, LINEAGE, json!({"id": original})).await["execution"].clone();
    assert_eq!(before["forks"]["edges"].as_array().unwrap().len(), 2);

    // A run still going (paused at a breakpoint) may be forked too: what
    // it recorded so far is copied, and the fork has no breakpoint.
    let chain = server
        .create_workflow(
            &editor,
            "Chain",
            json!({
                "nodes": [
                    {"id": "a", "type": "transform", "params": {"template": "{{input.word}}"}},
                    {"id": "b", "type": "transform", "params": {"template": "{{nodes.a}}!"}},
                    {"id": "c", "type": "transform", "params": {"template": "{{nodes.b}}?"}}
                ],
                "edges": [{"from": "a", "to": "b"}, {"from": "b", "to": "c"}]
            }),
        )
        .await;
    let paused = server
        .start_execution_with(
            &editor,
            json!({"workflowId": chain, "input": {"word": "hi"}, "breakpoints": ["c"]}),
        )
        .await;
    server
        .wait_execution(&editor, &paused, within, |e| e["status"] == "PAUSED")
        .await;
    let from_paused = server
        .ok(
            &editor,
            FORK,
            json!({"input": {"id": paused, "fromNode": "c", "outputOverrides": {"b": "ho!"}}}),
        )
        .await["forkExecution"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let from_paused = server.wait_finished(&editor, &from_paused, within).await;
    assert_eq!(from_paused["status"], "COMPLETED", "{from_paused:#}");
    assert_eq!(from_paused["output"], json!({"c": "ho!?"}));
    assert_eq!(server.execution(&editor, &paused).await["status"], "PAUSED");

    // Validation, roles and tenants.
    let cases = [
        (
            json!({"id": original, "fromNode": "nope"}),
            "input.fromNode",
        ),
        (
            json!({"id": original, "fromNode": "fetch", "outputOverrides": {"nope": 1}}),
            "input.outputOverrides",
        ),
        (
            json!({"id": original, "fromNode": "fetch", "outputOverrides": {"report": 1}}),
            "input.outputOverrides",
        ),
        (
            json!({"id": original, "fromNode": "fetch", "outputOverrides": {"small": 1}}),
            "input.outputOverrides",
        ),
        (
            json!({"id": original, "fromNode": "fetch", "outputOverrides": [1]}),
            "input.outputOverrides",
        ),
        (
            json!({"id": original, "fromNode": "fetch", "inputOverride": {"bad": "a\u{0}b"}}),
            "input.inputOverride",
        ),
        (
            json!({"id": original, "fromNode": "fetch", "outputOverrides": {"shape": "a\u{0}b"}}),
            "input.outputOverrides",
        ),
        (
            json!({"id": original, "fromNode": "fetch",
                   "outputOverrides": {"shape": {"n": "bell\u{7}"}}}),
            "input.outputOverrides",
        ),
        (json!({"id": "not-an-id", "fromNode": "fetch"}), "input.id"),
    ];
    for (input, field) in cases {
        let (code, got) = validation_field(&server, &editor, input.clone()).await;
        assert_eq!(
            (code.as_str(), got.as_str()),
            ("VALIDATION", field),
            "{input}"
        );
    }
    let (code, _) = validation_field(
        &server,
        &editor,
        json!({"id": uuid::Uuid::new_v4().to_string(), "fromNode": "fetch"}),
    )
    .await;
    assert_eq!(code, "NOT_FOUND");
    let other = token("eve", "globex", Role::Admin);
    let (code, _) = validation_field(
        &server,
        &other,
        json!({"id": original, "fromNode": "fetch"}),
    )
    .await;
    assert_eq!(code, "NOT_FOUND", "another tenant's execution");
    let (code, _) = validation_field(
        &server,
        &viewer,
        json!({"id": original, "fromNode": "fetch"}),
    )
    .await;
    assert_eq!(code, "FORBIDDEN");
    let (_, body) = server
        .post(Some(&other), LINEAGE, json!({"id": fork}))
        .await;
    assert_eq!(first_error_code(&body), "NOT_FOUND");
    // Nothing was forked by the refused requests.
    let before = server.ok(&editor, LINEAGE, json!({"id": original})).await["execution"].clone();
    assert_eq!(before["forks"]["edges"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn a_failed_run_forked_from_its_middle_completes_with_the_override_on_postgres() {
    a_failed_run_forked_from_its_middle_completes_with_the_override(TestEnv::postgres().await)
        .await;
}

#[tokio::test]
async fn a_failed_run_forked_from_its_middle_completes_with_the_override_on_sqlite() {
    a_failed_run_forked_from_its_middle_completes_with_the_override(TestEnv::sqlite().await).await;
}
