//! Subscriptions: projections of the log, tenant-scoped and resumable.
//!
//! Every subscription follows the audit read model from a position. It wakes
//! when the server learns that the read models moved (a commit in this
//! process or, through PostgreSQL `NOTIFY`, in any replica), and also on a
//! timer, because notifications are only hints. Reading by position from the
//! read model is what makes resumption exact: `events(after: p)` yields
//! every event after `p` once, in log order, whoever wrote it.
//!
//! A subscription outlives the database's outages: a read that fails
//! because the database cannot be used just now (`UNAVAILABLE`, `TIMEOUT`)
//! is retried with a growing pause, from the same position, until it
//! succeeds or the server stops; the subscriber sees a pause, then every
//! entry it missed, in order. Any other failure is reported and ends the
//! subscription.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use async_graphql::{Context, InputObject, Subscription, ID};
use futures::{Stream, StreamExt};
use toolhub_domain::{Role, TenantId};
use toolhub_eventstore::Position;

use super::audit::AuditEntry;
use super::executions::{Execution, ExecutionStatus};
use super::scalars::AggregateType;
use super::workflows::Workflow;
use super::{caller, parse_position, state};
use crate::error::ApiError;
use crate::metrics::SubscriptionGuard;
use crate::read::{AuditEntryView, AuditFilter, Documents};
use crate::state::{AppState, AuditPage};

/// How many entries one read of the log takes.
const BATCH: u32 = 200;

/// How often a subscription looks for news without being woken. Wake-ups
/// come from `AppState::projected`, which itself polls the checkpoints, so
/// this is only a last resort; it is long so that idle subscribers cost
/// nothing.
const POLL: Duration = Duration::from_secs(5);

/// The first pause before a read that failed because the database was
/// unavailable is tried again; it doubles up to [`MAX_RETRY_PAUSE`].
const RETRY_PAUSE: Duration = Duration::from_millis(250);

/// The longest pause between tries while the database is unavailable.
const MAX_RETRY_PAUSE: Duration = Duration::from_secs(2);

/// Whether a failed read is worth trying again as it is: the database was
/// unavailable or too slow, which says nothing about the subscription.
fn is_passing(error: &ApiError) -> bool {
    matches!(error, ApiError::Unavailable { .. } | ApiError::Timeout)
}

/// Filters for `events`.
#[derive(InputObject, Default, Clone)]
pub struct EventFilterInput {
    /// Only this kind of entity.
    pub aggregate_type: Option<AggregateType>,
    /// Only this entity.
    pub aggregate_id: Option<ID>,
}

/// How recent an entity a subscription shows must be: as the read models
/// held it at `at` (the last entry the subscriber read) or later; they are
/// at `now`.
#[derive(Clone, Copy)]
struct Need {
    /// The position the entity must include.
    at: Position,
    /// A position the read models have reached.
    now: Position,
}

/// A workflow for a subscriber, read once for all of them (see
/// [`crate::state::Fanout`]).
async fn shared_workflow(
    state: Arc<AppState>,
    tenant: TenantId,
    id: String,
    need: Need,
) -> Result<Option<Workflow>, ApiError> {
    Ok(state
        .fanout
        .workflow(&state.read, &tenant, &id, need.at, need.now)
        .await?
        .map(Workflow::from))
}

/// An execution for a subscriber, read once for all of them.
async fn shared_execution(
    state: Arc<AppState>,
    tenant: TenantId,
    id: String,
    need: Need,
) -> Result<Option<Execution>, ApiError> {
    Ok(state
        .fanout
        .execution(&state.read, &tenant, &id, need.at, need.now)
        .await?
        .map(Execution::from))
}

/// An execution with its steps for a subscriber of that execution, both
/// read once for all of them.
async fn shared_execution_with_steps(
    state: Arc<AppState>,
    tenant: TenantId,
    id: String,
    need: Need,
) -> Result<Option<Execution>, ApiError> {
    let Some(view) = state
        .fanout
        .execution(&state.read, &tenant, &id, need.at, need.now)
        .await?
    else {
        return Ok(None);
    };
    let steps = state
        .fanout
        .execution_steps(&state.read, &tenant, &id, need.at, need.now)
        .await?;
    Ok(Some(Execution::with_steps(view, steps)))
}

