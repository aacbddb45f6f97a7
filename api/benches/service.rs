//! The service benchmark (issue 4), on PostgreSQL:
//!
//! 1. `workflows(first: 20)` through GraphQL against the same read query
//!    served by a plain axum JSON handler in this binary, requests per second
//!    at a fixed concurrency;
//! 2. subscription delivery latency to each of 1,000 `events` subscribers on
//!    one server: from the commit (the event's `recordedAt`, stamped by the
//!    database on this machine's clock) and, as an upper bound, from sending
//!    the mutation;
//! 3. the server's resident memory idle and with 1,000 subscribers.
//!
//! (2) and (3) run the real `toolhub serve` binary as a child process, so
//! that its memory is its own. Run with
//! `cargo bench -p toolhub-api --bench service` (PostgreSQL at
//! `DATABASE_URL`, or 127.0.0.1:5432). Results go to `docs/benchmarks.md` by
//! hand.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::get;
use axum::{Json, Router};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use toolhub_api::auth::Verifier;
use toolhub_api::config::Config;
use toolhub_api::read::{PageRequest, ReadModels, WorkflowFilter};
use toolhub_domain::Role;
use toolhub_eventstore::testing::TestDb;

#[path = "support/process.rs"]
mod process;
#[path = "support/token.rs"]
mod token;

use process::rss_kib;
use token::{token, SECRET};

/// The allocator `toolhub serve` runs with (see `src/main.rs`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const CONCURRENCY: usize = 16;
/// The sizes of a run: full by default, tiny with `BENCH_SMOKE=1` (which CI
/// runs, so that the benchmark the docs cite keeps working).
struct Sizes {
    /// How long each measuring window runs.
    run: Duration,
    /// How many alternating windows per side.
    windows: usize,
    /// How many subscribers receive each change.
    subscribers: usize,
    /// How many mutations are delivered to them.
    rounds: usize,
}

fn sizes() -> Sizes {
    if std::env::var("BENCH_SMOKE").is_ok_and(|v| v == "1") {
        Sizes {
            run: Duration::from_millis(300),
            windows: 1,
            subscribers: 20,
            rounds: 3,
        }
    } else {
        Sizes {
            run: Duration::from_secs(2),
            windows: 7,
            subscribers: 1_000,
            rounds: 40,
        }
    }
}

const LIST: &str = "{ workflows(first: 20) { edges { cursor node { id name description definitionVersion version archived createdBy createdAt updatedAt } } pageInfo { hasNextPage endCursor } } }";

#[derive(Clone)]
struct Plain {
    read: ReadModels,
    verifier: Verifier,
}

/// The same read as `workflows(first: 20)`, as plain JSON: authenticate,
/// query, serialise the same fields.
async fn plain_workflows(State(plain): State<Arc<Plain>>, headers: HeaderMap) -> Json<Value> {
    let caller = plain
        .verifier
        .verify_header(headers.get("authorization").and_then(|v| v.to_str().ok()))
        .map_err(|_| ())
        .expect("a valid token");
    let page = plain
        .read
        .workflows(
            &caller.tenant,
            &PageRequest {
                first: 20,
                after: None,
            },
            &WorkflowFilter::default(),
            toolhub_api::read::Documents::Skipped,
        )
        .await
        .expect("read");
    let edges: Vec<Value> = page
        .items
        .iter()
        .map(|(cursor, w)| {
            json!({ "cursor": cursor.0, "node": {
                "id": w.id, "name": w.name, "description": w.description,
                "definitionVersion": w.version, "version": w.aggregate_version,
                "archived": w.archived, "createdBy": w.created_by,
                "createdAt": w.created_at, "updatedAt": w.updated_at,
            }})
        })
        .collect();
    let end = page.items.last().map(|(c, _)| c.0.clone());
    Json(json!({ "data": { "workflows": {
        "edges": edges,
        "pageInfo": { "hasNextPage": page.has_next_page, "endCursor": end },
    }}}))
}

