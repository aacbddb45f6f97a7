//! A workflow's rules for masking personal data in what its executions
//! record (step inputs, outputs, errors): JSONPath queries and detectors.
//! Validated here with the rest of the definition; applied by the engine,
//! before anything is recorded, since events are immutable.

use serde_json::Value;
use serde_json_path::JsonPath;

/// The most paths a workflow's masking rules may name.
pub const MAX_MASKING_PATHS: usize = 100;

/// The longest masking path, in bytes.
pub const MAX_MASKING_PATH_LEN: usize = 1024;

/// A kind of personal data recognised inside strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Detector {
    /// E-mail addresses.
    Email,
    /// Telephone numbers (E.164 and common grouped forms, 8 to 15 digits).
    Phone,
    /// Payment card numbers that pass the Luhn check.
    Card,
    /// IBANs that pass the mod-97 check.
    Iban,
}

impl Detector {
    /// Every detector, in the order they are applied to a string: e-mail
    /// first (its local part may hold digits), cards and IBANs before
    /// phones (their digits would otherwise look like phone numbers).
    pub const ALL: [Detector; 4] = [Self::Email, Self::Card, Self::Iban, Self::Phone];

    /// The detector's name in a workflow definition.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Email => "email",
            Self::Phone => "phone",
            Self::Card => "card",
            Self::Iban => "iban",
        }
    }

    /// Parses a detector's name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|d| d.as_str() == name)
    }
}

/// A workflow's rules for masking personal data, validated.
#[derive(Debug, Clone, Default)]
pub struct MaskingRules {
    /// The JSONPath queries as written, kept to show and store them.
    paths: Vec<String>,
    /// The same queries compiled, in the same order (the engine applies
    /// them).
    compiled: Vec<JsonPath>,
    /// The detectors, without repeats, in the order they are applied.
    detectors: Vec<Detector>,
}

impl PartialEq for MaskingRules {
    fn eq(&self, other: &Self) -> bool {
        self.paths == other.paths && self.detectors == other.detectors
    }
}

impl MaskingRules {
    /// Reads a definition's `"masking"` object:
    /// `{"paths": ["$.customer.email", "$..ssn"], "detectors": ["email", "phone", "card", "iban"]}`.
    ///
    /// `null` and missing members mean no rules. The error names the bad
    /// entry.
    pub fn parse(masking: &Value) -> Result<MaskingRules, String> {
        let members = match masking {
            Value::Null => return Ok(Self::default()),
            Value::Object(members) => members,
            _ => return Err("`masking` must be an object with `paths` and `detectors`".into()),
        };
        if let Some(key) = members
            .keys()
            .find(|k| !matches!(k.as_str(), "paths" | "detectors"))
        {
            return Err(format!(
                "`masking` has an unknown field `{key}` (only `paths` and `detectors`)"
            ));
        }
        let list = |field: &str| -> Result<&[Value], String> {
            match members.get(field) {
                None | Some(Value::Null) => Ok(&[]),
                Some(Value::Array(items)) => Ok(items),
                Some(_) => Err(format!("`masking.{field}` must be an array of strings")),
            }
        };

        let paths = list("paths")?;
        if paths.len() > MAX_MASKING_PATHS {
            return Err(format!(
                "`masking.paths` has more than {MAX_MASKING_PATHS} entries"
            ));
        }
        let mut rules = Self::default();
        for (index, path) in paths.iter().enumerate() {
            let Value::String(path) = path else {
                return Err(format!("`masking.paths[{index}]` must be a string"));
            };
            if path.chars().any(char::is_control) {
                return Err(format!(
                    "`masking.paths[{index}]` must not contain control characters"
                ));
            }
            if path.len() > MAX_MASKING_PATH_LEN {
                return Err(format!(
                    "`masking.paths[{index}]` is longer than {MAX_MASKING_PATH_LEN} bytes"
                ));
            }
            let compiled = JsonPath::parse(path).map_err(|error| {
                format!("`masking.paths[{index}]` (`{path}`) is not a valid JSONPath: {error}")
            })?;
            rules.paths.push(path.clone());
            rules.compiled.push(compiled);
        }

        for (index, name) in list("detectors")?.iter().enumerate() {
            let detector = name.as_str().and_then(Detector::parse).ok_or_else(|| {
                format!(
                    "`masking.detectors[{index}]` ({name}) is not one of \"email\", \"phone\", \"card\", \"iban\""
                )
            })?;
            if !rules.detectors.contains(&detector) {
                rules.detectors.push(detector);
            }
        }
        rules
            .detectors
            .sort_by_key(|d| Detector::ALL.iter().position(|a| a == d));
        Ok(rules)
    }

    /// The compiled JSONPath queries, in the order written.
    pub fn compiled(&self) -> &[JsonPath] {
        &self.compiled
    }

    /// The JSONPath queries, as written.
    pub fn paths(&self) -> &[String] {
        &self.paths
    }

    /// The detectors, in the order they are applied.
    pub fn detectors(&self) -> &[Detector] {
        &self.detectors
    }

    /// True when the rules mask nothing.
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty() && self.detectors.is_empty()
    }

    /// The rules in the shape [`MaskingRules::parse`] reads.
    pub fn to_value(&self) -> Value {
        serde_json::json!({
            "paths": self.paths,
            "detectors": self.detectors.iter().map(Detector::as_str).collect::<Vec<_>>(),
        })
    }
}
