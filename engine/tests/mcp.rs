//! The MCP client against real servers: the MCP reference server
//! (`@modelcontextprotocol/server-everything`, pinned in `tests/mcp/`) over
//! stdio and over Streamable HTTP, and tiny misbehaving scripts written into a
//! temporary directory.
//!
//! The reference server is installed with `npm ci --prefix tests/mcp`; without
//! it, these tests fail and say so.

use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use toolhub_domain::mcp_server::Transport;
use toolhub_domain::{McpServerId, TenantId};
use toolhub_engine::mcp::{
    McpCallError, McpPool, McpPoolConfig, McpTarget, ResolvedTransport, ToolOutput, INHERITED_ENV,
};

/// Generous, because the machine running the tests may be busy; the tests
/// that are about time use their own, tighter bounds.
#[path = "../../tests/src/everything.rs"]
mod everything;

use everything::{free_port, server_everything, HttpServer};

const CALL_TIMEOUT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

fn http_transport(server: &HttpServer) -> Transport {
    Transport::StreamableHttp {
        url: server.url(),
        headers: BTreeMap::new(),
    }
}

fn everything_over_stdio(env: &[(&str, &str)]) -> Transport {
    Transport::Stdio {
        command: "node".into(),
        args: vec![server_everything().display().to_string(), "stdio".into()],
        env: env
            .iter()
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect(),
    }
}

fn target(transport: Transport) -> McpTarget {
    McpTarget {
        tenant: TenantId::parse("acme").unwrap(),
        server: McpServerId::new(),
        transport: ResolvedTransport::new(transport).unwrap(),
    }
}

fn pool_with(config: McpPoolConfig) -> McpPool {
    McpPool::new(config, reqwest::Client::new())
}

fn pool() -> McpPool {
    pool_with(McpPoolConfig::default())
}

fn arguments(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        other => panic!("arguments must be an object, not {other}"),
    }
}

/// Calls `tool` with `args` (a JSON object) and the default timeout.
async fn call(
    pool: &McpPool,
    target: &McpTarget,
    tool: &str,
    args: Value,
) -> Result<ToolOutput, McpCallError> {
    pool.call_tool(
        target,
        tool,
        arguments(args),
        CALL_TIMEOUT,
        CancellationToken::new(),
    )
    .await
}

async fn echo(pool: &McpPool, target: &McpTarget, message: &str) -> Result<String, McpCallError> {
    call(pool, target, "echo", json!({ "message": message }))
        .await
        .map(|output| output.text)
}

/// Polls `condition` until it holds or `limit` passes.
async fn eventually(limit: Duration, condition: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    condition()
}

/// True while the process exists (a zombie counts until it is reaped).
fn process_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

fn only_pid(pool: &McpPool) -> u32 {
    let connections = pool.connections();
    assert_eq!(connections.len(), 1, "{connections:?}");
    connections[0]
        .pid
        .expect("a stdio connection has a process id")
}

/// Sends SIGKILL; a negative pid names a process group.
fn kill(pid: &str) {
    let status = std::process::Command::new("kill")
        .args(["-9", "--", pid])
        .status()
        .unwrap();
    assert!(status.success(), "kill -9 {pid} failed");
}

/// The reference server behind `tee`, which records what the client writes to
/// its stdin into `log`.
fn everything_with_recorded_stdin(log: &Path) -> Transport {
    Transport::Stdio {
        command: "sh".into(),
        args: vec![
            "-c".into(),
            r#"tee -a "$0" | exec node "$1" stdio"#.into(),
            log.display().to_string(),
            server_everything().display().to_string(),
        ],
        env: BTreeMap::new(),
    }
}

