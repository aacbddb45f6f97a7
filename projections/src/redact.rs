//! Redaction of event payloads for the audit log and the read models.
//!
//! Sealed secret values are replaced by a marker (they are ciphertext, but a
//! read model is no place for them), and literal values in an MCP server's
//! environment and headers are replaced unless they only reference secrets
//! (`{{secrets.NAME}}`): a literal `Authorization: Bearer abc…` is a
//! credential typed into the wrong field, and the log must not spread it.

use std::borrow::Cow;

use serde_json::{Map, Value};

/// What replaces a redacted value.
pub const REDACTED: &str = "[redacted]";

/// The redacted form of an event payload: the payload itself when its
/// aggregate type has nothing to redact.
pub fn redact_payload<'a>(aggregate_type: &str, payload: &'a Value) -> Cow<'a, Value> {
    if !matches!(aggregate_type, "secret" | "mcp_server") {
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
        _ => {}
    }
    Cow::Owned(payload)
}

/// Redacts the literal environment and header values of a transport.
pub fn redact_transport(transport: &mut Value) {
    for field in ["env", "headers"] {
        if let Some(Value::Object(map)) = transport.get_mut(field) {
            redact_map(map);
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

/// True when every non-space character of `s` sits inside a `{{ … }}`
/// reference, or the only literal text is a scheme word such as `Bearer`.
fn only_references(s: &str) -> bool {
    if !s.contains("{{") {
        return false;
    }
    let mut rest = s;
    let mut literal = String::new();
    while let Some(start) = rest.find("{{") {
        literal.push_str(&rest[..start]);
        match rest[start..].find("}}") {
            Some(end) => rest = &rest[start + end + 2..],
            None => return false,
        }
    }
    literal.push_str(rest);
    let literal = literal.trim();
    literal.is_empty() || matches!(literal, "Bearer" | "Basic" | "Token" | "token" | "bearer")
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
}
