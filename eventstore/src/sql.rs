//! A thin layer over the two backends, so that every statement is written
//! once — the event log's, the key store's, the projectors' and the read
//! queries' alike: statements are written in PostgreSQL's dialect with `$N`
//! placeholders and `::type` casts ([`sqlite_sql`] rewrites both for SQLite),
//! arguments are a small closed set of types ([`Arg`]), rows are read
//! through one accessor type ([`Row`]), and a transaction on either backend
//! is a [`Tx`].
//!
//! What is genuinely different between the backends stays explicit where it
//! is used: the commit-safe filter of the log reader, advisory locks, and
//! `COPY` exist on PostgreSQL only.
//!
//! # What PostgreSQL cannot hold is escaped
//!
//! PostgreSQL's `text` refuses the NUL character, and its `jsonb` refuses the
//! `\u0000` escape (in values and keys alike). The log keeps whatever was
//! committed (its `json` columns are bound as text, [`Arg::JsonText`]), so a
//! read model must be able to store any event, including one written before
//! commands refused such text or by another writer. Every text and JSON
//! value bound for PostgreSQL — parameters, unnested arrays, `COPY` rows —
//! therefore goes through [`pg_text`] and [`pg_json`], which write each NUL
//! as the six characters `\u0000` (in JSON, inside strings and keys). It is
//! done here, once, so that no read-model write can be refused for it and
//! no projector can stall on it. The escape is visible in the read models
//! (the log keeps the original); lookups bind through the same functions, so
//! an escaped value is found by the value it came from. SQLite holds NUL as
//! it is and needs no escape.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::Value;
use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;
use sqlx::{PgConnection, Row as _, SqliteConnection};

use crate::error::StoreError;
use crate::position::Position;
use crate::store::Db;

/// A statement argument.
#[derive(Debug, Clone, PartialEq)]
pub enum Arg {
    /// Text, or NULL.
    Text(Option<String>),
    /// A 64-bit integer, or NULL.
    Int(Option<i64>),
    /// A boolean, or NULL (an integer on SQLite).
    Bool(Option<bool>),
    /// JSON, or NULL (`jsonb` on PostgreSQL, text on SQLite).
    Json(Option<Value>),
    /// A time, or NULL (`timestamptz` on PostgreSQL, fixed-width RFC 3339
    /// text on SQLite, so that text order is time order).
    Time(Option<DateTime<Utc>>),
    /// Bytes, or NULL (`bytea` on PostgreSQL, a blob on SQLite).
    Bytes(Option<Vec<u8>>),
    /// JSON already serialised, or NULL: bound as text, so that the event
    /// log's `json` columns keep the exact text (PostgreSQL's `jsonb` would
    /// reorder keys and refuse `\u0000`). Statements cast it (`$N::json`)
    /// where the column needs it.
    JsonText(Option<String>),
}

impl From<&str> for Arg {
    fn from(v: &str) -> Self {
        Self::Text(Some(v.to_string()))
    }
}

/// `From<T>` and `From<Option<T>>` for the argument variant that holds `T`.
macro_rules! arg_from {
    ($($ty:ty => $variant:ident),* $(,)?) => {
        $(
            impl From<$ty> for Arg {
                fn from(v: $ty) -> Self {
                    Self::$variant(Some(v))
                }
            }
            impl From<Option<$ty>> for Arg {
                fn from(v: Option<$ty>) -> Self {
                    Self::$variant(v)
                }
            }
        )*
    };
}

/// Unsigned numbers are stored as `bigint`; a value past `i64::MAX` (which
/// no count or version reaches) saturates rather than wraps.
impl From<u64> for Arg {
    fn from(v: u64) -> Self {
        Self::Int(Some(v.min(i64::MAX as u64) as i64))
    }
}

impl From<Option<u64>> for Arg {
    fn from(v: Option<u64>) -> Self {
        Self::Int(v.map(|v| v.min(i64::MAX as u64) as i64))
    }
}

impl From<u32> for Arg {
    fn from(v: u32) -> Self {
        Self::Int(Some(i64::from(v)))
    }
}

arg_from! {
    String => Text,
    i64 => Int,
    bool => Bool,
    Value => Json,
    DateTime<Utc> => Time,
    Vec<u8> => Bytes,
}

/// The SQLite text form of a time: fixed width, so text order is time order.
pub fn sqlite_time(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn parse_time(s: &str) -> Result<DateTime<Utc>, StoreError> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| StoreError::Corrupt(format!("time {s:?}")))
}

