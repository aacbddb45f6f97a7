//! `/health/live`, `/health/ready` and `/metrics`.
//!
//! Liveness says the process answers. Readiness says it can serve: the
//! database answers, no projector is stopped at an event it cannot decode
//! or apply, and every projector is within the configured lag. Its JSON
//! body names each check, so an operator sees which one failed. Both
//! readiness and metrics answer from memory ([`crate::standing`]): a probe
//! or a scrape never queries the database.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use crate::state::AppState;

/// `GET /health/live`.
pub async fn live() -> Json<Value> {
    Json(json!({ "status": "live" }))
}

/// A database check older than this counts as failed: the task that checks
/// is stuck or gone.
const STALE_CHECK: Duration = Duration::from_secs(10);

/// `GET /health/ready`, from what [`crate::standing`] keeps in memory: it
/// never queries the database itself.
pub async fn ready(State(state): State<Arc<AppState>>) -> Response {
    let standing = state.standing.snapshot();
    let database = match standing.database {
        Some((true, age)) if age <= STALE_CHECK => json!({ "ok": true }),
        Some((false, _)) => json!({ "ok": false, "detail": "the database does not answer" }),
        Some((true, age)) => json!({
            "ok": false,
            "detail": format!("no database check for {} s", age.as_secs()),
        }),
        None => json!({ "ok": false, "detail": "the database has not been checked yet" }),
    };
    let max_events = state.limits.ready_max_lag_events;
    let max_ms = state.limits.ready_max_lag.as_millis() as u64;
    let oldest_ms = standing.oldest_unapplied.map(|d| d.as_millis() as u64);
    let lag = json!({
        "behind": standing.behind,
        "oldestUnappliedMs": oldest_ms,
        "applied": standing.applied.to_string(),
        "head": standing.head.to_string(),
    });
    let projections = if standing.applied_age.is_none_or(|age| age > STALE_CHECK) {
        json!({ "ok": false, "detail": "the projectors' checkpoints have not been read recently", "lag": lag })
    } else if standing.behind > max_events || oldest_ms.is_some_and(|ms| ms > max_ms) {
        json!({
            "ok": false,
            "detail": format!("the read models are more than {max_events} events or {max_ms} ms behind"),
            "lag": lag,
        })
    } else {
        json!({ "ok": true, "lag": lag })
    };
    let stalled = match &standing.stalls {
        Some((stalls, age)) if *age > STALE_CHECK => json!({
            "ok": false,
            "detail": format!(
                "the projectors' stalls were last read {} s ago ({} then)",
                age.as_secs(),
                stalls.len()
            ),
        }),
        Some((stalls, _)) if stalls.is_empty() => json!({ "ok": true }),
        Some((stalls, _)) => json!({
            "ok": false,
            "detail": stalls
                .iter()
                .map(|s| format!(
                    "projection {} is stopped at position {} ({})",
                    s.projection, s.position.global, s.position
                ))
                .collect::<Vec<_>>()
                .join("; "),
            "stalled": stalls
                .iter()
                .map(|s| json!({
                    "projection": s.projection,
                    "position": s.position.global,
                    "transactionId": s.position.transaction.to_string(),
                    "since": s.since.to_rfc3339(),
                }))
                .collect::<Vec<_>>(),
        }),
        None => json!({ "ok": false, "detail": "the projectors' stalls have not been read yet" }),
    };
    let ok = database["ok"] == json!(true)
        && projections["ok"] == json!(true)
        && stalled["ok"] == json!(true);
    let failed: Vec<&str> = [
        ("database", &database),
        ("projections", &projections),
        ("stalled", &stalled),
    ]
    .into_iter()
    .filter(|(_, check)| check["ok"] != json!(true))
    .map(|(name, _)| name)
    .collect();
    let body = json!({
        "status": if ok { "ready" } else { "unready" },
        "failed": failed,
        "checks": { "database": database, "projections": projections, "stalled": stalled },
    });
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// `GET /metrics`, in Prometheus text format, from memory.
pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    state.metrics.observe_engine(&state.engine.stats());
    state.metrics.observe_standing(&state.standing.snapshot());
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}
