//! `toolhub-replay export`: the audit log as JSON lines or CSV, equal to
//! the audit read model, with its filters; on both backends.

use std::process::Output;
use std::time::Duration;

use serde_json::{json, Value};
use toolhub_domain::workflow::{Workflow, WorkflowCommand};
use toolhub_domain::{TenantId, WorkflowId};
use toolhub_eventstore::testing::TestDb;
use toolhub_eventstore::{CommandBus, CommandContext, EventStore, Position};
use toolhub_projections::{ProjectorRunner, ReadModels, RunnerOptions};

async fn replay(url: &str, args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_toolhub-replay"))
        .args(args)
        .env("DATABASE_URL", url)
        .env_remove("TOOLHUB_LOG")
        .output()
        .await
        .expect("run toolhub-replay")
}

fn lines(output: &Output) -> Vec<Value> {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect()
}

/// Three workflows of acme by ada (create and two renames each), and one of
/// globex by bob: 10 events. Returns every position, in order.
async fn populate(store: &EventStore) -> Vec<Position> {
    let bus: CommandBus<Workflow> = CommandBus::new(store.clone());
    let mut positions = Vec::new();
    for (tenant, actor, renames) in [
        ("acme", "ada", 2),
        ("acme", "ada", 2),
        ("acme", "ada", 2),
        ("globex", "bob", 0),
    ] {
        let ctx = CommandContext::new(actor, TenantId::parse(tenant).expect("a tenant"));
        let id = WorkflowId::new().to_string();
        let create = WorkflowCommand::Create {
            tenant: ctx.tenant.clone(),
            name: "w".into(),
            description: String::new(),
            definition: json!({"nodes": [{"id": "a", "type": "http", "params": {"method": "GET",
                "url": "https://api.example.com/?token=literal-token-value",
                "headers": {"Authorization": "Bearer literal-header-value"}}}], "edges": []}),
        };
        positions.push(
            bus.execute(&id, create, &ctx)
                .await
                .expect("create")
                .position
                .expect("a position"),
        );
        for i in 0..renames {
            let rename = WorkflowCommand::Rename {
                name: format!("w{i}"),
            };
            positions.push(
                bus.execute(&id, rename, &ctx)
                    .await
                    .expect("rename")
                    .position
                    .expect("a position"),
            );
        }
    }
    let runner = ProjectorRunner::start(store.clone(), RunnerOptions::default());
    ReadModels::new(store)
        .wait_for(*positions.last().expect("events"), Duration::from_secs(20))
        .await
        .expect("the read models catch up");
    runner.stop().await;
    positions
}

async fn export_equals_the_audit_read_model(db: TestDb) {
    let url = db.url().to_string();
    let store = toolhub_eventstore::open(&url)
        .await
        .expect("open the store");
    let positions = populate(&store).await;

    let all = lines(&replay(&url, &["export"]).await);
    assert_eq!(all.len(), 10);
    let exported: Vec<String> = all
        .iter()
        .map(|e| e["position"].as_str().expect("a position").to_string())
        .collect();
    let expected: Vec<String> = positions.iter().map(ToString::to_string).collect();
    assert_eq!(exported, expected, "every event, in commit order");
    assert_eq!(all[0]["eventType"], "WorkflowCreated");
    assert_eq!(all[0]["actor"], "ada");
    assert_eq!(all[0]["tenant"], "acme");
    assert_eq!(all[0]["aggregateType"], "workflow");
    let text = all.iter().map(Value::to_string).collect::<String>();
    assert!(
        !text.contains("literal-token-value") && !text.contains("literal-header-value"),
        "redacted as the audit log is"
    );
    // The same as the read model, entry by entry.
    let read = ReadModels::new(&store);
    let acme = TenantId::parse("acme").expect("a tenant");
    let model = read
        .audit_after(&acme, Position::ZERO, &Default::default(), 100)
        .await
        .expect("the audit read model");
    let acme_lines = lines(&replay(&url, &["export", "--tenant", "acme"]).await);
    assert_eq!(acme_lines.len(), model.len());
    for (line, entry) in acme_lines.iter().zip(&model) {
        assert_eq!(line["position"], entry.position.to_string());
        assert_eq!(line["payload"], entry.payload);
        assert_eq!(line["eventType"], entry.event_type);
        assert_eq!(line["requestId"], entry.request_id);
    }
    // Filters.
    assert_eq!(
        lines(&replay(&url, &["export", "--actor", "bob"]).await).len(),
        1
    );
    assert_eq!(
        lines(&replay(&url, &["export", "--aggregate-type", "secret"]).await).len(),
        0
    );
    let from = positions[3].to_string();
    let to = positions[6].to_string();
    let window = lines(&replay(&url, &["export", "--from", &from, "--to", &to]).await);
    let window: Vec<&str> = window
        .iter()
        .filter_map(|e| e["position"].as_str())
        .collect();
    assert_eq!(
        window,
        expected[3..6]
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
    );
    let later = lines(&replay(&url, &["export", "--from", "2999-01-01T00:00:00Z"]).await);
    assert!(later.is_empty());
    let earlier = lines(
        &replay(
            &url,
            &[
                "export",
                "--to",
                "2999-01-01T00:00:00Z",
                "--batch-size",
                "3",
            ],
        )
        .await,
    );
    assert_eq!(earlier.len(), 10, "batches of 3 lose nothing");
    // CSV: a header and one record per event.
    let csv = replay(&url, &["export", "--format", "csv"]).await;
    assert!(csv.status.success());
    let mut reader = csv::Reader::from_reader(csv.stdout.as_slice());
    let headers = reader.headers().expect("a header").clone();
    assert_eq!(&headers[0], "position");
    assert_eq!(&headers[12], "payload");
    let records: Vec<csv::StringRecord> = reader.records().map(|r| r.expect("a record")).collect();
    assert_eq!(records.len(), 10);
    let payload: Value = serde_json::from_str(&records[0][12]).expect("the payload is JSON");
    assert_eq!(payload, all[0]["payload"]);
    // Bad arguments.
    for args in [
        vec!["export", "--format", "xml"],
        vec!["export", "--from", "yesterday"],
        vec!["export", "--aggregate-type", "widget"],
        vec!["export", "--batch-size", "0"],
        vec!["export", "--tenant", "Not An Org!"],
    ] {
        assert_eq!(replay(&url, &args).await.status.code(), Some(2), "{args:?}");
    }
}

