//! Toolhub's own MCP server: `/mcp` serves a tenant's workflows as tools.
//!
//! A workflow with an `mcp_tool` trigger is listed by `tools/list` under the
//! trigger's name, with its description and input schema, to callers of its
//! tenant (archived workflows are not listed). `tools/call` checks the
//! arguments against the schema, starts an execution the way
//! `startExecution` does (`trigger: "mcp"`, the arguments as its input),
//! waits for it to end, and answers with its output: as JSON text and as
//! `structuredContent`. A failed or cancelled execution answers `isError`
//! with its error. While it runs, a client that sent a `progressToken` gets
//! a progress notification each time another node finishes; a client that
//! cancels the request (`notifications/cancelled`) stops the execution.
//!
//! The transport is rmcp's Streamable HTTP server with sessions
//! (`Mcp-Session-Id`, kept in this process). Every HTTP request carries its
//! own bearer token, checked before rmcp sees the request (no token, or an
//! expired or invalid one, is HTTP 401); a session belongs to the caller
//! that opened it (another caller naming it gets 404, as for a session
//! that does not exist); and every operation is checked
//! against that request's caller: listing needs `viewer`, calling `editor`
//! (what `startExecution` needs), and each counts against the caller's and
//! the address's rate of queries (listing) or mutations (calling).
//!
//! Tools are found through the write side: the unique-name claims, which
//! the command bus writes in the same transaction as the triggers (so a
//! tool is callable as soon as `setWorkflowTriggers` answers), and the
//! workflow aggregates. Executions are followed through the read models,
//! woken each time the projectors move.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, ErrorCode,
    Implementation, ListToolsResult, PaginatedRequestParams, ProgressNotificationParam,
    ProgressToken, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData, RoleServer, ServerHandler};
use serde_json::{json, Map, Value};
use tokio_util::sync::CancellationToken;
use toolhub_domain::definition::WorkflowDefinition;
use toolhub_domain::workflow::{compile_tool_schema, Trigger, Workflow, MAX_TOOL_NAME_LEN};
use toolhub_domain::{AggregateRoot, ExecutionId, Role, TenantId, WorkflowId};
use toolhub_engine::StartRequest;
use toolhub_eventstore::work::{name_holder, names_in};
use toolhub_eventstore::CommandContext;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::server::REQUEST_ID;
use crate::state::AppState;
use crate::throttle::Kind;

/// The aggregate type whose unique names are tool names.
const WORKFLOW: &str = "workflow";

/// The most tools one `tools/list` page holds.
const PAGE: u32 = 100;

/// The most schema violations named in one answer.
const MAX_PROBLEMS: usize = 5;

/// The longest description of one violation, in characters (it may quote
/// the offending value).
const MAX_PROBLEM_LEN: usize = 300;

/// How often a waiting call looks at its execution when no projector
/// announcement woke it (the announcements are the fast path).
const POLL: Duration = Duration::from_millis(500);

/// The JSON-RPC error code of a request refused for its caller's role.
const FORBIDDEN: ErrorCode = ErrorCode(-32003);

/// The JSON-RPC error code of a request over a rate limit.
const RATE_LIMITED: ErrorCode = ErrorCode(-32029);

/// The JSON-RPC error code of other refusals (a conflict, a timeout).
const REFUSED: ErrorCode = ErrorCode(-32000);

/// The `/mcp` service: rmcp's Streamable HTTP server with in-process
/// sessions, ended when `shutdown` is cancelled; and the gate that goes in
/// front of it.
pub(crate) fn service(
    state: Arc<AppState>,
    shutdown: CancellationToken,
) -> (StreamableHttpService<ToolhubMcp, LocalSessionManager>, Gate) {
    let mut sessions = LocalSessionManager::default();
    // A call waits for its execution, which may run up to the execution
    // timeout without another message on the session; an idle session is
    // closed only after that.
    sessions.session_config.keep_alive =
        Some(state.engine.execution_timeout() + Duration::from_secs(60));
    let config = StreamableHttpServerConfig::default()
        .with_cancellation_token(shutdown)
        .with_max_request_body_bytes(state.limits.body_bytes)
        // The `Host` check protects servers that answer anyone who can reach
        // them from DNS rebinding. Here every request needs a bearer token,
        // which a rebinding page does not have, and the service runs under
        // whatever names its operators give it.
        .disable_allowed_hosts();
    let sessions = Arc::new(sessions);
    let gate = Gate::new(state.clone(), sessions.clone());
    let handler = ToolhubMcp { state };
    let service = StreamableHttpService::new(move || Ok(handler.clone()), sessions, config);
    (service, gate)
}

