//! The MCP server aggregate: a Model Context Protocol server a tenant has
//! registered so that `mcp_tool` nodes can call its tools.
//!
//! A server is reached either by spawning a local process (stdio) or over
//! Streamable HTTP. Its configuration may reference secrets as
//! `{{secrets.NAME}}` in environment variables and headers; the engine
//! substitutes them at connection time, so no secret value is ever stored
//! here. The engine also reports what it learns from the server (its tools,
//! its health) through commands, which keeps that knowledge in the log.
//!
//! Server names are unique per tenant (workflows refer to servers by name);
//! uniqueness spans aggregates, so the layer that maps names to
//! [`crate::McpServerId`]s enforces it, not this aggregate.

use crate::common::{AggregateRoot, CommandTraits, NameChange, Role, TenantId};
use crate::secret::{is_valid_secret_name, secret_references_in};
use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

/// The longest server name, in characters.
pub const MAX_MCP_SERVER_NAME_LEN: usize = 64;

/// The longest command, argument, URL, or environment or header value, in
/// characters; far beyond any real configuration, it bounds event sizes.
pub const MAX_TRANSPORT_STRING_LEN: usize = 4_096;

/// The most arguments, environment variables or headers a transport may have.
pub const MAX_TRANSPORT_ENTRIES: usize = 256;

/// The longest health detail kept, in characters. Longer details (usually
/// error messages) are truncated rather than refused, so that a health check
/// is never lost because of its wording.
pub const MAX_HEALTH_DETAIL_LEN: usize = 1_000;

/// True when `name` matches `^[a-z0-9][a-z0-9_-]{0,63}$`.
///
/// Workflow definitions apply the same rule to the `server` parameter of
/// `mcp_tool` nodes.
pub fn is_valid_mcp_server_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    let lower_or_digit = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    match bytes.first() {
        Some(first) if lower_or_digit(first) => {
            bytes.len() <= MAX_MCP_SERVER_NAME_LEN
                && bytes[1..]
                    .iter()
                    .all(|b| lower_or_digit(b) || *b == b'_' || *b == b'-')
        }
        _ => false,
    }
}

/// How the engine reaches an MCP server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Transport {
    /// Spawns a local process and speaks MCP over its stdin and stdout.
    Stdio {
        /// The program to run.
        command: String,
        /// Its arguments, passed as they are (no shell).
        #[serde(default)]
        args: Vec<String>,
        /// Extra environment variables; values may contain `{{secrets.NAME}}`.
        #[serde(default)]
        env: BTreeMap<String, String>,
    },
    /// Speaks MCP's Streamable HTTP transport to a URL.
    StreamableHttp {
        /// The endpoint, starting with `http://` or `https://`.
        url: String,
        /// Extra request headers; values may contain `{{secrets.NAME}}`.
        #[serde(default)]
        headers: BTreeMap<String, String>,
    },
}

