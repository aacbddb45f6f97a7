//! Resolving `{{…}}` templates in a node's parameters when the node runs.
//!
//! The syntax is the domain's ([`toolhub_domain::common::template_expressions`]
//! finds the templates, [`TemplateReference`] says what each refers to);
//! this module only substitutes values, so what the domain validated is
//! exactly what runs.
//!
//! # Rules
//!
//! - A JSON string that is exactly one template (`"{{nodes.fetch.body}}"`,
//!   whitespace inside the braces allowed) becomes the referenced JSON value
//!   itself, with its type: an object stays an object, a number a number.
//! - Any other string has each template replaced by the value's text: a
//!   string as it is, any other JSON as compact JSON (`{"a":1}`, `3`,
//!   `true`, `null`).
//! - `{{input}}` / `{{input.path}}` is the execution's input,
//!   `{{nodes.ID}}` / `{{nodes.ID.path}}` the output of a finished node,
//!   `{{secrets.NAME}}` the value of the secret NAME.
//! - A path is dot-separated; on an array a numeric segment is an index
//!   (`nodes.fetch.body.items.0.id`), on an object every segment is a key.
//! - A node that has not run (or does not exist) or a path that leads
//!   nowhere resolves to `null` as a whole value and to the empty string
//!   inside a longer string, so that optional data does not fail a step. A
//!   `null` that is really there is written `null` inside a string.
//! - A secret that is not in [`Secrets`] is an error naming the secret; any
//!   other expression ([`TemplateReference::Other`]) is an error too.
//! - Object keys and non-string values are left as they are.
//! - The text produced by one resolution is bounded ([`MAX_RESOLVED_BYTES`]),
//!   so that a few templates repeating a large output cannot exhaust memory.
//!
//! Each resolution reports the names of the secrets it used, so that the
//! caller can mask exactly those values before recording anything.
//!
//! This module must never put a secret's value in an error, and never
//! resolve a secret that the caller did not unseal for this step.

use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use toolhub_domain::common::{template_expressions, TemplateReference};
use zeroize::Zeroizing;

/// The most bytes of strings and values one resolution may produce (64
/// MiB): several times the largest HTTP response, far less than a worker's
/// memory.
pub const MAX_RESOLVED_BYTES: usize = 64 * 1024 * 1024;

/// The secret values a step may use, by secret name, already unsealed by the
/// caller. The values are wiped from memory when this is dropped.
#[derive(Default, Clone)]
pub struct Secrets {
    /// Secret name → value. `Zeroizing` wipes each value when it is
    /// dropped, so unsealed secrets do not linger in freed memory.
    values: BTreeMap<String, Zeroizing<String>>,
}

impl Secrets {
    /// No secrets.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) the value of the secret `name`.
    pub fn insert(&mut self, name: impl Into<String>, value: Zeroizing<String>) {
        self.values.insert(name.into(), value);
    }

    /// The value of the secret `name`, if it was unsealed for this step.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(|value| value.as_str())
    }

    /// The names of the secrets held, in order; never their values.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.values.keys().map(String::as_str)
    }

    /// The values of the named secrets that are held, for building a
    /// [`Masker`](crate::mask::Masker) from what a resolution reported.
    pub fn values_of<'a>(
        &'a self,
        names: &'a BTreeSet<String>,
    ) -> impl Iterator<Item = &'a str> + 'a {
        names.iter().filter_map(|name| self.get(name))
    }

    /// How many secrets are held.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// True when no secret is held.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

impl FromIterator<(String, Zeroizing<String>)> for Secrets {
    fn from_iter<I: IntoIterator<Item = (String, Zeroizing<String>)>>(iter: I) -> Self {
        Self {
            values: iter.into_iter().collect(),
        }
    }
}

/// Shows the names only: a secret value must never reach a log.
impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.names()).finish()
    }
}

/// The outputs of finished nodes, by node id: a map keyed by `String` or by
/// the domain's `NodeId`.
pub trait Outputs: fmt::Debug + Sync {
    /// The output of `node`, if it finished.
    fn output(&self, node: &str) -> Option<&Value>;
}

impl<K: std::borrow::Borrow<str> + Ord + fmt::Debug + Sync> Outputs for BTreeMap<K, Value> {
    fn output(&self, node: &str) -> Option<&Value> {
        self.get(node)
    }
}

