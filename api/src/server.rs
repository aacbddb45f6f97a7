//! The HTTP server: the router (`/graphql`, `/graphql/ws`, `/mcp`, the
//! operations endpoints), its limits and hygiene layers, and starting and
//! stopping it.
//!
//! Every request gets an `x-request-id` (the client's, or a new UUID), which
//! is echoed in the response, carried by the request's log span, recorded
//! with the events of its commands and shown in `INTERNAL` errors. Request
//! bodies, variables and `Authorization` headers are never logged.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_graphql::http::{GraphiQLSource, ALL_WEBSOCKET_PROTOCOLS};
use async_graphql::parser::types::{DocumentOperations, ExecutableDocument, OperationType};
use axum::body::Bytes;
use axum::error_handling::HandleErrorLayer;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, MatchedPath, Request, State, WebSocketUpgrade};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{BoxError, Router};
use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tower::ServiceBuilder;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use tracing::Instrument;

use crate::auth::{Authenticator, Verifier};
use crate::config::Config;
use crate::error::ApiError;
use crate::graphql::{build_schema, nesting, Loaders, RequestData, ToolhubSchema};
use crate::metrics::Metrics;
use crate::read::{ProjectorRunner, ReadModels, RunnerHandle, RunnerOptions};
use crate::standing::Standing;
use crate::state::{follow_projections, prime_standing, AppState};
use crate::throttle::{Kind, Throttle};
use toolhub_engine::{Engine, EngineHandle};
use toolhub_eventstore::{
    ApiKeys, CommandBus, KeyStore, Position, SecretVault, StoreError, Webhooks,
};

/// The request id header.
pub const REQUEST_ID: &str = "x-request-id";

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The database could not be opened or migrated.
    #[error("cannot open the database {url}: {source}")]
    Store {
        /// The URL with any password removed.
        url: String,
        /// What failed.
        source: StoreError,
    },
    /// The JWT key could not be used.
    #[error("cannot use the JWT key: {0}")]
    Jwt(String),
    /// The engine could not be set up (its HTTP client).
    #[error("cannot start the engine: {0}")]
    Engine(String),
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// What failed.
        source: std::io::Error,
    },
}

/// A running server.
pub struct Running {
    /// The address it listens on (with the real port when 0 was asked for).
    pub addr: SocketAddr,
    /// Set to true to stop: the server stops accepting and subscriptions end.
    shutdown: watch::Sender<bool>,
    /// The HTTP server's task, awaited (boundedly) on stop.
    server: JoinHandle<()>,
    /// The projectors, when this process runs them; stopped after the server.
    runner: Option<RunnerHandle>,
    /// The task that follows the projectors' progress for subscriptions.
    follower: JoinHandle<()>,
    /// The engine's workers, when this process runs them.
    engine: Option<EngineHandle>,
}

impl Running {
    /// The engine, when this process runs its workers.
    pub fn engine(&self) -> Option<&toolhub_engine::Engine> {
        self.engine.as_ref().map(|handle| handle.engine())
    }

    /// The base URL, such as `http://127.0.0.1:8080`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops gracefully: stops accepting, lets in-flight requests finish
    /// (for a bounded time), ends subscriptions, then stops the projectors,
    /// which finish their batch and checkpoint.
    pub async fn stop(mut self) {
        let _ = self.shutdown.send(true);
        let mut server = self.server;
        if tokio::time::timeout(Duration::from_secs(15), &mut server)
            .await
            .is_err()
        {
            tracing::warn!("in-flight requests did not finish within 15s; closing them");
            server.abort();
        }
        if let Some(engine) = self.engine.take() {
            engine.stop().await;
        }
        if let Some(runner) = self.runner.take() {
            runner.stop().await;
        }
        self.follower.abort();
    }

    /// Stops at once, as a crash would: no lease or lock is given back
    /// (they run out), in-flight requests are dropped.
    pub fn abort(mut self) {
        if let Some(engine) = self.engine.take() {
            engine.abort();
        }
        if let Some(runner) = self.runner.take() {
            runner.abort();
        }
        self.server.abort();
        self.follower.abort();
    }
}

