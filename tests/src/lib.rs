//! End-to-end tests of Toolhub through its HTTP and GraphQL surface, against a
//! real database.
//!
//! This library is the harness the tests in `tests/` share: it starts the
//! real server in-process on a free loopback port (through
//! [`toolhub_api::spawn`]) on a fresh PostgreSQL database — or an SQLite
//! file for the embedded default — mints tokens, and speaks GraphQL over
//! HTTP and graphql-transport-ws over a real socket. A missing PostgreSQL
//! fails the test with a message that says how to start one.

pub mod everything;

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use toolhub_api::config::{Config, JwtConfig, JwtKey};
use toolhub_api::Running;
use toolhub_domain::{Role, TenantId};
use toolhub_eventstore::testing::TestDb;

/// The HS256 secret every test server and token uses.
pub const SECRET: &[u8] = b"an-end-to-end-test-secret-of-more-than-32-bytes";

/// The example workflow definition shipped in `docs/examples`.
pub fn hello_definition() -> Value {
    serde_json::from_str(include_str!("../../docs/examples/hello.workflow.json"))
        .expect("the example is JSON")
}

/// `shape` builds an object from the input, `check` branches on it, one
/// branch runs and the other is skipped, and `done` joins them.
pub fn branching_definition() -> Value {
    json!({
        "nodes": [
            {"id": "shape", "type": "transform",
             "params": {"template": {"n": "{{input.n}}", "greeting": "hello {{input.name}}"}}},
            {"id": "check", "type": "condition", "params": {"expression": "nodes.shape.n > 2"}},
            {"id": "big", "type": "transform", "params": {"template": {"size": "big", "n": "{{nodes.shape.n}}"}}},
            {"id": "small", "type": "transform", "params": {"template": {"size": "small"}}},
            {"id": "done", "type": "transform",
             "params": {"template": {"greeting": "{{nodes.shape.greeting}}", "big": "{{nodes.big}}", "small": "{{nodes.small}}"}}}
        ],
        "edges": [
            {"from": "shape", "to": "check"},
            {"from": "check", "to": "big", "branch": "true"},
            {"from": "check", "to": "small", "branch": "false"},
            {"from": "big", "to": "done"},
            {"from": "small", "to": "done"}
        ]
    })
}

/// A small valid definition with one node.
pub fn tiny_definition(url: &str) -> Value {
    json!({
        "nodes": [{
            "id": "fetch",
            "type": "http",
            "params": { "method": "GET", "url": url }
        }],
        "edges": []
    })
}

/// A token for `sub` in `org` with `role`, valid for an hour.
pub fn token(sub: &str, org: &str, role: Role) -> String {
    token_with(sub, org, &[role], Duration::from_secs(3600), None)
}

/// A token with every knob.
pub fn token_with(
    sub: &str,
    org: &str,
    roles: &[Role],
    ttl: Duration,
    audience: Option<&str>,
) -> String {
    let config = JwtConfig {
        key: JwtKey::Hs256(zeroize::Zeroizing::new(SECRET.to_vec())),
        issuer: None,
        audience: audience.map(str::to_string),
        leeway: toolhub_api::config::DEFAULT_JWT_LEEWAY,
    };
    toolhub_api::auth::mint(
        &config,
        sub,
        &TenantId::parse(org).expect("a valid org"),
        roles,
        ttl,
    )
    .expect("mint a token")
}

/// A running server and the database under it.
pub struct TestServer {
    /// The running server; `None` once stopped.
    pub running: Option<Running>,
    /// The base URL, `http://127.0.0.1:PORT`.
    pub url: String,
    /// An HTTP client.
    pub http: reqwest::Client,
}

/// A database for one test, with its servers.
pub struct TestEnv {
    /// The database; dropped (and deleted) with the environment.
    pub db: TestDb,
}

impl TestEnv {
    /// A fresh PostgreSQL database.
    pub async fn postgres() -> Self {
        Self {
            db: TestDb::postgres().await,
        }
    }

    /// A fresh SQLite database (the embedded default's backend).
    pub async fn sqlite() -> Self {
        Self {
            db: TestDb::sqlite().await,
        }
    }

    /// The default test configuration on this database.
    pub fn config(&self) -> Config {
        Config::for_tests(self.db.url(), SECRET)
    }

