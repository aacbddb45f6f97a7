//! Given/when/then tests of the execution aggregate: every command's success
//! and each of its rejections.

use super::*;
use cqrs_es::test::TestFramework;
use cqrs_es::Aggregate;
use serde_json::json;
use uuid::Uuid;

type ExecutionTest = TestFramework<Execution>;

fn tenant() -> TenantId {
    TenantId::parse("acme").expect("a valid tenant")
}

fn workflow() -> WorkflowId {
    WorkflowId::from_uuid(Uuid::from_u128(7))
}

fn node(id: &str) -> NodeId {
    NodeId::parse(id).expect("a valid node id")
}

fn start_command(trigger: &str, workflow_version: u64) -> ExecutionCommand {
    ExecutionCommand::Start {
        tenant: tenant(),
        workflow_id: workflow(),
        workflow_version,
        input: json!({"language": "en"}),
        trigger: trigger.into(),
        source: None,
        breakpoints: vec![node("check")],
        deadline: None,
    }
}

fn started() -> ExecutionEvent {
    ExecutionEvent::ExecutionStarted {
        tenant: tenant(),
        workflow_id: workflow(),
        workflow_version: 3,
        input: json!({"language": "en"}),
        trigger: "manual".into(),
        source: None,
        breakpoints: vec![node("check")],
        deadline: None,
    }
}

fn scheduled(id: &str, attempt: u32) -> ExecutionEvent {
    ExecutionEvent::StepScheduled {
        node_id: node(id),
        attempt,
        input: json!({"n": attempt}),
    }
}

fn step_started(id: &str, attempt: u32) -> ExecutionEvent {
    ExecutionEvent::StepStarted {
        node_id: node(id),
        attempt,
        wake_at: None,
    }
}

fn succeeded(id: &str, attempt: u32) -> ExecutionEvent {
    ExecutionEvent::StepSucceeded {
        node_id: node(id),
        attempt,
        output: json!("ok"),
    }
}

fn failed(id: &str, attempt: u32) -> ExecutionEvent {
    ExecutionEvent::StepFailed {
        node_id: node(id),
        attempt,
        error: "HTTP 503".into(),
        retryable: true,
    }
}

fn paused() -> ExecutionEvent {
    ExecutionEvent::ExecutionPaused {
        node_id: node("check"),
    }
}

/// The history of an execution whose `fetch` step is running.
fn running_fetch() -> Vec<ExecutionEvent> {
    vec![started(), scheduled("fetch", 1), step_started("fetch", 1)]
}

fn schedule(id: &str, attempt: u32) -> ExecutionCommand {
    ExecutionCommand::ScheduleStep {
        node_id: node(id),
        attempt,
        input: json!({"n": attempt}),
    }
}

fn start_step(id: &str, attempt: u32) -> ExecutionCommand {
    ExecutionCommand::StartStep {
        node_id: node(id),
        attempt,
        wake_at: None,
    }
}

fn succeed(id: &str, attempt: u32) -> ExecutionCommand {
    ExecutionCommand::SucceedStep {
        node_id: node(id),
        attempt,
        output: json!("ok"),
    }
}

fn fail_step(id: &str, attempt: u32) -> ExecutionCommand {
    ExecutionCommand::FailStep {
        node_id: node(id),
        attempt,
        error: "HTTP 503".into(),
        retryable: true,
    }
}

fn retry(id: &str, attempt: u32) -> ExecutionCommand {
    ExecutionCommand::RetryStep {
        node_id: node(id),
        attempt,
        not_before: None,
    }
}

fn pause(id: &str) -> ExecutionCommand {
    ExecutionCommand::PauseAtBreakpoint { node_id: node(id) }
}

/// Every command except Start, for the rules that apply to all of them.
fn every_later_command() -> Vec<ExecutionCommand> {
    vec![
        schedule("fetch", 1),
        start_step("fetch", 1),
        succeed("fetch", 1),
        fail_step("fetch", 1),
        retry("fetch", 2),
        pause("check"),
        ExecutionCommand::Resume { step: false },
        ExecutionCommand::RequestStop,
        ExecutionCommand::Cancel {
            reason: "no".into(),
        },
        ExecutionCommand::Complete { output: json!(1) },
        ExecutionCommand::Fail { error: "e".into() },
    ]
}

// Rules common to every command

#[test]
fn every_command_before_start_is_rejected_as_not_found() {
    for command in every_later_command() {
        ExecutionTest::with(())
            .given_no_previous_events()
            .when(command)
            .then_expect_error(ExecutionError::NotFound);
    }
}

