//! Rebuilding read models from position zero, while the service keeps
//! serving and writing.
//!
//! The projections are replayed together — the log is read once, and each
//! batch is applied to every projection — into shadow tables
//! (`<table>__rebuild`), without touching the live tables. On PostgreSQL the
//! shadow tables keep only their primary keys during the replay, each
//! projection applies the batches on a connection of its own, concurrently
//! with the others and with the reading of the next batch, and the
//! secondary indexes are built once the replay is done. Then one
//! transaction locks the projections' checkpoint rows (which the live
//! projectors lock for every batch, so they pause), applies the events that
//! arrived meanwhile to the shadows, drops the live tables, renames the
//! shadow tables (and their indexes) into their place and moves the
//! checkpoints. Readers see the old tables or the new ones, never a mix.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::try_join_all;
use futures::stream::{self, StreamExt, TryStreamExt};
use sqlx::{PgPool, SqlitePool};
use tokio::sync::mpsc;
use toolhub_eventstore::{Db, EventStore, Position, RecordedEvent, StoreError};

use crate::projection::{Projection, Tables, SHADOW_SUFFIX};
use crate::runner::{checkpoint_lock_key, read_checkpoint, write_checkpoint};
use toolhub_eventstore::sql::{fetch, Arg, Conn};

/// What a rebuild did.
#[derive(Debug, Clone)]
pub struct RebuildSummary {
    /// The projections rebuilt.
    pub projections: Vec<&'static str>,
    /// Events replayed.
    pub events: u64,
    /// Wall-clock time.
    pub elapsed: Duration,
    /// The checkpoint the live tables now start from.
    pub checkpoint: Position,
}

