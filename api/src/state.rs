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
use crate::read::{
    AuditEntryView, AuditFilter, Documents, ExecutionStepView, ExecutionView, ReadModels,
    WorkflowView,
};
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

type SharedRead<V> = Shared<BoxFuture<'static, Result<V, ApiError>>>;

/// A query in flight: its generation, its tag, its shared answer.
type InFlight<V> = (u64, Position, SharedRead<V>);

/// How long a [`Reads`] keeps an answer after it arrives: the subscribers
/// woken by one change come for it within milliseconds; one that comes
/// later reads again.
const KEEP_FOR: std::time::Duration = std::time::Duration::from_secs(2);

/// One kind of read shared between subscriptions: at most one query in
/// flight per key, and its answer kept briefly for the subscribers that
/// come for it later.
///
/// Every answer is tagged with a position the read models had reached
/// before its query started, so it holds everything up to that position. A
/// subscriber that needs what the read models held at `need` may take an
/// answer tagged `need` or later. For a page of the log, `need` is the
/// position the subscriber was woken at: it misses nothing, because
/// whatever the read models reach after it wakes the subscriber again. For
/// an entity, it is the position of the last entry the subscriber read.
/// So a commit watched by ten thousand subscribers costs one query per
/// key, whenever each of them gets to it.
struct Reads<V> {
    /// The queries in flight, by key: generation, tag, the shared answer.
    in_flight: Mutex<HashMap<String, InFlight<V>>>,
    /// The latest answers, by key, with their tags and when they arrived;
    /// at most `capacity` of them, each for [`KEEP_FOR`].
    done: Mutex<lru::LruCache<String, (Position, std::time::Instant, V)>>,
    /// Tells a query from a later one with the same key, so that a finished
    /// query removes only its own entry.
    generation: std::sync::atomic::AtomicU64,
}

impl<V> Reads<V> {
    /// Reads that keep at most `capacity` answers.
    fn new(capacity: usize) -> Self {
        Self {
            in_flight: Mutex::new(HashMap::new()),
            done: Mutex::new(lru::LruCache::new(
                std::num::NonZeroUsize::new(capacity.max(1)).expect("not zero"),
            )),
            generation: Default::default(),
        }
    }
}

impl<V: Clone + Send + Sync + 'static> Reads<V> {
    /// What `load` reads of the tenant's entity `id`, shared as
    /// [`Self::get`] says, keyed by tenant and id.
    async fn of_entity<F, Fut>(
        &self,
        read: &ReadModels,
        tenant: &TenantId,
        id: &str,
        need: Position,
        now: Position,
        load: F,
    ) -> Result<V, ApiError>
    where
        F: FnOnce(ReadModels, TenantId, String) -> Fut,
        Fut: std::future::Future<Output = Result<V, crate::read::ReadError>> + Send + 'static,
    {
        let (owned_read, owned_tenant, owned_id) = (read.clone(), tenant.clone(), id.to_string());
        let (_, value) = self
            .get(format!("{tenant}|{id}"), need, now, || {
                let answer = load(owned_read, owned_tenant, owned_id);
                Box::pin(async move { answer.await.map_err(ApiError::from) })
            })
            .await?;
        Ok(value)
    }

    /// The answer for `key` as of `need` or later, with its tag: one kept,
    /// one in flight, or `query`'s, started now and tagged `now`, a position
    /// the read models have reached (at least `need`).
    async fn get(
        &self,
        key: String,
        need: Position,
        now: Position,
        query: impl FnOnce() -> BoxFuture<'static, Result<V, ApiError>>,
    ) -> Result<(Position, V), ApiError> {
        let now = now.max(need);
        if let Some((tag, arrived, value)) = self.done.lock().get(&key) {
            if *tag >= need && arrived.elapsed() < KEEP_FOR {
                return Ok((*tag, value.clone()));
            }
        }
        let (generation, tag, shared) = {
            let mut in_flight = self.in_flight.lock();
            match in_flight.get(&key) {
                Some((generation, tag, shared)) if *tag >= need => {
                    (*generation, *tag, shared.clone())
                }
                _ => {
                    let generation = self
                        .generation
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let shared = query().shared();
                    in_flight.insert(key.clone(), (generation, now, shared.clone()));
                    (generation, now, shared)
                }
            }
        };
        let result = shared.await;
        let removed = {
            let mut in_flight = self.in_flight.lock();
            match in_flight.get(&key) {
                Some((g, _, _)) if *g == generation => in_flight.remove(&key).is_some(),
                _ => false,
            }
        };
        // The one that removes the query keeps its answer, unless a later
        // one is kept already.
        if let (true, Ok(value)) = (removed, &result) {
            let mut done = self.done.lock();
            if done.peek(&key).is_none_or(|(kept, _, _)| *kept <= tag) {
                done.put(key, (tag, std::time::Instant::now(), value.clone()));
            }
            // Answers nobody may take any more are dropped, oldest first,
            // so that memory holds only the last moments' answers.
            while done
                .peek_lru()
                .is_some_and(|(_, (_, arrived, _))| arrived.elapsed() >= KEEP_FOR)
            {
                done.pop_lru();
            }
        }
        result.map(|value| (tag, value))
    }
}

