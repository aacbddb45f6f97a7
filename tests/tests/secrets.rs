//! Secrets through GraphQL: the four mutations, the metadata queries, and
//! the promise that a value never comes back out — not in a response, not in
//! a log line, not in any table but the sealed form in the log.

use serde_json::{json, Value};
use toolhub_domain::Role;
use toolhub_tests::{captured_logs, token, TestEnv, TestServer};

const CREATE: &str = r#"mutation ($input: CreateSecretInput!) {
  createSecret(input: $input) { id version position secret { id name description rotationCount version } } }"#;
const ROTATE: &str = r#"mutation ($input: RotateSecretInput!) {
  rotateSecret(input: $input) { id version position secret { rotationCount } } }"#;
const DESCRIBE: &str = r#"mutation ($input: DescribeSecretInput!) {
  describeSecret(input: $input) { version secret { description } } }"#;
const DELETE: &str = r#"mutation ($input: DeleteSecretInput!) {
  deleteSecret(input: $input) { id version position } }"#;

async fn exercise_every_secret_operation(server: &TestServer, values: &[&str]) -> Vec<Value> {
    let admin = token("root", "acme", Role::Admin);
    let editor = token("ada", "acme", Role::Editor);
    let mut bodies = Vec::new();
    let mut post = |body: Value| {
        bodies.push(body.clone());
        body
    };

    let (_, created) = server
        .post(
            Some(&admin),
            CREATE,
            json!({ "input": { "name": "API_TOKEN", "description": "the API", "value": values[0] } }),
        )
        .await;
    let created = post(created);
    let payload = &created["data"]["createSecret"];
    assert_eq!(payload["secret"]["name"], "API_TOKEN", "{created}");
    assert_eq!(payload["secret"]["rotationCount"], 0);
    let id = payload["id"].as_str().unwrap().to_string();

    let (_, rotated) = server
        .post(
            Some(&admin),
            ROTATE,
            json!({ "input": { "id": id, "value": values[1], "expectedVersion": 1 } }),
        )
        .await;
    let rotated = post(rotated);
    assert_eq!(
        rotated["data"]["rotateSecret"]["secret"]["rotationCount"], 1,
        "{rotated}"
    );
    let (_, stale) = server
        .post(
            Some(&admin),
            ROTATE,
            json!({ "input": { "id": id, "value": values[1], "expectedVersion": 1 } }),
        )
        .await;
    let stale = post(stale);
    assert_eq!(stale["errors"][0]["extensions"]["code"], "CONFLICT");

    let (_, described) = server
        .post(
            Some(&admin),
            DESCRIBE,
            json!({ "input": { "id": id, "description": "rotated monthly" } }),
        )
        .await;
    let described = post(described);
    assert_eq!(
        described["data"]["describeSecret"]["secret"]["description"],
        "rotated monthly"
    );

    // Editors read metadata.
    let (_, listed) = server
        .post(
            Some(&editor),
            r#"query { secrets(first: 10) { edges { node { id name description rotationCount createdBy } } } }"#,
            json!({}),
        )
        .await;
    let listed = post(listed);
    let (_, one) = server
        .post(
            Some(&editor),
            r#"query ($id: ID!) { secret(id: $id) { id name } }"#,
            json!({ "id": id }),
        )
        .await;
    let one = post(one);
    assert_eq!(one["data"]["secret"]["name"], "API_TOKEN", "{one}");
    assert!(listed["data"]["secrets"]["edges"].as_array().unwrap().len() == 1);

    // Bad input is refused with the field.
    let (_, bad_name) = server
        .post(
            Some(&admin),
            CREATE,
            json!({ "input": { "name": "lower-case", "value": values[0] } }),
        )
        .await;
    let bad_name = post(bad_name);
    assert_eq!(bad_name["errors"][0]["extensions"]["code"], "VALIDATION");
    assert_eq!(bad_name["errors"][0]["extensions"]["field"], "input.name");

    let (_, deleted) = server
        .post(Some(&admin), DELETE, json!({ "input": { "id": id } }))
        .await;
    let deleted = post(deleted);
    assert!(
        deleted["data"]["deleteSecret"]["position"].is_string(),
        "{deleted}"
    );
    // A deleted secret is gone: rotating, describing or deleting it again
    // is NOT_FOUND.
    for (query, input) in [
        (ROTATE, json!({ "id": id, "value": values[2] })),
        (DESCRIBE, json!({ "id": id, "description": "x" })),
        (DELETE, json!({ "id": id })),
    ] {
        let (_, body) = server
            .post(Some(&admin), query, json!({ "input": input }))
            .await;
        let body = post(body);
        assert_eq!(
            body["errors"][0]["extensions"]["code"], "NOT_FOUND",
            "{body}"
        );
    }
    let (_, missing) = server
        .post(
            Some(&admin),
            ROTATE,
            json!({ "input": { "id": uuid::Uuid::new_v4().to_string(), "value": values[2] } }),
        )
        .await;
    let missing = post(missing);
    assert_eq!(missing["errors"][0]["extensions"]["code"], "NOT_FOUND");

    // The audit log shows the secret's events, redacted.
    let (_, audit) = server
        .post(
            Some(&admin),
            r#"query ($id: ID!) { history(aggregateType: SECRET, aggregateId: $id) { eventType payload } }"#,
            json!({ "id": id }),
        )
        .await;
    let audit = post(audit);
    assert_eq!(
        audit["data"]["history"][0]["eventType"], "SecretCreated",
        "{audit}"
    );
    let (_, log) = server
        .post(
            Some(&admin),
            r#"{ auditLog(first: 100) { edges { node { eventType payload } } } }"#,
            json!({}),
        )
        .await;
    post(log);
    bodies
}