/// Follows the tenant's audit entries after a position, in order, in
/// batches; ends when the server shuts down or the read fails.
struct Follower {
    /// The read models and the shared reads.
    state: Arc<AppState>,
    /// The subscriber's tenant: nothing of another is read.
    tenant: TenantId,
    /// Which entries the subscriber asked for.
    filter: AuditFilter,
    /// For a subscription to one entity: its id. Once caught up, its
    /// follower reads the entries of the entity's type, the read every
    /// subscriber of that type shares, and keeps the entity's.
    only: Option<String>,
    /// Whether the entries shown need their payloads.
    documents: Documents,
    /// Whether the last read came back full: there may be many entries
    /// still to read, so they are read for this subscriber's filter alone.
    catching_up: bool,
    /// Where the next read starts: after the last entry delivered, or
    /// after the position the last short read covered.
    after: Position,
    /// Moves when the read models move: the wake-up for the next read.
    projected: tokio::sync::watch::Receiver<Position>,
    /// Ends the stream when the server stops.
    shutdown: tokio::sync::watch::Receiver<bool>,
    /// Whether the log may hold entries this follower has not read: true
    /// after a wake-up or a full batch, false once a read came back short.
    unread: bool,
    /// The pause before the next try after a read failed because the
    /// database was unavailable; reset by a read that succeeds.
    retry_pause: Duration,
    /// Counts the subscription in the metrics while it lives.
    _guard: SubscriptionGuard,
}

impl Follower {
    fn new(state: &Arc<AppState>, tenant: TenantId, filter: AuditFilter, after: Position) -> Self {
        Self {
            state: state.clone(),
            tenant,
            filter,
            only: None,
            documents: Documents::Included,
            catching_up: true,
            after,
            projected: state.projected.clone(),
            shutdown: state.shutdown.clone(),
            unread: true,
            retry_pause: RETRY_PAUSE,
            _guard: SubscriptionGuard::new(&state.metrics.active_subscriptions),
        }
    }

    /// A follower of one entity of `aggregate_type`, which shows the
    /// entity, not the entries.
    fn of_entity(
        state: &Arc<AppState>,
        tenant: TenantId,
        aggregate_type: AggregateType,
        id: String,
        after: Position,
    ) -> Self {
        let filter = AuditFilter {
            aggregate_type: Some(aggregate_type.as_str().to_string()),
            ..AuditFilter::default()
        };
        Self {
            only: Some(id),
            documents: Documents::Skipped,
            ..Self::new(state, tenant, filter, after)
        }
    }

    /// Waits before trying again a read that failed with `error`, when the
    /// failure is one that passes (the database unavailable or too slow):
    /// true then, false at shutdown or for any other failure.
    async fn pause_after(&mut self, error: &ApiError) -> bool {
        if !is_passing(error) {
            return false;
        }
        tracing::debug!(
            code = error.code(),
            pause_ms = self.retry_pause.as_millis() as u64,
            "a subscription's read failed; trying again"
        );
        let pause = self.retry_pause;
        self.retry_pause = (self.retry_pause * 2).min(MAX_RETRY_PAUSE);
        tokio::select! {
            _ = self.shutdown.changed() => false,
            _ = tokio::time::sleep(pause) => !*self.shutdown.borrow(),
        }
    }