/// Rewrites a statement written for PostgreSQL for SQLite: `$N`
/// placeholders and `::type` casts (outside string literals).
///
/// Placeholders that appear in order (`$1, $2, …`) become anonymous `?`,
/// which binds by position; SQLite resolves numbered ones by a linear search
/// per parameter, which makes a multi-row insert with thousands of
/// parameters quadratic. Out-of-order placeholders become `?N`. Casts are
/// dropped: SQLite's columns take the values as they are bound.
pub fn sqlite_sql(sql: &str) -> String {
    let mut anonymous = String::with_capacity(sql.len());
    let mut numbered = String::with_capacity(sql.len());
    let mut in_order = true;
    let mut expected = 1u64;
    let mut in_string = false;
    let mut chars = sql.char_indices().peekable();
    while let Some((i, ch)) = chars.next() {
        if in_string {
            in_string = ch != '\'';
        } else if ch == '\'' {
            in_string = true;
        } else if ch == '$' {
            let digits: String = sql[i + 1..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            if !digits.is_empty() {
                in_order &= digits.parse::<u64>().ok() == Some(expected);
                expected += 1;
                anonymous.push('?');
                numbered.push('?');
                numbered.push_str(&digits);
                for _ in 0..digits.len() {
                    chars.next();
                }
                continue;
            }
        } else if ch == ':' && sql[i + 1..].starts_with(':') {
            // A cast: `::name`, `::name[]`.
            let rest = &sql[i + 2..];
            let name_len = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            let array = rest[name_len..].starts_with("[]");
            let skip = 1 + name_len + if array { 2 } else { 0 };
            for _ in 0..skip {
                chars.next();
            }
            continue;
        }
        anonymous.push(ch);
        numbered.push(ch);
    }
    if in_order {
        anonymous
    } else {
        numbered
    }
}

/// What stands for a NUL character in PostgreSQL text: the JSON escape,
/// spelled out.
pub const PG_NUL_ESCAPE: &str = "\\u0000";

/// `text` as PostgreSQL can hold it: each NUL becomes [`PG_NUL_ESCAPE`].
/// Borrowed, at no cost, when there is none (almost always).
pub fn pg_text(text: &str) -> std::borrow::Cow<'_, str> {
    if text.contains('\0') {
        std::borrow::Cow::Owned(text.replace('\0', PG_NUL_ESCAPE))
    } else {
        std::borrow::Cow::Borrowed(text)
    }
}

/// True when a JSON value holds a NUL in a string or a key.
fn json_has_nul(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(json_has_nul),
        Value::Object(members) => members
            .iter()
            .any(|(k, v)| k.contains('\0') || json_has_nul(v)),
        Value::Null | Value::Bool(_) | Value::Number(_) => false,
    }
}

