//! The read models checked against the log: `toolhub-replay verify`'s
//! shadow rebuild.
//!
//! Every projection is folded again from position zero, by its own code
//! ([`Projection::apply`], as a rebuild replays it), into scratch tables
//! that are temporary tables of one connection (`pg_temp.<table>__verify`
//! on PostgreSQL, `temp.<table>__verify` on SQLite): they are named apart
//! from the live tables, nobody else can see them, and they vanish with the
//! connection, whatever happens. Nothing here writes to the log, to a live
//! read model or to a checkpoint.
//!
//! Each projection is folded up to its live checkpoint, so that a read model
//! that runs behind the log is compared with the log as far as it has read
//! it. Then, one projection at a time, its live tables are held still — on
//! PostgreSQL by the projection's advisory lock (the lock each live batch
//! and a rebuild's swap take, held at session level here, so the live
//! projector pauses until its tables are compared); on SQLite by one read
//! transaction, a snapshot that writers do not disturb — the scratch tables
//! are caught up to the checkpoint seen then, and every table is compared
//! with its scratch twin row by row, in primary-key order, a batch at a
//! time from each side (server-side cursors on PostgreSQL, keyset pages on
//! SQLite), so memory does not grow with the tables. Keys are ordered by
//! their bytes (`COLLATE "C"` on PostgreSQL, SQLite's `BINARY`), which is
//! also how they compare here.
//!
//! Values are compared as the database writes them as text (`::text` on
//! PostgreSQL, `CAST(… AS TEXT)` on SQLite): both sides are the same column
//! types in the same session, so equal values read alike.

use std::cmp::Ordering;
use std::collections::VecDeque;

use sqlx::{PgConnection, SqliteConnection};
use toolhub_eventstore::sql::{Arg, Conn, Row};
use toolhub_eventstore::{Db, EventStore, Position, RecordedEvent, StoreError};

use crate::projection::{Projection, Tables};
use crate::runner::checkpoint_lock_key;

/// How to check.
#[derive(Debug, Clone, Copy)]
pub struct CheckOptions {
    /// How many events are read, and how many rows fetched from each side,
    /// at a time.
    pub batch_size: u32,
    /// How many mismatches are kept per table to show (all are counted).
    pub max_reported: usize,
}

/// Where a check stands, for a progress bar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// This many events have been folded into the scratch tables.
    Replayed(u64),
    /// This many rows (live and rebuilt) have been compared.
    Compared(u64),
}

/// One column that differs in a row both sides have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnDifference {
    /// The column.
    pub column: String,
    /// Its value in the live table, as text (`None` for SQL `NULL`).
    pub live: Option<String>,
    /// Its value in the rebuild.
    pub rebuilt: Option<String>,
}

/// How a row of a live table departs from the rebuild.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Difference {
    /// Both have the row, with different values.
    Values(Vec<ColumnDifference>),
    /// The rebuild has the row; the live table does not.
    Missing,
    /// The live table has a row the rebuild does not.
    Extra,
}

/// A row that does not match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    /// Its primary key, as `column=value, …`.
    pub key: String,
    /// What differs.
    pub difference: Difference,
}

/// What the comparison of one table found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableCheck {
    /// The live table.
    pub table: &'static str,
    /// Rows in the live table.
    pub live_rows: u64,
    /// Rows in the rebuild.
    pub rebuilt_rows: u64,
    /// Rows both have, with different values.
    pub differing: u64,
    /// Rows only the rebuild has.
    pub missing: u64,
    /// Rows only the live table has.
    pub extra: u64,
    /// The first mismatches, in key order, at most
    /// [`CheckOptions::max_reported`].
    pub first: Vec<Mismatch>,
}

impl TableCheck {
    /// Whether the live table equals its rebuild.
    pub fn agrees(&self) -> bool {
        self.differing + self.missing + self.extra == 0
    }

