//! Snapshots: an aggregate's state at a version, so that a cold load folds
//! at most `snapshot_every` events. Events never change, so a snapshot at
//! any version stays true; one row per aggregate, replaced as it grows.

use serde_json::Value;

use crate::error::StoreError;
use crate::sql::{exec, Arg};
use crate::store::Db;

/// Writes (or advances) the snapshot of `id` at `version`.
pub(crate) async fn write(
    db: &Db,
    aggregate_type: &str,
    id: &str,
    version: u64,
    every: u64,
    payload: Value,
) -> Result<(), StoreError> {
    let version = version as i64;
    let ordinal = version / every.max(1) as i64;
    exec(
        db,
        "INSERT INTO snapshots (aggregate_type, aggregate_id, last_sequence, current_snapshot, payload) \
         VALUES ($1, $2, $3, $4, $5::json) \
         ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE \
           SET last_sequence = excluded.last_sequence, \
               current_snapshot = excluded.current_snapshot, \
               payload = excluded.payload \
         WHERE snapshots.last_sequence < excluded.last_sequence",
        &[
            aggregate_type.into(),
            id.into(),
            version.into(),
            ordinal.into(),
            Arg::JsonText(Some(serde_json::to_string(&payload)?)),
        ],
    )
    .await?;
    Ok(())
}