fn escape_json(value: &mut Value) {
    match value {
        Value::String(s) => {
            if s.contains('\0') {
                *s = s.replace('\0', PG_NUL_ESCAPE);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(escape_json),
        Value::Object(members) => {
            if members.keys().any(|k| k.contains('\0')) {
                let old = std::mem::take(members);
                for (k, v) in old {
                    // Two keys that differ only by a NUL and its spelled-out
                    // escape collide; the later one wins, as in any JSON
                    // object with a repeated key.
                    members.insert(pg_text(&k).into_owned(), v);
                }
            }
            members.values_mut().for_each(escape_json);
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// A JSON value as PostgreSQL's `jsonb` can hold it: each NUL in a string or
/// a key becomes [`PG_NUL_ESCAPE`]. Borrowed when there is none.
pub fn pg_json(value: &Value) -> std::borrow::Cow<'_, Value> {
    if json_has_nul(value) {
        let mut owned = value.clone();
        escape_json(&mut owned);
        std::borrow::Cow::Owned(owned)
    } else {
        std::borrow::Cow::Borrowed(value)
    }
}

/// The same, for a value the caller owns.
fn pg_json_owned(mut value: Value) -> Value {
    if json_has_nul(&value) {
        escape_json(&mut value);
    }
    value
}

/// The same for owned text.
fn pg_text_owned(text: String) -> String {
    if text.contains('\0') {
        text.replace('\0', PG_NUL_ESCAPE)
    } else {
        text
    }
}

type PgQuery<'q> = sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>;
type LiteQuery<'q> = sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>>;

/// Binds arguments for PostgreSQL, text and JSON escaped (see the module
/// documentation).
fn bind_pg<'q>(mut q: PgQuery<'q>, args: &'q [Arg]) -> PgQuery<'q> {
    for arg in args {
        q = match arg {
            Arg::Text(v) => q.bind(v.as_deref().map(pg_text)),
            Arg::Int(v) => q.bind(*v),
            Arg::Bool(v) => q.bind(*v),
            Arg::Json(v) => q.bind(v.as_ref().map(|v| sqlx::types::Json(pg_json(v)))),
            Arg::Time(v) => q.bind(*v),
            Arg::Bytes(v) => q.bind(v.as_deref()),
            Arg::JsonText(v) => q.bind(v.as_deref()),
        };
    }
    q
}

fn bind_lite<'q>(mut q: LiteQuery<'q>, args: &'q [Arg]) -> LiteQuery<'q> {
    for arg in args {
        q = match arg {
            Arg::Text(v) => q.bind(v.as_deref()),
            Arg::Int(v) => q.bind(*v),
            Arg::Bool(v) => q.bind(*v),
            Arg::Json(v) => q.bind(v.as_ref().map(|v| v.to_string())),
            Arg::Time(v) => q.bind(v.as_ref().map(sqlite_time)),
            Arg::Bytes(v) => q.bind(v.as_deref()),
            Arg::JsonText(v) => q.bind(v.as_deref()),
        };
    }
    q
}

/// A row from either backend.
pub enum Row {
    /// A PostgreSQL row.
    Pg(PgRow),
    /// An SQLite row.
    Lite(SqliteRow),
}

impl Row {
    /// A column of a type both backends decode the same way.
    fn get<'r, T>(&'r self, col: &str) -> Result<T, StoreError>
    where
        T: sqlx::Decode<'r, sqlx::Postgres>
            + sqlx::Type<sqlx::Postgres>
            + sqlx::Decode<'r, sqlx::Sqlite>
            + sqlx::Type<sqlx::Sqlite>,
    {
        Ok(match self {
            Self::Pg(r) => r.try_get(col)?,
            Self::Lite(r) => r.try_get(col)?,
        })
    }

    /// A non-null text column.
    pub fn text(&self, col: &str) -> Result<String, StoreError> {
        self.get(col)
    }

    /// A non-null text column, borrowed from the row: no copy, for rows
    /// that are written out as they are read.
    pub fn text_ref(&self, col: &str) -> Result<&str, StoreError> {
        self.get(col)
    }

    /// A nullable text column.
    pub fn opt_text(&self, col: &str) -> Result<Option<String>, StoreError> {
        self.get(col)
    }

    /// A non-null integer column.
    pub fn int(&self, col: &str) -> Result<i64, StoreError> {
        self.get(col)
    }

    /// A nullable integer column.
    pub fn opt_int(&self, col: &str) -> Result<Option<i64>, StoreError> {
        self.get(col)
    }

    /// A non-null boolean column.
    pub fn bool(&self, col: &str) -> Result<bool, StoreError> {
        self.get(col)
    }

    /// A nullable boolean column.
    pub fn opt_bool(&self, col: &str) -> Result<Option<bool>, StoreError> {
        self.get(col)
    }

    /// A nullable JSON column.
    pub fn opt_json(&self, col: &str) -> Result<Option<Value>, StoreError> {
        match self {
            Self::Pg(r) => Ok(r
                .try_get::<Option<sqlx::types::Json<Value>>, _>(col)?
                .map(|j| j.0)),
            Self::Lite(r) => match r.try_get::<Option<String>, _>(col)? {
                None => Ok(None),
                Some(s) => Ok(Some(serde_json::from_str(&s)?)),
            },
        }
    }

    /// A non-null JSON column.
    pub fn json(&self, col: &str) -> Result<Value, StoreError> {
        self.opt_json(col)?
            .ok_or_else(|| StoreError::Corrupt(format!("{col} is null")))
    }

    /// A nullable time column.
    pub fn opt_time(&self, col: &str) -> Result<Option<DateTime<Utc>>, StoreError> {
        match self {
            Self::Pg(r) => Ok(r.try_get(col)?),
            Self::Lite(r) => r
                .try_get::<Option<String>, _>(col)?
                .map(|s| parse_time(&s))
                .transpose(),
        }
    }

    /// A non-null time column.
    pub fn time(&self, col: &str) -> Result<DateTime<Utc>, StoreError> {
        self.opt_time(col)?
            .ok_or_else(|| StoreError::Corrupt(format!("{col} is null")))
    }

    /// A non-null `bigint` column holding a count or version (never
    /// negative; a negative value reads as 0).
    pub fn uint(&self, col: &str) -> Result<u64, StoreError> {
        Ok(self.int(col)?.max(0) as u64)
    }

    /// A nullable `bigint` column holding a count or version.
    pub fn opt_uint(&self, col: &str) -> Result<Option<u64>, StoreError> {
        Ok(self.opt_int(col)?.map(|v| v.max(0) as u64))
    }

    /// A non-null `bigint` column holding a small count (an attempt, a
    /// rotation), saturating at `u32::MAX`.
    pub fn small(&self, col: &str) -> Result<u32, StoreError> {
        Ok(u32::try_from(self.uint(col)?).unwrap_or(u32::MAX))
    }

    /// A non-null bytes column.
    pub fn bytes(&self, col: &str) -> Result<Vec<u8>, StoreError> {
        self.get(col)
    }

    /// A log position from a transaction id selected as text (PostgreSQL's
    /// `xid8` outgrows `bigint`; write `CAST(transaction_id AS TEXT) AS
    /// tx`) and a global position.
    pub fn position(&self, tx: &str, global: &str) -> Result<Position, StoreError> {
        let text = self.text(tx)?;
        let transaction = text
            .parse()
            .map_err(|_| StoreError::Corrupt(format!("transaction id {text}")))?;
        Ok(Position::new(transaction, self.int(global)?))
    }

    /// A checkpoint-style position stored as two `bigint` columns.
    pub fn int_position(&self, tx: &str, global: &str) -> Result<Position, StoreError> {
        Ok(Position::new(
            self.int(tx)?.max(0) as u64,
            self.int(global)?,
        ))
    }
}

/// A pooled connection on either backend, outside any transaction: each
/// statement on it commits by itself (one round trip).
pub enum Pooled {
    /// PostgreSQL.
    Pg(sqlx::pool::PoolConnection<sqlx::Postgres>),
    /// SQLite.
    Lite(sqlx::pool::PoolConnection<sqlx::Sqlite>),
}

impl Pooled {
    /// Takes a connection from the pool.
    pub async fn acquire(db: &Db) -> Result<Self, StoreError> {
        Ok(match db {
            Db::Postgres(pool) => Self::Pg(pool.acquire().await?),
            Db::Sqlite(pool) => Self::Lite(pool.acquire().await?),
        })
    }

    /// The connection.
    pub fn conn(&mut self) -> Conn<'_> {
        match self {
            Self::Pg(c) => Conn::Pg(c),
            Self::Lite(c) => Conn::Lite(c),
        }
    }
}

/// A transaction on either backend, owning its connection.
pub enum Tx {
    /// PostgreSQL.
    Pg(sqlx::Transaction<'static, sqlx::Postgres>),
    /// SQLite, begun `IMMEDIATE`.
    Lite(sqlx::Transaction<'static, sqlx::Sqlite>),
}

impl Tx {
    /// Begins a transaction on a pooled connection. On SQLite it is
    /// `BEGIN IMMEDIATE`, which takes the write lock up front: a deferred
    /// transaction that reads and then writes can deadlock with another
    /// writer.
    pub async fn begin(db: &Db) -> Result<Self, StoreError> {
        Ok(match db {
            Db::Postgres(pool) => Self::Pg(pool.begin().await?),
            Db::Sqlite(pool) => Self::Lite(pool.begin_with("BEGIN IMMEDIATE").await?),
        })
    }

    /// The transaction's connection.
    pub fn conn(&mut self) -> Conn<'_> {
        match self {
            Self::Pg(tx) => Conn::Pg(tx),
            Self::Lite(tx) => Conn::Lite(tx),
        }
    }

    /// Commits.
    pub async fn commit(self) -> Result<(), StoreError> {
        match self {
            Self::Pg(tx) => tx.commit().await?,
            Self::Lite(tx) => tx.commit().await?,
        }
        Ok(())
    }
}

/// A connection in a transaction (or not), on either backend.
pub enum Conn<'c> {
    /// PostgreSQL.
    Pg(&'c mut PgConnection),
    /// SQLite.
    Lite(&'c mut SqliteConnection),
}

impl Conn<'_> {
    /// Executes a statement; returns the number of rows it affected.
    pub async fn exec(&mut self, sql: &str, args: &[Arg]) -> Result<u64, StoreError> {
        Ok(match self {
            Self::Pg(c) => bind_pg(sqlx::query(sql), args)
                .execute(&mut **c)
                .await?
                .rows_affected(),
            Self::Lite(c) => {
                let sql = sqlite_sql(sql);
                bind_lite(sqlx::query(&sql), args)
                    .execute(&mut **c)
                    .await?
                    .rows_affected()
            }
        })
    }

    /// Runs a query and returns its rows.
    pub async fn fetch(&mut self, sql: &str, args: &[Arg]) -> Result<Vec<Row>, StoreError> {
        Ok(match self {
            Self::Pg(c) => bind_pg(sqlx::query(sql), args)
                .fetch_all(&mut **c)
                .await?
                .into_iter()
                .map(Row::Pg)
                .collect(),
            Self::Lite(c) => {
                let sql = sqlite_sql(sql);
                bind_lite(sqlx::query(&sql), args)
                    .fetch_all(&mut **c)
                    .await?
                    .into_iter()
                    .map(Row::Lite)
                    .collect()
            }
        })
    }
}

/// Runs a query on the pool and returns its rows.
pub async fn fetch(db: &Db, sql: &str, args: &[Arg]) -> Result<Vec<Row>, StoreError> {
    Ok(match db {
        Db::Postgres(pool) => bind_pg(sqlx::query(sql), args)
            .fetch_all(pool)
            .await?
            .into_iter()
            .map(Row::Pg)
            .collect(),
        Db::Sqlite(pool) => {
            let sql = sqlite_sql(sql);
            bind_lite(sqlx::query(&sql), args)
                .fetch_all(pool)
                .await?
                .into_iter()
                .map(Row::Lite)
                .collect()
        }
    })
}

/// Runs a query on the pool and hands its rows to `each` one at a time, as
/// they arrive, instead of collecting them first: the server keeps sending
/// while the caller works on the rows it has, and memory holds one row (and
/// the connection's buffers), however many the query returns. Returns the
/// number of rows; the first error, the database's or `each`'s, ends the
/// query. The statement stays open until the last row is handed over, so
/// `each` should not wait on anything slow (a pipe, a person): a session
/// that stops reading is, after the dead-peer timeout, given up on by the
/// server.
pub async fn fetch_each<E, F>(db: &Db, sql: &str, args: &[Arg], mut each: F) -> Result<u64, E>
where
    E: From<StoreError>,
    F: FnMut(&Row) -> Result<(), E>,
{
    use futures::TryStreamExt;
    let mut n = 0u64;
    match db {
        Db::Postgres(pool) => {
            let mut rows = bind_pg(sqlx::query(sql), args).fetch(pool);
            while let Some(row) = rows.try_next().await.map_err(StoreError::from)? {
                each(&Row::Pg(row))?;
                n += 1;
            }
        }
        Db::Sqlite(pool) => {
            let sql = sqlite_sql(sql);
            let mut rows = bind_lite(sqlx::query(&sql), args).fetch(pool);
            while let Some(row) = rows.try_next().await.map_err(StoreError::from)? {
                each(&Row::Lite(row))?;
                n += 1;
            }
        }
    }
    Ok(n)
}

/// Executes a statement on the pool.
pub async fn exec(db: &Db, sql: &str, args: &[Arg]) -> Result<u64, StoreError> {
    Ok(match db {
        Db::Postgres(pool) => bind_pg(sqlx::query(sql), args)
            .execute(pool)
            .await?
            .rows_affected(),
        Db::Sqlite(pool) => {
            let sql = sqlite_sql(sql);
            bind_lite(sqlx::query(&sql), args)
                .execute(pool)
                .await?
                .rows_affected()
        }
    })
}

/// `$from, $from+1, …` for `n` placeholders: `IN (…)` lists and multi-row
/// `VALUES`.
pub fn placeholders(from: usize, n: usize) -> String {
    (from..from + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Inserts (or upserts) `rows` into `table`. `tail` is the statement's
/// tail (`ON CONFLICT …`, `RETURNING …`, or both); the rows any `RETURNING`
/// produces are returned.
///
/// On PostgreSQL several rows go in as one array per column, unnested by the
/// statement (`INSERT … SELECT … FROM UNNEST($1::text[], …)`): a handful of
/// parameters however many rows, so the server parses and plans a short
/// statement instead of one with thousands of placeholders. A single row,
/// and every batch on SQLite, goes in as (multi-row) `VALUES`, of at most
/// 500 rows per statement.
pub async fn insert_rows(
    conn: &mut Conn<'_>,
    table: &str,
    columns: &[&str],
    rows: Vec<Vec<Arg>>,
    tail: &str,
) -> Result<Vec<Row>, StoreError> {
    match (rows.len(), &mut *conn) {
        (0, _) => Ok(Vec::new()),
        (2.., Conn::Pg(c)) => insert_rows_pg(c, None, table, columns, rows, tail).await,
        _ => insert_rows_values(conn, table, columns, rows, tail).await,
    }
}

/// One column of rows to insert, as the array PostgreSQL unnests.
enum Column {
    /// `text[]`.
    Text(Vec<Option<String>>),
    /// `int8[]`.
    Int(Vec<Option<i64>>),
    /// `bool[]`.
    Bool(Vec<Option<bool>>),
    /// `jsonb[]`.
    Json(Vec<Option<sqlx::types::Json<Value>>>),
    /// `timestamptz[]`.
    Time(Vec<Option<DateTime<Utc>>>),
    /// `bytea[]`.
    Bytes(Vec<Option<Vec<u8>>>),
    /// Serialised JSON, unnested as text and cast to `json`.
    JsonText(Vec<Option<String>>),
}

impl Column {
    /// An empty column of the argument's type.
    fn like(arg: &Arg, capacity: usize) -> Self {
        match arg {
            Arg::Text(_) => Self::Text(Vec::with_capacity(capacity)),
            Arg::Int(_) => Self::Int(Vec::with_capacity(capacity)),
            Arg::Bool(_) => Self::Bool(Vec::with_capacity(capacity)),
            Arg::Json(_) => Self::Json(Vec::with_capacity(capacity)),
            Arg::Time(_) => Self::Time(Vec::with_capacity(capacity)),
            Arg::Bytes(_) => Self::Bytes(Vec::with_capacity(capacity)),
            Arg::JsonText(_) => Self::JsonText(Vec::with_capacity(capacity)),
        }
    }

    /// The array type to cast the parameter to.
    fn array_type(&self) -> &'static str {
        match self {
            Self::Text(_) | Self::JsonText(_) => "text[]",
            Self::Int(_) => "int8[]",
            Self::Bool(_) => "bool[]",
            Self::Json(_) => "jsonb[]",
            Self::Time(_) => "timestamptz[]",
            Self::Bytes(_) => "bytea[]",
        }
    }

    /// The cast of one unnested element, if its column needs one.
    fn element_cast(&self) -> &'static str {
        match self {
            Self::JsonText(_) => "::json",
            _ => "",
        }
    }

    /// Appends a value, text and JSON escaped for PostgreSQL (the arrays
    /// are only ever sent there); an argument of another type is given
    /// back.
    fn push(&mut self, arg: Arg) -> Result<(), Arg> {
        match (self, arg) {
            (Self::Text(c), Arg::Text(v)) => c.push(v.map(pg_text_owned)),
            (Self::Int(c), Arg::Int(v)) => c.push(v),
            (Self::Bool(c), Arg::Bool(v)) => c.push(v),
            (Self::Json(c), Arg::Json(v)) => c.push(v.map(|v| sqlx::types::Json(pg_json_owned(v)))),
            (Self::Time(c), Arg::Time(v)) => c.push(v),
            (Self::Bytes(c), Arg::Bytes(v)) => c.push(v),
            (Self::JsonText(c), Arg::JsonText(v)) => c.push(v),
            (_, arg) => return Err(arg),
        }
        Ok(())
    }

    fn bind(self, q: PgQuery<'_>) -> PgQuery<'_> {
        match self {
            Self::Text(c) | Self::JsonText(c) => q.bind(c),
            Self::Int(c) => q.bind(c),
            Self::Bool(c) => q.bind(c),
            Self::Json(c) => q.bind(c),
            Self::Time(c) => q.bind(c),
            Self::Bytes(c) => q.bind(c),
        }
    }
}

/// [`insert_rows`] on PostgreSQL behind another write: `head` (one
/// `INSERT`, `UPDATE` or `DELETE` without `RETURNING`, its placeholders
/// numbered from `$1`) runs as a data-modifying `WITH` of the same
/// statement, so both commit or neither does, in one round trip. At most
/// 10,000 rows (one statement). PostgreSQL only: on SQLite, run both in a
/// [`Tx`].
pub async fn insert_rows_after(
    conn: &mut Conn<'_>,
    head: (&str, &[Arg]),
    table: &str,
    columns: &[&str],
    rows: Vec<Vec<Arg>>,
    tail: &str,
) -> Result<Vec<Row>, StoreError> {
    match conn {
        Conn::Pg(c) if !rows.is_empty() && rows.len() <= PG_INSERT_CHUNK => {
            insert_rows_pg(c, Some(head), table, columns, rows, tail).await
        }
        Conn::Pg(_) => Err(StoreError::Corrupt(format!(
            "{} rows for one statement into {table}",
            rows.len()
        ))),
        Conn::Lite(_) => Err(StoreError::Corrupt(
            "a data-modifying WITH is for PostgreSQL only".into(),
        )),
    }
}

/// `sql` with every placeholder `$N` renumbered `$N+by`.
pub(crate) fn shift_placeholders(sql: &str, by: usize) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        out.push(c);
        if c != '$' || !chars.peek().is_some_and(char::is_ascii_digit) {
            continue;
        }
        let mut digits = String::new();
        while let Some(d) = chars.peek().copied().filter(char::is_ascii_digit) {
            digits.push(d);
            chars.next();
        }
        let n: usize = digits.parse().unwrap_or(0);
        out.push_str(&(n + by).to_string());
    }
    out
}

/// The most rows one PostgreSQL `INSERT … UNNEST` carries: bounds the size
/// of one message, not the number of parameters.
const PG_INSERT_CHUNK: usize = 10_000;

async fn insert_rows_pg(
    conn: &mut PgConnection,
    head: Option<(&str, &[Arg])>,
    table: &str,
    columns: &[&str],
    rows: Vec<Vec<Arg>>,
    tail: &str,
) -> Result<Vec<Row>, StoreError> {
    let mut out = Vec::new();
    let mut rows = rows.into_iter().peekable();
    while rows.peek().is_some() {
        let batch: Vec<Vec<Arg>> = rows.by_ref().take(PG_INSERT_CHUNK).collect();
        let mut arrays: Vec<Column> = batch[0]
            .iter()
            .map(|a| Column::like(a, batch.len()))
            .collect();
        for row in batch {
            if row.len() != columns.len() {
                return Err(StoreError::Corrupt(format!(
                    "{} values for the {} columns of {table}",
                    row.len(),
                    columns.len()
                )));
            }
            for ((array, arg), column) in arrays.iter_mut().zip(row).zip(columns) {
                array.push(arg).map_err(|_| {
                    StoreError::Corrupt(format!("{table}.{column}: values of different types"))
                })?;
            }
        }
        let unnest = arrays
            .iter()
            .enumerate()
            .map(|(i, a)| format!("${}::{}", i + 1, a.array_type()))
            .collect::<Vec<_>>()
            .join(", ");
        let select = arrays
            .iter()
            .zip(columns)
            .map(|(a, c)| format!("u.{c}{}", a.element_cast()))
            .collect::<Vec<_>>()
            .join(", ");
        let with = match head {
            Some((sql, _)) => format!("WITH head AS ({}) ", shift_placeholders(sql, arrays.len())),
            None => String::new(),
        };
        let sql = format!(
            "{with}INSERT INTO {table} ({cols}) SELECT {select} FROM UNNEST({unnest}) AS u({cols}) {tail}",
            cols = columns.join(", ")
        );
        let mut q = sqlx::query(&sql);
        for array in arrays {
            q = array.bind(q);
        }
        if let Some((_, args)) = head {
            q = bind_pg(q, args);
        }
        out.extend(q.fetch_all(&mut *conn).await?.into_iter().map(Row::Pg));
    }
    Ok(out)
}

/// Rows for a binary `COPY` into a PostgreSQL table: the fastest way in,
/// and the server parses no text, but there is no `ON CONFLICT`, so it is
/// only for rows that cannot exist yet. Values are written in the binary
/// form of the types the read models use: `int` for `bigint`, `json` for
/// `jsonb`, `time` for `timestamptz` (a column of another type makes the
/// `COPY` fail, never store a wrong value). The whole batch is encoded
/// before the `COPY` starts, so a value that cannot be encoded fails before
/// anything is sent.
pub struct CopyRows {
    /// The encoded rows, after the binary COPY header.
    data: Vec<u8>,
    /// The number of values in each row.
    fields: i16,
}

impl CopyRows {
    /// Rows of `columns` values each.
    pub fn new(columns: usize) -> Self {
        let mut data = Vec::with_capacity(64 * 1024);
        data.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
        data.extend_from_slice(&0i32.to_be_bytes()); // flags
        data.extend_from_slice(&0i32.to_be_bytes()); // header extension
        Self {
            data,
            fields: i16::try_from(columns).unwrap_or(i16::MAX),
        }
    }

    /// Starts a row: its values follow, one call per column, in order.
    pub fn row(&mut self) {
        self.data.extend_from_slice(&self.fields.to_be_bytes());
    }

    fn null(&mut self) {
        self.data.extend_from_slice(&(-1i32).to_be_bytes());
    }

    fn sized(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        let len = i32::try_from(bytes.len())
            .map_err(|_| StoreError::Corrupt("a value over 2 GiB".into()))?;
        self.data.extend_from_slice(&len.to_be_bytes());
        self.data.extend_from_slice(bytes);
        Ok(())
    }

    /// A text value, or NULL, escaped as [`pg_text`] does.
    pub fn text(&mut self, v: Option<&str>) -> Result<(), StoreError> {
        match v {
            Some(v) => self.sized(pg_text(v).as_bytes()),
            None => {
                self.null();
                Ok(())
            }
        }
    }

    /// A `bigint`, or NULL.
    pub fn int(&mut self, v: Option<i64>) {
        match v {
            Some(v) => {
                self.data.extend_from_slice(&8i32.to_be_bytes());
                self.data.extend_from_slice(&v.to_be_bytes());
            }
            None => self.null(),
        }
    }

    /// A boolean, or NULL.
    pub fn bool(&mut self, v: Option<bool>) {
        match v {
            Some(v) => {
                self.data.extend_from_slice(&1i32.to_be_bytes());
                self.data.push(u8::from(v));
            }
            None => self.null(),
        }
    }

    /// A `jsonb` value, or NULL, escaped as [`pg_json`] does and
    /// serialised in place.
    pub fn json(&mut self, v: Option<&Value>) -> Result<(), StoreError> {
        let Some(v) = v else {
            self.null();
            return Ok(());
        };
        let v = pg_json(v);
        // The length goes in front of the value once it is known.
        let at = self.data.len();
        self.null();
        self.data.push(1); // the jsonb format version
        serde_json::to_writer(&mut self.data, &*v)?;
        let len = i32::try_from(self.data.len() - at - 4)
            .map_err(|_| StoreError::Corrupt("a JSON value over 2 GiB".into()))?;
        self.data[at..at + 4].copy_from_slice(&len.to_be_bytes());
        Ok(())
    }

    /// A `timestamptz`, or NULL.
    pub fn time(&mut self, v: Option<&DateTime<Utc>>) -> Result<(), StoreError> {
        // Microseconds from 1970-01-01 to 2000-01-01, PostgreSQL's epoch.
        const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;
        let Some(v) = v else {
            self.null();
            return Ok(());
        };
        let micros = v
            .timestamp_micros()
            .checked_sub(PG_EPOCH_MICROS)
            .ok_or_else(|| StoreError::Corrupt(format!("time {v} out of range")))?;
        self.int(Some(micros));
        Ok(())
    }

    /// Sends the rows to `table` with `COPY … FROM STDIN (FORMAT binary)`.
    pub async fn copy_into(
        mut self,
        conn: &mut PgConnection,
        table: &str,
        columns: &[&str],
    ) -> Result<(), StoreError> {
        if usize::try_from(self.fields).ok() != Some(columns.len()) {
            return Err(StoreError::Corrupt(format!(
                "rows of {} values for the {} columns of {table}",
                self.fields,
                columns.len()
            )));
        }
        self.data.extend_from_slice(&(-1i16).to_be_bytes()); // trailer
        let statement = format!(
            "COPY {table} ({}) FROM STDIN (FORMAT binary)",
            columns.join(", ")
        );
        let mut copy = conn.copy_in_raw(&statement).await?;
        copy.send(self.data).await?;
        copy.finish().await?;
        Ok(())
    }
}

/// Multi-row `VALUES` of at most 500 rows per statement. Serialised JSON
/// is cast to `json` (a no-op on SQLite, where casts are dropped).
async fn insert_rows_values(
    conn: &mut Conn<'_>,
    table: &str,
    columns: &[&str],
    rows: Vec<Vec<Arg>>,
    tail: &str,
) -> Result<Vec<Row>, StoreError> {
    // Under SQLite's and PostgreSQL's limits on bound parameters.
    let chunk = (30_000 / columns.len().max(1)).clamp(1, 500);
    let mut out = Vec::new();
    let mut rows = rows.into_iter().peekable();
    while rows.peek().is_some() {
        let batch: Vec<Vec<Arg>> = rows.by_ref().take(chunk).collect();
        let mut sql = format!("INSERT INTO {table} ({}) VALUES ", columns.join(", "));
        let mut args = Vec::with_capacity(batch.len() * columns.len());
        for (i, row) in batch.into_iter().enumerate() {
            if row.len() != columns.len() {
                return Err(StoreError::Corrupt(format!(
                    "{} values for the {} columns of {table}",
                    row.len(),
                    columns.len()
                )));
            }
            if i > 0 {
                sql.push_str(", ");
            }
            sql.push('(');
            for (j, arg) in row.into_iter().enumerate() {
                if j > 0 {
                    sql.push_str(", ");
                }
                let cast = if matches!(arg, Arg::JsonText(_)) {
                    "::json"
                } else {
                    ""
                };
                args.push(arg);
                sql.push_str(&format!("${}{cast}", args.len()));
            }
            sql.push(')');
        }
        sql.push(' ');
        sql.push_str(tail);
        out.extend(conn.fetch(&sql, &args).await?);
    }
    Ok(out)
}

/// `ON CONFLICT (keys) DO UPDATE SET c = excluded.c, …` for every non-key
/// column.
pub fn upsert_tail(keys: &[&str], columns: &[&str]) -> String {
    let sets: Vec<String> = columns
        .iter()
        .filter(|c| !keys.contains(c))
        .map(|c| format!("{c} = excluded.{c}"))
        .collect();
    format!(
        "ON CONFLICT ({}) DO UPDATE SET {}",
        keys.join(", "),
        sets.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::{pg_json, pg_text, shift_placeholders, sqlite_sql};
    use serde_json::json;

    #[test]
    fn placeholders_are_renumbered() {
        assert_eq!(
            shift_placeholders("INSERT INTO t VALUES ($1, $2, $10, '$x', $3)", 7),
            "INSERT INTO t VALUES ($8, $9, $17, '$x', $10)"
        );
    }

    #[test]
    fn nul_is_spelled_out_for_postgresql_and_nothing_else_changes() {
        assert_eq!(pg_text("a\0b"), "a\\u0000b");
        assert!(matches!(pg_text("plain"), std::borrow::Cow::Borrowed(_)));
        let doc = json!({"k\u{0}": ["x\u{0}", 1, {"y": "\u{0}"}], "ok": "\\u0000"});
        assert_eq!(
            pg_json(&doc).into_owned(),
            json!({"k\\u0000": ["x\\u0000", 1, {"y": "\\u0000"}], "ok": "\\u0000"})
        );
        let clean = json!({"a": ["b", null]});
        assert!(matches!(pg_json(&clean), std::borrow::Cow::Borrowed(_)));
    }

    #[test]
    fn placeholders_in_order_become_anonymous() {
        assert_eq!(
            sqlite_sql("a = $1 AND b IN ($2, $3) -- é"),
            "a = ? AND b IN (?, ?) -- é"
        );
    }

    #[test]
    fn casts_are_dropped_outside_string_literals() {
        assert_eq!(
            sqlite_sql("VALUES ($1, $2::json, $3::text::xid8, $4::int8[]) -- 'a::b'"),
            "VALUES (?, ?, ?, ?) -- 'a::b'"
        );
        assert_eq!(
            sqlite_sql("x LIKE $1 ESCAPE '\\' AND y::text = '$2'"),
            "x LIKE ? ESCAPE '\\' AND y = '$2'"
        );
    }

    #[test]
    fn placeholders_out_of_order_keep_their_numbers() {
        assert_eq!(
            sqlite_sql("SET a = $2 WHERE b = $1"),
            "SET a = ?2 WHERE b = ?1"
        );
        assert_eq!(sqlite_sql("a = $1 OR c = $1"), "a = ?1 OR c = ?1");
    }
}