fn write_script(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// Every JSON-RPC message found in captured traffic (stdin lines or raw HTTP).
fn jsonrpc_messages(text: &str) -> Vec<Value> {
    let mut messages = Vec::new();
    let mut at = 0;
    while let Some(found) = text[at..].find("{\"") {
        let start = at + found;
        let mut stream = serde_json::Deserializer::from_str(&text[start..]).into_iter::<Value>();
        match stream.next() {
            Some(Ok(value)) if value.get("jsonrpc").is_some() => {
                messages.push(value);
                at = start + stream.byte_offset();
            }
            _ => at = start + 2,
        }
    }
    messages
}

/// Asserts that the traffic holds a `tools/call` of `tool` and a
/// `notifications/cancelled` naming that call's id.
fn assert_cancelled_on_the_wire(traffic: &str, tool: &str) {
    let messages = jsonrpc_messages(traffic);
    let call_id = messages
        .iter()
        .find(|m| m["method"] == "tools/call" && m["params"]["name"] == tool)
        .map(|m| m["id"].clone())
        .unwrap_or_else(|| panic!("no tools/call of {tool} in {messages:#?}"));
    assert!(
        messages.iter().any(
            |m| m["method"] == "notifications/cancelled" && m["params"]["requestId"] == call_id
        ),
        "no notifications/cancelled for request {call_id} in {messages:#?}"
    );
}

/// Starts a cancellable long-running operation on its own task.
fn start_long_operation(
    pool: &McpPool,
    target: &McpTarget,
    seconds: u64,
    timeout: Duration,
    cancel: CancellationToken,
) -> tokio::task::JoinHandle<Result<toolhub_engine::mcp::ToolOutput, McpCallError>> {
    let pool = pool.clone();
    let target = target.clone();
    tokio::spawn(async move {
        pool.call_tool(
            &target,
            "trigger-long-running-operation",
            arguments(json!({ "duration": seconds, "steps": seconds })),
            timeout,
            cancel,
        )
        .await
    })
}

/// A TCP proxy that records every byte the client sends, to see what went
/// over the wire.
struct TapProxy {
    address: SocketAddr,
    seen: Arc<Mutex<Vec<u8>>>,
    task: tokio::task::JoinHandle<()>,
}

impl TapProxy {
    async fn start(upstream: u16) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let recorder = Arc::clone(&seen);
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let recorder = Arc::clone(&recorder);
                tokio::spawn(async move {
                    let Ok(outbound) =
                        tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                    else {
                        return;
                    };
                    let (mut client_read, mut client_write) = inbound.into_split();
                    let (mut server_read, mut server_write) = outbound.into_split();
                    let up = async {
                        let mut buffer = [0u8; 8_192];
                        loop {
                            let read = match client_read.read(&mut buffer).await {
                                Ok(0) | Err(_) => break,
                                Ok(read) => read,
                            };
                            recorder.lock().unwrap().extend_from_slice(&buffer[..read]);
                            if server_write.write_all(&buffer[..read]).await.is_err() {
                                break;
                            }
                        }
                        let _ = server_write.shutdown().await;
                    };
                    let down = async {
                        let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
                        let _ = client_write.shutdown().await;
                    };
                    tokio::join!(up, down);
                });
            }
        });
        Self {
            address,
            seen,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/mcp", self.address)
    }

    fn traffic(&self) -> String {
        String::from_utf8_lossy(&self.seen.lock().unwrap()).into_owned()
    }
}

impl Drop for TapProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---------------------------------------------------------------------------
// Over stdio
// ---------------------------------------------------------------------------

#[tokio::test]
async fn listing_tools_over_stdio_shows_the_reference_tools_with_their_hints() {
    let pool = pool();
    let tools = pool
        .list_tools(&target(everything_over_stdio(&[])), CALL_TIMEOUT)
        .await
        .unwrap();
    let names: Vec<&str> = tools.iter().map(|tool| tool.info.name.as_str()).collect();
    for expected in [
        "echo",
        "get-sum",
        "get-env",
        "trigger-long-running-operation",
    ] {
        assert!(
            names.contains(&expected),
            "{expected} missing from {names:?}"
        );
    }
    let echo = tools.iter().find(|tool| tool.info.name == "echo").unwrap();
    assert!(echo.read_only && echo.idempotent && echo.is_safe_to_retry());
    assert_eq!(echo.info.input_schema["type"], "object");
    assert!(echo.info.input_schema["properties"]["message"].is_object());
    pool.shutdown().await;
}

#[tokio::test]
async fn echo_over_stdio_returns_the_message_in_text() {
    let pool = pool();
    let output = call(
        &pool,
        &target(everything_over_stdio(&[])),
        "echo",
        json!({ "message": "hello from toolhub" }),
    )
    .await
    .unwrap();
    assert_eq!(output.text, "Echo: hello from toolhub");
    let recorded = output.to_json();
    assert_eq!(recorded["text"], "Echo: hello from toolhub");
    assert_eq!(
        recorded["content"],
        json!([{ "type": "text", "text": "Echo: hello from toolhub" }])
    );
    assert_eq!(recorded["structured"], Value::Null);
    pool.shutdown().await;
}