/// The session header of Streamable HTTP.
const SESSION_ID: &str = "mcp-session-id";

/// How many sessions' owners are remembered; a session whose owner was
/// forgotten is answered as unknown, and its client opens another.
const SESSION_OWNERS: usize = 65_536;

/// The most sessions one caller may hold open on a replica: each holds a
/// task and buffers until it is closed or idle for the execution timeout.
const SESSIONS_PER_CALLER: usize = 64;

/// What the `/mcp` gate needs: the authenticator, who opened each session, and
/// which sessions are still open.
#[derive(Clone)]
pub(crate) struct Gate {
    /// What every handler shares.
    state: Arc<AppState>,
    /// Session id → the key of the caller that opened it (tenant and
    /// `sub`), so that nobody else's requests reach the session.
    owners: Arc<parking_lot::Mutex<lru::LruCache<String, String>>>,
    /// Caller key → the sessions it opened, pruned of closed ones when it
    /// opens another.
    held: Arc<parking_lot::Mutex<HashMap<String, Vec<String>>>>,
    /// rmcp's sessions: the ones open now.
    sessions: Arc<LocalSessionManager>,
}

impl Gate {
    /// The gate of one server.
    fn new(state: Arc<AppState>, sessions: Arc<LocalSessionManager>) -> Self {
        let capacity =
            std::num::NonZeroUsize::new(SESSION_OWNERS).unwrap_or(std::num::NonZeroUsize::MIN);
        Self {
            state,
            owners: Arc::new(parking_lot::Mutex::new(lru::LruCache::new(capacity))),
            held: Arc::default(),
            sessions,
        }
    }

    /// Whether `key` may open another session: it holds fewer than
    /// [`SESSIONS_PER_CALLER`] that are still open.
    async fn may_open(&self, key: &str) -> bool {
        let held = self.held.lock().get(key).cloned().unwrap_or_default();
        if held.len() < SESSIONS_PER_CALLER {
            return true;
        }
        let open: Vec<String> = {
            let sessions = self.sessions.sessions.read().await;
            held.into_iter()
                .filter(|id| sessions.contains_key(id.as_str()))
                .collect()
        };
        let may = open.len() < SESSIONS_PER_CALLER;
        self.held.lock().insert(key.to_string(), open);
        may
    }

    /// Records that `key` opened the session `id`.
    fn opened(&self, key: String, id: &str) {
        self.held
            .lock()
            .entry(key.clone())
            .or_default()
            .push(id.to_string());
        self.owners.lock().put(id.to_string(), key);
    }
}

/// A caller's key: `sub` alone is not unique across tenants.
fn owner_key(caller: &Caller) -> String {
    format!("{}\u{1f}{}", caller.tenant, caller.sub)
}

/// Checks the bearer token of every `/mcp` request and hands the caller to
/// the handler (through the request's extensions, which rmcp passes on);
/// answers 401 with `WWW-Authenticate: Bearer` without one. A session is
/// its opener's: another caller's request naming it is answered 404, as an
/// unknown session is.
pub(crate) async fn authenticate(
    State(gate): State<Gate>,
    mut request: Request,
    next: Next,
) -> Response {
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let caller = match gate.state.auth.authenticate(authorization).await {
        Ok(caller) => caller,
        Err(error) => {
            let mut response = (
                StatusCode::UNAUTHORIZED,
                axum::Json(json!({ "error": error.to_json() })),
            )
                .into_response();
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return response;
        }
    };
    let key = owner_key(&caller);
    let session = request
        .headers()
        .get(SESSION_ID)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    if let Some(session) = &session {
        let owner = gate.owners.lock().get(session).cloned();
        if owner.as_deref() != Some(key.as_str()) {
            return (
                StatusCode::NOT_FOUND,
                axum::Json(json!({ "error": ApiError::NotFound.to_json() })),
            )
                .into_response();
        }
    }
    if session.is_none() && !gate.may_open(&key).await {
        let error = ApiError::RateLimited {
            reason: "SESSIONS_PER_CALLER",
            retry_after: None,
        };
        return (
            StatusCode::TOO_MANY_REQUESTS,
            axum::Json(json!({ "error": error.to_json() })),
        )
            .into_response();
    }
    request.extensions_mut().insert(caller);
    let response = next.run(request).await;
    if session.is_none() {
        if let Some(opened) = response
            .headers()
            .get(SESSION_ID)
            .and_then(|v| v.to_str().ok())
        {
            gate.opened(key, opened);
        }
    }
    response
}