/// Opens the database (applying migrations), starts the projectors and the
/// HTTP server, and returns once it listens.
pub async fn spawn(config: Config) -> Result<Running, StartError> {
    let shown = toolhub_eventstore::store::redact_url(&config.database_url);
    let store = toolhub_eventstore::open_with(&config.database_url, config.database.clone())
        .await
        .map_err(|source| StartError::Store {
            url: shown.clone(),
            source,
        })?;
    let verifier = Verifier::new(&config.jwt).map_err(|e| StartError::Jwt(e.to_string()))?;
    let read = ReadModels::new(&store);
    let runner = config
        .run_projectors
        .then(|| ProjectorRunner::start(store.clone(), RunnerOptions::default()));
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (projected_tx, projected_rx) = watch::channel(Position::ZERO);
    let standing = Arc::new(Standing::default());
    prime_standing(&store, &read, &standing).await;
    let follower = tokio::spawn(follow_projections(
        store.clone(),
        read.clone(),
        projected_tx,
        standing.clone(),
        shutdown_rx.clone(),
    ));
    let keys = KeyStore::new(store.db().clone(), config.master_key.clone());
    sweep_keys(&keys).await;
    let workflows = Arc::new(CommandBus::new(store.clone()));
    let mcp_servers = Arc::new(CommandBus::new(store.clone()));
    let executions = Arc::new(CommandBus::new(store.clone()));
    let secrets = Arc::new(SecretVault::new(
        CommandBus::new(store.clone()),
        keys.clone(),
    ));
    let engine = Engine::new(
        store.clone(),
        executions.clone(),
        workflows.clone(),
        mcp_servers.clone(),
        secrets.clone(),
        config.engine.clone(),
    )
    .map_err(|e| StartError::Engine(e.to_string()))?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| StartError::Bind {
        addr: config.listen,
        source,
    })?;
    let engine_handle = config.run_engine.then(|| engine.spawn());
    let hooks_base = format!(
        "{}/hooks/",
        config
            .webhooks
            .public_url
            .clone()
            .unwrap_or_else(|| format!("http://{addr}"))
    );
    let webhooks = Arc::new(Webhooks::new(
        workflows.clone(),
        keys.clone(),
        store.db().clone(),
    ));
    let api_keys = Arc::new(ApiKeys::new(CommandBus::new(store.clone())));
    let state = Arc::new(AppState {
        webhooks,
        hooks_base,
        webhook_grace: config.webhooks.grace,
        workflows,
        mcp_servers,
        executions,
        secrets,
        engine,
        store,
        read,
        auth: Authenticator::new(verifier, api_keys.clone()),
        api_keys,
        metrics: Metrics::new(),
        throttle: Throttle::new(&config.limits),
        limits: config.limits.clone(),
        projected: projected_rx,
        shutdown: shutdown_rx.clone(),
        fanout: Default::default(),
        standing,
    });
    let schema = build_schema(Some(state.clone()), &config.limits);
    tokio::spawn(sweep_throttle(state.clone(), shutdown_rx.clone()));
    // MCP sessions and the calls in them end when the server stops.
    let mcp_shutdown = tokio_util::sync::CancellationToken::new();
    tokio::spawn({
        let mcp_shutdown = mcp_shutdown.clone();
        let mut stop = shutdown_rx.clone();
        async move {
            let _ = stop.wait_for(|stopped| *stopped).await;
            mcp_shutdown.cancel();
        }
    });
    let app = router(state, schema, &config, mcp_shutdown);

    let mut stop = shutdown_rx;
    let server = tokio::spawn(async move {
        let served = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|stopped| *stopped).await;
        })
        .await;
        if let Err(error) = served {
            tracing::error!(%error, "the server failed");
        }
    });
    tracing::info!(%addr, database = %shown, "listening");
    Ok(Running {
        addr,
        shutdown: shutdown_tx,
        server,
        runner,
        follower,
        engine: engine_handle,
    })
}

/// Forgets idle keys of the rate limiters every minute, until shutdown.
async fn sweep_throttle(state: Arc<AppState>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tick.tick() => state.throttle.sweep(),
        }
    }
}

/// A running engine without the HTTP server (`toolhub worker`).
pub struct Worker {
    /// The engine's workers.
    engine: EngineHandle,
}

impl Worker {
    /// Stops the workers: executions go back to the queue for others.
    pub async fn stop(self) {
        self.engine.stop().await;
    }
}

/// Destroys the keys of deleted secrets and orphaned keys that an older
/// version may have left (see [`KeyStore::sweep`]). A failure is logged and
/// the start goes on: the sweep runs again at the next start.
async fn sweep_keys(keys: &KeyStore) {
    match keys.sweep(KEY_ORPHAN_AGE).await {
        Ok(0) => {}
        Ok(destroyed) => {
            tracing::warn!(
                destroyed,
                "destroyed secret keys that outlived their secret"
            )
        }
        Err(error) => tracing::error!(%error, "could not sweep the secret keys"),
    }
}

/// How old a key without any secret event must be before the start's sweep
/// destroys it: far longer than any creation takes.
const KEY_ORPHAN_AGE: Duration = Duration::from_secs(3600);

