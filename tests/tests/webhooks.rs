//! Incoming webhooks through the real server, on both backends. Deliveries
//! are signed as a sender would sign them — by a few lines of Node's
//! `crypto`, not by the server's own code — following Standard Webhooks.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use toolhub_api::config::Rate;
use toolhub_domain::Role;
use toolhub_tests::{captured_logs, pg_dump, sqlite_bytes, token, TestEnv, TestServer};

/// The sender's signature: `v1,` and the base64 HMAC-SHA256, keyed by the
/// base64-decoded part of `whsec_…`, of `"{id}.{timestamp}.{body}"`.
fn sign(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> String {
    const SENDER: &str = r#"
const crypto = require('crypto');
const [secret, id, ts] = process.argv.slice(1);
const chunks = [];
process.stdin.on('data', c => chunks.push(c));
process.stdin.on('end', () => {
  const key = Buffer.from(secret.replace(/^whsec_/, ''), 'base64');
  const signed = Buffer.concat([Buffer.from(`${id}.${ts}.`), Buffer.concat(chunks)]);
  process.stdout.write('v1,' + crypto.createHmac('sha256', key).update(signed).digest('base64'));
});
"#;
    let mut child = Command::new("node")
        .args(["-e", SENDER, secret, id, &timestamp.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("node runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(body)
        .expect("the body is written");
    let out = child.wait_with_output().expect("node finishes");
    assert!(out.status.success(), "the sender's script failed");
    String::from_utf8(out.stdout).expect("a signature")
}

/// Waits for an execution a delivery started to finish. The delivery's
/// `202` does not wait for the read models, so the execution may not be
/// visible at once.
async fn finished(server: &TestServer, token: &str, id: &str) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, body) = server
            .post(
                Some(token),
                "query ($id: ID!) { execution(id: $id) { id } }",
                json!({"id": id}),
            )
            .await;
        if body["data"]["execution"]["id"] == id {
            return server
                .wait_finished(token, id, Duration::from_secs(10))
                .await;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never visible: {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// One delivery: the status and the JSON answer.
async fn deliver(
    server: &TestServer,
    url: &str,
    headers: &[(&str, String)],
    body: impl Into<reqwest::Body>,
) -> (u16, Value) {
    let mut request = server.http.post(url).body(body);
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    let response = request.send().await.expect("the request is sent");
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// The three Standard Webhooks headers and a JSON content type, signed
/// with `secret` (or carrying `signature` as given).
fn signed(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> Vec<(&'static str, String)> {
    vec![
        ("content-type", "application/json".into()),
        ("webhook-id", id.into()),
        ("webhook-timestamp", timestamp.to_string()),
        ("webhook-signature", sign(secret, id, timestamp, body)),
    ]
}

/// A workflow that answers with what its webhook delivered.
fn echo_definition() -> Value {
    json!({"nodes": [{"id": "echo", "type": "transform",
        "params": {"template": {"name": "{{input.body.name}}", "type": "{{input.contentType}}",
                                "message": "{{input.webhookId}}", "raw": "{{input.body}}"}}}],
           "edges": []})
}

const CREATE: &str = "mutation ($i: CreateWebhookInput!) { createWebhook(input: $i) { \
    id url secret workflowId version position webhook { id url description createdAt lastDeliveryAt } } }";
const ROTATE: &str = "mutation ($i: RotateWebhookSecretInput!) { rotateWebhookSecret(input: $i) { \
    id url secret webhook { secretRotatedAt } } }";
const DELETE: &str =
    "mutation ($i: WebhookIdInput!) { deleteWebhook(input: $i) { id secret webhook { id } } }";
const HOOKS: &str = "query ($id: ID!) { workflow(id: $id) { webhooks { id url description \
    createdBy lastDeliveryAt secretRotatedAt } } }";

/// Creates a webhook for `workflow`; returns `(id, url, secret)`.
async fn create_hook(
    server: &TestServer,
    editor: &str,
    workflow: &str,
) -> (String, String, String) {
    let data = server
        .ok(
            editor,
            CREATE,
            json!({"i": {"workflowId": workflow, "description": "from the CRM"}}),
        )
        .await;
    let hook = &data["createWebhook"];
    (
        hook["id"].as_str().expect("an id").to_string(),
        hook["url"].as_str().expect("a url").to_string(),
        hook["secret"].as_str().expect("a secret").to_string(),
    )
}

/// How many executions the tenant has, once the read models hold
/// `after` (an execution started last): those started before it are
/// there too, since the log is read in order.
async fn executions_through(server: &TestServer, token: &str, after: &str) -> usize {
    finished(server, token, after).await;
    let data = server
        .ok(
            token,
            "{ executions(first: 100) { edges { node { id trigger } } } }",
            json!({}),
        )
        .await;
    data["executions"]["edges"].as_array().map_or(0, Vec::len)
}

async fn a_signed_delivery_runs_the_workflow(env: TestEnv) {
    let logs = captured_logs();
    let server = env.server().await;
    let editor = token("ada", "acme", Role::Editor);
    let workflow = server
        .create_workflow(&editor, "Hooked", echo_definition())
        .await;
    let data = server
        .ok(
            &editor,
            CREATE,
            json!({"i": {"workflowId": workflow, "description": "from the CRM"}}),
        )
        .await;
    let hook = &data["createWebhook"];
    let id = hook["id"].as_str().unwrap().to_string();
    let url = hook["url"].as_str().unwrap().to_string();
    let secret = hook["secret"].as_str().unwrap().to_string();
    assert_eq!(url, format!("{}/hooks/{id}", server.url));
    assert_eq!(hook["webhook"]["url"], url.as_str());
    assert_eq!(hook["webhook"]["description"], "from the CRM");
    assert_eq!(hook["webhook"]["lastDeliveryAt"], Value::Null);
    assert_eq!(hook["workflowId"], workflow.as_str());
    // 122 random bits, not a time-ordered id.
    assert_eq!(uuid::Uuid::parse_str(&id).unwrap().get_version_num(), 4);
    let key = secret.strip_prefix("whsec_").expect("the whsec_ prefix");
    assert_eq!(
        base64::Engine::decode(&base64::engine::general_purpose::STANDARD, key)
            .unwrap()
            .len(),
        32
    );

    let body = br#"{"name": "Ada", "plan": "pro"}"#;
    let (status, answer) = deliver(
        &server,
        &url,
        &signed(&secret, "msg_1", now(), body),
        body.to_vec(),
    )
    .await;
    assert_eq!(status, 202, "{answer}");
    let execution = answer["executionId"]
        .as_str()
        .expect("an execution id")
        .to_string();
    let run = finished(&server, &editor, &execution).await;
    assert_eq!(run["status"], "COMPLETED", "{run:#}");
    assert_eq!(run["trigger"], "webhook");
    assert_eq!(
        run["output"]["echo"],
        json!({"name": "Ada", "type": "application/json", "message": "msg_1",
               "raw": {"name": "Ada", "plan": "pro"}})
    );

    // A text body is passed as text.
    let text = b"plain words";
    let mut headers = signed(&secret, "msg_2", now(), text);
    headers[0] = ("content-type", "text/plain".into());
    let (status, answer) = deliver(&server, &url, &headers, text.to_vec()).await;
    assert_eq!(status, 202, "{answer}");
    let run = finished(&server, &editor, answer["executionId"].as_str().unwrap()).await;
    assert_eq!(run["output"]["echo"]["raw"], "plain words");
    assert_eq!(run["output"]["echo"]["type"], "text/plain");

    // The workflow lists it, with the time of the last delivery, and no
    // secret anywhere: not in the API, the log or any table.
    // (The workflows read model records the delivery from the execution's
    // start; it runs beside the executions one, so it may trail a little.)
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let listed = loop {
        let listed = server.ok(&editor, HOOKS, json!({"id": workflow})).await;
        if listed["workflow"]["webhooks"][0]["lastDeliveryAt"].is_string()
            || std::time::Instant::now() > deadline
        {
            break listed;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let hooks = listed["workflow"]["webhooks"].as_array().unwrap();
    assert_eq!(hooks.len(), 1);
    assert_eq!(hooks[0]["id"], id.as_str());
    assert_eq!(hooks[0]["createdBy"], "ada");
    assert!(
        hooks[0]["lastDeliveryAt"].is_string(),
        "a delivery is recorded: {listed}"
    );
    assert!(!listed.to_string().contains(key));
    let audit = server
        .ok(
            &token("root", "acme", Role::Admin),
            "{ auditLog(first: 100) { edges { node { eventType payload } } } }",
            json!({}),
        )
        .await;
    assert!(audit.to_string().contains("WebhookCreated"), "{audit}");
    assert!(!audit.to_string().contains(key));
    let stored = if env.db.url().starts_with("postgres") {
        pg_dump(env.db.url())
    } else {
        sqlite_bytes(env.db.url())
    };
    assert!(!stored.contains(key), "the secret is stored in the clear");
    assert!(!stored.contains(&secret));
    assert!(stored.contains("WebhookCreated"), "the store was read");
    let logs = String::from_utf8_lossy(&logs.lock().unwrap()).to_string();
    assert!(logs.contains("/hooks/"), "the requests were logged");
    assert!(!logs.contains(key), "the secret is in the logs");
}

async fn bad_deliveries_are_refused_and_start_nothing(env: TestEnv) {
    let server = env.server().await;
    let editor = token("ada", "acme", Role::Editor);
    let workflow = server
        .create_workflow(&editor, "Hooked", echo_definition())
        .await;
    let (_, url, secret) = create_hook(&server, &editor, &workflow).await;
    let body = br#"{"name": "Ada"}"#;

    // The first delivery of `msg_1` runs.
    let (status, first) = deliver(
        &server,
        &url,
        &signed(&secret, "msg_1", now(), body),
        body.to_vec(),
    )
    .await;
    assert_eq!(status, 202, "{first}");

    // Signed with another secret.
    let other = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let (status, answer) = deliver(
        &server,
        &url,
        &signed(other, "msg_2", now(), body),
        body.to_vec(),
    )
    .await;
    assert_eq!(status, 401, "{answer}");
    // A body changed after signing.
    let headers = signed(&secret, "msg_3", now(), body);
    let (status, _) = deliver(&server, &url, &headers, br#"{"name": "Eve"}"#.to_vec()).await;
    assert_eq!(status, 401);
    // A timestamp ten minutes old, properly signed.
    let stale = now() - 600;
    let (status, answer) = deliver(
        &server,
        &url,
        &signed(&secret, "msg_4", stale, body),
        body.to_vec(),
    )
    .await;
    assert_eq!(status, 401);
    assert!(answer.to_string().contains("timestamp"), "{answer}");
    // No signature at all.
    let (status, _) = deliver(
        &server,
        &url,
        &[("content-type", "application/json".into())],
        body.to_vec(),
    )
    .await;
    assert_eq!(status, 401);
    // A signature of another scheme version.
    let mut headers = signed(&secret, "msg_5", now(), body);
    headers[3].1 = headers[3].1.replacen("v1,", "v2,", 1);
    let (status, _) = deliver(&server, &url, &headers, body.to_vec()).await;
    assert_eq!(status, 401);
    // The same message id again, freshly signed: the first answer, nothing
    // new.
    let (status, again) = deliver(
        &server,
        &url,
        &signed(&secret, "msg_1", now(), body),
        body.to_vec(),
    )
    .await;
    assert_eq!(status, 202);
    assert_eq!(again["executionId"], first["executionId"]);
    // Too large: refused before anything is read from the database.
    let big = vec![b'a'; 300 * 1024];
    let (status, _) = deliver(
        &server,
        &url,
        &signed(&secret, "msg_6", now(), &big),
        big.clone(),
    )
    .await;
    assert_eq!(status, 413);
    // Claimed JSON that is not.
    let broken = b"{not json";
    let (status, _) = deliver(
        &server,
        &url,
        &signed(&secret, "msg_7", now(), broken),
        broken.to_vec(),
    )
    .await;
    assert_eq!(status, 400);
    // A NUL inside a JSON string is no input any execution may hold.
    let nul = br#"{"name": "a\u0000b"}"#;
    let (status, answer) = deliver(
        &server,
        &url,
        &signed(&secret, "msg_8", now(), nul),
        nul.to_vec(),
    )
    .await;
    assert_eq!(status, 400, "{answer}");
    // JSON nested 10,000 deep: refused as JSON that does not parse.
    let deep = format!("{}1{}", "[".repeat(10_000), "]".repeat(10_000)).into_bytes();
    let (status, _) = deliver(
        &server,
        &url,
        &signed(&secret, "msg_deep", now(), &deep),
        deep.clone(),
    )
    .await;
    assert_eq!(status, 400);
    // Unknown hooks: a random id, and something that is no id at all.
    let unknown = format!("{}/hooks/{}", server.url, uuid::Uuid::new_v4());
    let (status, answer) = deliver(
        &server,
        &unknown,
        &signed(&secret, "msg_9", now(), body),
        body.to_vec(),
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(answer, json!({"error": "not found"}));
    let (status, _) = deliver(
        &server,
        &format!("{}/hooks/..%2F..%2Fgraphql", server.url),
        &[],
        body.to_vec(),
    )
    .await;
    assert_eq!(status, 404);

    // One more good delivery; when it is visible, so is anything before it.
    let (status, last) = deliver(
        &server,
        &url,
        &signed(&secret, "msg_10", now(), body),
        body.to_vec(),
    )
    .await;
    assert_eq!(status, 202);
    let count = executions_through(&server, &editor, last["executionId"].as_str().unwrap()).await;
    assert_eq!(count, 2, "only msg_1 and msg_10 started executions");

    // Archived: 409, once the signature verified; restored, it runs again.
    server
        .ok(
            &editor,
            "mutation ($i: WorkflowIdInput!) { archiveWorkflow(input: $i) { id } }",
            json!({"i": {"id": workflow}}),
        )
        .await;
    let (status, answer) = deliver(
        &server,
        &url,
        &signed(&secret, "msg_11", now(), body),
        body.to_vec(),
    )
    .await;
    assert_eq!(status, 409, "{answer}");
    assert!(!answer.to_string().contains("Hooked"));
    let (status, _) = deliver(
        &server,
        &url,
        &signed(other, "msg_12", now(), body),
        body.to_vec(),
    )
    .await;
    assert_eq!(
        status, 401,
        "an unsigned caller learns nothing about the workflow"
    );
}

async fn rotation_keeps_the_old_secret_for_its_grace(env: TestEnv) {
    let server = env.server().await;
    let editor = token("ada", "acme", Role::Editor);
    let workflow = server
        .create_workflow(&editor, "Hooked", echo_definition())
        .await;
    let (id, url, old) = create_hook(&server, &editor, &workflow).await;
    let body = br#"{"name": "Ada"}"#;

    let rotated = server.ok(&editor, ROTATE, json!({"i": {"id": id}})).await;
    let new = rotated["rotateWebhookSecret"]["secret"]
        .as_str()
        .expect("a new secret")
        .to_string();
    assert_ne!(new, old);
    assert!(rotated["rotateWebhookSecret"]["webhook"]["secretRotatedAt"].is_string());

    // Within the grace, both secrets are accepted, alone or together (a
    // sender that signs with both during its own rotation).
    for (n, secret) in [&old, &new].into_iter().enumerate() {
        let message = format!("msg_{n}");
        let (status, answer) = deliver(
            &server,
            &url,
            &signed(secret, &message, now(), body),
            body.to_vec(),
        )
        .await;
        assert_eq!(status, 202, "{answer}");
    }
    let ts = now();
    let both = format!(
        "{} {}",
        sign(&old, "msg_both", ts, body),
        sign(&new, "msg_both", ts, body)
    );
    let headers = vec![
        ("content-type", "application/json".to_string()),
        ("webhook-id", "msg_both".to_string()),
        ("webhook-timestamp", ts.to_string()),
        ("webhook-signature", both),
    ];
    let (status, answer) = deliver(&server, &url, &headers, body.to_vec()).await;
    assert_eq!(status, 202, "{answer}");

    // A rotation without grace revokes the secrets before it at once.
    let again = server
        .ok(
            &editor,
            ROTATE,
            json!({"i": {"id": id, "gracePeriodSeconds": 0}}),
        )
        .await;
    let newest = again["rotateWebhookSecret"]["secret"]
        .as_str()
        .unwrap()
        .to_string();
    for secret in [&old, &new] {
        let (status, _) = deliver(
            &server,
            &url,
            &signed(secret, "msg_x", now(), body),
            body.to_vec(),
        )
        .await;
        assert_eq!(status, 401);
    }
    let (status, _) = deliver(
        &server,
        &url,
        &signed(&newest, "msg_y", now(), body),
        body.to_vec(),
    )
    .await;
    assert_eq!(status, 202);

    // Bad graces and other tenants' webhooks.
    let code = server
        .error_code(
            Some(&editor),
            ROTATE,
            json!({"i": {"id": id, "gracePeriodSeconds": 8 * 24 * 3600}}),
        )
        .await;
    assert_eq!(code, "VALIDATION");
    let intruder = token("eve", "evil", Role::Admin);
    assert_eq!(
        server
            .error_code(Some(&intruder), ROTATE, json!({"i": {"id": id}}))
            .await,
        "NOT_FOUND"
    );
    assert_eq!(
        server
            .error_code(Some(&intruder), DELETE, json!({"i": {"id": id}}))
            .await,
        "NOT_FOUND"
    );
    assert_eq!(
        server
            .error_code(
                Some(&intruder),
                CREATE,
                json!({"i": {"workflowId": workflow}})
            )
            .await,
        "NOT_FOUND"
    );
    let viewer = token("vi", "acme", Role::Viewer);
    assert_eq!(
        server
            .error_code(Some(&viewer), ROTATE, json!({"i": {"id": id}}))
            .await,
        "FORBIDDEN"
    );

    // Deleted: refused as unknown, and gone from the workflow.
    let deleted = server.ok(&editor, DELETE, json!({"i": {"id": id}})).await;
    assert_eq!(deleted["deleteWebhook"]["secret"], Value::Null);
    assert_eq!(deleted["deleteWebhook"]["webhook"], Value::Null);
    let (status, _) = deliver(
        &server,
        &url,
        &signed(&newest, "msg_z", now(), body),
        body.to_vec(),
    )
    .await;
    assert_eq!(status, 404);
    let listed = server.ok(&editor, HOOKS, json!({"id": workflow})).await;
    assert_eq!(listed["workflow"]["webhooks"], json!([]));
    assert_eq!(
        server
            .error_code(Some(&editor), DELETE, json!({"i": {"id": id}}))
            .await,
        "NOT_FOUND"
    );
}

async fn hostile_webhook_input_gets_clear_errors(env: TestEnv) {
    let mut config = env.config();
    config.limits.webhook_rate = Some(Rate {
        count: 3,
        per: Duration::from_secs(3600),
    });
    let server = env.server_with(config).await;
    let editor = token("ada", "acme", Role::Editor);
    let workflow = server
        .create_workflow(&editor, "Hooked", echo_definition())
        .await;
    // A megabyte is refused as a body before it is a description.
    for (description, field) in [
        ("a\u{0}b".to_string(), "input.description"),
        ("x".repeat(501), "input.description"),
        ("x".repeat(1024 * 1024), "body"),
    ] {
        let (_, body) = server
            .post(
                Some(&editor),
                CREATE,
                json!({"i": {"workflowId": workflow, "description": description}}),
            )
            .await;
        let error = &body["errors"][0]["extensions"];
        assert_eq!(error["code"], "VALIDATION", "{body}");
        assert_eq!(error["field"], field, "{body}");
    }
    for (id, expected) in [
        ("not-an-id", "VALIDATION"),
        ("00000000-0000-0000-0000-000000000000", "NOT_FOUND"),
    ] {
        let code = server
            .error_code(Some(&editor), CREATE, json!({"i": {"workflowId": id}}))
            .await;
        assert_eq!(code, expected, "{id}");
    }
    // Nothing of the refused creates is left behind: the workflow has no
    // webhook.
    let listed = server.ok(&editor, HOOKS, json!({"id": workflow})).await;
    assert_eq!(listed["workflow"]["webhooks"], json!([]));

    // The webhook's own rate: three deliveries an hour here, counted before
    // anything else, so a fourth is refused whatever it carries.
    let (_, url, secret) = create_hook(&server, &editor, &workflow).await;
    let body = br#"{"name": "Ada"}"#;
    for n in 0..3 {
        let message = format!("msg_{n}");
        let (status, _) = deliver(
            &server,
            &url,
            &signed(&secret, &message, now(), body),
            body.to_vec(),
        )
        .await;
        assert_eq!(status, 202);
    }
    let response = server
        .http
        .post(&url)
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 429);
    assert!(response.headers().contains_key("retry-after"));
}

#[tokio::test]
async fn postgres_a_signed_delivery_runs_the_workflow() {
    a_signed_delivery_runs_the_workflow(TestEnv::postgres().await).await;
}

#[tokio::test]
async fn sqlite_a_signed_delivery_runs_the_workflow() {
    a_signed_delivery_runs_the_workflow(TestEnv::sqlite().await).await;
}

#[tokio::test]
async fn postgres_bad_deliveries_are_refused_and_start_nothing() {
    bad_deliveries_are_refused_and_start_nothing(TestEnv::postgres().await).await;
}

#[tokio::test]
async fn sqlite_bad_deliveries_are_refused_and_start_nothing() {
    bad_deliveries_are_refused_and_start_nothing(TestEnv::sqlite().await).await;
}

#[tokio::test]
async fn postgres_rotation_keeps_the_old_secret_for_its_grace() {
    rotation_keeps_the_old_secret_for_its_grace(TestEnv::postgres().await).await;
}

#[tokio::test]
async fn sqlite_rotation_keeps_the_old_secret_for_its_grace() {
    rotation_keeps_the_old_secret_for_its_grace(TestEnv::sqlite().await).await;
}

#[tokio::test]
async fn postgres_hostile_webhook_input_gets_clear_errors() {
    hostile_webhook_input_gets_clear_errors(TestEnv::postgres().await).await;
}

#[tokio::test]
async fn sqlite_hostile_webhook_input_gets_clear_errors() {
    hostile_webhook_input_gets_clear_errors(TestEnv::sqlite().await).await;
}