impl Transport {
    /// Checks the configuration, returning why it is unusable.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            Self::Stdio { command, args, env } => {
                if command.trim().is_empty() {
                    return Err("the command must not be empty".into());
                }
                check_text("the command", command)?;
                if args.len() > MAX_TRANSPORT_ENTRIES || env.len() > MAX_TRANSPORT_ENTRIES {
                    return Err(format!(
                        "at most {MAX_TRANSPORT_ENTRIES} arguments and {MAX_TRANSPORT_ENTRIES} environment variables are allowed"
                    ));
                }
                for arg in args {
                    check_text("an argument", arg)?;
                }
                for (key, value) in env {
                    if !is_valid_env_name(key) {
                        return Err(format!(
                            "`{key}` is not an environment variable name (letters, digits and '_', not starting with a digit)"
                        ));
                    }
                    check_text(&format!("the value of `{key}`"), value)?;
                }
            }
            Self::StreamableHttp { url, headers } => {
                check_text("the URL", url)?;
                let rest = url
                    .strip_prefix("https://")
                    .or_else(|| url.strip_prefix("http://"))
                    .ok_or("the URL must start with http:// or https://")?;
                if rest.is_empty() || rest.starts_with('/') {
                    return Err("the URL must name a host".into());
                }
                if url.chars().any(char::is_whitespace) {
                    return Err("the URL must not contain whitespace".into());
                }
                if headers.len() > MAX_TRANSPORT_ENTRIES {
                    return Err(format!(
                        "at most {MAX_TRANSPORT_ENTRIES} headers are allowed"
                    ));
                }
                for (name, value) in headers {
                    if !is_valid_header_name(name) {
                        return Err(format!("`{name}` is not a valid HTTP header name"));
                    }
                    check_text(&format!("the value of header `{name}`"), value)?;
                }
            }
        }
        for name in self.secret_references() {
            if !is_valid_secret_name(&name) {
                return Err(format!(
                    "`{{{{secrets.{name}}}}}` does not name a valid secret (uppercase letters, digits and '_')"
                ));
            }
        }
        Ok(())
    }

    /// Checks every string of the configuration with the shared rules of
    /// [`crate::text`], naming the field (`transport.args[1]`,
    /// `transport.env.TOKEN`): the command, the URL and every key are names
    /// (no control character); arguments and values are single lines (tab
    /// only), since a line break in a header or an argument is an injection.
    pub fn check_text(&self) -> Result<(), crate::text::InvalidText> {
        use crate::text::{check_line, check_name, member_path};
        match self {
            Self::Stdio { command, args, env } => {
                check_name("transport.command", command)?;
                for (index, arg) in args.iter().enumerate() {
                    check_line(&format!("transport.args[{index}]"), arg)?;
                }
                for (key, value) in env {
                    let field = member_path("transport.env", key);
                    check_name(&field, key)?;
                    check_line(&field, value)?;
                }
            }
            Self::StreamableHttp { url, headers } => {
                check_name("transport.url", url)?;
                for (name, value) in headers {
                    let field = member_path("transport.headers", name);
                    check_name(&field, name)?;
                    check_line(&field, value)?;
                }
            }
        }
        Ok(())
    }

    /// Every secret name referenced anywhere in the configuration.
    pub fn secret_references(&self) -> BTreeSet<String> {
        let texts: Vec<&String> = match self {
            Self::Stdio { command, args, env } => std::iter::once(command)
                .chain(args)
                .chain(env.values())
                .collect(),
            Self::StreamableHttp { url, headers } => {
                std::iter::once(url).chain(headers.values()).collect()
            }
        };
        texts
            .into_iter()
            .flat_map(|text| secret_references_in(text))
            .map(str::to_string)
            .collect()
    }
}

/// Refuses text that is too long or holds control characters other than tab;
/// such text cannot be passed to a process or put in a header safely.
fn check_text(what: &str, text: &str) -> Result<(), String> {
    if text.chars().count() > MAX_TRANSPORT_STRING_LEN {
        return Err(format!(
            "{what} is longer than {MAX_TRANSPORT_STRING_LEN} characters"
        ));
    }
    if text.chars().any(|c| c.is_control() && c != '\t') {
        return Err(format!("{what} must not contain control characters"));
    }
    Ok(())
}

fn is_valid_env_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// An RFC 9110 token.
fn is_valid_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A tool the server advertised in its `tools/list` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolInfo {
    /// The name `mcp_tool` nodes use in their `tool` parameter.
    pub name: String,
    /// The server's description, shown to people building workflows.
    #[serde(default)]
    pub description: Option<String>,
    /// The JSON Schema of the tool's arguments, used by the UI to build forms.
    pub input_schema: Value,
    /// The server's `readOnlyHint`: calling it changes nothing. A hint, not a
    /// guarantee: it only decides whether an interrupted call is retried.
    #[serde(default, skip_serializing_if = "is_false")]
    pub read_only: bool,
    /// The server's `idempotentHint`: calling it twice with the same
    /// arguments does no more than once. A hint, like `read_only`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub idempotent: bool,
}

/// For `skip_serializing_if`: hints that are off are not written.
fn is_false(b: &bool) -> bool {
    !*b
}

/// The outcome of the latest health check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// True when the server answered as expected.
    pub healthy: bool,
    /// How long the check took.
    pub latency_ms: u64,
    /// What went wrong, or other detail worth showing.
    pub detail: Option<String>,
}