    /// Loads what a subscription shows with `load`, as the read models
    /// hold it at the last entry read or later, trying again while the
    /// database is unavailable: `None` at shutdown, an error for any other
    /// failure.
    async fn load_with<T, F, Fut>(
        &mut self,
        load: &F,
        id: &str,
    ) -> Option<Result<Option<T>, ApiError>>
    where
        F: Fn(Arc<AppState>, TenantId, String, Need) -> Fut,
        Fut: std::future::Future<Output = Result<Option<T>, ApiError>>,
    {
        loop {
            let need = Need {
                at: self.after,
                now: *self.projected.borrow(),
            };
            match load(
                self.state.clone(),
                self.tenant.clone(),
                id.to_string(),
                need,
            )
            .await
            {
                Ok(entity) => {
                    self.retry_pause = RETRY_PAUSE;
                    return Some(Ok(entity));
                }
                Err(error) if self.pause_after(&error).await => continue,
                Err(error) if is_passing(&error) => return None,
                Err(error) => return Some(Err(error)),
            }
        }
    }

    /// The next non-empty batch, or `None` at shutdown. A read that fails
    /// because the database is unavailable is tried again; any other error
    /// ends the stream after being reported.
    async fn next_batch(&mut self) -> Option<Result<Vec<Arc<AuditEntryView>>, ApiError>> {
        loop {
            if *self.shutdown.borrow() {
                return None;
            }
            if !self.unread {
                tokio::select! {
                    _ = self.shutdown.changed() => return None,
                    _ = self.projected.changed() => {}
                    _ = tokio::time::sleep(POLL) => {}
                }
                self.unread = true;
                continue;
            }
            // Mark the current position seen before reading: whatever the
            // read models reach after this read started wakes the follower
            // again, so a short read never misses an entry.
            let seen = *self.projected.borrow_and_update();
            let mut filter = self.filter.clone();
            if self.catching_up && self.only.is_some() {
                filter.aggregate_id = self.only.clone();
            }
            let page = AuditPage {
                after: self.after,
                filter,
                limit: BATCH,
                documents: self.documents,
            };
            let batch = self
                .state
                .fanout
                .audit_after(&self.state.read, &self.tenant, &page, seen, seen)
                .await;
            match batch {
                Err(error) if self.pause_after(&error).await => {
                    // Read again from the same position.
                    self.unread = true;
                }
                Err(error) if is_passing(&error) => return None,
                Err(error) => return Some(Err(error)),
                Ok((tag, entries)) => {
                    self.retry_pause = RETRY_PAUSE;
                    // A full batch may have left more behind it; a short one
                    // read everything there was up to its tag.
                    let full = entries.len() >= BATCH as usize;
                    self.unread = full;
                    self.catching_up = full;
                    let last = entries.last().map(|e| e.position);
                    let covered = if full {
                        last
                    } else {
                        Some(last.map_or(tag, |last| last.max(tag)))
                    };
                    if let Some(covered) = covered {
                        self.after = self.after.max(covered);
                    }
                    let kept: Vec<_> = match &self.only {
                        None => entries.as_ref().clone(),
                        Some(id) => entries
                            .iter()
                            .filter(|e| e.aggregate_id == *id)
                            .cloned()
                            .collect(),
                    };
                    if !kept.is_empty() {
                        return Some(Ok(kept));
                    }
                }
            }
        }
    }
}

/// The position a subscription starts after: the given one, or the log's
/// head now (only what happens from here on).
async fn start(state: &AppState, after: Option<String>) -> Result<Position, ApiError> {
    match after {
        Some(text) => parse_position(&text, "after"),
        None => Ok(state.store.head().await?),
    }
}

/// The log's subscriptions.
#[derive(Default)]
pub struct LogSubscription;

