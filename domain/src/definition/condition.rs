//! The `condition` node's expression language: CEL, the Common Expression
//! Language, through the `cel` crate.
//!
//! A condition is a CEL expression over two variables, `input` (the
//! execution's input) and `nodes` (finished nodes' outputs by node id), and
//! must evaluate to a boolean:
//!
//! ```text
//! nodes.fetch.status == 200 && size(nodes.fetch.body.items) > 0
//! "admin" in input.roles
//! nodes["my-node"].body.kind == "invoice"
//! ```
//!
//! A node id that is not a CEL identifier (ids may contain `-` or start
//! with a digit) is reached by index: `nodes["my-node"]`. Only the outputs
//! of nodes whose ids appear in the expression's text are handed in (and
//! `input` only when the text mentions it), so a key computed at run time
//! (`nodes[input.which]`) finds nothing, and `size(nodes)` counts the named
//! nodes that have run.
//!
//! CEL is not Turing-complete and has no I/O: an expression can read its two
//! variables and nothing else, and always terminates. It has no cost budget
//! either, so the expression's length ([`MAX_EXPRESSION_BYTES`]) and the data
//! handed to it ([`MAX_CONDITION_DATA_BYTES`]) are capped. Nested macros
//! (`all`, `exists`, `map`, `filter`) over large lists can still take a
//! while; the engine runs a condition under the step's timeout.
//!
//! It lives in the domain, which is pure: definitions are validated with
//! the same parser that evaluates them ([`check_condition_syntax`]), and
//! history can be replayed with the same evaluation.
//!
//! # Missing fields
//!
//! Reading a field that is not there (`nodes.fetch.body.nope`, or a node that
//! has not run) is an evaluation error, so the step fails; it is not quietly
//! `false`, which would send the run down the wrong branch on a typo. Test
//! for presence first where data is optional: `has(nodes.fetch.body.nope)`,
//! or `"nope" in nodes.fetch.body`.
//!
//! # The older syntax
//!
//! Definitions already recorded may write references as templates:
//! `{{nodes.fetch.status}} == 200`. Templates that refer to a node or to the
//! input are rewritten to the CEL reference before compiling
//! (`nodes.fetch.status == 200`; `nodes["my-node"].status` for an id that is
//! not an identifier; a numeric path segment becomes an index, `items[0]`).
//! `{{secrets.…}}` is an error (conditions never see secrets), and so is
//! any other template or a template inside a string literal, whose meaning
//! the rewrite cannot keep.
//!
//! This module must never give a condition access to secrets, the clock,
//! the environment or the network.

use crate::common::{template_expressions, TemplateReference};
use cel::objects::{Key, Map as CelMap};
use cel::{Context, Program, Value as CelValue};
use serde_json::Value;
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// The longest condition, in bytes (4 KiB): a condition that needs more is
/// a program, and belongs in a transform or an MCP tool.
pub const MAX_EXPRESSION_BYTES: usize = 4 * 1024;

/// The most JSON a condition is handed, in bytes (4 MiB): the input and the
/// outputs of the nodes whose ids appear in the expression.
pub const MAX_CONDITION_DATA_BYTES: usize = 4 * 1024 * 1024;

/// How much of an evaluation error's text is kept: CEL quotes the values it
/// could not compare, which may be large.
const MAX_ERROR_CHARS: usize = 300;

