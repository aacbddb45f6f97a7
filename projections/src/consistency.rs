//! Where the read models stand against the log: the lowest checkpoint
//! ([`ReadModels::applied`]), read-your-writes ([`ReadModels::wait_for`]) and
//! each projector's lag.

use std::time::Duration;

use toolhub_eventstore::sql::{fetch, placeholders, Arg};
use toolhub_eventstore::{Db, Position, StoreError};

use crate::queries::{ReadError, ReadModels};

/// Why waiting for a position ended without it.
#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    /// The read models did not reach the position in time.
    #[error("the read models have not reached position {position} yet")]
    Timeout {
        /// The position waited for.
        position: Position,
    },
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// How far a projector is behind the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectorLag {
    /// The projection's name.
    pub projection: String,
    /// Its checkpoint.
    pub checkpoint: Position,
    /// How many committed events it has not applied yet.
    pub behind: u64,
    /// How long ago the oldest of them was recorded, in milliseconds.
    pub oldest_unapplied_ms: Option<u64>,
}

impl ReadModels {
    /// The lowest checkpoint among the projections.
    pub async fn applied(&self) -> Result<Position, StoreError> {
        let names = crate::projection::NAMES;
        let sql = format!(
            "SELECT transaction_id, global_position FROM projector_checkpoints WHERE projection IN ({})",
            placeholders(1, names.len())
        );
        let args: Vec<Arg> = names.iter().map(|n| Arg::from(*n)).collect();
        let rows = fetch(self.db(), &sql, &args).await?;
        if rows.len() < names.len() {
            return Ok(Position::ZERO);
        }
        let mut min: Option<Position> = None;
        for row in &rows {
            let p = row.int_position("transaction_id", "global_position")?;
            min = Some(min.map_or(p, |m| m.min(p)));
        }
        Ok(min.unwrap_or(Position::ZERO))
    }

    /// Returns once every projection has applied `position`, or
    /// [`WaitError::Timeout`] after `timeout`.
    pub async fn wait_for(&self, position: Position, timeout: Duration) -> Result<(), WaitError> {
        let deadline = tokio::time::Instant::now() + timeout;
        // Subscribe before the first read, so that a batch committed
        // between the read and the wait still wakes it.
        let mut moved = self.store.projected();
        let mut pause = Duration::from_millis(5);
        loop {
            if self.applied().await? >= position {
                return Ok(());
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Err(WaitError::Timeout { position });
            }
            // Woken by the projectors' announcements; the growing pause is
            // the fallback for a lost one.
            tokio::select! {
                _ = moved.changed() => {}
                _ = tokio::time::sleep_until((now + pause).min(deadline)) => {}
            }
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    }

    /// The projections stopped at an event they cannot decode or apply
    /// (see [`crate::stall`]), from the checkpoint rows every replica
    /// shares.
    pub async fn stalls(&self) -> Result<Vec<crate::Stall>, StoreError> {
        crate::stall::stalls(self.db()).await
    }

    /// How far each projection is behind the log.
    pub async fn lag(&self) -> Result<Vec<ProjectorLag>, ReadError> {
        let mut out = Vec::new();
        for name in crate::projection::NAMES {
            let rows = fetch(
                self.db(),
                "SELECT transaction_id, global_position FROM projector_checkpoints WHERE projection = $1",
                &[name.into()],
            )
            .await?;
            let checkpoint = match rows.first() {
                Some(r) => r.int_position("transaction_id", "global_position")?,
                None => Position::ZERO,
            };
            let (behind, oldest) = match self.db() {
                Db::Postgres(pool) => {
                    let row: (i64, Option<f64>) = sqlx::query_as(
                        "SELECT count(*), (extract(epoch FROM (clock_timestamp() - min(recorded_at))) * 1000)::float8 \
                           FROM events WHERE (transaction_id, global_position) > ($1::text::xid8, $2)",
                    )
                    .bind(checkpoint.transaction.to_string())
                    .bind(checkpoint.global)
                    .fetch_one(pool)
                    .await
                    .map_err(StoreError::from)?;
                    row
                }
                Db::Sqlite(pool) => {
                    let row: (i64, Option<f64>) = sqlx::query_as(
                        "SELECT count(*), (julianday('now') - julianday(min(recorded_at))) * 86400000.0 \
                           FROM events WHERE global_position > ?1",
                    )
                    .bind(checkpoint.global)
                    .fetch_one(pool)
                    .await
                    .map_err(StoreError::from)?;
                    row
                }
            };
            out.push(ProjectorLag {
                projection: name.to_string(),
                checkpoint,
                behind: behind.max(0) as u64,
                oldest_unapplied_ms: oldest.map(|ms| ms.max(0.0) as u64),
            });
        }
        Ok(out)
    }
}
