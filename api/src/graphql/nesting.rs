//! A bound on how deeply a GraphQL document nests, checked on its text
//! before async-graphql parses it.
//!
//! async-graphql's parser, and its handling of literal values after it,
//! recurse once per level of `{`, `[` and `(`. A literal nested a few hundred
//! to a few thousand levels deep (far inside the 1 MiB body limit, or a
//! WebSocket message) overflowed a worker's stack, and a stack overflow
//! aborts the whole process. The depth and recursion limits are checked on
//! the parsed document: too late for that. So every door asks [`too_deep`]
//! before anything parses a document: `POST /graphql` answers such a
//! document with [`too_deep_error`], and `/graphql/ws` answers a `subscribe`
//! that carries one with an `error` message for its id. (This is not an
//! async-graphql extension: an extension, even one that only looks at
//! parsing, puts every field's resolution through the extension chain.)
//! A JSON body is safe already (serde_json stops at 128 levels), so
//! variables need no check of their own.

use crate::error::ApiError;

/// The deepest nesting of `{`, `[` and `(` a document may have: far more
/// than a selection within the depth limit and any real literal need, and
/// far less than what overflows a stack.
pub const MAX_NESTING: usize = 128;

/// How a document nested deeper than [`MAX_NESTING`] is refused.
pub fn too_deep_error() -> ApiError {
    ApiError::validation(
        "query",
        format!("the document nests deeper than {MAX_NESTING} levels"),
    )
}

/// Whether a document nests deeper than [`MAX_NESTING`]. Whatever parses a
/// document asks this first.
pub fn too_deep(query: &str) -> bool {
    nesting(query) > MAX_NESTING
}

/// The deepest nesting of `{`, `[` and `(` in a document, outside strings,
/// block strings and comments. It only has to be right for documents that
/// parse: on anything else the parser answers, as before.
fn nesting(query: &str) -> usize {
    let bytes = query.as_bytes();
    let (mut depth, mut deepest, mut i) = (0usize, 0usize, 0usize);
    while i < bytes.len() {
        match bytes[i] {
            b'#' => {
                while i < bytes.len() && bytes[i] != b'\n' && bytes[i] != b'\r' {
                    i += 1;
                }
            }
            b'"' if bytes[i..].starts_with(b"\"\"\"") => {
                // A block string ends at the first `"""` that is not `\"""`.
                i += 3;
                while i < bytes.len() && !bytes[i..].starts_with(b"\"\"\"") {
                    i += if bytes[i..].starts_with(b"\\\"\"\"") {
                        4
                    } else {
                        1
                    };
                }
                i += 3;
            }
            b'"' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' && bytes[i] != b'\n' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            b'{' | b'[' | b'(' => {
                depth += 1;
                deepest = deepest.max(depth);
                i += 1;
            }
            b'}' | b']' | b')' => {
                depth = depth.saturating_sub(1);
                i += 1;
            }
            _ => i += 1,
        }
    }
    deepest
}

#[cfg(test)]
mod tests {
    use super::nesting;

    #[test]
    fn nesting_counts_braces_brackets_and_parentheses() {
        assert_eq!(nesting("{ me { sub } }"), 2);
        assert_eq!(nesting("mutation { a(input: {x: [[1]]}) { b } }"), 5);
        assert_eq!(nesting(""), 0);
    }

    #[test]
    fn nesting_skips_strings_block_strings_and_comments() {
        assert_eq!(nesting(r#"{ a(s: "{{[[((\"") }"#), 2);
        assert_eq!(nesting("{ a(s: \"\"\"{{ \\\"\"\" [[\"\"\") }"), 2);
        assert_eq!(nesting("# {{{{{{\n{ a }"), 1);
    }
}