impl RebuildSummary {
    /// Events per second.
    pub fn rate(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// How many events the log holds (for a progress bar's length).
pub async fn log_length(store: &EventStore) -> Result<u64, StoreError> {
    let rows = fetch(store.db(), "SELECT count(*) AS n FROM events", &[]).await?;
    Ok(rows
        .first()
        .map(|r| r.int("n"))
        .transpose()?
        .unwrap_or(0)
        .max(0) as u64)
}

/// Rebuilds one projection; `progress` is called after every batch with the
/// number of events replayed so far.
pub async fn rebuild(
    store: &EventStore,
    projection: &dyn Projection,
    batch_size: u32,
    progress: impl FnMut(u64),
) -> Result<RebuildSummary, StoreError> {
    rebuild_many(store, &[projection], batch_size, progress).await
}

/// Rebuilds several projections in one pass over the log.
pub async fn rebuild_many(
    store: &EventStore,
    projections: &[&dyn Projection],
    batch_size: u32,
    mut progress: impl FnMut(u64),
) -> Result<RebuildSummary, StoreError> {
    let started = Instant::now();
    // A fixed order, so that two rebuilds lock checkpoint rows alike.
    let mut projections = projections.to_vec();
    projections.sort_by_key(|p| p.name());
    projections.dedup_by_key(|p| p.name());
    for projection in &projections {
        create_shadow_tables(store.db(), *projection).await?;
    }
    let (checkpoint, mut done) = match store.db() {
        Db::Postgres(pool) => {
            let replayed = replay_pg(store, pool, &projections, batch_size, &mut progress).await?;
            // Before the swap, which pauses the live projectors.
            build_shadow_indexes(pool, &projections).await?;
            replayed
        }
        Db::Sqlite(pool) => {
            replay_sqlite(store, pool, &projections, batch_size, &mut progress).await?
        }
    };
    let (checkpoint, tail) = swap(store, &projections, checkpoint, batch_size).await?;
    done += tail;
    progress(done);
    Ok(RebuildSummary {
        projections: projections.iter().map(|p| p.name()).collect(),
        events: done,
        elapsed: started.elapsed(),
        checkpoint,
    })
}

/// The replay on PostgreSQL. The log is read by a task of its own, a batch
/// ahead, and every projection applies the batches, in log order, on a
/// connection of its own with a transaction per batch; the projections run
/// concurrently, so that the server inserts for several of them while the
/// client decodes the next batch. A rebuild that fails starts over from
/// zero, so the projections need not commit together until the swap.
/// Returns the position of the last event replayed and how many there were.
async fn replay_pg(
    store: &EventStore,
    pool: &PgPool,
    projections: &[&dyn Projection],
    batch_size: u32,
    progress: &mut impl FnMut(u64),
) -> Result<(Position, u64), StoreError> {
    // Connections outside the pool, like the live projectors': the replay
    // holds them throughout and must not starve the pool's other users.
    let mut connections = Vec::with_capacity(projections.len());
    for _ in projections {
        let mut conn = pool.acquire().await?.detach();
        // A rebuild that crashes starts over from zero, so its batches need
        // not wait for the disk; the swap keeps full durability.
        sqlx::query("SET synchronous_commit = off")
            .execute(&mut conn)
            .await?;
        connections.push(conn);
    }
    let (batches, mut read) = mpsc::channel::<Vec<RecordedEvent>>(1);
    let reader = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut checkpoint = Position::ZERO;
            loop {
                let events = store.read_after(checkpoint, batch_size).await?;
                let Some(last) = events.last().map(|e| e.position) else {
                    return Ok::<_, StoreError>(());
                };
                checkpoint = last;
                if batches.send(events).await.is_err() {
                    // The replay stopped; its error is reported there.
                    return Ok(());
                }
            }
        })
    };
    // Stops the reader if the replay fails or is dropped.
    let _reader_guard = AbortOnDrop(reader.abort_handle());
    let applied: Vec<AtomicU64> = projections.iter().map(|_| AtomicU64::new(0)).collect();
    let mut queues = Vec::with_capacity(projections.len());
    let mut appliers = Vec::with_capacity(projections.len());
    for ((projection, mut conn), applied) in projections.iter().zip(connections).zip(&applied) {
        let (queue, mut batches) = mpsc::channel::<Arc<Vec<RecordedEvent>>>(1);
        queues.push(queue);
        appliers.push(async move {
            let shadow = Tables::replay();
            while let Some(events) = batches.recv().await {
                let mut tx = sqlx::Connection::begin(&mut conn).await?;
                projection
                    .apply(&mut Conn::Pg(&mut tx), &shadow, &events)
                    .await?;
                tx.commit().await?;
                applied.fetch_add(events.len() as u64, Ordering::Relaxed);
            }
            // Everything is committed: a connection that fails to say
            // goodbye has lost nothing.
            let _ = sqlx::Connection::close(conn).await;
            Ok::<_, StoreError>(())
        });
    }
    let dispatch = async {
        let mut checkpoint = Position::ZERO;
        let mut done = 0u64;
        while let Some(events) = read.recv().await {
            let Some(last) = events.last().map(|e| e.position) else {
                break;
            };
            let count = events.len() as u64;
            let events = Arc::new(events);
            for queue in &queues {
                if queue.send(events.clone()).await.is_err() {
                    // A projection failed: its error is the one reported.
                    return Ok((checkpoint, done));
                }
            }
            checkpoint = last;
            done += count;
            // Progress is what every projection has committed.
            let everywhere = applied.iter().map(|a| a.load(Ordering::Relaxed)).min();
            progress(everywhere.unwrap_or(done));
        }
        // No more batches: the appliers finish theirs and stop.
        queues.clear();
        Ok::<_, StoreError>((checkpoint, done))
    };
    let ((checkpoint, done), _) = tokio::try_join!(dispatch, try_join_all(appliers))?;
    // The log ran out, or the reader failed: which one?
    match reader.await {
        Ok(result) => result?,
        // The reader panicked (it is aborted only once this returns).
        Err(error) => std::panic::resume_unwind(error.into_panic()),
    }
    progress(done);
    Ok((checkpoint, done))
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The replay on SQLite, which has one writer at a time: each batch is
/// applied to every projection in one transaction.
async fn replay_sqlite(
    store: &EventStore,
    pool: &SqlitePool,
    projections: &[&dyn Projection],
    batch_size: u32,
    progress: &mut impl FnMut(u64),
) -> Result<(Position, u64), StoreError> {
    let shadow = Tables::replay();
    let mut checkpoint = Position::ZERO;
    let mut done = 0u64;
    loop {
        let events = store.read_after(checkpoint, batch_size).await?;
        let Some(last) = events.last().map(|e| e.position) else {
            break;
        };
        let mut conn = pool.acquire().await?;
        let mut tx = sqlx::Connection::begin_with(&mut *conn, "BEGIN IMMEDIATE").await?;
        for projection in projections {
            projection
                .apply(&mut Conn::Lite(&mut tx), &shadow, &events)
                .await?;
        }
        tx.commit().await?;
        checkpoint = last;
        done += events.len() as u64;
        progress(done);
    }
    Ok((checkpoint, done))
}

