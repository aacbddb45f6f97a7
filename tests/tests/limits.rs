//! Limits on every door, through the real service over real sockets:
//! subscriptions (token expiry, counts per socket and per caller, the
//! initialisation buffer and timeout, message size, keep-alive), queries
//! (cost, pagination of `steps` and `history`, time and concurrency limits,
//! introspection), rate limits, and health and metrics answered from memory.

use std::time::Duration;

use serde_json::{json, Value};
use toolhub_domain::Role;
use toolhub_tests::{
    first_error_code, hello_definition, token, token_with, TestEnv, TestServer, WsClient, WsEnd,
};

const WORKFLOW_CHANGED: &str =
    "subscription ($id: ID!) { workflowChanged(id: $id) { id name version } }";

const WORKFLOWS_CHANGED: &str = "subscription { workflowsChanged { id name } }";

async fn create(server: &TestServer, token: &str, name: &str) -> Value {
    server
        .ok(
            token,
            r#"mutation ($input: CreateWorkflowInput!) { createWorkflow(input: $input) { id position } }"#,
            json!({ "input": { "name": name, "definition": hello_definition() } }),
        )
        .await["createWorkflow"]
        .clone()
}

async fn rename(server: &TestServer, token: &str, id: &Value, name: &str) -> Value {
    server
        .ok(
            token,
            r#"mutation ($id: ID!, $name: String!) { renameWorkflow(input: {id: $id, name: $name}) { position } }"#,
            json!({ "id": id, "name": name }),
        )
        .await["renameWorkflow"]
        .clone()
}

/// The next message for `id`, which must be an `error` with `reason`.
/// Renames the workflow until every subscription in `expected` has seen a
/// change (a subscription follows changes from when its resolver first
/// runs, which the protocol does not acknowledge); returns the ids that
/// saw one. Only `next` messages, and a `complete` of `completed`, may come.
async fn renames_reach(
    server: &TestServer,
    token: &str,
    id: &Value,
    ws: &mut WsClient,
    expected: &[&str],
    completed: Option<&str>,
) -> Vec<String> {
    let mut seen = std::collections::BTreeSet::new();
    for round in 0..10 {
        rename(
            server,
            token,
            id,
            &format!("Renamed {} {round}", expected.join("")),
        )
        .await;
        let quiet = tokio::time::Instant::now() + Duration::from_secs(2);
        while let Ok(message) = tokio::time::timeout_at(quiet, ws.next_json()).await {
            let message = message.expect("the socket is open");
            match message["type"].as_str() {
                Some("next") => {
                    seen.insert(message["id"].as_str().unwrap().to_string());
                }
                Some("complete") if completed.is_some() => {
                    assert_eq!(message["id"].as_str(), completed)
                }
                _ => panic!("unexpected {message}"),
            }
            if expected.iter().all(|e| seen.contains(*e)) {
                break;
            }
        }
        if expected.iter().all(|e| seen.contains(*e)) {
            break;
        }
    }
    seen.into_iter().collect()
}

async fn refused(ws: &mut WsClient, id: &str, reason: &str) {
    let message = ws.next_for(id).await;
    assert_eq!(message["type"], "error", "{message}");
    assert_eq!(
        message["payload"][0]["extensions"]["code"], "RATE_LIMITED",
        "{message}"
    );
    assert_eq!(
        message["payload"][0]["extensions"]["reason"], reason,
        "{message}"
    );
}

// ---------------------------------------------------------------- sockets

#[tokio::test]
async fn a_socket_is_closed_with_4403_when_its_token_expires() {
    let env = TestEnv::sqlite().await;
    let mut config = env.config();
    config.jwt.leeway = Duration::ZERO;
    let server = env.server_with(config).await;
    let admin = token("root", "acme", Role::Admin);
    let created = create(&server, &admin, "Watched").await;

    let short = token_with("ada", "acme", &[Role::Viewer], Duration::from_secs(3), None);
    let mut ws = server.ws_authenticated(&short).await;
    ws.subscribe("w", WORKFLOW_CHANGED, json!({ "id": created["id"] }))
        .await;
    // The socket is closed with the protocol's Forbidden when the token
    // expires, whether or not anything happens on it.
    assert!(matches!(ws.closed().await, WsEnd::Closed(4403)));
}

