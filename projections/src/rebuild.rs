//! Rebuilding read models from position zero, while the service keeps
//! serving and writing.
//!
//! The projections are replayed together — the log is read once, and each
//! batch is applied to every projection — into shadow tables
//! (`<table>__rebuild`), without touching the live tables. Then one
//! transaction locks the projections' checkpoint rows (which the live
//! projectors lock for every batch, so they pause), applies the events that
//! arrived meanwhile to the shadows, drops the live tables, renames the
//! shadow tables (and their indexes) into their place and moves the
//! checkpoints. Readers see the old tables or the new ones, never a mix.

use std::time::{Duration, Instant};

use toolhub_eventstore::{Db, EventStore, Position, RecordedEvent, StoreError};

use crate::projection::{Projection, Tables, SHADOW_SUFFIX};
use crate::runner::{read_checkpoint, write_checkpoint};
use crate::sql::{fetch, Arg, Conn};

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
    let mut checkpoint = Position::ZERO;
    let mut done = 0u64;
    loop {
        let events = store.read_after(checkpoint, batch_size).await?;
        let Some(last) = events.last().map(|e| e.position) else {
            break;
        };
        apply_in_transaction(store.db(), &projections, &events).await?;
        checkpoint = last;
        done += events.len() as u64;
        progress(done);
    }
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

async fn apply_in_transaction(
    db: &Db,
    projections: &[&dyn Projection],
    events: &[RecordedEvent],
) -> Result<(), StoreError> {
    let shadow = Tables::shadow();
    match db {
        Db::Postgres(pool) => {
            let mut tx = pool.begin().await?;
            // A rebuild that crashes starts over from zero, so its batches
            // need not wait for the disk; the swap keeps full durability.
            sqlx::query("SET LOCAL synchronous_commit = off")
                .execute(&mut *tx)
                .await?;
            for projection in projections {
                projection
                    .apply(&mut Conn::Pg(&mut tx), &shadow, events)
                    .await?;
            }
            tx.commit().await?;
        }
        Db::Sqlite(pool) => {
            let mut conn = pool.acquire().await?;
            let mut tx = sqlx::Connection::begin_with(&mut *conn, "BEGIN IMMEDIATE").await?;
            for projection in projections {
                projection
                    .apply(&mut Conn::Lite(&mut tx), &shadow, events)
                    .await?;
            }
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
    let shadow = Tables::shadow();
    let mut tail = 0u64;
    match store.db() {
        Db::Postgres(pool) => {
            let mut tx = pool.begin().await?;
            {
                let mut conn = Conn::Pg(&mut tx);
                // Pauses the live projectors until this commits.
                for projection in projections {
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
                let events = store.read_after_on(&mut tx, checkpoint, batch_size).await?;
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
