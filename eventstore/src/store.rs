//! The event store handle: connecting, migrating, the global log reader and
//! change notifications.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use cqrs_es::persist::{EventUpcaster, SerializedEvent};
use parking_lot::Mutex;
use serde_json::Value;
use sqlx::postgres::{PgListener, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, SqlitePool};
use tokio::sync::watch;

use crate::error::StoreError;
use crate::metadata::EventMetadata;
use crate::position::Position;
use crate::sql::{exec, fetch, Arg, Conn, Row};

/// The PostgreSQL channel that carries "the log grew" notifications. The
/// payload is the newest position the sender committed.
pub const NOTIFY_CHANNEL: &str = "toolhub_events";

/// The PostgreSQL `NOTIFY` channel on which projectors announce that a read
/// model moved forward.
pub const PROJECTED_CHANNEL: &str = "toolhub_projected";

/// How long a pooled PostgreSQL connection may sit idle before it is
/// checked with a round trip on its way out of the pool.
const CHECK_IDLE_AFTER: Duration = Duration::from_millis(500);

/// The PostgreSQL `NOTIFY` channel that tells the engine's workers an
/// execution needs them now (a start, a stop, a resume). The payload is the
/// execution's id.
pub const WORK_CHANNEL: &str = "toolhub_work";

/// The database behind the store.
#[derive(Clone, Debug)]
pub enum Db {
    /// A PostgreSQL pool (production, several replicas).
    Postgres(PgPool),
    /// An SQLite pool (the embedded default, one process).
    Sqlite(SqlitePool),
}

impl Db {
    /// The backend's name, for logs and errors.
    pub fn backend(&self) -> &'static str {
        match self {
            Self::Postgres(_) => "postgres",
            Self::Sqlite(_) => "sqlite",
        }
    }
}

/// Options for [`open_with`].
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// The most connections the pool keeps open.
    pub max_connections: u32,
    /// How long to wait for a connection before failing a request: a full
    /// pool is an error after this long, never a hang.
    pub acquire_timeout: Duration,
    /// Whether to apply pending migrations while opening.
    pub migrate: bool,
    /// PostgreSQL: the longest a statement on a pooled connection may run
    /// (`statement_timeout`); `None` leaves the server's setting. Sessions
    /// that need another bound (a projector's leader, a rebuild) set their
    /// own (see [`PgSessionSettings`]).
    pub statement_timeout: Option<Duration>,
    /// PostgreSQL: how long a session may sit idle inside a transaction
    /// before the server ends it (`idle_in_transaction_session_timeout`),
    /// releasing its locks and its transaction id; `None` leaves the
    /// server's setting.
    pub idle_in_transaction_timeout: Option<Duration>,
    /// PostgreSQL: how long the server waits on a silent client before it
    /// probes, and gives up, on the connection (TCP keepalives and
    /// `tcp_user_timeout`), so that a vanished host's sessions — and the
    /// advisory locks they hold — end in bounded time; `None` leaves the
    /// server's settings.
    pub dead_peer_timeout: Option<Duration>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            max_connections: 16,
            acquire_timeout: Duration::from_secs(10),
            migrate: true,
            statement_timeout: Some(Duration::from_secs(30)),
            idle_in_transaction_timeout: Some(Duration::from_secs(60)),
            dead_peer_timeout: Some(Duration::from_secs(60)),
        }
    }
}

