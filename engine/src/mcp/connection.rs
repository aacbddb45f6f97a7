//! One live, initialized MCP session: a child process spoken to over stdio,
//! or a Streamable HTTP session, and the requests the engine sends on it.
//!
//! A connection knows nothing of pooling; it tells the pool whether a failed
//! request certainly never reached the server ([`RequestFailure::NotSent`]),
//! which is what makes a transparent reconnect safe.

use super::ended::EndWatch;
use super::error::{describe, McpCallError};
use super::output::{McpTool, ToolOutput};
use super::redact::Redactor;
use super::stderr::StderrTail;
use super::transport::ResolvedTransport;
use process_wrap::tokio::{CommandWrap, KillOnDrop, ProcessGroup};
use rmcp::model::{
    CallToolRequest, CallToolRequestParams, CancelledNotificationParam, ClientCapabilities,
    ClientConfig, ClientRequest, ErrorCode, Implementation, ListToolsRequest,
    PaginatedRequestParams, PingRequest, ProtocolVersion, RequestId, ServerResult,
};
use rmcp::service::{
    ClientInitializeError, Peer, PeerRequestOptions, RoleClient, RunningService, ServiceError,
};
use rmcp::transport::streamable_http_client::{
    HttpStatusError, StreamableHttpClientTransportConfig, StreamableHttpError,
};
use rmcp::transport::{DynamicTransportError, StreamableHttpClientTransport, TokioChildProcess};
use rmcp::ServiceExt;
use serde_json::{Map, Value};
use std::collections::{HashMap, HashSet};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use toolhub_domain::mcp_server::Transport;

/// The only variables a stdio server inherits from Toolhub's environment: what
/// a program needs to find executables, a home directory and a locale. The
/// rest of the environment holds Toolhub's own secrets (`TOOLHUB_MASTER_KEY`,
/// `DATABASE_URL`) and must never reach a third-party process.
pub(crate) const INHERITED_ENV: [&str; 3] = ["PATH", "HOME", "LANG"];

/// How long a stopped server's stderr may take to deliver its last lines
/// before a start-up error is reported without them.
const STDERR_SETTLE: Duration = Duration::from_millis(300);

/// How long a call waits for its `notifications/cancelled` to be written
/// before returning; the send goes on in the background if it takes longer.
const CANCEL_SEND_WAIT: Duration = Duration::from_millis(300);

/// How long a graceful close may take (stdin closed, then SIGTERM, then
/// SIGKILL for stdio; a session DELETE for HTTP) before it is abandoned.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(8);

/// At most this many `tools/list` pages are read, so that a server that keeps
/// handing out cursors cannot keep a discovery running forever.
const MAX_TOOL_PAGES: usize = 100;

/// Headers the Streamable HTTP transport sets itself; a configuration that
/// sets them would break the session.
const RESERVED_HEADERS: [&str; 4] = [
    "accept",
    "mcp-session-id",
    "mcp-protocol-version",
    "last-event-id",
];

/// An initialized rmcp client session; the handler is just the client's
/// description, since the engine answers no server requests.
type ClientService = RunningService<RoleClient, ClientConfig>;

/// Why a request on an open connection failed.
#[derive(Debug)]
pub(crate) enum RequestFailure {
    /// The request certainly never reached the server (the connection was
    /// already gone, or writing it failed): sending it again on a fresh
    /// connection cannot run anything twice.
    NotSent(String),
    /// The connection ended while waiting for the answer.
    Lost(String),
    /// Any other failure, final for this attempt.
    Failed(McpCallError),
}

impl RequestFailure {
    /// The error the caller sees when the pool does not try again.
    pub(crate) fn into_error(self) -> McpCallError {
        match self {
            Self::NotSent(detail) | Self::Lost(detail) => McpCallError::ConnectionLost { detail },
            Self::Failed(error) => error,
        }
    }
}

