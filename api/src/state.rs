//! What every request handler shares: the store, the read models, the
//! command buses, the authenticator, the metrics and the limits.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::{BoxFuture, FutureExt, Shared};
use parking_lot::Mutex;
use tokio::sync::watch;
use toolhub_domain::execution::Execution;
use toolhub_domain::mcp_server::McpServer;
use toolhub_domain::workflow::Workflow;
use toolhub_domain::TenantId;
use toolhub_engine::Engine;
use toolhub_eventstore::{ApiKeys, CommandBus, EventStore, Position, SecretVault, Webhooks};

use crate::auth::Authenticator;
use crate::config::Limits;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::read::{AuditEntryView, AuditFilter, ReadModels};
use crate::standing::Standing;
use crate::throttle::Throttle;

/// The shared state of one running server.
pub struct AppState {
    /// The event log.
    pub store: EventStore,
    /// The read models.
    pub read: ReadModels,
    /// Workflow commands (shared with the engine: one cache).
    pub workflows: Arc<CommandBus<Workflow>>,
    /// MCP server commands (shared with the engine).
    pub mcp_servers: Arc<CommandBus<McpServer>>,
    /// Execution commands (shared with the engine).
    pub executions: Arc<CommandBus<Execution>>,
    /// Secret commands, with their key handling.
    pub secrets: Arc<SecretVault>,
    /// Webhook commands, and the secrets deliveries are checked with.
    pub webhooks: Arc<Webhooks>,
    /// What webhook URLs start with: `<public URL>/hooks/`.
    pub hooks_base: String,
    /// How long a rotated-out webhook secret stays valid by default.
    pub webhook_grace: std::time::Duration,
    /// Runs executions: starts, stops, resumes; MCP discovery and health.
    pub engine: Engine,
    /// Verifies callers: JWTs and API keys.
    pub auth: Authenticator,
    /// API key commands and lookups.
    pub api_keys: Arc<ApiKeys>,
    /// Prometheus metrics.
    pub metrics: Metrics,
    /// Request limits and bounded waits.
    pub limits: Limits,
    /// The rate limiters and the subscription counts.
    pub throttle: Throttle,
    /// A position the read models are known to have reached; it moves each
    /// time the log grows and the projectors catch up. Subscriptions wake on
    /// it instead of each waiting for the projectors on their own.
    pub projected: watch::Receiver<Position>,
    /// Becomes true when the server shuts down; subscriptions end then.
    pub shutdown: watch::Receiver<bool>,
    /// Shares identical log reads between subscriptions.
    pub fanout: Fanout,
    /// Where the database and the read models stand, kept in memory for
    /// `/health/ready` and `/metrics`.
    pub standing: Arc<Standing>,
}

/// A batch of entries, each shared by every subscriber that receives it.
pub type SharedEntries = Arc<Vec<Arc<AuditEntryView>>>;

type SharedRead = Shared<BoxFuture<'static, Result<SharedEntries, ApiError>>>;

/// Single-flight reads of the audit log for subscriptions.
///
/// When a commit wakes a thousand subscribers of one tenant that all stand
/// at the same position, they would each send the same query. Instead, the
/// first one sends it and the others await its answer. A read is shared only
/// while it is in flight, so nobody ever gets a stale answer.
#[derive(Default)]
pub struct Fanout {
    /// The reads in flight, by what they ask for, with their generation.
    in_flight: Mutex<HashMap<String, (u64, SharedRead)>>,
    /// Tells a read from a later one with the same key, so that a finished read removes only its own entry.
    generation: std::sync::atomic::AtomicU64,
}

impl Fanout {
    /// The tenant's entries after `after` that match `filter`, at most
    /// `limit`, read once for every caller asking the same at the same time.
    pub async fn audit_after(
        &self,
        read: &ReadModels,
        tenant: &TenantId,
        after: Position,
        filter: &AuditFilter,
        limit: u32,
    ) -> Result<SharedEntries, ApiError> {
        let key = format!(
            "{tenant}|{:?}|{:?}|{:?}|{:?}|{:?}|{after}|{limit}",
            filter.aggregate_type, filter.aggregate_id, filter.actor, filter.from, filter.to
        );
        let (generation, shared) = {
            let mut in_flight = self.in_flight.lock();
            match in_flight.get(&key) {
                Some(entry) => entry.clone(),
                None => {
                    let generation = self
                        .generation
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let read = read.clone();
                    let tenant = tenant.clone();
                    let filter = filter.clone();
                    let future: BoxFuture<'static, _> = Box::pin(async move {
                        read.audit_after(&tenant, after, &filter, limit)
                            .await
                            .map(|entries| Arc::new(entries.into_iter().map(Arc::new).collect()))
                            .map_err(ApiError::from)
                    });
                    let entry = (generation, future.shared());
                    in_flight.insert(key.clone(), entry.clone());
                    entry
                }
            }
        };
        let result = shared.await;
        let mut in_flight = self.in_flight.lock();
        if in_flight.get(&key).is_some_and(|(g, _)| *g == generation) {
            in_flight.remove(&key);
        }
        result
    }
}