#[tokio::test]
async fn get_sum_over_stdio_adds_two_and_three() {
    let pool = pool();
    let output = call(
        &pool,
        &target(everything_over_stdio(&[])),
        "get-sum",
        json!({ "a": 2, "b": 3 }),
    )
    .await
    .unwrap();
    assert_eq!(output.text, "The sum of 2 and 3 is 5.");
    pool.shutdown().await;
}

#[tokio::test]
async fn get_structured_content_over_stdio_yields_structured() {
    let pool = pool();
    let output = call(
        &pool,
        &target(everything_over_stdio(&[])),
        "get-structured-content",
        json!({ "location": "New York" }),
    )
    .await
    .unwrap();
    assert_eq!(output.to_json()["structured"]["temperature"], 33);
    assert_eq!(output.to_json()["structured"]["conditions"], "Cloudy");
    pool.shutdown().await;
}

#[tokio::test]
async fn a_configured_variable_reaches_the_server_but_the_parent_environment_does_not() {
    // Stands for TOOLHUB_MASTER_KEY, DATABASE_URL and the like. Edition 2021
    // makes this safe to call; std serialises it with process spawning.
    std::env::set_var("TOOLHUB_TEST_PARENT_ONLY", "parent-secret");
    let pool = pool();
    let output = call(
        &pool,
        &target(everything_over_stdio(&[("SERVER_SETTING", "from-config")])),
        "get-env",
        json!({}),
    )
    .await
    .unwrap();
    let environment: BTreeMap<String, String> = serde_json::from_str(&output.text).unwrap();
    assert_eq!(
        environment.get("SERVER_SETTING").map(String::as_str),
        Some("from-config")
    );
    assert!(
        !environment.contains_key("TOOLHUB_TEST_PARENT_ONLY"),
        "{environment:?}"
    );
    for key in environment.keys() {
        assert!(
            key == "SERVER_SETTING" || INHERITED_ENV.contains(&key.as_str()),
            "`{key}` reached the server from the parent environment"
        );
    }
    assert!(environment.contains_key("PATH"));
    pool.shutdown().await;
}

#[tokio::test]
async fn two_calls_reuse_one_child_process() {
    let pool = pool();
    let target = target(everything_over_stdio(&[]));
    assert_eq!(echo(&pool, &target, "one").await.unwrap(), "Echo: one");
    let first_pid = only_pid(&pool);
    assert_eq!(echo(&pool, &target, "two").await.unwrap(), "Echo: two");
    assert_eq!(only_pid(&pool), first_pid);
    let stats = pool.stats();
    assert_eq!(
        (stats.spawned, stats.connected, stats.open),
        (1, 1, 1),
        "{stats:?}"
    );
    pool.shutdown().await;
}

#[tokio::test]
async fn callers_arriving_together_share_one_process() {
    let pool = pool();
    let target = target(everything_over_stdio(&[]));
    let calls = (0..4).map(|i| {
        let pool = pool.clone();
        let target = target.clone();
        tokio::spawn(async move { echo(&pool, &target, &format!("caller {i}")).await })
    });
    for (i, call) in calls.collect::<Vec<_>>().into_iter().enumerate() {
        assert_eq!(call.await.unwrap().unwrap(), format!("Echo: caller {i}"));
    }
    assert_eq!(pool.stats().spawned, 1, "{:?}", pool.stats());
    pool.shutdown().await;
}

#[tokio::test]
async fn two_tenants_never_share_a_connection_to_the_same_server() {
    let pool = pool();
    let ours = target(everything_over_stdio(&[]));
    let theirs = McpTarget {
        tenant: TenantId::parse("globex").unwrap(),
        ..ours.clone()
    };
    echo(&pool, &ours, "ours").await.unwrap();
    echo(&pool, &theirs, "theirs").await.unwrap();
    let stats = pool.stats();
    assert_eq!((stats.spawned, stats.open), (2, 2), "{stats:?}");
    pool.shutdown().await;
}