/// An initialized session with one server.
pub(crate) struct Connection {
    /// Sends requests; cloned freely, it stays valid until the session ends.
    peer: Peer<RoleClient>,
    /// The running session; taken out to close it.
    service: parking_lot::Mutex<Option<ClientService>>,
    /// The child's process id, for stdio servers.
    pid: Option<u32>,
    /// Scrubs configuration values out of foreign text.
    redactor: Arc<Redactor>,
    /// Cancelled the moment the session ends (see [`EndWatch`]).
    ended: CancellationToken,
    /// The stdio server's latest stderr lines, to explain a crash.
    stderr: Option<Arc<StderrTail>>,
    /// True when the negotiated protocol still has `ping` (it was removed in
    /// 2026-07-28).
    has_ping: bool,
}

impl Connection {
    /// Connects and completes `initialize` within `initialize_timeout`.
    pub(crate) async fn open(
        transport: &ResolvedTransport,
        http: &reqwest::Client,
        initialize_timeout: Duration,
        label: &str,
    ) -> Result<Self, McpCallError> {
        let redactor = Arc::new(Redactor::for_transport(transport.transport()));
        match transport.transport() {
            Transport::Stdio { command, args, env } => {
                Self::open_stdio(command, args, env, initialize_timeout, label, redactor).await
            }
            Transport::StreamableHttp { url, headers } => {
                Self::open_http(url, headers, http, initialize_timeout, redactor).await
            }
        }
    }