#[tokio::test]
async fn subscriptions_beyond_the_limit_of_a_socket_are_refused_one_by_one() {
    let env = TestEnv::postgres().await;
    let mut config = env.config();
    config.limits.ws_subscriptions_per_socket = 2;
    let server = env.server_with(config).await;
    let admin = token("root", "acme", Role::Admin);
    let created = create(&server, &admin, "Watched").await;
    let id = created["id"].clone();

    let mut ws = server.ws_authenticated(&admin).await;
    ws.subscribe("a", WORKFLOW_CHANGED, json!({ "id": id }))
        .await;
    ws.subscribe("b", WORKFLOW_CHANGED, json!({ "id": id }))
        .await;
    ws.subscribe("c", WORKFLOW_CHANGED, json!({ "id": id }))
        .await;
    refused(&mut ws, "c", "SUBSCRIPTIONS_PER_SOCKET").await;

    // The other two go on.
    let seen = renames_reach(&server, &admin, &id, &mut ws, &["a", "b"], None).await;
    assert_eq!(seen, ["a", "b"]);

    // Completing one frees its place.
    ws.complete("a").await;
    ws.subscribe("d", WORKFLOW_CHANGED, json!({ "id": id }))
        .await;
    // A third is refused again.
    ws.subscribe("e", WORKFLOW_CHANGED, json!({ "id": id }))
        .await;
    refused(&mut ws, "e", "SUBSCRIPTIONS_PER_SOCKET").await;
    let seen = renames_reach(&server, &admin, &id, &mut ws, &["b", "d"], Some("a")).await;
    assert_eq!(seen, ["b", "d"]);
}

