use super::*;
use crate::expr::{Cel, ConditionError};
use serde_json::json;
use toolhub_domain::common::{TenantId, WorkflowId};

fn definition(value: Value) -> WorkflowDefinition {
    WorkflowDefinition::parse(&value).expect("a valid definition")
}

fn node(id: &str) -> NodeId {
    NodeId::parse(id).unwrap()
}

/// A record built event by event, sequences from 1.
#[derive(Default)]
struct Record(Vec<ReplayEvent>);

impl Record {
    fn push(&mut self, event: ExecutionEvent) -> &mut Self {
        let sequence = self.0.len() as u64 + 1;
        self.0.push(ReplayEvent {
            sequence,
            position: format!("0:{sequence}"),
            event,
        });
        self
    }

    fn start(input: Value) -> Self {
        let mut record = Self::default();
        record.push(ExecutionEvent::ExecutionStarted {
            tenant: TenantId::parse("acme").unwrap(),
            workflow_id: WorkflowId::new(),
            workflow_version: 1,
            input,
            trigger: "manual".into(),
            source: None,
            breakpoints: vec![],
            deadline: None,
        });
        record
    }

    fn schedule(&mut self, id: &str, input: Value) -> &mut Self {
        self.push(ExecutionEvent::StepScheduled {
            node_id: node(id),
            attempt: 1,
            input,
        })
        .push(ExecutionEvent::StepStarted {
            node_id: node(id),
            attempt: 1,
            wake_at: None,
        })
    }

    fn succeed(&mut self, id: &str, attempt: u32, output: Value) -> &mut Self {
        self.push(ExecutionEvent::StepSucceeded {
            node_id: node(id),
            attempt,
            output,
        })
    }

    fn instant(&mut self, id: &str, input: Value, output: Value) -> &mut Self {
        self.schedule(id, input).succeed(id, 1, output)
    }

    fn skip(&mut self, id: &str) -> &mut Self {
        self.push(ExecutionEvent::StepSkipped { node_id: node(id) })
    }
}

fn branching() -> WorkflowDefinition {
    definition(json!({
        "nodes": [
            {"id": "shape", "type": "transform", "params": {"template": {"n": "{{input.n}}"}}},
            {"id": "check", "type": "condition", "params": {"expression": "nodes.shape.n > 2"}},
            {"id": "big", "type": "transform", "params": {"template": {"size": "big"}}},
            {"id": "small", "type": "transform", "params": {"template": {"size": "small"}}},
            {"id": "done", "type": "transform", "params": {"template": "{{nodes.big.size}}{{nodes.small.size}}"}}
        ],
        "edges": [
            {"from": "shape", "to": "check"},
            {"from": "check", "to": "big", "branch": "true"},
            {"from": "check", "to": "small", "branch": "false"},
            {"from": "big", "to": "done"},
            {"from": "small", "to": "done"}
        ]
    }))
}

/// The record the engine makes of `branching` with `n` 5.
fn big_run() -> Record {
    let mut record = Record::start(json!({"n": 5}));
    record
        .instant("shape", json!({"template": {"n": 5}}), json!({"n": 5}))
        .instant(
            "check",
            json!({"expression": "nodes.shape.n > 2"}),
            json!({"result": true}),
        )
        .skip("small")
        .instant(
            "big",
            json!({"template": {"size": "big"}}),
            json!({"size": "big"}),
        )
        .instant("done", json!({"template": "big"}), json!("big"))
        .push(ExecutionEvent::ExecutionCompleted {
            output: json!({"done": "big"}),
        });
    record
}

/// An engine whose conditions come out the other way.
struct Negated;

impl Conditions for Negated {
    fn evaluate(
        &self,
        expression: &str,
        input: &Value,
        nodes: &BTreeMap<NodeId, Value>,
    ) -> Result<bool, ConditionError> {
        Cel.evaluate(expression, input, nodes).map(|b| !b)
    }
}