/// The PostgreSQL session settings a connection of a given role starts
/// with, as `(name, value)` pairs for the startup `options` or for `SET`.
#[derive(Debug, Clone, Default)]
pub struct PgSessionSettings(pub Vec<(&'static str, String)>);

impl PgSessionSettings {
    /// The settings [`StoreOptions`] asks for.
    pub fn from_options(options: &StoreOptions) -> Self {
        let ms = |d: Duration| format!("{}ms", d.as_millis().max(1));
        let mut settings = Vec::new();
        if let Some(d) = options.statement_timeout {
            settings.push(("statement_timeout", ms(d)));
        }
        if let Some(d) = options.idle_in_transaction_timeout {
            settings.push(("idle_in_transaction_session_timeout", ms(d)));
        }
        if let Some(d) = options.dead_peer_timeout {
            // Probe after a third of the budget without traffic, then every
            // tenth, three times; and give up on unacknowledged data after
            // the whole budget. Seconds, the keepalive settings' unit.
            let secs = d.as_secs().max(3);
            settings.push(("tcp_keepalives_idle", (secs / 3).max(1).to_string()));
            settings.push(("tcp_keepalives_interval", (secs / 10).max(1).to_string()));
            settings.push(("tcp_keepalives_count", "3".to_string()));
            settings.push(("tcp_user_timeout", ms(d)));
        }
        Self(settings)
    }
}

/// The event log and everything built directly on it. Cheap to clone.
#[derive(Clone)]
pub struct EventStore {
    /// Shared by every clone, so announcements reach every holder.
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    /// The database.
    pub(crate) db: Db,
    /// Applied in order to every event loaded or read.
    pub(crate) upcasters: Vec<Arc<dyn EventUpcaster>>,
    /// The newest position this process knows was committed, by itself or
    /// (through `LISTEN`) by any other process. Subscribers wake on it.
    head: watch::Sender<Position>,
    /// Positions committed by this process; the notifier task forwards them
    /// to other processes with `NOTIFY`. Kept apart from `head` so that a
    /// notification received is never sent again.
    local_commits: watch::Sender<Position>,
    /// Bumped each time a read model moves forward, in this process or
    /// (through `LISTEN`) in any other. Read-your-writes waits on it.
    projected: watch::Sender<u64>,
    /// Bumps made by this process's projectors, forwarded with `NOTIFY`.
    local_projected: watch::Sender<u64>,
    /// Executions that need a worker now, from this process or (through
    /// `LISTEN`) any other.
    work: tokio::sync::broadcast::Sender<String>,
    /// Whether the `LISTEN` task runs already (started on first subscription).
    listener_started: Mutex<bool>,
    /// Names this store's notifications, so that its listener can ignore
    /// them: it announces its own commits and batches locally already.
    instance: String,
    /// Dropped with the store, which stops the background tasks.
    _alive: watch::Sender<()>,
    /// Closes when the store is dropped: background tasks stop on it.
    alive: watch::Receiver<()>,
}

/// Opens the store at `url` with default options, applying migrations.
///
/// `postgres://…` (or `postgresql://…`) selects PostgreSQL; `sqlite://PATH`,
/// `sqlite:PATH` or `sqlite::memory:` selects SQLite, creating the file if
/// it is missing.
pub async fn open(url: &str) -> Result<EventStore, StoreError> {
    open_with(url, StoreOptions::default()).await
}

/// Opens the store at `url` with `options`.
pub async fn open_with(url: &str, options: StoreOptions) -> Result<EventStore, StoreError> {
    let db = connect(url, &options).await?;
    if options.migrate {
        migrate(&db).await?;
    }
    Ok(EventStore::from_db(db))
}

/// The embedded default database URL for a data directory.
pub fn embedded_url(data_dir: &std::path::Path) -> String {
    format!("sqlite://{}", data_dir.join("toolhub.db").display())
}

async fn connect(url: &str, options: &StoreOptions) -> Result<Db, StoreError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let connect_options = sqlx::postgres::PgConnectOptions::from_str(url).map_err(|_| {
            StoreError::InvalidUrl {
                url: redact_url(url),
            }
        })?;
        // Sent in the startup packet: every connection of the pool (the
        // API's queries and commands, the engine, the listener) has them
        // from its first statement.
        let settings = PgSessionSettings::from_options(options);
        let connect_options = connect_options.options(
            settings
                .0
                .iter()
                .map(|(name, value)| (*name, value.as_str())),
        );
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections)
            .acquire_timeout(options.acquire_timeout)
            // A connection is checked with a round trip before it is handed
            // out only when it has been idle for a while: one just returned
            // by another statement is alive, and checking it would double
            // every statement's round trips. (HikariCP skips its check the
            // same way, for connections used within the last 500 ms.) A
            // connection that died in between fails its statement, which
            // reports `UNAVAILABLE`, and is closed.
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for >= CHECK_IDLE_AFTER {
                        sqlx::Connection::ping(conn).await?;
                    }
                    Ok(true)
                })
            })
            .connect_with(connect_options)
            .await?;
        Ok(Db::Postgres(pool))
    } else if url.starts_with("sqlite:") {
        let memory = url.contains(":memory:");
        let connect_options = SqliteConnectOptions::from_str(url)
            .map_err(|_| StoreError::InvalidUrl {
                url: redact_url(url),
            })?
            .create_if_missing(true)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(30));
        let connect_options = if memory {
            connect_options
        } else {
            if let Some(parent) = std::path::Path::new(connect_options.get_filename()).parent() {
                if !parent.as_os_str().is_empty() {
                    std::fs::create_dir_all(parent)
                        .map_err(|e| StoreError::Database(sqlx::Error::Io(e)))?;
                }
            }
            connect_options
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
        };
        // An in-memory database exists once per connection, so it gets one.
        let max = if memory {
            1
        } else {
            options.max_connections.min(8)
        };
        let pool = SqlitePoolOptions::new()
            .max_connections(max)
            .min_connections(u32::from(memory))
            .idle_timeout(if memory {
                None
            } else {
                Some(Duration::from_secs(600))
            })
            .max_lifetime(if memory {
                None
            } else {
                Some(Duration::from_secs(1800))
            })
            .acquire_timeout(options.acquire_timeout)
            .connect_with(connect_options)
            .await?;
        Ok(Db::Sqlite(pool))
    } else {
        Err(StoreError::InvalidUrl {
            url: redact_url(url),
        })
    }
}

