//! What must never be recorded: secret values, and the personal data a
//! workflow's masking rules name.
//!
//! Every step's input, output and error message goes through a [`Masker`]
//! before it becomes an event, because events are immutable: what is
//! recorded stays in the log (and its backups) for good.
//!
//! # Secrets
//!
//! Every value of a secret the step used is replaced by `***` anywhere
//! inside any string, object keys included, and so is its JSON-escaped form
//! (a secret with a `"` or `\` appears escaped when a response embeds it in
//! JSON text). Where occurrences of several secrets overlap, their union is
//! masked, so no piece of either survives. Empty values are ignored; every
//! other value is masked however short, since a leaked secret is worse
//! than an over-masked output.
//!
//! # Personal data
//!
//! A workflow's `"masking"` object ([`MaskingRules::parse`]) names:
//!
//! - `paths`: RFC 9535 JSONPath queries (`$.customer.email`, `$..ssn`),
//!   evaluated against each recorded value on its own (a step's input, its
//!   output, the execution's input); whatever they select becomes `"***"`.
//! - `detectors`: patterns replaced by `***` inside any string (keys
//!   included), wherever they occur: `email`; `card` (13 to 19 digits,
//!   spaces or dashes allowed, only when the Luhn check passes); `iban`
//!   (only when the mod-97 check passes); `phone` (E.164 such as
//!   `+14155552671`, or grouped forms such as `+44 20 7946 0958`,
//!   `(415) 555-2671`, `415-555-2671`, with 8 to 15 digits; a bare run of
//!   digits without `+`, a date, an IPv4 address or a number grouped in
//!   thousands is not taken for a phone number).
//!
//! Detectors are heuristics: they catch the common forms and let plain
//! numbers through; paths are the precise tool.
//!
//! This module must never fail open: where it cannot tell (a pattern that
//! did not compile), it masks the whole string.

use regex::Regex;
use serde_json::{Map, Value};
use std::fmt;
use std::sync::LazyLock;
use zeroize::Zeroizing;

pub use toolhub_domain::definition::masking::{
    Detector, MaskingRules, MAX_MASKING_PATHS, MAX_MASKING_PATH_LEN,
};

/// What replaces a masked value or match.
pub const MASK: &str = "***";

/// Masks what one step must not record: the secret values it used and the
/// workflow's personal-data rules.
#[derive(Clone)]
pub struct Masker {
    /// The secret values and their JSON-escaped forms, without empties and
    /// repeats; wiped from memory when the masker is dropped.
    secrets: Vec<Zeroizing<String>>,
    /// The workflow's personal-data rules.
    rules: MaskingRules,
}

/// Shows how much is masked, never what.
impl fmt::Debug for Masker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Masker")
            .field("secrets", &self.secrets.len())
            .field("rules", &self.rules)
            .finish()
    }
}

impl Masker {
    /// A masker for the given secret values (those a step used; see
    /// [`Secrets::values_of`](crate::template::Secrets::values_of)) and
    /// personal-data rules.
    pub fn new<'a>(secret_values: impl IntoIterator<Item = &'a str>, rules: &MaskingRules) -> Self {
        let mut secrets: Vec<Zeroizing<String>> = Vec::new();
        for value in secret_values.into_iter().filter(|v| !v.is_empty()) {
            let escaped = Zeroizing::new(escape_json(value));
            for needle in [Zeroizing::new(value.to_string()), escaped] {
                if !secrets.contains(&needle) {
                    secrets.push(needle);
                }
            }
        }
        Self {
            secrets,
            rules: rules.clone(),
        }
    }

    /// Masks `value` in place: first the paths (on the value as it is), then
    /// secrets and detectors in every string and key.
    pub fn mask(&self, value: &mut Value) {
        for path in self.rules.compiled() {
            let pointers: Vec<String> = path
                .query_located(value)
                .locations()
                .map(|location| location.to_json_pointer())
                .collect();
            for pointer in pointers {
                // A match inside an earlier match is already gone.
                if let Some(target) = value.pointer_mut(&pointer) {
                    *target = Value::String(MASK.to_string());
                }
            }
        }
        if !self.secrets.is_empty() || !self.rules.detectors().is_empty() {
            self.mask_strings(value);
        }
    }

    /// Masks secrets and detected personal data in a text (an error
    /// message, a log line).
    pub fn mask_text(&self, text: &str) -> String {
        self.masked(text).unwrap_or_else(|| text.to_string())
    }

    fn mask_strings(&self, value: &mut Value) {
        match value {
            Value::String(text) => {
                if let Some(masked) = self.masked(text) {
                    *text = masked;
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|item| self.mask_strings(item)),
            Value::Object(members) => {
                let keys_change = members.keys().any(|key| self.masked(key).is_some());
                if keys_change {
                    // Keys that mask to the same text collapse into one
                    // member; the masked data is gone either way.
                    let old = std::mem::take(members);
                    *members = old
                        .into_iter()
                        .map(|(key, member)| (self.mask_text(&key), member))
                        .collect::<Map<_, _>>();
                }
                members
                    .values_mut()
                    .for_each(|member| self.mask_strings(member));
            }
            _ => {}
        }
    }

    /// The masked text, or `None` when nothing in it is masked.
    fn masked(&self, text: &str) -> Option<String> {
        let mut current: Option<String> = None;
        if !self.secrets.is_empty() {
            let spans = secret_spans(text, &self.secrets);
            if !spans.is_empty() {
                current = Some(replace_spans(text, spans));
            }
        }
        for detector in self.rules.detectors() {
            let source = current.as_deref().unwrap_or(text);
            if let Some(masked) = detect(*detector, source) {
                current = Some(masked);
            }
        }
        current
    }
}