#[test]
fn every_command_after_a_terminal_event_is_rejected_except_a_stop_request() {
    let endings = [
        (
            ExecutionEvent::ExecutionCompleted { output: json!(1) },
            ExecutionStatus::Completed,
        ),
        (
            ExecutionEvent::ExecutionFailed { error: "e".into() },
            ExecutionStatus::Failed,
        ),
        (
            ExecutionEvent::ExecutionCancelled { reason: "r".into() },
            ExecutionStatus::Cancelled,
        ),
    ];
    for (ending, status) in endings {
        for command in every_later_command() {
            let mut given = running_fetch();
            given.push(ending.clone());
            let test = ExecutionTest::with(()).given(given).when(command.clone());
            if command == ExecutionCommand::RequestStop {
                test.then_expect_events(vec![]);
            } else {
                test.then_expect_error(ExecutionError::Terminated { status });
            }
        }
    }
}

// Start

#[test]
fn starting_an_execution_pins_the_workflow_version() {
    ExecutionTest::with(())
        .given_no_previous_events()
        .when(start_command("manual", 3))
        .then_expect_events(vec![started()]);
}

#[test]
fn starting_an_execution_twice_is_rejected() {
    ExecutionTest::with(())
        .given(vec![started()])
        .when(start_command("manual", 3))
        .then_expect_error(ExecutionError::AlreadyStarted);
}

#[test]
fn starting_an_execution_with_an_unknown_trigger_is_rejected() {
    ExecutionTest::with(())
        .given_no_previous_events()
        .when(start_command("telepathy", 3))
        .then_expect_error(ExecutionError::InvalidTrigger {
            trigger: "telepathy".into(),
        });
}

#[test]
fn starting_an_execution_of_version_zero_is_rejected() {
    ExecutionTest::with(())
        .given_no_previous_events()
        .when(start_command("cron", 0))
        .then_expect_error(ExecutionError::InvalidWorkflowVersion);
}

// ScheduleStep

#[test]
fn scheduling_a_step_records_its_input() {
    ExecutionTest::with(())
        .given(vec![started()])
        .when(schedule("fetch", 1))
        .then_expect_events(vec![scheduled("fetch", 1)]);
}

#[test]
fn scheduling_a_step_while_paused_is_allowed() {
    ExecutionTest::with(())
        .given(vec![started(), paused()])
        .when(schedule("fetch", 1))
        .then_expect_events(vec![scheduled("fetch", 1)]);
}

#[test]
fn scheduling_the_same_attempt_twice_is_rejected() {
    ExecutionTest::with(())
        .given(vec![started(), scheduled("fetch", 1)])
        .when(schedule("fetch", 1))
        .then_expect_error(ExecutionError::StepAlreadyScheduled {
            node_id: node("fetch"),
            attempt: 1,
        });
}

#[test]
fn scheduling_attempt_zero_is_rejected() {
    ExecutionTest::with(())
        .given(vec![started()])
        .when(schedule("fetch", 0))
        .then_expect_error(ExecutionError::InvalidAttempt {
            node_id: node("fetch"),
            attempt: 0,
        });
}

#[test]
fn scheduling_a_step_after_a_stop_request_is_rejected() {
    ExecutionTest::with(())
        .given(vec![started(), ExecutionEvent::ExecutionStopRequested])
        .when(schedule("fetch", 1))
        .then_expect_error(ExecutionError::Stopping);
}

// StartStep

#[test]
fn starting_a_scheduled_step_records_it() {
    ExecutionTest::with(())
        .given(vec![started(), scheduled("fetch", 1)])
        .when(start_step("fetch", 1))
        .then_expect_events(vec![step_started("fetch", 1)]);
}

#[test]
fn starting_a_step_that_was_never_scheduled_is_rejected() {
    ExecutionTest::with(())
        .given(vec![started(), scheduled("fetch", 1)])
        .when(start_step("fetch", 2))
        .then_expect_error(ExecutionError::StepNotScheduled {
            node_id: node("fetch"),
            attempt: 2,
        });
}

#[test]
fn starting_a_step_twice_is_rejected() {
    ExecutionTest::with(())
        .given(running_fetch())
        .when(start_step("fetch", 1))
        .then_expect_error(ExecutionError::StepAlreadyStarted {
            node_id: node("fetch"),
            attempt: 1,
        });
}

