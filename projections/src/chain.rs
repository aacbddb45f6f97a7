//! The log's hash chain: tamper evidence for auditors.
//!
//! Each event gets `hash = SHA-256(previous hash ‖ event)`, in the
//! commit-safe order every projector reads the log, starting from 32 zero
//! bytes. The event's part is its position, aggregate type and id,
//! sequence, event type and version as stored, the payload's and the
//! metadata's JSON text exactly as stored (read as text from the `events`
//! table, not parsed and written again, so that an edit the parsers would
//! not see — a field added to the metadata, a key reordered, a space — still
//! changes the hash, and an upcaster added later does not), and the
//! recorded time, each length-prefixed so that no two events encode alike.
//! The chain is
//! written by the `chain` pass, a projector like the read models' (one
//! leader, its own checkpoint, stopped visibly at an event it cannot read),
//! so no writer ever waits on it; it is never rebuilt, since rebuilding
//! would re-seal whatever the log holds now.
//!
//! [`verify`] recomputes the chain from the events and compares it row by
//! row: an edited event, a deleted one, one inserted or moved, each shows
//! as the first position that does not match. An auditor who records the
//! head (position and hash) somewhere else can later prove that nothing at
//! or before it changed.

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use toolhub_eventstore::sql::{fetch, insert_rows, placeholders, Arg, Conn, Pooled, Row};
use toolhub_eventstore::{EventStore, Position, RecordedEvent, StoreError};

use crate::projection::{Projection, Tables};

/// The hash before the first event.
pub const GENESIS: [u8; 32] = [0; 32];

/// An event as the `events` table stores it: what the chain seals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    /// Where it sits in the log.
    pub position: Position,
    /// The aggregate's type.
    pub aggregate_type: String,
    /// The aggregate's id.
    pub aggregate_id: String,
    /// Its sequence in the aggregate.
    pub sequence: i64,
    /// The event type.
    pub event_type: String,
    /// The event version as stored (before any upcasting).
    pub event_version: String,
    /// The payload's JSON text, exactly as stored.
    pub payload: String,
    /// The metadata's JSON text, exactly as stored.
    pub metadata: String,
    /// When it was stored.
    pub recorded_at: DateTime<Utc>,
}

/// The stored form of the events at `positions`, in the same order. An
/// event that is no longer there (removed since it was read) is an error.
pub async fn stored(
    conn: &mut Conn<'_>,
    positions: &[Position],
) -> Result<Vec<StoredEvent>, StoreError> {
    let mut found = HashMap::with_capacity(positions.len());
    for chunk in positions.chunks(500) {
        // `CAST(… AS TEXT)`: PostgreSQL's `json` keeps the text it was
        // given, and SQLite stores text.
        let sql = format!(
            "SELECT CAST(transaction_id AS TEXT) AS tx, global_position, aggregate_type, \
                    aggregate_id, sequence, event_type, event_version, \
                    CAST(payload AS TEXT) AS payload, CAST(metadata AS TEXT) AS metadata, \
                    recorded_at \
               FROM events WHERE global_position IN ({})",
            placeholders(1, chunk.len())
        );
        let args: Vec<Arg> = chunk.iter().map(|p| Arg::from(p.global)).collect();
        for row in conn.fetch(&sql, &args).await? {
            let event = StoredEvent {
                position: row.position("tx", "global_position")?,
                aggregate_type: row.text("aggregate_type")?,
                aggregate_id: row.text("aggregate_id")?,
                sequence: row.int("sequence")?,
                event_type: row.text("event_type")?,
                event_version: row.text("event_version")?,
                payload: row.text("payload")?,
                metadata: row.text("metadata")?,
                recorded_at: row.time("recorded_at")?,
            };
            found.insert(event.position, event);
        }
    }
    positions
        .iter()
        .map(|p| {
            found.remove(p).ok_or_else(|| {
                StoreError::Corrupt(format!("the event at position {p} is no longer stored"))
            })
        })
        .collect()
}

/// The hash of `event` chained after `previous`.
pub fn link(previous: &[u8], event: &StoredEvent) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(previous);
    let recorded = event
        .recorded_at
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    for part in [
        event.position.to_string().as_str(),
        &event.aggregate_type,
        &event.aggregate_id,
        &event.sequence.to_string(),
        &event.event_type,
        &event.event_version,
        &event.payload,
        &event.metadata,
        &recorded,
    ] {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part.as_bytes());
    }
    hasher.finalize().into()
}

/// One row of the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Its place in the chain, from 1.
    pub n: i64,
    /// The event's position.
    pub position: Position,
    /// The chained hash.
    pub hash: Vec<u8>,
}

impl Link {
    fn from_row(row: &Row) -> Result<Self, StoreError> {
        Ok(Self {
            n: row.int("n")?,
            position: Position::new(
                row.text("transaction_id")?
                    .parse()
                    .map_err(|_| StoreError::Corrupt("event_chain: a transaction id".into()))?,
                row.int("global_position")?,
            ),
            hash: row.bytes("hash")?,
        })
    }
}

const COLUMNS: &[&str] = &["n", "transaction_id", "global_position", "hash"];

/// The pass that extends the chain behind the commit-safe reader.
pub struct ChainProjection;

