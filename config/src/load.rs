//! Reading a configuration: file → TOML value → environment overrides →
//! deserialization (collecting unknown keys) → validation.

use std::path::Path;

use crate::Config;

/// Prefix of environment overrides: `PGWARDEN__LISTEN__ADDRESS=127.0.0.1:7432`
/// sets `listen.address`. The double underscore separates path segments and keeps
/// these apart from variables such as `PGWARDEN_ADMIN_PASSWORD` that secrets name.
pub const ENV_PREFIX: &str = "PGWARDEN__";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Io { path: String, source: std::io::Error },
    /// Every problem found, one per line, each with its key path.
    #[error("invalid configuration:\n  {}", .0.join("\n  "))]
    Invalid(Vec<String>),
}

impl ConfigError {
    /// The problems, one per entry.
    pub fn problems(&self) -> Vec<String> {
        match self {
            ConfigError::Io { .. } => vec![self.to_string()],
            ConfigError::Invalid(p) => p.clone(),
        }
    }
}

/// Loads, overrides from the process environment, and validates a file.
pub fn load_file(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| ConfigError::Io { path: path.display().to_string(), source })?;
    load_str(&text, std::env::vars())
}

/// Parses `text`, applies the `PGWARDEN__` overrides found in `env`, validates.
pub fn load_str(
    text: &str,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Config, ConfigError> {
    let mut value: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        ConfigError::Invalid(vec![format!("not valid TOML: {}", e.message().trim())])
    })?;
    let mut problems = Vec::new();
    for (name, raw) in env {
        if let Some(path) = name.strip_prefix(ENV_PREFIX) {
            if let Err(e) = apply_override(&mut value, path, &raw) {
                problems.push(format!("{name}: {e}"));
            }
        }
    }

    let mut unknown = Vec::new();
    let config: Config = match serde_ignored::deserialize(toml::Value::Table(value), |path| {
        unknown.push(path.to_string())
    }) {
        Ok(c) => c,
        Err(e) => {
            problems.push(e.to_string());
            return Err(ConfigError::Invalid(problems));
        }
    };
    problems.extend(unknown.into_iter().map(|k| format!("{k}: unknown key")));
    problems.extend(config.validate());
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(ConfigError::Invalid(problems))
    }
}

/// Sets `SECTION__KEY` in `table`. The value is read as a TOML value when it is
/// one (`100`, `true`, `["a"]`) and as a string otherwise.
fn apply_override(table: &mut toml::Table, path: &str, raw: &str) -> Result<(), String> {
    let segments: Vec<String> = path.split("__").map(|s| s.to_ascii_lowercase()).collect();
    let Some((last, parents)) = segments.split_last() else {
        return Err("empty key path".into());
    };
    if segments.iter().any(|s| s.is_empty()) {
        return Err("empty segment in key path".into());
    }
    let mut cur = table;
    for seg in parents {
        let entry =
            cur.entry(seg.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = entry.as_table_mut().ok_or_else(|| format!("{seg} is not a section"))?;
    }
    let value = format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()));
    cur.insert(last.clone(), value);
    Ok(())
}
