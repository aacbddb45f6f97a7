//! The `http` node executor: one HTTP request, its response as JSON.
//!
//! [`send`] takes a request whose templates are already resolved and a
//! client built by [`EgressPolicy::client`](crate::egress::EgressPolicy::client),
//! which refuses internal destinations. The output of a successful step is
//!
//! ```json
//! {"status": 200, "headers": {"content-type": "application/json"}, "body": {"id": 1}}
//! ```
//!
//! - `headers`: lowercase names; a header sent several times has its values
//!   joined with `", "`; bytes that are not UTF-8 are replaced.
//! - `body`: the parsed JSON when the response's media type is
//!   `application/json` or ends in `+json` and the body parses; otherwise the
//!   body as text (bytes that are not UTF-8 are replaced); `null` when the
//!   body is empty (a `204`, a `HEAD`).
//!
//! A request body that is a JSON string is sent as it is (`text/plain`
//! unless the node sets `Content-Type`); any other JSON value is sent
//! serialized (`application/json` unless the node sets `Content-Type`).
//!
//! # Failures
//!
//! A `4xx` or `5xx` response is a failed step whose message carries the
//! status and the start of the body, so that a workflow does not carry on
//! with an error page as its data. Redirects are followed by the client; any
//! other status is a success. Retryable ([`StepFailure::retryable`]):
//! connection failures, timeouts, an interrupted body, and the statuses 408,
//! 425, 429 and 5xx. Permanent: other 4xx, refusals by the egress policy,
//! too many redirects, a malformed URL or header, a body over
//! [`HttpLimits::max_response_bytes`].
//!
//! # Cancellation
//!
//! Dropping the future returned by [`send`] cancels the request: the
//! connection is closed, and a body being read is abandoned. The engine
//! stops a step by dropping its future.
//!
//! This module must never put a request header in a message or a log (they
//! carry credentials), and never read a response body past the limit.

use crate::egress::{EgressError, HttpLimits};
use crate::failure::StepFailure;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};
use reqwest::{Method, StatusCode, Url};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::error::Error as _;
use toolhub_domain::definition::HttpMethod;

/// How much of an error response's body is quoted in the failure message,
/// in characters: enough to show an API's error, not a whole page.
const QUOTED_BODY_CHARS: usize = 512;

/// How much of an error response's body is read, in bytes. The rest is
/// never downloaded.
const ERROR_BODY_BYTES: usize = 4 * 1024;

/// An `http` node's request, with its templates already resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpRequest {
    /// The method.
    pub method: HttpMethod,
    /// The absolute `http://` or `https://` URL.
    pub url: String,
    /// Request headers by name. They may carry credentials, so they never
    /// appear in a failure message.
    pub headers: BTreeMap<String, String>,
    /// The body, if any: a string is sent as text, other JSON serialized.
    pub body: Option<Value>,
}

/// Sends `request` with `client` and returns the step's output, or why the
/// step failed and whether retrying may help (see the module documentation).
///
/// `client` must come from
/// [`EgressPolicy::client`](crate::egress::EgressPolicy::client): it is what
/// refuses internal destinations. `limits` should be the ones the client was
/// built with; the whole-request timeout and the body limit are applied
/// here again per request. Dropping the future cancels the request.
pub async fn send(
    client: &reqwest::Client,
    request: HttpRequest,
    limits: &HttpLimits,
) -> Result<Value, StepFailure> {
    let url = Url::parse(&request.url).map_err(|error| {
        StepFailure::permanent(format!("the URL `{}` is not valid: {error}", request.url))
    })?;
    let target = origin(&url);
    let mut builder = client
        .request(method(request.method), url)
        .timeout(limits.timeout);
    let mut has_content_type = false;
    for (name, value) in &request.headers {
        let header = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| StepFailure::permanent(format!("`{name}` is not a valid header name")))?;
        // The value is not quoted: it may be a credential.
        let value = HeaderValue::from_str(value).map_err(|_| {
            StepFailure::permanent(format!("the value of the header `{name}` is not valid"))
        })?;
        has_content_type |= header == CONTENT_TYPE;
        builder = builder.header(header, value);
    }
    if let Some(body) = request.body {
        let (bytes, content_type) = match body {
            Value::String(text) => (text.into_bytes(), "text/plain; charset=utf-8"),
            other => (other.to_string().into_bytes(), "application/json"),
        };
        if !has_content_type {
            builder = builder.header(CONTENT_TYPE, content_type);
        }
        builder = builder.body(bytes);
    }

    let mut response = builder
        .send()
        .await
        .map_err(|error| request_failure(&error, &target, limits))?;
    let status = response.status();
    let headers = headers_json(response.headers());
    let json = is_json(response.headers());

    if status.is_client_error() || status.is_server_error() {
        let body = read_body(&mut response, ERROR_BODY_BYTES, true)
            .await
            .unwrap_or_default();
        return Err(status_failure(status, &body));
    }

    if let Some(length) = response.content_length() {
        if length > limits.max_response_bytes as u64 {
            return Err(too_large(&target, limits));
        }
    }
    let body = read_body(&mut response, limits.max_response_bytes, false)
        .await
        .map_err(|fault| match fault {
            BodyFault::TooLarge => too_large(&target, limits),
            BodyFault::Read(error) => request_failure(&error, &target, limits),
        })?;

    let mut output = Map::new();
    output.insert("status".into(), Value::from(status.as_u16()));
    output.insert("headers".into(), Value::Object(headers));
    output.insert("body".into(), body_json(&body, json));
    Ok(Value::Object(output))
}

