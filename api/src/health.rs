//! `/health/live`, `/health/ready` and `/metrics`.
//!
//! Liveness says the process answers. Readiness says it can serve: the
//! database answers, no projector is stopped at an event it cannot decode
//! or apply, and every projector is within the configured lag. Its
//! JSON body names each check, so an operator sees which one failed.

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

/// `GET /health/ready`.
pub async fn ready(State(state): State<Arc<AppState>>) -> Response {
    let database = match tokio::time::timeout(Duration::from_secs(2), state.store.ping()).await {
        Ok(Ok(())) => json!({ "ok": true }),
        Ok(Err(error)) => {
            tracing::warn!(%error, "readiness: the database does not answer");
            json!({ "ok": false, "detail": "the database does not answer" })
        }
        Err(_) => json!({ "ok": false, "detail": "the database did not answer within 2s" }),
    };
    let projections = match tokio::time::timeout(Duration::from_secs(2), state.read.lag()).await {
        Ok(Ok(lags)) => {
            let max_events = state.limits.ready_max_lag_events;
            let max_ms = state.limits.ready_max_lag.as_millis() as u64;
            let behind: Vec<Value> = lags
                .iter()
                .filter(|l| {
                    l.behind > max_events || l.oldest_unapplied_ms.is_some_and(|ms| ms > max_ms)
                })
                .map(|l| {
                    json!({
                        "projection": l.projection,
                        "behind": l.behind,
                        "oldestUnappliedMs": l.oldest_unapplied_ms,
                    })
                })
                .collect();
            if behind.is_empty() {
                json!({ "ok": true })
            } else {
                json!({
                    "ok": false,
                    "detail": format!("projectors are more than {max_events} events or {max_ms} ms behind"),
                    "behind": behind,
                })
            }
        }
        Ok(Err(error)) => {
            tracing::warn!(%error, "readiness: could not read the projector lag");
            json!({ "ok": false, "detail": "could not read the projector lag" })
        }
        Err(_) => json!({ "ok": false, "detail": "the projector lag did not answer within 2s" }),
    };
    let stalled = match tokio::time::timeout(Duration::from_secs(2), state.read.stalls()).await {
        Ok(Ok(stalls)) if stalls.is_empty() => json!({ "ok": true }),
        Ok(Ok(stalls)) => json!({
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
        Ok(Err(error)) => {
            tracing::warn!(%error, "readiness: could not read the projectors' stalls");
            json!({ "ok": false, "detail": "could not read the projectors' stalls" })
        }
        Err(_) => {
            json!({ "ok": false, "detail": "the projectors' stalls did not answer within 2s" })
        }
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

/// `GET /metrics`, in Prometheus text format.
pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    state.metrics.observe_engine(&state.engine.stats());
    if let Ok(Ok(lags)) = tokio::time::timeout(Duration::from_secs(2), state.read.lag()).await {
        for lag in lags {
            state
                .metrics
                .projector_lag
                .with_label_values(&[lag.projection.as_str()])
                .set(i64::try_from(lag.behind).unwrap_or(i64::MAX));
        }
    }
    if let Ok(Ok(stalls)) = tokio::time::timeout(Duration::from_secs(2), state.read.stalls()).await
    {
        state.metrics.observe_stalls(&stalls);
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}