#[tokio::test]
async fn subscriptions_beyond_the_limit_of_a_caller_are_refused_across_sockets() {
    let env = TestEnv::postgres().await;
    let mut config = env.config();
    config.limits.ws_subscriptions_per_caller = 2;
    let server = env.server_with(config).await;
    let ada = token("ada", "acme", Role::Viewer);
    let bob = token("bob", "acme", Role::Viewer);

    let mut first = server.ws_authenticated(&ada).await;
    first.subscribe("1", WORKFLOWS_CHANGED, json!({})).await;
    first.subscribe("2", WORKFLOWS_CHANGED, json!({})).await;
    // A socket's messages are handled in order: the pong says both
    // subscriptions were admitted.
    first.ping().await;
    assert_eq!(first.next_json().await.expect("open")["type"], "pong");
    let mut second = server.ws_authenticated(&ada).await;
    second.subscribe("3", WORKFLOWS_CHANGED, json!({})).await;
    refused(&mut second, "3", "SUBSCRIPTIONS_PER_CALLER").await;

    // Another caller has their own.
    let mut other = server.ws_authenticated(&bob).await;
    other.subscribe("x", WORKFLOWS_CHANGED, json!({})).await;
    other.ping().await;
    let answer = other.next_json().await.expect("open");
    assert_eq!(answer["type"], "pong", "{answer}");

    // Closing the first socket gives its subscriptions back.
    first.close().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let id = format!("retry-{attempt}");
        second.subscribe(&id, WORKFLOWS_CHANGED, json!({})).await;
        second.ping().await;
        let message = second.next_json().await.expect("open");
        if message["type"] == "pong" {
            break;
        }
        assert_eq!(message["type"], "error", "{message}");
        let _ = second.next_json().await; // the pong
        assert!(
            tokio::time::Instant::now() < deadline,
            "the closed socket's subscriptions were never given back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_message_over_the_size_limit_closes_the_socket_with_1009() {
    let env = TestEnv::sqlite().await;
    let mut config = env.config();
    config.limits.ws_max_message_bytes = 4 * 1024;
    let server = env.server_with(config).await;
    let admin = token("root", "acme", Role::Admin);

    let mut ws = server.ws_authenticated(&admin).await;
    // Under the limit: answered.
    let small = json!({ "type": "ping", "payload": { "pad": "x".repeat(1024) } });
    ws.send_text(small.to_string()).await;
    assert_eq!(ws.next_json().await.expect("open")["type"], "pong");
    // Over it: closed.
    let big = json!({ "type": "ping", "payload": { "pad": "x".repeat(8 * 1024) } });
    ws.send_text(big.to_string()).await;
    assert!(matches!(ws.closed().await, WsEnd::Closed(1009)));
}

#[tokio::test]
async fn what_a_socket_may_do_before_its_connection_is_acknowledged_is_bounded() {
    let env = TestEnv::sqlite().await;
    let mut config = env.config();
    config.limits.ws_init_timeout = Duration::from_millis(500);
    config.limits.ws_init_buffer = 4;
    let server = env.server_with(config).await;

    // Chatter without connection_init does not keep a socket open past
    // the initialisation timeout.
    let mut chatty = server.ws_silent().await;
    chatty.ping().await;
    assert!(matches!(chatty.closed().await, WsEnd::Closed(4408)));

    // Nor may it send more than the buffer before connection_init.
    let mut flood = server.ws_silent().await;
    for _ in 0..5 {
        flood.ping().await;
    }
    assert!(matches!(flood.closed().await, WsEnd::Closed(4400)));

    // A subscribe before the acknowledgement is Unauthorized.
    let mut early = server.ws_silent().await;
    early.subscribe("1", WORKFLOWS_CHANGED, json!({})).await;
    assert!(matches!(early.closed().await, WsEnd::Closed(4401)));

    // Reusing the id of a running subscription is refused as the protocol
    // says.
    let viewer = token("ada", "acme", Role::Viewer);
    let mut twice = server.ws_authenticated(&viewer).await;
    twice.subscribe("1", WORKFLOWS_CHANGED, json!({})).await;
    twice.subscribe("1", WORKFLOWS_CHANGED, json!({})).await;
    assert!(matches!(twice.closed().await, WsEnd::Closed(4409)));
}

#[tokio::test]
async fn the_server_pings_an_idle_socket() {
    let env = TestEnv::sqlite().await;
    let mut config = env.config();
    config.limits.ws_keepalive = Duration::from_millis(200);
    let server = env.server_with(config).await;
    let viewer = token("ada", "acme", Role::Viewer);

    let mut ws = server.ws_authenticated(&viewer).await;
    ws.subscribe("1", WORKFLOWS_CHANGED, json!({})).await;
    let message = ws.next_any().await.expect("open");
    assert_eq!(message, json!({ "type": "ping" }));
}

// ---------------------------------------------------------------- queries

#[tokio::test]
async fn the_cost_of_a_query_counts_the_sizes_of_its_lists() {
    let env = TestEnv::sqlite().await;
    let server = env.server().await;
    let viewer = token("ada", "acme", Role::Viewer);
    let nested = |outer: u32, inner: u32| {
        format!(
            "{{ workflows(first: {outer}) {{ edges {{ node {{ id versions(first: {inner}) {{ edges {{ node {{ version definition comment actor }} }} }} }} }} }} }}"
        )
    };
    server.ok(&viewer, &nested(5, 5), json!({})).await;
    let (status, body) = server
        .post(Some(&viewer), &nested(100, 100), json!({}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "VALIDATION",
        "{body}"
    );
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("complex"),
        "{body}"
    );
    // A variable counts as a literal does.
    let (_, body) = server
        .post(
            Some(&viewer),
            "query ($n: Int) { workflows(first: $n) { edges { node { versions(first: $n) { edges { node { version definition } } } } } } }",
            json!({ "n": 100 }),
        )
        .await;
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "VALIDATION",
        "{body}"
    );
}

async fn history_pages(env: TestEnv) {
    let server = env.server().await;
    let admin = token("root", "acme", Role::Admin);
    let created = create(&server, &admin, "Paged").await;
    let id = created["id"].clone();
    let mut last = Value::Null;
    for n in 0..4 {
        last = rename(&server, &admin, &id, &format!("Name {n}")).await["position"].clone();
    }
    let page = |after: Value| {
        let server = &server;
        let admin = &admin;
        let id = id.clone();
        let last = last.clone();
        async move {
            server
                .ok(
                    admin,
                    "query ($id: ID!, $after: String, $at: String!) { history(aggregateType: WORKFLOW, aggregateId: $id, first: 2, after: $after, consistency: {atLeast: $at}) { sequence position } }",
                    json!({ "id": id, "after": after, "at": last }),
                )
                .await["history"]
                .as_array()
                .unwrap()
                .clone()
        }
    };
    let mut sequences = Vec::new();
    let mut after = Value::Null;
    loop {
        let entries = page(after.clone()).await;
        assert!(entries.len() <= 2);
        if entries.is_empty() {
            break;
        }
        sequences.extend(entries.iter().map(|e| e["sequence"].as_u64().unwrap()));
        after = entries.last().unwrap()["position"].clone();
    }
    assert_eq!(sequences, [1, 2, 3, 4, 5]);
}