async fn create_shadow_tables(db: &Db, projection: &dyn Projection) -> Result<(), StoreError> {
    for table in projection.tables() {
        let shadow = format!("{table}{SHADOW_SUFFIX}");
        match db {
            Db::Postgres(pool) => {
                sqlx::query(&format!("DROP TABLE IF EXISTS {shadow}"))
                    .execute(pool)
                    .await?;
                sqlx::query(&format!(
                    "CREATE TABLE {shadow} (LIKE {table} INCLUDING ALL)"
                ))
                .execute(pool)
                .await?;
                // Only the indexes of constraints (the primary key, which the
                // upserts need) stay during the replay: the others are built
                // afterwards, with one sort each, which costs far less than
                // maintaining them row by row.
                for (name, _) in secondary_indexes(pool, &shadow).await? {
                    sqlx::query(&format!("DROP INDEX {name}"))
                        .execute(pool)
                        .await?;
                }
            }
            Db::Sqlite(pool) => {
                sqlx::query(&format!("DROP TABLE IF EXISTS {shadow}"))
                    .execute(pool)
                    .await?;
                let create: String = sqlx::query_scalar(
                    "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?1",
                )
                .bind(table)
                .fetch_one(pool)
                .await?;
                // The stored statement names the table as it was created,
                // or quoted once a rename has rewritten it: keep only the
                // column list.
                let columns = create
                    .find('(')
                    .map(|i| &create[i..])
                    .ok_or_else(|| StoreError::Corrupt(format!("schema of {table}")))?;
                let create = format!("CREATE TABLE {shadow} {columns}");
                sqlx::query(&create).execute(pool).await?;
            }
        }
    }
    Ok(())
}

/// A PostgreSQL table's indexes that back no constraint: their names (quoted
/// where needed) and definitions.
async fn secondary_indexes(
    pool: &PgPool,
    table: &str,
) -> Result<Vec<(String, String)>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid) \
           FROM pg_index i \
          WHERE i.indrelid = $1::text::regclass \
            AND NOT EXISTS (SELECT 1 FROM pg_constraint k \
                             WHERE k.conrelid = i.indrelid AND k.conindid = i.indexrelid) \
          ORDER BY 1",
    )
    .bind(table)
    .fetch_all(pool)
    .await?)
}

/// Builds on the PostgreSQL shadow tables the secondary indexes of their
/// live tables, after the replay, two at a time (each is mostly one sort).
/// They get names of PostgreSQL's choosing; the swap gives them the live
/// indexes' names.
async fn build_shadow_indexes(
    pool: &PgPool,
    projections: &[&dyn Projection],
) -> Result<(), StoreError> {
    let mut statements = Vec::new();
    for projection in projections {
        for table in projection.tables() {
            let shadow = format!("{table}{SHADOW_SUFFIX}");
            for (name, def) in secondary_indexes(pool, table).await? {
                let (unique, shape) = index_shape(&def)
                    .ok_or_else(|| StoreError::Corrupt(format!("definition of index {name}")))?;
                let unique = if unique { "UNIQUE " } else { "" };
                statements.push(format!("CREATE {unique}INDEX ON {shadow}{shape}"));
            }
        }
    }
    stream::iter(statements)
        .map(|sql| async move { sqlx::query(&sql).execute(pool).await })
        .buffer_unordered(2)
        .try_collect::<Vec<_>>()
        .await?;
    Ok(())
}

/// What makes two PostgreSQL index definitions the same index, whatever its
/// name and table: uniqueness and everything from `USING` on.
fn index_shape(indexdef: &str) -> Option<(bool, &str)> {
    let unique = indexdef.starts_with("CREATE UNIQUE INDEX");
    indexdef.find(" USING ").map(|i| (unique, &indexdef[i..]))
}

