//! Appending a command's events: one `INSERT` (so they commit together, in
//! one round trip), or one transaction with the unique-name claims the
//! events make or release.

use crate::error::{is_unique_violation, StoreError};
use crate::position::Position;
use crate::sql::{fetch, insert_rows, insert_rows_after, Arg, Conn, Pooled, Tx};
use crate::store::Db;

/// One event ready to insert: serialised once, so a retry after a lost race
/// serialises again from the re-decided events rather than reusing these.
pub(crate) struct NewEvent {
    /// The aggregate the event belongs to.
    pub(crate) aggregate_id: String,
    /// Its sequence within the aggregate: the primary key that makes a stale
    /// decision fail instead of overwriting a concurrent one.
    pub(crate) sequence: i64,
    /// The stable event type from the catalogue.
    pub(crate) event_type: String,
    /// The event version from the catalogue.
    pub(crate) event_version: String,
    /// The payload as JSON text, stored as it is.
    pub(crate) payload: String,
    /// The metadata (actor, tenant, correlation…) as JSON text.
    pub(crate) metadata: String,
}

/// A change to the unique names, applied with the events that cause it.
pub(crate) struct NameUpdate {
    /// The tenant within which the name is unique.
    pub(crate) tenant: String,
    /// The aggregate claiming or releasing.
    pub(crate) aggregate_id: String,
    /// The name claimed, or `None` to release the aggregate's name.
    pub(crate) claim: Option<String>,
    /// True when the claim replaces the aggregate's own earlier claim, if
    /// any, rather than being its first.
    pub(crate) replaces: bool,
}

/// A write that commits with a command's events or not at all: one
/// `INSERT`, `UPDATE` or `DELETE` without `RETURNING`, its placeholders
/// numbered from `$1`. The engine's work row is one: an execution is started
/// exactly when it has a row to be driven by.
#[derive(Debug, Clone)]
pub struct Companion {
    /// The statement, in PostgreSQL's dialect like every statement.
    pub sql: String,
    /// Its arguments.
    pub args: Vec<Arg>,
}

/// Why an append failed.
pub(crate) enum AppendError {
    /// Another aggregate of the kind and tenant holds the name.
    NameTaken,
    /// Anything else (a unique violation here is on the events).
    Store(StoreError),
}

impl From<StoreError> for AppendError {
    fn from(error: StoreError) -> Self {
        Self::Store(error)
    }
}

/// The columns an append writes; the log adds its position, transaction and
/// time itself.
const COLUMNS: &[&str] = &[
    "aggregate_type",
    "aggregate_id",
    "sequence",
    "event_type",
    "event_version",
    "payload",
    "metadata",
];

/// Appends `events` and applies their name changes, and returns the position
/// of the last event. Without name changes it is one autocommitted
/// statement. With them it is one transaction: the events first, so that a
/// creation racing its own retry still surfaces as the events' unique
/// violation; then the claims, whose unique violation means the name is
/// taken.
pub(crate) async fn append(
    db: &Db,
    aggregate_type: &str,
    events: Vec<NewEvent>,
    names: &[NameUpdate],
    companion: Option<&Companion>,
) -> Result<Position, AppendError> {
    if names.is_empty() && companion.is_none() {
        let mut conn = Pooled::acquire(db).await?;
        return Ok(insert_events(&mut conn.conn(), aggregate_type, events).await?);
    }
    match (db, events.as_slice(), names, companion) {
        (Db::Postgres(_), [event], [update], None) if !update.replaces => {
            return append_naming_in_one_statement(db, aggregate_type, event, update).await;
        }
        (Db::Postgres(_), [_, ..], [], Some(companion)) => {
            return append_with_companion_in_one_statement(db, aggregate_type, events, companion)
                .await;
        }
        _ => {}
    }
    let mut tx = Tx::begin(db).await?;
    let position = insert_events(&mut tx.conn(), aggregate_type, events).await?;
    if let Some(companion) = companion {
        tx.conn().exec(&companion.sql, &companion.args).await?;
    }
    for update in names {
        if update.replaces {
            // The earlier claim goes first, in the same transaction, so
            // that claiming the name the aggregate already holds, or
            // another one, never trips over its own row.
            tx.conn()
                .exec(
                    "DELETE FROM name_claims WHERE aggregate_type = $1 AND aggregate_id = $2",
                    &[aggregate_type.into(), update.aggregate_id.as_str().into()],
                )
                .await?;
        }
        let changed = match &update.claim {
            Some(name) => {
                tx.conn()
                    .exec(
                        "INSERT INTO name_claims (tenant, aggregate_type, name, aggregate_id) \
                         VALUES ($1, $2, $3, $4)",
                        &[
                            update.tenant.as_str().into(),
                            aggregate_type.into(),
                            name.as_str().into(),
                            update.aggregate_id.as_str().into(),
                        ],
                    )
                    .await
            }
            None => {
                tx.conn()
                    .exec(
                        "DELETE FROM name_claims WHERE aggregate_type = $1 AND aggregate_id = $2",
                        &[aggregate_type.into(), update.aggregate_id.as_str().into()],
                    )
                    .await
            }
        };
        match changed {
            Err(StoreError::Database(error)) if is_unique_violation(&error) => {
                return Err(AppendError::NameTaken)
            }
            other => other?,
        };
    }
    tx.commit().await?;
    Ok(position)
}