#[tokio::test]
async fn a_killed_child_is_restarted_on_the_next_call() {
    let pool = pool();
    let target = target(everything_over_stdio(&[]));
    echo(&pool, &target, "before").await.unwrap();
    let first_pid = only_pid(&pool);
    kill(&first_pid.to_string());
    assert!(
        eventually(Duration::from_secs(5), || !pool.connections()[0].alive).await,
        "the pool never noticed the death"
    );
    assert_eq!(echo(&pool, &target, "after").await.unwrap(), "Echo: after");
    let stats = pool.stats();
    assert_eq!((stats.spawned, stats.restarted), (2, 1), "{stats:?}");
    assert_ne!(only_pid(&pool), first_pid);
    assert!(
        eventually(Duration::from_secs(10), || !process_exists(first_pid)).await,
        "the killed server was never reaped"
    );
    pool.shutdown().await;
}

#[tokio::test]
async fn an_idle_connection_is_shut_down_and_its_process_exits() {
    let pool = pool_with(McpPoolConfig {
        idle_timeout: Duration::from_millis(400),
        ..McpPoolConfig::default()
    });
    let target = target(everything_over_stdio(&[]));
    echo(&pool, &target, "once").await.unwrap();
    let pid = only_pid(&pool);
    assert!(
        eventually(Duration::from_secs(5), || pool.stats().closed_idle == 1).await,
        "{:?}",
        pool.stats()
    );
    assert_eq!(pool.stats().open, 0);
    assert!(pool.connections().is_empty());
    assert!(
        eventually(Duration::from_secs(10), || !process_exists(pid)).await,
        "the idle server's process {pid} is still running"
    );
    echo(&pool, &target, "again").await.unwrap();
    assert_eq!(pool.stats().spawned, 2);
    pool.shutdown().await;
}

#[tokio::test]
async fn a_server_that_dies_mid_call_fails_the_call_promptly_as_retryable() {
    let dir = tempfile::tempdir().unwrap();
    let stdin_log = dir.path().join("stdin.log");
    let pool = pool();
    let target = target(everything_with_recorded_stdin(&stdin_log));
    let call = start_long_operation(&pool, &target, 30, CALL_TIMEOUT, CancellationToken::new());
    assert!(
        eventually(Duration::from_secs(20), || std::fs::read_to_string(
            &stdin_log
        )
        .unwrap_or_default()
        .contains("trigger-long-running-operation"))
        .await,
        "the call never reached the server"
    );
    // The whole group: the shell, `tee` and the server.
    kill(&format!("-{}", only_pid(&pool)));
    let killed_at = Instant::now();
    let error = call.await.unwrap().unwrap_err();
    assert!(
        killed_at.elapsed() < Duration::from_secs(2),
        "{:?}",
        killed_at.elapsed()
    );
    assert!(
        matches!(error, McpCallError::ConnectionLost { .. }),
        "{error:?}"
    );
    assert!(error.is_retryable());
    assert_eq!(echo(&pool, &target, "again").await.unwrap(), "Echo: again");
    assert_eq!(pool.stats().restarted, 1);
    pool.shutdown().await;
}

#[tokio::test]
async fn at_the_cap_the_least_recently_used_idle_connection_is_closed() {
    let pool = pool_with(McpPoolConfig {
        max_connections: 2,
        ..McpPoolConfig::default()
    });
    let first = target(everything_over_stdio(&[]));
    let second = target(everything_over_stdio(&[]));
    let third = target(everything_over_stdio(&[]));
    echo(&pool, &first, "1").await.unwrap();
    echo(&pool, &second, "2").await.unwrap();
    let first_pid = pool
        .connections()
        .into_iter()
        .find(|c| c.server == first.server)
        .and_then(|c| c.pid)
        .unwrap();
    echo(&pool, &third, "3").await.unwrap();
    let servers: Vec<McpServerId> = pool.connections().iter().map(|c| c.server).collect();
    assert_eq!(servers.len(), 2);
    assert!(
        !servers.contains(&first.server),
        "the least recently used one stays"
    );
    assert_eq!(pool.stats().evicted, 1);
    assert!(
        eventually(Duration::from_secs(10), || !process_exists(first_pid)).await,
        "the evicted server's process {first_pid} is still running"
    );
    pool.shutdown().await;
}

