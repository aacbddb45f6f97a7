//! The examples of `docs/time-travel.md`, each run as written against a
//! fresh `toolhub serve` on the embedded database (the harness is
//! `examples/mod.rs`). Each example checks its own answers with `jq` and
//! fails when they are wrong; these tests also read what it printed.
//!
//! The `toolhub-replay` examples run the binary built beside `toolhub`:
//! `cargo test --workspace` builds it; a run of these tests alone needs
//! `cargo build --bin toolhub-replay` first (the test says so when it is
//! missing or older than its sources).

use serde_json::{json, Value};

mod examples;

const DOC: &str = "docs/time-travel.md";

/// The lines of `stdout` that are JSON objects.
fn objects(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[test]
fn the_as_of_example_runs_as_written() {
    let stdout = examples::run_doc_example(DOC, "as-of");
    let answer = objects(&stdout).pop().unwrap_or_default();
    assert_eq!(
        answer["byPosition"],
        json!({"name": "Greeter", "definitionVersion": 1}),
        "{stdout}"
    );
    assert_eq!(answer["byTime"], answer["byPosition"], "{stdout}");
    assert_eq!(
        answer["byVersion"],
        json!({"name": "Greeter", "definitionVersion": 2}),
        "{stdout}"
    );
    assert_eq!(
        answer["now"],
        json!({"name": "Welcomer", "definitionVersion": 2, "updatedBy": "ada"}),
        "{stdout}"
    );
}

#[test]
fn the_workflow_diff_example_runs_as_written() {
    let stdout = examples::run_doc_example(DOC, "diff");
    let answer = objects(&stdout).pop().unwrap_or_default();
    assert_eq!(
        answer,
        json!({"addedNodes": ["shout"], "removedNodes": [], "changedNodes": ["greet"],
               "addedEdges": [{"from": "greet", "to": "shout"}], "removedEdges": []}),
        "{stdout}"
    );
}

#[test]
fn the_execution_as_of_example_runs_as_written() {
    let stdout = examples::run_doc_example(DOC, "execution-as-of");
    let answer = objects(&stdout).pop().unwrap_or_default();
    assert_eq!(
        answer,
        json!({"status": "RUNNING",
               "steps": [{"nodeId": "greet", "status": "succeeded", "output": {"greeting": "Hello, Ada!"}}],
               "nodes": [{"id": "greet", "state": "DONE"}, {"id": "shout", "state": "READY"}]}),
        "{stdout}"
    );
}

#[test]
fn the_timeline_example_runs_as_written() {
    let stdout = examples::run_doc_example(DOC, "timeline");
    let entries = objects(&stdout);
    let types: Vec<&str> = entries
        .iter()
        .filter_map(|e| e["eventType"].as_str())
        .collect();
    assert_eq!(types.first().copied(), Some("ExecutionStarted"), "{stdout}");
    assert_eq!(
        types.last().copied(),
        Some("ExecutionCompleted"),
        "{stdout}"
    );
    assert_eq!(
        types.iter().filter(|t| **t == "StepSucceeded").count(),
        2,
        "{stdout}"
    );
    let last = entries.last().cloned().unwrap_or_default();
    assert_eq!(last["status"], "COMPLETED", "{stdout}");
    assert_eq!(
        last["outputs"],
        json!({"greet": {"greeting": "Hello, Ada!"}, "shout": {"loud": "Hello, Ada!"}}),
        "{stdout}"
    );
}

#[test]
fn the_replay_at_and_diff_example_runs_as_written() {
    let stdout = examples::run_doc_example(DOC, "replay-at");
    let printed = objects(&stdout);
    assert!(
        printed.contains(&json!({"name": "Greeter", "version": 1, "updatedBy": "ada"})),
        "{stdout}"
    );
    assert!(
        printed.contains(&json!({"addedNodes": ["shout"], "changedNodes": ["greet"]})),
        "{stdout}"
    );
}

#[test]
fn the_replay_timeline_example_runs_as_written() {
    let stdout = examples::run_doc_example(DOC, "replay-timeline");
    let mut lines = stdout.lines();
    assert!(
        lines
            .next()
            .is_some_and(|header| header.split_whitespace().collect::<Vec<_>>()
                == ["seq", "recorded", "event", "node", "attempt", "detail"]),
        "{stdout}"
    );
    let events: Vec<&str> = lines.filter_map(|l| l.split_whitespace().nth(2)).collect();
    assert_eq!(events.len(), 8, "{stdout}");
    assert_eq!(
        events.last().copied(),
        Some("ExecutionCompleted"),
        "{stdout}"
    );
}

#[test]
fn the_export_example_runs_as_written() {
    let stdout = examples::run_doc_example(DOC, "export");
    let exported = objects(&stdout);
    let types: Vec<&str> = exported
        .iter()
        .filter_map(|e| e["eventType"].as_str())
        .collect();
    assert_eq!(
        types,
        [
            "WorkflowCreated",
            "WorkflowDefinitionUpdated",
            "WorkflowRenamed",
            "SecretCreated"
        ],
        "{stdout}"
    );
    assert!(
        stdout.lines().any(|l| l
            == "position,tenant,aggregate_type,aggregate_id,sequence,event_type,event_version,\
                actor,correlation_id,causation_id,request_id,recorded_at,payload"),
        "the CSV header was printed: {stdout}"
    );
    assert!(!stdout.contains("s3cr3t"), "{stdout}");
}

#[test]
fn the_verify_example_runs_as_written() {
    let stdout = examples::run_doc_example(DOC, "verify");
    assert!(
        stdout.lines().any(|l| l == "verified: 2 events"),
        "{stdout}"
    );
    let head = stdout
        .lines()
        .find_map(|l| l.strip_prefix("head: "))
        .unwrap_or_else(|| panic!("the head was printed: {stdout}"));
    let (position, hash) = head.split_once('=').expect("POSITION=HASH");
    assert_eq!(hash.len(), 64, "{head}");
    for projection in ["workflows", "executions", "secrets", "mcp_servers", "audit"] {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(&format!("read model {projection} at "))
                    && l.ends_with(", matches the log")),
            "{stdout}"
        );
    }
    assert!(
        stdout
            .lines()
            .any(|l| l == format!("expected head {position}: matches")),
        "{stdout}"
    );
}

#[test]
fn the_replay_example_runs_as_written() {
    let stdout = examples::run_doc_example(DOC, "replay");
    let answer = objects(&stdout).pop().unwrap_or_default();
    assert_eq!(
        answer["replayExecution"],
        json!({"workflowVersion": 1, "stepsChecked": 4, "deterministic": true, "divergences": []}),
        "{stdout}"
    );
}

#[test]
fn the_fork_example_runs_as_written() {
    let stdout = examples::run_doc_example(DOC, "fork");
    let answers = objects(&stdout);
    assert!(
        answers.contains(&json!({"execution": {"status": "FAILED"}})),
        "the original fails: {stdout}"
    );
    let fork = answers
        .iter()
        .find(|a| a["execution"]["forkedFrom"].is_object())
        .unwrap_or_else(|| panic!("the fork is shown: {stdout}"));
    assert_eq!(fork["execution"]["status"], "COMPLETED", "{stdout}");
    assert_eq!(
        fork["execution"]["output"],
        json!({"big": "big 5"}),
        "{stdout}"
    );
    assert_eq!(
        fork["execution"]["forkedFrom"],
        json!({"fromNode": "check"}),
        "{stdout}"
    );
    assert_eq!(
        stdout.lines().last().map(str::trim),
        Some("1"),
        "the original lists its fork: {stdout}"
    );
}
