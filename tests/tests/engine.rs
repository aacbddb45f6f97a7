//! The engine through the service: executions that really run, on both
//! backends.

use std::time::Duration;

use serde_json::{json, Value};
use toolhub_domain::Role;
use toolhub_tests::{step, token, TestEnv};

/// `shape` builds an object from the input, `check` branches on it, one
/// branch runs and the other is skipped, and `done` joins them.
fn branching() -> Value {
    json!({
        "nodes": [
            {"id": "shape", "type": "transform",
             "params": {"template": {"n": "{{input.n}}", "greeting": "hello {{input.name}}"}}},
            {"id": "check", "type": "condition", "params": {"expression": "nodes.shape.n > 2"}},
            {"id": "big", "type": "transform", "params": {"template": {"size": "big", "n": "{{nodes.shape.n}}"}}},
            {"id": "small", "type": "transform", "params": {"template": {"size": "small"}}},
            {"id": "done", "type": "transform",
             "params": {"template": {"greeting": "{{nodes.shape.greeting}}", "big": "{{nodes.big}}", "small": "{{nodes.small}}"}}}
        ],
        "edges": [
            {"from": "shape", "to": "check"},
            {"from": "check", "to": "big", "branch": "true"},
            {"from": "check", "to": "small", "branch": "false"},
            {"from": "big", "to": "done"},
            {"from": "small", "to": "done"}
        ]
    })
}

async fn conditions_take_each_branch(env: TestEnv) {
    let server = env.server().await;
    let editor = token("ada", "acme", Role::Editor);
    let workflow = server
        .create_workflow(&editor, "Branching", branching())
        .await;

    let big = server
        .start_execution(&editor, &workflow, json!({"n": 5, "name": "Ada"}))
        .await;
    let small = server
        .start_execution(&editor, &workflow, json!({"n": 1, "name": "Bo"}))
        .await;
    let big = server
        .wait_finished(&editor, &big, Duration::from_secs(10))
        .await;
    let small = server
        .wait_finished(&editor, &small, Duration::from_secs(10))
        .await;

    assert_eq!(big["status"], "COMPLETED", "{big:#}");
    assert_eq!(step(&big, "check")["output"], json!({"result": true}));
    assert_eq!(step(&big, "small")["status"], "skipped");
    assert_eq!(
        big["output"],
        json!({"done": {"greeting": "hello Ada", "big": {"size": "big", "n": 5}, "small": null}})
    );
    assert_eq!(small["status"], "COMPLETED", "{small:#}");
    assert_eq!(step(&small, "big")["status"], "skipped");
    assert_eq!(small["output"]["done"]["small"], json!({"size": "small"}));
    let states: Vec<(&str, &str)> = small["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["id"].as_str().unwrap(), n["state"].as_str().unwrap()))
        .collect();
    assert_eq!(
        states,
        [
            ("shape", "DONE"),
            ("check", "DONE"),
            ("big", "SKIPPED"),
            ("small", "DONE"),
            ("done", "DONE")
        ]
    );
}

#[tokio::test]
async fn conditions_take_each_branch_on_postgres() {
    conditions_take_each_branch(TestEnv::postgres().await).await;
}

#[tokio::test]
async fn conditions_take_each_branch_on_sqlite() {
    conditions_take_each_branch(TestEnv::sqlite().await).await;
}
