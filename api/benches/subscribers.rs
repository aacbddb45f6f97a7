//! Live subscribers at scale (issue 11), on PostgreSQL.
//!
//! Runs the real `toolhub serve` binary as a child process (so that its
//! resident memory is its own) and, in this process, graphql-transport-ws
//! clients with 100 subscriptions per socket:
//!
//! - `workflowChanged(id)` of one workflow: 1,000 subscribers (10 sockets)
//!   and 10,000 (100 sockets); each round renames the workflow;
//! - `workflowChanged(id)` of 1,000 workflows, 10 subscribers each (10,000
//!   over 100 sockets); each round renames one of them, so that 9,990
//!   subscribers are woken for a change they do not show;
//! - `events`: 1,000 and 10,000 subscribers; each round renames a workflow;
//! - `executionUpdated(id)` of one execution paused at a breakpoint: 1,000
//!   and 10,000 subscribers; each round steps it to the next node.
//!
//! For every delivery it records the time from the commit (the entity's
//! `updatedAt` or the entry's `recordedAt`, stamped by PostgreSQL's
//! `clock_timestamp()` in the inserting statement, against the wall clock of
//! this machine) and from sending the mutation; a round waits until every
//! subscriber it concerns has received the change, or 10 s (the misses are
//! counted). Prints p50 and p99 per scenario and the server's resident
//! memory with each set of subscribers open. The clients run on the same
//! two cores as the server and the database: every delivery is also a
//! WebSocket frame read and a JSON document parsed here.
//!
//! Run with `cargo bench -p toolhub-api --bench subscribers` (PostgreSQL at
//! `DATABASE_URL`, or 127.0.0.1:5432). `BENCH_ROUNDS` (default 20) rounds
//! per scenario; `BENCH_SMOKE=1` shrinks everything (CI runs it).

use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use toolhub_domain::Role;
use toolhub_eventstore::testing::TestDb;

#[path = "support/process.rs"]
mod process;
#[path = "support/token.rs"]
mod token;

use process::rss_kib;
use token::{token, SECRET};

/// Subscriptions per socket.
const PER_SOCKET: usize = 100;

fn smoke() -> bool {
    std::env::var("BENCH_SMOKE").is_ok_and(|v| v == "1")
}