#[Subscription]
impl LogSubscription {
    /// The tenant's log from a position (admins): every event after `after`,
    /// once, in order; without `after`, from now on. Resume after a
    /// disconnect by passing the last `position` received.
    async fn events(
        &self,
        ctx: &Context<'_>,
        after: Option<String>,
        filter: Option<EventFilterInput>,
    ) -> async_graphql::Result<impl Stream<Item = async_graphql::Result<AuditEntry>>> {
        let caller = caller(ctx, Role::Admin)?;
        let state = state(ctx)?;
        let after = start(state, after).await?;
        let filter = filter.unwrap_or_default();
        let filter = AuditFilter {
            aggregate_type: filter.aggregate_type.map(|t| t.as_str().to_string()),
            aggregate_id: filter.aggregate_id.map(|id| id.0),
            ..AuditFilter::default()
        };
        let follower = Follower::new(state, caller.tenant.clone(), filter, after);
        let stream = futures::stream::unfold(
            (follower, VecDeque::new(), false),
            |(mut follower, mut buffer, failed)| async move {
                if failed {
                    return None;
                }
                loop {
                    if let Some(entry) = buffer.pop_front() {
                        return Some((Ok(AuditEntry::from(entry)), (follower, buffer, false)));
                    }
                    match follower.next_batch().await? {
                        Ok(entries) => buffer.extend(entries),
                        Err(error) => {
                            return Some((Err(error.into()), (follower, buffer, true)));
                        }
                    }
                }
            },
        );
        Ok(stream)
    }

    /// A workflow, each time it changes (viewers and up).
    async fn workflow_changed(
        &self,
        ctx: &Context<'_>,
        id: ID,
    ) -> async_graphql::Result<impl Stream<Item = async_graphql::Result<Workflow>>> {
        let caller = caller(ctx, Role::Viewer)?;
        let state = state(ctx)?;
        let after = state.store.head().await.map_err(ApiError::from)?;
        if state
            .read
            .workflow(&caller.tenant, &id)
            .await
            .map_err(ApiError::from)?
            .is_none()
        {
            return Err(ApiError::NotFound.into());
        }
        let follower = Follower::of_entity(
            state,
            caller.tenant.clone(),
            AggregateType::Workflow,
            id.0.clone(),
            after,
        );
        Ok(follow_entity(follower, id.0, shared_workflow))
    }

    /// An execution, each time it changes (viewers and up), in log order.
    /// Pass `after` (a position) to resume after a disconnect without
    /// missing a change.
    async fn execution_updated(
        &self,
        ctx: &Context<'_>,
        id: ID,
        after: Option<String>,
    ) -> async_graphql::Result<impl Stream<Item = async_graphql::Result<Execution>>> {
        let caller = caller(ctx, Role::Viewer)?;
        let state = state(ctx)?;
        let after = start(state, after).await?;
        if state
            .read
            .execution(&caller.tenant, &id)
            .await
            .map_err(ApiError::from)?
            .is_none()
        {
            return Err(ApiError::NotFound.into());
        }
        let follower = Follower::of_entity(
            state,
            caller.tenant.clone(),
            AggregateType::Execution,
            id.0.clone(),
            after,
        );
        Ok(follow_entity(follower, id.0, shared_execution_with_steps))
    }

    /// The tenant's executions as they change (viewers and up): each
    /// execution once per change, optionally only those of a workflow or in
    /// a status. Resumable from a position, like `events`.
    async fn executions_changed(
        &self,
        ctx: &Context<'_>,
        filter: Option<ExecutionsChangedFilter>,
        after: Option<String>,
    ) -> async_graphql::Result<impl Stream<Item = async_graphql::Result<Execution>>> {
        let follower = Self::follow_type(ctx, AggregateType::Execution, after).await?;
        let filter = filter.unwrap_or_default();
        let workflow_id = filter.workflow_id.map(|id| id.0);
        let status = filter.status;
        Ok(follow_entities(
            follower,
            shared_execution,
            move |execution: &Execution| {
                workflow_id
                    .as_ref()
                    .is_none_or(|w| *w == execution.view.workflow_id)
                    && status.is_none_or(|s| s.as_str() == execution.view.status)
            },
        ))
    }

    /// The tenant's workflows as they change (viewers and up), each once per
    /// change. Resumable from a position, like `events`.
    async fn workflows_changed(
        &self,
        ctx: &Context<'_>,
        after: Option<String>,
    ) -> async_graphql::Result<impl Stream<Item = async_graphql::Result<Workflow>>> {
        let follower = Self::follow_type(ctx, AggregateType::Workflow, after).await?;
        Ok(follow_entities(follower, shared_workflow, |_| true))
    }
}

