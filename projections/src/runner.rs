//! The projector runner: one task per projection, each consuming the global
//! log from its checkpoint in commit-safe batches and committing its
//! read-model writes together with its new checkpoint.
//!
//! Leadership: on PostgreSQL each projection takes a session-level advisory
//! lock on a dedicated connection and runs its batches on that same
//! connection, so a leader whose connection dies loses the lock and its
//! open transaction at once, and a standby (another replica) takes over. On
//! SQLite, which has one process, an in-process registry plays the lock.
//!
//! A batch that fails is retried one event at a time, so that the event at
//! fault is found and everything before it applied; a projector that cannot
//! get past an event stops there, retrying with a growing pause, and says so
//! ([`crate::stall`]): never a silent skip, never a silent loop.

use std::collections::HashSet;
use std::sync::{Arc, Mutex as StdMutex, OnceLock};
use std::time::Duration;

use sqlx::PgConnection;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use toolhub_eventstore::{Db, EventStore, Position, StoreError};

use crate::projection::{Projection, Tables};
use crate::stall::{backoff, is_transient, StallTracker};
use toolhub_eventstore::sql::{Arg, Conn};

/// Tuning for the runner.
#[derive(Debug, Clone)]
pub struct RunnerOptions {
    /// The most events applied in one transaction.
    pub batch_size: u32,
    /// How often to look for new events when no notification arrives (the
    /// fallback for lost notifications).
    pub poll_interval: Duration,
    /// How often a standby tries to become the leader.
    pub standby_interval: Duration,
    /// PostgreSQL: the `statement_timeout` of a leader's connection, which
    /// runs its batches (a batch's statements are bounded multi-row writes;
    /// a statement that runs longer is a fault to retry, not to wait for).
    pub statement_timeout: Duration,
}

impl Default for RunnerOptions {
    fn default() -> Self {
        Self {
            batch_size: 1_000,
            poll_interval: Duration::from_millis(500),
            standby_interval: Duration::from_millis(500),
            statement_timeout: Duration::from_secs(60),
        }
    }
}

/// Runs projections until stopped.
pub struct ProjectorRunner;

/// A running set of projectors.
pub struct RunnerHandle {
    /// Set to true to stop every projector after its batch.
    stop: watch::Sender<bool>,
    /// The projectors' tasks.
    tasks: Vec<JoinHandle<()>>,
    /// The projections this runner leads now.
    leaders: Arc<StdMutex<HashSet<&'static str>>>,
}

impl ProjectorRunner {
    /// Starts every read model's projector, and the pass that extends the
    /// log's hash chain.
    pub fn start(store: EventStore, options: RunnerOptions) -> RunnerHandle {
        let mut projections = crate::projection::all();
        projections.push(std::sync::Arc::new(crate::chain::ChainProjection));
        Self::start_with(store, projections, options)
    }

    /// Starts the given projections' projectors.
    pub fn start_with(
        store: EventStore,
        projections: Vec<Arc<dyn Projection>>,
        options: RunnerOptions,
    ) -> RunnerHandle {
        let (stop, stopped) = watch::channel(false);
        let leaders = Arc::new(StdMutex::new(HashSet::new()));
        if let Db::Sqlite(_) = store.db() {
            // SQLite has one writer at a time: one task applies each batch
            // to every projection in a single transaction, instead of five
            // transactions queueing for the write lock.
            let task = tokio::spawn(run_sqlite_group(
                store,
                projections,
                options,
                stopped,
                leaders.clone(),
            ));
            return RunnerHandle {
                stop,
                tasks: vec![task],
                leaders,
            };
        }
        let tasks = projections
            .into_iter()
            .map(|projection| {
                tokio::spawn(run_projection(
                    store.clone(),
                    projection,
                    options.clone(),
                    stopped.clone(),
                    leaders.clone(),
                ))
            })
            .collect();
        RunnerHandle {
            stop,
            tasks,
            leaders,
        }
    }
}

impl RunnerHandle {
    /// Stops every projector after its current batch and releases its
    /// leadership.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }

    /// Stops at once, without waiting for the current batches: what a
    /// crashed process does on PostgreSQL, where each leader's connection
    /// (and with it its open transaction and its lock) dies with its task.
    /// On SQLite an aborted task may leave a pooled connection inside a
    /// transaction; use [`stop`](Self::stop) there.
    pub fn abort(self) {
        for task in &self.tasks {
            task.abort();
        }
    }

    /// Whether this runner currently leads the named projection.
    pub fn is_leader(&self, projection: &str) -> bool {
        self.leaders
            .lock()
            .map(|l| l.contains(projection))
            .unwrap_or(false)
    }
}

/// The projections an SQLite process is running, per database file.
fn sqlite_leases() -> &'static StdMutex<HashSet<String>> {
    static LEASES: OnceLock<StdMutex<HashSet<String>>> = OnceLock::new();
    LEASES.get_or_init(|| StdMutex::new(HashSet::new()))
}

/// Held while leading a projection.
pub(crate) enum Leader {
    /// A connection of its own, outside the pool: the advisory lock lives
    /// and dies with it, so a leader that vanishes (a crash, an aborted
    /// task) releases the lock when its socket closes, and no pooled
    /// connection ever carries a stray lock.
    Pg(PgConnection),
    /// Held for its `Drop`, which gives the lease back.
    Lite {
        /// The lease.
        _lease: Lease,
    },
}

/// An SQLite process's claim on a projection, given back when dropped.
pub(crate) struct Lease(String);

impl Drop for Lease {
    fn drop(&mut self) {
        if let Ok(mut leases) = sqlite_leases().lock() {
            leases.remove(&self.0);
        }
    }
}

/// The advisory-lock key of a projection: stable across processes.
pub(crate) fn lock_key(projection: &str) -> i64 {
    // FNV-1a, so that the key does not depend on Rust's hasher.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in format!("toolhub-projection:{projection}").bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash as i64
}

/// Tries once to become the leader of `projection`. On PostgreSQL a
/// standby keeps its connection in `standby` between attempts, rather than
/// opening one per attempt.
pub(crate) async fn try_lead(
    db: &Db,
    projection: &str,
    standby: &mut Option<PgConnection>,
) -> Result<Option<Leader>, StoreError> {
    match db {
        Db::Postgres(pool) => {
            let mut conn = match standby.take() {
                Some(conn) => conn,
                None => pool.acquire().await?.detach(),
            };
            let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                .bind(lock_key(projection))
                .fetch_one(&mut conn)
                .await?;
            if locked {
                Ok(Some(Leader::Pg(conn)))
            } else {
                *standby = Some(conn);
                Ok(None)
            }
        }
        Db::Sqlite(pool) => {
            let lease = format!(
                "{}#{projection}",
                pool.connect_options().get_filename().display()
            );
            let mut leases = sqlite_leases()
                .lock()
                .map_err(|_| StoreError::Corrupt("poisoned lease registry".into()))?;
            if leases.insert(lease.clone()) {
                Ok(Some(Leader::Lite {
                    _lease: Lease(lease),
                }))
            } else {
                Ok(None)
            }
        }
    }
}