/// A page of the audit log a subscription reads.
#[derive(Clone, Debug)]
pub struct AuditPage {
    /// The entries after this position.
    pub after: Position,
    /// Those that match.
    pub filter: AuditFilter,
    /// At most this many.
    pub limit: u32,
    /// With or without their payloads.
    pub documents: Documents,
}

/// Reads shared between subscriptions: the audit entries they follow, and
/// the entities they show. See [`Reads`].
pub struct Fanout {
    /// Pages of the audit log.
    audit: Reads<SharedEntries>,
    /// Workflows as the read model shows them.
    workflows: Reads<Option<Arc<WorkflowView>>>,
    /// Executions as the read model shows them.
    executions: Reads<Option<Arc<ExecutionView>>>,
    /// Executions' steps.
    steps: Reads<Arc<Vec<ExecutionStepView>>>,
}

impl Default for Fanout {
    fn default() -> Self {
        Self {
            // Pages are few (subscribers of a type converge on one), and
            // may be large; entities are one per watched entity.
            audit: Reads::new(1_024),
            workflows: Reads::new(4_096),
            executions: Reads::new(4_096),
            steps: Reads::new(4_096),
        }
    }
}

impl Fanout {
    /// The tenant's entries after `page.after` that match `page.filter`, at
    /// most `page.limit`, with or without their payloads, holding every one
    /// up to `need` (a position the read models have reached, as `now` is),
    /// read once for every subscriber that asks the same. Returns them with
    /// the answer's tag: when there are fewer than `limit`, they are every
    /// entry up to the tag.
    pub async fn audit_after(
        &self,
        read: &ReadModels,
        tenant: &TenantId,
        page: &AuditPage,
        need: Position,
        now: Position,
    ) -> Result<(Position, SharedEntries), ApiError> {
        let AuditPage {
            after,
            filter,
            limit,
            documents,
        } = page.clone();
        let key = format!(
            "{tenant}|{:?}|{:?}|{:?}|{:?}|{:?}|{after}|{limit}|{documents:?}",
            filter.aggregate_type, filter.aggregate_id, filter.actor, filter.from, filter.to
        );
        self.audit
            .get(key, need, now, || {
                let read = read.clone();
                let tenant = tenant.clone();
                Box::pin(async move {
                    read.audit_entries(&tenant, after, &filter, limit, documents)
                        .await
                        .map(|entries| Arc::new(entries.into_iter().map(Arc::new).collect()))
                        .map_err(ApiError::from)
                })
            })
            .await
    }

    /// The tenant's workflow `id` as the read model shows it at `need` or
    /// later (the read models are at `now`), read once for every
    /// subscriber that asks.
    pub async fn workflow(
        &self,
        read: &ReadModels,
        tenant: &TenantId,
        id: &str,
        need: Position,
        now: Position,
    ) -> Result<Option<Arc<WorkflowView>>, ApiError> {
        self.workflows
            .of_entity(read, tenant, id, need, now, |read, tenant, id| async move {
                Ok(read.workflow(&tenant, &id).await?.map(Arc::new))
            })
            .await
    }

    /// The tenant's execution `id`, as [`Self::workflow`].
    pub async fn execution(
        &self,
        read: &ReadModels,
        tenant: &TenantId,
        id: &str,
        need: Position,
        now: Position,
    ) -> Result<Option<Arc<ExecutionView>>, ApiError> {
        self.executions
            .of_entity(read, tenant, id, need, now, |read, tenant, id| async move {
                Ok(read.execution(&tenant, &id).await?.map(Arc::new))
            })
            .await
    }

    /// The steps of the tenant's execution `id`, as [`Self::workflow`].
    pub async fn execution_steps(
        &self,
        read: &ReadModels,
        tenant: &TenantId,
        id: &str,
        need: Position,
        now: Position,
    ) -> Result<Arc<Vec<ExecutionStepView>>, ApiError> {
        self.steps
            .of_entity(read, tenant, id, need, now, |read, tenant, id| async move {
                Ok(Arc::new(
                    read.execution_steps(&tenant, &[id], Documents::Included)
                        .await?,
                ))
            })
            .await
    }
}

impl AppState {
    /// Waits, within the configured bound, until the read models reach
    /// `position`. Returns false (and logs) on a timeout or a fault, so that
    /// a committed mutation still answers.
    ///
    /// It waits on [`Self::projected`], which one task moves forward with
    /// one read of the checkpoints per projector batch: however many
    /// mutations and subscriptions wait at once, none of them reads the
    /// checkpoints itself, and each wakes as soon as that read shows its
    /// position applied.
    pub async fn wait_for(&self, position: Position) -> bool {
        let mut projected = self.projected.clone();
        let reached = tokio::time::timeout(self.limits.consistency_wait, async {
            projected
                .wait_for(|applied| *applied >= position)
                .await
                .map(|_| ())
        })
        .await;
        match reached {
            Ok(Ok(_)) => true,
            Ok(Err(_)) => {
                tracing::warn!(%position, "the read models' follower stopped before a mutation's position was applied");
                false
            }
            Err(_) => {
                tracing::warn!(%position, "the read models did not reach a mutation's position in time");
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