#[test]
fn starting_a_finished_step_again_is_rejected() {
    let mut given = running_fetch();
    given.push(succeeded("fetch", 1));
    ExecutionTest::with(())
        .given(given)
        .when(start_step("fetch", 1))
        .then_expect_error(ExecutionError::StepAlreadyStarted {
            node_id: node("fetch"),
            attempt: 1,
        });
}

#[test]
fn starting_a_step_while_paused_is_rejected() {
    ExecutionTest::with(())
        .given(vec![started(), scheduled("fetch", 1), paused()])
        .when(start_step("fetch", 1))
        .then_expect_error(ExecutionError::Paused);
}

#[test]
fn starting_a_step_after_a_stop_request_is_rejected() {
    ExecutionTest::with(())
        .given(vec![
            started(),
            scheduled("fetch", 1),
            ExecutionEvent::ExecutionStopRequested,
        ])
        .when(start_step("fetch", 1))
        .then_expect_error(ExecutionError::Stopping);
}

// SucceedStep

#[test]
fn a_running_step_succeeds_with_its_output() {
    ExecutionTest::with(())
        .given(running_fetch())
        .when(succeed("fetch", 1))
        .then_expect_events(vec![succeeded("fetch", 1)]);
}

#[test]
fn a_step_in_flight_may_succeed_after_a_stop_request() {
    let mut given = running_fetch();
    given.push(ExecutionEvent::ExecutionStopRequested);
    ExecutionTest::with(())
        .given(given)
        .when(succeed("fetch", 1))
        .then_expect_events(vec![succeeded("fetch", 1)]);
}

#[test]
fn succeeding_a_step_that_was_never_scheduled_is_rejected() {
    ExecutionTest::with(())
        .given(vec![started()])
        .when(succeed("fetch", 1))
        .then_expect_error(ExecutionError::StepNotScheduled {
            node_id: node("fetch"),
            attempt: 1,
        });
}

#[test]
fn succeeding_a_step_that_has_not_started_is_rejected() {
    ExecutionTest::with(())
        .given(vec![started(), scheduled("fetch", 1)])
        .when(succeed("fetch", 1))
        .then_expect_error(ExecutionError::StepNotStarted {
            node_id: node("fetch"),
            attempt: 1,
        });
}

#[test]
fn succeeding_a_step_twice_is_rejected() {
    let mut given = running_fetch();
    given.push(succeeded("fetch", 1));
    ExecutionTest::with(())
        .given(given)
        .when(succeed("fetch", 1))
        .then_expect_error(ExecutionError::StepAlreadyFinished {
            node_id: node("fetch"),
            attempt: 1,
        });
}

// FailStep

#[test]
fn a_running_step_fails_with_its_error() {
    ExecutionTest::with(())
        .given(running_fetch())
        .when(fail_step("fetch", 1))
        .then_expect_events(vec![failed("fetch", 1)]);
}

#[test]
fn failing_a_step_that_was_never_scheduled_is_rejected() {
    ExecutionTest::with(())
        .given(vec![started()])
        .when(fail_step("fetch", 1))
        .then_expect_error(ExecutionError::StepNotScheduled {
            node_id: node("fetch"),
            attempt: 1,
        });
}

#[test]
fn failing_a_step_that_has_not_started_is_rejected() {
    ExecutionTest::with(())
        .given(vec![started(), scheduled("fetch", 1)])
        .when(fail_step("fetch", 1))
        .then_expect_error(ExecutionError::StepNotStarted {
            node_id: node("fetch"),
            attempt: 1,
        });
}

#[test]
fn failing_a_step_that_already_succeeded_is_rejected() {
    let mut given = running_fetch();
    given.push(succeeded("fetch", 1));
    ExecutionTest::with(())
        .given(given)
        .when(fail_step("fetch", 1))
        .then_expect_error(ExecutionError::StepAlreadyFinished {
            node_id: node("fetch"),
            attempt: 1,
        });
}

// RetryStep

#[test]
fn retrying_a_failed_step_schedules_a_new_attempt() {
    let mut given = running_fetch();
    given.push(failed("fetch", 1));
    ExecutionTest::with(())
        .given(given)
        .when(retry("fetch", 2))
        .then_expect_events(vec![ExecutionEvent::StepRetried {
            node_id: node("fetch"),
            attempt: 2,
            not_before: None,
        }]);
}

