//! The `http` executor against real servers on loopback ports.

use super::*;
use crate::egress::EgressPolicy;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query};
use axum::http::{header, HeaderMap as AxumHeaders, Method as AxumMethod};
use axum::response::{AppendHeaders, IntoResponse, Response};
use axum::routing::{any, get};
use axum::{Json, Router};
use futures::StreamExt;
use serde_json::json;
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

/// A test server's routes, each for one behaviour of a real server.
fn app() -> Router {
    Router::new()
        .route(
            "/json",
            get(|| async { ([("x-trace", "abc")], Json(json!({"items": [{"id": 1}]}))) }),
        )
        .route(
            "/problem",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "application/problem+json")],
                    r#"{"title": "fine"}"#,
                )
            }),
        )
        .route("/text", get(|| async { "hello, world" }))
        .route(
            "/broken-json",
            get(|| async { ([(header::CONTENT_TYPE, "application/json")], "{not json") }),
        )
        .route(
            "/cookies",
            get(|| async {
                (
                    AppendHeaders([("set-cookie", "a=1"), ("set-cookie", "b=2")]),
                    "ok",
                )
            }),
        )
        .route(
            "/no-content",
            any(|| async { axum::http::StatusCode::NO_CONTENT }),
        )
        .route(
            "/status/{code}",
            get(|Path(code): Path<u16>| async move {
                let status = axum::http::StatusCode::from_u16(code).unwrap();
                (status, format!("status {code} says no"))
            }),
        )
        .route(
            "/long-error",
            get(|| async { (axum::http::StatusCode::BAD_REQUEST, "x".repeat(5000)) }),
        )
        .route(
            "/echo",
            any(
                |method: AxumMethod, headers: AxumHeaders, body: String| async move {
                    let header =
                        |name: &str| headers.get(name).map(|v| v.to_str().unwrap().to_string());
                    Json(json!({
                        "method": method.as_str(),
                        "content_type": header("content-type"),
                        "x_custom": header("x-custom"),
                        "body": body,
                    }))
                },
            ),
        )
        .route(
            "/redirect",
            get(|Query(query): Query<HashMap<String, String>>| async move {
                (
                    axum::http::StatusCode::FOUND,
                    [(header::LOCATION, query["to"].clone())],
                )
            }),
        )
        .route(
            "/loop",
            get(|| async { (axum::http::StatusCode::FOUND, [(header::LOCATION, "/loop")]) }),
        )
        .route("/big", get(|| async { vec![b'a'; 64 * 1024] }))
        .route(
            "/endless",
            get(|| async {
                // Bounded so that a broken client cannot keep it going for
                // long: 100 MiB at most.
                let chunks = futures::stream::repeat(Bytes::from(vec![b'a'; 16 * 1024]))
                    .take(6_400)
                    .map(Ok::<_, Infallible>);
                Response::new(Body::from_stream(chunks))
            }),
        )
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(10)).await;
                "late".into_response()
            }),
        )
}

/// Serves [`app`] on a fresh loopback port and returns its address.
async fn serve() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app()).await.unwrap() });
    address
}

fn loopback_policy() -> EgressPolicy {
    EgressPolicy::parse("127.0.0.1/32").unwrap()
}

fn client(policy: &EgressPolicy, limits: HttpLimits) -> reqwest::Client {
    policy.client(limits).unwrap()
}

fn get_request(url: String) -> HttpRequest {
    HttpRequest {
        method: HttpMethod::Get,
        url,
        headers: BTreeMap::new(),
        body: None,
    }
}

/// Sends a GET to `path` on a fresh server that the policy allows.
async fn get_local(path: &str, limits: HttpLimits) -> Result<Value, StepFailure> {
    let address = serve().await;
    let client = client(&loopback_policy(), limits);
    send(
        &client,
        get_request(format!("http://{address}{path}")),
        &limits,
    )
    .await
}

/// True when `listener` has a connection waiting: the kernel completes
/// handshakes into the backlog even when nobody accepts, so an empty backlog
/// after a request means the request never connected.
async fn was_connected_to(listener: &TcpListener) -> bool {
    tokio::time::timeout(Duration::from_millis(300), listener.accept())
        .await
        .is_ok()
}