#[tokio::test]
async fn at_the_cap_a_connection_in_use_is_not_closed_under_its_caller() {
    let pool = pool_with(McpPoolConfig {
        max_connections: 1,
        ..McpPoolConfig::default()
    });
    let busy = target(everything_over_stdio(&[]));
    let other = target(everything_over_stdio(&[]));
    let long = start_long_operation(&pool, &busy, 2, CALL_TIMEOUT, CancellationToken::new());
    assert!(eventually(Duration::from_secs(5), || pool.stats().in_use == 1).await);
    let refused = echo(&pool, &other, "squeezed").await.unwrap_err();
    assert_eq!(refused, McpCallError::PoolExhausted { cap: 1 });
    assert!(refused.is_retryable());
    let finished = long.await.unwrap().unwrap();
    assert!(
        finished
            .text
            .starts_with("Long running operation completed"),
        "{}",
        finished.text
    );
    assert_eq!(echo(&pool, &other, "later").await.unwrap(), "Echo: later");
    assert_eq!(pool.stats().evicted, 1);
    pool.shutdown().await;
}

#[tokio::test]
async fn a_configuration_change_gets_a_fresh_connection() {
    let pool = pool();
    let before = target(everything_over_stdio(&[("MODE", "blue")]));
    let after = McpTarget {
        transport: ResolvedTransport::new(everything_over_stdio(&[("MODE", "green")])).unwrap(),
        ..before.clone()
    };
    echo(&pool, &before, "blue").await.unwrap();
    let old_pid = only_pid(&pool);
    echo(&pool, &after, "green").await.unwrap();
    let stats = pool.stats();
    assert_eq!((stats.spawned, stats.replaced), (2, 1), "{stats:?}");
    assert_ne!(only_pid(&pool), old_pid);
    assert!(eventually(Duration::from_secs(10), || !process_exists(old_pid)).await);
    pool.shutdown().await;
}

#[tokio::test]
async fn cancelling_a_long_call_over_stdio_returns_at_once_and_cancels_it_on_the_wire() {
    let dir = tempfile::tempdir().unwrap();
    let stdin_log = dir.path().join("stdin.log");
    let pool = pool();
    let target = target(everything_with_recorded_stdin(&stdin_log));
    let read_log = || std::fs::read_to_string(&stdin_log).unwrap_or_default();
    let cancel = CancellationToken::new();
    let call = start_long_operation(&pool, &target, 30, Duration::from_secs(120), cancel.clone());
    assert!(
        eventually(Duration::from_secs(20), || read_log()
            .contains("trigger-long-running-operation"))
        .await,
        "the call never reached the server"
    );
    let cancelled_at = Instant::now();
    cancel.cancel();
    let result = call.await.unwrap();
    assert!(
        cancelled_at.elapsed() < Duration::from_secs(1),
        "{:?}",
        cancelled_at.elapsed()
    );
    assert_eq!(result.unwrap_err(), McpCallError::Cancelled);
    assert!(
        eventually(Duration::from_secs(2), || read_log()
            .contains("notifications/cancelled"))
        .await
    );
    assert_cancelled_on_the_wire(&read_log(), "trigger-long-running-operation");
    assert_eq!(
        echo(&pool, &target, "still here").await.unwrap(),
        "Echo: still here"
    );
    assert_eq!(pool.stats().spawned, 1);
    pool.shutdown().await;
}

#[tokio::test]
async fn a_call_whose_caller_goes_away_is_cancelled_on_the_wire() {
    let dir = tempfile::tempdir().unwrap();
    let stdin_log = dir.path().join("stdin.log");
    let pool = pool();
    let target = target(everything_with_recorded_stdin(&stdin_log));
    let read_log = || std::fs::read_to_string(&stdin_log).unwrap_or_default();
    let call = start_long_operation(&pool, &target, 30, CALL_TIMEOUT, CancellationToken::new());
    assert!(
        eventually(Duration::from_secs(20), || read_log()
            .contains("trigger-long-running-operation"))
        .await,
        "the call never reached the server"
    );
    call.abort();
    assert!(call.await.unwrap_err().is_cancelled());
    assert!(
        eventually(Duration::from_secs(2), || read_log()
            .contains("notifications/cancelled"))
        .await,
        "no cancellation reached the server"
    );
    assert_cancelled_on_the_wire(&read_log(), "trigger-long-running-operation");
    pool.shutdown().await;
}