/// Applies the backend's pending migrations.
pub async fn migrate(db: &Db) -> Result<(), StoreError> {
    match db {
        Db::Postgres(pool) => sqlx::migrate!("../migrations/postgres").run(pool).await?,
        Db::Sqlite(pool) => sqlx::migrate!("../migrations/sqlite").run(pool).await?,
    }
    Ok(())
}

/// Query parameters whose values are credentials (libpq's `password` and
/// `sslpassword`, and anything named like a secret or token).
fn is_credential_parameter(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    ["pass", "secret", "token", "pwd"]
        .iter()
        .any(|part| name.contains(part))
}

/// Removes every credential from a database URL before it is shown
/// anywhere: the password in the user information and the values of
/// credential query parameters (`?password=`, `?sslpassword=`). Parsed with
/// the `url` crate; text that does not parse as a URL is not shown at all,
/// since it could hold a password in a shape nobody can recognise.
pub fn redact_url(url: &str) -> String {
    let Ok(mut parsed) = url::Url::parse(url) else {
        return "<an unparsable URL>".to_string();
    };
    if parsed.cannot_be_a_base() && parsed.scheme() != "sqlite" {
        // `scheme:anything`: no structure that says where a credential is.
        return format!("{}:***", parsed.scheme());
    }
    if parsed.password().is_some() {
        // Only fails for URLs that cannot have credentials at all.
        let _ = parsed.set_password(Some("***"));
    }
    let pairs: Vec<(String, String)> = parsed
        .query_pairs()
        .map(|(k, v)| {
            let v = if is_credential_parameter(&k) {
                "***".to_string()
            } else {
                v.into_owned()
            };
            (k.into_owned(), v)
        })
        .collect();
    if !pairs.is_empty() {
        parsed.query_pairs_mut().clear().extend_pairs(pairs);
    }
    parsed
        .as_str()
        .replace("%2A%2A%2A", "***")
        .chars()
        .take(400)
        .collect()
}

/// One row of the log exactly as stored: every column as text, nothing
/// decoded, so that even a row no code can read can be shown.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RawEvent {
    /// Where it is in the log.
    pub position: Position,
    /// The aggregate type column.
    pub aggregate_type: String,
    /// The aggregate id column.
    pub aggregate_id: String,
    /// The sequence column.
    pub sequence: i64,
    /// The event type column.
    pub event_type: String,
    /// The event version column.
    pub event_version: String,
    /// The payload as stored (JSON text), if any.
    pub payload: Option<String>,
    /// The metadata as stored (JSON text), if any.
    pub metadata: Option<String>,
    /// When it was recorded, as the database writes it.
    pub recorded_at: Option<String>,
}

/// One event as read from the global log.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedEvent {
    /// Where the event sits in the global log.
    pub position: Position,
    /// The aggregate's type (`Workflow`, `Execution`, `Secret`, `McpServer`).
    pub aggregate_type: String,
    /// The aggregate's id.
    pub aggregate_id: String,
    /// The event's sequence number within its aggregate, from 1.
    pub sequence: u64,
    /// The stable event type.
    pub event_type: String,
    /// The event version, after upcasting.
    pub event_version: String,
    /// The event's payload, after upcasting.
    pub payload: Value,
    /// Who caused the event and why.
    pub metadata: EventMetadata,
    /// When the event was stored.
    pub recorded_at: DateTime<Utc>,
}