/// Why a condition could not be evaluated to a boolean.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConditionError {
    /// The expression is longer than [`MAX_EXPRESSION_BYTES`].
    #[error("the condition is longer than {limit} bytes")]
    TooLong {
        /// The limit.
        limit: usize,
    },
    /// The data the condition reads is larger than
    /// [`MAX_CONDITION_DATA_BYTES`].
    #[error("the data this condition reads is larger than {limit} bytes; reduce it with a transform node first")]
    DataTooLarge {
        /// The limit.
        limit: usize,
    },
    /// The expression is not valid CEL.
    #[error("the condition is not a valid expression: {reason}")]
    Syntax {
        /// The parser's explanation.
        reason: String,
    },
    /// The expression has a `{{secrets.…}}` template.
    #[error("a condition cannot use secrets (`{{{{secrets.{name}}}}}`)")]
    SecretInCondition {
        /// The secret's name.
        name: String,
    },
    /// The expression has a template other than a node or input reference.
    #[error("`{{{{{expression}}}}}` is not a node or input reference; write conditions in CEL, e.g. nodes.fetch.status == 200")]
    UnsupportedTemplate {
        /// The expression between the braces.
        expression: String,
    },
    /// A template is written inside a string literal.
    #[error("`{{{{{expression}}}}}` is inside a string literal; write the reference without quotes, e.g. nodes.fetch.body.kind == \"invoice\"")]
    TemplateInString {
        /// The expression between the braces.
        expression: String,
    },
    /// Evaluation failed: a missing field, a type mismatch, an unknown
    /// variable or function.
    #[error("the condition could not be evaluated: {reason}")]
    Evaluation {
        /// CEL's explanation, shortened.
        reason: String,
    },
    /// The expression evaluated to something other than a boolean.
    #[error("the condition's result is of type {found}, not bool")]
    NotBoolean {
        /// The CEL type of the result.
        found: &'static str,
    },
}

/// Evaluates a condition against the execution's input and the finished
/// nodes' outputs (see the module documentation).
pub fn evaluate_condition<K: AsRef<str> + Ord>(
    expression: &str,
    input: &Value,
    nodes: &BTreeMap<K, Value>,
) -> Result<bool, ConditionError> {
    let source = prepare(expression)?;
    let program = compile(&source)?;

    // Only the data the expression can name is converted and handed in.
    let mentioned_nodes: Vec<(&str, &Value)> = nodes
        .iter()
        .map(|(id, output)| (id.as_ref(), output))
        .filter(|(id, _)| source.contains(id))
        .collect();
    let input = if source.contains("input") {
        input
    } else {
        &Value::Null
    };
    let mut budget = MAX_CONDITION_DATA_BYTES;
    let mut nodes_map = HashMap::with_capacity(mentioned_nodes.len());
    let input = to_cel(input, &mut budget)?;
    for (id, output) in mentioned_nodes {
        nodes_map.insert(
            Key::String(Arc::new(id.to_string())),
            to_cel(output, &mut budget)?,
        );
    }

    let mut context = Context::default();
    context.add_variable_from_value("input", input);
    context.add_variable_from_value(
        "nodes",
        CelValue::Map(CelMap {
            map: Arc::new(nodes_map),
        }),
    );
    match program.execute(&context) {
        Ok(CelValue::Bool(result)) => Ok(result),
        Ok(other) => Err(ConditionError::NotBoolean {
            found: type_name(&other),
        }),
        Err(error) => Err(ConditionError::Evaluation {
            reason: shorten(&error.to_string()),
        }),
    }
}

/// Checks that a condition compiles (its length, its templates, its CEL
/// syntax) without evaluating it, for validating a definition before it is
/// recorded.
pub fn check_condition_syntax(expression: &str) -> Result<(), String> {
    let source = prepare(expression).map_err(|e| e.to_string())?;
    compile(&source).map(drop).map_err(|e| e.to_string())
}