fn assert_refused(failure: &StepFailure) {
    assert!(!failure.retryable, "{failure:?}");
    assert!(
        failure.message.contains("refused by the egress policy"),
        "{failure:?}"
    );
}

#[tokio::test]
async fn a_json_response_becomes_its_status_headers_and_parsed_body() {
    let output = get_local("/json", HttpLimits::default()).await.unwrap();
    assert_eq!(output["status"], 200);
    assert_eq!(output["headers"]["x-trace"], "abc");
    assert_eq!(output["headers"]["content-type"], "application/json");
    assert_eq!(output["body"], json!({"items": [{"id": 1}]}));
}

#[tokio::test]
async fn a_plus_json_media_type_is_parsed_as_json() {
    let output = get_local("/problem", HttpLimits::default()).await.unwrap();
    assert_eq!(output["body"], json!({"title": "fine"}));
}

#[tokio::test]
async fn a_text_response_keeps_its_body_as_text() {
    let output = get_local("/text", HttpLimits::default()).await.unwrap();
    assert_eq!(output["body"], "hello, world");
    assert!(output["headers"]["content-type"]
        .as_str()
        .unwrap()
        .starts_with("text/plain"));
}

#[tokio::test]
async fn a_json_body_that_does_not_parse_is_kept_as_text() {
    let output = get_local("/broken-json", HttpLimits::default())
        .await
        .unwrap();
    assert_eq!(output["body"], "{not json");
}

#[tokio::test]
async fn an_empty_body_is_null() {
    let output = get_local("/no-content", HttpLimits::default())
        .await
        .unwrap();
    assert_eq!(output["status"], 204);
    assert_eq!(output["body"], Value::Null);
}

#[tokio::test]
async fn a_header_sent_twice_has_its_values_joined() {
    let output = get_local("/cookies", HttpLimits::default()).await.unwrap();
    assert_eq!(output["headers"]["set-cookie"], "a=1, b=2");
}

#[tokio::test]
async fn a_json_request_body_is_sent_serialized_as_json() {
    let address = serve().await;
    let limits = HttpLimits::default();
    let request = HttpRequest {
        method: HttpMethod::Post,
        url: format!("http://{address}/echo"),
        headers: BTreeMap::from([("X-Custom".to_string(), "yes".to_string())]),
        body: Some(json!({"name": "Ada", "n": 1})),
    };
    let output = send(&client(&loopback_policy(), limits), request, &limits)
        .await
        .unwrap();
    let echoed = &output["body"];
    assert_eq!(echoed["method"], "POST");
    assert_eq!(echoed["content_type"], "application/json");
    assert_eq!(echoed["x_custom"], "yes");
    let sent: Value = serde_json::from_str(echoed["body"].as_str().unwrap()).unwrap();
    assert_eq!(sent, json!({"name": "Ada", "n": 1}));
}

#[tokio::test]
async fn a_string_request_body_is_sent_as_it_is() {
    let address = serve().await;
    let limits = HttpLimits::default();
    let request = HttpRequest {
        method: HttpMethod::Put,
        url: format!("http://{address}/echo"),
        headers: BTreeMap::new(),
        body: Some(json!("plain words")),
    };
    let output = send(&client(&loopback_policy(), limits), request, &limits)
        .await
        .unwrap();
    assert_eq!(output["body"]["method"], "PUT");
    assert_eq!(output["body"]["body"], "plain words");
    assert_eq!(output["body"]["content_type"], "text/plain; charset=utf-8");
}

#[tokio::test]
async fn a_content_type_set_by_the_node_is_kept() {
    let address = serve().await;
    let limits = HttpLimits::default();
    let request = HttpRequest {
        method: HttpMethod::Post,
        url: format!("http://{address}/echo"),
        headers: BTreeMap::from([(
            "content-type".to_string(),
            "application/x-www-form-urlencoded".to_string(),
        )]),
        body: Some(json!("a=1&b=2")),
    };
    let output = send(&client(&loopback_policy(), limits), request, &limits)
        .await
        .unwrap();
    assert_eq!(
        output["body"]["content_type"],
        "application/x-www-form-urlencoded"
    );
    assert_eq!(output["body"]["body"], "a=1&b=2");
}