#[tokio::test]
async fn a_call_that_outlives_its_timeout_is_cancelled_and_reported_as_retryable() {
    let pool = pool();
    let target = target(everything_over_stdio(&[]));
    echo(&pool, &target, "warm up").await.unwrap();
    let started = Instant::now();
    let call = start_long_operation(
        &pool,
        &target,
        30,
        Duration::from_millis(300),
        CancellationToken::new(),
    );
    let error = call.await.unwrap().unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        error,
        McpCallError::Timeout {
            timeout: Duration::from_millis(300)
        }
    );
    assert!(error.is_retryable());
    assert_eq!(echo(&pool, &target, "next").await.unwrap(), "Echo: next");
    pool.shutdown().await;
}

#[tokio::test]
async fn a_server_that_floods_its_stderr_is_never_blocked_by_it() {
    // Far more than a pipe holds (64 KiB on Linux), in lines and in one line
    // without an end; an undrained stderr would stall the server before it
    // ever answered.
    let transport = Transport::Stdio {
        command: "sh".into(),
        args: vec![
            "-c".into(),
            r#"yes "noise on stderr" | head -n 50000 >&2; head -c 300000 /dev/zero | tr '\0' x >&2; exec node "$0" stdio"#
                .into(),
            server_everything().display().to_string(),
        ],
        env: BTreeMap::new(),
    };
    let pool = pool_with(McpPoolConfig {
        initialize_timeout: Duration::from_secs(20),
        ..McpPoolConfig::default()
    });
    assert_eq!(
        echo(&pool, &target(transport), "heard").await.unwrap(),
        "Echo: heard"
    );
    pool.shutdown().await;
}

#[tokio::test]
async fn a_command_that_does_not_exist_is_a_clear_error_that_is_not_retryable() {
    let pool = pool();
    let error = echo(
        &pool,
        &target(Transport::Stdio {
            command: "toolhub-no-such-mcp-server".into(),
            args: vec![],
            env: BTreeMap::new(),
        }),
        "anyone?",
    )
    .await
    .unwrap_err();
    assert_eq!(
        error,
        McpCallError::CommandNotFound {
            command: "toolhub-no-such-mcp-server".into()
        }
    );
    assert!(!error.is_retryable());
    assert!(error.to_string().contains("was not found"), "{error}");
    assert!(
        pool.connections().is_empty(),
        "a failed server holds no place"
    );
}

#[tokio::test]
async fn a_server_that_exits_at_once_is_reported_with_its_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let script = write_script(
        dir.path(),
        "exits.sh",
        "echo 'fatal: no configuration given' >&2\nexit 3\n",
    );
    let pool = pool_with(McpPoolConfig {
        initialize_timeout: Duration::from_secs(20),
        ..McpPoolConfig::default()
    });
    let started = Instant::now();
    let error = echo(
        &pool,
        &target(Transport::Stdio {
            command: "sh".into(),
            args: vec![script],
            env: BTreeMap::new(),
        }),
        "hello",
    )
    .await
    .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    match &error {
        McpCallError::ExitedDuringInitialize {
            detail: Some(detail),
        } => {
            assert!(detail.contains("fatal: no configuration given"), "{detail}")
        }
        other => panic!("unexpected error: {other:?}"),
    }
    assert!(!error.is_retryable());
}

#[tokio::test]
async fn a_server_that_prints_garbage_is_reported_within_the_initialize_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let script = write_script(
        dir.path(),
        "garbage.js",
        "console.log('hello, this is not JSON-RPC');\nconsole.log('{\"neither\": \"is this\"');\nsetInterval(() => {}, 1000);\n",
    );
    let timeout = Duration::from_millis(1_500);
    let pool = pool_with(McpPoolConfig {
        initialize_timeout: timeout,
        ..McpPoolConfig::default()
    });
    let started = Instant::now();
    let error = echo(
        &pool,
        &target(Transport::Stdio {
            command: "node".into(),
            args: vec![script],
            env: BTreeMap::new(),
        }),
        "hello",
    )
    .await
    .unwrap_err();
    let elapsed = started.elapsed();
    assert!(
        elapsed >= timeout && elapsed < timeout + Duration::from_secs(3),
        "{elapsed:?}"
    );
    assert!(
        matches!(error, McpCallError::InitializeTimeout { timeout: t, .. } if t == timeout),
        "{error:?}"
    );
    assert!(error
        .to_string()
        .contains("did not complete initialization within 1.5 s"));
}

