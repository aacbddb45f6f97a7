//! The command bus: load an aggregate, let it decide, append its events.
//!
//! Every write in Toolhub goes through [`CommandBus::execute`]. The bus keeps
//! recently used aggregates in memory, so a command on a long-lived aggregate
//! costs one `INSERT` like a command on a new one. The cache is never trusted
//! blindly: events are appended at the sequence the cached state implies, and
//! the primary key on `(aggregate_type, aggregate_id, sequence)` rejects the
//! append if anyone else got there first, whereupon the bus reloads from the
//! database (latest snapshot plus the events after it) and decides again.

use std::marker::PhantomData;
use std::num::NonZeroUsize;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use cqrs_es::event_sink::EventSink;
use cqrs_es::persist::PersistedEventRepository;
use cqrs_es::{Aggregate, DomainEvent};
use lru::LruCache;
use parking_lot::Mutex;
use postgres_es::PostgresEventRepository;
use sqlite_es::SqliteEventRepository;
use toolhub_domain::{AggregateRoot, CommandTraits, NameChange, TenantId};

mod append;
pub(crate) mod snapshot;

pub use append::Companion;
use append::{AppendError, NameUpdate, NewEvent};

use crate::error::{is_unique_violation, CommandError, ConflictKind, StoreError};
use crate::metadata::CommandContext;
use crate::position::Position;
use crate::store::{Db, EventStore};

/// How many times a retry-safe command is decided again after losing a race.
pub const MAX_RETRIES: u32 = 8;

/// What a committed command produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Committed {
    /// The aggregate's version (its last sequence number) after the command.
    pub version: u64,
    /// The global position of the command's last event, or `None` when the
    /// command was accepted but changed nothing (an idempotent repeat).
    pub position: Option<Position>,
    /// How many events the command appended.
    pub events: usize,
}

/// Tuning for a [`CommandBus`].
#[derive(Debug, Clone, Copy)]
pub struct BusOptions {
    /// How many aggregates the in-memory cache holds.
    pub cache_capacity: usize,
    /// How many bytes of state the cache holds at most, measured as the
    /// JSON of the states (a workflow holds every version's definition);
    /// the least recently used are dropped beyond it, and a state larger
    /// than this is not cached.
    pub cache_bytes: usize,
    /// A snapshot is written each time an aggregate's version crosses a
    /// multiple of this number, so a cold load never folds more than this
    /// many events.
    pub snapshot_every: u64,
}

impl Default for BusOptions {
    fn default() -> Self {
        Self {
            cache_capacity: 10_000,
            cache_bytes: 32 * 1024 * 1024,
            snapshot_every: 100,
        }
    }
}

struct Cached<A> {
    /// The aggregate's state after its last event.
    state: A,
    /// The sequence of that event: where the next append goes.
    version: u64,
    /// The state's size as JSON, or an estimate of it from the events
    /// folded into it.
    bytes: usize,
}

/// The cache: bounded in entries and in bytes.
struct Cache<A> {
    /// The entries, least recently used first out.
    lru: LruCache<String, Cached<A>>,
    /// The sum of the entries' `bytes`.
    bytes: usize,
    /// The most `bytes` may reach.
    budget: usize,
}

impl<A> Cache<A> {
    fn pop(&mut self, id: &str) -> Option<Cached<A>> {
        let cached = self.lru.pop(id)?;
        self.bytes -= cached.bytes;
        Some(cached)
    }

    fn put(&mut self, id: &str, cached: Cached<A>) {
        if cached.bytes > self.budget {
            if let Some(old) = self.lru.pop(id) {
                self.bytes -= old.bytes;
            }
            return;
        }
        self.bytes += cached.bytes;
        if let Some((_, old)) = self.lru.push(id.to_string(), cached) {
            self.bytes -= old.bytes;
        }
        while self.bytes > self.budget {
            match self.lru.pop_lru() {
                Some((_, old)) => self.bytes -= old.bytes,
                None => break,
            }
        }
    }

    fn clear(&mut self) {
        self.lru.clear();
        self.bytes = 0;
    }
}

/// The size of a state as JSON: what the cache counts.
fn weigh<A: serde::Serialize>(state: &A) -> usize {
    serde_json::to_vec(state).map_or(usize::MAX, |json| json.len())
}

enum Repo {
    /// postgres-es, for loading events and snapshots.
    Postgres(PostgresEventRepository),
    /// sqlite-es, for loading events and snapshots.
    Sqlite(SqliteEventRepository),
}