#[test]
fn a_retried_attempt_can_be_started() {
    let mut given = running_fetch();
    given.push(failed("fetch", 1));
    given.push(ExecutionEvent::StepRetried {
        node_id: node("fetch"),
        attempt: 2,
        not_before: None,
    });
    ExecutionTest::with(())
        .given(given)
        .when(start_step("fetch", 2))
        .then_expect_events(vec![step_started("fetch", 2)]);
}

#[test]
fn retrying_a_step_that_was_never_scheduled_is_rejected() {
    ExecutionTest::with(())
        .given(vec![started()])
        .when(retry("fetch", 2))
        .then_expect_error(ExecutionError::StepNotScheduled {
            node_id: node("fetch"),
            attempt: 2,
        });
}

#[test]
fn retrying_a_step_that_has_not_failed_is_rejected() {
    ExecutionTest::with(())
        .given(running_fetch())
        .when(retry("fetch", 2))
        .then_expect_error(ExecutionError::StepNotFailed {
            node_id: node("fetch"),
            attempt: 1,
        });
}

#[test]
fn retrying_with_an_attempt_that_is_not_higher_is_rejected() {
    let mut given = running_fetch();
    given.push(failed("fetch", 1));
    ExecutionTest::with(())
        .given(given)
        .when(retry("fetch", 1))
        .then_expect_error(ExecutionError::InvalidAttempt {
            node_id: node("fetch"),
            attempt: 1,
        });
}

#[test]
fn retrying_a_step_after_a_stop_request_is_rejected() {
    let mut given = running_fetch();
    given.push(failed("fetch", 1));
    given.push(ExecutionEvent::ExecutionStopRequested);
    ExecutionTest::with(())
        .given(given)
        .when(retry("fetch", 2))
        .then_expect_error(ExecutionError::Stopping);
}

// PauseAtBreakpoint and Resume

#[test]
fn pausing_at_a_breakpoint_records_it() {
    ExecutionTest::with(())
        .given(vec![started()])
        .when(pause("check"))
        .then_expect_events(vec![paused()]);
}

#[test]
fn pausing_at_a_node_that_is_not_a_breakpoint_is_rejected() {
    ExecutionTest::with(())
        .given(vec![started()])
        .when(pause("fetch"))
        .then_expect_error(ExecutionError::NotABreakpoint {
            node_id: node("fetch"),
        });
}

#[test]
fn pausing_while_paused_is_rejected() {
    ExecutionTest::with(())
        .given(vec![started(), paused()])
        .when(pause("check"))
        .then_expect_error(ExecutionError::AlreadyPaused);
}

#[test]
fn pausing_after_a_stop_request_is_rejected() {
    ExecutionTest::with(())
        .given(vec![started(), ExecutionEvent::ExecutionStopRequested])
        .when(pause("check"))
        .then_expect_error(ExecutionError::Stopping);
}

#[test]
fn resuming_a_paused_execution_records_it() {
    ExecutionTest::with(())
        .given(vec![started(), paused()])
        .when(ExecutionCommand::Resume { step: false })
        .then_expect_events(vec![ExecutionEvent::ExecutionResumed { step: false }]);
}

#[test]
fn resuming_a_running_execution_is_rejected() {
    ExecutionTest::with(())
        .given(vec![started()])
        .when(ExecutionCommand::Resume { step: false })
        .then_expect_error(ExecutionError::NotPaused);
}

#[test]
fn resuming_a_stopping_execution_is_rejected() {
    ExecutionTest::with(())
        .given(vec![
            started(),
            paused(),
            ExecutionEvent::ExecutionStopRequested,
        ])
        .when(ExecutionCommand::Resume { step: false })
        .then_expect_error(ExecutionError::NotPaused);
}

// RequestStop

#[test]
fn requesting_a_stop_records_it() {
    ExecutionTest::with(())
        .given(running_fetch())
        .when(ExecutionCommand::RequestStop)
        .then_expect_events(vec![ExecutionEvent::ExecutionStopRequested]);
}

#[test]
fn requesting_a_stop_while_paused_records_it() {
    ExecutionTest::with(())
        .given(vec![started(), paused()])
        .when(ExecutionCommand::RequestStop)
        .then_expect_events(vec![ExecutionEvent::ExecutionStopRequested]);
}

#[test]
fn requesting_a_stop_twice_records_nothing_the_second_time() {
    ExecutionTest::with(())
        .given(vec![started(), ExecutionEvent::ExecutionStopRequested])
        .when(ExecutionCommand::RequestStop)
        .then_expect_events(vec![]);
}

// Cancel