#[tokio::test]
async fn no_environment_value_appears_in_an_error_even_when_the_server_prints_it() {
    let dir = tempfile::tempdir().unwrap();
    let script = write_script(
        dir.path(),
        "leaks.sh",
        "echo \"cannot log in with token $API_TOKEN\" >&2\nexit 1\n",
    );
    let pool = pool();
    let error = echo(
        &pool,
        &target(Transport::Stdio {
            command: "sh".into(),
            args: vec![script],
            env: BTreeMap::from([("API_TOKEN".into(), "tok-very-secret-4711".into())]),
        }),
        "hello",
    )
    .await
    .unwrap_err();
    let message = error.to_string();
    assert!(!message.contains("tok-very-secret-4711"), "{message}");
    assert!(
        message.contains("cannot log in with token [redacted]"),
        "{message}"
    );
}

#[tokio::test]
async fn calling_a_tool_that_does_not_exist_over_stdio_is_a_tool_error_that_is_not_retryable() {
    let pool = pool();
    let error = call(
        &pool,
        &target(everything_over_stdio(&[])),
        "no-such-tool",
        json!({}),
    )
    .await
    .unwrap_err();
    match &error {
        McpCallError::ToolFailed { text, .. } => assert!(text.contains("no-such-tool"), "{text}"),
        other => panic!("unexpected error: {other:?}"),
    }
    assert!(!error.is_retryable());
    pool.shutdown().await;
}

#[tokio::test]
async fn ping_over_stdio_measures_a_round_trip() {
    let pool = pool();
    let latency = pool
        .ping(&target(everything_over_stdio(&[])), CALL_TIMEOUT)
        .await
        .unwrap();
    assert!(latency < Duration::from_secs(5), "{latency:?}");
    pool.shutdown().await;
}

// ---------------------------------------------------------------------------
// Over Streamable HTTP
// ---------------------------------------------------------------------------

#[tokio::test]
async fn listing_tools_over_streamable_http_shows_the_reference_tools() {
    let server = HttpServer::start().await;
    let pool = pool();
    let tools = pool
        .list_tools(&target(http_transport(&server)), CALL_TIMEOUT)
        .await
        .unwrap();
    let names: Vec<&str> = tools.iter().map(|tool| tool.info.name.as_str()).collect();
    for expected in [
        "echo",
        "get-sum",
        "get-env",
        "trigger-long-running-operation",
    ] {
        assert!(
            names.contains(&expected),
            "{expected} missing from {names:?}"
        );
    }
    pool.shutdown().await;
}

#[tokio::test]
async fn echo_sum_and_structured_content_over_streamable_http_share_one_session() {
    let server = HttpServer::start().await;
    let pool = pool();
    let target = target(http_transport(&server));
    assert_eq!(
        echo(&pool, &target, "over http").await.unwrap(),
        "Echo: over http"
    );
    let sum = call(&pool, &target, "get-sum", json!({ "a": 2, "b": 3 }))
        .await
        .unwrap();
    assert_eq!(sum.text, "The sum of 2 and 3 is 5.");
    let weather = call(
        &pool,
        &target,
        "get-structured-content",
        json!({ "location": "Chicago" }),
    )
    .await
    .unwrap();
    assert_eq!(weather.to_json()["structured"]["temperature"], 36);
    let stats = pool.stats();
    assert_eq!((stats.connected, stats.spawned), (1, 0), "{stats:?}");
    pool.shutdown().await;
}

#[tokio::test]
async fn streamable_http_requests_use_the_callers_client_and_the_configured_headers() {
    let server = HttpServer::start().await;
    let tap = TapProxy::start(server.port).await;
    let mut defaults = reqwest::header::HeaderMap::new();
    defaults.insert("x-egress-checked", "yes".parse().unwrap());
    let client = reqwest::Client::builder()
        .default_headers(defaults)
        .build()
        .unwrap();
    let pool = McpPool::new(McpPoolConfig::default(), client);
    let target = target(Transport::StreamableHttp {
        url: tap.url(),
        headers: BTreeMap::from([("X-Api-Key".into(), "key-from-secret".into())]),
    });
    assert_eq!(
        echo(&pool, &target, "through").await.unwrap(),
        "Echo: through"
    );
    let traffic = tap.traffic().to_ascii_lowercase();
    assert!(traffic.contains("x-egress-checked: yes"), "{traffic}");
    assert!(traffic.contains("x-api-key: key-from-secret"), "{traffic}");
    pool.shutdown().await;
}