/// Wakes whoever waits for the log to grow. Obtained from
/// [`EventStore::subscribe`].
pub struct Notifications {
    /// The newest announced position.
    rx: watch::Receiver<Position>,
}

impl Notifications {
    /// Waits until a commit newer than the last one seen is announced, and
    /// returns the announced position. Announcements are hints: readers must
    /// still read from their own checkpoint, and must poll as a fallback.
    /// Returns `None` once the store is gone.
    pub async fn changed(&mut self) -> Option<Position> {
        self.rx.changed().await.ok()?;
        Some(*self.rx.borrow_and_update())
    }

    /// The newest announced position.
    pub fn latest(&self) -> Position {
        *self.rx.borrow()
    }
}

impl EventStore {
    /// Wraps an already-connected, already-migrated database.
    pub fn from_db(db: Db) -> Self {
        // No domain event has a second version yet, so nothing needs
        // upcasting; a new event version registers its upcaster here.
        Self::with_upcasters(db, Vec::new())
    }

    /// Wraps a database with an explicit set of upcasters.
    pub fn with_upcasters(db: Db, upcasters: Vec<Arc<dyn EventUpcaster>>) -> Self {
        let (head, _) = watch::channel(Position::ZERO);
        let (local_commits, local_rx) = watch::channel(Position::ZERO);
        let (projected, _) = watch::channel(0u64);
        let (local_projected, local_projected_rx) = watch::channel(0u64);
        let (alive_tx, alive) = watch::channel(());
        let (work, _) = tokio::sync::broadcast::channel(1024);
        let inner = Arc::new(Inner {
            db,
            upcasters,
            head,
            local_commits,
            projected,
            local_projected,
            work,
            listener_started: Mutex::new(false),
            instance: uuid::Uuid::new_v4().simple().to_string(),
            _alive: alive_tx,
            alive,
        });
        if let Db::Postgres(pool) = &inner.db {
            tokio::spawn(notifier(
                pool.clone(),
                NOTIFY_CHANNEL,
                inner.instance.clone(),
                local_rx,
                inner.alive.clone(),
            ));
            tokio::spawn(notifier(
                pool.clone(),
                PROJECTED_CHANNEL,
                inner.instance.clone(),
                local_projected_rx,
                inner.alive.clone(),
            ));
        }
        Self { inner }
    }

    /// A copy of this store that also applies `upcaster` to every event it
    /// loads or reads. Upcasters run in the order they were added.
    pub fn add_upcaster(&self, upcaster: Arc<dyn EventUpcaster>) -> Self {
        let mut upcasters = self.inner.upcasters.clone();
        upcasters.push(upcaster);
        Self::with_upcasters(self.inner.db.clone(), upcasters)
    }

    /// The database behind the store.
    pub fn db(&self) -> &Db {
        &self.inner.db
    }

