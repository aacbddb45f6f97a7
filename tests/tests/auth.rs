//! The auth matrix: who may do what, and what a bad token gets.

use std::time::Duration;

use base64::Engine;
use serde_json::json;
use toolhub_domain::Role;
use toolhub_tests::{hello_definition, token, token_with, TestEnv, WsEnd};

const ME: &str = "{ me { sub org roles } }";

fn b64(value: &serde_json::Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.to_string())
}

#[tokio::test]
async fn bad_tokens_are_unauthenticated() {
    let env = TestEnv::postgres().await;
    let mut config = env.config();
    config.jwt.audience = Some("toolhub".into());
    let server = env.server_with(config).await;

    let good = token_with(
        "ada",
        "acme",
        &[Role::Viewer],
        Duration::from_secs(600),
        Some("toolhub"),
    );
    let data = server.ok(&good, ME, json!({})).await;
    assert_eq!(
        data["me"],
        json!({"sub": "ada", "org": "acme", "roles": ["viewer"]})
    );

    let exp = chrono::Utc::now().timestamp() + 600;
    let claims =
        json!({"sub": "ada", "org": "acme", "roles": ["admin"], "exp": exp, "aud": "toolhub"});
    let none_token = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(&claims)
    );
    let wrong_signature = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(b"another-secret-that-is-long-enough-too"),
    )
    .unwrap();
    let expired = {
        let claims = json!({"sub": "ada", "org": "acme", "roles": ["admin"],
                            "exp": chrono::Utc::now().timestamp() - 3600, "aud": "toolhub"});
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(toolhub_tests::SECRET),
        )
        .unwrap()
    };
    let without_exp = {
        let claims = json!({"sub": "ada", "org": "acme", "roles": ["admin"], "aud": "toolhub"});
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(toolhub_tests::SECRET),
        )
        .unwrap()
    };
    let wrong_audience = token_with(
        "ada",
        "acme",
        &[Role::Admin],
        Duration::from_secs(600),
        Some("someone-else"),
    );

    // No token at all.
    let (status, body) = server.post(None, ME, json!({})).await;
    assert_eq!(status, 401);
    assert_eq!(body["errors"][0]["extensions"]["code"], "UNAUTHENTICATED");

    for (what, bad) in [
        ("malformed", "not.a.token".to_string()),
        ("alg none", none_token),
        ("wrong signature", wrong_signature),
        ("expired", expired),
        ("without exp", without_exp),
        ("wrong audience", wrong_audience),
    ] {
        let (status, body) = server.post(Some(&bad), ME, json!({})).await;
        assert_eq!(status, 401, "{what}: {body}");
        assert_eq!(
            body["errors"][0]["extensions"]["code"], "UNAUTHENTICATED",
            "{what}: {body}"
        );
        let text = body.to_string();
        assert!(!text.contains(&bad), "{what}: the token is echoed");
    }
}