#[tokio::test]
async fn export_equals_the_audit_read_model_on_postgres() {
    export_equals_the_audit_read_model(TestDb::postgres().await).await;
}

#[tokio::test]
async fn export_equals_the_audit_read_model_on_sqlite() {
    export_equals_the_audit_read_model(TestDb::sqlite().await).await;
}

/// An entry whose payload and text columns hold NUL and other control
/// characters, quotes, separators and non-ASCII text exports as one valid
/// JSON line and one CSV record, equal to the read model.
async fn awkward_text_exports_as_valid_lines(db: TestDb) {
    use toolhub_eventstore::sql::{exec, Arg};
    let url = db.url().to_string();
    let store = toolhub_eventstore::open(&url)
        .await
        .expect("open the store");
    let awkward = "a\u{0}b\u{1}\u{1f}\t\n\r\"\\,;'é☃𝄞\u{7f}\u{2028}";
    let payload = json!({
        "type": "WorkflowRenamed",
        awkward: [awkward, 1.5, -2, 1e-7, null, true, {"nested \"key\"": "\u{0}"}],
        "spaces": "  a : b , c  ",
    });
    exec(
        store.db(),
        "INSERT INTO rm_audit (global_position, transaction_id, tenant, aggregate_type, \
         aggregate_id, sequence, event_type, event_version, actor, correlation_id, \
         causation_id, request_id, recorded_at, payload) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
        &[
            Arg::from(1i64),
            Arg::from(5i64),
            Arg::from("acme"),
            Arg::from("workflow"),
            Arg::from(awkward),
            Arg::from(1i64),
            Arg::from("WorkflowRenamed"),
            Arg::from("1.0"),
            Arg::from(awkward),
            Arg::from("c,\"d\""),
            Arg::from(""),
            Arg::from("r\né"),
            Arg::from(chrono::Utc::now()),
            Arg::from(payload),
        ],
    )
    .await
    .expect("insert an audit entry");
    let model = ReadModels::new(&store)
        .audit_after(
            &TenantId::parse("acme").expect("a tenant"),
            Position::ZERO,
            &Default::default(),
            10,
        )
        .await
        .expect("the audit read model");
    assert_eq!(model.len(), 1);
    let entry = &model[0];
    let recorded_at = entry
        .recorded_at
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);

    let json_lines = lines(&replay(&url, &["export"]).await);
    assert_eq!(json_lines.len(), 1, "one line, whatever the text holds");
    let line = &json_lines[0];
    assert_eq!(line["position"], entry.position.to_string());
    assert_eq!(line["actor"], entry.actor);
    assert_eq!(line["aggregateId"], entry.aggregate_id);
    assert_eq!(line["correlationId"], entry.correlation_id);
    assert_eq!(line["requestId"], entry.request_id);
    assert_eq!(line["recordedAt"], recorded_at);
    assert_eq!(line["payload"], entry.payload);

    let csv = replay(&url, &["export", "--format", "csv"]).await;
    assert!(
        csv.status.success(),
        "{}",
        String::from_utf8_lossy(&csv.stderr)
    );
    let mut reader = csv::Reader::from_reader(csv.stdout.as_slice());
    let records: Vec<csv::StringRecord> = reader.records().map(|r| r.expect("a record")).collect();
    assert_eq!(records.len(), 1, "one record, whatever the text holds");
    let record = &records[0];
    assert_eq!(&record[0], entry.position.to_string());
    assert_eq!(&record[3], entry.aggregate_id);
    assert_eq!(&record[7], entry.actor);
    assert_eq!(&record[8], entry.correlation_id);
    assert_eq!(&record[10], entry.request_id);
    assert_eq!(&record[11], recorded_at);
    let payload: Value = serde_json::from_str(&record[12]).expect("the payload is JSON");
    assert_eq!(payload, entry.payload);
}

#[tokio::test]
async fn awkward_text_exports_as_valid_lines_on_postgres() {
    awkward_text_exports_as_valid_lines(TestDb::postgres().await).await;
}

#[tokio::test]
async fn awkward_text_exports_as_valid_lines_on_sqlite() {
    awkward_text_exports_as_valid_lines(TestDb::sqlite().await).await;
}