/// The node ids a condition reads (`nodes.fetch`, `nodes["my-node"]`, or
/// the older `{{nodes.fetch.status}}`), outside string literals, in order
/// of appearance, without repeats. An expression that does not compile
/// names none (its syntax error is reported on its own).
pub fn referenced_nodes(expression: &str) -> Vec<String> {
    let Ok(source) = prepare(expression) else {
        return Vec::new();
    };
    let bytes = source.as_bytes();
    let mut found: Vec<String> = Vec::new();
    let mut at = 0;
    while let Some(offset) = source[at..].find("nodes") {
        let start = at + offset;
        at = start + "nodes".len();
        let boundary_before = start == 0 || {
            let b = bytes[start - 1];
            !(b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
        };
        if !boundary_before || inside_string_literal(&source[..start]) {
            continue;
        }
        let rest = source[at..].trim_start();
        let id = if let Some(member) = rest.strip_prefix('.') {
            let member = member.trim_start();
            let end = member
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(member.len());
            member[..end].to_string()
        } else if let Some(index) = rest.strip_prefix('[') {
            let index = index.trim_start();
            match index.chars().next() {
                Some(quote @ ('"' | '\'')) => index[1..]
                    .find(quote)
                    .map(|end| index[1..1 + end].to_string())
                    .unwrap_or_default(),
                _ => String::new(),
            }
        } else {
            String::new()
        };
        if !id.is_empty() && !found.contains(&id) {
            found.push(id);
        }
    }
    found
}

/// The expression with the length checked and legacy templates rewritten.
fn prepare(expression: &str) -> Result<Cow<'_, str>, ConditionError> {
    if expression.len() > MAX_EXPRESSION_BYTES {
        return Err(ConditionError::TooLong {
            limit: MAX_EXPRESSION_BYTES,
        });
    }
    rewrite_templates(expression)
}

fn compile(source: &str) -> Result<Program, ConditionError> {
    Program::compile(source).map_err(|error| ConditionError::Syntax {
        reason: shorten(&error.to_string()),
    })
}

/// Rewrites `{{nodes.…}}` and `{{input…}}` templates into CEL references;
/// refuses every other template.
fn rewrite_templates(expression: &str) -> Result<Cow<'_, str>, ConditionError> {
    let mut rewritten = String::new();
    let mut copied = 0;
    for template in template_expressions(expression) {
        let (start, end) = template.span;
        if inside_string_literal(&expression[..start]) {
            return Err(ConditionError::TemplateInString {
                expression: template.expression.to_string(),
            });
        }
        let reference = match template.reference() {
            TemplateReference::Node { node, path } => {
                let mut reference = "nodes".to_string();
                push_segment(&mut reference, node, false);
                push_path(&mut reference, path);
                reference
            }
            TemplateReference::Input { path } => {
                let mut reference = "input".to_string();
                push_path(&mut reference, path);
                reference
            }
            TemplateReference::Secret { name } => {
                return Err(ConditionError::SecretInCondition {
                    name: name.to_string(),
                })
            }
            TemplateReference::Other { expression } => {
                return Err(ConditionError::UnsupportedTemplate {
                    expression: expression.to_string(),
                })
            }
        };
        rewritten.push_str(&expression[copied..start]);
        rewritten.push_str(&reference);
        copied = end;
    }
    if copied == 0 {
        return Ok(Cow::Borrowed(expression));
    }
    rewritten.push_str(&expression[copied..]);
    Ok(Cow::Owned(rewritten))
}

fn push_path(reference: &mut String, path: &str) {
    if !path.is_empty() {
        for segment in path.split('.') {
            push_segment(reference, segment, true);
        }
    }
}

/// Appends one path segment: `.name` for a CEL identifier, `[3]` for a
/// number (when numbers index), `["other-key"]` for anything else.
fn push_segment(reference: &mut String, segment: &str, numbers_index: bool) {
    if numbers_index && !segment.is_empty() && segment.bytes().all(|b| b.is_ascii_digit()) {
        if let Ok(index) = segment.parse::<i64>() {
            reference.push_str(&format!("[{index}]"));
            return;
        }
    }
    if is_cel_identifier(segment) {
        reference.push('.');
        reference.push_str(segment);
    } else {
        reference.push('[');
        reference.push_str(&Value::String(segment.to_string()).to_string());
        reference.push(']');
    }
}

/// True when `name` can follow a `.` in CEL: an identifier that is not a
/// reserved word.
fn is_cel_identifier(name: &str) -> bool {
    const RESERVED: [&str; 21] = [
        "true",
        "false",
        "null",
        "in",
        "as",
        "break",
        "const",
        "continue",
        "else",
        "for",
        "function",
        "if",
        "import",
        "let",
        "loop",
        "package",
        "namespace",
        "return",
        "var",
        "void",
        "while",
    ];
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !RESERVED.contains(&name)
}