/// The MCP handler: one per session, sharing the service's state.
#[derive(Clone)]
pub(crate) struct ToolhubMcp {
    /// What every handler shares.
    state: Arc<AppState>,
}

/// One tool as the write side holds it.
struct FoundTool {
    /// The workflow it runs.
    workflow_id: WorkflowId,
    /// The workflow's state.
    workflow: Workflow,
    /// What it tells clients.
    description: String,
    /// What its arguments must match.
    input_schema: Value,
}

impl ServerHandler for ToolhubMcp {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("toolhub", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "Each tool runs a Toolhub workflow of your organisation with the \
                 arguments as its input, and answers with the workflow's output.",
            )
    }

    async fn list_tools(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let caller = self.admit(&context, Role::Viewer, Kind::Query)?;
        let after = request.and_then(|r| r.cursor);
        let claims = names_in(
            self.state.store.db(),
            caller.tenant.as_str(),
            WORKFLOW,
            after.as_deref(),
            PAGE,
        )
        .await
        .map_err(|e| internal(&context, e))?;
        let full = claims.len() == PAGE as usize;
        let last = claims.last().map(|(name, _)| name.clone());
        let mut tools = Vec::with_capacity(claims.len());
        for (name, holder) in claims {
            let found = self
                .tool_of(&caller.tenant, &name, &holder)
                .await
                .map_err(|e| internal(&context, e))?;
            let Some(found) = found else { continue };
            if found.workflow.is_archived() {
                continue;
            }
            let schema = match found.input_schema {
                Value::Object(schema) => schema,
                _ => continue,
            };
            let description = (!found.description.is_empty()).then(|| found.description.into());
            tools.push(Tool::new_with_raw(name, description, Arc::new(schema)));
        }
        let mut result = ListToolsResult::with_all_items(tools);
        result.next_cursor = if full { last } else { None };
        Ok(result)
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let caller = self.admit(&context, Role::Editor, Kind::Mutation)?;
        let name = request.name.as_ref();
        let unknown = || {
            ErrorData::invalid_params(
                format!(
                    "unknown tool `{}`",
                    name.chars().take(64).collect::<String>()
                ),
                Some(json!({ "code": "NOT_FOUND" })),
            )
        };
        // A name no tool can have is not looked up.
        let plausible = !name.is_empty()
            && name.len() <= MAX_TOOL_NAME_LEN
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !plausible {
            return Err(unknown());
        }
        let holder = name_holder(
            self.state.store.db(),
            caller.tenant.as_str(),
            WORKFLOW,
            name,
        )
        .await
        .map_err(|e| internal(&context, e))?;
        let Some(holder) = holder else {
            return Err(unknown());
        };
        let found = self
            .tool_of(&caller.tenant, name, &holder)
            .await
            .map_err(|e| internal(&context, e))?;
        let Some(found) = found.filter(|f| !f.workflow.is_archived()) else {
            return Err(unknown());
        };
        let arguments = Value::Object(request.arguments.unwrap_or_default());
        let validator = match compile_tool_schema(&found.input_schema) {
            Ok(validator) => validator,
            Err(reason) => {
                return Ok(failure(format!("the tool's input schema is unusable: {reason}")).into())
            }
        };
        let problems: Vec<String> = validator
            .iter_errors(&arguments)
            .take(MAX_PROBLEMS)
            .map(|error| {
                let path = error.instance_path().to_string();
                let place = if path.is_empty() { "(root)" } else { &path };
                let text = format!("`{place}`: {error}");
                text.chars().take(MAX_PROBLEM_LEN).collect()
            })
            .collect();
        if !problems.is_empty() {
            return Ok(failure(format!(
                "invalid arguments for `{name}`: {}",
                problems.join("; ")
            ))
            .into());
        }

        let mut command_context = CommandContext::new(caller.sub.clone(), caller.tenant.clone());
        if let Some(id) = parts(&context)
            .and_then(|p| p.headers.get(REQUEST_ID))
            .and_then(|v| v.to_str().ok())
        {
            command_context.request_id = id.to_string();
        }
        let started = self
            .state
            .engine
            .start(
                &command_context,
                StartRequest {
                    workflow_id: found.workflow_id,
                    input: arguments,
                    breakpoints: Vec::new(),
                    idempotency_key: None,
                    trigger: "mcp".into(),
                    source: Some(name.to_string()),
                },
            )
            .await
            .map_err(|e| refusal(&context, ApiError::from(e)))?;
        self.state
            .metrics
            .command("execution", "ok", started.committed.events);
        let order = found
            .workflow
            .current_definition()
            .map(node_order)
            .unwrap_or_default();
        self.follow(
            &caller,
            &command_context,
            started.execution_id,
            &order,
            &context,
        )
        .await
        .map(CallToolResponse::from)
    }
}