/// Opens the database (applying migrations) and starts only the engine's
/// workers: for deployments that scale workers apart from the API.
pub async fn spawn_worker(config: Config) -> Result<Worker, StartError> {
    let shown = toolhub_eventstore::store::redact_url(&config.database_url);
    let store = toolhub_eventstore::open_with(&config.database_url, config.database.clone())
        .await
        .map_err(|source| StartError::Store {
            url: shown.clone(),
            source,
        })?;
    let keys = KeyStore::new(store.db().clone(), config.master_key.clone());
    let engine = Engine::new(
        store.clone(),
        Arc::new(CommandBus::new(store.clone())),
        Arc::new(CommandBus::new(store.clone())),
        Arc::new(CommandBus::new(store.clone())),
        Arc::new(SecretVault::new(CommandBus::new(store.clone()), keys)),
        config.engine.clone(),
    )
    .map_err(|e| StartError::Engine(e.to_string()))?;
    tracing::info!(database = %shown, worker = %config.engine.worker_id, "engine workers started");
    Ok(Worker {
        engine: engine.spawn(),
    })
}

#[derive(Clone)]
struct App {
    /// What every handler shares.
    state: Arc<AppState>,
    /// The GraphQL schema, built once.
    schema: ToolhubSchema,
    /// Parsed documents shared by every request.
    documents: Arc<DocumentCache>,
}

/// Parsed GraphQL documents by their text. A UI sends the same few
/// documents over and over; parsing each once saves a good part of a small
/// query's cost. Validation still runs on every request (it depends on the
/// variables).
struct DocumentCache {
    /// The most recently used documents, by their text.
    parsed: parking_lot::Mutex<lru::LruCache<String, ExecutableDocument>>,
}

impl DocumentCache {
    /// How many documents are kept.
    const CAPACITY: usize = 256;
    /// Longer documents are parsed every time rather than kept.
    const MAX_LEN: usize = 16 * 1024;

    fn new() -> Self {
        let capacity =
            std::num::NonZeroUsize::new(Self::CAPACITY).unwrap_or(std::num::NonZeroUsize::MIN);
        Self {
            parsed: parking_lot::Mutex::new(lru::LruCache::new(capacity)),
        }
    }

    /// Attaches the parsed document to `request`, parsing it on a miss. A
    /// document that does not parse is left for the executor, which reports
    /// the error as usual.
    fn attach(&self, mut request: async_graphql::Request) -> async_graphql::Request {
        // Too deep a document would overflow the parser's stack: the
        // executor refuses it unparsed (`graphql::nesting`).
        if request.query.len() > Self::MAX_LEN || nesting::too_deep(&request.query) {
            return request;
        }
        if let Some(document) = self.parsed.lock().get(&request.query) {
            request.set_parsed_query(document.clone());
            return request;
        }
        if let Ok(document) = async_graphql::parser::parse_query(&request.query) {
            self.parsed
                .lock()
                .put(request.query.clone(), document.clone());
            request.set_parsed_query(document);
        }
        request
    }
}

/// The router with every layer.
fn router(
    state: Arc<AppState>,
    schema: ToolhubSchema,
    config: &Config,
    mcp_shutdown: tokio_util::sync::CancellationToken,
) -> Router {
    let app = App {
        state: state.clone(),
        schema,
        documents: Arc::new(DocumentCache::new()),
    };
    // A request over the time limit is dropped and answered `TIMEOUT`; one
    // beyond the concurrency limit is answered `OVERLOADED` at once rather
    // than queued.
    let bounded = ServiceBuilder::new()
        .layer(HandleErrorLayer::new(bounded_errors))
        .load_shed()
        .layer(tower::limit::GlobalConcurrencyLimitLayer::new(
            config.limits.max_concurrent_requests,
        ))
        .timeout(config.limits.request_timeout);
    let graphql = Router::new()
        .route(
            "/graphql",
            get(graphiql)
                .post(graphql_http)
                .route_layer(bounded.clone()),
        )
        .route("/graphql/ws", get(graphql_ws))
        .with_state(app);
    let hooks = Router::new()
        .route(
            "/hooks/{id}",
            post(crate::hooks::deliver).route_layer(bounded),
        )
        .with_state(state.clone());
    // `/mcp` answers long calls (a tool call lasts as long as its
    // execution) on streams of its own, so the request timeout and the
    // concurrency limit of `/graphql` do not apply; the body limit, the
    // token and the rate limits do.
    let (mcp_service, mcp_gate) = crate::mcp::service(state.clone(), mcp_shutdown);
    let mcp =
        Router::new()
            .route_service("/mcp", mcp_service)
            .layer(middleware::from_fn_with_state(
                mcp_gate,
                crate::mcp::authenticate,
            ));
    let ops = Router::new()
        .route("/health/live", get(crate::health::live))
        .route("/health/ready", get(crate::health::ready))
        .route("/metrics", get(crate::health::metrics))
        .with_state(state.clone());
    let trace = TraceLayer::new_for_http().make_span_with(|request: &Request| {
        let request_id = request
            .headers()
            .get(REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        // The path only: never the query string or any header value.
        tracing::info_span!(
            "request",
            method = %request.method(),
            path = %request.uri().path(),
            request_id = %request_id,
        )
    });
    let mut router = graphql
        .merge(hooks)
        .merge(mcp)
        .merge(ops)
        .fallback(not_found)
        // The limit answers early (from Content-Length) with plain text; the
        // middleware outside it turns that into a JSON error.
        .layer(RequestBodyLimitLayer::new(config.limits.body_bytes))
        .layer(middleware::from_fn(json_limit_errors))
        .layer(middleware::from_fn_with_state(state, count_requests))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(trace)
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid));
    if let Some(cors) = cors(&config.cors_origins) {
        router = router.layer(cors);
    }
    router
}