#[test]
fn cancelling_an_execution_records_the_reason() {
    ExecutionTest::with(())
        .given(vec![started(), ExecutionEvent::ExecutionStopRequested])
        .when(ExecutionCommand::Cancel {
            reason: "stopped by a user".into(),
        })
        .then_expect_events(vec![ExecutionEvent::ExecutionCancelled {
            reason: "stopped by a user".into(),
        }]);
}

#[test]
fn cancelling_a_paused_execution_records_it() {
    ExecutionTest::with(())
        .given(vec![started(), paused()])
        .when(ExecutionCommand::Cancel {
            reason: "debugging done".into(),
        })
        .then_expect_events(vec![ExecutionEvent::ExecutionCancelled {
            reason: "debugging done".into(),
        }]);
}

// Complete

#[test]
fn completing_an_execution_records_its_output() {
    let mut given = running_fetch();
    given.push(succeeded("fetch", 1));
    ExecutionTest::with(())
        .given(given)
        .when(ExecutionCommand::Complete {
            output: json!({"done": true}),
        })
        .then_expect_events(vec![ExecutionEvent::ExecutionCompleted {
            output: json!({"done": true}),
        }]);
}

#[test]
fn completing_a_paused_execution_is_rejected() {
    ExecutionTest::with(())
        .given(vec![started(), paused()])
        .when(ExecutionCommand::Complete {
            output: json!(null),
        })
        .then_expect_error(ExecutionError::Paused);
}

// Fail

#[test]
fn failing_an_execution_records_the_error() {
    let mut given = running_fetch();
    given.push(failed("fetch", 1));
    ExecutionTest::with(())
        .given(given)
        .when(ExecutionCommand::Fail {
            error: "fetch failed".into(),
        })
        .then_expect_events(vec![ExecutionEvent::ExecutionFailed {
            error: "fetch failed".into(),
        }]);
}

// State, serde and command traits

#[test]
fn the_state_follows_steps_and_status() {
    let mut execution = Execution::default();
    assert_eq!(execution.status(), None);
    for event in running_fetch() {
        execution.apply(event);
    }
    assert_eq!(execution.status(), Some(ExecutionStatus::Running));
    assert_eq!(execution.step("fetch", 1), Some(StepStatus::Running));
    execution.apply(failed("fetch", 1));
    execution.apply(ExecutionEvent::StepRetried {
        node_id: node("fetch"),
        attempt: 2,
        not_before: None,
    });
    assert_eq!(
        execution.latest_attempt("fetch"),
        Some((2, StepStatus::Scheduled))
    );
    execution.apply(paused());
    assert_eq!(execution.paused_at(), Some(&node("check")));
    assert_eq!(execution.workflow_id(), Some(workflow()));
    assert_eq!(execution.workflow_version(), 3);
    assert!(execution.breakpoints().contains("check"));
    assert_eq!(execution.tenant(), Some(&tenant()));
}

#[test]
fn the_execution_state_survives_a_snapshot_round_trip() {
    let mut execution = Execution::default();
    for event in running_fetch() {
        execution.apply(event);
    }
    execution.apply(failed("fetch", 1));
    let snapshot = serde_json::to_value(&execution).expect("serializable");
    let back: Execution = serde_json::from_value(snapshot).expect("deserializable");
    assert_eq!(back, execution);
}

#[test]
fn execution_events_serialize_with_a_type_tag_and_round_trip() {
    let events = vec![
        started(),
        scheduled("fetch", 1),
        step_started("fetch", 1),
        succeeded("fetch", 1),
        failed("fetch", 1),
        ExecutionEvent::StepRetried {
            node_id: node("fetch"),
            attempt: 2,
            not_before: None,
        },
        paused(),
        ExecutionEvent::ExecutionResumed { step: false },
        ExecutionEvent::ExecutionStopRequested,
        ExecutionEvent::ExecutionCancelled { reason: "r".into() },
        ExecutionEvent::ExecutionCompleted { output: json!([1]) },
        ExecutionEvent::ExecutionFailed { error: "e".into() },
    ];
    for event in events {
        let json = serde_json::to_value(&event).expect("serializable");
        assert_eq!(json["type"], event.event_type());
        assert_eq!(event.event_version(), "1.0");
        let back: ExecutionEvent = serde_json::from_value(json).expect("deserializable");
        assert_eq!(back, event);
    }
    assert_eq!(
        serde_json::to_value(started()).expect("serializable"),
        json!({"type": "ExecutionStarted", "tenant": "acme",
               "workflow_id": "00000000-0000-0000-0000-000000000007", "workflow_version": 3,
               "input": {"language": "en"}, "trigger": "manual", "breakpoints": ["check"]})
    );
}

