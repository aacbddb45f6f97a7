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
use crate::expr::{Cel, Conditions};
use crate::failure::StepFailure;
use crate::http::{send, HttpRequest};
use crate::mask::Masker;
use crate::mcp::McpTarget;
use crate::template::{resolve, resolve_str, Scope, Secrets};

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

/// What a step's templates resolve to, decided from the execution's input
/// and the outputs so far alone: what is recorded of its input, an instant
/// step's result, and for a step with side effects what it would send.
/// Shared by the live engine ([`prepare_step`]) and by replay
/// ([`crate::replay`]), so that both decide with one piece of code.
pub(crate) struct Resolution {
    /// The resolved input as it is recorded: masked.
    pub(crate) recorded_input: Value,
    /// For an instant step (a condition, a transform): its result, masked.
    pub(crate) instant: Option<Result<Value, StepFailure>>,
    /// Hides what must not be recorded in the step's output and errors.
    pub(crate) masker: Masker,
    /// For a step with side effects: what it sends, secrets in plain text.
    pub(crate) sends: Option<Sends>,
}

/// What a step with side effects sends, secrets in plain text.
pub(crate) enum Sends {
    /// An HTTP request.
    Http(HttpRequest),
    /// An MCP tool call's arguments.
    Mcp(Map<String, Value>),
}

/// Resolves the templates of `node` against `input` and `outputs` with the
/// `secrets` given, masks what is recorded with the values of the secrets
/// used and `transport_secrets` (an MCP server's own), and evaluates an
/// instant step with `conditions`. No I/O: the caller unseals (the engine)
/// or stands the mask in for every secret (replay).
pub(crate) fn resolve_step(
    node: &Node,
    definition: &WorkflowDefinition,
    input: &Value,
    outputs: &BTreeMap<NodeId, Value>,
    secrets: &Secrets,
    transport_secrets: &[Zeroizing<String>],
    conditions: &dyn Conditions,
) -> Result<Resolution, StepFailure> {
    let scope = Scope {
        input,
        nodes: outputs,
        secrets,
    };
    let mut used: BTreeSet<String> = BTreeSet::new();
    let masker = |used: &BTreeSet<String>| {
        let values = secrets
            .values_of(used)
            .chain(transport_secrets.iter().map(|v| v.as_str()));
        Masker::new(values, definition.masking())
    };
    let mut resolution = Resolution {
        recorded_input: Value::Null,
        instant: None,
        masker: Masker::new(std::iter::empty(), definition.masking()),
        sends: None,
    };
    match node.kind() {
        NodeKind::Transform { template } => {
            let resolved = resolve(template, &scope).map_err(template_failure)?;
            used.extend(resolved.secrets_used);
            resolution.masker = masker(&used);
            let mut output = resolved.value;
            resolution.masker.mask(&mut output);
            resolution.recorded_input = json!({"template": output.clone()});
            resolution.instant = Some(Ok(output));
        }
        NodeKind::Condition { expression } => {
            resolution.recorded_input = json!({"expression": expression});
            resolution.instant = Some(
                conditions
                    .evaluate(expression, input, outputs)
                    .map(|result| json!({ "result": result }))
                    .map_err(StepFailure::from),
            );
        }
        NodeKind::Delay { milliseconds } => {
            resolution.recorded_input = json!({"milliseconds": milliseconds});
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
            resolution.masker = masker(&used);
            let mut recorded = json!({
                "method": method.as_str(),
                "url": url.value,
                "headers": resolved_headers,
                "body": body,
            });
            resolution.masker.mask(&mut recorded);
            redact_literal_credentials(&mut recorded);
            resolution.recorded_input = recorded;
            resolution.sends = Some(Sends::Http(HttpRequest {
                method: *method,
                url: url.value,
                headers: resolved_headers,
                body,
            }));
        }
        NodeKind::McpTool {
            server,
            tool,
            arguments,
        } => {
            let resolved =
                resolve(&Value::Object(arguments.clone()), &scope).map_err(template_failure)?;
            used.extend(resolved.secrets_used);
            let Value::Object(arguments) = resolved.value else {
                return Err(StepFailure::permanent(
                    "the tool's arguments are not an object",
                ));
            };
            resolution.masker = masker(&used);
            let mut recorded = json!({
                "server": server,
                "tool": tool,
                "arguments": arguments.clone(),
            });
            resolution.masker.mask(&mut recorded);
            redact_literal_credentials(&mut recorded);
            resolution.recorded_input = recorded;
            resolution.sends = Some(Sends::Mcp(arguments));
        }
    }
    // An instant step's failure message is masked like any output.
    if let Some(Err(failure)) = &mut resolution.instant {
        failure.message = resolution.masker.mask_text(&failure.message);
    }
    Ok(resolution)
}

/// The names of the secrets a node's parameters refer to.
pub(crate) fn node_secret_names(node: &Node) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    secret_names(&node.kind().params(), &mut names);
    names
}

/// Prepares attempt `attempt` of `node`: unseals the secrets it names and
/// finds its MCP server, resolves its templates against the execution's
/// input and outputs so far ([`resolve_step`]), and runs it at once when it
/// has no side effects.
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
    let names = node_secret_names(node);
    let secrets = lookup::unseal(inner, &tenant, &names).await?;
    let mut target = None;
    let mut transport_secrets: Vec<Zeroizing<String>> = Vec::new();
    if let NodeKind::McpTool { server, .. } = node.kind() {
        let (server_id, server_state) = lookup::server(inner, &tenant, server).await?;
        let (found, extra) = lookup::target(inner, &tenant, server_id, &server_state).await?;
        target = Some(found);
        transport_secrets = extra;
    }
    let resolution = resolve_step(
        node,
        definition,
        state.input(),
        state.outputs(),
        &secrets,
        &transport_secrets,
        &Cel,
    )?;
    let mut prepared = Prepared {
        node_id: node.id().clone(),
        attempt,
        recorded_input: resolution.recorded_input,
        wake_at: None,
        instant: resolution.instant,
        action: None,
        masker: resolution.masker,
    };
    match (node.kind(), resolution.sends, target) {
        (NodeKind::Delay { milliseconds }, _, _) => {
            prepared.wake_at =
                Some(Utc::now() + chrono_duration(Duration::from_millis(*milliseconds)));
        }
        (NodeKind::Http { .. }, Some(Sends::Http(request)), _) => {
            let timeout = node
                .policy()
                .timeout_ms
                .map(Duration::from_millis)
                .unwrap_or(inner.config.http.timeout);
            prepared.action = Some(Action::Http { request, timeout });
        }
        (NodeKind::McpTool { server, tool, .. }, Some(Sends::Mcp(arguments)), Some(target)) => {
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
        _ => {}
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