#[tokio::test]
async fn cancelling_a_long_call_over_streamable_http_returns_at_once_and_cancels_it_on_the_wire() {
    let server = HttpServer::start().await;
    let tap = TapProxy::start(server.port).await;
    let pool = pool();
    let target = target(Transport::StreamableHttp {
        url: tap.url(),
        headers: BTreeMap::new(),
    });
    let cancel = CancellationToken::new();
    let call = start_long_operation(&pool, &target, 30, Duration::from_secs(120), cancel.clone());
    assert!(
        eventually(Duration::from_secs(20), || tap
            .traffic()
            .contains("trigger-long-running-operation"))
        .await,
        "the call never reached the server"
    );
    let cancelled_at = Instant::now();
    cancel.cancel();
    let result = call.await.unwrap();
    assert!(
        cancelled_at.elapsed() < Duration::from_secs(1),
        "{:?}",
        cancelled_at.elapsed()
    );
    assert_eq!(result.unwrap_err(), McpCallError::Cancelled);
    assert!(
        eventually(Duration::from_secs(2), || tap
            .traffic()
            .contains("notifications/cancelled"))
        .await
    );
    assert_cancelled_on_the_wire(&tap.traffic(), "trigger-long-running-operation");
    assert_eq!(
        echo(&pool, &target, "still here").await.unwrap(),
        "Echo: still here"
    );
    assert_eq!(pool.stats().connected, 1);
    pool.shutdown().await;
}

#[tokio::test]
async fn calling_a_tool_that_does_not_exist_over_streamable_http_is_a_tool_error() {
    let server = HttpServer::start().await;
    let pool = pool();
    let error = call(
        &pool,
        &target(http_transport(&server)),
        "no-such-tool",
        json!({}),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&error, McpCallError::ToolFailed { text, .. } if text.contains("no-such-tool"))
    );
    assert!(!error.is_retryable());
    pool.shutdown().await;
}

#[tokio::test]
async fn ping_over_streamable_http_measures_a_round_trip() {
    let server = HttpServer::start().await;
    let pool = pool();
    let latency = pool
        .ping(&target(http_transport(&server)), CALL_TIMEOUT)
        .await
        .unwrap();
    assert!(latency < Duration::from_secs(5), "{latency:?}");
    pool.shutdown().await;
}

#[tokio::test]
async fn an_unreachable_http_server_is_retryable_and_its_secrets_stay_out_of_the_message() {
    let pool = pool();
    let error = echo(
        &pool,
        &target(Transport::StreamableHttp {
            url: format!(
                "http://127.0.0.1:{}/mcp?key=query-secret-value",
                free_port()
            ),
            headers: BTreeMap::from([(
                "Authorization".into(),
                "Bearer header-secret-value".into(),
            )]),
        }),
        "anyone?",
    )
    .await
    .unwrap_err();
    assert!(
        matches!(error, McpCallError::Unreachable { .. }),
        "{error:?}"
    );
    assert!(error.is_retryable());
    let message = error.to_string();
    assert!(
        message.starts_with("the MCP server could not be reached"),
        "{message}"
    );
    assert!(!message.contains("query-secret-value"), "{message}");
    assert!(!message.contains("header-secret-value"), "{message}");
}

#[tokio::test]
async fn a_header_the_transport_sets_itself_is_refused_as_configuration() {
    let pool = pool();
    let error = echo(
        &pool,
        &target(Transport::StreamableHttp {
            url: format!("http://127.0.0.1:{}/mcp", free_port()),
            headers: BTreeMap::from([("Mcp-Session-Id".into(), "forged".into())]),
        }),
        "hello",
    )
    .await
    .unwrap_err();
    assert!(
        matches!(error, McpCallError::InvalidConfig { .. }),
        "{error:?}"
    );
    assert!(!error.is_retryable());
}