fn cors(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o).ok())
                .collect::<Vec<_>>(),
        )
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            // DELETE and the `Mcp-*` headers are MCP's (`/mcp`), for
            // clients that run in a browser.
            .allow_methods([Method::GET, Method::POST, Method::DELETE, Method::OPTIONS])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                header::HeaderName::from_static(REQUEST_ID),
                header::HeaderName::from_static("mcp-session-id"),
                header::HeaderName::from_static("mcp-protocol-version"),
                header::HeaderName::from_static("last-event-id"),
            ])
            .expose_headers([
                header::HeaderName::from_static(REQUEST_ID),
                header::HeaderName::from_static("mcp-session-id"),
            ])
            .max_age(Duration::from_secs(600)),
    )
}

/// A GraphQL-shaped error response.
fn error_response(status: StatusCode, error: &ApiError) -> Response {
    let body = json!({ "data": null, "errors": [error.to_json()] });
    let mut response = (status, axum::Json(body)).into_response();
    if status == StatusCode::UNAUTHORIZED {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    let retry_after = match error {
        ApiError::RateLimited {
            retry_after: Some(seconds),
            ..
        } => Some(*seconds),
        ApiError::Overloaded | ApiError::Unavailable { .. } => Some(1),
        _ => None,
    };
    if let Some(seconds) = retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

/// The HTTP status of an error answered outside the executor.
fn status_of(error: &ApiError) -> StatusCode {
    match error {
        ApiError::Unauthenticated(_) | ApiError::TokenRejected { .. } => StatusCode::UNAUTHORIZED,
        ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
        ApiError::Timeout | ApiError::Overloaded | ApiError::Unavailable { .. } => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        _ => StatusCode::BAD_REQUEST,
    }
}

/// Answers the time and concurrency limits' refusals as GraphQL errors.
async fn bounded_errors(error: BoxError) -> Response {
    let error = if error.is::<tower::timeout::error::Elapsed>() {
        ApiError::Timeout
    } else if error.is::<tower::load_shed::error::Overloaded>() {
        ApiError::Overloaded
    } else {
        ApiError::internal(error)
    };
    error_response(status_of(&error), &error)
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        axum::Json(json!({ "error": "not found" })),
    )
        .into_response()
}

/// Rewrites the body limit's plain-text 413 into a JSON error.
async fn json_limit_errors(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    if response.status() == StatusCode::PAYLOAD_TOO_LARGE {
        let is_json = response
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
        if !is_json {
            return error_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                &ApiError::validation("body", "the request body is larger than the limit"),
            );
        }
    }
    response
}

/// Counts requests by route template and status.
async fn count_requests(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let response = next.run(request).await;
    state
        .metrics
        .http_requests
        .with_label_values(&[route.as_str(), response.status().as_str()])
        .inc();
    response
}