/// Executes the commands of one aggregate type.
pub struct CommandBus<A: AggregateRoot> {
    /// The log the events go to; announces each commit.
    store: EventStore,
    /// Loads aggregates (events and snapshots) from the backend.
    repo: Repo,
    /// Recently used aggregates: a guess, checked by the append's primary key.
    cache: Mutex<Cache<A>>,
    /// Cache size and snapshot interval.
    options: BusOptions,
    /// The aggregate type this bus serves.
    _aggregate: PhantomData<fn() -> A>,
}

/// Where a decision's starting state came from; it decides what a lost race
/// means.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Source {
    /// Loaded from the database just now.
    Fresh,
    /// Taken from the cache, or assumed empty for a creation command: a
    /// conflict may only mean the guess was stale.
    Guessed,
}

impl<A> CommandBus<A>
where
    A: AggregateRoot<Services = ()> + 'static,
    A::Command: CommandTraits + Clone,
{
    /// A bus over `store` with default options.
    pub fn new(store: EventStore) -> Self {
        Self::with_options(store, BusOptions::default())
    }

    /// A bus over `store` with `options`.
    pub fn with_options(store: EventStore, options: BusOptions) -> Self {
        let repo = match store.db() {
            Db::Postgres(pool) => Repo::Postgres(PostgresEventRepository::new(pool.clone())),
            Db::Sqlite(pool) => Repo::Sqlite(SqliteEventRepository::new(pool.clone())),
        };
        let capacity =
            NonZeroUsize::new(options.cache_capacity.max(1)).unwrap_or(NonZeroUsize::MIN);
        Self {
            store,
            repo,
            cache: Mutex::new(Cache {
                lru: LruCache::new(capacity),
                bytes: 0,
                budget: options.cache_bytes,
            }),
            options,
            _aggregate: PhantomData,
        }
    }

    /// The store this bus writes to.
    pub fn store(&self) -> &EventStore {
        &self.store
    }

    /// Executes `command` on the aggregate `id` on behalf of `ctx`.
    pub async fn execute(
        &self,
        id: &str,
        command: A::Command,
        ctx: &CommandContext,
    ) -> Result<Committed, CommandError<A::Error>> {
        self.execute_expecting(id, command, ctx, None).await
    }

    /// Executes `command` only if the aggregate is at `expected_version`
    /// (when given); otherwise answers [`CommandError::Conflict`].
    pub async fn execute_expecting(
        &self,
        id: &str,
        command: A::Command,
        ctx: &CommandContext,
        expected_version: Option<u64>,
    ) -> Result<Committed, CommandError<A::Error>> {
        self.decide_and_append(id, command, ctx, expected_version, None)
            .await
    }

    /// Executes `command` and, in the same commit, `companion`: both are
    /// written or neither is. A command that appends no event writes no
    /// companion either.
    pub async fn execute_with(
        &self,
        id: &str,
        command: A::Command,
        ctx: &CommandContext,
        companion: &Companion,
    ) -> Result<Committed, CommandError<A::Error>> {
        self.decide_and_append(id, command, ctx, None, Some(companion))
            .await
    }

    /// [`CommandBus::execute_expecting`] with a companion write, as
    /// [`CommandBus::execute_with`] has.
    pub async fn execute_expecting_with(
        &self,
        id: &str,
        command: A::Command,
        ctx: &CommandContext,
        expected_version: Option<u64>,
        companion: &Companion,
    ) -> Result<Committed, CommandError<A::Error>> {
        self.decide_and_append(id, command, ctx, expected_version, Some(companion))
            .await
    }

    async fn decide_and_append(
        &self,
        id: &str,
        command: A::Command,
        ctx: &CommandContext,
        expected_version: Option<u64>,
        companion: Option<&Companion>,
    ) -> Result<Committed, CommandError<A::Error>> {
        // Spreads the retries of colliding writers apart.
        let mut backoff = ExponentialBuilder::new()
            .with_jitter()
            .with_min_delay(Duration::from_millis(1))
            .with_max_delay(Duration::from_millis(50))
            .with_max_times(MAX_RETRIES as usize)
            .build();
        let mut force_fresh = false;
        loop {
            let (mut state, version, bytes, source) = match self.take_cached(id) {
                Some(cached) if !force_fresh => (
                    cached.state,
                    cached.version,
                    Some(cached.bytes),
                    Source::Guessed,
                ),
                _ if !force_fresh && command.is_creation() => {
                    (A::default(), 0, Some(0), Source::Guessed)
                }
                _ => {
                    let (state, version) = self.load(id).await?;
                    (state, version, None, Source::Fresh)
                }
            };
            if let Some(owner) = state.tenant() {
                if owner != &ctx.tenant {
                    self.put_cached(id, state, version, bytes);
                    return Err(CommandError::NotFound);
                }
            }
            if let Some(expected) = expected_version {
                if expected != version {
                    if source == Source::Guessed {
                        // The cache may be behind another replica: ask the
                        // database before calling it a conflict.
                        force_fresh = true;
                        continue;
                    }
                    self.put_cached(id, state, version, bytes);
                    return Err(CommandError::Conflict(ConflictKind::ExpectedVersion {
                        expected,
                        actual: version,
                    }));
                }
            }

            let sink: EventSink<A> = EventSink::default();
            let decided = state.handle(command.clone(), &(), &sink).await;
            let events = sink.collect().await;
            if let Err(error) = decided {
                if source == Source::Guessed {
                    // The cached (or assumed empty) state may be behind
                    // another replica; only the real state may reject. The
                    // state is not put back: `handle` may have applied some
                    // events before failing.
                    force_fresh = true;
                    continue;
                }
                return Err(CommandError::Domain(error));
            }
            if events.is_empty() {
                self.put_cached(id, state, version, bytes);
                return Ok(Committed {
                    version,
                    position: None,
                    events: 0,
                });
            }
            if state.tenant() != Some(&ctx.tenant) {
                // A creation command naming another tenant than the caller's.
                return Err(CommandError::NotFound);
            }

            let serialized = serialize::<A>(id, version, &events, ctx)?;
            let added: usize = serialized.iter().map(|e| e.payload.len()).sum();
            match self
                .append(id, &ctx.tenant, &events, serialized, companion)
                .await
            {
                Ok(position) => {
                    let new_version = version + events.len() as u64;
                    self.maybe_snapshot(id, &state, version, new_version);
                    let bytes = bytes.map(|b| b.saturating_add(added));
                    self.put_cached(id, state, new_version, bytes);
                    self.store.announce(position);
                    return Ok(Committed {
                        version: new_version,
                        position: Some(position),
                        events: events.len(),
                    });
                }
                Err(AppendError::NameTaken) => {
                    if source == Source::Guessed {
                        // A cached state may be stale; decide on the real one
                        // before calling the name taken.
                        force_fresh = true;
                        continue;
                    }
                    return Err(CommandError::Conflict(ConflictKind::NameTaken));
                }
                Err(AppendError::Store(StoreError::Database(error)))
                    if is_unique_violation(&error) =>
                {
                    if source == Source::Guessed {
                        force_fresh = true;
                        continue;
                    }
                    let delay = match backoff.next() {
                        Some(delay) if expected_version.is_none() && command.is_retry_safe() => {
                            delay
                        }
                        _ => return Err(CommandError::Conflict(ConflictKind::LostRace)),
                    };
                    tokio::time::sleep(delay).await;
                }
                Err(AppendError::Store(error)) => return Err(CommandError::Store(error)),
            }
        }
    }

    fn take_cached(&self, id: &str) -> Option<Cached<A>> {
        self.cache.lock().pop(id)
    }

    /// Caches `state` at `version`, weighing it unless its weight is known.
    fn put_cached(&self, id: &str, state: A, version: u64, bytes: Option<usize>) {
        // A concurrent command on the same aggregate may have put a newer
        // state back already; never replace it with an older one.
        if self
            .cache
            .lock()
            .lru
            .peek(id)
            .is_some_and(|c| c.version >= version)
        {
            return;
        }
        let bytes = bytes.unwrap_or_else(|| weigh(&state));
        let mut cache = self.cache.lock();
        if cache.lru.peek(id).is_some_and(|c| c.version >= version) {
            return;
        }
        cache.put(
            id,
            Cached {
                state,
                version,
                bytes,
            },
        );
    }

    /// How many aggregates the cache holds, and their bytes.
    pub fn cached(&self) -> (usize, usize) {
        let cache = self.cache.lock();
        (cache.lru.len(), cache.bytes)
    }

    /// The state of `id` as this bus last knew it — from the cache, or
    /// loaded (and cached) when absent. It may be behind another replica's
    /// writes; a command decided on it is checked by the append as usual,
    /// and [`load`](Self::load) reads the database when that matters.
    pub async fn current(&self, id: &str) -> Result<(A, u64), StoreError>
    where
        A: Clone,
    {
        if let Some(cached) = self.cache.lock().lru.get(id) {
            return Ok((cached.state.clone(), cached.version));
        }
        let (state, version) = self.load(id).await?;
        self.put_cached(id, state.clone(), version, None);
        Ok((state, version))
    }

    /// Loads `id` from the database and caches it: for a caller that found
    /// the cached state stale.
    pub async fn refresh(&self, id: &str) -> Result<(A, u64), StoreError>
    where
        A: Clone,
    {
        let (state, version) = self.load(id).await?;
        self.put_cached(id, state.clone(), version, None);
        Ok((state, version))
    }

    /// Drops every cached aggregate (for tests and benchmarks).
    pub fn clear_cache(&self) {
        self.cache.lock().clear();
    }

    /// Loads the current state of `id` from the database: the latest
    /// snapshot, then the events after it. A missing aggregate is the
    /// default state at version 0.
    pub async fn load(&self, id: &str) -> Result<(A, u64), StoreError> {
        let snapshot = match &self.repo {
            Repo::Postgres(repo) => repo.get_snapshot::<A>(id).await?,
            Repo::Sqlite(repo) => repo.get_snapshot::<A>(id).await?,
        };
        let (mut state, version) = match snapshot
            .and_then(|s| snapshot::open::<A>(s.aggregate).map(|state| (state, s.current_sequence)))
        {
            Some((state, sequence)) => (state, sequence as u64),
            // None, or one of another shape of the state: fold from the start.
            None => (A::default(), 0),
        };
        let events = match &self.repo {
            Repo::Postgres(repo) => repo.get_last_events::<A>(id, version as usize).await?,
            Repo::Sqlite(repo) => repo.get_last_events::<A>(id, version as usize).await?,
        };
        let version = self.apply_all(&mut state, version, events, None)?;
        Ok((state, version))
    }

    /// Folds every event of `id` from the first, ignoring snapshots and the
    /// cache, up to `up_to` (a version) when given. This is the reference the
    /// faster paths must agree with, and the basis of time-travel.
    pub async fn fold(&self, id: &str, up_to: Option<u64>) -> Result<(A, u64), StoreError> {
        let events = match &self.repo {
            Repo::Postgres(repo) => repo.get_events::<A>(id).await?,
            Repo::Sqlite(repo) => repo.get_events::<A>(id).await?,
        };
        let mut state = A::default();
        let version = self.apply_all(&mut state, 0, events, up_to)?;
        Ok((state, version))
    }

    /// Upcasts and applies stored events to `state`, up to version `up_to`
    /// when given; returns the version reached.
    fn apply_all(
        &self,
        state: &mut A,
        mut version: u64,
        events: Vec<cqrs_es::persist::SerializedEvent>,
        up_to: Option<u64>,
    ) -> Result<u64, StoreError> {
        for event in events {
            if up_to.is_some_and(|limit| event.sequence as u64 > limit) {
                break;
            }
            version = event.sequence as u64;
            let event = self.store.upcast(event);
            state.apply(serde_json::from_value(event.payload)?);
        }
        Ok(version)
    }

    fn maybe_snapshot(&self, id: &str, state: &A, old_version: u64, new_version: u64) {
        let every = self.options.snapshot_every;
        if every == 0 || new_version / every == old_version / every {
            return;
        }
        let payload = match snapshot::seal(state) {
            Ok(payload) => payload,
            Err(error) => {
                tracing::warn!(%error, aggregate = A::TYPE, "could not serialise a snapshot");
                return;
            }
        };
        // Events never change, so a snapshot at any version stays true; it
        // is written off the command path and a failure only costs speed.
        let db = self.store.db().clone();
        let id = id.to_string();
        tokio::spawn(async move {
            if let Err(error) =
                snapshot::write(&db, A::TYPE, &id, new_version, every, payload).await
            {
                tracing::warn!(%error, aggregate = A::TYPE, "could not write a snapshot");
            }
        });
    }

    /// Appends events in one statement, so they commit all or nothing, and
    /// returns the position of the last one. Events that claim or release a
    /// unique name are appended in one transaction with the claim.
    async fn append(
        &self,
        id: &str,
        tenant: &TenantId,
        decided: &[A::Event],
        events: Vec<NewEvent>,
        companion: Option<&Companion>,
    ) -> Result<Position, AppendError> {
        let names: Vec<NameUpdate> = decided
            .iter()
            .filter_map(A::name_change)
            .map(|change| NameUpdate {
                tenant: tenant.to_string(),
                aggregate_id: id.to_string(),
                claim: match change {
                    NameChange::Claim(name) | NameChange::Move(name) => Some(name.to_string()),
                    NameChange::Release => None,
                },
                replaces: matches!(change, NameChange::Move(_)),
            })
            .collect();
        append::append(self.store.db(), A::TYPE, events, &names, companion).await
    }
}

fn serialize<A: Aggregate>(
    id: &str,
    version: u64,
    events: &[A::Event],
    ctx: &CommandContext,
) -> Result<Vec<NewEvent>, StoreError> {
    let metadata = serde_json::to_string(&ctx.to_metadata())?;
    events
        .iter()
        .enumerate()
        .map(|(i, event)| {
            Ok(NewEvent {
                aggregate_id: id.to_string(),
                sequence: (version + 1 + i as u64) as i64,
                event_type: event.event_type(),
                event_version: event.event_version(),
                payload: serde_json::to_string(event)?,
                metadata: metadata.clone(),
            })
        })
        .collect()
}
