//! Redaction of event payloads for the audit log and the read models.
//!
//! Sealed secret values are replaced by a marker (they are ciphertext, but a
//! read model is no place for them), and so is every literal credential a
//! user typed where a `{{secrets.NAME}}` reference belongs, unless it only
//! references secrets:
//!
//! - an MCP server's environment and header values (all of them);
//! - an MCP server's URL: its userinfo, and the values of query parameters
//!   named like credentials (`token`, `api_key`, `sig`…);
//! - a stdio MCP server's arguments: `--token=abc`, `--token abc`,
//!   `TOKEN=abc`, and URLs in them as above;
//! - a workflow's `http` nodes: header values named like credentials
//!   (`Authorization`, `Cookie`, `X-Api-Key`, `Private-Token`…) and their URLs
//!   as above.
//!
//! The log keeps what was recorded; the engine runs what was recorded. Only
//! what people and tools read from the read side is redacted.

use std::borrow::Cow;

use serde_json::{Map, Value};
pub use toolhub_domain::credentials::REDACTED;
use toolhub_domain::credentials::{names_a_credential, only_references, redact_url};

/// The redacted form of an event payload: the payload itself when its
/// aggregate type has nothing to redact.
pub fn redact_payload<'a>(aggregate_type: &str, payload: &'a Value) -> Cow<'a, Value> {
    if !matches!(aggregate_type, "secret" | "mcp_server" | "workflow") {
        return Cow::Borrowed(payload);
    }
    if aggregate_type == "workflow" && payload.get("definition").is_none() {
        return Cow::Borrowed(payload);
    }
    let mut payload = payload.clone();
    match aggregate_type {
        "secret" => {
            if let Some(obj) = payload.as_object_mut() {
                if obj.contains_key("value") {
                    obj.insert("value".into(), Value::String(REDACTED.into()));
                }
            }
        }
        "mcp_server" => {
            if let Some(transport) = payload.get_mut("transport") {
                redact_transport(transport);
            }
        }
        "workflow" => {
            if let Some(definition) = payload.get_mut("definition") {
                redact_definition(definition);
            }
        }
        _ => {}
    }
    Cow::Owned(payload)
}

/// Redacts the literal environment and header values of a transport, the
/// credentials in its URL and in its arguments.
pub fn redact_transport(transport: &mut Value) {
    for field in ["env", "headers"] {
        if let Some(Value::Object(map)) = transport.get_mut(field) {
            redact_map(map);
        }
    }
    if let Some(Value::String(url)) = transport.get_mut("url") {
        if let Cow::Owned(redacted) = redact_url(url) {
            *url = redacted;
        }
    }
    if let Some(Value::Array(args)) = transport.get_mut("args") {
        redact_args(args);
    }
}

/// Redacts the literal credentials of a workflow definition's `http` nodes:
/// header values named like credentials, and their URLs' credentials.
pub fn redact_definition(definition: &mut Value) {
    let Some(Value::Array(nodes)) = definition.get_mut("nodes") else {
        return;
    };
    for node in nodes {
        if node.get("type").and_then(Value::as_str) != Some("http") {
            continue;
        }
        let Some(params) = node.get_mut("params") else {
            continue;
        };
        if let Some(Value::Object(headers)) = params.get_mut("headers") {
            for (name, value) in headers.iter_mut() {
                if names_a_credential(name) && !value.as_str().is_some_and(only_references) {
                    *value = Value::String(REDACTED.into());
                }
            }
        }
        if let Some(Value::String(url)) = params.get_mut("url") {
            if let Cow::Owned(redacted) = redact_url(url) {
                *url = redacted;
            }
        }
    }
}

/// Redacts credentials in command-line arguments: `--name=value` and
/// `NAME=value` with a credential's name, the argument after a flag named
/// like a credential (`--token abc`), and URLs' credentials.
fn redact_args(args: &mut [Value]) {
    let mut secret_follows = false;
    for arg in args.iter_mut() {
        let Value::String(text) = arg else {
            secret_follows = false;
            continue;
        };
        if secret_follows && !text.starts_with('-') {
            secret_follows = false;
            if !only_references(text) {
                *text = REDACTED.into();
            }
            continue;
        }
        secret_follows = false;
        if let Some((name, value)) = text.split_once('=') {
            if !name.contains("://") && names_a_credential(name) && !only_references(value) {
                *text = format!("{name}={REDACTED}");
                continue;
            }
        }
        if text.starts_with('-') && !text.contains('=') && names_a_credential(text) {
            secret_follows = true;
            continue;
        }
        if let Cow::Owned(redacted) = redact_url(text) {
            *text = redacted;
        }
    }
}