#[tokio::test]
async fn roles_decide_what_a_caller_may_do() {
    let env = TestEnv::postgres().await;
    let server = env.server().await;
    let viewer = token("vic", "acme", Role::Viewer);
    let editor = token("ada", "acme", Role::Editor);
    let admin = token("root", "acme", Role::Admin);
    let create =
        r#"mutation ($input: CreateWorkflowInput!) { createWorkflow(input: $input) { id } }"#;
    let input = json!({ "input": { "name": "W", "definition": hello_definition() } });

    // A viewer reads but may not write.
    assert_eq!(
        server
            .error_code(Some(&viewer), create, input.clone())
            .await,
        "FORBIDDEN"
    );
    server
        .ok(&viewer, "{ workflows { edges { cursor } } }", json!({}))
        .await;
    server
        .ok(&viewer, "{ mcpServers { edges { cursor } } }", json!({}))
        .await;
    server
        .ok(&viewer, "{ executions { edges { cursor } } }", json!({}))
        .await;
    assert_eq!(
        server
            .error_code(Some(&viewer), "{ secrets { edges { cursor } } }", json!({}))
            .await,
        "FORBIDDEN"
    );
    let register = r#"mutation { registerMcpServer(input: {name: "x", transport: {kind: "stdio", command: "x"}}) { id } }"#;
    assert_eq!(
        server.error_code(Some(&viewer), register, json!({})).await,
        "FORBIDDEN"
    );

    // An editor writes workflows and reads secret metadata, but may not
    // manage secrets or read the audit log.
    server.ok(&editor, create, input.clone()).await;
    server
        .ok(&editor, "{ secrets { edges { cursor } } }", json!({}))
        .await;
    let create_secret = r#"mutation { createSecret(input: {name: "K", value: "v"}) { id } }"#;
    assert_eq!(
        server
            .error_code(Some(&editor), create_secret, json!({}))
            .await,
        "FORBIDDEN"
    );
    assert_eq!(
        server
            .error_code(
                Some(&editor),
                "{ auditLog { edges { cursor } } }",
                json!({})
            )
            .await,
        "FORBIDDEN"
    );
    assert_eq!(
        server
            .error_code(
                Some(&editor),
                r#"{ history(aggregateType: WORKFLOW, aggregateId: "x") { position } }"#,
                json!({})
            )
            .await,
        "FORBIDDEN"
    );

    // An admin does all of it.
    server.ok(&admin, create_secret, json!({})).await;
    server
        .ok(&admin, "{ auditLog { edges { cursor } } }", json!({}))
        .await;
}

#[tokio::test]
async fn another_tenants_entities_are_not_found() {
    let env = TestEnv::postgres().await;
    let server = env.server().await;
    let ours = token("ada", "acme", Role::Admin);
    let theirs = token("eve", "globex", Role::Admin);
    let created = server
        .ok(
            &ours,
            r#"mutation ($input: CreateWorkflowInput!) { createWorkflow(input: $input) { id position } }"#,
            json!({ "input": { "name": "Ours", "definition": hello_definition() } }),
        )
        .await;
    let id = created["createWorkflow"]["id"].clone();
    let at = created["createWorkflow"]["position"].clone();

    let read = server
        .error_code(
            Some(&theirs),
            r#"query ($id: ID!, $at: String!) { workflow(id: $id, consistency: {atLeast: $at}) { id } }"#,
            json!({ "id": id, "at": at }),
        )
        .await;
    assert_eq!(read, "NOT_FOUND");
    let write = server
        .error_code(
            Some(&theirs),
            r#"mutation ($id: ID!) { renameWorkflow(input: {id: $id, name: "Mine"}) { id } }"#,
            json!({ "id": id }),
        )
        .await;
    assert_eq!(write, "NOT_FOUND");
    let history = server
        .error_code(
            Some(&theirs),
            r#"query ($id: ID!) { history(aggregateType: WORKFLOW, aggregateId: $id) { position } }"#,
            json!({ "id": id }),
        )
        .await;
    assert_eq!(history, "NOT_FOUND");
    let listed = server
        .ok(
            &theirs,
            r#"query ($at: String!) { workflows(consistency: {atLeast: $at}) { edges { node { id } } } }"#,
            json!({ "at": at }),
        )
        .await;
    assert_eq!(listed["workflows"]["edges"], json!([]));
}

#[tokio::test]
async fn a_subscription_without_a_valid_connection_init_is_closed() {
    let env = TestEnv::postgres().await;
    let server = env.server().await;

    let mut no_token = server.ws(json!({})).await;
    assert!(matches!(
        no_token.closed().await,
        WsEnd::Closed(_) | WsEnd::Ended
    ));

    let mut bad_token = server
        .ws(json!({ "authorization": "Bearer not.a.token" }))
        .await;
    assert!(matches!(
        bad_token.closed().await,
        WsEnd::Closed(_) | WsEnd::Ended
    ));

    // A good one is acknowledged.
    let good = token("ada", "acme", Role::Admin);
    let client = server.ws_authenticated(&good).await;
    client.close().await;
}

