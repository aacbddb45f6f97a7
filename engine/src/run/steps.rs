//! Preparing and running one step: templates resolved (secrets unsealed at
//! this moment, in memory only), what is recorded masked, and the executor
//! of the node's type.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};
use tokio_util::sync::CancellationToken;
use toolhub_domain::common::{template_expressions, TemplateReference};
use toolhub_domain::definition::{Node, NodeId, NodeKind, WorkflowDefinition};
use toolhub_domain::execution::Execution;
use toolhub_domain::AggregateRoot;
use zeroize::Zeroizing;

use super::engine::{chrono_duration, Inner};
use super::lookup;
use crate::failure::StepFailure;
use crate::http::{send, HttpRequest};
use crate::mask::Masker;
use crate::mcp::McpTarget;
use crate::template::{resolve, resolve_str, Scope};

/// A step ready to record and run.
pub(crate) struct Prepared {
    /// The node.
    pub(crate) node_id: NodeId,
    /// The attempt.
    pub(crate) attempt: u32,
    /// The resolved input as it is recorded: masked.
    pub(crate) recorded_input: Value,
    /// For a delay: when it is due to finish.
    pub(crate) wake_at: Option<DateTime<Utc>>,
    /// For an instant step (a condition, a transform): its result, masked.
    pub(crate) instant: Option<Result<Value, StepFailure>>,
    /// For a step with side effects: what to run.
    action: Option<Action>,
    /// Hides what must not be recorded in the step's output and errors.
    masker: Masker,
}

/// A side effect to run.
enum Action {
    /// An HTTP request.
    Http {
        /// The request, secrets in plain text.
        request: HttpRequest,
        /// The longest it may take.
        timeout: Duration,
    },
    /// An MCP tool call.
    Mcp {
        /// The server, secrets substituted.
        target: McpTarget,
        /// The server's name, for messages.
        server: String,
        /// The tool.
        tool: String,
        /// Its arguments, secrets in plain text.
        arguments: Map<String, Value>,
        /// The longest it may take.
        timeout: Duration,
    },
}

/// What a step that ran here produced.
pub(crate) struct StepOutcome {
    /// The node.
    pub(crate) node_id: NodeId,
    /// The attempt.
    pub(crate) attempt: u32,
    /// Its output or failure, masked.
    pub(crate) result: Result<Value, StepFailure>,
}