    /// How many rows do not match.
    pub fn mismatches(&self) -> u64 {
        self.differing + self.missing + self.extra
    }
}

/// What the check of one projection found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectionCheck {
    /// The projection.
    pub projection: &'static str,
    /// Its live checkpoint, which the rebuild was folded up to.
    pub checkpoint: Position,
    /// Its tables.
    pub tables: Vec<TableCheck>,
}

/// What [`check_read_models`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelsCheck {
    /// One entry per projection, in the order given.
    pub projections: Vec<ProjectionCheck>,
    /// Events folded into the scratch tables (each counted once).
    pub events: u64,
}

impl ModelsCheck {
    /// Whether every live table equals its rebuild.
    pub fn agrees(&self) -> bool {
        self.tables().all(TableCheck::agrees)
    }

    /// Every table's result.
    pub fn tables(&self) -> impl Iterator<Item = &TableCheck> {
        self.projections.iter().flat_map(|p| p.tables.iter())
    }
}

/// The one connection that owns the scratch tables. Taken out of the pool
/// for good: closing it drops them, and no other user of the pool ever
/// gets a connection that has them.
enum Session {
    Pg(PgConnection),
    Lite(SqliteConnection),
}

impl Session {
    fn conn(&mut self) -> Conn<'_> {
        match self {
            Self::Pg(c) => Conn::Pg(c),
            Self::Lite(c) => Conn::Lite(c),
        }
    }

    fn scratch(&self) -> Tables {
        match self {
            Self::Pg(_) => Tables::scratch("pg_temp"),
            Self::Lite(_) => Tables::scratch("temp"),
        }
    }
}

/// Folds the log into scratch tables with `projections` and compares them
/// with the live tables; see the module's documentation. Reads only, as far
/// as the log, the live read models and the checkpoints are concerned.
pub async fn check_read_models(
    store: &EventStore,
    projections: &[&dyn Projection],
    options: CheckOptions,
    mut progress: impl FnMut(Step),
) -> Result<ModelsCheck, StoreError> {
    let mut session = match store.db() {
        Db::Postgres(pool) => Session::Pg(pool.acquire().await?.detach()),
        Db::Sqlite(pool) => Session::Lite(pool.acquire().await?.detach()),
    };
    let scratch = session.scratch();
    let checked = check_on(
        store,
        &mut session,
        &scratch,
        projections,
        options,
        &mut progress,
    )
    .await;
    // Closing the connection drops its temporary tables anyway; dropping
    // them first gives their space back at once, and says so when it fails.
    let mut dropped = Ok(());
    for table in projections.iter().flat_map(|p| p.tables()) {
        let sql = format!("DROP TABLE IF EXISTS {}", scratch.name(table));
        if let Err(error) = session.conn().exec(&sql, &[]).await {
            dropped = Err(error);
            break;
        }
    }
    match session {
        Session::Pg(c) => {
            let _ = sqlx::Connection::close(c).await;
        }
        Session::Lite(c) => {
            let _ = sqlx::Connection::close(c).await;
        }
    }
    let checked = checked?;
    dropped?;
    Ok(checked)
}