#[test]
fn a_run_as_the_engine_records_it_replays_without_divergence() {
    let report = replay(&branching(), &big_run().0, &Cel);
    assert_eq!(report.divergences, []);
    assert!(report.deterministic());
    assert_eq!(report.workflow_version, 1);
    assert_eq!(report.steps_checked, 5, "four steps scheduled, one skipped");
}

#[test]
fn a_condition_evaluated_differently_is_a_divergence_at_that_condition_only() {
    let report = replay(&branching(), &big_run().0, &Negated);
    assert!(!report.deterministic());
    assert_eq!(report.divergences.len(), 1, "{:#?}", report.divergences);
    let divergence = &report.divergences[0];
    assert_eq!(divergence.node_id, Some(node("check")));
    assert_eq!(divergence.kind, DivergenceKind::Output);
    assert_eq!(divergence.sequence, 7);
    assert_eq!(divergence.expected, json!({"result": false}));
    assert_eq!(divergence.recorded, json!({"result": true}));
}

#[test]
fn a_recorded_input_the_engine_would_not_compute_is_an_input_divergence() {
    let mut record = big_run();
    if let ExecutionEvent::StepScheduled { input, .. } = &mut record.0[8].event {
        *input = json!({"template": {"size": "huge"}});
    } else {
        panic!("event 9 schedules big");
    }
    let report = replay(&branching(), &record.0, &Cel);
    assert_eq!(report.divergences.len(), 1, "{:#?}", report.divergences);
    assert_eq!(report.divergences[0].kind, DivergenceKind::Input);
    assert_eq!(report.divergences[0].node_id, Some(node("big")));
    assert_eq!(
        report.divergences[0].expected,
        json!({"template": {"size": "big"}})
    );
}

#[test]
fn a_branch_not_taken_that_ran_is_a_skip_divergence_and_the_end_is_checked() {
    let mut record = Record::start(json!({"n": 5}));
    record
        .instant("shape", json!({"template": {"n": 5}}), json!({"n": 5}))
        .instant(
            "check",
            json!({"expression": "nodes.shape.n > 2"}),
            json!({"result": true}),
        )
        .instant(
            "small",
            json!({"template": {"size": "small"}}),
            json!({"size": "small"}),
        )
        .push(ExecutionEvent::ExecutionCompleted {
            output: json!({"done": "small"}),
        });
    let report = replay(&branching(), &record.0, &Cel);
    let kinds: Vec<(Option<&str>, DivergenceKind)> = report
        .divergences
        .iter()
        .map(|d| (d.node_id.as_ref().map(NodeId::as_str), d.kind))
        .collect();
    assert_eq!(
        kinds,
        [
            (Some("small"), DivergenceKind::Skip),
            (Some("big"), DivergenceKind::MissingStep),
            (Some("done"), DivergenceKind::MissingStep),
            (None, DivergenceKind::End),
        ]
    );
}

#[test]
fn nodes_scheduled_out_of_the_engine_s_order_are_an_order_divergence() {
    let parallel = definition(json!({
        "nodes": [
            {"id": "a", "type": "transform", "params": {"template": 1}},
            {"id": "b", "type": "transform", "params": {"template": 2}}
        ],
        "edges": []
    }));
    let mut in_order = Record::start(json!({}));
    in_order
        .instant("a", json!({"template": 1}), json!(1))
        .instant("b", json!({"template": 2}), json!(2));
    assert_eq!(replay(&parallel, &in_order.0, &Cel).divergences, []);

    let mut swapped = Record::start(json!({}));
    swapped
        .instant("b", json!({"template": 2}), json!(2))
        .instant("a", json!({"template": 1}), json!(1));
    let report = replay(&parallel, &swapped.0, &Cel);
    assert_eq!(report.divergences.len(), 1, "{:#?}", report.divergences);
    assert_eq!(report.divergences[0].kind, DivergenceKind::Order);
    assert_eq!(report.divergences[0].node_id, Some(node("b")));
    assert_eq!(report.divergences[0].expected, json!("a"));
}