/// The name claims table's primary key: a violation of it means another
/// aggregate holds the name.
const CLAIM_KEY: &str = "name_claims_pkey";

/// On PostgreSQL, the usual case — one event that claims or releases one
/// name (a creation, a deletion) — is one autocommitted statement: the
/// claim or release is a data-modifying `WITH` in front of the event's
/// `INSERT`, so both commit or neither does, in one round trip instead of
/// the four of a transaction. A unique violation names its constraint: the
/// claim's primary key means the name is taken; anything else (the events'
/// key, or the holder index when the aggregate already holds a name) means
/// the aggregate moved.
async fn append_naming_in_one_statement(
    db: &Db,
    aggregate_type: &str,
    event: &NewEvent,
    update: &NameUpdate,
) -> Result<Position, AppendError> {
    let (with, name_args): (&str, Vec<Arg>) = match &update.claim {
        Some(name) => (
            "WITH claim AS (INSERT INTO name_claims (tenant, aggregate_type, name, aggregate_id) \
             VALUES ($8, $1, $9, $2))",
            vec![update.tenant.as_str().into(), name.as_str().into()],
        ),
        None => (
            "WITH released AS (DELETE FROM name_claims \
             WHERE aggregate_type = $1 AND aggregate_id = $2)",
            Vec::new(),
        ),
    };
    let sql = format!(
        "{with} INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, \
         event_version, payload, metadata) VALUES ($1, $2, $3, $4, $5, $6::json, $7::json) \
         RETURNING CAST(transaction_id AS TEXT) AS tx, global_position"
    );
    let mut args = vec![
        Arg::from(aggregate_type),
        update.aggregate_id.as_str().into(),
        event.sequence.into(),
        event.event_type.as_str().into(),
        event.event_version.as_str().into(),
        Arg::JsonText(Some(event.payload.clone())),
        Arg::JsonText(Some(event.metadata.clone())),
    ];
    args.extend(name_args);
    match fetch(db, &sql, &args).await {
        Ok(rows) => match rows.first() {
            Some(row) => Ok(row.position("tx", "global_position")?),
            None => Err(StoreError::Corrupt("an append returned no position".into()).into()),
        },
        Err(StoreError::Database(sqlx::Error::Database(error)))
            if error.is_unique_violation() && error.constraint() == Some(CLAIM_KEY) =>
        {
            Err(AppendError::NameTaken)
        }
        Err(error) => Err(error.into()),
    }
}

/// On PostgreSQL, events with a companion write are one autocommitted
/// statement: the companion is a data-modifying `WITH` in front of the
/// events' `INSERT`, as a name claim is. (A run's start with its first
/// move and its work row is one round trip, not a transaction of four.)
async fn append_with_companion_in_one_statement(
    db: &Db,
    aggregate_type: &str,
    events: Vec<NewEvent>,
    companion: &Companion,
) -> Result<Position, AppendError> {
    let mut conn = Pooled::acquire(db).await?;
    let returned = insert_rows_after(
        &mut conn.conn(),
        (&companion.sql, &companion.args),
        "events",
        COLUMNS,
        rows_of(aggregate_type, events),
        RETURNING,
    )
    .await?;
    Ok(last_position(&returned)?)
}

/// Inserts the events in one statement and returns the last one's position.
async fn insert_events(
    conn: &mut Conn<'_>,
    aggregate_type: &str,
    events: Vec<NewEvent>,
) -> Result<Position, StoreError> {
    let returned = insert_rows(
        conn,
        "events",
        COLUMNS,
        rows_of(aggregate_type, events),
        RETURNING,
    )
    .await?;
    last_position(&returned)
}

/// What an append returns of each event: where it stands in the log.
const RETURNING: &str = "RETURNING CAST(transaction_id AS TEXT) AS tx, global_position";

/// The events as rows of [`COLUMNS`].
fn rows_of(aggregate_type: &str, events: Vec<NewEvent>) -> Vec<Vec<Arg>> {
    events
        .into_iter()
        .map(|e| {
            vec![
                Arg::from(aggregate_type),
                e.aggregate_id.into(),
                e.sequence.into(),
                e.event_type.into(),
                e.event_version.into(),
                Arg::JsonText(Some(e.payload)),
                Arg::JsonText(Some(e.metadata)),
            ]
        })
        .collect()
}

/// The position of the last of the appended events, from their
/// [`RETURNING`] rows.
fn last_position(returned: &[crate::sql::Row]) -> Result<Position, StoreError> {
    let mut last = None;
    for row in returned {
        let position = row.position("tx", "global_position")?;
        last = last.max(Some(position));
    }
    last.ok_or_else(|| StoreError::Corrupt("an append returned no position".into()))
}