/// The state of one MCP server, folded from its events.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct McpServer {
    /// The owner; `None` until [`McpServerEvent::McpServerRegistered`].
    tenant: Option<TenantId>,
    /// The name `mcp_tool` nodes refer to. It never changes, because
    /// definitions refer to it.
    name: String,
    /// How to reach the server.
    transport: Option<Transport>,
    /// The tools found at the latest discovery.
    tools: Vec<ToolInfo>,
    /// False while disabled: the engine refuses to call a disabled server.
    enabled: bool,
    /// True once deregistered: nothing may change any more.
    deregistered: bool,
    /// The latest health check, if any.
    health: Option<Health>,
}

impl McpServer {
    /// True once the server has been registered.
    pub fn exists(&self) -> bool {
        self.tenant.is_some()
    }

    /// The server's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How to reach the server, once registered.
    pub fn transport(&self) -> Option<&Transport> {
        self.transport.as_ref()
    }

    /// The tools found at the latest discovery.
    pub fn tools(&self) -> &[ToolInfo] {
        &self.tools
    }

    /// True when the engine may call the server.
    pub fn is_enabled(&self) -> bool {
        self.enabled && !self.deregistered
    }

    /// True once deregistered.
    pub fn is_deregistered(&self) -> bool {
        self.deregistered
    }

    /// The latest health check, if any.
    pub fn health(&self) -> Option<&Health> {
        self.health.as_ref()
    }
}

/// What a caller may ask of an MCP server. Every command needs the Editor role.
#[derive(Debug, Clone, PartialEq)]
pub enum McpServerCommand {
    /// Registers a new server, enabled.
    Register {
        /// The owner.
        tenant: TenantId,
        /// The name, `^[a-z0-9][a-z0-9_-]{0,63}$`.
        name: String,
        /// How to reach it.
        transport: Transport,
    },
    /// Replaces how the server is reached.
    UpdateConfig {
        /// The new transport.
        transport: Transport,
    },
    /// Records the tools the server advertises, replacing the previous list.
    DiscoverTools {
        /// The tools, with unique names.
        tools: Vec<ToolInfo>,
    },
    /// Records the outcome of a health check.
    RecordHealth {
        /// True when the server answered as expected.
        healthy: bool,
        /// How long the check took.
        latency_ms: u64,
        /// What went wrong, or other detail; truncated to 1,000 characters.
        detail: Option<String>,
    },
    /// Allows the engine to call the server again.
    Enable,
    /// Stops the engine from calling the server.
    Disable,
    /// Removes the server for good.
    Deregister,
}

impl CommandTraits for McpServerCommand {
    fn is_creation(&self) -> bool {
        matches!(self, Self::Register { .. })
    }

    fn is_retry_safe(&self) -> bool {
        // These record facts or set a flag: applying them on top of a
        // concurrent change is what the caller meant.
        matches!(
            self,
            Self::RecordHealth { .. } | Self::DiscoverTools { .. } | Self::Enable | Self::Disable
        )
    }

    fn required_role(&self) -> Role {
        Role::Editor
    }
}

/// What happened to an MCP server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum McpServerEvent {
    /// The server was registered, enabled (emitted by
    /// [`McpServerCommand::Register`]).
    McpServerRegistered {
        /// The owner.
        tenant: TenantId,
        /// The name.
        name: String,
        /// How to reach it.
        transport: Transport,
    },
    /// The transport changed (emitted by [`McpServerCommand::UpdateConfig`]).
    McpServerConfigUpdated {
        /// The new transport.
        transport: Transport,
    },
    /// The tool list was discovered (emitted by
    /// [`McpServerCommand::DiscoverTools`]).
    McpServerToolsDiscovered {
        /// Every tool the server advertises.
        tools: Vec<ToolInfo>,
    },
    /// A health check ran (emitted by [`McpServerCommand::RecordHealth`]).
    McpServerHealthChecked {
        /// True when the server answered as expected.
        healthy: bool,
        /// How long the check took.
        latency_ms: u64,
        /// Detail, at most 1,000 characters.
        detail: Option<String>,
    },
    /// The server was enabled (emitted by [`McpServerCommand::Enable`]).
    McpServerEnabled,
    /// The server was disabled (emitted by [`McpServerCommand::Disable`]).
    McpServerDisabled,
    /// The server was deregistered (emitted by
    /// [`McpServerCommand::Deregister`]).
    McpServerDeregistered,
}

