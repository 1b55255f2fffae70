//! `[keys]` and `[[columns]]`: the master key and the encrypted-column registry
//! (the seed's `encryption_keys` and `encrypted_columns`).

use serde::Deserialize;

pub use crate::logical_type::LogicalType;
use crate::value::Secret;

/// `[keys]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct Keys {
    /// The key-encryption key, 256 bits written as base64 (`openssl rand -base64
    /// 32`): `file:PATH` (mode 0600 or stricter) or `env:VAR`. Required once any
    /// column is registered. Needs a restart.
    pub master_key: Option<Secret>,
}

/// One `[[columns]]` entry: a column stored encrypted.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Column {
    /// `schema.table.column`, as Postgres names it (unquoted, lower case).
    pub name: String,
    /// The logical type the client sees; the column itself is `bytea`.
    #[serde(rename = "type")]
    pub logical_type: LogicalType,
    /// `deterministic` allows equality search; `randomized` allows none.
    pub mode: ColumnMode,
    /// Name of the data key (a row of `pgwarden.encryption_keys`).
    pub key: String,
    /// How sensitive the data is. Default `confidential`.
    #[serde(default)]
    pub classification: Classification,
    /// Frameworks the column falls under (e.g. `PCI_DSS`, `HIPAA`, `GDPR`).
    #[serde(default)]
    pub compliance: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColumnMode {
    /// AES-256-GCM-SIV with a nonce fixed per key: equal values, equal envelopes.
    Deterministic,
    /// AES-256-GCM with a random nonce: no search at all.
    Randomized,
}

/// The seed's data classification levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Classification {
    Public,
    Internal,
    #[default]
    Confidential,
    Restricted,
}

/// Compliance frameworks the seed knows; others are reported as typos.
pub const COMPLIANCE_FRAMEWORKS: &[&str] =
    &["PCI_DSS", "HIPAA", "SOC2", "GDPR", "CCPA", "ISO27001", "SOX", "NIST"];

impl Column {
    /// (schema, table, column), when `name` is well formed.
    pub fn parts(&self) -> Option<(&str, &str, &str)> {
        let mut it = self.name.split('.');
        let (s, t, c) = (it.next()?, it.next()?, it.next()?);
        it.next().is_none().then_some((s, t, c))
    }
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '$')
        && s.len() <= 63
}

/// Problems with `[keys]` and `[[columns]]`, each with its key path.
pub(crate) fn validate(keys: &Keys, columns: &[Column], problems: &mut Vec<String>) {
    let mut seen = std::collections::HashSet::new();
    for (i, c) in columns.iter().enumerate() {
        let at = format!("columns[{i}]");
        match c.parts() {
            Some(parts) if [parts.0, parts.1, parts.2].iter().all(|p| is_identifier(p)) => {}
            _ => problems.push(format!(
                "{at}.name: {:?} is not schema.table.column (lower-case identifiers)",
                c.name
            )),
        }
        if !seen.insert(c.name.as_str()) {
            problems.push(format!("{at}.name: {} is registered twice", c.name));
        }
        if !is_identifier(&c.key) {
            problems.push(format!("{at}.key: {:?} is not a valid key name", c.key));
        }
        for (j, f) in c.compliance.iter().enumerate() {
            if !COMPLIANCE_FRAMEWORKS.contains(&f.as_str()) {
                problems.push(format!(
                    "{at}.compliance[{j}]: unknown framework {f:?} (known: {})",
                    COMPLIANCE_FRAMEWORKS.join(", ")
                ));
            }
        }
    }
    match &keys.master_key {
        None if !columns.is_empty() => problems.push(
            "keys.master_key: required when columns are registered (\"file:PATH\" or \"env:VAR\")"
                .into(),
        ),
        Some(secret) => {
            if let Err(e) = secret.resolve() {
                problems.push(format!("keys.master_key: {e}"));
            }
        }
        None => {}
    }
}