    /// Checks that the database answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        exec(&self.inner.db, "SELECT 1", &[]).await.map(|_| ())
    }

    /// Announces a local commit to this process's subscribers and, on
    /// PostgreSQL, to every other process.
    pub(crate) fn announce(&self, position: Position) {
        // Always wake, even for a position below the newest one announced:
        // transactions commit out of order, and the one that commits last
        // may be the one a reader is waiting for.
        let raise = |p: &mut Position| *p = (*p).max(position);
        self.inner.head.send_modify(raise);
        self.inner.local_commits.send_modify(raise);
    }

    /// Subscribes to "the log grew" announcements, from this process and, on
    /// PostgreSQL, from every process that shares the database.
    pub fn subscribe(&self) -> Notifications {
        self.ensure_listener();
        Notifications {
            rx: self.inner.head.subscribe(),
        }
    }

    /// Announces that a projector of this process committed a batch: wakes
    /// this process's waiters and, on PostgreSQL, every other process's.
    pub fn announce_projected(&self) {
        let bump = |n: &mut u64| *n = n.wrapping_add(1);
        self.inner.projected.send_modify(bump);
        self.inner.local_projected.send_modify(bump);
    }

    /// Subscribes to "a read model moved forward" announcements, from this
    /// process's projectors and, on PostgreSQL, from every process's. The
    /// value is only a counter: waiters must read the checkpoints, and poll
    /// as a fallback, because announcements are hints.
    pub fn projected(&self) -> watch::Receiver<u64> {
        self.ensure_listener();
        self.inner.projected.subscribe()
    }

    /// Tells the engine's workers, in this process and on PostgreSQL in
    /// every other, that `execution_id` needs them now.
    pub fn announce_work(&self, execution_id: &str) {
        let _ = self.inner.work.send(execution_id.to_string());
        if let Db::Postgres(pool) = &self.inner.db {
            let payload = format!("{} {execution_id}", self.inner.instance);
            let pool = pool.clone();
            tokio::spawn(async move {
                let sent = sqlx::query("SELECT pg_notify($1, $2)")
                    .bind(WORK_CHANNEL)
                    .bind(payload)
                    .execute(&pool)
                    .await;
                if let Err(error) = sent {
                    // Workers poll as a fallback: a lost notification only
                    // delays them.
                    tracing::warn!(%error, "could not send a work notification");
                }
            });
        }
    }

    /// Subscribes to "an execution needs a worker now" announcements. They
    /// are hints: workers poll the queue as a fallback.
    pub fn work(&self) -> tokio::sync::broadcast::Receiver<String> {
        self.ensure_listener();
        self.inner.work.subscribe()
    }

    fn ensure_listener(&self) {
        if let Db::Postgres(pool) = &self.inner.db {
            let mut started = self.inner.listener_started.lock();
            if !*started {
                *started = true;
                tokio::spawn(listener(
                    pool.clone(),
                    self.inner.instance.clone(),
                    self.inner.head.clone(),
                    self.inner.projected.clone(),
                    self.inner.work.clone(),
                    self.inner.alive.clone(),
                ));
            }
        }
    }

    pub(crate) fn upcast(&self, mut event: SerializedEvent) -> SerializedEvent {
        for upcaster in &self.inner.upcasters {
            if upcaster.can_upcast(&event.event_type, &event.event_version) {
                event = upcaster.upcast(event);
            }
        }
        event
    }

    /// Reads up to `limit` events after `checkpoint`, in commit-safe order.
    ///
    /// On PostgreSQL only events whose transaction is older than every
    /// transaction still in progress are returned, ordered by
    /// `(transaction_id, global_position)`: an event that commits late can
    /// never land behind a checkpoint already handed out. On SQLite the rowid
    /// order is the commit order.
    pub async fn read_after(
        &self,
        checkpoint: Position,
        limit: u32,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        match &self.inner.db {
            Db::Postgres(pool) => {
                let mut conn = pool.acquire().await?;
                self.read_after_on(&mut Conn::Pg(&mut conn), checkpoint, limit)
                    .await
            }
            Db::Sqlite(pool) => {
                let mut conn = pool.acquire().await?;
                self.read_after_on(&mut Conn::Lite(&mut conn), checkpoint, limit)
                    .await
            }
        }
    }

    /// [`read_after`](Self::read_after) on a given connection: for a caller
    /// that holds SQLite's write lock in a transaction on it, and must not
    /// wait for another pooled connection (the writers queued behind its
    /// lock may hold them all).
    pub async fn read_after_on(
        &self,
        conn: &mut Conn<'_>,
        checkpoint: Position,
        limit: u32,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        // The one difference between the backends: which rows are safe to
        // read, and the order that is commit order.
        let (after, order) = match conn {
            Conn::Pg(_) => (
                "(transaction_id, global_position) > ($1::text::xid8, $2) \
                 AND transaction_id < pg_snapshot_xmin(pg_current_snapshot())",
                "transaction_id, global_position",
            ),
            Conn::Lite(_) => ("global_position > $2", "global_position"),
        };
        let sql =
            format!("SELECT {EVENT_COLUMNS} FROM events WHERE {after} ORDER BY {order} LIMIT $3");
        let rows = conn
            .fetch(
                &sql,
                &[
                    Arg::from(checkpoint.transaction.to_string()),
                    Arg::from(checkpoint.global),
                    Arg::from(i64::from(limit.max(1))),
                ],
            )
            .await?;
        rows.iter().map(|row| self.recorded(row)).collect()
    }

    /// Every event of one aggregate, in sequence order, decoded and upcast:
    /// what time-travel folds. Includes events committed but not yet past
    /// the commit-safe horizon; callers bound it by position, time or
    /// sequence.
    pub async fn stream(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE aggregate_type = $1 AND aggregate_id = $2 \
             ORDER BY sequence"
        );
        let rows = fetch(
            &self.inner.db,
            &sql,
            &[Arg::from(aggregate_type), Arg::from(aggregate_id)],
        )
        .await?;
        rows.iter().map(|row| self.recorded(row)).collect()
    }

    /// Decodes (and upcasts) one row selected with [`EVENT_COLUMNS`].
    pub(crate) fn recorded(&self, row: &Row) -> Result<RecordedEvent, StoreError> {
        let sequence = row.int("sequence")?;
        let serialized = SerializedEvent::new(
            row.text("aggregate_id")?,
            usize::try_from(sequence).map_err(|_| StoreError::Corrupt("sequence".into()))?,
            row.text("aggregate_type")?,
            row.text("event_type")?,
            row.text("event_version")?,
            row.json("payload")?,
            row.json("metadata")?,
        );
        let event = self.upcast(serialized);
        let metadata: EventMetadata = serde_json::from_value(event.metadata)?;
        Ok(RecordedEvent {
            position: row.position("tx", "global_position")?,
            aggregate_type: event.aggregate_type,
            aggregate_id: event.aggregate_id,
            sequence: event.sequence as u64,
            event_type: event.event_type,
            event_version: event.event_version,
            payload: event.payload,
            metadata,
            recorded_at: row.time("recorded_at")?,
        })
    }

    /// The position of the first event after `checkpoint` a reader may take
    /// now, without decoding it: where a projector that cannot read or apply
    /// its next event is stopped.
    pub async fn position_after(
        &self,
        checkpoint: Position,
    ) -> Result<Option<Position>, StoreError> {
        let (after, order) = match &self.inner.db {
            Db::Postgres(_) => (
                "(transaction_id, global_position) > ($1::text::xid8, $2) \
                 AND transaction_id < pg_snapshot_xmin(pg_current_snapshot())",
                "transaction_id, global_position",
            ),
            Db::Sqlite(_) => ("global_position > $2", "global_position"),
        };
        let sql = format!(
            "SELECT CAST(transaction_id AS TEXT) AS tx, global_position FROM events \
              WHERE {after} ORDER BY {order} LIMIT 1"
        );
        let args = [
            Arg::from(checkpoint.transaction.to_string()),
            Arg::from(checkpoint.global),
        ];
        // SQLite binds `$2` by number when `$1` is unused.
        let rows = fetch(&self.inner.db, &sql, &args).await?;
        rows.first()
            .map(|row| row.position("tx", "global_position"))
            .transpose()
    }

    /// The event at a global position exactly as stored, without decoding
    /// or upcasting it: what an operator looks at when a projector is
    /// stopped at that position (`toolhub-replay event`).
    pub async fn raw_event_at(&self, global_position: i64) -> Result<Option<RawEvent>, StoreError> {
        let sql = "SELECT CAST(transaction_id AS TEXT) AS tx, global_position, aggregate_type, \
                   aggregate_id, sequence, event_type, event_version, \
                   CAST(payload AS TEXT) AS payload, CAST(metadata AS TEXT) AS metadata, \
                   CAST(recorded_at AS TEXT) AS recorded_at \
                   FROM events WHERE global_position = $1";
        let rows = fetch(&self.inner.db, sql, &[Arg::from(global_position)]).await?;
        let Some(row) = rows.first() else {
            return Ok(None);
        };
        Ok(Some(RawEvent {
            position: row.position("tx", "global_position")?,
            aggregate_type: row.text("aggregate_type")?,
            aggregate_id: row.text("aggregate_id")?,
            sequence: row.int("sequence")?,
            event_type: row.text("event_type")?,
            event_version: row.text("event_version")?,
            payload: row.opt_text("payload")?,
            metadata: row.opt_text("metadata")?,
            recorded_at: row.opt_text("recorded_at")?,
        }))
    }

    /// The position of the newest event a reader may take now (the head of
    /// the commit-safe log), or [`Position::ZERO`] for an empty log.
    pub async fn head(&self) -> Result<Position, StoreError> {
        let safe = match &self.inner.db {
            Db::Postgres(_) => "transaction_id < pg_snapshot_xmin(pg_current_snapshot())",
            Db::Sqlite(_) => "1 = 1",
        };
        let sql = format!(
            "SELECT CAST(transaction_id AS TEXT) AS tx, global_position FROM events \
              WHERE {safe} ORDER BY transaction_id DESC, global_position DESC LIMIT 1"
        );
        match fetch(&self.inner.db, &sql, &[]).await?.first() {
            None => Ok(Position::ZERO),
            Some(row) => row.position("tx", "global_position"),
        }
    }
}