fn assert_absent(haystack: &str, values: &[&str], where_: &str) {
    for value in values {
        assert!(
            !haystack.contains(value),
            "a secret value appears in {where_}"
        );
    }
}

#[tokio::test]
async fn secret_values_never_appear_in_responses_logs_or_tables_on_postgres() {
    let logs = captured_logs();
    let env = TestEnv::postgres().await;
    let server = env.server().await;
    let values = [
        "plaintext-one-7f3a9c",
        "plaintext-two-51be02",
        "plaintext-three-c0ffee",
    ];
    let bodies = exercise_every_secret_operation(&server, &values).await;
    for body in &bodies {
        assert_absent(&body.to_string(), &values, "a response");
    }
    let dump = toolhub_tests::pg_dump(env.db.url());
    assert!(dump.contains("SecretCreated"), "the dump holds the log");
    assert_absent(&dump, &values, "the database");
    let logs = String::from_utf8_lossy(&logs.lock().unwrap()).to_string();
    assert!(!logs.is_empty(), "the logs were captured");
    assert_absent(&logs, &values, "the logs");
}

#[tokio::test]
async fn secret_values_never_appear_in_responses_or_the_file_on_sqlite() {
    let logs = captured_logs();
    let env = TestEnv::sqlite().await;
    let server = env.server().await;
    let values = [
        "sqlite-plain-one-77aa",
        "sqlite-plain-two-88bb",
        "sqlite-plain-three-99cc",
    ];
    let bodies = exercise_every_secret_operation(&server, &values).await;
    for body in &bodies {
        assert_absent(&body.to_string(), &values, "a response");
    }
    assert_absent(
        &toolhub_tests::sqlite_bytes(env.db.url()),
        &values,
        "the database file",
    );
    let logs = String::from_utf8_lossy(&logs.lock().unwrap()).to_string();
    assert_absent(&logs, &values, "the logs");
}

#[tokio::test]
async fn a_secret_name_already_in_use_is_a_conflict() {
    let env = TestEnv::postgres().await;
    let server = env.server().await;
    let admin = token("root", "acme", Role::Admin);
    let input = |value: &str| json!({ "input": { "name": "API_TOKEN", "description": "", "value": value } });
    server.ok(&admin, CREATE, input("first-value-1234")).await;
    let (_, body) = server
        .post(Some(&admin), CREATE, input("second-value-5678"))
        .await;
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "CONFLICT",
        "{body}"
    );
    assert_eq!(
        body["errors"][0]["extensions"]["reason"], "NAME_TAKEN",
        "{body}"
    );
    assert!(!body.to_string().contains("second-value-5678"));
    let listed = server
        .ok(
            &admin,
            "{ secrets(first: 10) { edges { node { name } } } }",
            json!({}),
        )
        .await;
    assert_eq!(listed["secrets"]["edges"].as_array().unwrap().len(), 1);
}