#[tokio::test]
async fn a_head_request_has_a_null_body() {
    let address = serve().await;
    let limits = HttpLimits::default();
    let mut request = get_request(format!("http://{address}/text"));
    request.method = HttpMethod::Head;
    let output = send(&client(&loopback_policy(), limits), request, &limits)
        .await
        .unwrap();
    assert_eq!(output["status"], 200);
    assert_eq!(output["body"], Value::Null);
}

#[tokio::test]
async fn a_503_is_a_retryable_failure_carrying_the_status_and_body() {
    let failure = get_local("/status/503", HttpLimits::default())
        .await
        .unwrap_err();
    assert!(failure.retryable);
    assert!(failure.message.contains("503"), "{failure:?}");
    assert!(
        failure.message.contains("status 503 says no"),
        "{failure:?}"
    );
}

#[tokio::test]
async fn a_404_is_a_permanent_failure() {
    let failure = get_local("/status/404", HttpLimits::default())
        .await
        .unwrap_err();
    assert!(!failure.retryable);
    assert!(failure.message.contains("404 Not Found"), "{failure:?}");
}

#[tokio::test]
async fn throttling_and_early_and_request_timeout_statuses_are_retryable() {
    for code in [408, 425, 429, 500, 502, 504] {
        let failure = get_local(&format!("/status/{code}"), HttpLimits::default())
            .await
            .unwrap_err();
        assert!(failure.retryable, "{code}: {failure:?}");
    }
    for code in [400, 401, 403, 409, 422] {
        let failure = get_local(&format!("/status/{code}"), HttpLimits::default())
            .await
            .unwrap_err();
        assert!(!failure.retryable, "{code}: {failure:?}");
    }
}

#[tokio::test]
async fn a_long_error_body_is_quoted_only_in_part() {
    let failure = get_local("/long-error", HttpLimits::default())
        .await
        .unwrap_err();
    assert!(failure.message.contains(&"x".repeat(QUOTED_BODY_CHARS)));
    assert!(!failure.message.contains(&"x".repeat(QUOTED_BODY_CHARS + 1)));
    assert!(failure.message.ends_with('…'), "{failure:?}");
}

#[tokio::test]
async fn a_response_over_the_limit_is_refused() {
    let limits = HttpLimits {
        max_response_bytes: 1024,
        ..HttpLimits::default()
    };
    let failure = get_local("/big", limits).await.unwrap_err();
    assert!(!failure.retryable);
    assert!(failure
        .message
        .contains("larger than the limit of 1024 bytes"));
}

#[tokio::test]
async fn a_body_exactly_at_the_limit_is_accepted() {
    let limits = HttpLimits {
        max_response_bytes: 64 * 1024,
        ..HttpLimits::default()
    };
    let output = get_local("/big", limits).await.unwrap();
    assert_eq!(output["body"].as_str().unwrap().len(), 64 * 1024);
}

#[tokio::test]
async fn an_endless_body_is_refused_as_soon_as_it_passes_the_limit() {
    // The body has no length and would take long to arrive whole: a client
    // that buffered it first would time out instead of refusing it.
    let limits = HttpLimits {
        max_response_bytes: 100 * 1024,
        timeout: Duration::from_secs(20),
        ..HttpLimits::default()
    };
    let failure = get_local("/endless", limits).await.unwrap_err();
    assert!(!failure.retryable);
    assert!(
        failure.message.contains("larger than the limit"),
        "{failure:?}"
    );
}

#[tokio::test]
async fn a_slow_server_times_out_and_the_failure_is_retryable() {
    let limits = HttpLimits {
        timeout: Duration::from_millis(300),
        ..HttpLimits::default()
    };
    let failure = get_local("/slow", limits).await.unwrap_err();
    assert!(failure.retryable);
    assert!(failure.message.contains("timed out"), "{failure:?}");
}