async fn check_on(
    store: &EventStore,
    session: &mut Session,
    scratch: &Tables,
    projections: &[&dyn Projection],
    options: CheckOptions,
    progress: &mut impl FnMut(Step),
) -> Result<ModelsCheck, StoreError> {
    for projection in projections {
        for table in projection.tables() {
            create_scratch_table(session, scratch, table).await?;
        }
    }
    // Where each live read model stands: the first pass folds each up to
    // there, in one reading of the log.
    let mut folded = Vec::with_capacity(projections.len());
    for projection in projections {
        folded.push(checkpoint(&mut session.conn(), projection.name()).await?);
    }
    let end = folded.iter().max().copied().unwrap_or(Position::ZERO);
    let mut events = 0u64;
    let mut after = Position::ZERO;
    while after < end {
        let batch = store.read_after(after, options.batch_size).await?;
        let Some(last) = batch.last().map(|e| e.position) else {
            break;
        };
        for (projection, upto) in projections.iter().zip(&folded) {
            let slice = up_to(&batch, *upto);
            if !slice.is_empty() {
                apply(session, *projection, scratch, slice).await?;
            }
        }
        events += up_to(&batch, end).len() as u64;
        progress(Step::Replayed(events));
        after = last;
    }
    let mut compared = 0u64;
    let mut checks = Vec::with_capacity(projections.len());
    for (projection, from) in projections.iter().zip(folded) {
        let check = match session {
            Session::Pg(c) => {
                // Session level, so that the batches of the catch-up and
                // the cursors' transaction all run under it.
                let key = checkpoint_lock_key(projection.name());
                sqlx::query("SELECT pg_advisory_lock($1)")
                    .bind(key)
                    .execute(&mut *c)
                    .await?;
                let check = check_projection(
                    store,
                    &mut Conn::Pg(&mut *c),
                    scratch,
                    *projection,
                    from,
                    options,
                    &mut events,
                    &mut compared,
                    progress,
                )
                .await;
                if check.is_err() {
                    // The cursors' transaction may be open and failed.
                    let _ = sqlx::query("ROLLBACK").execute(&mut *c).await;
                }
                let unlocked = sqlx::query("SELECT pg_advisory_unlock($1)")
                    .bind(key)
                    .execute(&mut *c)
                    .await;
                let check = check?;
                unlocked?;
                check
            }
            Session::Lite(c) => {
                // A read transaction: the live tables and the checkpoint
                // stay as this first read finds them, while the service
                // keeps writing. The scratch tables are in `temp`, whose
                // writes take no lock on the database file.
                let mut tx = sqlx::Connection::begin(c).await?;
                let check = check_projection(
                    store,
                    &mut Conn::Lite(&mut tx),
                    scratch,
                    *projection,
                    from,
                    options,
                    &mut events,
                    &mut compared,
                    progress,
                )
                .await?;
                tx.commit().await?;
                check
            }
        };
        // This projection's scratch tables are done with.
        for table in projection.tables() {
            session
                .conn()
                .exec(&format!("DROP TABLE {}", scratch.name(table)), &[])
                .await?;
        }
        checks.push(check);
    }
    Ok(ModelsCheck {
        projections: checks,
        events,
    })
}

/// Catches one projection's scratch tables up to its live checkpoint, which
/// the caller holds still, and compares every table.
#[allow(clippy::too_many_arguments)]
async fn check_projection(
    store: &EventStore,
    conn: &mut Conn<'_>,
    scratch: &Tables,
    projection: &dyn Projection,
    from: Position,
    options: CheckOptions,
    events: &mut u64,
    compared: &mut u64,
    progress: &mut impl FnMut(Step),
) -> Result<ProjectionCheck, StoreError> {
    let now = checkpoint(conn, projection.name()).await?;
    if now < from {
        return Err(StoreError::Corrupt(format!(
            "the checkpoint of {} went back from {from} to {now} during the check",
            projection.name()
        )));
    }
    let mut after = from;
    while after < now {
        let batch = store.read_after(after, options.batch_size).await?;
        let Some(last) = batch.last().map(|e| e.position) else {
            break;
        };
        let slice = up_to(&batch, now);
        if !slice.is_empty() {
            projection.apply(conn, scratch, slice).await?;
            *events += slice.len() as u64;
            progress(Step::Replayed(*events));
        }
        after = last;
    }
    let mut tables = Vec::with_capacity(projection.tables().len());
    for table in projection.tables() {
        let check = compare_table(conn, table, &scratch.name(table), options, |rows| {
            progress(Step::Compared(*compared + rows))
        })
        .await?;
        *compared += check.live_rows + check.rebuilt_rows;
        tables.push(check);
    }
    Ok(ProjectionCheck {
        projection: projection.name(),
        checkpoint: now,
        tables,
    })
}