#[test]
fn execution_commands_declare_roles_creation_and_retry_safety() {
    let mut commands = vec![start_command("manual", 1)];
    commands.extend(every_later_command());
    assert!(commands.iter().all(|c| c.required_role() == Role::Editor));
    let creation: Vec<&ExecutionCommand> = commands.iter().filter(|c| c.is_creation()).collect();
    assert_eq!(creation, [&commands[0]]);
    let retry_safe: Vec<&ExecutionCommand> =
        commands.iter().filter(|c| c.is_retry_safe()).collect();
    assert_eq!(
        retry_safe,
        [
            &ExecutionCommand::RequestStop,
            &ExecutionCommand::Cancel {
                reason: "no".into()
            }
        ]
    );
}

// The engine's moves: batches, skips, timers, breakpoints and stepping.

#[test]
fn a_batch_records_every_command_in_order_against_the_state_the_previous_leave() {
    ExecutionTest::with(())
        .given(vec![started()])
        .when(ExecutionCommand::Batch(vec![
            schedule("fetch", 1),
            start_step("fetch", 1),
            succeed("fetch", 1),
            ExecutionCommand::SkipStep {
                node_id: node("alert"),
            },
            ExecutionCommand::Complete {
                output: json!({"fetch": "ok"}),
            },
        ]))
        .then_expect_events(vec![
            scheduled("fetch", 1),
            step_started("fetch", 1),
            succeeded("fetch", 1),
            ExecutionEvent::StepSkipped {
                node_id: node("alert"),
            },
            ExecutionEvent::ExecutionCompleted {
                output: json!({"fetch": "ok"}),
            },
        ]);
}

#[test]
fn a_batch_with_one_refused_command_records_nothing() {
    ExecutionTest::with(())
        .given(vec![started()])
        .when(ExecutionCommand::Batch(vec![
            schedule("fetch", 1),
            succeed("fetch", 1),
        ]))
        .then_expect_error(ExecutionError::StepNotStarted {
            node_id: node("fetch"),
            attempt: 1,
        });
}

#[test]
fn an_empty_or_nested_batch_or_a_start_after_the_first_command_is_refused() {
    for batch in [
        vec![],
        vec![ExecutionCommand::Batch(vec![schedule("fetch", 1)])],
        vec![schedule("fetch", 1), start_command("manual", 1)],
    ] {
        ExecutionTest::with(())
            .given(vec![started()])
            .when(ExecutionCommand::Batch(batch))
            .then_expect_error(ExecutionError::InvalidBatch);
    }
}

#[test]
fn a_start_with_its_first_move_is_one_batch_and_a_creation() {
    let batch = ExecutionCommand::Batch(vec![
        start_command("manual", 3),
        schedule("fetch", 1),
        ExecutionCommand::StartStep {
            node_id: node("fetch"),
            attempt: 1,
            wake_at: None,
        },
    ]);
    assert!(batch.is_creation());
    assert!(!ExecutionCommand::Batch(vec![schedule("fetch", 1)]).is_creation());
    ExecutionTest::with(())
        .given_no_previous_events()
        .when(batch.clone())
        .then_expect_events(vec![
            started(),
            scheduled("fetch", 1),
            step_started("fetch", 1),
        ]);
    ExecutionTest::with(())
        .given(vec![started()])
        .when(batch)
        .then_expect_error(ExecutionError::AlreadyStarted);
}

#[test]
fn a_node_that_ran_or_was_skipped_cannot_be_skipped() {
    let skip = || ExecutionCommand::SkipStep {
        node_id: node("fetch"),
    };
    ExecutionTest::with(())
        .given(running_fetch())
        .when(skip())
        .then_expect_error(ExecutionError::CannotSkip {
            node_id: node("fetch"),
        });
    ExecutionTest::with(())
        .given(vec![
            started(),
            ExecutionEvent::StepSkipped {
                node_id: node("fetch"),
            },
        ])
        .when(skip())
        .then_expect_error(ExecutionError::CannotSkip {
            node_id: node("fetch"),
        });
}