impl ToolhubMcp {
    /// The caller of this request, once it has `role` and is within the
    /// rates of `kind`.
    fn admit(
        &self,
        context: &RequestContext<RoleServer>,
        role: Role,
        kind: Kind,
    ) -> Result<Caller, ErrorData> {
        let parts = parts(context)
            .ok_or_else(|| internal(context, "an MCP request without its HTTP parts"))?;
        let caller = parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| internal(context, "an MCP request without its caller"))?;
        caller.require(role).map_err(|e| refusal(context, e))?;
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0);
        let address = self.state.throttle.client_address(&parts.headers, peer);
        self.state
            .throttle
            .check_address(kind, address)
            .and_then(|()| self.state.throttle.check_subject(kind, &caller))
            .map_err(|e| refusal(context, e))?;
        Ok(caller)
    }

    /// The tool `name` claimed by workflow `holder` of `tenant`, as the
    /// write side holds it; `None` when the workflow no longer exposes it
    /// under that name.
    async fn tool_of(
        &self,
        tenant: &TenantId,
        name: &str,
        holder: &str,
    ) -> Result<Option<FoundTool>, toolhub_eventstore::StoreError> {
        let Ok(workflow_id) = holder.parse::<WorkflowId>() else {
            return Ok(None);
        };
        let (mut workflow, _) = self.state.workflows.current(holder).await?;
        if tool(&workflow, name).is_none() {
            // The claim is in the database; this process's cached state may
            // be behind another replica's change.
            (workflow, _) = self.state.workflows.refresh(holder).await?;
        }
        if workflow.tenant() != Some(tenant) {
            return Ok(None);
        }
        let Some((description, input_schema)) = tool(&workflow, name) else {
            return Ok(None);
        };
        let (description, input_schema) = (description.to_string(), input_schema.clone());
        Ok(Some(FoundTool {
            workflow_id,
            workflow,
            description,
            input_schema,
        }))
    }

    /// Waits for the execution to end and answers with its outcome; sends
    /// a progress notification each time another node finishes (when the
    /// client asked for progress); stops the execution when the client
    /// cancels the request.
    async fn follow(
        &self,
        caller: &Caller,
        command_context: &CommandContext,
        execution_id: ExecutionId,
        order: &HashMap<String, (usize, usize)>,
        context: &RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let total = order.len();
        let id = execution_id.to_string();
        let ids = [id.clone()];
        let progress_token: Option<ProgressToken> = context.meta.get_progress_token();
        let mut projected = self.state.projected.clone();
        let mut finished: HashSet<String> = HashSet::new();
        let deadline =
            tokio::time::Instant::now() + self.state.engine.execution_timeout() + POLL * 4;
        loop {
            let view = self
                .state
                .read
                .execution(&caller.tenant, &id)
                .await
                .map_err(|e| internal(context, format!("{e:?}")))?;
            if let (Some(token), Some(_)) = (&progress_token, &view) {
                let mut steps = self
                    .state
                    .read
                    .execution_steps(&caller.tenant, &ids, crate::read::Documents::Included)
                    .await
                    .map_err(|e| internal(context, format!("{e:?}")))?;
                // Steps recorded in one batch share their time; then a
                // node comes after the nodes it depends on.
                steps.sort_by_key(|s| (s.finished_at, order.get(&s.node_id).copied()));
                for step in steps {
                    let ended = matches!(step.status.as_str(), "succeeded" | "failed" | "skipped");
                    if !ended || !finished.insert(step.node_id.clone()) {
                        continue;
                    }
                    let mut progress =
                        ProgressNotificationParam::new(token.clone(), finished.len() as f64)
                            .with_message(format!("node `{}` {}", step.node_id, step.status));
                    if total > 0 {
                        progress = progress.with_total(total as f64);
                    }
                    // A client that went away does not stop the run.
                    let _ = context.peer.notify_progress(progress).await;
                }
            }
            if let Some(view) = &view {
                match view.status.as_str() {
                    "completed" => {
                        let output = view.output.clone().unwrap_or(Value::Object(Map::new()));
                        return Ok(success(&id, output));
                    }
                    "failed" => {
                        let error = view.error.as_deref().unwrap_or("the execution failed");
                        return Ok(failure(format!("execution {id} failed: {error}")));
                    }
                    "cancelled" => {
                        let error = view.error.as_deref().unwrap_or("stopped");
                        return Ok(failure(format!("execution {id} was cancelled: {error}")));
                    }
                    _ => {}
                }
            }
            tokio::select! {
                () = context.ct.cancelled() => {
                    return Err(self.cancelled(command_context, execution_id).await);
                }
                _ = projected.changed() => {}
                () = tokio::time::sleep(POLL) => {}
                () = tokio::time::sleep_until(deadline) => {
                    return Ok(failure(format!(
                        "execution {id} did not end within the execution timeout"
                    )));
                }
            }
        }
    }

    /// The client cancelled the call: stops the execution, unless the
    /// request ended because this server is shutting down (the execution
    /// then goes on under another worker, as every run does).
    async fn cancelled(
        &self,
        command_context: &CommandContext,
        execution_id: ExecutionId,
    ) -> ErrorData {
        let shutting_down = *self.state.shutdown.borrow();
        if !shutting_down {
            if let Err(error) = self.state.engine.stop(command_context, execution_id).await {
                // Already over, or stopping: nothing more to do.
                tracing::debug!(%execution_id, ?error, "stopping a cancelled MCP call's execution");
            }
        }
        ErrorData::new(REFUSED, "the request was cancelled", None)
    }
}