#[tokio::test]
async fn history_is_read_a_page_at_a_time_on_postgres() {
    history_pages(TestEnv::postgres().await).await;
}

#[tokio::test]
async fn history_is_read_a_page_at_a_time_on_sqlite() {
    history_pages(TestEnv::sqlite().await).await;
}

#[tokio::test]
async fn an_executions_steps_are_read_a_page_at_a_time() {
    let env = TestEnv::sqlite().await;
    let server = env.server().await;
    let editor = token("ada", "acme", Role::Editor);
    let node = |id: &str| json!({"id": id, "type": "transform", "params": {"template": {"n": id}}});
    let definition = json!({
        "nodes": [node("a"), node("b"), node("c")],
        "edges": [{"from": "a", "to": "b"}, {"from": "b", "to": "c"}],
    });
    let workflow = server.create_workflow(&editor, "Steps", definition).await;
    let execution = server.start_execution(&editor, &workflow, json!({})).await;
    let finished = server
        .wait_finished(&editor, &execution, Duration::from_secs(20))
        .await;
    assert_eq!(finished["status"], "COMPLETED", "{finished}");
    let steps = |first: i64, offset: i64| {
        let server = &server;
        let editor = &editor;
        let execution = execution.clone();
        async move {
            server
                .ok(
                    editor,
                    "query ($id: ID!, $first: Int, $offset: Int) { execution(id: $id) { steps(first: $first, offset: $offset) { nodeId } } }",
                    json!({ "id": execution, "first": first, "offset": offset }),
                )
                .await["execution"]["steps"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s["nodeId"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(steps(2, 0).await, ["a", "b"]);
    assert_eq!(steps(2, 2).await, ["c"]);
    assert!(steps(2, 3).await.is_empty());
}

#[tokio::test]
async fn a_request_over_the_time_limit_is_answered_timeout() {
    let env = TestEnv::sqlite().await;
    let mut config = env.config();
    config.limits.request_timeout = Duration::from_millis(300);
    config.limits.consistency_wait = Duration::from_secs(60);
    let server = env.server_with(config).await;
    let viewer = token("ada", "acme", Role::Viewer);
    // A position the read models will not reach: the query waits for it.
    let (status, retry_after, body) = server
        .post_with(
            Some(&viewer),
            "{ workflows(consistency: {atLeast: \"0.999999\"}) { edges { cursor } } }",
            json!({}),
            &[],
        )
        .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["errors"][0]["extensions"]["code"], "TIMEOUT", "{body}");
    assert_eq!(retry_after, None);
    // Quick requests are unaffected.
    server.ok(&viewer, "{ me { sub } }", json!({})).await;
}

#[tokio::test]
async fn a_request_beyond_the_concurrency_limit_is_answered_overloaded() {
    let env = TestEnv::sqlite().await;
    let mut config = env.config();
    config.limits.max_concurrent_requests = 1;
    config.limits.consistency_wait = Duration::from_secs(3);
    let server = env.server_with(config).await;
    let viewer = token("ada", "acme", Role::Viewer);

    // One request holds the only place while it waits.
    let slow = {
        let http = server.http.clone();
        let url = format!("{}/graphql", server.url);
        let viewer = viewer.clone();
        tokio::spawn(async move {
            http.post(url)
                .bearer_auth(viewer)
                .json(&json!({ "query": "{ workflows(consistency: {atLeast: \"0.999999\"}) { edges { cursor } } }" }))
                .send()
                .await
                .expect("answered")
                .status()
                .as_u16()
        })
    };
    let mut overloaded = None;
    while !slow.is_finished() {
        let (status, retry_after, body) = server
            .post_with(Some(&viewer), "{ me { sub } }", json!({}), &[])
            .await;
        if status == 503 {
            overloaded = Some((retry_after, body));
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (retry_after, body) = overloaded.expect("a second request is refused while the first runs");
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "OVERLOADED",
        "{body}"
    );
    assert_eq!(retry_after.as_deref(), Some("1"));
    // The slow one ends on its own bound, and the place is free again.
    assert_eq!(slow.await.unwrap(), 200);
    server.ok(&viewer, "{ me { sub } }", json!({})).await;
}

#[tokio::test]
async fn the_standard_introspection_query_is_answered_and_deeper_queries_are_not() {
    let env = TestEnv::sqlite().await;
    let server = env.server().await;
    let viewer = token("ada", "acme", Role::Viewer);
    // What GraphiQL (served at GET /graphql) and graphql-js clients send.
    let introspection = include_str!("../fixtures/introspection.graphql");
    let data = server.ok(&viewer, introspection, json!({})).await;
    let types = data["__schema"]["types"].as_array().expect("the types");
    assert!(
        types.iter().any(|t| t["name"] == "Workflow"),
        "the schema is handed out: {} types",
        types.len()
    );
    // Seventeen levels of selection are still refused.
    let mut deep = String::from("__typename");
    for _ in 0..16 {
        deep = format!("ofType {{ {deep} }}");
    }
    let (_, body) = server
        .post(
            Some(&viewer),
            &format!("{{ __type(name: \"Query\") {{ {deep} }} }}"),
            json!({}),
        )
        .await;
    assert_eq!(first_error_code(&body), "VALIDATION", "{body}");
}

#[tokio::test]
async fn introspection_can_be_turned_off() {
    let env = TestEnv::sqlite().await;
    let viewer = token("ada", "acme", Role::Viewer);
    let introspect = "{ __schema { queryType { name } } }";

    let open = env.server().await;
    let data = open.ok(&viewer, introspect, json!({})).await;
    assert_eq!(data["__schema"]["queryType"]["name"], "Query");

    let mut config = env.config();
    config.limits.introspection = false;
    let closed = env.server_with(config).await;
    // Introspection answers nothing: the schema is not handed out.
    let (_, body) = closed.post(Some(&viewer), introspect, json!({})).await;
    assert_eq!(body["data"]["__schema"], Value::Null, "{body}");
    let (_, body) = closed
        .post(
            Some(&viewer),
            "{ __type(name: \"Query\") { name } }",
            json!({}),
        )
        .await;
    assert_eq!(body["data"]["__type"], Value::Null, "{body}");
    // Ordinary queries still work.
    closed.ok(&viewer, "{ me { sub } }", json!({})).await;
}

// ---------------------------------------------------------------- rates

#[tokio::test]
async fn a_caller_over_their_rate_is_told_to_retry_later() {
    use toolhub_api::config::Rate;
    let env = TestEnv::sqlite().await;
    let mut config = env.config();
    config.limits.rate.per_subject.queries = Some(Rate::per_minute(3));
    config.limits.rate.per_subject.mutations = Some(Rate::per_minute(1));
    let server = env.server_with(config).await;
    let ada = token("ada", "acme", Role::Editor);
    let bob = token("bob", "acme", Role::Editor);

    for _ in 0..3 {
        server.ok(&ada, "{ me { sub } }", json!({})).await;
    }
    let (status, retry_after, body) = server
        .post_with(Some(&ada), "{ me { sub } }", json!({}), &[])
        .await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["errors"][0]["extensions"]["code"], "RATE_LIMITED");
    assert_eq!(body["errors"][0]["extensions"]["reason"], "SUBJECT_RATE");
    let seconds: u64 = retry_after.expect("Retry-After").parse().unwrap();
    assert!((1..=60).contains(&seconds), "{seconds}");
    assert_eq!(body["errors"][0]["extensions"]["retryAfter"], seconds);

    // Mutations have their own budget, and so does every other caller.
    create(&server, &ada, "One").await;
    let (status, _, body) = server
        .post_with(
            Some(&ada),
            r#"mutation { createWorkflow(input: {name: "Two", definition: {nodes: [], edges: []}}) { id } }"#,
            json!({}),
            &[],
        )
        .await;
    assert_eq!(status, 429, "{body}");
    server.ok(&bob, "{ me { sub } }", json!({})).await;
}

#[tokio::test]
async fn a_client_address_over_its_rate_is_told_to_retry_later() {
    use toolhub_api::config::Rate;
    let env = TestEnv::sqlite().await;
    let mut config = env.config();
    config.limits.rate.per_address.queries = Some(Rate::per_minute(2));
    config.limits.rate.client_address_header = Some("x-forwarded-for".into());
    let server = env.server_with(config).await;

    // Callers from one address share its budget.
    let from = |ip: &'static str| [("x-forwarded-for", ip)];
    for sub in ["a", "b"] {
        let (status, _, body) = server
            .post_with(
                Some(&token(sub, "acme", Role::Viewer)),
                "{ me { sub } }",
                json!({}),
                &from("203.0.113.7"),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, retry_after, body) = server
        .post_with(
            Some(&token("c", "acme", Role::Viewer)),
            "{ me { sub } }",
            json!({}),
            &from("203.0.113.7, 10.0.0.1"),
        )
        .await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["errors"][0]["extensions"]["reason"], "ADDRESS_RATE");
    assert!(retry_after.is_some());
    // Another address has its own.
    let (status, _, _) = server
        .post_with(
            Some(&token("c", "acme", Role::Viewer)),
            "{ me { sub } }",
            json!({}),
            &from("198.51.100.1"),
        )
        .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn subscriptions_over_the_rate_are_refused_with_rate_limited() {
    use toolhub_api::config::Rate;
    let env = TestEnv::postgres().await;
    let mut config = env.config();
    config.limits.rate.per_subject.subscriptions = Some(Rate::per_minute(1));
    let server = env.server_with(config).await;
    let viewer = token("ada", "acme", Role::Viewer);
    let mut ws = server.ws_authenticated(&viewer).await;
    ws.subscribe("1", WORKFLOWS_CHANGED, json!({})).await;
    ws.subscribe("2", WORKFLOWS_CHANGED, json!({})).await;
    let message = ws.next_for("2").await;
    assert_eq!(message["type"], "error", "{message}");
    let extensions = &message["payload"][0]["extensions"];
    assert_eq!(extensions["code"], "RATE_LIMITED", "{message}");
    assert_eq!(extensions["reason"], "SUBJECT_RATE", "{message}");
    assert!(extensions["retryAfter"].as_u64().is_some(), "{message}");
}

// ---------------------------------------------------------------- JWT

fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/jwt")
        .join(name)
}

fn rs256(claims: Value) -> String {
    let pem = std::fs::read(fixture("rs256-a.key.pem")).expect("a fixture key");
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(&pem).expect("a private key");
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
        &claims,
        &key,
    )
    .unwrap()
}

#[tokio::test]
async fn tokens_are_checked_for_audience_lists_not_before_and_expiry_with_leeway() {
    let env = TestEnv::sqlite().await;
    let public = fixture("rs256-a.pub.pem");
    let data_dir = std::env::temp_dir().join(format!("toolhub-jwt-{}", uuid::Uuid::new_v4()));
    let loaded = toolhub_api::config::Config::from_lookup(|name| match name {
        "TOOLHUB_JWT_PUBLIC_KEY_FILE" => Some(public.display().to_string()),
        "TOOLHUB_JWT_AUDIENCE" => Some("toolhub".into()),
        "TOOLHUB_JWT_LEEWAY" => Some("20s".into()),
        "TOOLHUB_DATA_DIR" => Some(data_dir.display().to_string()),
        _ => None,
    })
    .expect("the configuration loads");
    assert_eq!(loaded.jwt.leeway, Duration::from_secs(20));
    let mut config = env.config();
    config.jwt = loaded.jwt;
    let server = env.server_with(config).await;
    let now = chrono::Utc::now().timestamp();
    let claims = |aud: Value, exp: i64, nbf: Option<i64>| {
        let mut claims =
            json!({"sub": "ada", "org": "acme", "roles": ["viewer"], "aud": aud, "exp": exp});
        if let Some(nbf) = nbf {
            claims["nbf"] = json!(nbf);
        }
        claims
    };
    let me = "{ me { sub } }";

    for (what, token) in [
        (
            "aud as a string",
            rs256(claims(json!("toolhub"), now + 600, None)),
        ),
        (
            "aud as an array",
            rs256(claims(json!(["billing", "toolhub"]), now + 600, None)),
        ),
        (
            "expired within the leeway",
            rs256(claims(json!("toolhub"), now - 5, None)),
        ),
        (
            "nbf within the leeway",
            rs256(claims(json!("toolhub"), now + 600, Some(now + 5))),
        ),
    ] {
        let (status, body) = server.post(Some(&token), me, json!({})).await;
        assert_eq!(status, 200, "{what}: {body}");
        assert_eq!(body["data"]["me"]["sub"], "ada", "{what}: {body}");
    }
    for (what, token, reason) in [
        (
            "an array without our audience",
            rs256(claims(json!(["billing"]), now + 600, None)),
            "INVALID_AUDIENCE",
        ),
        (
            "expired beyond the leeway",
            rs256(claims(json!("toolhub"), now - 120, None)),
            "TOKEN_EXPIRED",
        ),
        (
            "not valid yet",
            rs256(claims(json!("toolhub"), now + 600, Some(now + 300))),
            "TOKEN_NOT_YET_VALID",
        ),
    ] {
        let (status, body) = server.post(Some(&token), me, json!({})).await;
        assert_eq!(status, 401, "{what}: {body}");
        let extensions = &body["errors"][0]["extensions"];
        assert_eq!(extensions["code"], "UNAUTHENTICATED", "{what}: {body}");
        assert_eq!(extensions["reason"], reason, "{what}: {body}");
    }
    let _ = std::fs::remove_dir_all(&data_dir);
}

// ---------------------------------------------------------------- health

/// Polls `/health/ready` until `accept` takes its answer.
async fn ready_until(server: &TestServer, accept: impl Fn(u16, &Value) -> bool) -> (u16, Value) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = server.get("/health/ready").await;
        let body: Value = serde_json::from_str(&body).expect("JSON");
        if accept(status, &body) {
            return (status, body);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "readiness never got there: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn readiness_and_metrics_answer_while_the_log_is_locked() {
    let env = TestEnv::postgres().await;
    let server = env.server().await;
    let admin = token("root", "acme", Role::Admin);
    create(&server, &admin, "Before").await;
    ready_until(&server, |status, _| status == 200).await;

    // Another session takes the log for itself: whatever reads `events`
    // waits for it.
    let pool = sqlx_pool(env.db.url()).await;
    let mut lock = pool.begin().await.expect("a transaction");
    sqlx::query("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .expect("the lock");
    for _ in 0..3 {
        let (status, body) = server.get("/health/ready").await;
        assert_eq!(status, 200, "{body}");
        let (status, metrics) = server.get("/metrics").await;
        assert_eq!(status, 200);
        assert!(
            metrics.contains("toolhub_read_model_lag_events 0"),
            "{metrics}"
        );
        assert!(metrics.contains("toolhub_database_up 1"), "{metrics}");
    }
    lock.rollback().await.expect("released");
}

async fn sqlx_pool(url: &str) -> sqlx::PgPool {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await
        .expect("connect to the test database")
}

async fn lag_is_counted_in_memory(env: TestEnv) {
    let mut config = env.config();
    config.run_projectors = false;
    config.limits.ready_max_lag_events = 3;
    config.limits.consistency_wait = Duration::from_millis(50);
    let server = env.server_with(config).await;
    let admin = token("root", "acme", Role::Admin);
    for n in 0..5 {
        create(&server, &admin, &format!("W{n}")).await;
    }
    // Nobody projects here: the read models stay at 0 while the log grows.
    let (status, body) = ready_until(&server, |_, body| {
        body["checks"]["projections"]["lag"]["behind"].as_u64() >= Some(5)
    })
    .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["failed"], json!(["projections"]), "{body}");
    let (_, metrics) = server.get("/metrics").await;
    let lag = metrics
        .lines()
        .find_map(|l| l.strip_prefix("toolhub_read_model_lag_events "))
        .expect("the lag gauge");
    assert!(lag.parse::<u64>().unwrap() >= 5, "{metrics}");
}

#[tokio::test]
async fn readiness_counts_the_lag_of_the_read_models_on_postgres() {
    lag_is_counted_in_memory(TestEnv::postgres().await).await;
}

#[tokio::test]
async fn readiness_counts_the_lag_of_the_read_models_on_sqlite() {
    lag_is_counted_in_memory(TestEnv::sqlite().await).await;
}