/// The columns of the log that [`EventStore::read_after_on`] selects: the
/// transaction id as text (PostgreSQL's `xid8` outgrows `bigint`).
pub(crate) const EVENT_COLUMNS: &str = "CAST(transaction_id AS TEXT) AS tx, global_position, \
     aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata, \
     recorded_at";

/// Forwards this process's announcements to other processes with `NOTIFY`
/// on `channel`, coalescing bursts: while one notification is in flight,
/// later announcements collapse into the next one. Runs outside the command
/// and projector paths so that commits never wait for it (and never contend
/// for PostgreSQL's notification lock).
async fn notifier<T: std::fmt::Display>(
    pool: PgPool,
    channel: &'static str,
    instance: String,
    mut commits: watch::Receiver<T>,
    mut alive: watch::Receiver<()>,
) {
    loop {
        tokio::select! {
            changed = commits.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            _ = alive.changed() => return,
        }
        // `<instance> <value>`: the sender's listener skips its own.
        let payload = format!("{instance} {}", *commits.borrow_and_update());
        let sent = sqlx::query("SELECT pg_notify($1, $2)")
            .bind(channel)
            .bind(payload)
            .execute(&pool)
            .await;
        if let Err(error) = sent {
            // Subscribers poll as a fallback, so a lost notification only
            // delays them.
            tracing::warn!(%error, "could not send the change notification");
        }
    }
}