/// Each node's place in a run: its depth (the longest path to it from an
/// entry node), then its place in the definition.
fn node_order(definition: &WorkflowDefinition) -> HashMap<String, (usize, usize)> {
    let nodes = definition.nodes();
    let mut depth: HashMap<&str, usize> = nodes.iter().map(|n| (n.id().as_str(), 0)).collect();
    // The graph is acyclic (validated), so as many passes as nodes settle
    // every depth; a pass that changes nothing ends early.
    for _ in 0..nodes.len() {
        let mut changed = false;
        for edge in definition.edges() {
            let next = depth.get(edge.from().as_str()).copied().unwrap_or(0) + 1;
            if let Some(to) = depth.get_mut(edge.to().as_str()) {
                if *to < next {
                    *to = next;
                    changed = true;
                }
            }
        }
        if !changed {
            break;
        }
    }
    nodes
        .iter()
        .enumerate()
        .map(|(index, node)| {
            let id = node.id().as_str();
            (id.to_string(), (depth.get(id).copied().unwrap_or(0), index))
        })
        .collect()
}

/// The description and input schema of the tool `name` of a workflow.
fn tool<'w>(workflow: &'w Workflow, name: &str) -> Option<(&'w str, &'w Value)> {
    workflow
        .triggers()
        .iter()
        .find_map(|trigger| match trigger {
            Trigger::McpTool {
                name: tool,
                description,
                input_schema,
            } if tool == name => Some((description.as_str(), input_schema)),
            _ => None,
        })
}

/// The HTTP request the MCP request came in.
fn parts(context: &RequestContext<RoleServer>) -> Option<&Parts> {
    context.extensions.get::<Parts>()
}

/// A completed execution's answer: its output as JSON text and as
/// structured content.
fn success(id: &str, output: Value) -> CallToolResult {
    let text = serde_json::to_string(&output).unwrap_or_default();
    let mut result = CallToolResult::success(vec![ContentBlock::text(text)]);
    // MCP's structured content is an object; an execution's output is one
    // (`{sink id: output}`), but a recorded one is not checked here.
    result.structured_content = Some(match output {
        Value::Object(_) => output,
        other => json!({ "output": other }),
    });
    tracing::debug!(execution_id = id, "MCP tool call completed");
    result
}

/// An `isError` answer with `text`.
fn failure(text: String) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(text)])
}

/// An API refusal as an MCP error, with the API's code in its data.
fn refusal(context: &RequestContext<RoleServer>, error: ApiError) -> ErrorData {
    if let ApiError::Internal { detail } = &error {
        return internal(context, detail);
    }
    let code = match &error {
        ApiError::Forbidden { .. } => FORBIDDEN,
        ApiError::RateLimited { .. } => RATE_LIMITED,
        ApiError::NotFound | ApiError::Validation { .. } => ErrorCode::INVALID_PARAMS,
        _ => REFUSED,
    };
    let shown = error.to_json();
    ErrorData::new(code, error.message(), Some(shown["extensions"].clone()))
}

/// A fault of the service: logged with the request id, shown as only that.
fn internal(context: &RequestContext<RoleServer>, detail: impl std::fmt::Display) -> ErrorData {
    let request_id = parts(context)
        .and_then(|p| p.headers.get(REQUEST_ID))
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    tracing::error!(%detail, %request_id, "internal error in an MCP request");
    ErrorData::internal_error(
        "internal error",
        Some(json!({ "code": "INTERNAL", "requestId": request_id })),
    )
}
