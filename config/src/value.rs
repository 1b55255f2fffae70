//! Leaf values that are written as text and parsed: durations and secrets.
//!
//! A [`DurationValue`] never fails deserialization; it keeps the parse error so
//! that validation can report it next to every other problem in the file.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use zeroize::Zeroizing;

/// A duration written with units (`"30s"`, `"15m"`, `"250ms"`, `"1h 30m"`).
#[derive(Clone, PartialEq, Eq)]
pub struct DurationValue {
    value: Duration,
    /// Set when the text did not parse; `value` is then zero.
    error: Option<String>,
}

impl DurationValue {
    pub const fn from_secs(secs: u64) -> Self {
        Self { value: Duration::from_secs(secs), error: None }
    }

    pub fn get(&self) -> Duration {
        self.value
    }

    pub fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }

    /// Parses a duration with units; an invalid one carries its error.
    pub fn parse(text: &str) -> Self {
        match humantime::parse_duration(text.trim()) {
            Ok(value) => Self { value, error: None },
            Err(e) => Self {
                value: Duration::ZERO,
                error: Some(format!(
                    "{text:?} is not a duration ({e}); write it with units, e.g. \"30s\" or \"15m\""
                )),
            },
        }
    }
}

impl fmt::Debug for DurationValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.error {
            None => write!(f, "{:?}", self.value),
            Some(e) => write!(f, "invalid({e})"),
        }
    }
}

impl<'de> Deserialize<'de> for DurationValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Number(i64),
        }
        Ok(match Raw::deserialize(d)? {
            Raw::Text(t) => Self::parse(&t),
            Raw::Number(n) => Self {
                value: Duration::ZERO,
                error: Some(format!("{n} has no unit; write a duration with units, e.g. \"{n}s\"")),
            },
        })
    }
}

/// Where a secret comes from: `env:VAR` or `file:PATH`. The secret itself is never
/// written in the configuration file, so the file can be reviewed and versioned.
#[derive(Clone, PartialEq, Eq)]
pub enum Secret {
    Env(String),
    File(String),
    /// Text that is neither; reported by validation.
    Invalid(String),
}

impl Secret {
    /// Reads the secret. The error names the variable or file, never the value.
    pub fn resolve(&self) -> Result<SecretString, String> {
        match self {
            Secret::Env(var) => match std::env::var(var) {
                Ok(v) if !v.is_empty() => Ok(SecretString::new(v)),
                Ok(_) => Err(format!("environment variable {var} is empty")),
                Err(_) => Err(format!("environment variable {var} is not set")),
            },
            Secret::File(path) => match std::fs::read_to_string(path) {
                Ok(v) => {
                    let v = v.trim_end_matches(['\n', '\r']).to_string();
                    if v.is_empty() {
                        Err(format!("file {path} is empty"))
                    } else {
                        Ok(SecretString::new(v))
                    }
                }
                Err(e) => Err(format!("cannot read file {path}: {e}")),
            },
            Secret::Invalid(_) => {
                Err("a secret must be written as \"env:VARIABLE\" or \"file:/path\", never inline"
                    .into())
            }
        }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Secret::Env(v) => write!(f, "env:{v}"),
            Secret::File(p) => write!(f, "file:{p}"),
            // May be a secret pasted inline by mistake.
            Secret::Invalid(_) => f.write_str("[redacted]"),
        }
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Ok(if let Some(var) = text.strip_prefix("env:").filter(|v| !v.is_empty()) {
            Secret::Env(var.to_string())
        } else if let Some(path) = text.strip_prefix("file:").filter(|p| !p.is_empty()) {
            Secret::File(path.to_string())
        } else {
            Secret::Invalid(text)
        })
    }
}

/// A secret's text: zeroized on drop, `[redacted]` in `Debug`.
#[derive(Clone)]
pub struct SecretString(Zeroizing<String>);

impl SecretString {
    pub fn new(s: String) -> Self {
        Self(Zeroizing::new(s))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}