    /// Spawns the command with a minimal environment and initializes.
    async fn open_stdio(
        command: &str,
        args: &[String],
        env: &std::collections::BTreeMap<String, String>,
        initialize_timeout: Duration,
        label: &str,
        redactor: Arc<Redactor>,
    ) -> Result<Self, McpCallError> {
        let mut process = tokio::process::Command::new(command);
        process.args(args).env_clear();
        for key in INHERITED_ENV {
            if let Some(value) = std::env::var_os(key) {
                process.env(key, value);
            }
        }
        process.envs(env);
        let mut wrapped = CommandWrap::from(process);
        // Its own process group, so that closing the server also stops what it
        // started (`npx` runs the real server as a grandchild); kill-on-drop, so
        // that no child outlives a connection dropped during a shutdown.
        wrapped.wrap(ProcessGroup::leader()).wrap(KillOnDrop);
        let (child, stderr) = TokioChildProcess::builder(wrapped)
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|error| spawn_error(command, &error))?;
        let pid = child.id();
        let tail =
            stderr.map(|stderr| StderrTail::drain(stderr, label.to_string(), redactor.clone()));
        let ended = CancellationToken::new();
        let transport = EndWatch::new(child, ended.clone());
        let started =
            tokio::time::timeout(initialize_timeout, client_config().serve(transport)).await;
        let service = match started {
            Ok(Ok(service)) => service,
            Ok(Err(error)) => {
                let detail = match &tail {
                    Some(tail) => {
                        tail.settle(STDERR_SETTLE).await;
                        tail.summary()
                    }
                    None => None,
                };
                return Err(stdio_initialize_error(error, detail, &redactor));
            }
            Err(_) => {
                return Err(McpCallError::InitializeTimeout {
                    timeout: initialize_timeout,
                    detail: tail.and_then(|tail| tail.summary()),
                })
            }
        };
        Ok(Self::from_service(service, pid, redactor, ended, tail))
    }

    /// Opens a Streamable HTTP session with the caller's client and headers.
    async fn open_http(
        url: &str,
        headers: &std::collections::BTreeMap<String, String>,
        http: &reqwest::Client,
        initialize_timeout: Duration,
        redactor: Arc<Redactor>,
    ) -> Result<Self, McpCallError> {
        let mut custom = HashMap::new();
        for (name, value) in headers {
            let header =
                reqwest::header::HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                    McpCallError::InvalidConfig {
                        reason: format!("`{name}` is not a valid HTTP header name"),
                    }
                })?;
            if RESERVED_HEADERS.contains(&header.as_str()) {
                return Err(McpCallError::InvalidConfig {
                    reason: format!("the header `{name}` is set by the MCP transport itself"),
                });
            }
            let mut value = reqwest::header::HeaderValue::from_str(value).map_err(|_| {
                McpCallError::InvalidConfig {
                    reason: format!("the value of header `{name}` is not a valid header value"),
                }
            })?;
            // Sensitive values are left out of the HTTP stack's own debug output.
            value.set_sensitive(true);
            custom.insert(header, value);
        }
        let config = StreamableHttpClientTransportConfig::with_uri(url).custom_headers(custom);
        let ended = CancellationToken::new();
        let transport = EndWatch::new(
            StreamableHttpClientTransport::with_client(http.clone(), config),
            ended.clone(),
        );
        let started =
            tokio::time::timeout(initialize_timeout, client_config().serve(transport)).await;
        let service = match started {
            Ok(Ok(service)) => service,
            Ok(Err(error)) => return Err(http_initialize_error(error, &redactor)),
            Err(_) => {
                return Err(McpCallError::InitializeTimeout {
                    timeout: initialize_timeout,
                    detail: None,
                })
            }
        };
        Ok(Self::from_service(service, None, redactor, ended, None))
    }

    /// Wraps a session that has completed `initialize`.
    fn from_service(
        service: ClientService,
        pid: Option<u32>,
        redactor: Arc<Redactor>,
        ended: CancellationToken,
        stderr: Option<Arc<StderrTail>>,
    ) -> Self {
        let peer = service.peer().clone();
        let has_ping = peer
            .peer_info()
            .is_none_or(|info| info.protocol_version.has_initialize());
        Self {
            peer,
            service: parking_lot::Mutex::new(Some(service)),
            pid,
            redactor,
            ended,
            stderr,
            has_ping,
        }
    }

    /// The child's process id, for stdio servers.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// False once the session has ended: the process exited, the HTTP
    /// session failed, or the connection was closed.
    pub(crate) fn is_alive(&self) -> bool {
        !self.ended.is_cancelled()
            && !self.peer.is_transport_closed()
            && self
                .service
                .lock()
                .as_ref()
                .is_some_and(|service| !service.is_closed())
    }

    /// Ends the session gracefully and waits, within a bound, for the server
    /// to go away. A second close does nothing.
    pub(crate) async fn close(&self) {
        let service = self.service.lock().take();
        if let Some(mut service) = service {
            let _ = service.close_with_timeout(CLOSE_TIMEOUT).await;
        }
    }

    /// Every tool the server advertises, across all pages.
    pub(crate) async fn list_tools(
        &self,
        timeout: Duration,
    ) -> Result<Vec<McpTool>, RequestFailure> {
        let deadline = Instant::now() + timeout;
        let mut tools = Vec::new();
        let mut cursor: Option<String> = None;
        let mut seen_cursors = HashSet::new();
        for _ in 0..MAX_TOOL_PAGES {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let page = match self
                .request(list_tools_request(cursor.clone()), remaining, None)
                .await?
            {
                ServerResult::ListToolsResult(page) => page,
                other => return Err(self.unexpected("tools/list", &other)),
            };
            tools.extend(page.tools.into_iter().map(McpTool::from_tool));
            match page.next_cursor {
                // A cursor seen before would loop forever.
                Some(next) if seen_cursors.insert(next.clone()) => cursor = Some(next),
                Some(_) => {
                    return Err(RequestFailure::Failed(McpCallError::Protocol {
                        detail: "tools/list returned a cursor it had returned before".into(),
                    }))
                }
                None => return Ok(tools),
            }
        }
        Err(RequestFailure::Failed(McpCallError::Protocol {
            detail: format!("tools/list returned more than {MAX_TOOL_PAGES} pages"),
        }))
    }

    /// Calls a tool; a result marked `isError` becomes [`McpCallError::ToolFailed`].
    pub(crate) async fn call_tool(
        &self,
        name: &str,
        arguments: Map<String, Value>,
        timeout: Duration,
        cancel: &CancellationToken,
    ) -> Result<ToolOutput, RequestFailure> {
        let params = CallToolRequestParams::new(name.to_string()).with_arguments(arguments);
        let request = ClientRequest::CallToolRequest(CallToolRequest::new(params));
        match self.request(request, timeout, Some(cancel)).await? {
            ServerResult::CallToolResult(result) => {
                let (output, is_error) = ToolOutput::from_result(result);
                if is_error {
                    Err(RequestFailure::Failed(McpCallError::ToolFailed {
                        text: output.text.clone(),
                        output: Box::new(output),
                    }))
                } else {
                    Ok(output)
                }
            }
            other => Err(self.unexpected("tools/call", &other)),
        }
    }

    /// Measures a round trip: `ping`, or the first page of `tools/list` when
    /// the server's protocol has no ping or the server refuses it.
    pub(crate) async fn ping(&self, timeout: Duration) -> Result<Duration, RequestFailure> {
        let started = Instant::now();
        if self.has_ping {
            let ping = ClientRequest::PingRequest(PingRequest::default());
            match self.request(ping, timeout, None).await {
                Ok(_) => return Ok(started.elapsed()),
                Err(RequestFailure::Failed(McpCallError::Rejected { code, .. }))
                    if code == ErrorCode::METHOD_NOT_FOUND.0 => {}
                Err(failure) => return Err(failure),
            }
        }
        // The latency reported is the fallback's own round trip; the timeout
        // covers both attempts.
        let remaining = timeout.saturating_sub(started.elapsed());
        let fallback_started = Instant::now();
        match self
            .request(list_tools_request(None), remaining, None)
            .await?
        {
            ServerResult::ListToolsResult(_) => Ok(fallback_started.elapsed()),
            other => Err(self.unexpected("tools/list", &other)),
        }
    }

    /// Sends one request and waits for its answer, the timeout or the
    /// cancellation, whichever comes first. On timeout or cancellation the
    /// request is cancelled on the wire with `notifications/cancelled`.
    async fn request(
        &self,
        request: ClientRequest,
        timeout: Duration,
        cancel: Option<&CancellationToken>,
    ) -> Result<ServerResult, RequestFailure> {
        if cancel.is_some_and(CancellationToken::is_cancelled) {
            return Err(RequestFailure::Failed(McpCallError::Cancelled));
        }
        let handle = self
            .peer
            .send_cancellable_request(request, PeerRequestOptions::no_options())
            .await
            .map_err(|error| RequestFailure::NotSent(self.redactor.redact(&describe(&error))))?;
        let mut abandoned = AbandonGuard {
            peer: self.peer.clone(),
            id: Some(handle.id.clone()),
        };
        let response = handle.await_response();
        let cancelled = async {
            match cancel {
                Some(cancel) => cancel.cancelled().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            // An answer that is already in wins over an end seen at the same time.
            biased;
            answer = response => {
                abandoned.disarm();
                answer.map_err(|error| self.classify(error))
            }
            () = self.ended.cancelled() => {
                abandoned.disarm();
                Err(RequestFailure::Lost(self.end_detail().await))
            }
            () = tokio::time::sleep(timeout) => {
                if let Some(id) = abandoned.disarm() {
                    self.cancel_on_wire(id, "timed out").await;
                }
                Err(RequestFailure::Failed(McpCallError::Timeout { timeout }))
            }
            () = cancelled => {
                if let Some(id) = abandoned.disarm() {
                    self.cancel_on_wire(id, "cancelled by the caller").await;
                }
                Err(RequestFailure::Failed(McpCallError::Cancelled))
            }
        }
    }

    /// Why the session ended, as far as can be told: the end of a stdio
    /// server's stderr, which usually holds the crash.
    async fn end_detail(&self) -> String {
        let mut detail = "the server closed the connection".to_string();
        if let Some(tail) = &self.stderr {
            tail.settle(STDERR_SETTLE).await;
            if let Some(summary) = tail.summary() {
                detail.push_str("; its stderr ended with: ");
                detail.push_str(&summary);
            }
        }
        detail
    }

    /// Sends `notifications/cancelled` for `id`, waiting at most
    /// [`CANCEL_SEND_WAIT`] so that the caller is answered promptly.
    async fn cancel_on_wire(&self, id: RequestId, reason: &str) {
        let peer = self.peer.clone();
        let params = CancelledNotificationParam::new(Some(id), Some(reason.to_string()));
        let send = tokio::spawn(async move { peer.notify_cancelled(params).await });
        let _ = tokio::time::timeout(CANCEL_SEND_WAIT, send).await;
    }

    /// Sorts an rmcp failure by what it says about delivery.
    fn classify(&self, error: ServiceError) -> RequestFailure {
        match error {
            ServiceError::McpError(data) => RequestFailure::Failed(McpCallError::Rejected {
                code: data.code.0,
                message: self.redactor.redact(&data.message),
            }),
            ServiceError::TransportSend(error) => {
                let detail = self.redactor.redact(&transport_detail(&error));
                if never_delivered(error.error.as_ref()) {
                    RequestFailure::NotSent(detail)
                } else {
                    RequestFailure::Lost(detail)
                }
            }
            ServiceError::TransportClosed => {
                RequestFailure::Lost("the connection closed before the answer arrived".into())
            }
            ServiceError::Timeout { timeout } => {
                RequestFailure::Failed(McpCallError::Timeout { timeout })
            }
            other => RequestFailure::Failed(McpCallError::Protocol {
                detail: self.redactor.redact(&describe(&other)),
            }),
        }
    }

    /// A protocol error naming the fields of an answer of the wrong kind (not
    /// their values, which may hold anything).
    fn unexpected(&self, method: &str, answer: &ServerResult) -> RequestFailure {
        let kind = match serde_json::to_value(answer) {
            Ok(Value::Object(object)) => {
                let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
                keys.sort_unstable();
                format!("a result with fields {}", keys.join(", "))
            }
            _ => "a result of another kind".to_string(),
        };
        RequestFailure::Failed(McpCallError::Protocol {
            detail: format!("{method} was answered with {kind}"),
        })
    }
}