/// Filters for `executionsChanged`.
#[derive(InputObject, Default)]
pub struct ExecutionsChangedFilter {
    /// Only executions of this workflow.
    pub workflow_id: Option<ID>,
    /// Only executions that are now in this status.
    pub status: Option<ExecutionStatus>,
}

/// Yields each entity that changed, as the read model shows it, once per
/// batch of the log that changed it (in the order of their last change),
/// keeping those `keep` accepts.
fn follow_entities<T, F, Fut>(
    follower: Follower,
    load: F,
    keep: impl Fn(&T) -> bool + Send + Sync + 'static,
) -> impl Stream<Item = async_graphql::Result<T>>
where
    T: Send + 'static,
    F: Fn(Arc<AppState>, TenantId, String, Need) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Option<T>, ApiError>> + Send,
{
    let load = Arc::new(load);
    let keep = Arc::new(keep);
    futures::stream::unfold(
        (follower, VecDeque::<String>::new(), false),
        move |(mut follower, mut ids, failed)| {
            let load = load.clone();
            let keep = keep.clone();
            async move {
                if failed {
                    return None;
                }
                loop {
                    while let Some(id) = ids.pop_front() {
                        match follower.load_with(load.as_ref(), &id).await? {
                            Ok(Some(entity)) if keep(&entity) => {
                                return Some((Ok(entity), (follower, ids, false)))
                            }
                            Ok(_) => continue,
                            Err(error) => return Some((Err(error.into()), (follower, ids, true))),
                        }
                    }
                    match follower.next_batch().await? {
                        Err(error) => return Some((Err(error.into()), (follower, ids, true))),
                        Ok(entries) => {
                            // Each entity once per batch, where it last changed.
                            let mut seen = std::collections::HashSet::new();
                            let mut order: Vec<String> = Vec::new();
                            for entry in entries.iter().rev() {
                                if seen.insert(entry.aggregate_id.clone()) {
                                    order.push(entry.aggregate_id.clone());
                                }
                            }
                            order.reverse();
                            // The entities' read models may trail the audit log.
                            let _ = follower.state.wait_for(follower.after).await;
                            ids.extend(order);
                        }
                    }
                }
            }
        },
    )
    .boxed()
}

impl LogSubscription {
    /// A follower of one aggregate type's entries for the caller.
    async fn follow_type(
        ctx: &Context<'_>,
        aggregate_type: AggregateType,
        after: Option<String>,
    ) -> async_graphql::Result<Follower> {
        let caller = caller(ctx, Role::Viewer)?;
        let state = state(ctx)?;
        let after = start(state, after).await?;
        let filter = AuditFilter {
            aggregate_type: Some(aggregate_type.as_str().to_string()),
            ..AuditFilter::default()
        };
        Ok(Follower {
            documents: Documents::Skipped,
            ..Follower::new(state, caller.tenant.clone(), filter, after)
        })
    }
}

/// Yields the entity as the read model shows it after each batch of its
/// events.
fn follow_entity<T, F, Fut>(
    follower: Follower,
    id: String,
    load: F,
) -> impl Stream<Item = async_graphql::Result<T>>
where
    T: Send + 'static,
    F: Fn(Arc<AppState>, TenantId, String, Need) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Option<T>, ApiError>> + Send,
{
    let load = Arc::new(load);
    futures::stream::unfold((follower, false), move |(mut follower, failed)| {
        let load = load.clone();
        let id = id.clone();
        async move {
            if failed {
                return None;
            }
            loop {
                match follower.next_batch().await? {
                    Err(error) => return Some((Err(error.into()), (follower, true))),
                    Ok(_) => {
                        // The entity's read model may trail the audit log.
                        let _ = follower.state.wait_for(follower.after).await;
                        match follower.load_with(load.as_ref(), &id).await? {
                            Ok(Some(entity)) => return Some((Ok(entity), (follower, false))),
                            Ok(None) => continue,
                            Err(error) => return Some((Err(error.into()), (follower, true))),
                        }
                    }
                }
            }
        }
    })
    .boxed()
}