fn redact_map(map: &mut Map<String, Value>) {
    for value in map.values_mut() {
        let keep = value.as_str().is_some_and(only_references);
        if !keep {
            *value = Value::String(REDACTED.into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sealed_secret_values_are_redacted() {
        let p = json!({"type": "SecretRotated", "value": {"nonce": "n", "ciphertext": "c"}, "rotation": 2});
        let r = redact_payload("secret", &p);
        assert_eq!(r["value"], json!(REDACTED));
        assert_eq!(r["rotation"], json!(2));
    }

    #[test]
    fn literal_headers_are_redacted_and_references_kept() {
        let p = json!({"type": "McpServerRegistered", "transport": {"kind": "streamable_http",
            "url": "https://x", "headers": {"Authorization": "Bearer abc123", "X-Key": "{{secrets.KEY}}",
            "X-Auth": "Bearer {{secrets.TOKEN}}"}}});
        let r = redact_payload("mcp_server", &p);
        let headers = &r["transport"]["headers"];
        assert_eq!(headers["Authorization"], json!(REDACTED));
        assert_eq!(headers["X-Key"], json!("{{secrets.KEY}}"));
        assert_eq!(headers["X-Auth"], json!("Bearer {{secrets.TOKEN}}"));
    }

    #[test]
    fn literal_environment_values_are_redacted() {
        let p = json!({"type": "McpServerConfigUpdated", "transport": {"kind": "stdio", "command": "npx",
            "args": [], "env": {"TOKEN": "s3cr3t", "REF": "{{secrets.A}}-{{secrets.B}}"}}});
        let r = redact_payload("mcp_server", &p);
        assert_eq!(r["transport"]["env"]["TOKEN"], json!(REDACTED));
        assert_eq!(
            r["transport"]["env"]["REF"],
            json!(REDACTED),
            "a literal dash joins them"
        );
    }

    #[test]
    fn credentials_in_http_nodes_are_redacted() {
        let p = json!({"type": "WorkflowDefinitionUpdated", "version": 2, "definition": {
            "nodes": [
                {"id": "a", "type": "http", "params": {"method": "GET",
                    "url": "https://bot:hunter2@api.example.com/v1?api_key=abc123&page=2#top",
                    "headers": {"Authorization": "Bearer abc123", "Cookie": "sid=1",
                        "X-Api-Key": "k", "Private-Token": "{{secrets.GITLAB}}",
                        "Content-Type": "application/json", "X-Auth": "Bearer {{secrets.T}}"}}},
                {"id": "b", "type": "transform", "params": {"headers": {"Authorization": "kept: not http"}}}
            ], "edges": []}});
        let r = redact_payload("workflow", &p);
        let node = &r["definition"]["nodes"][0]["params"];
        assert_eq!(node["headers"]["Authorization"], json!(REDACTED));
        assert_eq!(node["headers"]["Cookie"], json!(REDACTED));
        assert_eq!(node["headers"]["X-Api-Key"], json!(REDACTED));
        assert_eq!(
            node["headers"]["Private-Token"],
            json!("{{secrets.GITLAB}}")
        );
        assert_eq!(node["headers"]["X-Auth"], json!("Bearer {{secrets.T}}"));
        assert_eq!(node["headers"]["Content-Type"], json!("application/json"));
        assert_eq!(
            node["url"],
            json!("https://[redacted]@api.example.com/v1?api_key=[redacted]&page=2#top")
        );
        assert_eq!(
            r["definition"]["nodes"][1]["params"]["headers"]["Authorization"],
            json!("kept: not http")
        );
        assert!(!r.to_string().contains("abc123"));
        assert!(!r.to_string().contains("hunter2"));
        // Events without a definition pass untouched.
        let renamed = json!({"type": "WorkflowRenamed", "name": "x"});
        assert!(matches!(
            redact_payload("workflow", &renamed),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn credentials_in_mcp_urls_and_arguments_are_redacted() {
        let p = json!({"type": "McpServerRegistered", "transport": {"kind": "stdio", "command": "npx",
            "args": ["-y", "server", "--token", "abc123", "--api-key=def456", "--verbose",
                "GITHUB_TOKEN=ghi789", "--url", "postgres://app:pw0rd@db/x",
                "--token", "{{secrets.T}}", "--password"],
            "env": {}}});
        let r = redact_payload("mcp_server", &p);
        let args = &r["transport"]["args"];
        assert_eq!(
            args,
            &json!([
                "-y",
                "server",
                "--token",
                REDACTED,
                "--api-key=[redacted]",
                "--verbose",
                "GITHUB_TOKEN=[redacted]",
                "--url",
                "postgres://[redacted]@db/x",
                "--token",
                "{{secrets.T}}",
                "--password"
            ])
        );
        let p = json!({"type": "McpServerRegistered", "transport": {"kind": "streamable_http",
            "url": "https://mcp.example.com/mcp?token=abc123&region=eu", "headers": {}}});
        let r = redact_payload("mcp_server", &p);
        assert_eq!(
            r["transport"]["url"],
            json!("https://mcp.example.com/mcp?token=[redacted]&region=eu")
        );
        let p = json!({"type": "McpServerRegistered", "transport": {"kind": "streamable_http",
            "url": "https://{{secrets.USER}}:{{secrets.PASS}}@mcp.example.com/mcp", "headers": {}}});
        assert_eq!(
            redact_payload("mcp_server", &p)["transport"]["url"],
            p["transport"]["url"]
        );
    }
}