    /// Every event's aggregate id, type, payload and metadata as text, one
    /// string per event: for asserting what the log never holds.
    pub async fn all_event_text(&self) -> Vec<String> {
        let store = toolhub_eventstore::open(self.db.url())
            .await
            .expect("open the store");
        let rows = toolhub_eventstore::sql::fetch(
            store.db(),
            "SELECT aggregate_id || event_type || CAST(payload AS TEXT) || \
             CAST(metadata AS TEXT) AS t FROM events",
            &[],
        )
        .await
        .expect("read the events");
        rows.iter()
            .map(|row| row.text("t").expect("text"))
            .collect()
    }

    /// Starts a server on this database.
    pub async fn server(&self) -> TestServer {
        self.server_with(self.config()).await
    }

    /// Starts a server with a custom configuration.
    pub async fn server_with(&self, config: Config) -> TestServer {
        TestServer::start(config).await
    }
}

impl TestServer {
    /// Starts a server with `config`.
    pub async fn start(config: Config) -> Self {
        let running = toolhub_api::spawn(config)
            .await
            .unwrap_or_else(|e| panic!("the server starts: {e}"));
        let url = running.url();
        Self {
            running: Some(running),
            url,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("an HTTP client"),
        }
    }

    /// Stops the server gracefully.
    pub async fn stop(&mut self) {
        if let Some(running) = self.running.take() {
            running.stop().await;
        }
    }

    /// Posts a GraphQL request and returns the HTTP status and JSON body.
    pub async fn post(&self, token: Option<&str>, query: &str, variables: Value) -> (u16, Value) {
        let mut request = self
            .http
            .post(format!("{}/graphql", self.url))
            .json(&json!({ "query": query, "variables": variables }));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.expect("the server answers");
        let status = response.status().as_u16();
        let body = response.json().await.expect("a JSON body");
        (status, body)
    }

    /// Posts a GraphQL request with extra headers; returns the status, the
    /// `Retry-After` header if any, and the JSON body.
    pub async fn post_with(
        &self,
        token: Option<&str>,
        query: &str,
        variables: Value,
        headers: &[(&str, &str)],
    ) -> (u16, Option<String>, Value) {
        let mut request = self
            .http
            .post(format!("{}/graphql", self.url))
            .json(&json!({ "query": query, "variables": variables }));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.expect("the server answers");
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = response.json().await.expect("a JSON body");
        (status, retry_after, body)
    }

    /// Runs a GraphQL operation that must succeed, returning `data`.
    pub async fn ok(&self, token: &str, query: &str, variables: Value) -> Value {
        let (status, body) = self.post(Some(token), query, variables).await;
        assert_eq!(status, 200, "{body}");
        assert!(body.get("errors").is_none(), "unexpected errors: {body}");
        body["data"].clone()
    }

    /// Runs a GraphQL operation that must fail, returning the first error's
    /// code.
    pub async fn error_code(&self, token: Option<&str>, query: &str, variables: Value) -> String {
        let (_, body) = self.post(token, query, variables).await;
        first_error_code(&body)
    }

    /// GETs a path, returning the status and body text.
    pub async fn get(&self, path: &str) -> (u16, String) {
        let response = self
            .http
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .expect("the server answers");
        let status = response.status().as_u16();
        (status, response.text().await.expect("a body"))
    }

    /// Opens a graphql-transport-ws connection and sends nothing on it.
    pub async fn ws_silent(&self) -> WsClient {
        let url = format!("{}/graphql/ws", self.url.replacen("http://", "ws://", 1));
        let mut request = url.into_client_request().expect("a WebSocket request");
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static("graphql-transport-ws"),
        );
        let (socket, _) = tokio_tungstenite::connect_async(request)
            .await
            .expect("the WebSocket handshake succeeds");
        WsClient { socket }
    }

    /// Opens a graphql-transport-ws connection and sends `connection_init`
    /// with `payload`.
    pub async fn ws(&self, payload: Value) -> WsClient {
        let mut client = self.ws_silent().await;
        client
            .socket
            .send(Message::text(
                json!({ "type": "connection_init", "payload": payload }).to_string(),
            ))
            .await
            .expect("send connection_init");
        client
    }

    /// A graphql-transport-ws connection authenticated with `token`, after
    /// its `connection_ack`.
    pub async fn ws_authenticated(&self, token: &str) -> WsClient {
        let mut client = self
            .ws(json!({ "authorization": format!("Bearer {token}") }))
            .await;
        match client.next_json().await {
            Some(message) if message["type"] == "connection_ack" => client,
            other => panic!("expected connection_ack, got {other:?}"),
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(running) = self.running.take() {
            // Stop in the background; the test's runtime may be ending.
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn(running.stop());
            }
        }
    }
}