/// Catches the shadow tables up and swaps them in, in one transaction that
/// holds the checkpoint rows. Returns the new checkpoint and how many events
/// the catch-up applied.
async fn swap(
    store: &EventStore,
    projections: &[&dyn Projection],
    mut checkpoint: Position,
    batch_size: u32,
) -> Result<(Position, u64), StoreError> {
    let shadow = Tables::replay();
    let mut tail = 0u64;
    match store.db() {
        Db::Postgres(pool) => {
            let mut tx = pool.begin().await?;
            {
                let mut conn = Conn::Pg(&mut tx);
                // Pauses the live projectors until this commits: their
                // batches take the same transaction-level advisory locks.
                for projection in projections {
                    conn.exec(
                        "SELECT pg_advisory_xact_lock($1)",
                        &[Arg::from(checkpoint_lock_key(projection.name()))],
                    )
                    .await?;
                    read_checkpoint(&mut conn, projection.name(), true).await?;
                }
                loop {
                    let events = store.read_after(checkpoint, batch_size).await?;
                    let Some(last) = events.last().map(|e| e.position) else {
                        break;
                    };
                    for projection in projections {
                        projection.apply(&mut conn, &shadow, &events).await?;
                    }
                    checkpoint = last;
                    tail += events.len() as u64;
                }
                for projection in projections {
                    for table in projection.tables() {
                        swap_pg_table(&mut conn, table).await?;
                    }
                    write_checkpoint(&mut conn, projection.name(), checkpoint).await?;
                }
            }
            tx.commit().await?;
        }
        Db::Sqlite(pool) => {
            let mut raw = pool.acquire().await?;
            let mut tx = sqlx::Connection::begin_with(&mut *raw, "BEGIN IMMEDIATE").await?;
            loop {
                // Read on the connection that holds the write lock: the
                // writers waiting for it may hold every other connection.
                let events = store
                    .read_after_on(&mut Conn::Lite(&mut tx), checkpoint, batch_size)
                    .await?;
                let Some(last) = events.last().map(|e| e.position) else {
                    break;
                };
                for projection in projections {
                    projection
                        .apply(&mut Conn::Lite(&mut tx), &shadow, &events)
                        .await?;
                }
                checkpoint = last;
                tail += events.len() as u64;
            }
            {
                let mut conn = Conn::Lite(&mut tx);
                for projection in projections {
                    for table in projection.tables() {
                        swap_sqlite_table(&mut conn, table).await?;
                    }
                    read_checkpoint(&mut conn, projection.name(), false).await?;
                    write_checkpoint(&mut conn, projection.name(), checkpoint).await?;
                }
            }
            tx.commit().await?;
        }
    }
    // The checkpoints moved: wake whoever waits for the read models.
    store.announce_projected();
    Ok((checkpoint, tail))
}

/// Replaces a live PostgreSQL table by its shadow, giving the shadow's
/// indexes the live indexes' names, so that later migrations find them.
async fn swap_pg_table(conn: &mut Conn<'_>, table: &str) -> Result<(), StoreError> {
    let shadow_table = format!("{table}{SHADOW_SUFFIX}");
    let indexes = "SELECT indexname, indexdef FROM pg_indexes \
                   WHERE schemaname = current_schema() AND tablename = $1";
    let live = conn.fetch(indexes, &[Arg::from(table)]).await?;
    let shadows = conn
        .fetch(indexes, &[Arg::from(shadow_table.as_str())])
        .await?;
    conn.exec(&format!("DROP TABLE {table}"), &[]).await?;
    conn.exec(
        &format!("ALTER TABLE {shadow_table} RENAME TO {table}"),
        &[],
    )
    .await?;
    let mut renamed = Vec::new();
    for index in &shadows {
        let name = index.text("indexname")?;
        let def = index.text("indexdef")?;
        let target = live.iter().find_map(|l| {
            let (live_name, live_def) = (l.text("indexname").ok()?, l.text("indexdef").ok()?);
            let same =
                index_shape(&live_def).is_some() && index_shape(&live_def) == index_shape(&def);
            (same && !renamed.contains(&live_name)).then_some(live_name)
        });
        let target = target.unwrap_or_else(|| name.replacen(SHADOW_SUFFIX, "", 1));
        if target != name {
            conn.exec(&format!("ALTER INDEX {name} RENAME TO {target}"), &[])
                .await?;
        }
        renamed.push(target);
    }
    Ok(())
}

/// Replaces a live SQLite table by its shadow and builds the live table's
/// indexes again on it, under their own names.
async fn swap_sqlite_table(conn: &mut Conn<'_>, table: &str) -> Result<(), StoreError> {
    let shadow_table = format!("{table}{SHADOW_SUFFIX}");
    let indexes = conn
        .fetch(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = $1 AND sql IS NOT NULL",
            &[Arg::from(table)],
        )
        .await?;
    conn.exec(&format!("DROP TABLE {table}"), &[]).await?;
    conn.exec(
        &format!("ALTER TABLE {shadow_table} RENAME TO {table}"),
        &[],
    )
    .await?;
    for index in indexes {
        conn.exec(&index.text("sql")?, &[]).await?;
    }
    Ok(())
}