#[tokio::test]
async fn a_refused_connection_is_retryable() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    drop(listener);
    let limits = HttpLimits::default();
    let mut request = get_request(format!("http://{address}/"));
    request
        .headers
        .insert("authorization".into(), "Bearer do-not-show".into());
    let failure = send(&client(&loopback_policy(), limits), request, &limits)
        .await
        .unwrap_err();
    assert!(failure.retryable);
    assert!(failure.message.contains("could not connect"), "{failure:?}");
    assert!(!failure.message.contains("do-not-show"));
}

#[tokio::test]
async fn dropping_the_future_aborts_the_request() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    // A server that reads the request and never answers, and reports when
    // the client closes the connection.
    let closed = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut buffer = [0u8; 4096];
        loop {
            match socket.read(&mut buffer).await {
                Ok(0) | Err(_) => return true,
                Ok(_) => continue,
            }
        }
    });
    let limits = HttpLimits::default();
    let client = client(&loopback_policy(), limits);
    let request = get_request(format!("http://{address}/hang"));
    let sending = send(&client, request, &limits);
    // Dropping the future at the deadline is what cancellation does.
    let outcome = tokio::time::timeout(Duration::from_millis(300), sending).await;
    assert!(outcome.is_err(), "the server never answers");
    let closed = tokio::time::timeout(Duration::from_secs(5), closed)
        .await
        .expect("the connection should close when the future is dropped")
        .unwrap();
    assert!(closed);
}

#[tokio::test]
async fn loopback_is_refused_without_the_allow_list_and_never_connected_to() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let limits = HttpLimits::default();
    let client = client(&EgressPolicy::default(), limits);
    let failure = send(&client, get_request(format!("http://{address}/")), &limits)
        .await
        .unwrap_err();
    assert_refused(&failure);
    assert!(!was_connected_to(&listener).await);
}

#[tokio::test]
async fn ipv6_loopback_is_refused_without_the_allow_list_and_never_connected_to() {
    let listener = TcpListener::bind("[::1]:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let limits = HttpLimits::default();
    let client = client(&EgressPolicy::default(), limits);
    let failure = send(
        &client,
        get_request(format!("http://[::1]:{port}/")),
        &limits,
    )
    .await
    .unwrap_err();
    assert_refused(&failure);
    assert!(!was_connected_to(&listener).await);
}

#[tokio::test]
async fn private_and_metadata_addresses_are_refused_before_any_connection() {
    let policy = EgressPolicy::default();
    // A generous connect timeout: had a connection been attempted, the
    // failure would be a (retryable) connect error or a timeout, not a
    // refusal.
    let limits = HttpLimits {
        connect_timeout: Duration::from_secs(10),
        ..HttpLimits::default()
    };
    let client = client(&policy, limits);
    for url in [
        "http://10.0.0.1/",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::ffff:169.254.169.254]/",
        "http://192.168.0.1:8080/admin",
    ] {
        assert!(policy.check_url(&Url::parse(url).unwrap()).is_err());
        let failure = send(&client, get_request(url.to_string()), &limits)
            .await
            .unwrap_err();
        assert_refused(&failure);
    }
}

#[tokio::test]
async fn a_host_name_resolving_to_loopback_is_refused_without_the_allow_list() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let limits = HttpLimits::default();
    let client = client(&EgressPolicy::default(), limits);
    let failure = send(
        &client,
        get_request(format!("http://localhost:{port}/")),
        &limits,
    )
    .await
    .unwrap_err();
    assert_refused(&failure);
    assert!(failure.message.contains("`localhost`"), "{failure:?}");
    assert!(!failure.message.contains("127.0.0.1"), "{failure:?}");
    assert!(!was_connected_to(&listener).await);
}

#[tokio::test]
async fn a_host_name_resolving_to_an_allowed_address_is_reached() {
    let address = serve().await;
    let limits = HttpLimits::default();
    let url = format!("http://localhost:{}/json", address.port());
    let output = send(
        &client(&loopback_policy(), limits),
        get_request(url),
        &limits,
    )
    .await
    .unwrap();
    assert_eq!(output["status"], 200);
}

