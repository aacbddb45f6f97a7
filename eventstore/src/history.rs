//! One aggregate folded up to a point of its history, at the same cost at
//! any depth: the state starts from the newest checkpoint at or before the
//! point (see [`crate::bus`]'s snapshots, which are kept as checkpoints
//! with the position and time of their event), and only the events after
//! it, up to the point, are read and folded — at most one checkpoint
//! interval.
//!
//! An aggregate's events commit one command after another, so along its
//! sequence both their positions and (but for a clock stepping back) their
//! recorded times grow: the events at or before a point are a prefix of
//! the stream, and so are its checkpoints. That is what lets the bound be
//! found without reading the stream.

use chrono::{DateTime, Utc};
use toolhub_domain::AggregateRoot;

use crate::bus::snapshot;
use crate::error::StoreError;
use crate::position::Position;
use crate::sql::{fetch, Arg};
use crate::store::{Db, EventStore, RecordedEvent, EVENT_COLUMNS};

/// A point in one aggregate's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    /// Its events at or before this position of the log.
    Position(Position),
    /// Its events recorded at or before this instant.
    Time(DateTime<Utc>),
    /// Its first `n` events.
    Sequence(u64),
}

impl Until {
    /// The condition, on a row of `events` or `checkpoints` (which share
    /// the column names), that it is at or before the point, with its
    /// arguments numbered from `$first`.
    fn condition(self, db: &Db, first: usize) -> (String, Vec<Arg>) {
        let (a, b) = (first, first + 1);
        match (self, db) {
            (Self::Sequence(n), _) => (format!("sequence <= ${a}"), vec![Arg::from(n)]),
            (Self::Position(p), Db::Postgres(_)) => (
                format!("(transaction_id, global_position) <= (${a}::text::xid8, ${b})"),
                vec![Arg::from(p.transaction.to_string()), Arg::from(p.global)],
            ),
            // SQLite's transaction ids are all 0: the global position is
            // the commit order.
            (Self::Position(p), Db::Sqlite(_)) => (
                format!("global_position <= ${a}"),
                vec![Arg::from(p.global)],
            ),
            (Self::Time(t), Db::Postgres(_)) => {
                (format!("recorded_at <= ${a}"), vec![Arg::from(t)])
            }
            // SQLite stores the time as text to the millisecond
            // (`…T10:00:00.123Z`): the bound in the same form, truncated,
            // compares as the times do.
            (Self::Time(t), Db::Sqlite(_)) => (
                format!("recorded_at <= ${a}"),
                vec![Arg::from(t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())],
            ),
        }
    }
}

/// An aggregate folded up to a point.
#[derive(Debug, Clone)]
pub struct Folded<A> {
    /// The state after the last event folded.
    pub state: A,
    /// Its first event (the creation).
    pub first: RecordedEvent,
    /// The last event at or before the point.
    pub last: RecordedEvent,
}

impl<A> Folded<A> {
    /// The version reached: the sequence of the last event folded.
    pub fn version(&self) -> u64 {
        self.last.sequence
    }
}

impl EventStore {
    /// Folds aggregate `id` of type `A` with its own `apply` up to `until`:
    /// `None` when it had no event then.
    ///
    /// Three statements, whatever the depth: the newest usable checkpoint
    /// at or before the point; the events after it that are at or before
    /// the point (bounded above by the first checkpoint past the point, so
    /// that the database reads at most one interval); and, when it was not
    /// among those, the first event.
    pub async fn fold_until<A: AggregateRoot>(
        &self,
        id: &str,
        until: Until,
    ) -> Result<Option<Folded<A>>, StoreError> {
        let db = self.db();
        // A few recent checkpoints, in case the newest is of another shape
        // of the state; past those, folding from the first event is as
        // fast as looking on.
        let (condition, bound) = until.condition(db, 3);
        let sql = format!(
            "SELECT sequence, payload FROM checkpoints \
              WHERE aggregate_type = $1 AND aggregate_id = $2 AND {condition} \
              ORDER BY sequence DESC LIMIT 3"
        );
        let mut args: Vec<Arg> = vec![A::TYPE.into(), id.into()];
        args.extend(bound);
        let mut start = None;
        for row in fetch(db, &sql, &args).await? {
            if let Some(state) = snapshot::open::<A>(row.json("payload")?) {
                start = Some((state, row.uint("sequence")?));
                break;
            }
        }
        let (mut state, after) = start.unwrap_or_else(|| (A::default(), 0));
        // The events after the checkpoint and at or before the point: a
        // prefix of the rest of the stream, which ends before the first
        // checkpoint past the point.
        let (condition, bound) = until.condition(db, 4);
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM events \
              WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence > $3 \
                AND {condition} \
                AND sequence < COALESCE((SELECT MIN(sequence) FROM checkpoints \
                                          WHERE aggregate_type = $1 AND aggregate_id = $2 \
                                            AND NOT ({condition})), {}) \
              ORDER BY sequence",
            i64::MAX
        );
        let mut args: Vec<Arg> = vec![A::TYPE.into(), id.into(), Arg::from(after)];
        args.extend(bound);
        let rows = fetch(db, &sql, &args).await?;
        let mut first = None;
        let mut last = None;
        for row in &rows {
            let event = self.recorded(row)?;
            state.apply(serde_json::from_value(event.payload.clone())?);
            if event.sequence == 1 {
                first = Some(event.clone());
            }
            last = Some(event);
        }
        let last = match last {
            Some(last) => last,
            // Nothing after the checkpoint: it is at the point itself.
            None if after > 0 => match self
                .stream_range(A::TYPE, id, after - 1, after)
                .await?
                .pop()
            {
                Some(event) => event,
                None => return Ok(None),
            },
            None => return Ok(None),
        };
        let first = match first {
            Some(first) => first,
            None => self
                .stream_range(A::TYPE, id, 0, 1)
                .await?
                .pop()
                .ok_or_else(|| {
                    StoreError::Corrupt(format!("{} {id} has no first event", A::TYPE))
                })?,
        };
        Ok(Some(Folded { state, first, last }))
    }

    /// The events of aggregate `id` with a sequence in `after + 1 ..= up_to`,
    /// in order, decoded and upcast.
    pub async fn stream_range(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        after: u64,
        up_to: u64,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE aggregate_type = $1 AND aggregate_id = $2 \
               AND sequence > $3 AND sequence <= $4 ORDER BY sequence"
        );
        let rows = fetch(
            self.db(),
            &sql,
            &[
                Arg::from(aggregate_type),
                Arg::from(aggregate_id),
                Arg::from(after),
                Arg::from(up_to),
            ],
        )
        .await?;
        rows.iter().map(|row| self.recorded(row)).collect()
    }

    /// When the last event of type `event_type` of aggregate `id`, up to
    /// sequence `up_to`, was recorded.
    pub async fn last_recorded(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        event_type: &str,
        up_to: u64,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        let rows = fetch(
            self.db(),
            "SELECT recorded_at FROM events \
              WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence <= $3 \
                AND event_type = $4 \
              ORDER BY sequence DESC LIMIT 1",
            &[
                Arg::from(aggregate_type),
                Arg::from(aggregate_id),
                Arg::from(up_to),
                Arg::from(event_type),
            ],
        )
        .await?;
        rows.first().map(|row| row.time("recorded_at")).transpose()
    }
}
