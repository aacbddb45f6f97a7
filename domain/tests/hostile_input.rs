//! Property tests over every command a caller can send: arbitrary strings and
//! JSON never panic, and each command either succeeds or is refused with an
//! error the API answers as `VALIDATION`; a string holding NUL is always
//! refused.

use std::collections::BTreeMap;

use cqrs_es::test::TestFramework;
use proptest::prelude::*;
use serde_json::{json, Value};
use toolhub_domain::definition::WorkflowDefinition;
use toolhub_domain::execution::{Execution, ExecutionCommand, ExecutionError, ExecutionEvent};
use toolhub_domain::mcp_server::{McpServer, McpServerCommand, McpServerError, Transport};
use toolhub_domain::secret::{SealedValue, Secret, SecretCommand, SecretError};
use toolhub_domain::workflow::{Trigger, Workflow, WorkflowCommand, WorkflowError, WorkflowEvent};
use toolhub_domain::{TenantId, WorkflowId};

fn tenant() -> TenantId {
    TenantId::parse("acme").expect("a valid tenant")
}

/// Strings that favour what breaks storage and parsers: control characters,
/// NUL, quotes, braces, and anything else.
fn hostile_string() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[a-z \\x00-\\x1f\\x7f{}\"'\\\\]{0,12}",
        Just("a\u{0}b".to_string()),
    ]
}

fn hostile_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<f64>().prop_map(|n| json!(n)),
        hostile_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 24, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map(hostile_string(), inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A definition that is valid but for what the strategy puts in its strings:
/// a node's name, a transform's template, an http node's body.
fn hostile_definition() -> impl Strategy<Value = Value> {
    prop_oneof![
        hostile_json(),
        (hostile_string(), hostile_json(), hostile_json()).prop_map(|(name, template, body)| {
            json!({"nodes": [
                {"id": "t", "type": "transform", "name": name, "params": {"template": template}},
                {"id": "h", "type": "http", "params": {"method": "POST", "url": "https://example.com", "body": body}}
            ], "edges": [{"from": "t", "to": "h"}]})
        }),
    ]
}

fn holds_nul(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(holds_nul),
        Value::Object(members) => members
            .iter()
            .any(|(k, v)| k.contains('\0') || holds_nul(v)),
        _ => false,
    }
}

/// The workflow errors the API answers as `VALIDATION`.
fn workflow_validation(error: &WorkflowError) -> bool {
    matches!(
        error,
        WorkflowError::InvalidName { .. }
            | WorkflowError::InvalidDescription
            | WorkflowError::InvalidComment
            | WorkflowError::InvalidTrigger { .. }
            | WorkflowError::InvalidDefinition(_)
            | WorkflowError::InvalidText(_)
    )
}

fn workflow(given: Vec<WorkflowEvent>, command: WorkflowCommand) -> Result<(), WorkflowError> {
    TestFramework::<Workflow>::with(())
        .given(given)
        .when(command)
        .inspect_result()
        .map(|_| ())
}

fn created() -> WorkflowEvent {
    WorkflowEvent::WorkflowCreated {
        tenant: tenant(),
        name: "w".into(),
        description: String::new(),
        definition: WorkflowDefinition::parse(
            &json!({"nodes": [{"id": "d", "type": "delay", "params": {"milliseconds": 1}}]}),
        )
        .expect("valid"),
    }
}

fn transport() -> impl Strategy<Value = Transport> {
    prop_oneof![
        (
            hostile_string(),
            prop::collection::vec(hostile_string(), 0..3),
            prop::collection::btree_map("[A-Z_]{1,6}|.{0,6}", hostile_string(), 0..3),
        )
            .prop_map(|(command, args, env)| Transport::Stdio { command, args, env }),
        (
            prop_oneof![
                hostile_string(),
                hostile_string().prop_map(|s| format!("https://h/{s}"))
            ],
            prop::collection::btree_map("[A-Za-z-]{1,6}|.{0,6}", hostile_string(), 0..3),
        )
            .prop_map(|(url, headers)| Transport::StreamableHttp { url, headers }),
    ]
}

fn transport_holds_nul(transport: &Transport) -> bool {
    match transport {
        Transport::Stdio { command, args, env } => {
            command.contains('\0')
                || args.iter().any(|a| a.contains('\0'))
                || env
                    .iter()
                    .any(|(k, v)| k.contains('\0') || v.contains('\0'))
        }
        Transport::StreamableHttp { url, headers } => {
            url.contains('\0')
                || headers
                    .iter()
                    .any(|(k, v)| k.contains('\0') || v.contains('\0'))
        }
    }
}

