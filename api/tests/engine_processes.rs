//! The engine across processes on one PostgreSQL database: a worker killed
//! with SIGKILL while it runs an execution, whose run another process
//! finishes (no idempotent step lost, none recorded twice; a step that is
//! not idempotent failed as interrupted, never run again behind the user's
//! back); and `toolhub worker` running what a `toolhub serve` without the
//! engine started.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use toolhub_api::config::{JwtConfig, JwtKey};
use toolhub_domain::{Role, TenantId};
use toolhub_eventstore::testing::TestDb;
use toolhub_eventstore::MasterKey;

const SECRET: &[u8] = b"a-crash-test-secret-that-is-longer-than-32-bytes";

/// A `toolhub serve` process, killed when dropped.
struct Service {
    child: Child,
    url: String,
}

impl Service {
    fn start(database: &str, master_key: &str) -> Self {
        Self::start_with(database, master_key, "serve", &[])
    }

    fn start_with(database: &str, master_key: &str, command: &str, env: &[(&str, &str)]) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_toolhub"))
            .arg(command)
            .envs(env.iter().copied())
            .env("DATABASE_URL", database)
            .env("TOOLHUB_LISTEN", format!("127.0.0.1:{port}"))
            .env("TOOLHUB_JWT_SECRET", std::str::from_utf8(SECRET).unwrap())
            .env("TOOLHUB_MASTER_KEY", master_key)
            .env("TOOLHUB_ENGINE_LEASE", "2s")
            .env("TOOLHUB_HTTP_ALLOW", "127.0.0.1/32")
            .env("TOOLHUB_LOG", "warn")
            .env(
                "TOOLHUB_DATA_DIR",
                std::env::temp_dir().join(format!("toolhub-crash-{port}")),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run toolhub serve");
        Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }

    /// Waits until it answers `/health/live`.
    async fn ready(&self, http: &reqwest::Client) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while http
            .get(format!("{}/health/live", self.url))
            .send()
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "toolhub serve did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// What a crash does: SIGKILL, no chance to give anything back.
    fn kill(&mut self) {
        let killed = Command::new("kill")
            .args(["-9", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(killed.success());
        let _ = self.child.wait();
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn graphql(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    query: &str,
    variables: Value,
) -> Value {
    let body: Value = http
        .post(format!("{url}/graphql"))
        .bearer_auth(token)
        .json(&json!({"query": query, "variables": variables}))
        .send()
        .await
        .expect("the service answers")
        .json()
        .await
        .expect("JSON");
    assert!(body.get("errors").is_none(), "{body}");
    body["data"].clone()
}

/// An upstream whose `/step` answers after `pause`, counting requests.
async fn upstream(pause: Duration) -> (SocketAddr, Arc<AtomicUsize>) {
    use axum::routing::{get, post};
    let count = Arc::new(AtomicUsize::new(0));
    let handler = {
        let count = count.clone();
        move || {
            let count = count.clone();
            async move {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(pause).await;
                axum::Json(json!({"ok": true}))
            }
        }
    };
    let app = axum::Router::new()
        .route("/step", get(handler.clone()))
        .route("/charge", post(handler));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (address, count)
}

fn token() -> String {
    let config = JwtConfig {
        key: JwtKey::Hs256(zeroize::Zeroizing::new(SECRET.to_vec())),
        issuer: None,
        audience: None,
        leeway: toolhub_api::config::DEFAULT_JWT_LEEWAY,
    };
    toolhub_api::auth::mint(
        &config,
        "ada",
        &TenantId::parse("acme").unwrap(),
        &[Role::Editor],
        Duration::from_secs(3600),
    )
    .unwrap()
}

const EXECUTION: &str =
    "query ($id: ID!) { execution(id: $id) { status error steps { nodeId attempt status error } } }";

/// Starts `definition` on `service` and waits until `started` steps have
/// started; returns the execution id.
async fn start_and_wait(
    http: &reqwest::Client,
    service: &Service,
    token: &str,
    definition: Value,
    started: usize,
) -> String {
    let created = graphql(
        http,
        &service.url,
        token,
        "mutation ($input: CreateWorkflowInput!) { createWorkflow(input: $input) { id } }",
        json!({"input": {"name": "Crash", "definition": definition}}),
    )
    .await;
    let workflow = created["createWorkflow"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let execution = graphql(
        http,
        &service.url,
        token,
        "mutation ($input: StartExecutionInput!) { startExecution(input: $input) { id } }",
        json!({"input": {"workflowId": workflow}}),
    )
    .await["startExecution"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let data = graphql(
            http,
            &service.url,
            token,
            EXECUTION,
            json!({"id": execution}),
        )
        .await;
        let steps = data["execution"]["steps"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if steps.len() >= started {
            return execution;
        }
        assert!(
            Instant::now() < deadline,
            "the run did not get going: {data}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits on `service` until the execution ended.
async fn finished(http: &reqwest::Client, service: &Service, token: &str, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let data = graphql(http, &service.url, token, EXECUTION, json!({"id": id})).await;
        let status = data["execution"]["status"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if matches!(status.as_str(), "COMPLETED" | "FAILED" | "CANCELLED") {
            return data["execution"].clone();
        }
        assert!(Instant::now() < deadline, "the run did not end: {data}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_killed_worker_s_execution_is_finished_by_another_without_losing_or_repeating_a_step() {
    let db = TestDb::postgres().await;
    let master_key = MasterKey::generate().to_base64();
    let (address, requests) = upstream(Duration::from_millis(400)).await;
    let http = reqwest::Client::new();
    let token = token();
    let step_url = format!("http://{address}/step");
    let nodes: Vec<Value> = (1..=5)
        .map(|i| json!({"id": format!("s{i}"), "type": "http", "params": {"method": "GET", "url": step_url}}))
        .collect();
    let edges: Vec<Value> = (1..5)
        .map(|i| json!({"from": format!("s{i}"), "to": format!("s{}", i + 1)}))
        .collect();

    let mut first = Service::start(db.url(), &master_key);
    first.ready(&http).await;
    // Wait for the third step, then kill the process mid-request.
    let id = start_and_wait(
        &http,
        &first,
        &token,
        json!({"nodes": nodes, "edges": edges}),
        3,
    )
    .await;
    first.kill();

    let second = Service::start(db.url(), &master_key);
    second.ready(&http).await;
    let done = finished(&http, &second, &token, &id).await;
    assert_eq!(done["status"], "COMPLETED", "{done:#}");
    let steps = done["steps"].as_array().unwrap();
    for node in ["s1", "s2", "s3", "s4", "s5"] {
        let succeeded = steps
            .iter()
            .filter(|s| s["nodeId"] == node && s["status"] == "succeeded")
            .count();
        assert_eq!(succeeded, 1, "{node} succeeded once: {done:#}");
    }
    let interrupted: Vec<&Value> = steps
        .iter()
        .filter(|s| {
            s["error"]
                .as_str()
                .is_some_and(|e| e.contains("interrupted"))
        })
        .collect();
    assert_eq!(
        interrupted.len(),
        1,
        "the step in flight was retried: {done:#}"
    );
    // Five steps, and the interrupted one ran again once.
    assert_eq!(requests.load(Ordering::SeqCst), 6);
}

#[tokio::test]
async fn a_killed_worker_s_step_that_is_not_idempotent_fails_as_interrupted() {
    let db = TestDb::postgres().await;
    let master_key = MasterKey::generate().to_base64();
    let (address, requests) = upstream(Duration::from_millis(1500)).await;
    let http = reqwest::Client::new();
    let token = token();
    let definition = json!({
        "nodes": [{"id": "charge", "type": "http",
                   "params": {"method": "POST", "url": format!("http://{address}/charge")}}],
        "edges": []
    });
    let mut first = Service::start(db.url(), &master_key);
    first.ready(&http).await;
    let id = start_and_wait(&http, &first, &token, definition, 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    first.kill();

    let second = Service::start(db.url(), &master_key);
    second.ready(&http).await;
    let done = finished(&http, &second, &token, &id).await;
    assert_eq!(done["status"], "FAILED", "{done:#}");
    assert!(done["steps"][0]["error"]
        .as_str()
        .unwrap()
        .contains("not idempotent"));
    assert_eq!(
        requests.load(Ordering::SeqCst),
        1,
        "the charge was not repeated"
    );
}

#[tokio::test]
async fn a_worker_process_runs_what_a_serve_without_the_engine_started() {
    let db = TestDb::postgres().await;
    let master_key = MasterKey::generate().to_base64();
    let (address, requests) = upstream(Duration::from_millis(10)).await;
    let http = reqwest::Client::new();
    let token = token();
    let api = Service::start_with(
        db.url(),
        &master_key,
        "serve",
        &[("TOOLHUB_RUN_ENGINE", "false")],
    );
    api.ready(&http).await;
    let definition = json!({
        "nodes": [{"id": "fetch", "type": "http",
                   "params": {"method": "GET", "url": format!("http://{address}/step")}}],
        "edges": []
    });
    let created = graphql(
        &http,
        &api.url,
        &token,
        "mutation ($input: CreateWorkflowInput!) { createWorkflow(input: $input) { id } }",
        json!({"input": {"name": "Elsewhere", "definition": definition}}),
    )
    .await;
    let workflow = created["createWorkflow"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let id = graphql(
        &http,
        &api.url,
        &token,
        "mutation ($input: StartExecutionInput!) { startExecution(input: $input) { id } }",
        json!({"input": {"workflowId": workflow}}),
    )
    .await["startExecution"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    // Nothing runs it yet: the service has no engine.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(requests.load(Ordering::SeqCst), 0);
    let _worker = Service::start_with(db.url(), &master_key, "worker", &[]);
    let done = finished(&http, &api, &token, &id).await;
    assert_eq!(done["status"], "COMPLETED", "{done:#}");
    assert_eq!(requests.load(Ordering::SeqCst), 1);
}