/// The events of `batch` at or before `upto` (a prefix: the batch is in
/// log order).
fn up_to(batch: &[RecordedEvent], upto: Position) -> &[RecordedEvent] {
    let n = batch.partition_point(|e| e.position <= upto);
    &batch[..n]
}

/// Applies `events` to a projection's scratch tables in one transaction.
async fn apply(
    session: &mut Session,
    projection: &dyn Projection,
    scratch: &Tables,
    events: &[RecordedEvent],
) -> Result<(), StoreError> {
    match session {
        Session::Pg(c) => {
            let mut tx = sqlx::Connection::begin(c).await?;
            projection
                .apply(&mut Conn::Pg(&mut tx), scratch, events)
                .await?;
            tx.commit().await?;
        }
        Session::Lite(c) => {
            // Deferred: writes to `temp` take no lock on the database.
            let mut tx = sqlx::Connection::begin(c).await?;
            projection
                .apply(&mut Conn::Lite(&mut tx), scratch, events)
                .await?;
            tx.commit().await?;
        }
    }
    Ok(())
}

/// A projection's live checkpoint, read without a lock and without creating
/// it: a projection that never ran stands at zero.
async fn checkpoint(conn: &mut Conn<'_>, projection: &str) -> Result<Position, StoreError> {
    let rows = conn
        .fetch(
            "SELECT transaction_id, global_position FROM projector_checkpoints \
             WHERE projection = $1",
            &[Arg::from(projection)],
        )
        .await?;
    Ok(match rows.first() {
        Some(row) => Position::new(
            row.int("transaction_id")?.max(0) as u64,
            row.int("global_position")?,
        ),
        None => Position::ZERO,
    })
}

/// Creates the scratch twin of a live table: the same columns, types and
/// primary key (which the projections' upserts need), none of its other
/// indexes.
async fn create_scratch_table(
    session: &mut Session,
    scratch: &Tables,
    table: &str,
) -> Result<(), StoreError> {
    let name = scratch.name(table);
    match session {
        Session::Pg(c) => {
            let mut conn = Conn::Pg(c);
            conn.exec(
                &format!("CREATE TABLE {name} (LIKE {table} INCLUDING ALL)"),
                &[],
            )
            .await?;
            let indexes = conn
                .fetch(
                    "SELECT i.indexrelid::regclass::text AS name FROM pg_index i \
                      WHERE i.indrelid = $1::text::regclass \
                        AND NOT EXISTS (SELECT 1 FROM pg_constraint k \
                                         WHERE k.conrelid = i.indrelid \
                                           AND k.conindid = i.indexrelid)",
                    &[Arg::from(name.as_str())],
                )
                .await?;
            for index in indexes {
                conn.exec(&format!("DROP INDEX {}", index.text("name")?), &[])
                    .await?;
            }
        }
        Session::Lite(c) => {
            let mut conn = Conn::Lite(c);
            let rows = conn
                .fetch(
                    "SELECT sql FROM main.sqlite_master WHERE type = 'table' AND name = $1",
                    &[Arg::from(table)],
                )
                .await?;
            let create = rows
                .first()
                .map(|r| r.text("sql"))
                .transpose()?
                .ok_or_else(|| StoreError::Corrupt(format!("no table {table}")))?;
            // Keep only the column list, as a rebuild does.
            let columns = create
                .find('(')
                .map(|i| &create[i..])
                .ok_or_else(|| StoreError::Corrupt(format!("schema of {table}")))?;
            conn.exec(&format!("CREATE TABLE {name} {columns}"), &[])
                .await?;
        }
    }
    Ok(())
}

/// A column of a live table.
#[derive(Debug, Clone)]
struct Column {
    name: String,
    /// An integer column (keys of this kind are ordered as numbers).
    integer: bool,
    /// Its place in the primary key, from 1; 0 when it is not part of it.
    key: i64,
}