impl AppState {
    /// Waits, within the configured bound, until the read models reach
    /// `position`. Returns false (and logs) on a timeout or a fault, so that
    /// a committed mutation still answers.
    pub async fn wait_for(&self, position: Position) -> bool {
        match self
            .read
            .wait_for(position, self.limits.consistency_wait)
            .await
        {
            Ok(()) => true,
            Err(error) => {
                tracing::warn!(%error, %position, "the read models did not reach a mutation's position in time");
                false
            }
        }
    }
}

/// Moves `projected` forward each time the read models do: woken by the
/// projectors' announcements (from this process or, on PostgreSQL, any
/// other), and polling as a fallback, because announcements are hints. Also
/// keeps `standing` up to date: each second, a database check and a read of
/// the head (the mutations of this process also move the head as they
/// commit).
pub async fn follow_projections(
    store: EventStore,
    read: ReadModels,
    projected: watch::Sender<Position>,
    standing: Arc<Standing>,
    mut shutdown: watch::Receiver<bool>,
) {
    // The checks run on their own, so that a slow database check never
    // holds back a subscription's wake-up.
    let checker = tokio::spawn(keep_checking(
        store.clone(),
        read.clone(),
        standing.clone(),
        shutdown.clone(),
    ));
    let mut moved = store.projected();
    let mut poll = tokio::time::interval(Duration::from_millis(500));
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.changed() => {
                checker.abort();
                return;
            }
            changed = moved.changed() => if changed.is_err() {
                checker.abort();
                return;
            },
            _ = poll.tick() => {}
        }
        match tokio::time::timeout(CHECK_TIMEOUT, read.applied()).await {
            Ok(Ok(applied)) => {
                standing.saw_applied(applied);
                projected.send_if_modified(|p| {
                    if applied > *p {
                        *p = applied;
                        true
                    } else {
                        false
                    }
                });
            }
            Ok(Err(error)) => {
                tracing::debug!(%error, "could not read the projectors' checkpoints")
            }
            Err(_) => tracing::debug!("the projectors' checkpoints did not answer in time"),
        }
    }
}

/// Each second: a database check, the head of the log, and the projectors'
/// stalls, into `standing`.
async fn keep_checking(
    store: EventStore,
    read: ReadModels,
    standing: Arc<Standing>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut check = tokio::time::interval(CHECK_INTERVAL);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = check.tick() => {
                check_database(&store, &standing).await;
                check_stalls(&read, &standing).await;
            }
        }
    }
}

/// The first check of the database and the read models, before the server
/// answers its first probe.
pub async fn prime_standing(store: &EventStore, read: &ReadModels, standing: &Standing) {
    check_database(store, standing).await;
    check_stalls(read, standing).await;
    if let Ok(Ok(applied)) = tokio::time::timeout(CHECK_TIMEOUT, read.applied()).await {
        standing.saw_applied(applied);
    }
}

/// How often the database is checked and the head read for `standing`.
const CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// How long one check may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Reads which projectors are stopped at an event; a read that fails or
/// does not answer in time keeps the last one (its age tells).
async fn check_stalls(read: &ReadModels, standing: &Standing) {
    match tokio::time::timeout(CHECK_TIMEOUT, read.stalls()).await {
        Ok(Ok(stalls)) => standing.saw_stalls(stalls),
        Ok(Err(error)) => tracing::debug!(%error, "could not read the projectors' stalls"),
        Err(_) => tracing::debug!("the projectors' stalls did not answer in time"),
    }
}

/// One database check: does it answer, and where is the head of the log.
/// A head that does not answer in time (a locked log) keeps the last one.
async fn check_database(store: &EventStore, standing: &Standing) {
    let answered = matches!(
        tokio::time::timeout(CHECK_TIMEOUT, store.ping()).await,
        Ok(Ok(()))
    );
    standing.saw_database(answered);
    if answered {
        if let Ok(Ok(head)) = tokio::time::timeout(CHECK_TIMEOUT, store.head()).await {
            standing.saw_head(head);
        }
    }
}