/// A string as it appears inside a JSON string literal, without the quotes.
fn escape_json(value: &str) -> String {
    let quoted = Value::String(value.to_string()).to_string();
    quoted[1..quoted.len() - 1].to_string()
}

/// Every occurrence of every needle, overlapping ones included, as byte
/// ranges.
fn secret_spans(text: &str, needles: &[Zeroizing<String>]) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    for needle in needles {
        let mut from = 0;
        while let Some(found) = text.get(from..).and_then(|rest| rest.find(needle.as_str())) {
            let start = from + found;
            spans.push((start, start + needle.len()));
            // Step one character on, so that an occurrence overlapping this
            // one ("aa" twice in "aaa") is found too.
            from = start + text[start..].chars().next().map_or(1, char::len_utf8);
        }
    }
    spans
}

/// Replaces the union of `spans` by [`MASK`]: overlapping or touching spans
/// become one mask, so no piece of any of them is left.
fn replace_spans(text: &str, mut spans: Vec<(usize, usize)>) -> String {
    spans.sort_unstable();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut iter = spans.into_iter().peekable();
    while let Some((start, mut end)) = iter.next() {
        while let Some(&(next_start, next_end)) = iter.peek() {
            if next_start > end {
                break;
            }
            end = end.max(next_end);
            iter.next();
        }
        out.push_str(&text[copied..start]);
        out.push_str(MASK);
        copied = end;
    }
    out.push_str(&text[copied..]);
    out
}

/// A compiled pattern, or `None` if it failed to compile (the tests make
/// sure none does); callers then mask the whole string.
type Pattern = LazyLock<Option<Regex>>;