/// What templates can refer to while a step runs.
#[derive(Debug, Clone, Copy)]
pub struct Scope<'a> {
    /// The execution's input, for `{{input…}}`.
    pub input: &'a Value,
    /// The outputs of the nodes that have finished, by node id, for
    /// `{{nodes.ID…}}`.
    pub nodes: &'a dyn Outputs,
    /// The secrets unsealed for this step, for `{{secrets.NAME}}`.
    pub secrets: &'a Secrets,
}

/// A resolved value and the secrets that went into it.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved<T> {
    /// The value with every template replaced. It may hold secret values in
    /// plain text: use it, mask it, and drop it.
    pub value: T,
    /// The names of the secrets substituted, so that their values can be
    /// masked wherever the step's data is recorded.
    pub secrets_used: BTreeSet<String>,
}

/// Why a template could not be resolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// `{{secrets.NAME}}` names a secret that was not unsealed for the step
    /// (it does not exist, was deleted, or its key was destroyed).
    #[error("the secret `{name}` is not available")]
    UnknownSecret {
        /// The secret's name (never its value).
        name: String,
    },
    /// The expression is not `secrets.…`, `nodes.…` or `input…`.
    #[error("`{{{{{expression}}}}}` is not a template the engine resolves: use secrets.NAME, nodes.ID.path or input.path")]
    Unsupported {
        /// The expression between the braces.
        expression: String,
    },
    /// The resolution would produce more than [`MAX_RESOLVED_BYTES`].
    #[error("the templates resolve to more than {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: usize,
    },
}

/// Resolves every template in the strings of `value` (see the module
/// documentation for the rules).
pub fn resolve(value: &Value, scope: &Scope<'_>) -> Result<Resolved<Value>, TemplateError> {
    let mut resolver = Resolver::new(scope);
    let value = resolver.value(value)?;
    Ok(Resolved {
        value,
        secrets_used: resolver.secrets_used,
    })
}

/// Resolves the templates of one string as text, whatever the values' types
/// (for a URL or a header, which must stay strings).
pub fn resolve_str(text: &str, scope: &Scope<'_>) -> Result<Resolved<String>, TemplateError> {
    let mut resolver = Resolver::new(scope);
    let value = resolver.text(text)?;
    Ok(Resolved {
        value,
        secrets_used: resolver.secrets_used,
    })
}

/// One resolution: the scope, the secrets used so far, and the budget left.
struct Resolver<'s, 'a> {
    /// What templates refer to.
    scope: &'s Scope<'a>,
    /// The secrets substituted so far.
    secrets_used: BTreeSet<String>,
    /// How many more bytes this resolution may produce.
    budget: usize,
}