#[async_trait]
impl Projection for ChainProjection {
    fn name(&self) -> &'static str {
        "chain"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["event_chain"]
    }

    async fn apply(
        &self,
        conn: &mut Conn<'_>,
        tables: &Tables,
        events: &[RecordedEvent],
    ) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        let table = tables.name("event_chain");
        let last = conn
            .fetch(
                &format!(
                    "SELECT n, transaction_id, global_position, hash FROM {table} \
                     ORDER BY n DESC LIMIT 1"
                ),
                &[],
            )
            .await?
            .first()
            .map(Link::from_row)
            .transpose()?;
        let (mut n, mut previous, after) = match last {
            Some(link) => (link.n, link.hash, Some(link.position)),
            None => (0, GENESIS.to_vec(), None),
        };
        // A batch applied again (its commit lost) is chained once.
        let positions: Vec<Position> = events
            .iter()
            .map(|e| e.position)
            .filter(|p| after.is_none_or(|after| *p > after))
            .collect();
        let events = stored(conn, &positions).await?;
        let mut rows = Vec::with_capacity(events.len());
        for event in &events {
            n += 1;
            let hash = link(&previous, event).to_vec();
            rows.push(vec![
                Arg::from(n),
                Arg::from(event.position.transaction.to_string()),
                Arg::from(event.position.global),
                Arg::from(hash.clone()),
            ]);
            previous = hash;
        }
        insert_rows(conn, &table, COLUMNS, rows, "").await?;
        Ok(())
    }
}

/// What [`verify`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    /// How many events matched their link.
    pub verified: u64,
    /// The last link that matched: the head an auditor may record.
    pub head: Option<Link>,
    /// The first mismatch, if any.
    pub fault: Option<Fault>,
    /// Events the chain has not reached yet (the pass runs behind the log).
    pub unchained: u64,
}

/// Where the log and its chain part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// The first position that does not match.
    pub position: Position,
    /// What was found there.
    pub kind: FaultKind,
}

/// What a mismatch means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// The event there differs from the one that was chained.
    Altered,
    /// The chain holds an event that the log no longer has.
    Missing,
    /// The log holds an event the chain never saw in this place.
    Inserted,
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match self.kind {
            FaultKind::Altered => "the event was altered or moved",
            FaultKind::Missing => "the event was removed from the log",
            FaultKind::Inserted => "an event was inserted into the log",
        };
        write!(
            f,
            "position {} ({}): {what}",
            self.position.global, self.position
        )
    }
}

/// Recomputes the chain from the events, in commit-safe order, and compares
/// it with the stored links; `progress` is called with the number of events
/// checked. Reads only.
pub async fn verify(
    store: &EventStore,
    batch: u32,
    mut progress: impl FnMut(u64),
) -> Result<Verification, StoreError> {
    let mut result = Verification {
        verified: 0,
        head: None,
        fault: None,
        unchained: 0,
    };
    let mut previous = GENESIS.to_vec();
    let mut checkpoint = Position::ZERO;
    let mut n = 0i64;
    let mut pooled = Pooled::acquire(store.db()).await?;
    loop {
        let events = store.read_after(checkpoint, batch).await?;
        let positions: Vec<Position> = events.iter().map(|e| e.position).collect();
        let events = stored(&mut pooled.conn(), &positions).await?;
        let links = fetch(
            store.db(),
            "SELECT n, transaction_id, global_position, hash FROM event_chain \
             WHERE n > $1 ORDER BY n LIMIT $2",
            &[Arg::from(n), Arg::from(i64::from(batch))],
        )
        .await?
        .iter()
        .map(Link::from_row)
        .collect::<Result<Vec<_>, _>>()?;
        let mut links = links.into_iter();
        for (i, event) in events.iter().enumerate() {
            let Some(link) = links.next() else {
                // The rest of the log is past the chain's end: count it.
                result.unchained = (events.len() - i) as u64;
                let mut last = events.last().map_or(checkpoint, |e| e.position);
                loop {
                    let more = store.read_after(last, batch).await?;
                    let Some(tail) = more.last() else { break };
                    result.unchained += more.len() as u64;
                    last = tail.position;
                }
                return Ok(result);
            };
            if link.position != event.position {
                let (position, kind) = if link.position < event.position {
                    (link.position, FaultKind::Missing)
                } else {
                    (event.position, FaultKind::Inserted)
                };
                result.fault = Some(Fault { position, kind });
                return Ok(result);
            }
            let hash = self::link(&previous, event).to_vec();
            if hash != link.hash {
                result.fault = Some(Fault {
                    position: event.position,
                    kind: FaultKind::Altered,
                });
                return Ok(result);
            }
            previous = hash;
            n = link.n;
            result.verified += 1;
            result.head = Some(link);
        }
        progress(result.verified);
        match events.last() {
            Some(last) if events.len() as u32 == batch => checkpoint = last.position,
            _ => break,
        }
    }
    // Links past the last event: events removed from the end of the log.
    let rest = fetch(
        store.db(),
        "SELECT n, transaction_id, global_position, hash FROM event_chain \
         WHERE n > $1 ORDER BY n LIMIT 1",
        &[Arg::from(n)],
    )
    .await?;
    if let Some(link) = rest.first().map(Link::from_row).transpose()? {
        result.fault = Some(Fault {
            position: link.position,
            kind: FaultKind::Missing,
        });
    }
    Ok(result)
}

/// The link of the event at `position`, if the chain has one.
pub async fn link_at(store: &EventStore, position: Position) -> Result<Option<Link>, StoreError> {
    fetch(
        store.db(),
        "SELECT n, transaction_id, global_position, hash FROM event_chain \
         WHERE global_position = $1",
        &[Arg::from(position.global)],
    )
    .await?
    .first()
    .map(Link::from_row)
    .transpose()
    .map(|link| link.filter(|link| link.position == position))
}