async fn run_projection(
    store: EventStore,
    projection: Arc<dyn Projection>,
    options: RunnerOptions,
    mut stopped: watch::Receiver<bool>,
    leaders: Arc<StdMutex<HashSet<&'static str>>>,
) {
    let name = projection.name();
    let mut standby = None;
    'standby: loop {
        if *stopped.borrow() {
            return;
        }
        let mut leader = match try_lead(store.db(), name, &mut standby).await {
            Ok(Some(leader)) => leader,
            Ok(None) => {
                tokio::select! {
                    _ = tokio::time::sleep(options.standby_interval) => continue 'standby,
                    _ = stopped.changed() => return,
                }
            }
            Err(error) => {
                tracing::warn!(%error, projection = name, "could not contend for leadership");
                tokio::select! {
                    _ = tokio::time::sleep(options.standby_interval) => continue 'standby,
                    _ = stopped.changed() => return,
                }
            }
        };
        if let Leader::Pg(conn) = &mut leader {
            // The checkpoint row exists before the first batch, so that no
            // batch writes before it has read the log (an insert would give
            // its transaction an id).
            if let Err(error) = Conn::Pg(conn)
                .exec(
                    "INSERT INTO projector_checkpoints (projection) VALUES ($1) ON CONFLICT (projection) DO NOTHING",
                    &[Arg::from(name)],
                )
                .await
            {
                tracing::warn!(%error, projection = name, "could not create the checkpoint row");
            }
            let timeout = format!(
                "SET statement_timeout = '{}ms'",
                options.statement_timeout.as_millis().max(1)
            );
            if let Err(error) = sqlx::query(&timeout).execute(&mut *conn).await {
                tracing::warn!(%error, projection = name, "could not set the leader's statement timeout");
            }
        }
        if let Ok(mut l) = leaders.lock() {
            l.insert(name);
        }
        tracing::info!(projection = name, "projector is the leader");
        let mut notifications = store.subscribe();
        let mut failures = 0u32;
        let mut stall = StallTracker::new(name);
        // While positive, batches hold one event: after a failed batch, so
        // that every event before the one at fault is applied and the
        // stall names that one exactly.
        let mut careful = 0u32;
        loop {
            if *stopped.borrow() {
                break;
            }
            let size = if careful > 0 { 1 } else { options.batch_size };
            match run_batch(&store, &mut leader, projection.as_ref(), size).await {
                Ok(applied) => {
                    failures = 0;
                    careful = careful.saturating_sub(1);
                    stall.running(store.db()).await;
                    if applied > 0 {
                        store.announce_projected();
                    }
                    if applied >= size as usize {
                        continue;
                    }
                    careful = 0;
                    tokio::select! {
                        _ = notifications.changed() => {}
                        _ = tokio::time::sleep(options.poll_interval) => {}
                        _ = stopped.changed() => {}
                    }
                }
                Err(error) if is_connection_error(&error) => {
                    tracing::warn!(%error, projection = name, "a projector lost its connection");
                    // Give up leadership (the lock goes with the connection)
                    // and contend again.
                    break;
                }
                Err(error) => {
                    failures += 1;
                    if is_transient(&error) {
                        tracing::warn!(%error, projection = name, failures, "a projector batch failed; retrying");
                    } else if careful == 0 && size > 1 {
                        tracing::warn!(%error, projection = name, "a projector batch failed; retrying it event by event");
                        careful = options.batch_size;
                        continue;
                    } else {
                        careful = options.batch_size;
                        stall.stopped(&store, &error).await;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff(failures)) => {}
                        _ = stopped.changed() => {}
                    }
                }
            }
        }
        if let Ok(mut l) = leaders.lock() {
            l.remove(name);
        }
        release(leader).await;
        if *stopped.borrow() {
            return;
        }
        tokio::time::sleep(options.standby_interval).await;
    }
}

/// The SQLite runner: one lease per projection, all held together, and one
/// transaction per batch for all of them.
async fn run_sqlite_group(
    store: EventStore,
    projections: Vec<Arc<dyn Projection>>,
    options: RunnerOptions,
    mut stopped: watch::Receiver<bool>,
    leaders: Arc<StdMutex<HashSet<&'static str>>>,
) {
    let Db::Sqlite(pool) = store.db().clone() else {
        return;
    };
    let names: Vec<&'static str> = projections.iter().map(|p| p.name()).collect();
    loop {
        if *stopped.borrow() {
            return;
        }
        let mut leases = Vec::new();
        for name in &names {
            match try_lead(store.db(), name, &mut None).await {
                Ok(Some(lease)) => leases.push(lease),
                Ok(None) | Err(_) => break,
            }
        }
        if leases.len() < names.len() {
            drop(leases);
            tokio::select! {
                _ = tokio::time::sleep(options.standby_interval) => continue,
                _ = stopped.changed() => return,
            }
        }
        if let Ok(mut l) = leaders.lock() {
            l.extend(names.iter().copied());
        }
        tracing::info!(projections = ?names, "projectors are the leaders");
        let mut notifications = store.subscribe();
        let mut failures = 0u32;
        let mut stalls: Vec<StallTracker> = names.iter().map(|n| StallTracker::new(n)).collect();
        let mut careful = 0u32;
        while !*stopped.borrow() {
            let size = if careful > 0 { 1 } else { options.batch_size };
            match batch_group_on_sqlite(&store, &pool, &projections, size).await {
                Ok(applied) => {
                    failures = 0;
                    careful = careful.saturating_sub(1);
                    for stall in &mut stalls {
                        stall.running(store.db()).await;
                    }
                    if applied >= size as usize {
                        continue;
                    }
                    careful = 0;
                    tokio::select! {
                        _ = notifications.changed() => {}
                        _ = tokio::time::sleep(options.poll_interval) => {}
                        _ = stopped.changed() => {}
                    }
                }
                Err(GroupError { projection, error }) => {
                    failures += 1;
                    if is_transient(&error) {
                        tracing::warn!(%error, failures, "a projector batch failed; retrying");
                    } else if careful == 0 && size > 1 {
                        tracing::warn!(%error, "a projector batch failed; retrying it event by event");
                        careful = options.batch_size;
                        continue;
                    } else {
                        careful = options.batch_size;
                        // The projection at fault, or every one when the
                        // event could not even be read: one transaction
                        // holds them all, so all of them wait.
                        for (stall, name) in stalls.iter_mut().zip(&names) {
                            if projection.is_none_or(|p| p == *name) {
                                stall.stopped(&store, &error).await;
                            }
                        }
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff(failures)) => {}
                        _ = stopped.changed() => {}
                    }
                }
            }
        }
        if let Ok(mut l) = leaders.lock() {
            for name in &names {
                l.remove(name);
            }
        }
        return;
    }
}