fn request_id(headers: &HeaderMap) -> String {
    headers
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

async fn graphiql() -> Html<String> {
    Html(
        GraphiQLSource::build()
            .endpoint("/graphql")
            .subscription_endpoint("/graphql/ws")
            .title("Toolhub")
            .finish(),
    )
}

/// What kind of operation a request runs, from its parsed document (a
/// document that does not parse, or names no operation it has, counts as
/// a query: the executor refuses it anyway).
fn operation_kind(request: &mut async_graphql::Request) -> Kind {
    let name = request.operation_name.clone();
    let Ok(document) = request.parsed_query() else {
        return Kind::Query;
    };
    let operation = match (&document.operations, name) {
        (DocumentOperations::Single(op), _) => Some(op.node.ty),
        (DocumentOperations::Multiple(ops), Some(name)) => ops
            .iter()
            .find(|(n, _)| n.as_str() == name)
            .map(|(_, op)| op.node.ty),
        (DocumentOperations::Multiple(ops), None) if ops.len() == 1 => {
            ops.values().next().map(|op| op.node.ty)
        }
        _ => None,
    };
    match operation {
        Some(OperationType::Mutation) => Kind::Mutation,
        Some(OperationType::Subscription) => Kind::Subscription,
        _ => Kind::Query,
    }
}

/// The client's address, as the rate limits see it.
fn client_address(
    state: &AppState,
    headers: &HeaderMap,
    peer: SocketAddr,
) -> Option<std::net::IpAddr> {
    state.throttle.client_address(headers, Some(peer))
}

/// `POST /graphql`.
async fn graphql_http(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let request_id = request_id(&headers);
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let caller = match app.state.auth.authenticate(authorization).await {
        Ok(caller) => caller,
        Err(error) => return error_response(status_of(&error), &error),
    };
    let body = match body {
        Ok(body) => body,
        Err(rejection) => {
            let status = rejection.status();
            let reason = if status == StatusCode::PAYLOAD_TOO_LARGE {
                "the request body is larger than the limit"
            } else {
                "the request body could not be read"
            };
            return error_response(status, &ApiError::validation("body", reason));
        }
    };
    let request: async_graphql::Request = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(error) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                &ApiError::validation(
                    "body",
                    format!("not a GraphQL request ({{\"query\": …, \"variables\": …}}): {error}"),
                ),
            )
        }
    };
    // Before anything parses it: see `graphql::nesting`.
    if nesting::too_deep(&request.query) {
        return error_response(StatusCode::OK, &nesting::too_deep_error());
    }
    let mut request = app.documents.attach(request);
    let kind = operation_kind(&mut request);
    let address = client_address(&app.state, &headers, peer);
    let admitted = app
        .state
        .throttle
        .check_address(kind, address)
        .and_then(|()| app.state.throttle.check_subject(kind, &caller));
    if let Err(error) = admitted {
        return error_response(status_of(&error), &error);
    }
    let kind = match kind {
        Kind::Query => "query",
        Kind::Mutation => "mutation",
        Kind::Subscription => "subscription",
    };
    let loaders = Loaders::new(&app.state, &caller);
    let request = request.data(RequestData {
        caller,
        request_id: request_id.clone(),
    });
    let request = request.data(loaders);
    let started = Instant::now();
    let span = tracing::info_span!("graphql", operation = kind);
    let mut response = app.schema.execute(request).instrument(span).await;
    app.state
        .metrics
        .graphql_latency
        .with_label_values(&[kind])
        .observe(started.elapsed().as_secs_f64());
    for error in &mut response.errors {
        let extensions = error.extensions.get_or_insert_with(Default::default);
        match extensions.get("code") {
            // Errors raised by async-graphql itself (parsing, validation,
            // depth and complexity limits, input coercion) are the client's.
            None => extensions.set("code", "VALIDATION"),
            Some(async_graphql::Value::String(code)) if code == "INTERNAL" => {
                extensions.set("requestId", request_id.as_str());
            }
            _ => {}
        }
    }
    axum::Json(response).into_response()
}

/// `GET /graphql/ws`: graphql-transport-ws (see [`crate::ws`] for its
/// limits). The token comes in `connection_init` as `{"authorization":
/// "Bearer …"}`. Opening a socket counts against the client address's
/// subscription rate.
async fn graphql_ws(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    upgrade: WebSocketUpgrade,
    headers: HeaderMap,
) -> Response {
    let request_id = request_id(&headers);
    let requested = headers
        .get(header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok());
    let Some(protocol) = crate::ws::protocol(requested) else {
        return error_response(
            StatusCode::BAD_REQUEST,
            &ApiError::validation("Sec-WebSocket-Protocol", "expected graphql-transport-ws"),
        );
    };
    let address = client_address(&app.state, &headers, peer);
    if let Err(error) = app
        .state
        .throttle
        .check_address(Kind::Subscription, address)
    {
        return error_response(status_of(&error), &error);
    }
    let max = app.state.limits.ws_max_message_bytes;
    upgrade
        .protocols(ALL_WEBSOCKET_PROTOCOLS)
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| {
            crate::ws::serve(
                app.state.clone(),
                app.schema.clone(),
                socket,
                protocol,
                request_id,
                address,
            )
        })
}