fn fetch(retry: Option<Value>) -> WorkflowDefinition {
    let mut node = json!({"id": "fetch", "type": "http", "params": {
        "method": "GET", "url": "https://api.example/{{input.path}}",
        "headers": {"X-Trace": "trace {{secrets.TOKEN}}"}}});
    if let Some(retry) = retry {
        node["retry"] = retry;
    }
    definition(json!({"nodes": [node], "edges": []}))
}

fn failed_fetch(record: &mut Record, attempt: u32, retryable: bool) {
    record.push(ExecutionEvent::StepFailed {
        node_id: node("fetch"),
        attempt,
        error: "HTTP 503".into(),
        retryable,
    });
}

fn retried_fetch(record: &mut Record, attempt: u32) {
    record
        .push(ExecutionEvent::StepRetried {
            node_id: node("fetch"),
            attempt,
            not_before: None,
        })
        .push(ExecutionEvent::StepStarted {
            node_id: node("fetch"),
            attempt,
            wake_at: None,
        });
}

fn fetch_input() -> Value {
    json!({"method": "GET", "url": "https://api.example/items",
           "headers": {"X-Trace": "trace ***"}, "body": null})
}

#[test]
fn retries_within_the_policy_and_masked_secrets_replay_without_divergence() {
    let mut record = Record::start(json!({"path": "items"}));
    record.schedule("fetch", fetch_input());
    failed_fetch(&mut record, 1, true);
    retried_fetch(&mut record, 2);
    record
        .succeed("fetch", 2, json!({"status": 200}))
        .push(ExecutionEvent::ExecutionCompleted {
            output: json!({"fetch": {"status": 200}}),
        });
    let report = replay(
        &fetch(Some(json!({"max_attempts": 2, "backoff_ms": 10}))),
        &record.0,
        &Cel,
    );
    assert_eq!(report.divergences, []);
    assert_eq!(report.steps_checked, 2);
}

#[test]
fn a_retry_beyond_the_policy_or_after_a_permanent_failure_is_a_retry_divergence() {
    let mut record = Record::start(json!({"path": "items"}));
    record.schedule("fetch", fetch_input());
    failed_fetch(&mut record, 1, true);
    retried_fetch(&mut record, 2);
    let report = replay(&fetch(None), &record.0, &Cel);
    assert_eq!(report.divergences.len(), 1, "{:#?}", report.divergences);
    assert_eq!(report.divergences[0].kind, DivergenceKind::Retry);
    assert!(report.divergences[0].reason.contains("retry policy"));

    let mut record = Record::start(json!({"path": "items"}));
    record.schedule("fetch", fetch_input());
    failed_fetch(&mut record, 1, false);
    retried_fetch(&mut record, 2);
    let policy = Some(json!({"max_attempts": 3, "backoff_ms": 10}));
    let report = replay(&fetch(policy.clone()), &record.0, &Cel);
    assert_eq!(report.divergences[0].kind, DivergenceKind::Retry);

    // And a run that gave up while the policy allowed another attempt.
    let mut record = Record::start(json!({"path": "items"}));
    record.schedule("fetch", fetch_input());
    failed_fetch(&mut record, 1, true);
    record.push(ExecutionEvent::ExecutionFailed {
        error: "node `fetch` failed: HTTP 503".into(),
    });
    let report = replay(&fetch(policy), &record.0, &Cel);
    assert_eq!(report.divergences.len(), 1, "{:#?}", report.divergences);
    assert_eq!(report.divergences[0].kind, DivergenceKind::Retry);
    assert_eq!(report.divergences[0].expected, json!({"retry": 2}));
}

#[test]
fn a_step_that_could_not_be_prepared_at_the_time_is_taken_as_recorded() {
    let mut record = Record::start(json!({"path": "items"}));
    record.schedule("fetch", Value::Null);
    record.push(ExecutionEvent::StepFailed {
        node_id: node("fetch"),
        attempt: 1,
        error: "the secret `TOKEN` is not available".into(),
        retryable: false,
    });
    record.push(ExecutionEvent::ExecutionFailed {
        error: "node `fetch` failed: the secret `TOKEN` is not available".into(),
    });
    assert_eq!(replay(&fetch(None), &record.0, &Cel).divergences, []);
}