/// Cancels a request on the wire when its caller goes away without an answer:
/// a dropped call future (an aborted task, a caller's own `select!`) must stop
/// the tool just as a cancellation does.
struct AbandonGuard {
    /// Where to send `notifications/cancelled`.
    peer: Peer<RoleClient>,
    /// The request still waiting for its answer; `None` once settled.
    id: Option<RequestId>,
}

impl AbandonGuard {
    /// Settles the request, handing back its id if it was still pending.
    fn disarm(&mut self) -> Option<RequestId> {
        self.id.take()
    }
}

impl Drop for AbandonGuard {
    fn drop(&mut self) {
        let Some(id) = self.id.take() else {
            return;
        };
        // Outside a runtime (a process shutting down) the session is going
        // away with it, and there is nothing left to cancel.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let peer = self.peer.clone();
        let params =
            CancelledNotificationParam::new(Some(id), Some("abandoned by the caller".into()));
        runtime.spawn(async move {
            let _ = peer.notify_cancelled(params).await;
        });
    }
}

/// What the pool tells servers about itself.
fn client_config() -> ClientConfig {
    ClientConfig::new(
        ClientCapabilities::default(),
        Implementation::new("toolhub", env!("CARGO_PKG_VERSION")),
    )
    // The initialize handshake is the lifecycle used here; naming a protocol
    // that has no handshake in it would be contradictory.
    .with_protocol_version(ProtocolVersion::LATEST_WITH_INITIALIZE)
}

