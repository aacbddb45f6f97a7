//! How the pool reaches a server: the domain's [`Transport`] after the caller
//! has substituted every `{{secrets.NAME}}` reference.
//!
//! The pool never sees a template and never unseals a secret; it only holds
//! the values it was given, for as long as a connection needs them, and keeps
//! them out of `Debug`, errors and logs.

use super::error::McpCallError;
use sha2::{Digest, Sha256};
use std::fmt;
use toolhub_domain::mcp_server::Transport;

/// A server's transport with its secret references already substituted.
#[derive(Clone, PartialEq, Eq)]
pub struct ResolvedTransport {
    /// The configuration exactly as the connection uses it. Private, so that
    /// the only way in is [`ResolvedTransport::new`], which refuses templates.
    transport: Transport,
}

impl ResolvedTransport {
    /// Wraps a transport whose secret references have been substituted.
    ///
    /// Refuses a transport that still references a secret: connecting with the
    /// literal `{{secrets.NAME}}` would send the template text to the server
    /// and fail in a way that is hard to diagnose.
    pub fn new(transport: Transport) -> Result<Self, McpCallError> {
        let unresolved = transport.secret_references();
        if !unresolved.is_empty() {
            let names: Vec<String> = unresolved.into_iter().collect();
            return Err(McpCallError::InvalidConfig {
                reason: format!(
                    "the configuration still references the secret(s) {}; substitute them before connecting",
                    names.join(", ")
                ),
            });
        }
        Ok(Self { transport })
    }

    /// The configuration, with its values.
    pub fn transport(&self) -> &Transport {
        &self.transport
    }

    /// A digest of the whole configuration, values included, so that any
    /// change (a rotated secret, a new argument) keys a fresh connection.
    ///
    /// It is a SHA-256 digest rather than a fast hash because it stands in for
    /// secret values in the pool's keys; it is never logged or displayed.
    pub(crate) fn config_digest(&self) -> ConfigDigest {
        let mut hasher = Sha256::new();
        hash_fields(&mut hasher, &self.transport);
        ConfigDigest(hasher.finalize().into())
    }

    /// A label safe to log: the program name or the URL's scheme, host and
    /// port, with no path, query, user information, argument or value.
    pub(crate) fn safe_label(&self) -> String {
        match &self.transport {
            Transport::Stdio { command, .. } => format!("stdio `{command}`"),
            Transport::StreamableHttp { url, .. } => match reqwest::Url::parse(url) {
                Ok(parsed) => format!(
                    "{}://{}{}",
                    parsed.scheme(),
                    parsed.host_str().unwrap_or("?"),
                    parsed.port().map(|p| format!(":{p}")).unwrap_or_default()
                ),
                Err(_) => "an unparsable URL".to_string(),
            },
        }
    }
}

/// Feeds every field to the hasher, each tagged and length-prefixed so that
/// no two configurations produce the same input.
fn hash_fields(hasher: &mut Sha256, transport: &Transport) {
    let mut put = |tag: &str, text: &str| {
        hasher.update(tag.as_bytes());
        hasher.update((text.len() as u64).to_le_bytes());
        hasher.update(text.as_bytes());
    };
    match transport {
        Transport::Stdio { command, args, env } => {
            put("command", command);
            for arg in args {
                put("arg", arg);
            }
            for (key, value) in env {
                put("env-key", key);
                put("env-value", value);
            }
        }
        Transport::StreamableHttp { url, headers } => {
            put("url", url);
            for (name, value) in headers {
                put("header-name", name);
                put("header-value", value);
            }
        }
    }
}

impl fmt::Debug for ResolvedTransport {
    /// Shows the shape of the configuration but no value that may be secret:
    /// environment and header values, arguments, and the URL beyond its host.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.transport {
            Transport::Stdio { command, args, env } => f
                .debug_struct("Stdio")
                .field("command", command)
                .field("args", &format_args!("<{} argument(s)>", args.len()))
                .field("env", &RedactedKeys(env.keys()))
                .finish(),
            Transport::StreamableHttp { headers, .. } => f
                .debug_struct("StreamableHttp")
                .field("url", &format_args!("{}", self.safe_label()))
                .field("headers", &RedactedKeys(headers.keys()))
                .finish(),
        }
    }
}

/// Prints `{KEY: <redacted>, …}`.
struct RedactedKeys<'a, I: Iterator<Item = &'a String> + Clone>(I);

impl<'a, I: Iterator<Item = &'a String> + Clone> fmt::Debug for RedactedKeys<'a, I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.clone().map(|key| (key, RedactedValue)))
            .finish()
    }
}

/// Stands in for a value in `Debug` output.
struct RedactedValue;

impl fmt::Debug for RedactedValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(super::redact::REDACTED)
    }
}

/// The SHA-256 digest of a resolved configuration.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct ConfigDigest([u8; 32]);

impl fmt::Debug for ConfigDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Even a digest of a low-entropy secret can be brute-forced; show none.
        f.write_str("ConfigDigest(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn stdio(env_value: &str) -> Transport {
        Transport::Stdio {
            command: "node".into(),
            args: vec!["server.js".into(), "--token=arg-secret".into()],
            env: BTreeMap::from([("API_KEY".into(), env_value.into())]),
        }
    }

    #[test]
    fn debug_shows_no_environment_value_nor_argument() {
        let resolved = ResolvedTransport::new(stdio("env-secret-value")).unwrap();
        let shown = format!("{resolved:?}");
        assert!(shown.contains("API_KEY"), "{shown}");
        assert!(!shown.contains("env-secret-value"), "{shown}");
        assert!(!shown.contains("arg-secret"), "{shown}");
    }

    #[test]
    fn debug_shows_no_header_value_nor_url_path_or_query() {
        let resolved = ResolvedTransport::new(Transport::StreamableHttp {
            url: "https://user:pw@mcp.example.com:8443/t/path-secret/mcp?key=query-secret".into(),
            headers: BTreeMap::from([("Authorization".into(), "Bearer header-secret".into())]),
        })
        .unwrap();
        let shown = format!("{resolved:?}");
        assert!(shown.contains("https://mcp.example.com:8443"), "{shown}");
        assert!(shown.contains("Authorization"), "{shown}");
        for secret in ["header-secret", "path-secret", "query-secret", "pw"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
    }

    #[test]
    fn a_transport_that_still_references_a_secret_is_refused() {
        let error = ResolvedTransport::new(stdio("{{secrets.API_KEY}}")).unwrap_err();
        assert!(matches!(error, McpCallError::InvalidConfig { .. }));
        assert!(!error.is_retryable());
    }

    #[test]
    fn a_changed_value_changes_the_digest() {
        let first = ResolvedTransport::new(stdio("one")).unwrap();
        let again = ResolvedTransport::new(stdio("one")).unwrap();
        let rotated = ResolvedTransport::new(stdio("two")).unwrap();
        assert_eq!(first.config_digest(), again.config_digest());
        assert_ne!(first.config_digest(), rotated.config_digest());
    }
}