/// The secret names the strings of `value` refer to.
fn secret_names(value: &Value, names: &mut BTreeSet<String>) {
    match value {
        Value::String(text) => {
            for template in template_expressions(text) {
                if let TemplateReference::Secret { name } = template.reference() {
                    names.insert(name.to_string());
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| secret_names(v, names)),
        Value::Object(members) => members.values().for_each(|v| secret_names(v, names)),
        _ => {}
    }
}

/// A template failure fails the step for good (the definition or the data
/// is wrong, not the moment).
fn template_failure(error: impl std::fmt::Display) -> StepFailure {
    StepFailure::permanent(error.to_string())
}

/// Prepares attempt `attempt` of `node`: resolves its templates against the
/// execution's input and outputs so far, unseals the secrets it names, and
/// runs it at once when it has no side effects.
pub(crate) async fn prepare_step(
    inner: &Inner,
    state: &Execution,
    definition: &WorkflowDefinition,
    node: &Node,
    attempt: u32,
) -> Result<Prepared, StepFailure> {
    let tenant = state
        .tenant()
        .cloned()
        .ok_or_else(|| StepFailure::permanent("the execution has no tenant"))?;
    let params = node.kind().params();
    let mut names = BTreeSet::new();
    secret_names(&params, &mut names);
    let secrets = lookup::unseal(inner, &tenant, &names).await?;
    let outputs = state.outputs();
    let scope = Scope {
        input: state.input(),
        nodes: outputs,
        secrets: &secrets,
    };
    let mut used: BTreeSet<String> = BTreeSet::new();
    let mut extra_secrets: Vec<Zeroizing<String>> = Vec::new();
    let mut prepared = Prepared {
        node_id: node.id().clone(),
        attempt,
        recorded_input: Value::Null,
        wake_at: None,
        instant: None,
        action: None,
        masker: Masker::new(std::iter::empty(), definition.masking()),
    };
    let masker = |used: &BTreeSet<String>, extra: &[Zeroizing<String>]| {
        let values = secrets
            .values_of(used)
            .chain(extra.iter().map(|v| v.as_str()));
        Masker::new(values, definition.masking())
    };
    match node.kind() {
        NodeKind::Transform { template } => {
            let resolved = resolve(template, &scope).map_err(template_failure)?;
            used.extend(resolved.secrets_used);
            prepared.masker = masker(&used, &extra_secrets);
            let mut output = resolved.value;
            prepared.masker.mask(&mut output);
            prepared.recorded_input = json!({"template": output.clone()});
            prepared.instant = Some(Ok(output));
        }
        NodeKind::Condition { expression } => {
            prepared.recorded_input = json!({"expression": expression});
            prepared.instant = Some(
                crate::expr::evaluate_condition(expression, state.input(), outputs)
                    .map(|result| json!({ "result": result }))
                    .map_err(StepFailure::from),
            );
        }
        NodeKind::Delay { milliseconds } => {
            prepared.recorded_input = json!({"milliseconds": milliseconds});
            prepared.wake_at =
                Some(Utc::now() + chrono_duration(Duration::from_millis(*milliseconds)));
        }
        NodeKind::Http {
            method,
            url,
            headers,
            body,
        } => {
            let url = resolve_str(url, &scope).map_err(template_failure)?;
            used.extend(url.secrets_used);
            let mut resolved_headers = BTreeMap::new();
            for (name, value) in headers {
                let value = resolve_str(value, &scope).map_err(template_failure)?;
                used.extend(value.secrets_used);
                resolved_headers.insert(name.clone(), value.value);
            }
            let body = match body {
                Some(body) => {
                    let body = resolve(body, &scope).map_err(template_failure)?;
                    used.extend(body.secrets_used);
                    Some(body.value)
                }
                None => None,
            };
            prepared.masker = masker(&used, &extra_secrets);
            let mut recorded = json!({
                "method": method.as_str(),
                "url": url.value,
                "headers": resolved_headers,
                "body": body,
            });
            prepared.masker.mask(&mut recorded);
            redact_literal_credentials(&mut recorded);
            prepared.recorded_input = recorded;
            let timeout = node
                .policy()
                .timeout_ms
                .map(Duration::from_millis)
                .unwrap_or(inner.config.http.timeout);
            prepared.action = Some(Action::Http {
                request: HttpRequest {
                    method: *method,
                    url: url.value,
                    headers: resolved_headers,
                    body,
                },
                timeout,
            });
        }
        NodeKind::McpTool {
            server,
            tool,
            arguments,
        } => {
            let (server_id, server_state) = lookup::server(inner, &tenant, server).await?;
            let (target, transport_secrets) =
                lookup::target(inner, &tenant, server_id, &server_state).await?;
            extra_secrets = transport_secrets;
            let resolved =
                resolve(&Value::Object(arguments.clone()), &scope).map_err(template_failure)?;
            used.extend(resolved.secrets_used);
            let Value::Object(arguments) = resolved.value else {
                return Err(StepFailure::permanent(
                    "the tool's arguments are not an object",
                ));
            };
            prepared.masker = masker(&used, &extra_secrets);
            let mut recorded = json!({
                "server": server,
                "tool": tool,
                "arguments": arguments.clone(),
            });
            prepared.masker.mask(&mut recorded);
            redact_literal_credentials(&mut recorded);
            prepared.recorded_input = recorded;
            let timeout = node
                .policy()
                .timeout_ms
                .map(Duration::from_millis)
                .unwrap_or(inner.config.mcp_call_timeout);
            prepared.action = Some(Action::Mcp {
                target,
                server: server.clone(),
                tool: tool.clone(),
                arguments,
                timeout,
            });
        }
    }
    // An instant step's failure message is masked like any output.
    if let Some(Err(failure)) = &mut prepared.instant {
        failure.message = prepared.masker.mask_text(&failure.message);
    }
    Ok(prepared)
}

impl Prepared {
    /// Runs the step's side effect until it ends, its timeout passes or it
    /// is cancelled, and masks what it produced.
    pub(crate) async fn run(self, inner: &Inner, cancel: CancellationToken) -> StepOutcome {
        let result = match self.action {
            None => Err(StepFailure::permanent("the step has nothing to run")),
            Some(Action::Http { request, timeout }) => {
                let mut limits = inner.config.http;
                limits.timeout = timeout;
                tokio::select! {
                    result = tokio::time::timeout(timeout, send(&inner.http, request, &limits)) => {
                        result.unwrap_or_else(|_| Err(StepFailure::retryable(format!(
                            "the request took longer than its timeout of {} ms", timeout.as_millis()
                        ))))
                    }
                    _ = cancel.cancelled() => Err(StepFailure::permanent("cancelled")),
                }
            }
            Some(Action::Mcp {
                target,
                server,
                tool,
                arguments,
                timeout,
            }) => {
                lookup::call_tool(inner, &target, &server, &tool, arguments, timeout, cancel).await
            }
        };
        let masker = &self.masker;
        let result = match result {
            Ok(mut output) => {
                masker.mask(&mut output);
                Ok(output)
            }
            Err(mut failure) => {
                failure.message = masker.mask_text(&failure.message);
                Err(failure)
            }
        };
        StepOutcome {
            node_id: self.node_id,
            attempt: self.attempt,
            result,
        }
    }
}

/// Takes the literal credentials a user typed into an `http` node (header
/// values named like credentials, a URL's userinfo and credential query
/// parameters) out of what is recorded of its input: the request is sent
/// as written, but the log keeps no copy. Values that came from secrets
/// are masked already.
fn redact_literal_credentials(recorded: &mut Value) {
    use toolhub_domain::credentials::{names_a_credential, redact_url, REDACTED};
    if let Some(Value::Object(headers)) = recorded.get_mut("headers") {
        for (name, value) in headers.iter_mut() {
            if names_a_credential(name) {
                *value = Value::String(REDACTED.into());
            }
        }
    }
    if let Some(Value::String(url)) = recorded.get_mut("url") {
        if let std::borrow::Cow::Owned(redacted) = redact_url(url) {
            *url = redacted;
        }
    }
}