#[tokio::test]
async fn an_allow_listed_host_name_is_reached_whatever_it_resolves_to() {
    let address = serve().await;
    let limits = HttpLimits::default();
    let policy = EgressPolicy::parse("localhost").unwrap();
    let url = format!("http://localhost:{}/json", address.port());
    let output = send(&client(&policy, limits), get_request(url), &limits)
        .await
        .unwrap();
    assert_eq!(output["status"], 200);
}

#[tokio::test]
async fn a_redirect_within_the_allowed_server_is_followed() {
    let output = get_local("/redirect?to=/json", HttpLimits::default())
        .await
        .unwrap();
    assert_eq!(output["status"], 200);
    assert_eq!(output["body"]["items"][0]["id"], 1);
}

#[tokio::test]
async fn a_redirect_to_the_metadata_address_is_refused() {
    let failure = get_local(
        "/redirect?to=http://169.254.169.254/latest/meta-data/",
        HttpLimits::default(),
    )
    .await
    .unwrap_err();
    assert_refused(&failure);
    assert!(failure.message.contains("169.254.169.254"), "{failure:?}");
}

#[tokio::test]
async fn a_redirect_to_a_refused_local_address_never_connects() {
    let refused = TcpListener::bind("[::1]:0").await.unwrap();
    let port = refused.local_addr().unwrap().port();
    let failure = get_local(
        &format!("/redirect?to=http://[::1]:{port}/"),
        HttpLimits::default(),
    )
    .await
    .unwrap_err();
    assert_refused(&failure);
    assert!(!was_connected_to(&refused).await);
}

#[tokio::test]
async fn redirects_stop_after_the_limit() {
    let limits = HttpLimits {
        max_redirects: 3,
        ..HttpLimits::default()
    };
    let failure = get_local("/loop", limits).await.unwrap_err();
    assert!(!failure.retryable);
    assert!(
        failure.message.contains("stopped after 3 redirects"),
        "{failure:?}"
    );
}

#[tokio::test]
async fn a_malformed_url_is_a_permanent_failure() {
    let limits = HttpLimits::default();
    let failure = send(
        &client(&loopback_policy(), limits),
        get_request("not a url".into()),
        &limits,
    )
    .await
    .unwrap_err();
    assert!(!failure.retryable);
    assert!(failure.message.contains("not valid"), "{failure:?}");
}

#[tokio::test]
async fn a_non_http_url_is_refused() {
    let limits = HttpLimits::default();
    let failure = send(
        &client(&loopback_policy(), limits),
        get_request("file:///etc/passwd".into()),
        &limits,
    )
    .await
    .unwrap_err();
    assert!(!failure.retryable, "{failure:?}");
}

#[tokio::test]
async fn a_bad_header_value_is_refused_without_quoting_it() {
    let address = serve().await;
    let limits = HttpLimits::default();
    let mut request = get_request(format!("http://{address}/json"));
    request.headers.insert(
        "authorization".into(),
        "Bearer hunter2\r\nX-Injected: 1".into(),
    );
    let failure = send(&client(&loopback_policy(), limits), request, &limits)
        .await
        .unwrap_err();
    assert!(!failure.retryable);
    assert!(failure.message.contains("authorization"), "{failure:?}");
    assert!(!failure.message.contains("hunter2"), "{failure:?}");
}

#[tokio::test]
async fn a_bad_header_name_is_refused() {
    let address = serve().await;
    let limits = HttpLimits::default();
    let mut request = get_request(format!("http://{address}/json"));
    request.headers.insert("bad header".into(), "x".into());
    let failure = send(&client(&loopback_policy(), limits), request, &limits)
        .await
        .unwrap_err();
    assert!(!failure.retryable);
    assert!(failure.message.contains("`bad header`"), "{failure:?}");
}

#[tokio::test]
async fn the_client_alone_refuses_a_literal_internal_first_url() {
    // What an MCP transport relies on: no `check_url` before the request.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let client = client(&EgressPolicy::default(), HttpLimits::default());
    let error = client
        .get(format!("http://{address}/mcp"))
        .send()
        .await
        .unwrap_err();
    assert!(matches!(
        egress_refusal(&error),
        Some(EgressError::InternalAddress { .. })
    ));
    assert!(!was_connected_to(&listener).await);
}