static EMAIL: Pattern = LazyLock::new(|| {
    Regex::new(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*\.[A-Za-z]{2,}").ok()
});

/// 13 to 19 digits, single spaces or dashes between them, not inside a
/// longer run of digits.
static CARD: Pattern = LazyLock::new(|| Regex::new(r"\b\d(?:[ -]?\d){12,18}\b").ok());

/// Country code, check digits, then 11 to 30 letters or digits, in groups
/// of four when spaced.
static IBAN: Pattern = LazyLock::new(|| {
    Regex::new(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b").ok()
});

/// An optional `+` and country code, an optional area code in brackets,
/// then groups of digits separated by a space, dot or dash; the digit count
/// and the shapes that are not phone numbers are checked afterwards.
static PHONE: Pattern = LazyLock::new(|| {
    Regex::new(r"(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,5}\)[ .-]?)?\d+(?:[ .-]\d+)*").ok()
});

/// Dates (`2024-01-15`, `15.01.2024`, `01-15-2024`), possibly followed by
/// a time (`2024-01-15 10:30`), have the digit count of a phone number but
/// are not one.
static DATE: Pattern = LazyLock::new(|| {
    Regex::new(r"^(?:\d{4}[.-]\d{1,2}[.-]\d{1,2}|\d{1,2}[.-]\d{1,2}[.-]\d{2,4})(?:$|[ .-])").ok()
});

/// Numbers grouped in thousands (`10 000 000`, `1.234.567`).
static THOUSANDS: Pattern = LazyLock::new(|| Regex::new(r"^\d{1,3}(?:[ .]\d{3})+$").ok());

/// IPv4 addresses (`192.168.100.200`).
static IPV4: Pattern = LazyLock::new(|| Regex::new(r"^\d{1,3}(?:\.\d{1,3}){3}$").ok());

/// Whether a candidate match, found in a text at an offset, really is what
/// its detector looks for.
type Validator = fn(&str, &str, usize) -> bool;

/// Masks what `detector` finds in `text`, or `None` when it finds nothing.
fn detect(detector: Detector, text: &str) -> Option<String> {
    let (pattern, valid): (&Pattern, Validator) = match detector {
        Detector::Email => (&EMAIL, |_, _, _| true),
        Detector::Card => (&CARD, |candidate, _, _| is_card_number(candidate)),
        Detector::Iban => (&IBAN, |candidate, _, _| is_iban(candidate)),
        Detector::Phone => (&PHONE, is_phone_number),
    };
    let Some(regex) = pattern.as_ref() else {
        return Some(MASK.to_string());
    };
    let spans: Vec<(usize, usize)> = regex
        .find_iter(text)
        .filter(|m| valid(m.as_str(), text, m.start()))
        .map(|m| (m.start(), m.end()))
        .collect();
    (!spans.is_empty()).then(|| replace_spans(text, spans))
}

/// The Luhn check over the digits of a candidate card number.
fn is_card_number(candidate: &str) -> bool {
    let digits: Vec<u32> = candidate.chars().filter_map(|c| c.to_digit(10)).collect();
    if !(13..=19).contains(&digits.len()) {
        return false;
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(position, &digit)| {
            if position % 2 == 1 {
                let doubled = digit * 2;
                if doubled > 9 {
                    doubled - 9
                } else {
                    doubled
                }
            } else {
                digit
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// The ISO 13616 mod-97 check of a candidate IBAN.
fn is_iban(candidate: &str) -> bool {
    let compact: String = candidate.chars().filter(|c| !c.is_whitespace()).collect();
    if !(15..=34).contains(&compact.len()) {
        return false;
    }
    let (head, tail) = compact.split_at(4);
    let mut remainder: u32 = 0;
    for c in tail.chars().chain(head.chars()) {
        let Some(value) = c.to_digit(36) else {
            return false;
        };
        // Letters count as two digits (A = 10 … Z = 35).
        let (factor, value) = if value >= 10 {
            (100, value)
        } else {
            (10, value)
        };
        remainder = (remainder * factor + value) % 97;
    }
    remainder == 1
}

/// Whether a run of digits and separators found in `text` at `start` is a
/// phone number: 8 to 15 digits, written with a `+`, brackets or
/// separators, and not a date, an IPv4 address or a number in thousands.
fn is_phone_number(candidate: &str, text: &str, start: usize) -> bool {
    let digits = candidate.chars().filter(char::is_ascii_digit).count();
    if !(8..=15).contains(&digits) {
        return false;
    }
    // Part of a longer token (a word, a decimal, an identifier) is not a
    // phone number on its own.
    let before = text[..start].chars().next_back();
    let after = text[start + candidate.len()..].chars().next();
    let glued = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
    if glued(before) || glued(after) || before == Some('+') {
        return false;
    }
    let international = candidate.starts_with('+');
    let bracketed = candidate.contains('(');
    let grouped = candidate.contains([' ', '.', '-']);
    if !(international || bracketed || grouped) {
        // A bare run of digits is an id or an amount as often as a phone.
        return false;
    }
    if international || bracketed {
        return true;
    }
    // One dot and nothing else between the digits is a decimal number.
    let decimal = candidate.matches('.').count() == 1 && !candidate.contains([' ', '-']);
    let rejected = |pattern: &Pattern| pattern.as_ref().is_some_and(|r| r.is_match(candidate));
    !(decimal || rejected(&DATE) || rejected(&THOUSANDS) || rejected(&IPV4))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rules(detectors: &[&str]) -> MaskingRules {
        MaskingRules::parse(&json!({"detectors": detectors})).unwrap()
    }

    fn text_masked_by(detector: &str, text: &str) -> String {
        Masker::new([], &rules(&[detector])).mask_text(text)
    }

    #[test]
    fn every_pattern_compiles() {
        for pattern in [&EMAIL, &CARD, &IBAN, &PHONE, &DATE, &THOUSANDS, &IPV4] {
            assert!(pattern.is_some());
        }
    }

    #[test]
    fn a_secret_is_masked_anywhere_in_any_string_and_key() {
        let masker = Masker::new(["s3cr3t"], &MaskingRules::default());
        let mut value = json!({
            "header": "Bearer s3cr3t",
            "nested": [{"deep": "xs3cr3ts3cr3ty"}],
            "key-s3cr3t": 1,
            "n": 5
        });
        masker.mask(&mut value);
        assert_eq!(
            value,
            json!({
                "header": "Bearer ***",
                "nested": [{"deep": "x***y"}],
                "key-***": 1,
                "n": 5
            })
        );
    }

    #[test]
    fn a_secrets_json_escaped_form_is_masked_too() {
        let secret = "pa\"ss\\word\n";
        let masker = Masker::new([secret], &MaskingRules::default());
        let embedded = json!({"token": secret}).to_string();
        assert!(embedded.contains(r#"pa\"ss\\word\n"#));
        assert_eq!(masker.mask_text(&embedded), r#"{"token":"***"}"#);
        assert_eq!(
            masker.mask_text(&format!("raw {secret} end")),
            "raw *** end"
        );
    }

    #[test]
    fn overlapping_secrets_are_masked_whole() {
        let masker = Masker::new(["abcdef", "cdefgh"], &MaskingRules::default());
        assert_eq!(masker.mask_text("xxabcdefghyy"), "xx***yy");
        let masker = Masker::new(["tok", "token-123"], &MaskingRules::default());
        assert_eq!(masker.mask_text("a token-123 and tok"), "a *** and ***");
    }

    #[test]
    fn a_secret_overlapping_itself_is_masked_whole() {
        let masker = Masker::new(["aa"], &MaskingRules::default());
        assert_eq!(masker.mask_text("baaab"), "b***b");
    }

    #[test]
    fn empty_secret_values_are_ignored() {
        let masker = Masker::new(["", "x1"], &MaskingRules::default());
        assert_eq!(masker.mask_text("abc x1"), "abc ***");
    }

    #[test]
    fn secrets_with_multibyte_characters_are_masked() {
        let masker = Masker::new(["päss→word"], &MaskingRules::default());
        assert_eq!(masker.mask_text("é päss→word ü"), "é *** ü");
    }

    #[test]
    fn the_maskers_debug_shows_no_secret() {
        let masker = Masker::new(["hunter2"], &MaskingRules::default());
        assert!(!format!("{masker:?}").contains("hunter2"));
    }

    #[test]
    fn a_matching_path_becomes_a_mask() {
        let rules = MaskingRules::parse(
            &json!({"paths": ["$.customer.email", "$..ssn", "$.cards[*].number"]}),
        )
        .unwrap();
        let masker = Masker::new([], &rules);
        let mut value = json!({
            "customer": {"email": "ada@example.com", "name": "Ada", "ssn": "123-45-6789"},
            "family": [{"ssn": {"value": 1}}],
            "cards": [{"number": 1}, {"number": 2, "label": "x"}],
            "email": "kept@example.com"
        });
        masker.mask(&mut value);
        assert_eq!(
            value,
            json!({
                "customer": {"email": "***", "name": "Ada", "ssn": "***"},
                "family": [{"ssn": "***"}],
                "cards": [{"number": "***"}, {"number": "***", "label": "x"}],
                "email": "kept@example.com"
            })
        );
    }

    #[test]
    fn nested_path_matches_are_masked_once() {
        let rules = MaskingRules::parse(&json!({"paths": ["$..a"]})).unwrap();
        let mut value = json!({"a": {"a": 1}});
        Masker::new([], &rules).mask(&mut value);
        assert_eq!(value, json!({"a": "***"}));
    }

    #[test]
    fn emails_are_masked_inside_strings_and_keys() {
        let masker = Masker::new([], &rules(&["email"]));
        let mut value = json!({
            "note": "write to ada.lovelace+x@mail.example.co.uk today",
            "bob@example.org": true
        });
        masker.mask(&mut value);
        assert_eq!(value, json!({"note": "write to *** today", "***": true}));
        assert_eq!(
            text_masked_by("email", "not an email: a@b, @x.com"),
            "not an email: a@b, @x.com"
        );
    }

    #[test]
    fn card_numbers_are_masked_only_when_the_luhn_check_passes() {
        assert_eq!(
            text_masked_by("card", "card 4111 1111 1111 1111 ok"),
            "card *** ok"
        );
        assert_eq!(text_masked_by("card", "4111-1111-1111-1111"), "***");
        assert_eq!(text_masked_by("card", "amex 378282246310005."), "amex ***.");
        // One digit off fails the Luhn check.
        assert_eq!(
            text_masked_by("card", "4111 1111 1111 1112"),
            "4111 1111 1111 1112"
        );
        // Too short to be a card.
        assert_eq!(
            text_masked_by("card", "order 4242424242"),
            "order 4242424242"
        );
    }

    #[test]
    fn ibans_are_masked_only_when_the_mod_97_check_passes() {
        assert_eq!(
            text_masked_by("iban", "pay DE89 3704 0044 0532 0130 00 now"),
            "pay *** now"
        );
        assert_eq!(text_masked_by("iban", "GB82WEST12345698765432"), "***");
        // A wrong check digit.
        assert_eq!(
            text_masked_by("iban", "DE88 3704 0044 0532 0130 00"),
            "DE88 3704 0044 0532 0130 00"
        );
        assert_eq!(text_masked_by("iban", "AB12 CDEF GHIJ"), "AB12 CDEF GHIJ");
    }

    #[test]
    fn phone_numbers_in_common_forms_are_masked() {
        for (text, masked) in [
            ("call +14155552671 now", "call *** now"),
            ("+44 20 7946 0958", "***"),
            ("tel: (415) 555-2671.", "tel: ***."),
            ("415-555-2671", "***"),
            ("415.555.2671", "***"),
            ("020 7946 0958", "***"),
            ("+33 1 23 45 67 89", "***"),
        ] {
            assert_eq!(text_masked_by("phone", text), masked, "{text}");
        }
    }

    #[test]
    fn plain_numbers_dates_and_addresses_are_not_taken_for_phone_numbers() {
        for text in [
            "12345",
            "order 12345678",
            "id 4155552671",
            "2024-01-15",
            "15.01.2024",
            "01-15-2024",
            "at 2024-01-15 10:30",
            "192.168.100.200",
            "10 000 000",
            "1.234.567",
            "version 1.2.3",
            "555 1234",
            "3.14159265358",
            "abc-12345678",
        ] {
            assert_eq!(text_masked_by("phone", text), text, "{text}");
        }
    }

    #[test]
    fn detectors_apply_only_when_named() {
        let masker = Masker::new([], &rules(&["email"]));
        assert_eq!(
            masker.mask_text("+14155552671 a@b.example"),
            "+14155552671 ***"
        );
    }

    #[test]
    fn secrets_and_detectors_combine_in_text() {
        let masker = Masker::new(["tok-123"], &rules(&["email", "card"]));
        assert_eq!(
            masker.mask_text("failed for ada@x.example with tok-123 and 4111111111111111"),
            "failed for *** with *** and ***"
        );
    }

    #[test]
    fn masking_rules_are_parsed_and_shown_back() {
        let value = json!({"paths": ["$.customer.email", "$..ssn"], "detectors": ["phone", "email", "phone"]});
        let rules = MaskingRules::parse(&value).unwrap();
        assert_eq!(rules.paths(), ["$.customer.email", "$..ssn"]);
        assert_eq!(rules.detectors(), [Detector::Email, Detector::Phone]);
        assert_eq!(MaskingRules::parse(&rules.to_value()).unwrap(), rules);
        assert!(MaskingRules::parse(&Value::Null).unwrap().is_empty());
        assert!(MaskingRules::parse(&json!({})).unwrap().is_empty());
    }

    #[test]
    fn bad_masking_rules_are_refused_naming_the_entry() {
        for (value, expected) in [
            (json!("x"), "must be an object"),
            (json!({"fields": []}), "unknown field `fields`"),
            (json!({"paths": "$.a"}), "`masking.paths` must be an array"),
            (
                json!({"paths": ["$.a", 3]}),
                "`masking.paths[1]` must be a string",
            ),
            (
                json!({"paths": ["$.a", "$[?"]}),
                "`masking.paths[1]` (`$[?`) is not a valid JSONPath",
            ),
            (json!({"paths": ["customer.email"]}), "`masking.paths[0]`"),
            (
                json!({"detectors": ["email", "ssn"]}),
                "`masking.detectors[1]` (\"ssn\")",
            ),
            (json!({"detectors": [1]}), "`masking.detectors[0]` (1)"),
        ] {
            let error = MaskingRules::parse(&value).unwrap_err();
            assert!(error.contains(expected), "{value}: {error}");
        }
        let too_many: Vec<String> = (0..=MAX_MASKING_PATHS).map(|i| format!("$.a{i}")).collect();
        assert!(MaskingRules::parse(&json!({"paths": too_many})).is_err());
        let too_long = format!("$.{}", "a".repeat(MAX_MASKING_PATH_LEN));
        assert!(MaskingRules::parse(&json!({"paths": [too_long]})).is_err());
    }

    #[test]
    fn a_masker_without_secrets_or_rules_changes_nothing() {
        let masker = Masker::new([], &MaskingRules::default());
        let original = json!({"a": ["ada@example.com", "+14155552671"]});
        let mut value = original.clone();
        masker.mask(&mut value);
        assert_eq!(value, original);
    }
}
