//! What text may hold: the one check every command applies to the strings it
//! records.
//!
//! Two kinds of text, two rules:
//!
//! - **Names** (display names, node names, keys of JSON objects, ids,
//!   template keys, headers, environment variables, commands): no control
//!   character at all.
//! - **Single lines** (an MCP server's arguments, environment and header
//!   values, which reach a process or a request header): no control
//!   character except tab; a line break there would inject a header.
//! - **Free text** (descriptions, comments, reasons, the string values of
//!   JSON documents such as node parameters and execution input): no control
//!   character except line feed, carriage return and tab, so that pasted
//!   multi-line text keeps its lines.
//!
//! A control character is one of Unicode's category `Cc` (U+0000–U+001F,
//! U+007F–U+009F). NUL above all: PostgreSQL's `text` and `jsonb` cannot hold
//! it, and no person means to type one. The error names the field (a path
//! into the command's input, such as `definition.nodes[2].params.body`), so
//! that the API can answer `VALIDATION` on exactly that field.

use serde_json::Value;
use std::fmt::Write as _;

/// A string that breaks one of the rules above.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{field}` {reason}")]
pub struct InvalidText {
    /// Where the string is, as a path into the command's input in the
    /// API's spelling (`description`, `transport.env.TOKEN`,
    /// `definition.nodes[0].params.url`).
    pub field: String,
    /// What is wrong with it, for people.
    pub reason: String,
}

/// The characters free text may hold although they are controls.
fn allowed_in_free_text(c: char) -> bool {
    matches!(c, '\n' | '\r' | '\t')
}

fn describe(c: char) -> String {
    if c == '\0' {
        "must not contain a NUL character (U+0000)".to_string()
    } else {
        format!("must not contain the control character U+{:04X}", c as u32)
    }
}

/// Checks a name: no control character at all.
pub fn check_name(field: &str, text: &str) -> Result<(), InvalidText> {
    match text.chars().find(|c| c.is_control()) {
        None => Ok(()),
        Some(c) => Err(InvalidText {
            field: field.to_string(),
            reason: describe(c),
        }),
    }
}

/// Checks a single line: no control character but tab.
pub fn check_line(field: &str, text: &str) -> Result<(), InvalidText> {
    match text.chars().find(|c| c.is_control() && *c != '\t') {
        None => Ok(()),
        Some(c) => Err(InvalidText {
            field: field.to_string(),
            reason: describe(c),
        }),
    }
}

/// Checks free text: no control character but line feed, carriage return and
/// tab.
pub fn check_free_text(field: &str, text: &str) -> Result<(), InvalidText> {
    match text
        .chars()
        .find(|c| c.is_control() && !allowed_in_free_text(*c))
    {
        None => Ok(()),
        Some(c) => Err(InvalidText {
            field: field.to_string(),
            reason: describe(c),
        }),
    }
}

/// Checks a JSON document recursively: every object key as a name, every
/// string as free text. The error's field is the path to the first fault,
/// `field.key[3].other`, in document order.
pub fn check_json(field: &str, value: &Value) -> Result<(), InvalidText> {
    // An iterative walk: a document nested deeply enough must not overflow
    // the stack (serde_json's own limit is 128 levels, but values built in
    // code have none).
    let mut stack: Vec<(String, &Value)> = vec![(field.to_string(), value)];
    while let Some((path, value)) = stack.pop() {
        match value {
            Value::String(s) => check_free_text(&path, s)?,
            Value::Array(items) => {
                for (index, item) in items.iter().enumerate().rev() {
                    let mut child = path.clone();
                    let _ = write!(child, "[{index}]");
                    stack.push((child, item));
                }
            }
            Value::Object(members) => {
                let entries: Vec<_> = members.iter().collect();
                for (key, item) in entries.into_iter().rev() {
                    let child = member_path(&path, key);
                    // The key is checked under the path it would have; a
                    // key with a control character is named escaped, so
                    // the message itself stays printable.
                    check_name(&child, key)?;
                    stack.push((child, item));
                }
            }
            Value::Null | Value::Bool(_) | Value::Number(_) => {}
        }
    }
    Ok(())
}

/// `path.key`, or `path["key"]` (JSON-escaped) for a key that is not a plain
/// identifier, so that the path stays printable and unambiguous.
pub fn member_path(path: &str, key: &str) -> String {
    let plain = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    let mut out = String::with_capacity(path.len() + key.len() + 4);
    out.push_str(path);
    if plain {
        if !path.is_empty() {
            out.push('.');
        }
        out.push_str(key);
    } else {
        out.push('[');
        out.push_str(&Value::String(key.to_string()).to_string());
        out.push(']');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn a_nul_in_free_text_is_refused_naming_the_field() {
        let err = check_free_text("description", "a\u{0}b").unwrap_err();
        assert_eq!(err.field, "description");
        assert!(err.reason.contains("NUL"), "{err}");
    }

    #[test]
    fn free_text_keeps_newlines_carriage_returns_and_tabs() {
        assert!(check_free_text("description", "line 1\r\nline\t2\n").is_ok());
        assert!(check_free_text("description", "bell\u{7}").is_err());
        assert!(check_free_text("description", "c1\u{85}").is_err());
        assert!(check_free_text("description", "ünïcødé ✓").is_ok());
    }

    #[test]
    fn a_name_holds_no_control_character_at_all() {
        assert!(check_name("name", "Hello world").is_ok());
        assert!(check_name("name", "tab\there").is_err());
        assert!(check_name("name", "line\nbreak").is_err());
    }

    #[test]
    fn json_is_checked_recursively_naming_the_path() {
        let doc = json!({"nodes": [{"params": {"body": "ok"}}, {"params": {"body": "x\u{0}"}}]});
        let err = check_json("definition", &doc).unwrap_err();
        assert_eq!(err.field, "definition.nodes[1].params.body");
    }

    #[test]
    fn json_keys_are_checked_as_names() {
        let doc = json!({"a": {"bad\nkey": 1}});
        let err = check_json("input", &doc).unwrap_err();
        assert_eq!(err.field, "input.a[\"bad\\nkey\"]");
        assert!(check_json("input", &json!({"a": ["multi\nline", 1, null]})).is_ok());
    }

    fn arbitrary_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            any::<String>().prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map(any::<String>(), inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn has_forbidden(value: &Value) -> bool {
        match value {
            Value::String(s) => s
                .chars()
                .any(|c| c.is_control() && !allowed_in_free_text(c)),
            Value::Array(items) => items.iter().any(has_forbidden),
            Value::Object(members) => members
                .iter()
                .any(|(k, v)| k.chars().any(char::is_control) || has_forbidden(v)),
            _ => false,
        }
    }

    proptest! {
        #[test]
        fn free_text_is_refused_exactly_when_it_holds_a_forbidden_control(s in any::<String>()) {
            let forbidden = s.chars().any(|c| c.is_control() && !allowed_in_free_text(c));
            prop_assert_eq!(check_free_text("f", &s).is_err(), forbidden);
        }

        #[test]
        fn json_is_refused_exactly_when_it_holds_a_forbidden_control(doc in arbitrary_json()) {
            prop_assert_eq!(check_json("f", &doc).is_err(), has_forbidden(&doc));
        }
    }
}