/// True when the end of `prefix` is inside a CEL string literal: single or
/// double quotes, tripled or not, raw (`r"…"`) or with backslash escapes.
fn inside_string_literal(prefix: &str) -> bool {
    let bytes = prefix.as_bytes();
    let mut i = 0;
    // The open literal's delimiter (`"`, `'`, `"""` or `'''`) and whether
    // it is raw.
    let mut open: Option<(&[u8], bool)> = None;
    while i < bytes.len() {
        match open {
            None => {
                if bytes[i] == b'"' || bytes[i] == b'\'' {
                    let quote = bytes[i];
                    let triple = bytes.get(i..i + 3) == Some(&[quote, quote, quote][..]);
                    let raw = i > 0 && matches!(bytes[i - 1], b'r' | b'R');
                    let delimiter: &[u8] = match (quote, triple) {
                        (b'"', true) => b"\"\"\"",
                        (b'"', false) => b"\"",
                        (_, true) => b"'''",
                        (_, false) => b"'",
                    };
                    i += delimiter.len();
                    open = Some((delimiter, raw));
                    continue;
                }
                i += 1;
            }
            Some((delimiter, raw)) => {
                if !raw && bytes[i] == b'\\' {
                    i += 2;
                } else if bytes[i..].starts_with(delimiter) {
                    i += delimiter.len();
                    open = None;
                } else {
                    i += 1;
                }
            }
        }
    }
    open.is_some()
}

/// Converts JSON to a CEL value, spending `budget` by the data's size, so
/// that converting a huge value stops early. Integers become CEL `int`
/// (`uint` only past `i64`), so that `nodes.fetch.status == 200` compares
/// like with like.
fn to_cel(value: &Value, budget: &mut usize) -> Result<CelValue, ConditionError> {
    let mut spend = |bytes: usize| {
        *budget = budget
            .checked_sub(bytes)
            .ok_or(ConditionError::DataTooLarge {
                limit: MAX_CONDITION_DATA_BYTES,
            })?;
        Ok::<_, ConditionError>(())
    };
    Ok(match value {
        Value::Null => {
            spend(4)?;
            CelValue::Null
        }
        Value::Bool(b) => {
            spend(4)?;
            CelValue::Bool(*b)
        }
        Value::Number(number) => {
            spend(8)?;
            if let Some(i) = number.as_i64() {
                CelValue::Int(i)
            } else if let Some(u) = number.as_u64() {
                CelValue::UInt(u)
            } else {
                CelValue::Float(number.as_f64().unwrap_or(f64::NAN))
            }
        }
        Value::String(text) => {
            spend(text.len() + 2)?;
            CelValue::String(Arc::new(text.clone()))
        }
        Value::Array(items) => {
            spend(2)?;
            let items = items
                .iter()
                .map(|item| to_cel(item, budget))
                .collect::<Result<Vec<_>, _>>()?;
            CelValue::List(Arc::new(items))
        }
        Value::Object(members) => {
            spend(2)?;
            let mut map = HashMap::with_capacity(members.len());
            for (key, member) in members {
                *budget =
                    budget
                        .checked_sub(key.len() + 3)
                        .ok_or(ConditionError::DataTooLarge {
                            limit: MAX_CONDITION_DATA_BYTES,
                        })?;
                map.insert(Key::String(Arc::new(key.clone())), to_cel(member, budget)?);
            }
            CelValue::Map(CelMap { map: Arc::new(map) })
        }
    })
}

/// The CEL name of a value's type, for the error of a non-boolean result.
fn type_name(value: &CelValue) -> &'static str {
    match value {
        CelValue::List(_) => "list",
        CelValue::Map(_) => "map",
        CelValue::Int(_) => "int",
        CelValue::UInt(_) => "uint",
        CelValue::Float(_) => "double",
        CelValue::String(_) => "string",
        CelValue::Bytes(_) => "bytes",
        CelValue::Bool(_) => "bool",
        CelValue::Null => "null",
        CelValue::Function(..) => "function",
        _ => "value",
    }
}