/// A `tools/list` request for the page at `cursor`.
fn list_tools_request(cursor: Option<String>) -> ClientRequest {
    ClientRequest::ListToolsRequest(ListToolsRequest {
        method: Default::default(),
        params: Some(PaginatedRequestParams::default().with_cursor(cursor)),
        extensions: Default::default(),
    })
}

/// A missing program is named as such; anything else keeps the OS's reason.
fn spawn_error(command: &str, error: &std::io::Error) -> McpCallError {
    if error.kind() == std::io::ErrorKind::NotFound {
        McpCallError::CommandNotFound {
            command: command.to_string(),
        }
    } else {
        McpCallError::SpawnFailed {
            command: command.to_string(),
            reason: error.to_string(),
        }
    }
}

/// Why a stdio server failed to initialize.
fn stdio_initialize_error(
    error: ClientInitializeError,
    stderr: Option<String>,
    redactor: &Redactor,
) -> McpCallError {
    match error {
        // The process went away: it closed stdout, or writing to its stdin failed.
        ClientInitializeError::ConnectionClosed(_)
        | ClientInitializeError::TransportError { .. } => {
            McpCallError::ExitedDuringInitialize { detail: stderr }
        }
        ClientInitializeError::JsonRpcError(data) => McpCallError::InitializeFailed {
            detail: redactor.redact(&format!("JSON-RPC error {}: {}", data.code.0, data.message)),
        },
        other => McpCallError::InitializeFailed {
            detail: redactor.redact(&describe(&other)),
        },
    }
}

