//! One aggregate's history up to a point, read so that folding to any point
//! costs the same at any depth: the last event at or before the point is
//! found by the database, the state starts from the checkpoint before it
//! (see [`crate::bus`]'s snapshots), and only the events between the two
//! are read and folded.

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

impl EventStore {
    /// The sequence of the last event of aggregate `id` at or before
    /// `until`: `None` when it had no event then.
    ///
    /// An aggregate's events commit one command after another, so along
    /// its sequence both their positions and (but for a clock stepping
    /// back) their recorded times grow: the events at or before a point
    /// are a prefix of the stream.
    pub async fn last_sequence_until(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        until: Until,
    ) -> Result<Option<u64>, StoreError> {
        let db = self.db();
        let (condition, bound): (&str, Vec<Arg>) = match (until, db) {
            (Until::Sequence(n), _) => ("sequence <= $3", vec![Arg::from(n)]),
            (Until::Position(p), Db::Postgres(_)) => (
                "(transaction_id, global_position) <= ($3::text::xid8, $4)",
                vec![Arg::from(p.transaction.to_string()), Arg::from(p.global)],
            ),
            // SQLite's transaction ids are all 0: the global position is
            // the commit order.
            (Until::Position(p), Db::Sqlite(_)) => {
                ("global_position <= $3", vec![Arg::from(p.global)])
            }
            (Until::Time(t), Db::Postgres(_)) => ("recorded_at <= $3", vec![Arg::from(t)]),
            // SQLite stores the time as text to the millisecond
            // (`…T10:00:00.123Z`); the bound in the same form, truncated,
            // compares as the times do.
            (Until::Time(t), Db::Sqlite(_)) => (
                "recorded_at <= $3",
                vec![Arg::from(t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())],
            ),
        };
        let sql = format!(
            "SELECT sequence FROM events WHERE aggregate_type = $1 AND aggregate_id = $2 \
               AND {condition} ORDER BY sequence DESC LIMIT 1"
        );
        let mut args = vec![Arg::from(aggregate_type), Arg::from(aggregate_id)];
        args.extend(bound);
        let rows = fetch(db, &sql, &args).await?;
        rows.first().map(|row| row.uint("sequence")).transpose()
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

    /// The newest checkpoint of aggregate `id` of type `A` strictly before
    /// version `before`: its state and version. Checkpoints of another
    /// shape of the state ([`AggregateRoot::STATE_VERSION`]) are passed
    /// over, as snapshots are.
    pub async fn checkpoint_before<A: AggregateRoot>(
        &self,
        aggregate_id: &str,
        before: u64,
    ) -> Result<Option<(A, u64)>, StoreError> {
        // A few recent rows, in case the newest is of another shape; past
        // those, folding from the first event is as fast as looking on.
        let rows = fetch(
            self.db(),
            "SELECT sequence, payload FROM checkpoints \
              WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence < $3 \
              ORDER BY sequence DESC LIMIT 3",
            &[
                Arg::from(A::TYPE),
                Arg::from(aggregate_id),
                Arg::from(before),
            ],
        )
        .await?;
        for row in rows {
            if let Some(state) = snapshot::open::<A>(row.json("payload")?) {
                return Ok(Some((state, row.uint("sequence")?)));
            }
        }
        Ok(None)
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
