//! Keeps configuration values out of error messages and log lines.
//!
//! The pool composes its own messages without ever formatting an environment
//! value, a header value or a URL. Text it does not control (a server's stderr,
//! a JSON-RPC error message, an rmcp or reqwest error that names the URL) goes
//! through a [`Redactor`] built from the resolved configuration before it is
//! logged or put into an error.

use toolhub_domain::mcp_server::Transport;

/// What a redacted value is replaced with.
pub(crate) const REDACTED: &str = "[redacted]";

/// Values shorter than this are replaced only where they stand as a whole
/// token, so that a short, common value such as `1` does not shred every
/// message it happens to occur in; longer values are replaced wherever they
/// occur.
const SHORT_VALUE_LEN: usize = 6;

/// The longest piece of foreign text kept in an error message or log line, in
/// bytes; the rest is cut off so that a chatty server cannot flood the log.
pub(crate) const MAX_FOREIGN_TEXT_LEN: usize = 500;

/// Replaces every configuration value that may hold a secret.
#[derive(Default)]
pub(crate) struct Redactor {
    /// Values replaced wherever they occur, longest first so that a value that
    /// contains another is replaced whole.
    long: Vec<String>,
    /// Values replaced only as whole tokens.
    short: Vec<String>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Listing the values would defeat the purpose.
        f.debug_struct("Redactor")
            .field("values", &(self.long.len() + self.short.len()))
            .finish()
    }
}

impl Redactor {
    /// A redactor for every environment value, every header value and the URL
    /// (whole, and its user information and query values) of `transport`.
    ///
    /// The command and its arguments are not redacted: they name programs and
    /// files, and hiding them would hide the usual reason a server does not
    /// start. Secrets belong in the environment or in headers.
    pub(crate) fn for_transport(transport: &Transport) -> Self {
        let mut values: Vec<String> = Vec::new();
        match transport {
            Transport::Stdio { env, .. } => values.extend(env.values().cloned()),
            Transport::StreamableHttp { url, headers } => {
                values.extend(headers.values().cloned());
                values.push(url.clone());
                if let Ok(parsed) = reqwest::Url::parse(url) {
                    values.push(parsed.as_str().to_string());
                    values.push(parsed.username().to_string());
                    values.extend(parsed.password().map(str::to_string));
                    values.extend(parsed.query_pairs().map(|(_, value)| value.into_owned()));
                    values.extend(parsed.query().map(str::to_string));
                }
            }
        }
        Self::from_values(values)
    }

    /// Sorts the values into long and short, dropping empty ones and repeats.
    fn from_values(values: Vec<String>) -> Self {
        let mut long = Vec::new();
        let mut short = Vec::new();
        for value in values {
            let value = value.trim().to_string();
            if value.is_empty() || long.contains(&value) || short.contains(&value) {
                continue;
            }
            if value.chars().count() >= SHORT_VALUE_LEN {
                long.push(value);
            } else {
                short.push(value);
            }
        }
        long.sort_by_key(|value| std::cmp::Reverse(value.len()));
        short.sort_by_key(|value| std::cmp::Reverse(value.len()));
        Self { long, short }
    }

    /// `text` with every value replaced by [`REDACTED`], cut to
    /// [`MAX_FOREIGN_TEXT_LEN`] bytes.
    pub(crate) fn redact(&self, text: &str) -> String {
        let mut text = text.to_string();
        for value in &self.long {
            if text.contains(value.as_str()) {
                text = text.replace(value.as_str(), REDACTED);
            }
        }
        for value in &self.short {
            text = replace_tokens(&text, value);
        }
        truncate(text, MAX_FOREIGN_TEXT_LEN)
    }
}

/// Replaces the occurrences of `value` that are not part of a longer word.
fn replace_tokens(text: &str, value: &str) -> String {
    let is_word = |c: char| c.is_alphanumeric() || c == '_';
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let mut previous: Option<char> = None;
    while let Some(at) = rest.find(value) {
        let before = rest[..at].chars().next_back().or(previous);
        let after = rest[at + value.len()..].chars().next();
        out.push_str(&rest[..at]);
        let standalone = !before.is_some_and(is_word) && !after.is_some_and(is_word);
        if standalone {
            out.push_str(REDACTED);
        } else {
            out.push_str(value);
        }
        previous = value.chars().next_back();
        rest = &rest[at + value.len()..];
    }
    out.push_str(rest);
    out
}

/// Cuts `text` to at most `max` bytes on a character boundary, marking the cut.
pub(crate) fn truncate(mut text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push('…');
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn stdio_with_env(pairs: &[(&str, &str)]) -> Transport {
        Transport::Stdio {
            command: "server".into(),
            args: vec![],
            env: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn a_long_environment_value_is_replaced_wherever_it_occurs() {
        let redactor = Redactor::for_transport(&stdio_with_env(&[("TOKEN", "s3cr3t-value")]));
        assert_eq!(
            redactor.redact("auth failed for xs3cr3t-valuex and s3cr3t-value"),
            "auth failed for x[redacted]x and [redacted]"
        );
    }

    #[test]
    fn a_short_environment_value_is_replaced_only_as_a_whole_token() {
        let redactor = Redactor::for_transport(&stdio_with_env(&[("DEBUG", "1")]));
        assert_eq!(
            redactor.redact("error 1 at line 12: 1"),
            "error [redacted] at line 12: [redacted]"
        );
    }

    #[test]
    fn header_values_and_the_url_query_are_replaced() {
        let transport = Transport::StreamableHttp {
            url: "https://mcp.example.com/mcp?key=querysecret".into(),
            headers: BTreeMap::from([("Authorization".into(), "Bearer tok-123456".into())]),
        };
        let redactor = Redactor::for_transport(&transport);
        let text = redactor.redact(
            "error sending request for url (https://mcp.example.com/mcp?key=querysecret): Bearer tok-123456 querysecret",
        );
        assert!(!text.contains("querysecret"), "{text}");
        assert!(!text.contains("tok-123456"), "{text}");
    }

    #[test]
    fn long_foreign_text_is_cut_on_a_character_boundary() {
        let redactor = Redactor::default();
        let text = redactor.redact(&"é".repeat(MAX_FOREIGN_TEXT_LEN));
        assert!(text.len() <= MAX_FOREIGN_TEXT_LEN + '…'.len_utf8());
        assert!(text.ends_with('…'));
    }
}