fn rounds() -> usize {
    if smoke() {
        2
    } else {
        std::env::var("BENCH_ROUNDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(20)
    }
}

/// 1,000 and 10,000, or 20 and 200 in a smoke run.
fn counts() -> (usize, usize) {
    if smoke() {
        (20, 200)
    } else {
        (1_000, 10_000)
    }
}

struct Server {
    url: String,
    client: reqwest::Client,
    admin: String,
}

impl Server {
    async fn graphql(&self, query: &str, variables: Value) -> Value {
        let r: Value = self
            .client
            .post(format!("{}/graphql", self.url))
            .bearer_auth(&self.admin)
            .json(&json!({"query": query, "variables": variables}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(r.get("errors").is_none(), "{r}");
        r["data"].clone()
    }

    async fn create_workflow(&self, name: &str, definition: Value) -> String {
        let data = self
            .graphql(
                "mutation ($input: CreateWorkflowInput!) { createWorkflow(input: $input) { id } }",
                json!({"input": {"name": name, "definition": definition}}),
            )
            .await;
        data["createWorkflow"]["id"].as_str().unwrap().to_string()
    }

    async fn rename(&self, id: &str, name: &str) {
        self.graphql(
            "mutation ($input: RenameWorkflowInput!) { renameWorkflow(input: $input) { id } }",
            json!({"input": {"id": id, "name": name}}),
        )
        .await;
    }
}

/// One delivery: the subscriber, what it showed (a name, a paused node, or
/// nothing), and the time from the commit.
struct Delivery {
    subscriber: usize,
    marker: String,
    since_commit: Duration,
    at: Instant,
}

/// How a subscription's deliveries are read: the field under `data`, the
/// marker inside it and the commit time inside it.
#[derive(Clone, Copy)]
struct Shape {
    field: &'static str,
    marker: Option<&'static str>,
    time: &'static str,
}

/// Opens `subscriptions.len()` subscriptions over sockets of `PER_SOCKET`,
/// each delivery sent to `tx`. Returns once every one is acknowledged
/// (the server has answered a first ping after them).
async fn subscribe_all(
    ws_url: &str,
    token: &str,
    subscriptions: Vec<(String, Value)>,
    shape: Shape,
    tx: mpsc::UnboundedSender<Delivery>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    let mut ready = Vec::new();
    for (socket_index, chunk) in subscriptions.chunks(PER_SOCKET).enumerate() {
        let chunk = chunk.to_vec();
        let mut request = ws_url.into_client_request().unwrap();
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static("graphql-transport-ws"),
        );
        let (mut socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
        socket
            .send(Message::text(
                json!({"type": "connection_init", "payload": {"authorization": format!("Bearer {token}")}})
                    .to_string(),
            ))
            .await
            .unwrap();
        let tx = tx.clone();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<()>();
        ready.push(ready_rx);
        tasks.push(tokio::spawn(async move {
            let mut ready_tx = Some(ready_tx);
            while let Some(Ok(message)) = socket.next().await {
                let Message::Text(text) = message else {
                    continue;
                };
                let v: Value = serde_json::from_str(&text).unwrap();
                match v["type"].as_str() {
                    Some("connection_ack") => {
                        for (i, (query, variables)) in chunk.iter().enumerate() {
                            socket
                                .send(Message::text(
                                    json!({"id": i.to_string(), "type": "subscribe",
                                           "payload": {"query": query, "variables": variables}})
                                    .to_string(),
                                ))
                                .await
                                .unwrap();
                        }
                        // The server handles a socket's messages in order:
                        // its pong comes after every subscribe was taken.
                        socket
                            .send(Message::text(json!({"type": "ping"}).to_string()))
                            .await
                            .unwrap();
                    }
                    Some("pong") => {
                        if let Some(r) = ready_tx.take() {
                            let _ = r.send(());
                        }
                    }
                    Some("next") => {
                        let at = Instant::now();
                        let wall = chrono::Utc::now();
                        let id: usize = v["id"].as_str().unwrap().parse().unwrap();
                        let node = &v["payload"]["data"][shape.field];
                        assert!(
                            v["payload"].get("errors").is_none(),
                            "a subscription failed: {v}"
                        );
                        let marker = shape
                            .marker
                            .and_then(|m| node[m].as_str())
                            .unwrap_or_default()
                            .to_string();
                        let committed = node[shape.time]
                            .as_str()
                            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                            .expect("a commit time");
                        let since_commit = (wall - committed.with_timezone(&chrono::Utc))
                            .to_std()
                            .unwrap_or_default();
                        let _ = tx.send(Delivery {
                            subscriber: socket_index * PER_SOCKET + id,
                            marker,
                            since_commit,
                            at,
                        });
                    }
                    Some("error") => panic!("a subscription was refused: {v}"),
                    _ => {}
                }
            }
        }));
    }
    for r in ready {
        r.await.expect("a socket was closed before it was ready");
    }
    tasks
}

/// The results of one scenario.
#[derive(Default)]
struct Samples {
    since_commit: Vec<Duration>,
    since_send: Vec<Duration>,
    missed: usize,
}

fn ms(samples: &mut [Duration], p: f64) -> f64 {
    samples.sort();
    if samples.is_empty() {
        return f64::NAN;
    }
    samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)].as_secs_f64() * 1e3
}

/// Waits for `expected` deliveries showing `marker` (any, when `None`),
/// each subscriber counted once.
async fn collect(
    rx: &mut mpsc::UnboundedReceiver<Delivery>,
    expected: usize,
    marker: Option<&str>,
    sent: Instant,
    samples: &mut Samples,
) {
    let mut seen = std::collections::HashSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while seen.len() < expected {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(d)) => {
                if marker.is_some_and(|m| m != d.marker) || !seen.insert(d.subscriber) {
                    continue;
                }
                samples.since_commit.push(d.since_commit);
                samples.since_send.push(d.at.duration_since(sent));
            }
            _ => {
                samples.missed += expected - seen.len();
                return;
            }
        }
    }
}