async fn columns(conn: &mut Conn<'_>, table: &str) -> Result<Vec<Column>, StoreError> {
    let pg = matches!(conn, Conn::Pg(_));
    let rows = match conn {
        Conn::Pg(_) => {
            conn.fetch(
                "SELECT a.attname::text AS name, \
                        format_type(a.atttypid, a.atttypmod) AS type, \
                        COALESCE((SELECT k.n FROM unnest(i.indkey) WITH ORDINALITY AS k(attnum, n) \
                                   WHERE k.attnum = a.attnum), 0)::int8 AS key \
                   FROM pg_attribute a \
                   LEFT JOIN pg_index i ON i.indrelid = a.attrelid AND i.indisprimary \
                  WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 AND NOT a.attisdropped \
                  ORDER BY a.attnum",
                &[Arg::from(table)],
            )
            .await?
        }
        Conn::Lite(_) => {
            conn.fetch(
                "SELECT name, type, pk AS key FROM pragma_table_info($1, 'main') ORDER BY cid",
                &[Arg::from(table)],
            )
            .await?
        }
    };
    let columns = rows
        .iter()
        .map(|r| {
            let kind = r.text("type")?.to_ascii_lowercase();
            // SQLite's rule for integer affinity; PostgreSQL's integer types.
            let integer = if pg {
                matches!(kind.as_str(), "bigint" | "integer" | "smallint")
            } else {
                kind.contains("int")
            };
            Ok(Column {
                name: r.text("name")?,
                integer,
                key: r.int("key")?,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    if !columns.iter().any(|c| c.key > 0) {
        return Err(StoreError::Corrupt(format!(
            "{table} has no primary key to compare it by"
        )));
    }
    Ok(columns)
}

/// One part of a primary key, ordered as the queries order it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum KeyPart {
    Int(i64),
    /// Compared by bytes, as `COLLATE "C"` and SQLite's `BINARY` do.
    Text(String),
}

impl std::fmt::Display for KeyPart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Int(n) => write!(f, "{n}"),
            Self::Text(s) => write!(f, "{s}"),
        }
    }
}

impl From<&KeyPart> for Arg {
    fn from(part: &KeyPart) -> Self {
        match part {
            KeyPart::Int(n) => Arg::from(*n),
            KeyPart::Text(s) => Arg::from(s.as_str()),
        }
    }
}

/// A row: its key, and every column's value as text.
struct Record {
    key: Vec<KeyPart>,
    values: Vec<Option<String>>,
}