#[test]
fn a_waiting_step_and_a_delayed_retry_keep_their_times_in_the_state() {
    let at = chrono::DateTime::parse_from_rfc3339("2026-12-02T10:00:00Z")
        .unwrap()
        .with_timezone(&chrono::Utc);
    let mut execution = Execution::default();
    execution.apply(started());
    execution.apply(scheduled("wait", 1));
    execution.apply(ExecutionEvent::StepStarted {
        node_id: node("wait"),
        attempt: 1,
        wake_at: Some(at),
    });
    assert_eq!(execution.latest_step("wait").unwrap().1.wake_at, Some(at));
    execution.apply(scheduled("fetch", 1));
    execution.apply(step_started("fetch", 1));
    execution.apply(failed("fetch", 1));
    assert_eq!(
        execution.latest_step("fetch").unwrap().1.error.as_deref(),
        Some("HTTP 503")
    );
    execution.apply(ExecutionEvent::StepRetried {
        node_id: node("fetch"),
        attempt: 2,
        not_before: Some(at),
    });
    let (attempt, step) = execution.latest_step("fetch").unwrap();
    assert_eq!((attempt, step.not_before), (2, Some(at)));
    assert_eq!(step.status, StepStatus::Scheduled);
}

#[test]
fn outputs_and_the_input_are_kept_for_templates() {
    let mut execution = Execution::default();
    execution.apply(started());
    execution.apply(scheduled("fetch", 1));
    execution.apply(step_started("fetch", 1));
    execution.apply(succeeded("fetch", 1));
    assert_eq!(execution.output("fetch"), Some(&json!("ok")));
    assert_eq!(execution.input(), &json!({"language": "en"}));
    assert_eq!(execution.trigger(), "manual");
}

#[test]
fn resuming_moves_past_the_breakpoint_instead_of_landing_on_it_again() {
    let mut execution = Execution::default();
    execution.apply(started());
    assert!(execution.pauses_before("check"));
    execution.apply(paused());
    execution.apply(ExecutionEvent::ExecutionResumed { step: false });
    assert!(!execution.pauses_before("check"));
    ExecutionTest::with(())
        .given(vec![
            started(),
            paused(),
            ExecutionEvent::ExecutionResumed { step: false },
        ])
        .when(pause("check"))
        .then_expect_error(ExecutionError::NotABreakpoint {
            node_id: node("check"),
        });
}

#[test]
fn stepping_runs_the_ready_nodes_then_pauses_before_the_next() {
    let mut execution = Execution::default();
    execution.apply(started());
    execution.apply(paused());
    execution.apply(ExecutionEvent::ExecutionResumed { step: true });
    assert!(execution.is_stepping_into());
    assert!(
        !execution.pauses_before("report"),
        "the ready nodes run first"
    );
    execution.apply(scheduled("fetch", 1));
    execution.apply(step_started("fetch", 1));
    execution.apply(succeeded("fetch", 1));
    assert!(execution.pauses_before("report"), "then any node pauses");
    ExecutionTest::with(())
        .given(vec![
            started(),
            paused(),
            ExecutionEvent::ExecutionResumed { step: true },
            scheduled("fetch", 1),
            step_started("fetch", 1),
            succeeded("fetch", 1),
        ])
        .when(pause("report"))
        .then_expect_events(vec![ExecutionEvent::ExecutionPaused {
            node_id: node("report"),
        }]);
}

#[test]
fn breakpoints_can_be_replaced_while_the_run_is_not_over() {
    ExecutionTest::with(())
        .given(vec![started(), paused()])
        .when(ExecutionCommand::SetBreakpoints {
            breakpoints: vec![node("report")],
        })
        .then_expect_events(vec![ExecutionEvent::BreakpointsSet {
            breakpoints: vec![node("report")],
        }]);
    let mut execution = Execution::default();
    execution.apply(started());
    execution.apply(ExecutionEvent::BreakpointsSet {
        breakpoints: vec![node("report")],
    });
    assert!(execution.pauses_before("report"));
    assert!(!execution.pauses_before("check"));
}

#[test]
fn events_recorded_before_the_engine_still_read() {
    let resumed: ExecutionEvent =
        serde_json::from_value(json!({"type": "ExecutionResumed"})).unwrap();
    assert_eq!(resumed, ExecutionEvent::ExecutionResumed { step: false });
    let started: ExecutionEvent = serde_json::from_value(json!({
        "type": "ExecutionStarted", "tenant": "acme",
        "workflow_id": "00000000-0000-0000-0000-000000000007", "workflow_version": 3,
        "input": {}, "trigger": "manual", "breakpoints": []
    }))
    .unwrap();
    assert!(matches!(
        started,
        ExecutionEvent::ExecutionStarted { deadline: None, .. }
    ));
}

// Fork