/// Drops what is left of earlier rounds.
async fn quiet(rx: &mut mpsc::UnboundedReceiver<Delivery>) {
    tokio::time::sleep(Duration::from_millis(300)).await;
    while rx.try_recv().is_ok() {}
}

fn report(name: &str, subscribers: usize, sockets: usize, mut s: Samples, rss: u64) {
    println!(
        "| {name} | {subscribers} | {sockets} | {:.0} / {:.0} | {:.0} / {:.0} | {} | {} |",
        ms(&mut s.since_commit, 0.5),
        ms(&mut s.since_commit, 0.99),
        ms(&mut s.since_send, 0.5),
        ms(&mut s.since_send, 0.99),
        s.missed,
        rss / 1024,
    );
}

const WORKFLOW_CHANGED: &str =
    "subscription ($id: ID!) { workflowChanged(id: $id) { id name version updatedAt } }";
const EVENTS: &str = "subscription { events { position eventType aggregateId recordedAt } }";
const EXECUTION_UPDATED: &str = "subscription ($id: ID!) { executionUpdated(id: $id) { id status pausedAt updatedAt steps { nodeId status } } }";

#[tokio::main]
async fn main() {
    let db = TestDb::postgres().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let data_dir = std::env::temp_dir().join(format!("toolhub-bench-{port}"));
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_toolhub"))
        .arg("serve")
        .env("DATABASE_URL", db.url())
        .env("TOOLHUB_DATA_DIR", &data_dir)
        .env("TOOLHUB_LISTEN", format!("127.0.0.1:{port}"))
        .env("TOOLHUB_JWT_SECRET", std::str::from_utf8(SECRET).unwrap())
        .env(
            "TOOLHUB_MASTER_KEY",
            toolhub_eventstore::MasterKey::generate()
                .to_base64()
                .as_str(),
        )
        .env("TOOLHUB_LOG", "warn")
        // Ten thousand subscribers of one caller, from one address.
        .env("TOOLHUB_RATE_LIMIT_SUBJECT", "off")
        .env("TOOLHUB_RATE_LIMIT_ADDRESS", "off")
        .env(
            "TOOLHUB_WS_SUBSCRIPTIONS_PER_SOCKET",
            PER_SOCKET.to_string(),
        )
        .env("TOOLHUB_WS_SUBSCRIPTIONS_PER_CALLER", "100000")
        .spawn()
        .expect("start toolhub serve");
    let url = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    for _ in 0..300 {
        if client
            .get(format!("{url}/health/ready"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let server = Server {
        url: url.clone(),
        client,
        admin: token("acme", Role::Admin),
    };
    let ws_url = format!("ws://127.0.0.1:{port}/graphql/ws");
    let (small, large) = counts();
    let rounds = rounds();
    let pid = child.id();

    // The workflows: one watched by all, and 1,000 watched by ten each.
    let simple = json!({"nodes": [{"id": "wait", "type": "delay", "params": {"milliseconds": 10}}], "edges": []});
    let watched = server.create_workflow("watched", simple.clone()).await;
    let spread_count = large / 10;
    let mut spread = Vec::new();
    for i in 0..spread_count {
        spread.push(
            server
                .create_workflow(&format!("spread {i}"), simple.clone())
                .await,
        );
    }
    // An execution paused at its second node of a long chain: each round
    // steps it one node further.
    let chain_length = rounds + 4;
    let nodes: Vec<Value> = (0..chain_length)
        .map(|i| json!({"id": format!("n{i}"), "type": "transform", "params": {"template": i}}))
        .collect();
    let edges: Vec<Value> = (1..chain_length)
        .map(|i| json!({"from": format!("n{}", i - 1), "to": format!("n{i}")}))
        .collect();
    let chain = server
        .create_workflow("chain", json!({"nodes": nodes, "edges": edges}))
        .await;
    let started = server
        .graphql(
            "mutation ($input: StartExecutionInput!) { startExecution(input: $input) { id } }",
            json!({"input": {"workflowId": chain, "breakpoints": ["n1"]}}),
        )
        .await;
    let execution = started["startExecution"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    for _ in 0..100 {
        let e = server
            .graphql(
                "query ($id: ID!) { execution(id: $id) { status pausedAt } }",
                json!({"id": execution}),
            )
            .await;
        if e["execution"]["pausedAt"] == "n1" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let idle = rss_kib(pid);
    println!(
        "resident memory of toolhub serve, idle: {} MiB",
        idle / 1024
    );
    println!("{rounds} rounds per scenario, {PER_SOCKET} subscriptions per socket");
    println!("| subscription | subscribers | sockets | from the commit p50 / p99 ms | from sending p50 / p99 ms | not delivered in 10 s | resident MiB |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");

    let mut step = 1;
    let mut round_name = 0;
    for (kind, count) in [
        ("workflowChanged, one workflow", small),
        ("workflowChanged, one workflow", large),
        ("workflowChanged, 10 per workflow", large),
        ("events", small),
        ("events", large),
        ("executionUpdated, one execution", small),
        ("executionUpdated, one execution", large),
    ] {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (query, shape): (&str, Shape) = if kind.starts_with("workflowChanged") {
            (
                WORKFLOW_CHANGED,
                Shape {
                    field: "workflowChanged",
                    marker: Some("name"),
                    time: "updatedAt",
                },
            )
        } else if kind == "events" {
            (
                EVENTS,
                Shape {
                    field: "events",
                    marker: None,
                    time: "recordedAt",
                },
            )
        } else {
            (
                EXECUTION_UPDATED,
                Shape {
                    field: "executionUpdated",
                    marker: Some("pausedAt"),
                    time: "updatedAt",
                },
            )
        };
        let subscriptions: Vec<(String, Value)> = (0..count)
            .map(|i| {
                let variables = if kind.starts_with("workflowChanged, 10") {
                    json!({"id": spread[i % spread.len()]})
                } else if kind.starts_with("workflowChanged") {
                    json!({"id": watched})
                } else if kind.starts_with("executionUpdated") {
                    json!({"id": execution})
                } else {
                    json!({})
                };
                (query.to_string(), variables)
            })
            .collect();
        let tasks = subscribe_all(&ws_url, &server.admin, subscriptions, shape, tx).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let rss = rss_kib(pid);
        let mut samples = Samples::default();
        for round in 0..rounds {
            quiet(&mut rx).await;
            round_name += 1;
            let name = format!("round {round_name}");
            let sent = Instant::now();
            if kind.starts_with("workflowChanged, 10") {
                let target = round % spread.len();
                server.rename(&spread[target], &name).await;
                let expected = (0..count).filter(|i| i % spread.len() == target).count();
                collect(&mut rx, expected, Some(&name), sent, &mut samples).await;
            } else if kind.starts_with("workflowChanged") {
                server.rename(&watched, &name).await;
                collect(&mut rx, count, Some(&name), sent, &mut samples).await;
            } else if kind == "events" {
                server.rename(&watched, &name).await;
                collect(&mut rx, count, None, sent, &mut samples).await;
            } else {
                if step + 1 >= chain_length {
                    break;
                }
                server
                    .graphql(
                        "mutation ($input: ResumeExecutionInput!) { resumeExecution(input: $input) { id } }",
                        json!({"input": {"id": execution, "step": true}}),
                    )
                    .await;
                step += 1;
                let marker = format!("n{step}");
                collect(&mut rx, count, Some(&marker), sent, &mut samples).await;
            }
        }
        let sockets = count.div_ceil(PER_SOCKET);
        report(kind, count, sockets, samples, rss);
        for t in tasks {
            t.abort();
        }
        // Let the server notice the closed sockets.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(data_dir);
}