impl DomainEvent for McpServerEvent {
    fn event_type(&self) -> String {
        match self {
            Self::McpServerRegistered { .. } => "McpServerRegistered",
            Self::McpServerConfigUpdated { .. } => "McpServerConfigUpdated",
            Self::McpServerToolsDiscovered { .. } => "McpServerToolsDiscovered",
            Self::McpServerHealthChecked { .. } => "McpServerHealthChecked",
            Self::McpServerEnabled => "McpServerEnabled",
            Self::McpServerDisabled => "McpServerDisabled",
            Self::McpServerDeregistered => "McpServerDeregistered",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        "1.0".to_string()
    }
}

/// Why an MCP server command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum McpServerError {
    /// Register on a server that already exists (even a deregistered one).
    #[error("the MCP server already exists")]
    AlreadyExists,
    /// A command other than Register on a server that does not exist.
    #[error("the MCP server does not exist")]
    NotFound,
    /// A command on a deregistered server.
    #[error("the MCP server has been deregistered")]
    Deregistered,
    /// Enable on an enabled server.
    #[error("the MCP server is already enabled")]
    AlreadyEnabled,
    /// Disable on a disabled server.
    #[error("the MCP server is already disabled")]
    AlreadyDisabled,
    /// The name does not match `^[a-z0-9][a-z0-9_-]{0,63}$`.
    #[error("an MCP server name is a lowercase letter or digit followed by up to 63 lowercase letters, digits, '_' or '-'")]
    InvalidName,
    /// The transport is unusable.
    #[error("invalid transport: {reason}")]
    InvalidTransport {
        /// What is wrong with it.
        reason: String,
    },
    /// A text field of the transport holds a character no text may hold
    /// (see [`crate::text`]); the error names the field.
    #[error(transparent)]
    InvalidText(#[from] crate::text::InvalidText),
    /// Two discovered tools share a name.
    #[error("the tool `{name}` is listed twice")]
    DuplicateTool {
        /// The repeated name.
        name: String,
    },
    /// A discovered tool has no name.
    #[error("a discovered tool is invalid: {reason}")]
    InvalidTool {
        /// What is wrong with it.
        reason: String,
    },
}

impl McpServer {
    /// Decides which events a command produces, without changing anything.
    fn decide(&self, command: McpServerCommand) -> Result<Vec<McpServerEvent>, McpServerError> {
        if let McpServerCommand::Register {
            tenant,
            name,
            transport,
        } = command
        {
            if self.exists() {
                return Err(McpServerError::AlreadyExists);
            }
            if !is_valid_mcp_server_name(&name) {
                return Err(McpServerError::InvalidName);
            }
            check_transport(&transport)?;
            return Ok(vec![McpServerEvent::McpServerRegistered {
                tenant,
                name,
                transport,
            }]);
        }
        if !self.exists() {
            return Err(McpServerError::NotFound);
        }
        if self.deregistered {
            return Err(McpServerError::Deregistered);
        }
        let event = match command {
            McpServerCommand::Register { .. } => return Err(McpServerError::AlreadyExists),
            McpServerCommand::UpdateConfig { transport } => {
                check_transport(&transport)?;
                McpServerEvent::McpServerConfigUpdated { transport }
            }
            McpServerCommand::DiscoverTools { tools } => {
                let mut names = BTreeSet::new();
                for tool in &tools {
                    if tool.name.trim().is_empty() {
                        return Err(McpServerError::InvalidTool {
                            reason: "a tool name must not be empty".into(),
                        });
                    }
                    if !names.insert(tool.name.as_str()) {
                        return Err(McpServerError::DuplicateTool {
                            name: tool.name.clone(),
                        });
                    }
                }
                if tools == self.tools {
                    // The same list again: nothing happened.
                    return Ok(vec![]);
                }
                McpServerEvent::McpServerToolsDiscovered { tools }
            }
            McpServerCommand::RecordHealth {
                healthy,
                latency_ms,
                detail,
            } => McpServerEvent::McpServerHealthChecked {
                healthy,
                latency_ms,
                detail: detail.map(|d| d.chars().take(MAX_HEALTH_DETAIL_LEN).collect()),
            },
            McpServerCommand::Enable if self.enabled => return Err(McpServerError::AlreadyEnabled),
            McpServerCommand::Enable => McpServerEvent::McpServerEnabled,
            McpServerCommand::Disable if !self.enabled => {
                return Err(McpServerError::AlreadyDisabled)
            }
            McpServerCommand::Disable => McpServerEvent::McpServerDisabled,
            McpServerCommand::Deregister => McpServerEvent::McpServerDeregistered,
        };
        Ok(vec![event])
    }
}

fn check_transport(transport: &Transport) -> Result<(), McpServerError> {
    transport.check_text()?;
    transport
        .validate()
        .map_err(|reason| McpServerError::InvalidTransport { reason })
}

crate::common::aggregate!(
    McpServer,
    "mcp_server",
    McpServerCommand,
    McpServerEvent,
    McpServerError
);

impl McpServer {
    /// Applies one recorded event to the state (cqrs-es's `apply`).
    fn evolve(&mut self, event: McpServerEvent) {
        match event {
            McpServerEvent::McpServerRegistered {
                tenant,
                name,
                transport,
            } => {
                self.tenant = Some(tenant);
                self.name = name;
                self.transport = Some(transport);
                self.enabled = true;
            }
            McpServerEvent::McpServerConfigUpdated { transport } => {
                self.transport = Some(transport)
            }
            McpServerEvent::McpServerToolsDiscovered { tools } => self.tools = tools,
            McpServerEvent::McpServerHealthChecked {
                healthy,
                latency_ms,
                detail,
            } => {
                self.health = Some(Health {
                    healthy,
                    latency_ms,
                    detail,
                })
            }
            McpServerEvent::McpServerEnabled => self.enabled = true,
            McpServerEvent::McpServerDisabled => self.enabled = false,
            McpServerEvent::McpServerDeregistered => self.deregistered = true,
        }
    }
}

impl AggregateRoot for McpServer {
    fn tenant(&self) -> Option<&TenantId> {
        self.tenant.as_ref()
    }