/// Listens for other processes' commits and projector batches and announces
/// them locally.
async fn listener(
    pool: PgPool,
    instance: String,
    head: watch::Sender<Position>,
    projected: watch::Sender<u64>,
    work: tokio::sync::broadcast::Sender<String>,
    mut alive: watch::Receiver<()>,
) {
    loop {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(l) => l,
            Err(error) => {
                tracing::warn!(%error, "could not listen for change notifications; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    _ = alive.changed() => return,
                }
            }
        };
        if let Err(error) = listener
            .listen_all([NOTIFY_CHANNEL, PROJECTED_CHANNEL, WORK_CHANNEL])
            .await
        {
            tracing::warn!(%error, "could not listen for change notifications; retrying");
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                _ = alive.changed() => return,
            }
        }
        loop {
            tokio::select! {
                received = listener.recv() => match received {
                    Ok(notification) => {
                        let Some((from, value)) = notification.payload().split_once(' ') else {
                            continue;
                        };
                        if from == instance {
                            // Announced locally when it happened.
                            continue;
                        }
                        if notification.channel() == WORK_CHANNEL {
                            let _ = work.send(value.to_string());
                            continue;
                        }
                        if notification.channel() == PROJECTED_CHANNEL {
                            projected.send_modify(|n| *n = n.wrapping_add(1));
                            continue;
                        }
                        let Ok(position) = value.parse::<Position>() else {
                            continue;
                        };
                        // Wake even for an older position: see `announce`.
                        head.send_modify(|p| *p = (*p).max(position));
                    }
                    Err(error) => {
                        tracing::warn!(%error, "change notifications interrupted; reconnecting");
                        break;
                    }
                },
                _ = alive.changed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn a_password_never_survives_redaction() {
        let redacted = redact_url("postgres://app:hunter2@db.example:5432/toolhub");
        assert!(!redacted.contains("hunter2"), "{redacted}");
        assert_eq!(redacted, "postgres://app:***@db.example:5432/toolhub");
    }

    #[test]
    fn a_password_in_the_query_never_survives_redaction() {
        for url in [
            "postgres://db.example/toolhub?user=app&password=hunter2",
            "postgres://db.example/toolhub?sslmode=require&sslpassword=hunter2",
            "postgresql://app@db.example/toolhub?PassWord=hunter2&application_name=x",
            "postgres://app:hunter2@db.example/toolhub?password=hunter2",
            "postgres://app:hunter%32@db.example/toolhub",
        ] {
            let redacted = redact_url(url);
            assert!(!redacted.contains("hunter"), "{url} -> {redacted}");
            assert!(redacted.contains("db.example"), "{url} -> {redacted}");
        }
        assert!(redact_url("postgres://db/x?sslmode=require").contains("sslmode=require"));
    }

    #[test]
    fn text_that_is_not_a_url_is_not_shown() {
        let redacted = redact_url("app:hunter2 at db.example");
        assert!(!redacted.contains("hunter2"), "{redacted}");
    }
}
