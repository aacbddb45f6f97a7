//! Incoming webhooks: `POST /hooks/{id}`.
//!
//! A delivery is verified by the Standard Webhooks scheme (the
//! `standardwebhooks` crate): the `webhook-signature` header holds one or
//! more space-separated `v1,<base64 HMAC-SHA256>` signatures of
//! `"{webhook-id}.{webhook-timestamp}.{body}"`, one of which must be made
//! with a secret of the webhook valid now (during a rotation's grace, the
//! old and the new), and `webhook-timestamp` must be within five minutes of
//! now. `webhook-id` is the idempotency key: a repeated id answers the
//! first execution and starts nothing.
//!
//! Every refusal is a plain status with a short JSON message that says
//! nothing about the workflow: 404 for a webhook that does not exist, 401
//! for a missing, wrong or stale signature, 413 for an oversized body, 409
//! for an archived workflow (only after the signature verified), 429 when
//! the webhook's rate is exceeded. An accepted delivery is `202 Accepted`
//! with `{"executionId": …}`.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use standardwebhooks::{Webhook, WebhookError, HEADER_WEBHOOK_ID};
use toolhub_domain::{WebhookId, WorkflowId};
use toolhub_engine::{EngineError, StartRequest};
use toolhub_eventstore::CommandContext;

use crate::error::ApiError;
use crate::state::AppState;

/// The actor recorded for executions a webhook starts: `webhook:<id>`.
pub fn actor(id: WebhookId) -> String {
    format!("webhook:{id}")
}

/// A refusal: the status and a message that reveals nothing more.
fn refuse(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(json!({ "error": message }))).into_response()
}

/// Whether a failure is the database being unusable just now (down,
/// restarting, every connection busy, a statement cancelled).
fn database_unavailable(error: &toolhub_eventstore::StoreError) -> bool {
    error.is_unavailable() || error.is_timeout()
}

/// `503` with `Retry-After`: senders retry a delivery later.
fn unavailable() -> Response {
    let mut response = refuse(
        StatusCode::SERVICE_UNAVAILABLE,
        "the service cannot take deliveries right now; retry shortly",
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

/// `POST /hooks/{id}`: verifies a delivery and starts the webhook's
/// workflow with it.
pub async fn deliver(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Ok(id) = id.parse::<WebhookId>() else {
        return refuse(StatusCode::NOT_FOUND, "not found");
    };
    if let Err(ApiError::RateLimited { retry_after, .. }) =
        state.throttle.check_hook(&id.to_string())
    {
        let mut response = refuse(StatusCode::TOO_MANY_REQUESTS, "too many requests");
        if let Some(seconds) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        return response;
    }
    let limit = state.limits.webhook_body_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return too_large(limit);
    }
    let Ok(body) = axum::body::to_bytes(body, limit).await else {
        return too_large(limit);
    };
    let keys = match state.webhooks.delivery_keys(id, Utc::now()).await {
        Ok(Some(keys)) => keys,
        Ok(None) => return refuse(StatusCode::NOT_FOUND, "not found"),
        Err(toolhub_eventstore::WebhookCommandError::Command(
            toolhub_eventstore::CommandError::Store(error),
        )) if database_unavailable(&error) => {
            tracing::warn!(%error, webhook = %id, "the database is unavailable: a delivery was refused");
            return unavailable();
        }
        Err(error) => {
            tracing::error!(%error, webhook = %id, "could not look up a webhook");
            return refuse(StatusCode::INTERNAL_SERVER_ERROR, "internal error");
        }
    };
    let Ok(text) = std::str::from_utf8(&body) else {
        return refuse(StatusCode::BAD_REQUEST, "the body is not UTF-8 text");
    };
    if let Err(why) = verify(&keys.secrets, &body, &headers) {
        tracing::info!(webhook = %id, reason = why, "refused a webhook delivery");
        return refuse(StatusCode::UNAUTHORIZED, why);
    }
    if keys.archived {
        return refuse(StatusCode::CONFLICT, "the webhook's workflow is archived");
    }
    // The headers verified, so the id is there and is text.
    let message_id = headers
        .get(HEADER_WEBHOOK_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let Some(payload) = payload(text, content_type.as_deref()) else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "the body is not JSON, though its content type says so",
        );
    };
    let input = json!({
        "body": payload,
        "contentType": content_type,
        "webhookId": message_id,
    });
    let mut ctx = CommandContext::new(actor(id), keys.tenant.clone());
    if let Some(request_id) = headers.get("x-request-id").and_then(|v| v.to_str().ok()) {
        ctx.request_id = request_id.to_string();
    }
    start(&state, &ctx, id, keys.workflow_id, input, &message_id).await
}