/// The reqwest method for a node's method.
fn method(method: HttpMethod) -> Method {
    match method {
        HttpMethod::Get => Method::GET,
        HttpMethod::Post => Method::POST,
        HttpMethod::Put => Method::PUT,
        HttpMethod::Patch => Method::PATCH,
        HttpMethod::Delete => Method::DELETE,
        HttpMethod::Head => Method::HEAD,
    }
}

/// Scheme, host and port of a URL, for messages: the path and query may
/// carry tokens, so they are left out.
fn origin(url: &Url) -> String {
    url.origin().ascii_serialization()
}

/// Why reading a body stopped.
enum BodyFault {
    /// It went past the limit.
    TooLarge,
    /// The connection failed or timed out while reading.
    Read(reqwest::Error),
}

/// Reads the body chunk by chunk, and stops as soon as it would pass
/// `limit` bytes: refused when `truncate` is false, cut at the limit when it
/// is true (for quoting an error response).
async fn read_body(
    response: &mut reqwest::Response,
    limit: usize,
    truncate: bool,
) -> Result<Vec<u8>, BodyFault> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(BodyFault::Read)? {
        let room = limit - body.len();
        if chunk.len() > room {
            if truncate {
                body.extend_from_slice(&chunk[..room]);
                break;
            }
            return Err(BodyFault::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The response headers as a JSON object of lowercase names.
fn headers_json(headers: &HeaderMap) -> Map<String, Value> {
    let mut joined: BTreeMap<&str, String> = BTreeMap::new();
    for (name, value) in headers {
        let value = String::from_utf8_lossy(value.as_bytes());
        joined
            .entry(name.as_str())
            .and_modify(|all| {
                all.push_str(", ");
                all.push_str(&value);
            })
            .or_insert_with(|| value.into_owned());
    }
    joined
        .into_iter()
        .map(|(name, value)| (name.to_string(), Value::String(value)))
        .collect()
}

/// True when the response says its body is JSON (`application/json`, or a
/// `+json` type such as `application/problem+json`).
fn is_json(headers: &HeaderMap) -> bool {
    let Some(content_type) = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let media_type = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    media_type == "application/json" || media_type.ends_with("+json")
}

/// The body as the step's output: `null` when empty, parsed JSON when it is
/// JSON, text otherwise (and when JSON does not parse, so that the data is
/// still there to look at).
fn body_json(body: &[u8], json: bool) -> Value {
    if body.is_empty() {
        return Value::Null;
    }
    if json {
        if let Ok(value) = serde_json::from_slice(body) {
            return value;
        }
    }
    Value::String(String::from_utf8_lossy(body).into_owned())
}

/// The failure for a 4xx or 5xx response.
fn status_failure(status: StatusCode, body: &[u8]) -> StepFailure {
    let retryable = status.is_server_error()
        || matches!(
            status,
            StatusCode::REQUEST_TIMEOUT | StatusCode::TOO_EARLY | StatusCode::TOO_MANY_REQUESTS
        );
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    let mut message = format!("the server answered HTTP {status}");
    if !text.is_empty() {
        let quoted: String = text.chars().take(QUOTED_BODY_CHARS).collect();
        let ellipsis = if quoted.len() < text.len() { "…" } else { "" };
        message.push_str(&format!(": {quoted}{ellipsis}"));
    }
    StepFailure { message, retryable }
}

/// The failure for a body over the limit.
fn too_large(target: &str, limits: &HttpLimits) -> StepFailure {
    StepFailure::permanent(format!(
        "the response from {target} is larger than the limit of {} bytes",
        limits.max_response_bytes
    ))
}

/// The failure for a request that got no (complete) response.
fn request_failure(error: &reqwest::Error, target: &str, limits: &HttpLimits) -> StepFailure {
    if let Some(refusal) = egress_refusal(error) {
        return StepFailure::permanent(refusal.to_string());
    }
    if error.is_timeout() {
        return StepFailure::retryable(format!(
            "the request to {target} timed out (connect limit {:?}, whole-request limit {:?})",
            limits.connect_timeout, limits.timeout
        ));
    }
    let cause = causes(error);
    if error.is_connect() {
        StepFailure::retryable(format!("could not connect to {target}: {cause}"))
    } else if error.is_builder() || error.is_redirect() {
        StepFailure::permanent(format!(
            "the request to {target} could not be made: {cause}"
        ))
    } else {
        // The connection broke while the request or the body was in flight.
        StepFailure::retryable(format!("the request to {target} failed: {cause}"))
    }
}

/// The egress policy's refusal, if that is what stopped the request.
fn egress_refusal(error: &reqwest::Error) -> Option<&EgressError> {
    let mut source = error.source();
    while let Some(cause) = source {
        if let Some(refusal) = cause.downcast_ref::<EgressError>() {
            return Some(refusal);
        }
        source = cause.source();
    }
    None
}

/// The error's sources, outermost first, without repeats and without the
/// URL reqwest puts in its own message.
fn causes(error: &reqwest::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !parts.iter().any(|part| part.contains(&text)) {
            parts.push(text);
        }
        source = cause.source();
    }
    if parts.is_empty() {
        "unknown error".to_string()
    } else {
        parts.join(": ")
    }
}

#[cfg(test)]
mod tests;