/// Double-quotes an identifier.
fn quoted(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The shape of the queries that read a table in key order.
struct Shape {
    /// The select list: `k0…` the key, `v0…` every column as text.
    select: String,
    /// The key's columns, in key order.
    keys: Vec<Column>,
    /// Every column, in table order.
    columns: Vec<Column>,
}

impl Shape {
    fn new(conn: &Conn<'_>, columns: Vec<Column>) -> Self {
        let mut keys: Vec<Column> = columns.iter().filter(|c| c.key > 0).cloned().collect();
        keys.sort_by_key(|c| c.key);
        let pg = matches!(conn, Conn::Pg(_));
        let mut select = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            let name = quoted(&key.name);
            select.push(match (pg, key.integer) {
                (true, true) => format!("{name}::int8 AS k{i}"),
                (true, false) => format!("{name}::text AS k{i}"),
                (false, _) => format!("{name} AS k{i}"),
            });
        }
        for (j, column) in columns.iter().enumerate() {
            let name = quoted(&column.name);
            select.push(if pg {
                format!("{name}::text AS v{j}")
            } else {
                format!(
                    "CASE typeof({name}) WHEN 'blob' THEN hex({name}) \
                     ELSE CAST({name} AS TEXT) END AS v{j}"
                )
            });
        }
        Self {
            select: select.join(", "),
            keys,
            columns,
        }
    }

    /// `ORDER BY`'s list: numbers as numbers, everything else by its bytes.
    fn order(&self, pg: bool) -> String {
        self.keys
            .iter()
            .map(|k| {
                let name = quoted(&k.name);
                match (pg, k.integer) {
                    (true, false) => format!("{name}::text COLLATE \"C\""),
                    _ => name,
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn record(&self, row: &Row) -> Result<Record, StoreError> {
        let key = self
            .keys
            .iter()
            .enumerate()
            .map(|(i, k)| {
                let column = format!("k{i}");
                Ok(if k.integer {
                    KeyPart::Int(row.int(&column)?)
                } else {
                    KeyPart::Text(row.text(&column)?)
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let values = (0..self.columns.len())
            .map(|j| row.opt_text(&format!("v{j}")))
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok(Record { key, values })
    }

    fn key_text(&self, key: &[KeyPart]) -> String {
        self.keys
            .iter()
            .zip(key)
            .map(|(k, v)| format!("{}={v}", k.name))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// One side of a comparison, read in key order a batch at a time.
struct Side {
    /// The table.
    table: String,
    /// The cursor's name (PostgreSQL).
    cursor: String,
    /// The last key read (SQLite's keyset pages).
    last: Option<Vec<KeyPart>>,
    /// Rows read and not yet compared.
    buffer: VecDeque<Record>,
    /// Whether the table has been read to its end.
    done: bool,
    /// Rows read so far.
    rows: u64,
}

impl Side {
    fn new(table: String, cursor: String) -> Self {
        Self {
            table,
            cursor,
            last: None,
            buffer: VecDeque::new(),
            done: false,
            rows: 0,
        }
    }

    async fn open(&self, conn: &mut Conn<'_>, shape: &Shape) -> Result<(), StoreError> {
        if let Conn::Pg(_) = conn {
            conn.exec(
                &format!(
                    "DECLARE {} NO SCROLL CURSOR FOR SELECT {} FROM {} ORDER BY {}",
                    self.cursor,
                    shape.select,
                    self.table,
                    shape.order(true)
                ),
                &[],
            )
            .await?;
        }
        Ok(())
    }

    /// Reads the next batch when every row read has been compared.
    async fn fill(
        &mut self,
        conn: &mut Conn<'_>,
        shape: &Shape,
        batch: u32,
    ) -> Result<(), StoreError> {
        if !self.buffer.is_empty() || self.done {
            return Ok(());
        }
        let rows = match conn {
            Conn::Pg(_) => {
                conn.fetch(&format!("FETCH FORWARD {batch} FROM {}", self.cursor), &[])
                    .await?
            }
            Conn::Lite(_) => {
                let (filter, args) = match &self.last {
                    None => (String::new(), Vec::new()),
                    Some(last) => {
                        let columns: Vec<String> =
                            shape.keys.iter().map(|k| quoted(&k.name)).collect();
                        let marks: Vec<String> =
                            (1..=last.len()).map(|i| format!("${i}")).collect();
                        (
                            format!("WHERE ({}) > ({})", columns.join(", "), marks.join(", ")),
                            last.iter().map(Arg::from).collect(),
                        )
                    }
                };
                let sql = format!(
                    "SELECT {} FROM {} {filter} ORDER BY {} LIMIT {batch}",
                    shape.select,
                    self.table,
                    shape.order(false)
                );
                conn.fetch(&sql, &args).await?
            }
        };
        self.done = rows.len() < batch as usize;
        for row in &rows {
            self.buffer.push_back(shape.record(row)?);
        }
        self.rows += rows.len() as u64;
        if let Some(last) = self.buffer.back() {
            self.last = Some(last.key.clone());
        }
        Ok(())
    }
}

/// Compares a live table with its scratch twin, row by row in key order.
/// `progress` gets the number of rows read from both sides.
async fn compare_table(
    conn: &mut Conn<'_>,
    table: &'static str,
    scratch: &str,
    options: CheckOptions,
    mut progress: impl FnMut(u64),
) -> Result<TableCheck, StoreError> {
    let columns = columns(conn, table).await?;
    let shape = Shape::new(conn, columns);
    let batch = options.batch_size.max(1);
    // A cursor's name per table: the statements that fetch from it are
    // prepared and cached by their text, with the shape of its rows.
    let mut live = Side::new(table.to_string(), format!("verify_live_{table}"));
    let mut rebuilt = Side::new(scratch.to_string(), format!("verify_rebuilt_{table}"));
    let pg = matches!(conn, Conn::Pg(_));
    if pg {
        // Cursors live in a transaction; it only reads.
        conn.exec("BEGIN", &[]).await?;
    }
    live.open(conn, &shape).await?;
    rebuilt.open(conn, &shape).await?;
    let mut check = TableCheck {
        table,
        live_rows: 0,
        rebuilt_rows: 0,
        differing: 0,
        missing: 0,
        extra: 0,
        first: Vec::new(),
    };
    let report = |check: &mut TableCheck, key: &[KeyPart], difference: Difference| {
        match difference {
            Difference::Values(_) => check.differing += 1,
            Difference::Missing => check.missing += 1,
            Difference::Extra => check.extra += 1,
        }
        if check.first.len() < options.max_reported {
            check.first.push(Mismatch {
                key: shape.key_text(key),
                difference,
            });
        }
    };
    loop {
        let before = live.rows + rebuilt.rows;
        live.fill(conn, &shape, batch).await?;
        rebuilt.fill(conn, &shape, batch).await?;
        if live.rows + rebuilt.rows != before {
            progress(live.rows + rebuilt.rows);
        }
        let order = match (live.buffer.front(), rebuilt.buffer.front()) {
            (None, None) => break,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some(l), Some(r)) => l.key.cmp(&r.key),
        };
        match order {
            Ordering::Less => {
                let Some(row) = live.buffer.pop_front() else {
                    break;
                };
                report(&mut check, &row.key, Difference::Extra);
            }
            Ordering::Greater => {
                let Some(row) = rebuilt.buffer.pop_front() else {
                    break;
                };
                report(&mut check, &row.key, Difference::Missing);
            }
            Ordering::Equal => {
                let (Some(l), Some(r)) = (live.buffer.pop_front(), rebuilt.buffer.pop_front())
                else {
                    break;
                };
                let differences: Vec<ColumnDifference> = shape
                    .columns
                    .iter()
                    .zip(l.values.into_iter().zip(r.values))
                    .filter(|(_, (a, b))| a != b)
                    .map(|(c, (live, rebuilt))| ColumnDifference {
                        column: c.name.clone(),
                        live,
                        rebuilt,
                    })
                    .collect();
                if !differences.is_empty() {
                    report(&mut check, &l.key, Difference::Values(differences));
                }
            }
        }
    }
    if pg {
        conn.exec(&format!("CLOSE {}", live.cursor), &[]).await?;
        conn.exec(&format!("CLOSE {}", rebuilt.cursor), &[]).await?;
        conn.exec("COMMIT", &[]).await?;
    }
    check.live_rows = live.rows;
    check.rebuilt_rows = rebuilt.rows;
    Ok(check)
}

#[cfg(test)]
mod tests {
    use super::KeyPart;

    #[test]
    fn text_keys_order_by_their_bytes_as_the_queries_do() {
        let mut keys = [
            KeyPart::Text("b".into()),
            KeyPart::Text("B".into()),
            KeyPart::Text("a-b".into()),
            KeyPart::Text("ab".into()),
            KeyPart::Text("é".into()),
        ];
        keys.sort();
        let sorted: Vec<String> = keys.iter().map(ToString::to_string).collect();
        assert_eq!(sorted, ["B", "a-b", "ab", "b", "é"]);
        assert!(KeyPart::Int(9) < KeyPart::Int(10));
    }
}