/// The first error's `extensions.code`, or a panic naming the body.
pub fn first_error_code(body: &Value) -> String {
    body["errors"][0]["extensions"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("expected an error with a code, got {body}"))
        .to_string()
}

/// A graphql-transport-ws client.
pub struct WsClient {
    /// The WebSocket, speaking graphql-transport-ws.
    socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// What the server did with the socket.
#[derive(Debug)]
pub enum WsEnd {
    /// It sent a close frame with this code.
    Closed(u16),
    /// The stream ended without a close frame.
    Ended,
}

impl WsClient {
    /// Sends a graphql-transport-ws `ping`.
    pub async fn ping(&mut self) {
        self.socket
            .send(Message::text(json!({ "type": "ping" }).to_string()))
            .await
            .expect("send ping");
    }

    /// Sends a text message as it is.
    pub async fn send_text(&mut self, text: String) {
        self.socket
            .send(Message::text(text))
            .await
            .expect("send a message");
    }

    /// The next JSON message, pings included, or `None` when the socket
    /// closes. Fails the test after 20 s of silence.
    pub async fn next_any(&mut self) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let message = tokio::time::timeout_at(deadline, self.socket.next())
                .await
                .expect("a message within 20s")?;
            match message.ok()? {
                Message::Text(text) => return Some(serde_json::from_str(&text).expect("JSON")),
                Message::Close(_) => return None,
                _ => continue,
            }
        }
    }

    /// Completes (stops) the subscription `id`.
    pub async fn complete(&mut self, id: &str) {
        self.socket
            .send(Message::text(
                json!({ "id": id, "type": "complete" }).to_string(),
            ))
            .await
            .expect("send complete");
    }

    /// Starts a subscription with id `id`.
    pub async fn subscribe(&mut self, id: &str, query: &str, variables: Value) {
        self.socket
            .send(Message::text(
                json!({
                    "id": id,
                    "type": "subscribe",
                    "payload": { "query": query, "variables": variables }
                })
                .to_string(),
            ))
            .await
            .expect("send subscribe");
    }

    /// The next JSON message (pings are answered and skipped), or `None`
    /// when the socket closes. Fails the test after 20 s without one (the
    /// server's keep-alive pings do not count).
    pub async fn next_json(&mut self) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let message = tokio::time::timeout_at(deadline, self.socket.next())
                .await
                .expect("a message within 20s")?;
            match message.ok()? {
                Message::Text(text) => {
                    let value: Value = serde_json::from_str(&text).expect("JSON");
                    if value["type"] == "ping" {
                        let _ = self
                            .socket
                            .send(Message::text(json!({"type": "pong"}).to_string()))
                            .await;
                        continue;
                    }
                    return Some(value);
                }
                Message::Close(_) => return None,
                _ => continue,
            }
        }
    }

    /// The next `next` payload's `data` for subscription `id`.
    pub async fn next_data(&mut self, id: &str) -> Value {
        loop {
            let message = self
                .next_json()
                .await
                .expect("the subscription is still open");
            if message["id"] != id {
                continue;
            }
            match message["type"].as_str() {
                Some("next") => {
                    let payload = &message["payload"];
                    assert!(payload.get("errors").is_none(), "{payload}");
                    return payload["data"].clone();
                }
                other => panic!("expected next, got {other:?}: {message}"),
            }
        }
    }

    /// The next message for subscription `id`, whatever its type.
    pub async fn next_for(&mut self, id: &str) -> Value {
        loop {
            let message = self
                .next_json()
                .await
                .expect("the subscription is still open");
            if message["id"] == id {
                return message;
            }
        }
    }

    /// Waits until the server closes the socket, and says how.
    pub async fn closed(&mut self) -> WsEnd {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let message = tokio::time::timeout_at(deadline, self.socket.next())
                .await
                .expect("the server closes the socket within 20s");
            match message {
                None | Some(Err(_)) => return WsEnd::Ended,
                Some(Ok(Message::Close(frame))) => {
                    return WsEnd::Closed(frame.map_or(1005, |f| u16::from(f.code)))
                }
                Some(Ok(_)) => continue,
            }
        }
    }

    /// Closes the socket.
    pub async fn close(mut self) {
        let _ = self.socket.close(None).await;
    }
}

