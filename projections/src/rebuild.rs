//! Rebuilding a read model from position zero, while the service keeps
//! serving and writing.
//!
//! The projection is replayed into shadow tables (`<table>__rebuild`), batch
//! by batch, without touching the live tables. Then one transaction locks the
//! projection's checkpoint row (which the live projector locks for every
//! batch, so it pauses), applies the events that arrived meanwhile to the
//! shadow, drops the live tables, renames the shadow tables into their place
//! and moves the checkpoint. Readers see the old tables or the new ones,
//! never a mix.

use std::time::{Duration, Instant};

use toolhub_eventstore::{Db, EventStore, Position, StoreError};

use crate::projection::{Projection, Tables, SHADOW_SUFFIX};
use crate::runner::{read_checkpoint, write_checkpoint};
use crate::sql::{fetch, Arg, Conn};

/// What a rebuild did.
#[derive(Debug, Clone)]
pub struct RebuildSummary {
    /// The projection rebuilt.
    pub projection: &'static str,
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
    mut progress: impl FnMut(u64),
) -> Result<RebuildSummary, StoreError> {
    let started = Instant::now();
    create_shadow_tables(store.db(), projection).await?;
    let shadow = Tables::shadow();
    let mut checkpoint = Position::ZERO;
    let mut done = 0u64;
    loop {
        let events = store.read_after(checkpoint, batch_size).await?;
        let Some(last) = events.last().map(|e| e.position) else {
            break;
        };
        apply_in_transaction(store.db(), projection, &shadow, &events).await?;
        checkpoint = last;
        done += events.len() as u64;
        progress(done);
    }
    let (checkpoint, tail) = swap(store, projection, checkpoint, batch_size).await?;
    done += tail;
    progress(done);
    Ok(RebuildSummary {
        projection: projection.name(),
        events: done,
        elapsed: started.elapsed(),
        checkpoint,
    })
}

async fn apply_in_transaction(
    db: &Db,
    projection: &dyn Projection,
    tables: &Tables,
    events: &[toolhub_eventstore::RecordedEvent],
) -> Result<(), StoreError> {
    match db {
        Db::Postgres(pool) => {
            let mut tx = pool.begin().await?;
            projection
                .apply(&mut Conn::Pg(&mut tx), tables, events)
                .await?;
            tx.commit().await?;
        }
        Db::Sqlite(pool) => {
            let mut conn = pool.acquire().await?;
            let mut tx = sqlx::Connection::begin_with(&mut *conn, "BEGIN IMMEDIATE").await?;
            projection
                .apply(&mut Conn::Lite(&mut tx), tables, events)
                .await?;
            tx.commit().await?;
        }
    }
    Ok(())
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

/// Catches the shadow tables up and swaps them in, in one transaction that
/// holds the checkpoint row. Returns the new checkpoint and how many events
/// the catch-up applied.
async fn swap(
    store: &EventStore,
    projection: &dyn Projection,
    mut checkpoint: Position,
    batch_size: u32,
) -> Result<(Position, u64), StoreError> {
    let name = projection.name();
    let shadow = Tables::shadow();
    let mut tail = 0u64;
    match store.db() {
        Db::Postgres(pool) => {
            let mut tx = pool.begin().await?;
            {
                let mut conn = Conn::Pg(&mut tx);
                // Pauses the live projector until this commits.
                read_checkpoint(&mut conn, name, true).await?;
                loop {
                    let events = store.read_after(checkpoint, batch_size).await?;
                    let Some(last) = events.last().map(|e| e.position) else {
                        break;
                    };
                    projection.apply(&mut conn, &shadow, &events).await?;
                    checkpoint = last;
                    tail += events.len() as u64;
                }
                for table in projection.tables() {
                    let shadow_table = format!("{table}{SHADOW_SUFFIX}");
                    let indexes = conn
                        .fetch(
                            "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema() AND tablename = $1",
                            &[Arg::from(shadow_table.as_str())],
                        )
                        .await?;
                    conn.exec(&format!("DROP TABLE {table}"), &[]).await?;
                    conn.exec(
                        &format!("ALTER TABLE {shadow_table} RENAME TO {table}"),
                        &[],
                    )
                    .await?;
                    for index in indexes {
                        let index = index.text("indexname")?;
                        let renamed = index.replacen(SHADOW_SUFFIX, "", 1);
                        if renamed != index {
                            conn.exec(&format!("ALTER INDEX {index} RENAME TO {renamed}"), &[])
                                .await?;
                        }
                    }
                }
                write_checkpoint(&mut conn, name, checkpoint).await?;
            }
            tx.commit().await?;
        }
        Db::Sqlite(pool) => {
            let mut raw = pool.acquire().await?;
            let mut tx = sqlx::Connection::begin_with(&mut *raw, "BEGIN IMMEDIATE").await?;
            loop {
                // Read on the connection that holds the write lock: the
                // writers waiting for it may hold every other connection.
                let events = store.read_after_on(&mut tx, checkpoint, batch_size).await?;
                let Some(last) = events.last().map(|e| e.position) else {
                    break;
                };
                projection
                    .apply(&mut Conn::Lite(&mut tx), &shadow, &events)
                    .await?;
                checkpoint = last;
                tail += events.len() as u64;
            }
            {
                let mut conn = Conn::Lite(&mut tx);
                for table in projection.tables() {
                    let shadow_table = format!("{table}{SHADOW_SUFFIX}");
                    let indexes = conn
                        .fetch(
                            "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = $1 AND sql IS NOT NULL",
                            &[Arg::from(*table)],
                        )
                        .await?;
                    conn.exec(&format!("DROP TABLE {table}"), &[]).await?;
                    conn.exec(
                        &format!("ALTER TABLE {shadow_table} RENAME TO {table}"),
                        &[],
                    )
                    .await?;
                    // The live table's indexes went with it; build them again
                    // on the renamed table, under their own names.
                    for index in indexes {
                        conn.exec(&index.text("sql")?, &[]).await?;
                    }
                }
                read_checkpoint(&mut conn, name, false).await?;
                write_checkpoint(&mut conn, name, checkpoint).await?;
            }
            tx.commit().await?;
        }
    }
    Ok((checkpoint, tail))
}