/// One batch for several projections on SQLite: the events after the lowest
/// checkpoint, each projection taking those after its own, all in one
/// transaction with the new checkpoints.
/// A failed SQLite group batch, with the projection whose fold failed (none
/// when the log itself could not be read).
struct GroupError {
    /// The projection at fault, if one is.
    projection: Option<&'static str>,
    /// What failed.
    error: StoreError,
}

impl<E: Into<StoreError>> From<E> for GroupError {
    fn from(error: E) -> Self {
        Self {
            projection: None,
            error: error.into(),
        }
    }
}

async fn batch_group_on_sqlite(
    store: &EventStore,
    pool: &sqlx::SqlitePool,
    projections: &[Arc<dyn Projection>],
    batch_size: u32,
) -> Result<usize, GroupError> {
    // Read before taking the write lock: holding it while waiting for a
    // pooled connection could starve the writers that hold the others.
    let mut checkpoints = Vec::with_capacity(projections.len());
    {
        let mut conn = pool.acquire().await?;
        let mut c = Conn::Lite(&mut conn);
        for projection in projections {
            checkpoints.push(read_checkpoint(&mut c, projection.name(), false).await?);
        }
    }
    let Some(lowest) = checkpoints.iter().min().copied() else {
        return Ok(0);
    };
    let events = store.read_after(lowest, batch_size).await?;
    if events.is_empty() {
        return Ok(0);
    }
    let mut conn = pool.acquire().await?;
    // IMMEDIATE takes the write lock up front: a deferred transaction that
    // reads and then writes can deadlock with another writer.
    let mut tx = sqlx::Connection::begin_with(&mut *conn, "BEGIN IMMEDIATE").await?;
    {
        let mut c = Conn::Lite(&mut tx);
        for (projection, checkpoint) in projections.iter().zip(&checkpoints) {
            if read_checkpoint(&mut c, projection.name(), false).await? != *checkpoint {
                // A rebuild swapped tables in meanwhile; start over from the
                // new checkpoints.
                return Ok(events.len());
            }
        }
        for (projection, checkpoint) in projections.iter().zip(&checkpoints) {
            let start = events.partition_point(|e| e.position <= *checkpoint);
            let Some(last) = events.last().map(|e| e.position) else {
                continue;
            };
            if start < events.len() {
                projection
                    .apply(&mut c, &Tables::live(), &events[start..])
                    .await
                    .map_err(|error| GroupError {
                        projection: Some(projection.name()),
                        error,
                    })?;
                write_checkpoint(&mut c, projection.name(), last).await?;
            }
        }
    }
    tx.commit().await?;
    store.announce_projected();
    Ok(events.len())
}

fn is_connection_error(error: &StoreError) -> bool {
    matches!(
        error,
        StoreError::Database(
            sqlx::Error::Io(_)
                | sqlx::Error::PoolClosed
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::Protocol(_)
        )
    )
}