fn too_large(limit: usize) -> Response {
    refuse(
        StatusCode::PAYLOAD_TOO_LARGE,
        &format!("the body is larger than {limit} bytes"),
    )
}

/// Checks the signature headers against each valid secret; the reason for
/// the refusal otherwise.
fn verify(
    secrets: &[zeroize::Zeroizing<Vec<u8>>],
    body: &Bytes,
    headers: &HeaderMap,
) -> Result<(), &'static str> {
    let mut why = "the signature does not verify";
    for secret in secrets {
        let Ok(webhook) = Webhook::from_bytes(secret.to_vec()) else {
            continue;
        };
        match webhook.verify(body, headers) {
            Ok(()) => return Ok(()),
            Err(WebhookError::MissingHeader(_) | WebhookError::InvalidHeader(_)) => {
                return Err(
                    "the webhook-id, webhook-timestamp and webhook-signature headers are required",
                )
            }
            Err(
                WebhookError::InvalidTimestamp
                | WebhookError::TimestampTooOldError
                | WebhookError::FutureTimestampError,
            ) => return Err("the webhook-timestamp is not within five minutes of now"),
            Err(_) => why = "the signature does not verify",
        }
    }
    Err(why)
}

/// The body as the execution's input sees it: JSON when the content type
/// says JSON (`None` when it does not parse), else the text.
fn payload(text: &str, content_type: Option<&str>) -> Option<Value> {
    let essence = content_type
        .and_then(|t| t.split(';').next())
        .map(|t| t.trim().to_ascii_lowercase());
    let is_json = match essence.as_deref() {
        Some(t) => t == "application/json" || t.ends_with("+json"),
        // No content type: JSON if it parses, else text.
        None => {
            return Some(serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.into())))
        }
    };
    if is_json {
        serde_json::from_str(text).ok()
    } else {
        Some(Value::String(text.to_string()))
    }
}

/// Starts the execution under the idempotency key the message id gives.
async fn start(
    state: &AppState,
    ctx: &CommandContext,
    id: WebhookId,
    workflow_id: WorkflowId,
    input: Value,
    message_id: &str,
) -> Response {
    // The key is bounded and printable whatever the sender's id holds.
    let digest = Sha256::digest(message_id.as_bytes());
    let key = format!("webhook:{id}:{}", hex::encode(&digest[..16]));
    let request = StartRequest {
        workflow_id,
        input,
        breakpoints: Vec::new(),
        idempotency_key: Some(key),
        trigger: "webhook".into(),
        source: Some(id.to_string()),
    };
    match state.engine.start(ctx, request).await {
        Ok(started) => (
            StatusCode::ACCEPTED,
            axum::Json(json!({ "executionId": started.execution_id.to_string() })),
        )
            .into_response(),
        Err(EngineError::NotFound) => refuse(StatusCode::NOT_FOUND, "not found"),
        Err(EngineError::Archived) => {
            refuse(StatusCode::CONFLICT, "the webhook's workflow is archived")
        }
        Err(EngineError::Validation { reason, .. }) => refuse(StatusCode::BAD_REQUEST, &reason),
        Err(EngineError::Execution(toolhub_eventstore::CommandError::Domain(e))) => {
            // The input holds what no input may (a control character).
            refuse(StatusCode::BAD_REQUEST, &e.to_string())
        }
        Err(EngineError::Store(error))
        | Err(EngineError::Execution(toolhub_eventstore::CommandError::Store(error)))
            if database_unavailable(&error) =>
        {
            tracing::warn!(%error, webhook = %id, "the database is unavailable: a delivery was refused");
            unavailable()
        }
        Err(error) => {
            tracing::error!(%error, webhook = %id, "could not start a webhook's execution");
            refuse(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
        }
    }
}