fn original() -> ExecutionId {
    ExecutionId::from_uuid(Uuid::from_u128(42))
}

fn record_fork() -> ExecutionCommand {
    ExecutionCommand::RecordFork {
        forked_from: original(),
        from_node: node("report"),
    }
}

fn forked() -> ExecutionEvent {
    ExecutionEvent::ExecutionForked {
        forked_from: original(),
        from_node: node("report"),
    }
}

fn copy(id: &str, skipped: bool) -> ExecutionCommand {
    ExecutionCommand::CopyStep {
        node_id: node(id),
        attempt: if skipped { 0 } else { 2 },
        input: json!({"n": 2}),
        output: if skipped {
            Value::Null
        } else {
            json!({"copied": id})
        },
        skipped,
        original_sequence: 9,
        original_position: "0.9".into(),
    }
}

fn copied(id: &str, skipped: bool) -> ExecutionEvent {
    ExecutionEvent::StepCopied {
        node_id: node(id),
        attempt: if skipped { 0 } else { 2 },
        input: json!({"n": 2}),
        output: if skipped {
            Value::Null
        } else {
            json!({"copied": id})
        },
        skipped,
        original_sequence: 9,
        original_position: "0.9".into(),
    }
}

#[test]
fn a_fork_is_recorded_right_after_its_start() {
    ExecutionTest::with(())
        .given(vec![started()])
        .when(record_fork())
        .then_expect_events(vec![forked()]);
}

#[test]
fn a_fork_recorded_twice_or_after_a_step_is_rejected() {
    ExecutionTest::with(())
        .given(vec![started(), forked()])
        .when(record_fork())
        .then_expect_error(ExecutionError::ForkNotFirst);
    ExecutionTest::with(())
        .given(vec![started(), scheduled("fetch", 1)])
        .when(record_fork())
        .then_expect_error(ExecutionError::ForkNotFirst);
}

#[test]
fn a_fork_copies_succeeded_and_skipped_steps_which_count_as_done() {
    ExecutionTest::with(())
        .given(vec![started(), forked(), copied("fetch", false)])
        .when(copy("other", true))
        .then_expect_events(vec![copied("other", true)]);

    let mut state = Execution::default();
    for event in [
        started(),
        forked(),
        copied("fetch", false),
        copied("other", true),
    ] {
        state.apply(event);
    }
    assert_eq!(state.forked_from(), Some((&original(), &node("report"))));
    assert_eq!(state.step("fetch", 2), Some(StepStatus::Succeeded));
    assert_eq!(state.output("fetch"), Some(&json!({"copied": "fetch"})));
    assert!(state.is_skipped("other"));
    assert!(state.is_copied("fetch") && state.is_copied("other"));
    assert!(!state.is_copied("report"));
}

#[test]
fn steps_are_copied_into_a_fork_only_before_its_own_steps() {
    ExecutionTest::with(())
        .given(vec![started()])
        .when(copy("fetch", false))
        .then_expect_error(ExecutionError::NotCopying);
    ExecutionTest::with(())
        .given(vec![started(), forked(), scheduled("report", 1)])
        .when(copy("fetch", false))
        .then_expect_error(ExecutionError::NotCopying);
    ExecutionTest::with(())
        .given(vec![started(), forked(), copied("fetch", false)])
        .when(copy("fetch", false))
        .then_expect_error(ExecutionError::StepAlreadyScheduled {
            node_id: node("fetch"),
            attempt: 2,
        });
}

#[test]
fn a_copied_step_s_attempt_is_zero_exactly_when_it_was_skipped() {
    let mut bad = copy("fetch", true);
    if let ExecutionCommand::CopyStep { attempt, .. } = &mut bad {
        *attempt = 1;
    }
    ExecutionTest::with(())
        .given(vec![started(), forked()])
        .when(bad)
        .then_expect_error(ExecutionError::InvalidAttempt {
            node_id: node("fetch"),
            attempt: 1,
        });
}

#[test]
fn forks_are_refused_after_the_end_and_while_stopping() {
    ExecutionTest::with(())
        .given(vec![
            started(),
            forked(),
            ExecutionEvent::ExecutionStopRequested,
        ])
        .when(copy("fetch", false))
        .then_expect_error(ExecutionError::Stopping);
}

#[test]
fn fork_events_have_stable_types_and_version() {
    assert_eq!(forked().event_type(), "ExecutionForked");
    assert_eq!(copied("fetch", false).event_type(), "StepCopied");
    assert_eq!(forked().event_version(), "1.0");
}