async fn release(leader: Leader) {
    if let Leader::Pg(conn) = leader {
        // Closing the session releases its advisory lock.
        let _ = sqlx::Connection::close(conn).await;
    }
}

/// Reads a projection's checkpoint.
pub(crate) async fn read_checkpoint(
    conn: &mut Conn<'_>,
    projection: &str,
    lock: bool,
) -> Result<Position, StoreError> {
    let sql = if lock {
        "SELECT transaction_id, global_position FROM projector_checkpoints WHERE projection = $1 FOR UPDATE"
    } else {
        "SELECT transaction_id, global_position FROM projector_checkpoints WHERE projection = $1"
    };
    let mut rows = conn.fetch(sql, &[Arg::from(projection)]).await?;
    if rows.is_empty() {
        // The first batch ever: the insert is the only write before the
        // batch's own, and happens once per projection.
        conn.exec(
            "INSERT INTO projector_checkpoints (projection) VALUES ($1) ON CONFLICT (projection) DO NOTHING",
            &[Arg::from(projection)],
        )
        .await?;
        rows = conn.fetch(sql, &[Arg::from(projection)]).await?;
    }
    let row = rows
        .first()
        .ok_or_else(|| StoreError::Corrupt("missing checkpoint".into()))?;
    Ok(Position::new(
        row.int("transaction_id")?.max(0) as u64,
        row.int("global_position")?,
    ))
}

/// Writes a projection's checkpoint.
pub(crate) async fn write_checkpoint(
    conn: &mut Conn<'_>,
    projection: &str,
    position: Position,
) -> Result<(), StoreError> {
    let now = chrono::Utc::now();
    conn.exec(
        "UPDATE projector_checkpoints SET transaction_id = $2, global_position = $3, updated_at = $4 WHERE projection = $1",
        &[
            Arg::from(projection),
            Arg::from(position.transaction.min(i64::MAX as u64) as i64),
            Arg::from(position.global),
            Arg::from(now),
        ],
    )
    .await?;
    Ok(())
}

/// The transaction-level advisory-lock key that makes a projection's batch
/// and a rebuild's swap of its tables exclusive. Distinct from the
/// leadership key, which the leader's session holds for as long as it
/// leads.
pub(crate) fn checkpoint_lock_key(projection: &str) -> i64 {
    lock_key(&format!("checkpoint:{projection}"))
}

/// Applies one batch. On PostgreSQL the batch first takes the projection's
/// transaction-level advisory lock, then reads its checkpoint inside the
/// transaction, so a rebuild's swap and a leader never interleave; neither
/// takes a transaction id, so while the batch reads the log it holds back
/// no commit-safe reader (its own or another projection's, or a
/// `wait_for`). It gets one only at its first write. Returns how many
/// events were applied.
pub(crate) async fn run_batch(
    store: &EventStore,
    leader: &mut Leader,
    projection: &dyn Projection,
    batch_size: u32,
) -> Result<usize, StoreError> {
    match leader {
        Leader::Pg(conn) => {
            let mut tx = sqlx::Connection::begin(conn).await?;
            let applied = {
                let mut c = Conn::Pg(&mut tx);
                c.exec(
                    "SELECT pg_advisory_xact_lock($1)",
                    &[Arg::from(checkpoint_lock_key(projection.name()))],
                )
                .await?;
                apply_next(store, &mut c, projection, batch_size).await?
            };
            tx.commit().await?;
            Ok(applied)
        }
        // SQLite projections run together in `run_sqlite_group`.
        Leader::Lite { .. } => Err(StoreError::Corrupt(
            "an SQLite lease outside the SQLite group runner".into(),
        )),
    }
}

async fn apply_next(
    store: &EventStore,
    conn: &mut Conn<'_>,
    projection: &dyn Projection,
    batch_size: u32,
) -> Result<usize, StoreError> {
    let checkpoint = read_checkpoint(conn, projection.name(), false).await?;
    let events = store.read_after(checkpoint, batch_size).await?;
    let Some(last) = events.last() else {
        return Ok(0);
    };
    let last = last.position;
    projection.apply(conn, &Tables::live(), &events).await?;
    write_checkpoint(conn, projection.name(), last).await?;
    Ok(events.len())
}