/// What a template refers to, found.
enum Found<'v> {
    /// A JSON value of the input or of a node's output.
    Json(&'v Value),
    /// A secret's value.
    Secret(&'v str),
    /// Nothing: the node has not run or the path leads nowhere.
    Missing,
}

impl<'s, 'a> Resolver<'s, 'a> {
    fn new(scope: &'s Scope<'a>) -> Self {
        Self {
            scope,
            secrets_used: BTreeSet::new(),
            budget: MAX_RESOLVED_BYTES,
        }
    }

    fn value(&mut self, value: &Value) -> Result<Value, TemplateError> {
        Ok(match value {
            Value::String(text) => self.string(text)?,
            Value::Array(items) => Value::Array(
                items
                    .iter()
                    .map(|item| self.value(item))
                    .collect::<Result<_, _>>()?,
            ),
            Value::Object(members) => Value::Object(
                members
                    .iter()
                    .map(|(key, member)| Ok((key.clone(), self.value(member)?)))
                    .collect::<Result<Map<_, _>, _>>()?,
            ),
            other => other.clone(),
        })
    }

    /// A JSON string: the referenced value itself when the string is one
    /// template, text otherwise.
    fn string(&mut self, text: &str) -> Result<Value, TemplateError> {
        let mut templates = template_expressions(text);
        if let (Some(only), None) = (templates.next(), templates.next()) {
            if only.span == (0, text.len()) {
                return Ok(match self.find(only.reference(), only.expression)? {
                    Found::Json(value) => {
                        self.spend(json_size(value, self.budget))?;
                        value.clone()
                    }
                    Found::Secret(secret) => {
                        self.spend(secret.len())?;
                        Value::String(secret.to_string())
                    }
                    Found::Missing => Value::Null,
                });
            }
        }
        Ok(Value::String(self.text(text)?))
    }

    /// A string with every template replaced by its value's text.
    fn text(&mut self, text: &str) -> Result<String, TemplateError> {
        let mut out = String::new();
        let mut copied = 0;
        for template in template_expressions(text) {
            let (start, end) = template.span;
            self.push(&mut out, &text[copied..start])?;
            match self.find(template.reference(), template.expression)? {
                Found::Json(Value::String(s)) => self.push(&mut out, s)?,
                Found::Json(value) => {
                    self.spend(json_size(value, self.budget))?;
                    out.push_str(&value.to_string());
                }
                Found::Secret(secret) => self.push(&mut out, secret)?,
                Found::Missing => {}
            }
            copied = end;
        }
        self.push(&mut out, &text[copied..])?;
        Ok(out)
    }

    fn push(&mut self, out: &mut String, piece: &str) -> Result<(), TemplateError> {
        self.spend(piece.len())?;
        out.push_str(piece);
        Ok(())
    }

    fn spend(&mut self, bytes: usize) -> Result<(), TemplateError> {
        self.budget = self
            .budget
            .checked_sub(bytes)
            .ok_or(TemplateError::TooLarge {
                limit: MAX_RESOLVED_BYTES,
            })?;
        Ok(())
    }

    fn find(
        &mut self,
        reference: TemplateReference<'_>,
        expression: &str,
    ) -> Result<Found<'a>, TemplateError> {
        Ok(match reference {
            TemplateReference::Secret { name } => {
                let secret =
                    self.scope
                        .secrets
                        .get(name)
                        .ok_or_else(|| TemplateError::UnknownSecret {
                            name: name.to_string(),
                        })?;
                self.secrets_used.insert(name.to_string());
                Found::Secret(secret)
            }
            TemplateReference::Input { path } => lookup(self.scope.input, path),
            TemplateReference::Node { node, path } => match self.scope.nodes.output(node) {
                Some(output) => lookup(output, path),
                None => Found::Missing,
            },
            TemplateReference::Other { .. } => {
                return Err(TemplateError::Unsupported {
                    expression: expression.to_string(),
                })
            }
        })
    }
}

/// Follows a dot-separated path into `value`; an empty path is the value.
fn lookup<'v>(value: &'v Value, path: &str) -> Found<'v> {
    if path.is_empty() {
        return Found::Json(value);
    }
    let mut current = value;
    for segment in path.split('.') {
        let next = match current {
            Value::Object(members) => members.get(segment),
            Value::Array(items) => segment
                .parse::<usize>()
                .ok()
                .and_then(|index| items.get(index)),
            _ => None,
        };
        match next {
            Some(next) => current = next,
            None => return Found::Missing,
        }
    }
    Found::Json(current)
}