/// At most [`MAX_ERROR_CHARS`] characters of `text`.
fn shorten(text: &str) -> String {
    let mut short: String = text.chars().take(MAX_ERROR_CHARS).collect();
    if short.len() < text.len() {
        short.push('…');
    }
    short
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn nodes() -> BTreeMap<String, Value> {
        BTreeMap::from([
            (
                "fetch".to_string(),
                json!({
                    "status": 200,
                    "headers": {"content-type": "application/json"},
                    "body": {"items": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}], "kind": "invoice", "total": 12.5, "empty": null}
                }),
            ),
            ("my-node".to_string(), json!({"status": 404, "ok": false})),
            ("2nd".to_string(), json!({"n": 3})),
        ])
    }

    fn input() -> Value {
        json!({"roles": ["admin", "editor"], "user": {"name": "Ada", "age": 36}, "limit": 10})
    }

    fn eval(expression: &str) -> Result<bool, ConditionError> {
        evaluate_condition(expression, &input(), &nodes())
    }

    #[test]
    fn the_legacy_template_example_evaluates_like_cel() {
        assert_eq!(eval("{{nodes.fetch.status}} == 200"), Ok(true));
        assert_eq!(eval("nodes.fetch.status == 200"), Ok(true));
        assert_eq!(eval("{{ nodes.fetch.status }} == 201"), Ok(false));
    }

    #[test]
    fn both_branches_are_reachable() {
        assert_eq!(eval("nodes.fetch.status == 200"), Ok(true));
        assert_eq!(eval("nodes.fetch.status != 200"), Ok(false));
        assert_eq!(eval("true"), Ok(true));
        assert_eq!(eval("false"), Ok(false));
    }

    #[test]
    fn strings_and_numbers_compare() {
        assert_eq!(eval("nodes.fetch.body.kind == \"invoice\""), Ok(true));
        assert_eq!(eval("nodes.fetch.body.kind < 'j'"), Ok(true));
        assert_eq!(
            eval("input.user.age >= 18 && input.user.age < 40"),
            Ok(true)
        );
        assert_eq!(eval("nodes.fetch.body.total > 12.0"), Ok(true));
        assert_eq!(eval("input.limit * 2 == 20"), Ok(true));
        assert_eq!(eval("nodes.fetch.body.items[0].id + 1 == 2"), Ok(true));
    }

    #[test]
    fn a_string_equals_no_number_and_cannot_be_ordered_against_one() {
        // CEL's equality across types is false; ordering across types has no
        // overload and fails.
        assert_eq!(eval("nodes.fetch.body.kind == 3"), Ok(false));
        assert_eq!(eval("nodes.fetch.status == 200.0"), Ok(true));
        assert!(matches!(
            eval("nodes.fetch.body.kind > 3"),
            Err(ConditionError::Evaluation { .. })
        ));
    }

    #[test]
    fn size_and_in_work_on_lists_maps_and_strings() {
        assert_eq!(eval("size(nodes.fetch.body.items) == 2"), Ok(true));
        assert_eq!(eval("nodes.fetch.body.items.size() > 1"), Ok(true));
        assert_eq!(eval("size(input.user.name) == 3"), Ok(true));
        assert_eq!(eval("'admin' in input.roles"), Ok(true));
        assert_eq!(eval("'viewer' in input.roles"), Ok(false));
        assert_eq!(eval("'kind' in nodes.fetch.body"), Ok(true));
        assert_eq!(eval("'fetch' in nodes"), Ok(true));
    }

    #[test]
    fn macros_work_over_lists() {
        assert_eq!(
            eval("nodes.fetch.body.items.exists(i, i.name == 'b')"),
            Ok(true)
        );
        assert_eq!(eval("nodes.fetch.body.items.all(i, i.id > 0)"), Ok(true));
        assert_eq!(
            eval("nodes.fetch.body.items.filter(i, i.id > 1).size() == 1"),
            Ok(true)
        );
    }

    #[test]
    fn nested_access_and_index_access_work() {
        assert_eq!(
            eval("nodes.fetch.headers['content-type'] == 'application/json'"),
            Ok(true)
        );
        assert_eq!(eval("nodes['my-node'].status == 404"), Ok(true));
        assert_eq!(eval("!nodes[\"my-node\"].ok"), Ok(true));
        assert_eq!(eval("nodes['2nd'].n == 3"), Ok(true));
        assert_eq!(eval("nodes.fetch.body.empty == null"), Ok(true));
    }

    #[test]
    fn a_missing_field_is_an_evaluation_error_not_false() {
        for expression in [
            "nodes.fetch.body.nope == 1",
            "nodes.never.status == 200",
            "input.user.email == 'x'",
            "nodes.fetch.body.items[5].id == 1",
        ] {
            assert!(
                matches!(eval(expression), Err(ConditionError::Evaluation { .. })),
                "{expression}: {:?}",
                eval(expression)
            );
        }
    }

    #[test]
    fn presence_can_be_tested_before_reading() {
        assert_eq!(
            eval("has(nodes.fetch.body.nope) && nodes.fetch.body.nope == 1"),
            Ok(false)
        );
        assert_eq!(eval("has(nodes.fetch.body.kind)"), Ok(true));
        assert_eq!(
            eval("'never' in nodes && nodes.never.status == 200"),
            Ok(false)
        );
    }

    #[test]
    fn a_non_boolean_result_is_an_error() {
        assert_eq!(
            eval("nodes.fetch.status"),
            Err(ConditionError::NotBoolean { found: "int" })
        );
        assert_eq!(
            eval("nodes.fetch.body.kind"),
            Err(ConditionError::NotBoolean { found: "string" })
        );
        assert_eq!(
            eval("nodes.fetch.body.items"),
            Err(ConditionError::NotBoolean { found: "list" })
        );
    }

    #[test]
    fn an_unknown_variable_is_an_evaluation_error() {
        assert!(matches!(
            eval("env.HOME == '/root'"),
            Err(ConditionError::Evaluation { .. })
        ));
    }

    #[test]
    fn legacy_templates_are_rewritten_to_cel_references() {
        for (legacy, rewritten) in [
            ("{{nodes.fetch.status}} == 200", "nodes.fetch.status == 200"),
            (
                "{{nodes.my-node.status}} == 404",
                r#"nodes["my-node"].status == 404"#,
            ),
            (
                "{{nodes.fetch.body.items.0.id}} == 1",
                "nodes.fetch.body.items[0].id == 1",
            ),
            (
                "{{nodes.fetch.headers.content-type}} == 'x'",
                r#"nodes.fetch.headers["content-type"] == 'x'"#,
            ),
            (
                "{{nodes.2nd.n}} > {{input.limit}}",
                r#"nodes["2nd"].n > input.limit"#,
            ),
            ("size({{input}}) > 0", "size(input) > 0"),
            (
                "{{nodes.fetch.body.in}} == 1",
                r#"nodes.fetch.body["in"] == 1"#,
            ),
            ("no templates", "no templates"),
        ] {
            assert_eq!(rewrite_templates(legacy).unwrap(), rewritten, "{legacy}");
        }
    }

    #[test]
    fn rewritten_legacy_conditions_evaluate() {
        assert_eq!(eval("{{nodes.my-node.status}} == 404"), Ok(true));
        assert_eq!(eval("{{nodes.fetch.body.items.1.name}} == 'b'"), Ok(true));
        assert_eq!(eval("{{nodes.2nd.n}} < {{input.limit}}"), Ok(true));
        assert_eq!(
            eval("{{nodes.fetch.headers.content-type}} == 'application/json'"),
            Ok(true)
        );
    }

    #[test]
    fn a_secret_in_a_condition_is_an_error() {
        assert_eq!(
            eval("{{secrets.TOKEN}} == 'x'"),
            Err(ConditionError::SecretInCondition {
                name: "TOKEN".into()
            })
        );
        assert!(check_condition_syntax("{{secrets.TOKEN}} == 'x'").is_err());
    }

    #[test]
    fn other_templates_are_errors() {
        assert!(matches!(
            eval("{{ now }} > 3"),
            Err(ConditionError::UnsupportedTemplate { .. })
        ));
    }

    #[test]
    fn a_template_inside_a_string_literal_is_an_error() {
        for expression in [
            "\"{{nodes.fetch.status}}\" == '200'",
            "'x{{nodes.fetch.status}}' == 'x200'",
            "r'{{nodes.fetch.status}}' == ''",
            "'''a\n{{nodes.fetch.status}}''' == ''",
            r#""it\"s {{nodes.fetch.status}}" == ''"#,
        ] {
            assert!(
                matches!(
                    eval(expression),
                    Err(ConditionError::TemplateInString { .. })
                ),
                "{expression}"
            );
        }
        // After a closed literal, a template is a reference again.
        assert_eq!(
            eval(r#"'a"b' != '' && {{nodes.fetch.status}} == 200"#),
            Ok(true)
        );
        assert_eq!(
            eval(r#"'it\'s' != '' && {{nodes.fetch.status}} == 200"#),
            Ok(true)
        );
    }

    #[test]
    fn an_expression_over_the_length_limit_is_refused() {
        let long = format!("true || {}", "false || ".repeat(MAX_EXPRESSION_BYTES / 9));
        assert!(long.len() > MAX_EXPRESSION_BYTES);
        assert_eq!(
            eval(&long),
            Err(ConditionError::TooLong {
                limit: MAX_EXPRESSION_BYTES
            })
        );
        assert!(check_condition_syntax(&long).is_err());
    }

    #[test]
    fn data_over_the_size_limit_is_refused() {
        let big = BTreeMap::from([(
            "big".to_string(),
            json!({"text": "x".repeat(MAX_CONDITION_DATA_BYTES)}),
        )]);
        assert_eq!(
            evaluate_condition("size(nodes.big.text) > 0", &Value::Null, &big),
            Err(ConditionError::DataTooLarge {
                limit: MAX_CONDITION_DATA_BYTES
            })
        );
    }

    #[test]
    fn only_the_nodes_an_expression_names_are_handed_in() {
        // The big output is not named, so it costs nothing.
        let mut many = nodes();
        many.insert(
            "big".to_string(),
            json!({"text": "x".repeat(MAX_CONDITION_DATA_BYTES)}),
        );
        assert_eq!(
            evaluate_condition("nodes.fetch.status == 200", &input(), &many),
            Ok(true)
        );
        // Four nodes have run; the expression names one.
        assert_eq!(
            evaluate_condition("'fetch' in nodes && size(nodes) == 1", &input(), &many),
            Ok(true)
        );
    }

    #[test]
    fn syntax_is_checked_without_evaluating() {
        assert_eq!(check_condition_syntax("nodes.fetch.status == 200"), Ok(()));
        assert_eq!(
            check_condition_syntax("{{nodes.fetch.status}} == 200"),
            Ok(())
        );
        // Compiles; it would fail only when run.
        assert_eq!(check_condition_syntax("nodes.never.x == 1"), Ok(()));
        let error = check_condition_syntax("nodes.fetch.status == ").unwrap_err();
        assert!(error.contains("not a valid expression"), "{error}");
        assert!(check_condition_syntax("(((").is_err());
    }

    #[test]
    fn the_nodes_a_condition_reads_are_found_in_every_form() {
        assert_eq!(
            referenced_nodes(
                r#"nodes.fetch.status == 200 && nodes["my-node"].ok && 'nodes.x' != ''"#
            ),
            ["fetch", "my-node"]
        );
        assert_eq!(referenced_nodes("{{nodes.fetch.status}} == 200"), ["fetch"]);
        assert_eq!(
            referenced_nodes("input.nodes == 1 && mynodes.a"),
            Vec::<String>::new()
        );
        assert_eq!(
            referenced_nodes("nodes . a == nodes['b'] && nodes.a"),
            ["a", "b"]
        );
    }

    #[test]
    fn large_integers_and_floats_convert() {
        let data = json!({"big": u64::MAX, "neg": -5, "f": 0.5});
        assert_eq!(
            evaluate_condition(
                "input.big == 18446744073709551615u && input.neg < 0 && input.f == 0.5",
                &data,
                &BTreeMap::<String, Value>::new()
            ),
            Ok(true)
        );
    }
}