async fn rps(client: &reqwest::Client, make: impl Fn() -> reqwest::RequestBuilder) -> f64 {
    // Warm up.
    for _ in 0..50 {
        make().send().await.unwrap().bytes().await.unwrap();
    }
    let _ = client;
    let deadline = Instant::now() + sizes().run;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CONCURRENCY {
        let request = make();
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < deadline {
                let r = request.try_clone().unwrap().send().await.unwrap();
                assert!(r.status().is_success());
                r.bytes().await.unwrap();
                n += 1;
            }
            n
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    total as f64 / started.elapsed().as_secs_f64()
}

async fn create_workflows(client: &reqwest::Client, url: &str, token: &str, n: usize) {
    for i in 0..n {
        let body = json!({
            "query": "mutation ($input: CreateWorkflowInput!) { createWorkflow(input: $input) { id } }",
            "variables": { "input": { "name": format!("Workflow {i:03}"), "definition": {
                "nodes": [{"id": "wait", "type": "delay", "params": {"milliseconds": 10}}], "edges": [] } } }
        });
        let r: Value = client
            .post(format!("{url}/graphql"))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(r.get("errors").is_none(), "{r}");
    }
}

#[tokio::main]
async fn main() {
    let client = reqwest::Client::new();
    let editor = token("acme", Role::Editor);
    let admin = token("acme", Role::Admin);

    // 1. GraphQL against the plain handler, in this process.
    let db = TestDb::postgres().await;
    // A benchmark measures throughput: no rate limit of one caller.
    let mut config = Config::for_tests(db.url(), SECRET);
    config.limits.rate.per_subject = Default::default();
    config.limits.rate.per_address = Default::default();
    let running = toolhub_api::spawn(config).await.unwrap();
    let url = running.url();
    create_workflows(&client, &url, &editor, 100).await;
    let store = toolhub_eventstore::open(db.url()).await.unwrap();
    let plain = Arc::new(Plain {
        read: ReadModels::new(&store),
        verifier: Verifier::new(&Config::for_tests(db.url(), SECRET).jwt).unwrap(),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let plain_url = format!("http://{}", listener.local_addr().unwrap());
    let app = Router::new()
        .route("/plain/workflows", get(plain_workflows))
        .with_state(plain);
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    // Short windows, alternating, so that both sides see the same machine
    // (it is shared); medians of the windows and of the paired ratios.
    let mut graphql = Vec::new();
    let mut plain = Vec::new();
    let mut ratios = Vec::new();
    for _ in 0..sizes().windows {
        let g = rps(&client, || {
            client
                .post(format!("{url}/graphql"))
                .bearer_auth(&editor)
                .json(&json!({ "query": LIST }))
        })
        .await;
        let p = rps(&client, || {
            client
                .get(format!("{plain_url}/plain/workflows"))
                .bearer_auth(&editor)
        })
        .await;
        graphql.push(g);
        plain.push(p);
        ratios.push(g / p);
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    println!(
        "workflows(first: 20), {CONCURRENCY} concurrent clients, {} alternating windows of {:?} each, medians:", sizes().windows, sizes().run
    );
    println!("  GraphQL          {:8.0} req/s", median(graphql));
    println!("  plain axum JSON  {:8.0} req/s", median(plain));
    println!("  ratio            {:8.2}", median(ratios));
    running.stop().await;
    drop(db);

    // 2 and 3. The real binary as a child process.
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
        // A thousand subscribers of one caller, from one address.
        .env("TOOLHUB_RATE_LIMIT_SUBJECT", "off")
        .env("TOOLHUB_RATE_LIMIT_ADDRESS", "off")
        .env("TOOLHUB_WS_SUBSCRIPTIONS_PER_CALLER", "2000")
        .spawn()
        .expect("start toolhub serve");
    let url = format!("http://127.0.0.1:{port}");
    for _ in 0..200 {
        if client
            .get(format!("{url}/health/ready"))
            .send()
            .await
            .is_ok()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    create_workflows(&client, &url, &editor, 1).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = rss_kib(child.id());

    let ws_url = format!("ws://127.0.0.1:{port}/graphql/ws");
    // (subscriber, received at, latency from the commit)
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(usize, Instant, Duration)>();
    let mut ready = Vec::new();
    for i in 0..sizes().subscribers {
        let mut request = ws_url.clone().into_client_request().unwrap();
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static("graphql-transport-ws"),
        );
        let (mut socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
        socket
            .send(Message::text(
                json!({"type": "connection_init", "payload": {"authorization": format!("Bearer {admin}")}})
                    .to_string(),
            ))
            .await
            .unwrap();
        let tx = tx.clone();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<()>();
        ready.push(ready_rx);
        tokio::spawn(async move {
            let mut ready_tx = Some(ready_tx);
            while let Some(Ok(message)) = socket.next().await {
                if let Message::Text(text) = message {
                    let v: Value = serde_json::from_str(&text).unwrap();
                    match v["type"].as_str() {
                        Some("connection_ack") => {
                            // The protocol allows a subscribe only once the
                            // connection is acknowledged.
                            socket
                                .send(Message::text(
                                    json!({"id": "1", "type": "subscribe", "payload": {"query": "subscription { events { position recordedAt } }"}})
                                        .to_string(),
                                ))
                                .await
                                .unwrap();
                            if let Some(r) = ready_tx.take() {
                                let _ = r.send(());
                            }
                        }
                        Some("next") => {
                            let now = Instant::now();
                            let wall = chrono::Utc::now();
                            let recorded = v["payload"]["data"]["events"]["recordedAt"]
                                .as_str()
                                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                                .expect("recordedAt");
                            let since_commit = (wall - recorded.with_timezone(&chrono::Utc))
                                .to_std()
                                .unwrap_or_default();
                            let _ = tx.send((i, now, since_commit));
                        }
                        _ => {}
                    }
                }
            }
        });
    }
    for r in ready {
        let _ = r.await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let with_subscribers = rss_kib(child.id());

    let mut from_send = Vec::new();
    let mut from_commit = Vec::new();
    let mut round_trips = Vec::new();
    let mut firsts = Vec::new();
    let mut lasts = Vec::new();
    for round in 0..sizes().rounds {
        // Rounds apart, so that each starts from quiet subscribers.
        tokio::time::sleep(Duration::from_millis(250)).await;
        let sent = Instant::now();
        create_workflows(&client, &url, &editor, 1).await;
        round_trips.push(sent.elapsed());
        let mut got = 0;
        let mut this_round = Vec::with_capacity(sizes().subscribers);
        while got < sizes().subscribers {
            let (_, at, since_commit) = tokio::time::timeout(Duration::from_secs(30), rx.recv())
                .await
                .unwrap_or_else(|_| panic!("round {round}: only {got} deliveries"))
                .unwrap();
            from_send.push(at.duration_since(sent));
            from_commit.push(since_commit);
            this_round.push(since_commit);
            got += 1;
        }
        firsts.push(this_round.iter().copied().min().unwrap_or_default());
        lasts.push(this_round.iter().copied().max().unwrap_or_default());
    }
    let summary = |mut samples: Vec<Duration>| {
        samples.sort();
        let pct = |p: f64| samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)];
        format!(
            "median {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            pct(0.5).as_secs_f64() * 1e3,
            pct(0.99).as_secs_f64() * 1e3,
            pct(1.0).as_secs_f64() * 1e3
        )
    };
    println!(
        "subscription delivery to {} subscribers ({} mutations):",
        sizes().subscribers,
        sizes().rounds
    );
    println!("  from the commit            {}", summary(from_commit));
    println!("  from sending the mutation  {}", summary(from_send));
    println!("  the mutation's round trip  {}", summary(round_trips));
    println!("  first subscriber of a round {}", summary(firsts));
    println!("  last subscriber of a round  {}", summary(lasts));
    println!("resident memory of toolhub serve:");
    println!("  idle                      {:6} MiB", idle / 1024);
    println!(
        "  with {} subscribers     {:6} MiB",
        sizes().subscribers,
        with_subscribers / 1024
    );
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(data_dir);
}