#[tokio::test]
async fn a_socket_that_never_sends_connection_init_is_closed_with_4408() {
    let env = TestEnv::postgres().await;
    let mut config = env.config();
    config.limits.ws_init_timeout = Duration::from_millis(300);
    let server = env.server_with(config).await;

    let started = std::time::Instant::now();
    let mut silent = server.ws_silent().await;
    assert!(matches!(silent.closed().await, WsEnd::Closed(4408)));
    assert!(started.elapsed() >= Duration::from_millis(300));

    // A client that does say hello in time is acknowledged as usual, and
    // stays open past the timeout.
    let good = token("ada", "acme", Role::Admin);
    let mut client = server.ws_authenticated(&good).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    client.ping().await;
    let answer = client.next_json().await.expect("the socket is still open");
    assert_eq!(answer["type"], "pong", "{answer}");
    client.close().await;
}

fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/jwt")
        .join(name)
}

fn signed(algorithm: jsonwebtoken::Algorithm, private_pem: &str, exp_offset: i64) -> String {
    let pem = std::fs::read(fixture(private_pem)).expect("a fixture key");
    let key = match algorithm {
        jsonwebtoken::Algorithm::RS256 => jsonwebtoken::EncodingKey::from_rsa_pem(&pem),
        jsonwebtoken::Algorithm::ES256 => jsonwebtoken::EncodingKey::from_ec_pem(&pem),
        other => panic!("no fixture for {other:?}"),
    }
    .expect("a private key");
    let claims = json!({"sub": "ada", "org": "acme", "roles": ["viewer"],
                        "exp": chrono::Utc::now().timestamp() + exp_offset});
    jsonwebtoken::encode(&jsonwebtoken::Header::new(algorithm), &claims, &key).unwrap()
}

#[tokio::test]
async fn rs256_and_es256_tokens_are_verified_with_the_configured_public_key() {
    use jsonwebtoken::Algorithm::{ES256, HS256, RS256};
    let env = TestEnv::postgres().await;
    for (algorithm, other_algorithm, prefix, other_prefix) in [
        (RS256, ES256, "rs256", "es256"),
        (ES256, RS256, "es256", "rs256"),
    ] {
        // Configured as an operator would: a public key file, read and
        // recognised by the configuration loader.
        let data_dir = std::env::temp_dir().join(format!("toolhub-jwt-{}", uuid::Uuid::new_v4()));
        let public = fixture(&format!("{prefix}-a.pub.pem"));
        let loaded = toolhub_api::config::Config::from_lookup(|name| match name {
            "TOOLHUB_JWT_PUBLIC_KEY_FILE" => Some(public.display().to_string()),
            "TOOLHUB_DATA_DIR" => Some(data_dir.display().to_string()),
            _ => None,
        })
        .expect("the key file loads");
        let mut config = env.config();
        config.jwt = loaded.jwt;
        let server = env.server_with(config).await;

        let good = signed(algorithm, &format!("{prefix}-a.key.pem"), 600);
        let data = server.ok(&good, ME, json!({})).await;
        assert_eq!(data["me"]["sub"], "ada", "{prefix}");

        // The public key as an HMAC secret: the algorithm-confusion attack.
        let public_pem = std::fs::read(&public).unwrap();
        let confused = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(HS256),
            &json!({"sub": "ada", "org": "acme", "roles": ["admin"],
                    "exp": chrono::Utc::now().timestamp() + 600}),
            &jsonwebtoken::EncodingKey::from_secret(&public_pem),
        )
        .unwrap();
        for (what, bad) in [
            (
                "another key pair",
                signed(algorithm, &format!("{prefix}-b.key.pem"), 600),
            ),
            (
                "another algorithm",
                signed(other_algorithm, &format!("{other_prefix}-a.key.pem"), 600),
            ),
            (
                "expired",
                signed(algorithm, &format!("{prefix}-a.key.pem"), -3600),
            ),
            ("HS256 signed with the public key", confused),
        ] {
            let (status, body) = server.post(Some(&bad), ME, json!({})).await;
            assert_eq!(status, 401, "{prefix}, {what}: {body}");
            assert_eq!(
                body["errors"][0]["extensions"]["code"], "UNAUTHENTICATED",
                "{prefix}, {what}: {body}"
            );
        }
        drop(server);
        let _ = std::fs::remove_dir_all(&data_dir);
    }
}