/// The fields of an execution the engine tests read.
pub const EXECUTION_FIELDS: &str = "id status error output pausedAt trigger \
    nodes { id state attempt breakpoint } \
    steps { nodeId attempt status input output error }";

impl TestServer {
    /// Creates a workflow with `definition`; returns its id.
    pub async fn create_workflow(&self, token: &str, name: &str, definition: Value) -> String {
        let data = self
            .ok(
                token,
                "mutation ($input: CreateWorkflowInput!) { createWorkflow(input: $input) { id } }",
                json!({"input": {"name": name, "definition": definition}}),
            )
            .await;
        data["createWorkflow"]["id"]
            .as_str()
            .expect("an id")
            .to_string()
    }

    /// Starts an execution of a workflow; returns its id.
    pub async fn start_execution(&self, token: &str, workflow_id: &str, input: Value) -> String {
        self.start_execution_with(token, json!({"workflowId": workflow_id, "input": input}))
            .await
    }

    /// Starts an execution with a whole `StartExecutionInput`; returns its
    /// id.
    pub async fn start_execution_with(&self, token: &str, input: Value) -> String {
        let data = self
            .ok(
                token,
                "mutation ($input: StartExecutionInput!) { startExecution(input: $input) { id } }",
                json!({ "input": input }),
            )
            .await;
        data["startExecution"]["id"]
            .as_str()
            .expect("an id")
            .to_string()
    }

    /// The execution as the API shows it (with [`EXECUTION_FIELDS`]).
    pub async fn execution(&self, token: &str, id: &str) -> Value {
        let query = format!("query ($id: ID!) {{ execution(id: $id) {{ {EXECUTION_FIELDS} }} }}");
        self.ok(token, &query, json!({ "id": id })).await["execution"].clone()
    }

    /// Polls the execution until `done` accepts it, failing the test after
    /// `within`.
    pub async fn wait_execution(
        &self,
        token: &str,
        id: &str,
        within: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let execution = self.execution(token, id).await;
            if done(&execution) {
                return execution;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!("the execution did not get there within {within:?}: {execution:#}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the execution has ended (completed, failed or
    /// cancelled).
    pub async fn wait_finished(&self, token: &str, id: &str, within: Duration) -> Value {
        self.wait_execution(token, id, within, |e| {
            matches!(
                e["status"].as_str(),
                Some("COMPLETED" | "FAILED" | "CANCELLED")
            )
        })
        .await
    }
}

/// The step of `node` (its latest attempt) in an execution as
/// [`TestServer::execution`] returns it.
pub fn step<'a>(execution: &'a Value, node: &str) -> &'a Value {
    execution["steps"]
        .as_array()
        .and_then(|steps| steps.iter().rev().find(|s| s["nodeId"] == node))
        .unwrap_or_else(|| panic!("no step of `{node}` in {execution:#}"))
}

/// Every log line of this test binary, at every level: for tests that
/// prove something never reaches a log.
pub fn captured_logs() -> std::sync::Arc<std::sync::Mutex<Vec<u8>>> {
    use std::sync::{Arc, Mutex, OnceLock};
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let writer = buffer.clone();
        // The service's own filter at its most verbose: what an operator
        // who asks for every log line would get.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(toolhub_api::telemetry::log_filter("trace"))
            .with_writer(move || CaptureWriter(writer.clone()))
            .try_init();
        buffer
    })
    .clone()
}

/// Appends log lines to the captured buffer.
struct CaptureWriter(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for CaptureWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut logs) = self.0.lock() {
            logs.extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Every row of every table of a PostgreSQL database, as `pg_dump` writes
/// it: for tests that prove a value is stored nowhere.
pub fn pg_dump(url: &str) -> String {
    let dump = std::process::Command::new("pg_dump")
        .args(["--data-only", url])
        .output()
        .expect("pg_dump is installed with PostgreSQL");
    assert!(
        dump.status.success(),
        "{}",
        String::from_utf8_lossy(&dump.stderr)
    );
    String::from_utf8_lossy(&dump.stdout).into_owned()
}

/// The bytes of an SQLite database file and its write-ahead log, as text.
pub fn sqlite_bytes(url: &str) -> String {
    let path = url.trim_start_matches("sqlite://").to_string();
    let mut bytes = std::fs::read(&path).expect("the database file");
    if let Ok(wal) = std::fs::read(format!("{path}-wal")) {
        bytes.extend(wal);
    }
    String::from_utf8_lossy(&bytes).into_owned()
}
