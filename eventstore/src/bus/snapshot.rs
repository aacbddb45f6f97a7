//! Snapshots: an aggregate's state at a version, so that a cold load folds
//! at most `snapshot_every` events. Events never change, so a snapshot at
//! any version stays true; one row per aggregate, replaced as it grows.
//! Each snapshot is also kept as a checkpoint (`checkpoints`, one row per
//! version), from which time-travel folds to any earlier point.
//!
//! A snapshot is the state's JSON wrapped with the state's schema version
//! ([`AggregateRoot::STATE_VERSION`]): `{"stateVersion": 1, "state": …}`.
//! One of another version (or none, as written before versions existed) is
//! ignored and the aggregate folded from its first event, because a state
//! whose meaning changed may still deserialise.

use serde_json::{json, Value};
use toolhub_domain::AggregateRoot;

use crate::error::StoreError;
use crate::sql::{exec, Arg};
use crate::store::Db;

/// Writes (or advances) the snapshot of `id` at `version`, and keeps it as
/// a checkpoint.
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
    let payload = serde_json::to_string(&payload)?;
    exec(
        db,
        "INSERT INTO checkpoints (aggregate_type, aggregate_id, sequence, payload, \
                                  transaction_id, global_position, recorded_at) \
         SELECT aggregate_type, aggregate_id, sequence, $4::json, \
                transaction_id, global_position, recorded_at \
           FROM events WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence = $3 \
         ON CONFLICT DO NOTHING",
        &[
            aggregate_type.into(),
            id.into(),
            version.into(),
            Arg::JsonText(Some(payload.clone())),
        ],
    )
    .await?;
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
            Arg::JsonText(Some(payload)),
        ],
    )
    .await?;
    Ok(())
}

/// The snapshot payload of `state`.
pub(crate) fn seal<A: AggregateRoot>(state: &A) -> Result<Value, serde_json::Error> {
    Ok(json!({ "stateVersion": A::STATE_VERSION, "state": serde_json::to_value(state)? }))
}

/// The state in a snapshot payload, when it is of the current version.
pub(crate) fn open<A: AggregateRoot>(payload: Value) -> Option<A> {
    let Value::Object(mut payload) = payload else {
        return None;
    };
    if payload.get("stateVersion").and_then(Value::as_u64) != Some(u64::from(A::STATE_VERSION)) {
        return None;
    }
    serde_json::from_value(payload.remove("state")?).ok()
}