/// Why a Streamable HTTP server failed to initialize.
fn http_initialize_error(error: ClientInitializeError, redactor: &Redactor) -> McpCallError {
    match &error {
        ClientInitializeError::TransportError { error: inner, .. } => {
            let detail = redactor.redact(&transport_detail(inner));
            match http_failure(inner.error.as_ref()) {
                HttpFailure::Unreachable => McpCallError::Unreachable { detail },
                HttpFailure::Refused => McpCallError::InitializeFailed { detail },
            }
        }
        ClientInitializeError::ConnectionClosed(_) => McpCallError::Unreachable {
            detail: "the connection closed during initialization".into(),
        },
        ClientInitializeError::JsonRpcError(data) => McpCallError::InitializeFailed {
            detail: redactor.redact(&format!("JSON-RPC error {}: {}", data.code.0, data.message)),
        },
        other => McpCallError::InitializeFailed {
            detail: redactor.redact(&describe(other)),
        },
    }
}

/// Whether an HTTP failure may go away by itself.
enum HttpFailure {
    /// Connection refused, timed out, or a 429 or 5xx status.
    Unreachable,
    /// Any other answer (401, 403, 404, a malformed response): trying again
    /// will meet the same answer.
    Refused,
}

/// Sorts an HTTP failure into "may pass" and "will not".
fn http_failure(error: &(dyn std::error::Error + 'static)) -> HttpFailure {
    if let Some(error) = reqwest_error_in(error) {
        if error.is_connect() || error.is_timeout() || error.is_request() || error.is_body() {
            return HttpFailure::Unreachable;
        }
        if let Some(status) = error.status() {
            return status_failure(status.as_u16());
        }
    }
    let mut current = Some(error);
    while let Some(error) = current {
        if let Some(status) = error.downcast_ref::<HttpStatusError>() {
            return status_failure(status.status);
        }
        if let Some(error) = error.downcast_ref::<StreamableHttpError<reqwest::Error>>() {
            match error {
                StreamableHttpError::HttpStatus(status) => return status_failure(status.status),
                StreamableHttpError::AuthRequired(_)
                | StreamableHttpError::InsufficientScope(_) => return HttpFailure::Refused,
                StreamableHttpError::Io(_) | StreamableHttpError::UnexpectedEndOfStream => {
                    return HttpFailure::Unreachable
                }
                _ => {}
            }
        }
        current = error.source();
    }
    HttpFailure::Refused
}

/// 429 and 5xx say "later"; other statuses are answers.
fn status_failure(status: u16) -> HttpFailure {
    if status == 429 || status >= 500 {
        HttpFailure::Unreachable
    } else {
        HttpFailure::Refused
    }
}

/// True when a send failure proves the request never reached the server: a
/// stdio pipe whose reader is gone, or an HTTP connection that was never made.
fn never_delivered(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(error) = current {
        if let Some(error) = error.downcast_ref::<std::io::Error>() {
            return matches!(
                error.kind(),
                std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::NotConnected
                    | std::io::ErrorKind::ConnectionRefused
            );
        }
        current = error.source();
    }
    reqwest_error_in(error).is_some_and(reqwest::Error::is_connect)
}

/// The reqwest error behind a failure, if any. rmcp wraps it in a variant that
/// does not expose it as a source, so the chain alone does not reach it.
fn reqwest_error_in<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> Option<&'a reqwest::Error> {
    let mut current = Some(error);
    while let Some(error) = current {
        if let Some(error) = error.downcast_ref::<reqwest::Error>() {
            return Some(error);
        }
        if let Some(StreamableHttpError::Client(error)) =
            error.downcast_ref::<StreamableHttpError<reqwest::Error>>()
        {
            return Some(error);
        }
        current = error.source();
    }
    None
}

/// The most telling description of a transport failure: the reqwest error's
/// own chain when there is one (rmcp's wrappers around it add only type
/// names), else the chain below rmcp's transport wrapper.
fn transport_detail(error: &DynamicTransportError) -> String {
    let inner: &(dyn std::error::Error + 'static) = error.error.as_ref();
    match reqwest_error_in(inner) {
        Some(error) => describe(error),
        None => describe(inner),
    }
}