fn mcp_validation(error: &McpServerError) -> bool {
    matches!(
        error,
        McpServerError::InvalidName
            | McpServerError::InvalidTransport { .. }
            | McpServerError::InvalidText(_)
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn creating_a_workflow_from_any_input_succeeds_or_is_a_validation_error(
        name in hostile_string(),
        description in hostile_string(),
        definition in hostile_definition(),
    ) {
        let nul = name.contains('\0') || description.contains('\0') || holds_nul(&definition);
        let result = workflow(vec![], WorkflowCommand::Create {
            tenant: tenant(), name, description, definition,
        });
        match result {
            Ok(()) => prop_assert!(!nul, "a NUL was accepted"),
            Err(e) => prop_assert!(workflow_validation(&e), "{e:?}"),
        }
    }

    #[test]
    fn changing_a_workflow_with_any_input_succeeds_or_is_a_validation_error(
        name in hostile_string(),
        comment in proptest::option::of(hostile_string()),
        definition in hostile_definition(),
        schedule in hostile_string(),
        key in hostile_string(),
    ) {
        let commands = vec![
            (name.contains('\0'), WorkflowCommand::Rename { name }),
            (
                comment.as_deref().is_some_and(|c| c.contains('\0')) || holds_nul(&definition),
                WorkflowCommand::UpdateDefinition { definition, comment: comment.clone() },
            ),
            (
                comment.as_deref().is_some_and(|c| c.contains('\0')),
                WorkflowCommand::Revert { to_version: 1, comment },
            ),
            (
                schedule.contains('\0') || key.contains('\0'),
                WorkflowCommand::SetTriggers {
                    triggers: vec![
                        Trigger::Cron {
                            schedule,
                            timezone: Some("Europe/Paris".into()),
                            input: Some(serde_json::json!({ "key": key.clone() })),
                            missed: Default::default(),
                        },
                        Trigger::Webhook { key },
                    ],
                },
            ),
        ];
        for (nul, command) in commands {
            match workflow(vec![created()], command) {
                Ok(()) => prop_assert!(!nul, "a NUL was accepted"),
                Err(WorkflowError::Unchanged) => {}
                Err(e) => prop_assert!(workflow_validation(&e), "{e:?}"),
            }
        }
    }

    #[test]
    fn secret_commands_with_any_text_succeed_or_are_validation_errors(
        name in hostile_string(),
        description in hostile_string(),
    ) {
        let nul = name.contains('\0') || description.contains('\0');
        let result = TestFramework::<Secret>::with(())
            .given_no_previous_events()
            .when(SecretCommand::Create {
                tenant: tenant(),
                name,
                description: description.clone(),
                value: SealedValue::new("n", "c"),
            })
            .inspect_result();
        match result {
            Ok(_) => prop_assert!(!nul, "a NUL was accepted"),
            Err(e) => prop_assert!(
                matches!(e, SecretError::InvalidName | SecretError::InvalidDescription | SecretError::InvalidText(_)),
                "{e:?}"
            ),
        }
        let created = TestFramework::<Secret>::with(())
            .given_no_previous_events()
            .when(SecretCommand::Create {
                tenant: tenant(),
                name: "S".into(),
                description: String::new(),
                value: SealedValue::new("n", "c"),
            })
            .inspect_result()
            .expect("a valid secret");
        let result = TestFramework::<Secret>::with(())
            .given(created)
            .when(SecretCommand::Describe { description: description.clone() })
            .inspect_result();
        match result {
            Ok(_) => prop_assert!(!description.contains('\0'), "a NUL was accepted"),
            Err(e) => prop_assert!(
                matches!(e, SecretError::InvalidDescription | SecretError::InvalidText(_)),
                "{e:?}"
            ),
        }
    }

    #[test]
    fn registering_an_mcp_server_with_any_transport_succeeds_or_is_a_validation_error(
        name in prop_oneof![Just("srv".to_string()), hostile_string()],
        transport in transport(),
    ) {
        let nul = name.contains('\0') || transport_holds_nul(&transport);
        let register = McpServerCommand::Register { tenant: tenant(), name, transport: transport.clone() };
        let result = TestFramework::<McpServer>::with(())
            .given_no_previous_events()
            .when(register)
            .inspect_result();
        match result {
            Ok(_) => prop_assert!(!nul, "a NUL was accepted"),
            Err(e) => prop_assert!(mcp_validation(&e), "{e:?}"),
        }
        let registered = TestFramework::<McpServer>::with(())
            .given_no_previous_events()
            .when(McpServerCommand::Register {
                tenant: tenant(),
                name: "srv".into(),
                transport: Transport::Stdio { command: "true".into(), args: vec![], env: BTreeMap::new() },
            })
            .inspect_result()
            .expect("a valid server");
        let result = TestFramework::<McpServer>::with(())
            .given(registered)
            .when(McpServerCommand::UpdateConfig { transport: transport.clone() })
            .inspect_result();
        match result {
            Ok(_) => prop_assert!(!transport_holds_nul(&transport), "a NUL was accepted"),
            Err(e) => prop_assert!(mcp_validation(&e), "{e:?}"),
        }
    }

    #[test]
    fn starting_and_cancelling_an_execution_with_any_input_succeeds_or_is_a_validation_error(
        input in hostile_json(),
        trigger in prop_oneof![Just("manual".to_string()), hostile_string()],
        reason in hostile_string(),
    ) {
        let start = ExecutionCommand::Start {
            tenant: tenant(),
            workflow_id: WorkflowId::new(),
            workflow_version: 1,
            input: input.clone(),
            trigger: trigger.clone(),
            source: None,
            breakpoints: vec![],
            deadline: None,
        };
        let result = TestFramework::<Execution>::with(())
            .given_no_previous_events()
            .when(start)
            .inspect_result();
        match result {
            Ok(_) => prop_assert!(!holds_nul(&input) && !trigger.contains('\0'), "a NUL was accepted"),
            Err(e) => prop_assert!(
                matches!(e, ExecutionError::InvalidTrigger { .. } | ExecutionError::InvalidText(_)),
                "{e:?}"
            ),
        }
        let started = ExecutionEvent::ExecutionStarted {
            tenant: tenant(),
            workflow_id: WorkflowId::new(),
            workflow_version: 1,
            input: Value::Null,
            trigger: "manual".into(),
            source: None,
            breakpoints: vec![],
            deadline: None,
        };
        let result = TestFramework::<Execution>::with(())
            .given(vec![started])
            .when(ExecutionCommand::Cancel { reason: reason.clone() })
            .inspect_result();
        match result {
            Ok(_) => prop_assert!(!reason.contains('\0'), "a NUL was accepted"),
            Err(e) => prop_assert!(matches!(e, ExecutionError::InvalidText(_)), "{e:?}"),
        }
    }
}

#[test]
fn a_nul_in_a_workflow_description_names_the_description() {
    let result = workflow(
        vec![],
        WorkflowCommand::Create {
            tenant: tenant(),
            name: "w".into(),
            description: "a\u{0}b".into(),
            definition: json!({"nodes": [{"id": "d", "type": "delay", "params": {"milliseconds": 1}}]}),
        },
    );
    match result {
        Err(WorkflowError::InvalidText(e)) => assert_eq!(e.field, "description"),
        other => panic!("expected a text error on the description, got {other:?}"),
    }
}

#[test]
fn a_nul_deep_in_node_parameters_names_its_path() {
    let result = workflow(
        vec![],
        WorkflowCommand::Create {
            tenant: tenant(),
            name: "w".into(),
            description: String::new(),
            definition: json!({"nodes": [{"id": "t", "type": "transform",
                "params": {"template": {"a": [1, {"b": "x\u{0}"}]}}}]}),
        },
    );
    match result {
        Err(WorkflowError::InvalidDefinition(
            toolhub_domain::definition::DefinitionError::InvalidText(e),
        )) => assert_eq!(e.field, "definition.nodes[0].params.template.a[1].b"),
        other => panic!("expected a text error in the definition, got {other:?}"),
    }
}

#[test]
fn a_line_break_in_an_mcp_header_value_names_the_header() {
    let result = TestFramework::<McpServer>::with(())
        .given_no_previous_events()
        .when(McpServerCommand::Register {
            tenant: tenant(),
            name: "srv".into(),
            transport: Transport::StreamableHttp {
                url: "https://example.com/mcp".into(),
                headers: BTreeMap::from([("X-Api".to_string(), "a\r\nInjected: 1".to_string())]),
            },
        })
        .inspect_result();
    match result {
        Err(McpServerError::InvalidText(e)) => assert_eq!(e.field, "transport.headers.X-Api"),
        other => panic!("expected a text error on the header, got {other:?}"),
    }
}
