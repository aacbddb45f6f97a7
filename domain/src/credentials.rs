//! Literal credentials: how to tell them, and how to take them out of a
//! URL. The read side (`toolhub-projections`) redacts what people read
//! with these rules, and the engine what it records of an `http` step, so
//! both agree on what a credential is.

use std::borrow::Cow;

/// What replaces a redacted value.
pub const REDACTED: &str = "[redacted]";

/// True when a header, parameter, flag or variable name says its value is
/// a credential.
pub fn names_a_credential(name: &str) -> bool {
    let name = name.trim_start_matches('-').to_ascii_lowercase();
    const WORDS: [&str; 12] = [
        "auth",
        "key",
        "token",
        "secret",
        "password",
        "passwd",
        "pwd",
        "cookie",
        "session",
        "signature",
        "credential",
        "bearer",
    ];
    WORDS.iter().any(|w| name.contains(w)) || matches!(name.as_str(), "sig" | "pass" | "code")
}

/// `text` with the credentials of every URL in it redacted: the userinfo
/// (`https://[redacted]@host`) and the values of query parameters named
/// like credentials. Works on the text, so URLs with `{{…}}` templates,
/// which no URL parser accepts, are redacted too.
pub fn redact_url(text: &str) -> Cow<'_, str> {
    let Some(scheme_end) = text.find("://") else {
        return Cow::Borrowed(text);
    };
    let authority_start = scheme_end + 3;
    let rest = &text[authority_start..];
    let authority_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_len];
    let mut out = String::with_capacity(text.len());
    out.push_str(&text[..authority_start]);
    match authority.rfind('@') {
        Some(at)
            if !authority[..at]
                .split(':')
                .all(|part| part.is_empty() || only_references(part)) =>
        {
            out.push_str(REDACTED);
            out.push_str(&authority[at..]);
        }
        _ => out.push_str(authority),
    }
    let after = &rest[authority_len..];
    let (path, query_and_fragment) = match after.find('?') {
        Some(q) => (&after[..q], Some(&after[q + 1..])),
        None => (after, None),
    };
    out.push_str(path);
    if let Some(query_and_fragment) = query_and_fragment {
        let (query, fragment) = match query_and_fragment.find('#') {
            Some(f) => (&query_and_fragment[..f], Some(&query_and_fragment[f..])),
            None => (query_and_fragment, None),
        };
        out.push('?');
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((name, value)) if names_a_credential(name) && !only_references(value) => {
                    format!("{name}={REDACTED}")
                }
                _ => pair.to_string(),
            })
            .collect();
        out.push_str(&pairs.join("&"));
        if let Some(fragment) = fragment {
            out.push_str(fragment);
        }
    }
    if out == text {
        Cow::Borrowed(text)
    } else {
        Cow::Owned(out)
    }
}

/// True when every non-space character of `s` sits inside a `{{ … }}`
/// reference, or the only literal text is a scheme word such as `Bearer`.
pub fn only_references(s: &str) -> bool {
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