    /// `mcp_tool` nodes reference servers by name: a name is unique per
    /// tenant until its server is deregistered.
    fn name_change(event: &McpServerEvent) -> Option<NameChange<'_>> {
        match event {
            McpServerEvent::McpServerRegistered { name, .. } => Some(NameChange::Claim(name)),
            McpServerEvent::McpServerDeregistered => Some(NameChange::Release),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cqrs_es::test::TestFramework;
    use cqrs_es::Aggregate;
    use serde_json::json;

    type ServerTest = TestFramework<McpServer>;

    fn tenant() -> TenantId {
        TenantId::parse("acme").expect("a valid tenant")
    }

    fn stdio() -> Transport {
        Transport::Stdio {
            command: "npx".into(),
            args: vec!["-y".into(), "@modelcontextprotocol/server-github".into()],
            env: BTreeMap::from([(
                "GITHUB_TOKEN".to_string(),
                "{{secrets.GITHUB_TOKEN}}".to_string(),
            )]),
        }
    }

    fn http(url: &str) -> Transport {
        Transport::StreamableHttp {
            url: url.into(),
            headers: BTreeMap::from([(
                "Authorization".to_string(),
                "Bearer {{ secrets.SEARCH_KEY }}".to_string(),
            )]),
        }
    }

    fn registered() -> McpServerEvent {
        McpServerEvent::McpServerRegistered {
            tenant: tenant(),
            name: "github".into(),
            transport: stdio(),
        }
    }

    fn register(name: &str, transport: Transport) -> McpServerCommand {
        McpServerCommand::Register {
            tenant: tenant(),
            name: name.into(),
            transport,
        }
    }

    fn tool(name: &str) -> ToolInfo {
        ToolInfo {
            name: name.into(),
            description: Some("Does things".into()),
            input_schema: json!({"type": "object"}),
            read_only: false,
            idempotent: false,
        }
    }

    fn health() -> McpServerCommand {
        McpServerCommand::RecordHealth {
            healthy: true,
            latency_ms: 12,
            detail: None,
        }
    }

    fn invalid_transport() -> McpServerError {
        McpServerError::InvalidTransport {
            reason: String::new(),
        }
    }

    /// Compares an error's variant, ignoring the human-readable reason.
    fn assert_invalid_transport(result: Result<Vec<McpServerEvent>, McpServerError>) {
        match result {
            Err(McpServerError::InvalidTransport { .. }) => {}
            other => panic!("expected {:?}, got {other:?}", invalid_transport()),
        }
    }

    #[test]
    fn registering_a_server_records_it() {
        ServerTest::with(())
            .given_no_previous_events()
            .when(register("github", stdio()))
            .then_expect_events(vec![registered()]);
    }

    #[test]
    fn registering_an_http_server_records_it() {
        let transport = http("https://search.example.com/mcp");
        ServerTest::with(())
            .given_no_previous_events()
            .when(register("search", transport.clone()))
            .then_expect_events(vec![McpServerEvent::McpServerRegistered {
                tenant: tenant(),
                name: "search".into(),
                transport,
            }]);
    }

    #[test]
    fn registering_an_existing_server_is_rejected() {
        ServerTest::with(())
            .given(vec![registered()])
            .when(register("github", stdio()))
            .then_expect_error(McpServerError::AlreadyExists);
    }

    #[test]
    fn registering_a_server_with_an_uppercase_name_is_rejected() {
        ServerTest::with(())
            .given_no_previous_events()
            .when(register("GitHub", stdio()))
            .then_expect_error(McpServerError::InvalidName);
    }

    #[test]
    fn registering_a_server_with_a_non_http_url_is_rejected() {
        let result = ServerTest::with(())
            .given_no_previous_events()
            .when(register("search", http("ftp://search.example.com")))
            .inspect_result();
        assert_invalid_transport(result);
    }

    #[test]
    fn registering_a_server_with_an_invalid_secret_reference_is_rejected() {
        let transport = Transport::Stdio {
            command: "server".into(),
            args: vec![],
            env: BTreeMap::from([("TOKEN".to_string(), "{{secrets.token}}".to_string())]),
        };
        let result = ServerTest::with(())
            .given_no_previous_events()
            .when(register("local", transport))
            .inspect_result();
        assert_invalid_transport(result);
    }

    #[test]
    fn updating_the_configuration_records_the_new_transport() {
        let transport = http("http://localhost:3000/mcp");
        ServerTest::with(())
            .given(vec![registered()])
            .when(McpServerCommand::UpdateConfig {
                transport: transport.clone(),
            })
            .then_expect_events(vec![McpServerEvent::McpServerConfigUpdated { transport }]);
    }

    #[test]
    fn updating_the_configuration_of_a_missing_server_is_rejected() {
        ServerTest::with(())
            .given_no_previous_events()
            .when(McpServerCommand::UpdateConfig { transport: stdio() })
            .then_expect_error(McpServerError::NotFound);
    }

    #[test]
    fn updating_the_configuration_of_a_deregistered_server_is_rejected() {
        ServerTest::with(())
            .given(vec![registered(), McpServerEvent::McpServerDeregistered])
            .when(McpServerCommand::UpdateConfig { transport: stdio() })
            .then_expect_error(McpServerError::Deregistered);
    }

    #[test]
    fn updating_the_configuration_with_an_empty_command_is_rejected() {
        let transport = Transport::Stdio {
            command: "  ".into(),
            args: vec![],
            env: BTreeMap::new(),
        };
        let result = ServerTest::with(())
            .given(vec![registered()])
            .when(McpServerCommand::UpdateConfig { transport })
            .inspect_result();
        assert_invalid_transport(result);
    }

    #[test]
    fn discovering_tools_records_the_tool_list() {
        ServerTest::with(())
            .given(vec![registered()])
            .when(McpServerCommand::DiscoverTools {
                tools: vec![tool("search_issues"), tool("create_issue")],
            })
            .then_expect_events(vec![McpServerEvent::McpServerToolsDiscovered {
                tools: vec![tool("search_issues"), tool("create_issue")],
            }]);
    }

    #[test]
    fn discovering_tools_on_a_missing_server_is_rejected() {
        ServerTest::with(())
            .given_no_previous_events()
            .when(McpServerCommand::DiscoverTools { tools: vec![] })
            .then_expect_error(McpServerError::NotFound);
    }

    #[test]
    fn discovering_tools_on_a_deregistered_server_is_rejected() {
        ServerTest::with(())
            .given(vec![registered(), McpServerEvent::McpServerDeregistered])
            .when(McpServerCommand::DiscoverTools { tools: vec![] })
            .then_expect_error(McpServerError::Deregistered);
    }

    #[test]
    fn discovering_two_tools_with_the_same_name_is_rejected() {
        ServerTest::with(())
            .given(vec![registered()])
            .when(McpServerCommand::DiscoverTools {
                tools: vec![tool("search"), tool("other"), tool("search")],
            })
            .then_expect_error(McpServerError::DuplicateTool {
                name: "search".into(),
            });
    }

    #[test]
    fn discovering_a_tool_without_a_name_is_rejected() {
        let result = ServerTest::with(())
            .given(vec![registered()])
            .when(McpServerCommand::DiscoverTools {
                tools: vec![tool(" ")],
            })
            .inspect_result();
        assert!(matches!(result, Err(McpServerError::InvalidTool { .. })));
    }

    #[test]
    fn recording_health_records_the_check() {
        ServerTest::with(())
            .given(vec![registered()])
            .when(health())
            .then_expect_events(vec![McpServerEvent::McpServerHealthChecked {
                healthy: true,
                latency_ms: 12,
                detail: None,
            }]);
    }

    #[test]
    fn recording_health_truncates_a_long_detail() {
        ServerTest::with(())
            .given(vec![registered()])
            .when(McpServerCommand::RecordHealth {
                healthy: false,
                latency_ms: 5_000,
                detail: Some("é".repeat(MAX_HEALTH_DETAIL_LEN + 10)),
            })
            .then_expect_events(vec![McpServerEvent::McpServerHealthChecked {
                healthy: false,
                latency_ms: 5_000,
                detail: Some("é".repeat(MAX_HEALTH_DETAIL_LEN)),
            }]);
    }

    #[test]
    fn recording_health_of_a_missing_server_is_rejected() {
        ServerTest::with(())
            .given_no_previous_events()
            .when(health())
            .then_expect_error(McpServerError::NotFound);
    }

    #[test]
    fn recording_health_of_a_deregistered_server_is_rejected() {
        ServerTest::with(())
            .given(vec![registered(), McpServerEvent::McpServerDeregistered])
            .when(health())
            .then_expect_error(McpServerError::Deregistered);
    }

    #[test]
    fn enabling_a_disabled_server_records_it() {
        ServerTest::with(())
            .given(vec![registered(), McpServerEvent::McpServerDisabled])
            .when(McpServerCommand::Enable)
            .then_expect_events(vec![McpServerEvent::McpServerEnabled]);
    }

    #[test]
    fn enabling_a_newly_registered_server_is_rejected_because_it_starts_enabled() {
        ServerTest::with(())
            .given(vec![registered()])
            .when(McpServerCommand::Enable)
            .then_expect_error(McpServerError::AlreadyEnabled);
    }

    #[test]
    fn enabling_a_missing_server_is_rejected() {
        ServerTest::with(())
            .given_no_previous_events()
            .when(McpServerCommand::Enable)
            .then_expect_error(McpServerError::NotFound);
    }

    #[test]
    fn enabling_a_deregistered_server_is_rejected() {
        ServerTest::with(())
            .given(vec![
                registered(),
                McpServerEvent::McpServerDisabled,
                McpServerEvent::McpServerDeregistered,
            ])
            .when(McpServerCommand::Enable)
            .then_expect_error(McpServerError::Deregistered);
    }

    #[test]
    fn disabling_an_enabled_server_records_it() {
        ServerTest::with(())
            .given(vec![registered()])
            .when(McpServerCommand::Disable)
            .then_expect_events(vec![McpServerEvent::McpServerDisabled]);
    }

    #[test]
    fn disabling_a_disabled_server_is_rejected() {
        ServerTest::with(())
            .given(vec![registered(), McpServerEvent::McpServerDisabled])
            .when(McpServerCommand::Disable)
            .then_expect_error(McpServerError::AlreadyDisabled);
    }

    #[test]
    fn disabling_a_missing_server_is_rejected() {
        ServerTest::with(())
            .given_no_previous_events()
            .when(McpServerCommand::Disable)
            .then_expect_error(McpServerError::NotFound);
    }

    #[test]
    fn disabling_a_deregistered_server_is_rejected() {
        ServerTest::with(())
            .given(vec![registered(), McpServerEvent::McpServerDeregistered])
            .when(McpServerCommand::Disable)
            .then_expect_error(McpServerError::Deregistered);
    }

    #[test]
    fn deregistering_a_server_records_it() {
        ServerTest::with(())
            .given(vec![registered()])
            .when(McpServerCommand::Deregister)
            .then_expect_events(vec![McpServerEvent::McpServerDeregistered]);
    }

    #[test]
    fn deregistering_a_missing_server_is_rejected() {
        ServerTest::with(())
            .given_no_previous_events()
            .when(McpServerCommand::Deregister)
            .then_expect_error(McpServerError::NotFound);
    }

    #[test]
    fn deregistering_a_server_twice_is_rejected() {
        ServerTest::with(())
            .given(vec![registered(), McpServerEvent::McpServerDeregistered])
            .when(McpServerCommand::Deregister)
            .then_expect_error(McpServerError::Deregistered);
    }

    #[test]
    fn transports_are_validated_field_by_field() {
        assert_eq!(stdio().validate(), Ok(()));
        assert_eq!(http("https://x.example/mcp").validate(), Ok(()));
        for bad in ["https://", "https:///path", "https://a b", "example.com"] {
            assert!(http(bad).validate().is_err(), "{bad} should be refused");
        }
        let bad_env = Transport::Stdio {
            command: "srv".into(),
            args: vec![],
            env: BTreeMap::from([("1BAD".to_string(), String::new())]),
        };
        assert!(bad_env.validate().is_err());
        let bad_header = Transport::StreamableHttp {
            url: "https://x.example".into(),
            headers: BTreeMap::from([("X-Ok".to_string(), "a\r\nInjected: 1".to_string())]),
        };
        assert!(bad_header.validate().is_err());
    }

    #[test]
    fn transports_list_the_secrets_they_reference() {
        assert_eq!(
            stdio().secret_references(),
            BTreeSet::from(["GITHUB_TOKEN".to_string()])
        );
        assert_eq!(
            http("https://x.example").secret_references(),
            BTreeSet::from(["SEARCH_KEY".to_string()])
        );
    }

    #[test]
    fn server_names_follow_the_documented_pattern() {
        for valid in ["github", "0day", "my-server_2", &"a".repeat(64)] {
            assert!(is_valid_mcp_server_name(valid), "{valid} should be valid");
        }
        for invalid in ["", "-a", "_a", "GitHub", "a.b", "a b", &"a".repeat(65)] {
            assert!(
                !is_valid_mcp_server_name(invalid),
                "{invalid} should be invalid"
            );
        }
    }

    #[test]
    fn server_state_follows_enable_disable_and_tools() {
        let mut server = McpServer::default();
        assert!(!server.exists());
        server.apply(registered());
        assert!(server.is_enabled());
        server.apply(McpServerEvent::McpServerDisabled);
        assert!(!server.is_enabled());
        server.apply(McpServerEvent::McpServerToolsDiscovered {
            tools: vec![tool("a")],
        });
        assert_eq!(server.tools().len(), 1);
        assert_eq!(server.tenant(), Some(&tenant()));
    }

    #[test]
    fn server_events_serialize_with_a_type_tag_and_round_trip() {
        let json = serde_json::to_value(registered()).expect("serializable");
        assert_eq!(json["type"], "McpServerRegistered");
        assert_eq!(json["transport"]["kind"], "stdio");
        let back: McpServerEvent = serde_json::from_value(json).expect("deserializable");
        assert_eq!(back, registered());
    }

    #[test]
    fn server_commands_declare_roles_creation_and_retry_safety() {
        let commands = [
            register("a", stdio()),
            McpServerCommand::UpdateConfig { transport: stdio() },
            McpServerCommand::DiscoverTools { tools: vec![] },
            health(),
            McpServerCommand::Enable,
            McpServerCommand::Disable,
            McpServerCommand::Deregister,
        ];
        assert!(commands.iter().all(|c| c.required_role() == Role::Editor));
        let creation: Vec<bool> = commands.iter().map(|c| c.is_creation()).collect();
        assert_eq!(creation, [true, false, false, false, false, false, false]);
        let retry_safe: Vec<bool> = commands.iter().map(|c| c.is_retry_safe()).collect();
        assert_eq!(retry_safe, [false, false, true, true, true, true, false]);
    }
}