/// The serialized size of `value`, counting stops just past `limit`, so
/// that measuring a huge value costs no more than the budget left.
fn json_size(value: &Value, limit: usize) -> usize {
    struct Counter {
        written: usize,
        limit: usize,
    }
    impl std::io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.written = self.written.saturating_add(buf.len());
            if self.written > self.limit {
                Err(std::io::Error::other("limit exceeded"))
            } else {
                Ok(buf.len())
            }
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter { written: 0, limit };
    // An error means the count passed the limit, which is all the caller
    // needs to know.
    let _ = serde_json::to_writer(&mut counter, value);
    counter.written
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    struct Fixture {
        input: Value,
        nodes: BTreeMap<String, Value>,
        secrets: Secrets,
    }

    impl Fixture {
        fn new() -> Self {
            let mut secrets = Secrets::new();
            secrets.insert("API_TOKEN", Zeroizing::new("tok-123".to_string()));
            secrets.insert("OTHER", Zeroizing::new("other-456".to_string()));
            Self {
                input: json!({"user": {"name": "Ada", "age": 36}, "tags": ["a", "b"]}),
                nodes: BTreeMap::from([
                    (
                        "fetch".to_string(),
                        json!({"status": 200, "body": {"items": [{"id": 7, "name": "x"}], "ok": true, "none": null}}),
                    ),
                    ("my-node".to_string(), json!("plain")),
                ]),
                secrets,
            }
        }

        fn scope(&self) -> Scope<'_> {
            Scope {
                input: &self.input,
                nodes: &self.nodes,
                secrets: &self.secrets,
            }
        }

        fn resolve(&self, value: Value) -> Result<Resolved<Value>, TemplateError> {
            resolve(&value, &self.scope())
        }
    }

    #[test]
    fn a_whole_template_becomes_the_referenced_value_with_its_type() {
        let f = Fixture::new();
        assert_eq!(
            f.resolve(json!("{{nodes.fetch.body}}")).unwrap().value,
            f.nodes["fetch"]["body"]
        );
        assert_eq!(
            f.resolve(json!("{{ nodes.fetch.status }}")).unwrap().value,
            json!(200)
        );
        assert_eq!(
            f.resolve(json!("{{nodes.fetch.body.ok}}")).unwrap().value,
            json!(true)
        );
        assert_eq!(
            f.resolve(json!("{{input.tags}}")).unwrap().value,
            json!(["a", "b"])
        );
        assert_eq!(f.resolve(json!("{{input}}")).unwrap().value, f.input);
        assert_eq!(
            f.resolve(json!("{{nodes.my-node}}")).unwrap().value,
            json!("plain")
        );
    }

    #[test]
    fn numeric_segments_index_arrays() {
        let f = Fixture::new();
        assert_eq!(
            f.resolve(json!("{{nodes.fetch.body.items.0.id}}"))
                .unwrap()
                .value,
            json!(7)
        );
        assert_eq!(
            f.resolve(json!("{{input.tags.1}}")).unwrap().value,
            json!("b")
        );
        assert_eq!(
            f.resolve(json!("{{input.tags.2}}")).unwrap().value,
            Value::Null
        );
        assert_eq!(
            f.resolve(json!("{{input.tags.x}}")).unwrap().value,
            Value::Null
        );
    }

    #[test]
    fn numeric_segments_are_keys_on_objects() {
        let f = Fixture {
            input: json!({"0": "zero"}),
            ..Fixture::new()
        };
        assert_eq!(
            f.resolve(json!("{{input.0}}")).unwrap().value,
            json!("zero")
        );
    }

    #[test]
    fn embedded_templates_become_text() {
        let f = Fixture::new();
        let resolved = f
            .resolve(json!("{{input.user.name}} is {{input.user.age}}, items {{nodes.fetch.body.items}} ok={{nodes.fetch.body.ok}} none={{nodes.fetch.body.none}}"))
            .unwrap();
        assert_eq!(
            resolved.value,
            json!(r#"Ada is 36, items [{"id":7,"name":"x"}] ok=true none=null"#)
        );
    }

    #[test]
    fn a_single_template_with_text_around_it_is_embedded() {
        let f = Fixture::new();
        assert_eq!(
            f.resolve(json!(" {{nodes.fetch.status}}")).unwrap().value,
            json!(" 200")
        );
        assert_eq!(
            f.resolve(json!("/items/{{nodes.fetch.body.items.0.id}}"))
                .unwrap()
                .value,
            json!("/items/7")
        );
    }

    #[test]
    fn missing_nodes_and_paths_are_null_whole_and_empty_embedded() {
        let f = Fixture::new();
        assert_eq!(
            f.resolve(json!("{{nodes.never}}")).unwrap().value,
            Value::Null
        );
        assert_eq!(
            f.resolve(json!("{{nodes.fetch.body.nope.deeper}}"))
                .unwrap()
                .value,
            Value::Null
        );
        assert_eq!(
            f.resolve(json!("{{input.user.name.first}}")).unwrap().value,
            Value::Null
        );
        assert_eq!(
            f.resolve(json!("[{{nodes.never.x}}]")).unwrap().value,
            json!("[]")
        );
    }

    #[test]
    fn templates_are_resolved_throughout_arrays_and_objects_but_not_in_keys() {
        let f = Fixture::new();
        let resolved = f
            .resolve(json!({
                "{{input.user.name}}": ["{{input.user.age}}", {"deep": "id={{nodes.fetch.body.items.0.id}}"}],
                "n": 5,
                "b": false,
                "z": null
            }))
            .unwrap();
        assert_eq!(
            resolved.value,
            json!({
                "{{input.user.name}}": [36, {"deep": "id=7"}],
                "n": 5,
                "b": false,
                "z": null
            })
        );
    }

    #[test]
    fn secrets_are_substituted_and_reported_by_name() {
        let f = Fixture::new();
        let resolved = f
            .resolve(json!({"auth": "Bearer {{secrets.API_TOKEN}}", "raw": "{{secrets.OTHER}}"}))
            .unwrap();
        assert_eq!(
            resolved.value,
            json!({"auth": "Bearer tok-123", "raw": "other-456"})
        );
        assert_eq!(
            resolved.secrets_used,
            BTreeSet::from(["API_TOKEN".to_string(), "OTHER".to_string()])
        );
    }

    #[test]
    fn a_resolution_without_secrets_reports_none() {
        let f = Fixture::new();
        let resolved = f.resolve(json!("{{input.user.name}}")).unwrap();
        assert!(resolved.secrets_used.is_empty());
    }

    #[test]
    fn an_unknown_secret_is_an_error_naming_it() {
        let f = Fixture::new();
        let error = f
            .resolve(json!(["{{secrets.API_TOKEN}}", "x {{secrets.GONE}}"]))
            .unwrap_err();
        assert_eq!(
            error,
            TemplateError::UnknownSecret {
                name: "GONE".into()
            }
        );
        assert!(error.to_string().contains("`GONE`"));
        assert!(!error.to_string().contains("tok-123"));
    }

    #[test]
    fn other_expressions_are_errors() {
        let f = Fixture::new();
        for text in ["{{ now() }}", "a {{env.HOME}} b", "{{secretsX}}"] {
            let error = f.resolve(json!(text)).unwrap_err();
            assert!(matches!(error, TemplateError::Unsupported { .. }), "{text}");
        }
        assert_eq!(
            f.resolve(json!("{{ 1 + 1 }}")).unwrap_err().to_string(),
            "`{{1 + 1}}` is not a template the engine resolves: use secrets.NAME, nodes.ID.path or input.path"
        );
    }

    #[test]
    fn text_without_templates_is_unchanged() {
        let f = Fixture::new();
        for text in ["", "plain", "{{ unclosed", "}} {{"] {
            assert_eq!(f.resolve(json!(text)).unwrap().value, json!(text));
        }
    }

    #[test]
    fn resolve_str_always_produces_text() {
        let f = Fixture::new();
        let scope = f.scope();
        let resolved = resolve_str("{{nodes.fetch.status}}", &scope).unwrap();
        assert_eq!(resolved.value, "200");
        let resolved = resolve_str(
            "https://api.example/{{input.user.name}}?key={{secrets.API_TOKEN}}",
            &scope,
        )
        .unwrap();
        assert_eq!(resolved.value, "https://api.example/Ada?key=tok-123");
        assert_eq!(
            resolved.secrets_used,
            BTreeSet::from(["API_TOKEN".to_string()])
        );
        assert_eq!(resolve_str("{{nodes.none}}", &scope).unwrap().value, "");
    }

    #[test]
    fn a_resolution_past_the_size_limit_is_refused() {
        let big = "x".repeat(1024 * 1024);
        let f = Fixture {
            input: json!({"big": big}),
            ..Fixture::new()
        };
        // Each whole template clones a megabyte; 65 of them pass 64 MiB.
        let many = Value::Array(vec![json!("{{input.big}}"); 65]);
        assert_eq!(
            f.resolve(many).unwrap_err(),
            TemplateError::TooLarge {
                limit: MAX_RESOLVED_BYTES
            }
        );
        let embedded = "{{input.big}}".repeat(65);
        assert!(resolve_str(&embedded, &f.scope()).is_err());
        // Under the limit is fine.
        let some = Value::Array(vec![json!("{{input.big}}"); 10]);
        assert!(f.resolve(some).is_ok());
    }

    #[test]
    fn secrets_debug_shows_names_only() {
        let f = Fixture::new();
        let shown = format!("{:?}", f.secrets);
        assert!(shown.contains("API_TOKEN"));
        assert!(!shown.contains("tok-123"));
    }

    #[test]
    fn values_of_returns_the_values_of_the_used_secrets() {
        let f = Fixture::new();
        let used = BTreeSet::from(["OTHER".to_string(), "GONE".to_string()]);
        assert_eq!(
            f.secrets.values_of(&used).collect::<Vec<_>>(),
            vec!["other-456"]
        );
    }
}
